"""The SparkSession: local mode on a laptop or CI, the existing one on EMR and Databricks.

Where the data lives decides part of the session: a local session that reads or writes
``s3://`` or ``s3a://`` needs the S3A connector (hadoop-aws) on its classpath, and jars can
only be added when the JVM starts. So the notebook hands its roots to :func:`get_spark`,
which adds what :func:`storage_conf` says before the session exists. On EMR (EMRFS serves
``s3://``) and Databricks the cluster's own session is used as it is.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from pyspark.sql import SparkSession

from helpers.cds import driver_java_options
from helpers.config import (
    HADOOP_AWS_JARS_ENV,
    PYTHON_WORKER_CONF,
    S3_ENDPOINT_ENVS,
    aws_region,
    check_master,
    resolve_hadoop_aws_jars,
    resolve_s3_endpoint,
)
from helpers.jvm import filesystem_class_error, hadoop_conf_set, jvm_hadoop_version

log = logging.getLogger(__name__)

#: Settings every session gets: Arrow for pandas UDFs, quiet progress for headless runs.
SESSION_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
}

#: Sessions this project starts (local, or on a ``spark://`` master) list up to 1,024 folders
#: on the driver: above Spark's default of 32, the ``binaryFile`` listing of Fruits-360's
#: 2 x 103 class folders runs as a Spark job of 100 tasks instead, twice, and on a 2 x 1-core
#: standalone cluster that took 8 s of a 30 s feature step (bench/README.md, cluster mode).
LISTING_CONF = {"spark.sql.sources.parallelPartitionDiscovery.threshold": "1024"}

#: Extra settings for a local session, where the driver is also the only executor.
LOCAL_CONF = {
    "spark.sql.shuffle.partitions": "8",
    **LISTING_CONF,
    **PYTHON_WORKER_CONF,
}


#: A file every EMR node has; there the cluster's spark-defaults choose the master (YARN).
EMR_MARKER = "/mnt/var/lib/info/instance.json"

#: URI schemes that a session outside EMR and Databricks serves with the S3A connector.
S3_SCHEMES = ("s3", "s3a")

#: The Hadoop class behind S3A, mapped to ``s3://`` too in local sessions.
S3A_FILESYSTEM = "org.apache.hadoop.fs.s3a.S3AFileSystem"

#: The S3A committer local sessions write Parquet to S3 with: task output goes straight to
#: its final key as an uncompleted multipart upload, which the job commit completes (no
#: rename, no copy). It needs spark-hadoop-cloud (Spark's side of the binding).
S3A_COMMITTER = "magic"

#: Settings that route Spark SQL writes to s3:// and s3a:// through the S3A committer; other
#: schemes (file:) keep Hadoop's FileOutputCommitter through the same factory.
S3A_COMMITTER_CONF = {
    "spark.hadoop.fs.s3a.committer.name": S3A_COMMITTER,
    "spark.hadoop.fs.s3a.committer.magic.enabled": "true",
    "spark.hadoop.mapreduce.outputcommitter.factory.scheme.s3a": (
        "org.apache.hadoop.fs.s3a.commit.S3ACommitterFactory"
    ),
    "spark.hadoop.mapreduce.outputcommitter.factory.scheme.s3": (
        "org.apache.hadoop.fs.s3a.commit.S3ACommitterFactory"
    ),
    "spark.sql.sources.commitProtocolClass": (
        "org.apache.spark.internal.io.cloud.PathOutputCommitProtocol"
    ),
    "spark.sql.parquet.output.committer.class": (
        "org.apache.spark.internal.io.cloud.BindingParquetOutputCommitter"
    ),
}


def on_cluster() -> bool:
    """Whether this process runs on an EMR node or a Databricks cluster."""
    return os.path.exists(EMR_MARKER) or "DATABRICKS_RUNTIME_VERSION" in os.environ


def executor_conf(python: str | None = None) -> dict[str, str]:
    """Settings that make a cluster's executors run the project's Python with its daemon.

    ``python`` is the interpreter every executor host runs for the Python workers; by
    default ``$PYSPARK_PYTHON`` or this one (a standalone cluster on this machine, or hosts
    that install the project at the same path). The executors get TensorFlow's quiet log
    level too, as local workers do from the driver's environment.
    """
    python = python or os.environ.get("PYSPARK_PYTHON") or sys.executable
    return {
        **PYTHON_WORKER_CONF,
        "spark.pyspark.python": python,
        "spark.executorEnv.PYSPARK_PYTHON": python,
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
    }


#: ``$FRUITS_JIT=full`` keeps the JVM's default JIT (C1 then C2) in the JVMs started here.
JIT_ENV = "FRUITS_JIT"

#: The JIT of the JVMs this project starts on this machine: C1 only. On a cluster of this
#: machine the driver and every executor compiled the same hot code with C2 on the cores the
#: Python workers need; C1 only took a 2,575-image feature step there from 28-32 s to
#: 20-22 s, and local runs (2,575 images; notebooks at 7,725 and 23,175) stayed within the
#: noise of the default JIT (bench/README.md, cluster mode). C1 only also shrinks the JVM's
#: default code cache to 48 MB, which a long session fills (the Spark 4 test session did:
#: "Out of space in CodeCache for adapters" killed its JVM): hence the default size of a
#: C1-then-C2 JVM, 240 MB, reserved and committed only as used.
JIT_OPTION = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"


def java_options() -> str:
    """JVM options of the drivers (and a local cluster's executors) started here: the class
    archive of :mod:`helpers.cds` when made, and C1-only JIT unless ``$FRUITS_JIT=full``."""
    jit = "" if os.environ.get(JIT_ENV, "").lower() == "full" else JIT_OPTION
    return " ".join(option for option in (driver_java_options(), jit) if option)


def master_conf(master: str, driver_memory: str = "4g") -> dict[str, str]:
    """The settings :func:`get_spark` gives a session it starts on ``master``.

    Off EMR and Databricks: the driver's memory and :func:`java_options`.
    Local mode: :data:`LOCAL_CONF`; any other master: the driver-side listing and
    :func:`executor_conf`. A ``spark://`` master on this machine (:mod:`helpers.cluster`)
    also gets the driver's address, and :func:`java_options` for its executors (they run this
    pyspark's jars, so they can map the same class archive).
    """
    conf: dict[str, str] = {}
    options = "" if on_cluster() else java_options()
    if not on_cluster():  # a cluster's spark-defaults size its own driver
        conf["spark.driver.memory"] = driver_memory
        conf["spark.driver.extraJavaOptions"] = options
    conf.update(LOCAL_CONF if master.startswith("local") else {**LISTING_CONF, **executor_conf()})
    if re.match(r"spark://(127\.0\.0\.1|localhost)[:/]", master):
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.executor.extraJavaOptions"] = options
    return conf


def s3_roots(roots: Iterable[str | None]) -> list[str]:
    """The roots among ``roots`` that are ``s3://`` or ``s3a://`` URIs (blanks ignored)."""
    return [
        r.strip()
        for r in roots
        if r and r.strip().split("://", 1)[0].lower() in S3_SCHEMES and "://" in r
    ]


#: Jars whose name carries Spark's Hadoop version (client API first, then older layouts).
_HADOOP_JARS = (r"hadoop-client-api-(\d+\.\d+\.\d+)\.jar", r"hadoop-common-(\d+\.\d+\.\d+)\.jar")


def hadoop_version(spark_home: str | None = None) -> str:
    """The Hadoop version of the Spark that a new session will launch, e.g. ``'3.3.4'``.

    Read from the jar names in ``<spark_home>/jars`` (pyspark's own installation unless
    ``SPARK_HOME`` points elsewhere), because hadoop-aws must match it exactly and the JVM
    that could tell does not exist yet.
    """
    if spark_home is None:
        from pyspark.find_spark_home import _find_spark_home

        spark_home = _find_spark_home()
    jars = Path(spark_home, "jars")
    for pattern in _HADOOP_JARS:
        for jar in sorted(jars.glob("hadoop-*.jar")):
            match = re.fullmatch(pattern, jar.name)
            if match:
                return match.group(1)
    raise RuntimeError(
        f"cannot tell Spark's Hadoop version: no hadoop-client-api-*.jar or hadoop-common-*.jar "
        f"in {jars}; pass hadoop_aws_jars= with the hadoop-aws jar matching your Spark"
    )


def s3a_credentials_provider(version: str) -> str:
    """The AWS default credential chain class for S3A of Hadoop ``version``.

    Environment variables, ``~/.aws`` profiles (``AWS_PROFILE``, SSO) and instance roles,
    in that order: the same chain boto3 and s3fs use, so one login serves every client.
    Hadoop 3.4 moved to the AWS SDK v2, whose class has another name.
    """
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) >= (3, 4):
        return "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
    return "com.amazonaws.auth.DefaultAWSCredentialsProviderChain"


