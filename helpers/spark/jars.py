"""The S3A jars a local Spark session needs, fetched once from Maven Central and cached.

pyspark ships without the S3A connector: ``hadoop-aws`` of exactly Spark's Hadoop version and
the AWS SDK bundle that release was built with, plus ``spark-hadoop-cloud`` of Spark's own
version and Scala for Spark's side of the S3A committers (``PathOutputCommitProtocol``,
``BindingParquetOutputCommitter``). The installed pyspark chooses: 3.5 (Hadoop 3.3.4, Scala
2.12) takes ``hadoop-aws-3.3.4`` with the SDK v1 ``aws-java-sdk-bundle-1.12.262``; 4.0
(Hadoop 3.4.1, Scala 2.13) ``hadoop-aws-3.4.1`` with the SDK v2 ``bundle-2.24.6`` and
``spark-hadoop-cloud_2.13``. ``python -m helpers.spark.jars fetch`` (run by ``make setup``)
downloads them into ``$XDG_CACHE_HOME/fruits/jars`` (``$FRUITS_JARS_CACHE``), checked against
Maven Central's SHA-1 and recorded by their SHA-256 (:mod:`helpers.caches`); :func:`cached_jars`
hands them to :func:`helpers.spark.session.get_spark` while they match that record.
Nothing is committed to git, and offline jars given as ``hadoop_aws_jars`` still win.

The Spark Connect server (:mod:`helpers.dev.connect`) needs ``spark-connect`` of Spark's
version: pyspark 4.0 ships it in ``pyspark/jars``; pyspark 3.5 does not, and Maven Central
has ``spark-connect_2.12`` up to 3.5.7 (no 3.5.8), which ``fetch`` caches the same way
(:data:`CONNECT_ARTIFACTS`) and :func:`connect_jar` finds.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from helpers import caches, env
from helpers.spark.versions import hadoop_version, scala_version, spark_home, spark_version

log = logging.getLogger(__name__)

#: The Maven repository (``$FRUITS_MAVEN_REPO`` points at a mirror).
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"

#: Spark's Hadoop version -> the AWS SDK bundle hadoop-aws of that version was built with
#: (hadoop-project's pom: ``aws-java-sdk.version`` for 3.3, ``aws-java-sdk-v2.version`` for
#: 3.4, which moved S3A to the AWS SDK v2). Other versions fall back to
#: ``spark.jars.packages`` (Ivy).
SDK_BUNDLES = {
    "3.3.4": ("com.amazonaws", "aws-java-sdk-bundle", "1.12.262"),  # pyspark 3.5
    "3.4.1": ("software.amazon.awssdk", "bundle", "2.24.6"),  # pyspark 4.0
    "3.4.2": ("software.amazon.awssdk", "bundle", "2.29.52"),
}


@dataclass(frozen=True)
class Artifact:
    """One jar on Maven Central."""

    group: str
    name: str
    version: str

    @property
    def file_name(self) -> str:
        """The jar's file name, as Maven names it."""
        return f"{self.name}-{self.version}.jar"

    def url(self, repo: str) -> str:
        """Where ``repo`` serves the jar."""
        folder = f"{self.group.replace('.', '/')}/{self.name}/{self.version}"
        return f"{repo.rstrip('/')}/{folder}/{self.file_name}"


#: Spark line -> the Connect server jar for a pyspark that ships none. 3.5.7 is Maven
#: Central's newest 3.5 (no 3.5.8): a 3.5 patch serves the 3.5 protocol, the driver's
#: classes are the installed pyspark's.
CONNECT_ARTIFACTS = {"3.5": Artifact("org.apache.spark", "spark-connect_2.12", "3.5.7")}

#: The Connect server's main class, in the jar pyspark 4 ships or in ``CONNECT_ARTIFACTS``'.
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def cache_dir() -> Path:
    """The folder holding the fetched jars (``$FRUITS_JARS_CACHE`` moves it)."""
    return env.cache_dir("jars")


