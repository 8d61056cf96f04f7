"""Class data sharing for local Spark drivers: the JVM maps its classes from an archive.

A new JVM loads, parses and verifies some ten thousand classes in its first jobs, on the
cores the Python workers need. A dynamic AppCDS archive (JDK 13+) records them once; later
JVMs map it instead (docs/decisions.md).

``python -m helpers.spark.cds`` (run by ``make setup``) makes the archive once: a child process
runs a small Spark workload like the notebooks' (binaryFile listing, a pandas UDF, Parquet
written and read, an aggregation, a Spark ML model saved and loaded) with
``-XX:ArchiveClassesAtExit``, the JVM writes the archive as it exits, a second child checks
it with ``-Xshare:on`` (a JVM that cannot map it refuses to start), and only then is it
renamed into place: a JVM given a truncated archive can crash. The file name carries the
pyspark version, its location, its jars' sizes and times and the Java runtime, so another
pyspark, virtual environment, reinstall or JDK finds no archive and runs as before (a JVM
given an archive whose jars changed ignores it with a warning); making an archive removes
the older ones of the same installation. A SHA-256 record is written after the archive
(:mod:`helpers.caches`): an archive that no longer matches it is not used, and made again.
:func:`helpers.spark.session.get_spark` adds :func:`driver_java_options` to the drivers it
starts on this machine (local mode, or client mode on ``spark://``), and to the executors of a
``spark://127.0.0.1`` cluster (:mod:`helpers.dev.cluster`: same pyspark jars); on EMR and
Databricks the cluster starts its JVMs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from helpers import PROJECT_ROOT, caches, env
from helpers.spark.jvm import jvm_pid
from helpers.spark.settings import LOCAL_CONF

log = logging.getLogger(__name__)

#: JVM options of the child that records the archive, and of the one that checks it.
RECORD_OPTION = "-XX:ArchiveClassesAtExit="
USE_OPTION = "-XX:SharedArchiveFile="


def java_home() -> Path | None:
    """The Java installation spark-submit starts (``$JAVA_HOME``, else ``java`` on the PATH)."""
    if env.java_home():
        return env.java_home()
    java = shutil.which("java")
    return Path(java).resolve().parents[1] if java else None


def java_feature() -> int | None:
    """The feature release (8, 11, 17...) of :func:`java_home`'s Java, from its ``release``
    file; ``None`` when there is no Java or the file does not say."""
    home = java_home()
    release = home / "release" if home else None
    if release is None or not release.is_file():
        return None
    found = re.search(r'^JAVA_VERSION="(?:1\.)?(\d+)', release.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else None


def _jars_digest(jars: Path) -> str:
    """A digest of the name, size and modification time of every jar in ``jars``: the JVM
    refuses an archive whose class path jars changed (a reinstalled pyspark, even the same
    version at the same place), so a changed jar must name another archive."""
    entries = sorted(
        f"{entry.name} {entry.stat().st_size} {entry.stat().st_mtime_ns}"
        for entry in os.scandir(jars)
        if entry.name.endswith(".jar")
    )
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:12]


def archive_path(cache: Path | None = None) -> Path | None:
    """Where the archive of this pyspark installation and this Java runtime lives
    (``None``: no Java): ``spark-<version>-java-<installation>-<jars>.jsa``."""
    import pyspark

    home = java_home()
    if home is None:
        return None
    release = home / "release"
    # the JVM checks the class path the archive was made with: one archive per pyspark copy
    identity = f"{home}\n{release.read_text() if release.exists() else ''}\n{pyspark.__file__}"
    installation = hashlib.sha256(identity.encode()).hexdigest()[:12]
    jars = _jars_digest(Path(pyspark.__file__).parent / "jars")
    folder = cache or env.cache_dir("cds")
    return folder / f"spark-{pyspark.__version__}-java-{installation}-{jars}.jsa"


def driver_java_options(cache: Path | None = None) -> str:
    """``-XX:SharedArchiveFile=<archive>`` when the archive exists and matches its record,
    else nothing (also with ``$FRUITS_CLASS_ARCHIVE=off``, to measure or rule it out).

    Checked by size and modification time (hashing its ~200 MB took 0.15 s here, 7% of a
    session's 2.2 s start); :func:`make_archive` checks its SHA-256 and makes it again.
    """
    if env.is_off(env.CLASS_ARCHIVE_ENV):
        return ""
    path = archive_path(cache)
    if path is None:
        return ""
    action = "not used: run python -m helpers.spark.cds (make setup) to make it again"
    return f"{USE_OPTION}{path}" if caches.verified(path, quick=True, action=action) else ""


def _workload(java_options: str, full: bool = True) -> None:
    """Child process: a small session loading the classes the notebooks use, then exit
    (not ``full``: start the session and run one job, to check an archive)."""
    import pandas as pd
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import PCA, StandardScaler, VectorAssembler
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # as get_spark does
    builder = SparkSession.builder.master("local[2]").appName("fruits-cds")
    conf = {
        **LOCAL_CONF,
        "spark.python.daemon.module": "pyspark.daemon",  # same JVM classes, no TensorFlow
        "spark.driver.extraJavaOptions": java_options,
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if not full:  # checking an archive: the JVM started with it, a job runs
        spark.range(10).count()
        spark.stop()
        return

    def lengths(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            yield frame.assign(n=frame["content"].str.len()).drop(columns="content")

    with tempfile.TemporaryDirectory() as folder:
        images = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .load(str(PROJECT_ROOT / "data_sample"))
            .withColumn("label", F.element_at(F.split("path", "/"), -2))
        )
        rows = images.select("path", "label", "content").mapInPandas(
            lengths, "path string, label string, n long"
        )
        rows = rows.withColumn("x", F.rand(0))
        rows.write.parquet(f"{folder}/rows")
        back = spark.read.parquet(f"{folder}/rows").withColumn("y", F.col("x") * F.col("n"))
        back.groupBy("label").agg(F.sum("n"), F.avg("y")).collect()
        stages = [
            VectorAssembler(inputCols=["x", "y"], outputCol="v"),
            StandardScaler(inputCol="v", outputCol="s"),
            PCA(k=1, inputCol="s", outputCol="p"),
        ]
        Pipeline(stages=stages).fit(back).write().save(f"{folder}/model")
        PipelineModel.load(f"{folder}/model").transform(back).count()
    print(jvm_pid(spark), flush=True)
    spark.stop()


def _run_child(java_options: str, timeout: float, mode: str = "workload") -> tuple[int, str]:
    """Run :func:`_workload` (``mode``: ``workload`` or ``check``) in a child process; its
    exit code and output."""
    child = subprocess.run(
        [sys.executable, "-m", "helpers.spark.cds", f"--{mode}={java_options}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return child.returncode, child.stdout + child.stderr


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait until the JVM ``pid`` has exited (it writes the archive on its way out)."""
    import psutil

    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass


def make_archive(cache: Path | None = None, timeout: float = 300.0) -> Path | None:
    """Record, check and install the archive of this pyspark and Java; return its path.

    Nothing is done when it exists already and its SHA-256 matches the record written after
    it (:mod:`helpers.caches`); a damaged archive, or one without a record, is made again.
    ``None`` when there is no Java. Raises ``RuntimeError``, with the JVM's output, when the
    archive cannot be made or checked (sessions then start without one, as before).
    """
    target = archive_path(cache)
    if target is None or caches.verified(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    started = time.perf_counter()
    try:
        code, output = _run_child(f"{RECORD_OPTION}{staged}", timeout)
        pids = [line for line in output.splitlines() if line.strip().isdigit()]
        if code or not pids:
            raise RuntimeError(f"the class archive workload failed (exit {code}):\n{output}")
        _wait_exit(int(pids[-1]), timeout)
        if not staged.exists():
            raise RuntimeError(f"the JVM wrote no class archive ({staged}):\n{output}")
        # a JVM that crashes on a bad archive leaves its hs_err file with the staged one
        check = f"-Xshare:on -XX:ErrorFile={staged}.hs_err_%p.log {USE_OPTION}{staged}"
        code, output = _run_child(check, timeout, "check")
        if code:
            raise RuntimeError(f"the class archive {staged} is not usable (exit {code}):\n{output}")
        staged.replace(target)
        caches.record(target)
        # older archives of this installation (its jars since replaced) can never be used
        installation = target.name.rsplit("-", 1)[0]
        for stale in target.parent.glob(f"{installation}-*.jsa"):
            if stale != target:
                stale.unlink()
                caches.sidecar(stale).unlink(missing_ok=True)
    finally:
        for leftover in staged.parent.glob(f"{staged.name}*"):
            leftover.unlink()
    log.info(
        "class archive %s made in %.0f s (%.0f MB)",
        target,
        time.perf_counter() - started,
        target.stat().st_size / 1e6,
    )
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", metavar="JAVA_OPTIONS", help=argparse.SUPPRESS)
    parser.add_argument("--check", metavar="JAVA_OPTIONS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload is not None or args.check is not None:
        _workload(args.workload or args.check, full=args.check is None)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = make_archive()
    if path is None:
        raise SystemExit("no Java found ($JAVA_HOME or java on the PATH): Spark needs Java 17")
    print(path)


if __name__ == "__main__":
    main()