def storage_conf(
    roots: Iterable[str | None],
    hadoop_version: str,
    hadoop_aws_jars: Sequence[str] = (),
    s3_endpoint: str = "",
    region: str = "",
) -> dict[str, str]:
    """Spark settings a session outside EMR and Databricks needs to use ``roots``.

    Empty unless a root is ``s3://`` or ``s3a://``. Then: the S3A connector matching
    ``hadoop_version`` (the local ``hadoop_aws_jars``, which :func:`s3a_jars` finds in the
    cache ``python -m helpers.jars fetch`` fills; else ``spark.jars.packages``, downloaded
    from Maven Central by Ivy on first use into ``~/.ivy2``), ``s3://`` served by S3A like
    ``s3a://``, the default AWS credential chain, and for an S3-compatible store
    (``s3_endpoint``) its URL with path-style access. When the jars include
    spark-hadoop-cloud, Parquet goes to S3 through the S3A magic committer
    (:data:`S3A_COMMITTER_CONF`). Credentials never enter the settings: the JVM reads them
    from the environment, profiles or instance role itself.
    """
    if not s3_roots(roots):
        return {}
    conf = {
        "spark.hadoop.fs.s3.impl": S3A_FILESYSTEM,
        "spark.hadoop.fs.s3a.impl": S3A_FILESYSTEM,
        "spark.hadoop.fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
        "spark.hadoop.fs.s3a.aws.credentials.provider": s3a_credentials_provider(hadoop_version),
    }
    if hadoop_aws_jars:
        conf["spark.jars"] = ",".join(hadoop_aws_jars)
        if any(Path(jar).name.startswith("spark-hadoop-cloud") for jar in hadoop_aws_jars):
            conf.update(S3A_COMMITTER_CONF)
    else:
        conf["spark.jars.packages"] = f"org.apache.hadoop:hadoop-aws:{hadoop_version}"
    if s3_endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = s3_endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        secure = not s3_endpoint.lower().startswith("http://")
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(secure).lower()
        if region:
            conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    elif region:
        # the regional endpoint: the SDK v1 behind Hadoop 3.3 does not follow region redirects
        conf["spark.hadoop.fs.s3a.endpoint"] = f"s3.{region}.amazonaws.com"
        conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    return conf