def maven_repo() -> str:
    """The Maven repository jars come from: ``$FRUITS_MAVEN_REPO`` or Maven Central."""
    return env.get(env.MAVEN_REPO_ENV) or MAVEN_CENTRAL


def s3a_artifacts(
    hadoop_version: str, spark_version: str, scala: str | None = None
) -> list[Artifact]:
    """hadoop-aws, its AWS SDK bundle and spark-hadoop-cloud for this Spark and Hadoop
    (``scala``: the Scala version of Spark's build, by default :func:`scala_version`)."""
    if hadoop_version not in SDK_BUNDLES:
        raise KeyError(
            f"no known AWS SDK bundle for Hadoop {hadoop_version} (known: "
            f"{', '.join(SDK_BUNDLES)}): pass hadoop_aws_jars= with the jars matching your Spark"
        )
    return [
        Artifact("org.apache.hadoop", "hadoop-aws", hadoop_version),
        Artifact(*SDK_BUNDLES[hadoop_version]),
        Artifact(
            "org.apache.spark",
            f"spark-hadoop-cloud_{scala or scala_version(spark_version)}",
            spark_version,
        ),
    ]


def cached_jars(hadoop_version: str, spark_version: str, scala: str | None = None) -> list[str]:
    """The cached S3A jars for this Spark, or ``[]`` unless every one is there and matches
    its record.

    Checked by size and modification time against the record :func:`fetch` wrote (hashing
    the SDK bundle, 280-560 MB, took 0.2-0.4 s: a tenth of a session's start); :func:`fetch`
    checks their SHA-256. A damaged or unrecorded jar is named in a warning.
    """
    if hadoop_version not in SDK_BUNDLES:
        return []
    folder = cache_dir()
    jars = [folder / a.file_name for a in s3a_artifacts(hadoop_version, spark_version, scala)]
    action = "not used: run python -m helpers.spark.jars fetch"
    found = all(jar.is_file() for jar in jars)
    if not (found and all([caches.verified(jar, quick=True, action=action) for jar in jars])):
        return []
    return [str(jar) for jar in jars]