def s3a_jars(hadoop_aws_jars: str = "", version: str | None = None) -> list[str]:
    """The local S3A jars a new session loads: ``hadoop_aws_jars`` or
    ``$FRUITS_HADOOP_AWS_JARS`` if given, else the ones ``python -m helpers.jars fetch``
    cached for this Spark, else ``[]`` (then Ivy downloads hadoop-aws)."""
    jars = resolve_hadoop_aws_jars(hadoop_aws_jars)
    if jars:
        return jars
    import pyspark

    from helpers.jars import cached_jars

    return cached_jars(version or hadoop_version(), pyspark.__version__)


def storage_env(s3_endpoint: str = "", hadoop_aws_jars: str = "") -> dict[str, str]:
    """Environment variables that carry explicitly given storage settings to other clients.

    An endpoint given as a parameter must reach s3fs, boto3 (papermill) and the notebook
    kernels too; they all read ``AWS_ENDPOINT_URL_S3``, so that is where it goes.
    """
    env = {}
    if s3_endpoint:
        env[S3_ENDPOINT_ENVS[0]] = s3_endpoint
    if hadoop_aws_jars:
        env[HADOOP_AWS_JARS_ENV] = hadoop_aws_jars
    return env


def _missing_s3a_message(roots: Sequence[str], version: str) -> str:
    return (
        f"Spark cannot open {roots[0]}: the S3A connector (org.apache.hadoop:hadoop-aws:"
        f"{version}) is not on this session's classpath. Start the session with "
        f"get_spark(data_root=..., output_root=...) before any other Spark call: it adds "
        f"spark.jars.packages=org.apache.hadoop:hadoop-aws:{version}, downloaded from Maven "
        f"Central on first use. Offline, pass hadoop_aws_jars='/path/hadoop-aws-{version}.jar,"
        f"/path/aws-java-sdk-bundle-<version>.jar' (or set ${HADOOP_AWS_JARS_ENV}). A session "
        f"that is already running cannot load jars: stop it (restart the kernel) first."
    )


def require_s3a(spark: SparkSession, roots: Sequence[str]) -> None:
    """Fail at once, naming the fix, if ``spark`` cannot open ``roots`` (s3:// or s3a://).

    Without this check the first read would fail minutes later with a bare
    ``ClassNotFoundException`` deep in a Java stack trace.
    """
    version = jvm_hadoop_version(spark)
    for root in roots:
        scheme = root.split("://", 1)[0].lower()
        error = filesystem_class_error(spark, scheme)
        if error is not None:
            raise RuntimeError(_missing_s3a_message([root], version)) from error


def _configure_active(spark: SparkSession, roots: list[str], conf: dict[str, str]) -> None:
    """Apply the Hadoop part of ``conf`` to a running local session, then check S3A is there."""
    prefix = "spark.hadoop."
    hadoop_conf_set(spark, {k[len(prefix) :]: v for k, v in conf.items() if k.startswith(prefix)})
    require_s3a(spark, roots)


def get_spark(
    app_name: str = "fruits",
    master: str | None = None,
    driver_memory: str = "4g",
    *,
    data_root: str | None = None,
    output_root: str | None = None,
    hadoop_aws_jars: str | None = None,
    s3_endpoint: str | None = None,
) -> SparkSession:
    """Return the active SparkSession if there is one (EMR, Databricks, Livy), else a new one.

    ``master`` (the ``spark_master`` parameter; empty or ``None``: the default) is
    ``local[*,3]`` off-cluster and the cluster's own settings on EMR or Databricks. A local
    session runs its Python workers with the interpreter running this code, so the notebook
    kernel, the driver and the pandas UDFs see the same packages; a session on another
    master (``spark://...``, ``yarn``) gets :func:`executor_conf`, so that its executors do
    too, with the runtime-preloading daemon. A driver started here maps the class
    archive of :mod:`helpers.cds` when ``make setup`` made it (a faster JVM start and
    first jobs), and so do the executors of a cluster on this machine (``spark://127.0.0.1``).

    ``data_root`` and ``output_root`` are the notebook's parameters: when one is ``s3://`` or
    ``s3a://`` and this is not EMR or Databricks, the session is configured for S3A
    (:func:`storage_conf`) and checked, so a missing connector fails here with the fix.
    ``hadoop_aws_jars`` (comma-separated local jars) and ``s3_endpoint`` default to
    ``$FRUITS_HADOOP_AWS_JARS`` and ``$AWS_ENDPOINT_URL_S3``/``$AWS_ENDPOINT_URL``; given
    explicitly, they are exported to those variables so s3fs and boto3 agree with Spark.
    """
    roots = s3_roots([data_root, output_root])
    local_storage = bool(roots) and not on_cluster()
    conf: dict[str, str] = {}
    if local_storage:  # checked before anything changes: a bad jar path or URL fails here
        version = hadoop_version()
        jars = s3a_jars(hadoop_aws_jars or "", version)
        endpoint = resolve_s3_endpoint(s3_endpoint or "")
        conf = storage_conf(roots, version, jars, endpoint, aws_region())
    os.environ.update(storage_env(s3_endpoint or "", hadoop_aws_jars or ""))
    master = check_master(master) if master and master.strip() else None
    active = SparkSession.getActiveSession()
    if active is not None:
        log.info("reusing the active Spark session (master %s)", active.sparkContext.master)
        if master is not None and master != active.sparkContext.master:
            log.warning(
                "spark_master %s ignored: a session on %s is already running (restart the "
                "kernel to change masters)",
                master,
                active.sparkContext.master,
            )
        if local_storage:
            _configure_active(active, roots, conf)
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # workers inherit it: quiet TensorFlow
    builder = SparkSession.builder.appName(app_name)
    if master is None and not on_cluster():
        master = "local[*,3]"  # every core; a failed task is retried, as on a cluster
    if master is not None:
        builder = builder.master(master)
        for key, value in master_conf(master, driver_memory).items():
            builder = builder.config(key, value)
    for key, value in {**SESSION_CONF, **conf}.items():
        builder = builder.config(key, value)
    if conf:
        log.info(
            "S3A for %s: %s",
            ", ".join(roots),
            conf.get("spark.jars.packages") or conf.get("spark.jars"),
        )
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        if "spark.jars.packages" in conf:
            raise RuntimeError(
                f"Spark could not start with {conf['spark.jars.packages']} (needed for "
                f"{roots[0]} in local mode): the first run downloads it from Maven Central "
                f"into ~/.ivy2. Without internet, download hadoop-aws and its AWS SDK bundle "
                f"and pass hadoop_aws_jars='/path/hadoop-aws.jar,/path/aws-sdk-bundle.jar' "
                f"(or set ${HADOOP_AWS_JARS_ENV}). Spark's stderr names the download that failed."
            ) from exc
        raise
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session, master %s", spark.version, spark.sparkContext.master)
    if conf:
        require_s3a(spark, roots)
    return spark