def _maven_sha1(url: str) -> str | None:
    """The SHA-1 the repository publishes beside ``url``, ``None`` when it has none."""
    try:
        with urllib.request.urlopen(url + ".sha1", timeout=60) as response:
            return response.read().decode().split()[0].strip().lower()
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        log.warning("%s.sha1 not found: the jar is recorded by its own SHA-256 only", url)
        return None


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` to ``target`` whole (temp file + rename), checked against its ``.sha1``
    when the repository has one, then recorded by its SHA-256 (:mod:`helpers.caches`)."""
    expected = _maven_sha1(url)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                sha1.update(chunk)
                sha256.update(chunk)
                out.write(chunk)
        if expected is not None and sha1.hexdigest() != expected:
            raise OSError(f"{url}: SHA-1 {sha1.hexdigest()} differs from Maven's {expected}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    caches.record(target, sha256.hexdigest())


def _sha1_matches(jar: Path, url: str) -> bool:
    expected = _maven_sha1(url)
    digest = hashlib.sha1()
    with jar.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == expected


def fetch(hadoop_version: str, spark_version: str, scala: str | None = None) -> list[str]:
    """Download the S3A jars for this Spark into :func:`cache_dir` unless already there.

    A cached jar is used when its SHA-256 matches its record (:mod:`helpers.caches`); one
    without a record is recorded if it matches Maven's SHA-1, and any other is downloaded
    again. Returns the jars' paths. Network errors name the repository and the offline
    alternative.
    """
    offline = f"pass hadoop_aws_jars= (or ${env.HADOOP_AWS_JARS_ENV})"
    return [
        str(_fetch_one(artifact, offline))
        for artifact in s3a_artifacts(hadoop_version, spark_version, scala)
    ]


def _fetch_one(artifact: Artifact, offline: str) -> Path:
    """``artifact`` in :func:`cache_dir`, downloaded unless a copy matches its record (or,
    unrecorded, Maven's SHA-1); ``offline`` ends the error message: the way around Maven."""
    repo = maven_repo()
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    jar = folder / artifact.file_name
    url = artifact.url(repo)
    try:
        if caches.read_record(jar) is None and jar.is_file() and _sha1_matches(jar, url):
            caches.record(jar)  # cached before records were kept: Maven's SHA-1 vouches
        if not caches.verified(jar, action=f"downloaded again from {url}"):
            log.info("downloading %s", url)
            _download(url, jar)
    except OSError as exc:
        # Spark publishes spark-hadoop-cloud for some releases only (4.0.0-4.0.2, not 4.0.3+)
        missing = " (not published there)" if getattr(exc, "code", None) == 404 else ""
        raise OSError(
            f"cannot fetch {url} ({exc}){missing}: check the network or "
            f"${env.MAVEN_REPO_ENV} (a Maven mirror), or download the jars elsewhere and {offline}"
        ) from exc
    jar.with_name(jar.name + ".verified").unlink(missing_ok=True)  # the record replaces it
    return jar


def connect_artifact(spark_version: str) -> Artifact | None:
    """The Connect server jar to fetch for ``spark_version``; ``None`` when pyspark ships
    one (4.x) or Maven Central has none for its line."""
    return CONNECT_ARTIFACTS.get(".".join(spark_version.split(".")[:2]))


def shipped_connect_jar() -> Path | None:
    """The Connect server jar the installed pyspark carries (4.x), else ``None``."""
    return next(iter(sorted((spark_home() / "jars").glob("spark-connect_*.jar"))), None)


def fetch_connect(spark_version: str) -> Path | None:
    """Download the Connect server jar for ``spark_version`` into :func:`cache_dir` unless
    cached (as :func:`fetch`); ``None`` when pyspark ships its own or none exists."""
    artifact = connect_artifact(spark_version)
    if artifact is None or shipped_connect_jar() is not None:
        return None
    offline = f"put it at {cache_dir() / artifact.file_name} with its record (fetch elsewhere)"
    return _fetch_one(artifact, offline)


def connect_jar(spark_version: str) -> tuple[Path, bool]:
    """The Connect server jar for the installed pyspark of ``spark_version``, and whether it
    must go on ``--jars`` (a fetched one) rather than being on Spark's class path already.

    FileNotFoundError, naming the command that fetches it, when it is neither shipped nor
    cached (or the cached copy no longer matches its record).
    """
    shipped = shipped_connect_jar()
    if shipped is not None:
        return shipped, False
    artifact = connect_artifact(spark_version)
    if artifact is None:
        raise FileNotFoundError(
            f"pyspark {spark_version} ships no Spark Connect server jar and none is known for "
            f"its line (known: {', '.join(CONNECT_ARTIFACTS)}; pyspark 4 ships its own)"
        )
    jar = cache_dir() / artifact.file_name
    action = "not used: run python -m helpers.spark.jars fetch"
    if jar.is_file() and caches.verified(jar, quick=True, action=action):
        return jar, True
    raise FileNotFoundError(
        f"the Spark Connect server jar {artifact.file_name} is not cached in {cache_dir()}: "
        f"run python -m helpers.spark.jars fetch (make jars; from {artifact.url(maven_repo())})"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.spark.jars fetch|path``: download the S3A jars (and the Connect
    server jar where pyspark ships none), or print the S3A jars."""
    parser = argparse.ArgumentParser(prog="python -m helpers.spark.jars", description=__doc__)
    parser.add_argument("action", choices=("fetch", "path"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hadoop, spark = hadoop_version(), spark_version()
    if args.action == "fetch":
        jars = fetch(hadoop, spark)
        connect = fetch_connect(spark)
        if connect is not None:
            log.info("Spark Connect server jar: %s", connect)
    else:
        jars = cached_jars(hadoop, spark)
        if not jars:
            log.error(
                "S3A jars for Hadoop %s not cached: run python -m helpers.spark.jars fetch", hadoop
            )
            return 1
    sys.stdout.write(",".join(jars) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
