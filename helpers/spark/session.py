"""The SparkSession: local mode on a laptop or CI, the existing one on EMR and Databricks.

Where the data lives decides part of the session: a local session that reads or writes
``s3://`` or ``s3a://`` needs the S3A connector (hadoop-aws) on its classpath, and jars can
only be added when the JVM starts. So the notebook hands its roots to :func:`get_spark`,
which adds what :func:`storage_conf` says before the session exists. On EMR (EMRFS serves
``s3://``) and Databricks the cluster's own session is used as it is.

A driver this module starts for local mode or for the standalone cluster of this machine
(:mod:`helpers.dev.cluster`) listens on 127.0.0.1 only: its RPC and block manager
(``spark.driver.bindAddress``) and its web UI, which is off in headless runs
(:func:`headless`); a driver of that cluster gets the cluster's secret
(:func:`cluster_properties`). Drivers on other masters (YARN, a remote ``spark://``) keep
their cluster's own settings.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import psutil
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import helpers
from helpers import env
from helpers.config import check_master, check_remote
from helpers.spark.cds import driver_java_options, java_feature
from helpers.spark.jars import cached_jars
from helpers.spark.jvm import filesystem_class_error, hadoop_conf_set, jvm_hadoop_version
from helpers.spark.kind import is_connect
from helpers.spark.settings import (
    JIT_OPTION,
    LISTING_CONF,
    LOCAL_CONF,
    SESSION_CONF,
    VECTOR_JAVA,
    VECTOR_OPTION,
    aws_region,
    executor_conf,
    on_cluster,
    resolve_hadoop_aws_jars,
    resolve_s3_endpoint,
    s3_roots,
    storage_conf,
    storage_env,
)
from helpers.spark.versions import hadoop_version, spark_version

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: A standalone master on this machine (:mod:`helpers.dev.cluster`), its port in group 2.
THIS_MACHINE = re.compile(r"spark://(127\.0\.0\.1|localhost):(\d+)/?$")
#: The standalone master's class, as its command line names it.
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
#: The programs and modules whose notebook kernels no one watches (:func:`headless`).
HEADLESS_PARENTS = {"papermill", "helpers.run"}


def local_driver(master: str) -> bool:
    """Whether a driver on ``master`` is one of this machine's only: local mode, or the
    standalone cluster on 127.0.0.1."""
    return master.startswith("local") or bool(THIS_MACHINE.match(master))


def headless() -> bool:
    """Whether no one can look at this driver's web UI: a process outside IPython (a script,
    pytest, spark-submit), or a notebook kernel that papermill started (``python -m
    helpers.run``, the ``papermill`` command: the kernel's parent names it)."""
    ipython = sys.modules.get("IPython")
    if ipython is None or ipython.get_ipython() is None:
        return True
    try:
        parent = psutil.Process().parent()
        args = parent.cmdline() if parent else []
    except psutil.Error:
        return False
    # its program (papermill, python papermill) or module (python -m papermill|helpers.run)
    names = {Path(arg).name for arg in args[:2]} | {b for a, b in zip(args, args[1:]) if a == "-m"}
    return bool(names & HEADLESS_PARENTS)


def cluster_properties(master: str) -> Path | None:
    """The properties file (its secret) of the standalone cluster of this machine serving
    ``master``, or ``None``.

    Found from the master process itself, wherever its state folder is: a process of this
    user running :data:`MASTER_CLASS` on that port with ``--properties-file``, a file of
    this user's that no one else can read (mode 0600).
    """
    match = THIS_MACHINE.match(master)
    if not match:
        return None
    port, user = match.group(2), psutil.Process().username()
    for process in psutil.process_iter(["username", "cmdline"]):
        args = process.info["cmdline"] or []
        if process.info["username"] != user or MASTER_CLASS not in args:
            continue
        pairs = dict(zip(args, args[1:]))
        path = Path(pairs.get("--properties-file", ""))
        if pairs.get("--port") == port and path.is_file():
            info = path.stat()
            if info.st_uid == os.getuid() and info.st_mode & 0o077 == 0:
                return path
    return None


def java_options(ml: bool = False) -> str:
    """JVM options of the drivers (and a local cluster's executors) started here: the class
    archive of :mod:`helpers.spark.cds` when made, and C1-only JIT unless ``$FRUITS_JIT=full``
    or ``ml``; ``ml`` also adds the Vector API on Java 16+ (Spark ML's BLAS in SIMD)."""
    full = ml or env.get(env.JIT_ENV).lower() == "full"
    vector = VECTOR_OPTION if ml and (java_feature() or 0) >= VECTOR_JAVA else ""
    options = (driver_java_options(), "" if full else JIT_OPTION, vector)
    return " ".join(option for option in options if option)


def master_conf(master: str, driver_memory: str = "4g", ml: bool = False) -> dict[str, str]:
    """The settings :func:`get_spark` gives a session it starts on ``master``.

    Off EMR and Databricks: the driver's memory and :func:`java_options`.
    Local mode: :data:`LOCAL_CONF` (the driver on 127.0.0.1); any other master: the
    driver-side listing and :func:`executor_conf`. A ``spark://`` master on this machine
    (:mod:`helpers.dev.cluster`) also gets the driver's address and binding (127.0.0.1), and
    :func:`java_options` for its executors (they run this pyspark's jars, so they can map the
    same class archive).
    """
    conf: dict[str, str] = {}
    options = "" if on_cluster() else java_options(ml)
    if not on_cluster():  # a cluster's spark-defaults size its own driver
        conf["spark.driver.memory"] = driver_memory
        conf["spark.driver.extraJavaOptions"] = options
    conf.update(LOCAL_CONF if master.startswith("local") else {**LISTING_CONF, **executor_conf()})
    if THIS_MACHINE.match(master):
        conf["spark.driver.host"] = conf["spark.driver.bindAddress"] = LOOPBACK
        conf["spark.executor.extraJavaOptions"] = options
    return conf


def s3a_jars(hadoop_aws_jars: str = "", version: str | None = None) -> list[str]:
    """The local S3A jars a new session loads: ``hadoop_aws_jars`` or
    ``$FRUITS_HADOOP_AWS_JARS`` if given, else the ones ``python -m helpers.spark.jars fetch``
    cached for this Spark, else ``[]`` (then Ivy downloads hadoop-aws)."""
    jars = resolve_hadoop_aws_jars(hadoop_aws_jars)
    return jars or cached_jars(version or hadoop_version(), spark_version())


def _missing_s3a_message(roots: Sequence[str], version: str) -> str:
    return (
        f"Spark cannot open {roots[0]}: the S3A connector (org.apache.hadoop:hadoop-aws:"
        f"{version}) is not on this session's classpath. Start the session with "
        f"get_spark(data_root=..., output_root=...) before any other Spark call: it adds "
        f"spark.jars.packages=org.apache.hadoop:hadoop-aws:{version}, downloaded from Maven "
        f"Central on first use. Offline, pass hadoop_aws_jars='/path/hadoop-aws-{version}.jar,"
        f"/path/aws-java-sdk-bundle-<version>.jar' (or set ${env.HADOOP_AWS_JARS_ENV}). A session "
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


#: Settings a Connect client asks of its session (runtime SQL settings; a server that refuses
#: one, as Databricks serverless does most, keeps its own).
CONNECT_CONF = {
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    **LISTING_CONF,
}


def _connect(remote: str, master: str | None) -> SparkSession:
    """A Spark Connect session on ``remote``, with :data:`CONNECT_CONF` where allowed."""
    if master and master.strip():
        log.warning(
            "spark_master %s ignored: the Spark Connect server %s has its own", master, remote
        )
    spark = SparkSession.builder.remote(remote).getOrCreate()
    for key, value in CONNECT_CONF.items():
        try:
            spark.conf.set(key, value)
        except Exception as exc:  # the server decides which settings a client may change
            log.info("Spark Connect server keeps its %s (%s)", key, str(exc).splitlines()[0])
    log.info("Spark Connect session on %s (Spark %s)", remote.split(";", 1)[0], spark.version)
    ship_package(spark, Path(helpers.__file__).parent)
    return spark


def _workers_import(spark: SparkSession, name: str) -> bool:
    """Whether the server's Python workers can import the package ``name`` (one small job)."""

    def importable(ids: Iterator[pd.Series]) -> Iterator[pd.Series]:  # pickled by value
        import importlib.util

        for batch in ids:
            yield pd.Series([importlib.util.find_spec(name) is not None] * len(batch))

    check = F.pandas_udf(importable, "boolean")  # made now: a UDF of this session's kind
    return bool(spark.range(1, numPartitions=1).select(check("id")).first()[0])


def ship_package(spark: SparkSession, package: Path) -> bool:
    """Make the Python package folder ``package`` importable by a Connect server's Python
    workers when it is not (a server without this project installed): zipped and added as a
    Python artifact of the session (``addArtifacts(pyfile=True)``). Its third-party packages
    (pandas, pyarrow, the inference runtime) must be on the server already. Whether it was
    shipped."""
    if _workers_import(spark, package.name):
        return False
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder, f"{package.name}.zip")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for file in sorted(package.rglob("*.py")):
                zipped.write(file, file.relative_to(package.parent).as_posix())
        spark.addArtifacts(str(archive), pyfile=True)
    log.info("shipped %s to the Spark Connect server's Python workers", package.name)
    return True


def get_spark(
    app_name: str = "fruits",
    master: str | None = None,
    driver_memory: str = "4g",
    *,
    data_root: str | None = None,
    output_root: str | None = None,
    hadoop_aws_jars: str | None = None,
    s3_endpoint: str | None = None,
    remote: str | None = None,
    ml: bool = False,
) -> SparkSession:
    """Return the active SparkSession if there is one (EMR, Databricks, Livy), else a new one.

    ``remote`` (the ``spark_remote`` parameter, else ``$SPARK_REMOTE``) makes the new one a
    Spark Connect client of that server (``sc://host:port``); the server has its own master
    and storage settings, so ``master`` and the S3 options are not used then.

    ``master`` (the ``spark_master`` parameter; empty or ``None``: the default) is
    ``local[*,3]`` off-cluster and the cluster's own settings on EMR or Databricks. A local
    session runs its Python workers with the interpreter running this code, so the notebook
    kernel, the driver and the pandas UDFs see the same packages; a session on another
    master (``spark://...``, ``yarn``) gets :func:`executor_conf`, so that its executors do
    too, with the runtime-preloading daemon. A driver started here maps the class
    archive of :mod:`helpers.spark.cds` when ``make setup`` made it (a faster JVM start and
    first jobs), and so do the executors of a cluster on this machine (``spark://127.0.0.1``).
    Those JVMs compile with C1 only, leaving the cores to the Python workers; ``ml`` (the
    notebooks whose work is Spark ML's math in the JVM) gives them the full JIT and Java's
    Vector API instead (:func:`java_options`).

    ``data_root`` and ``output_root`` are the notebook's parameters: when one is ``s3://`` or
    ``s3a://`` and this is not EMR or Databricks, the session is configured for S3A
    (:func:`storage_conf`) and checked, so a missing connector fails here with the fix.
    ``hadoop_aws_jars`` (comma-separated local jars) and ``s3_endpoint`` default to
    ``$FRUITS_HADOOP_AWS_JARS`` and ``$AWS_ENDPOINT_URL_S3``/``$AWS_ENDPOINT_URL``; given
    explicitly, they are exported to those variables so s3fs and boto3 agree with Spark.
    """
    remote = check_remote(remote) if remote and remote.strip() else env.get(env.SPARK_REMOTE_ENV)
    active = SparkSession.getActiveSession()
    if remote or (active is not None and is_connect(active)):  # fsspec's S3 settings, as below
        os.environ.update(storage_env(s3_endpoint or "", hadoop_aws_jars or ""))
    if active is None and remote:
        return _connect(remote, master)
    if active is not None and is_connect(active):
        log.info("reusing the active Spark Connect session (Spark %s)", active.version)
        ship_package(active, Path(helpers.__file__).parent)
        return active
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
    submit_args = env.get("PYSPARK_SUBMIT_ARGS")
    properties = None
    if master is not None:
        builder = builder.master(master)
        for key, value in master_conf(master, driver_memory, ml).items():
            builder = builder.config(key, value)
        if local_driver(master):
            os.environ.update(SPARK_LOCAL_IP=LOOPBACK)  # the UI binds there (else to 0.0.0.0)
            if headless():
                builder = builder.config("spark.ui.enabled", "false")
        properties = cluster_properties(master)
        if properties is not None:  # its secret reaches the JVM from the file, not its argv
            builder = builder.config("spark.authenticate", "true")
            rest = submit_args or "pyspark-shell"  # pyspark splits it as a shell would
            os.environ.update(
                PYSPARK_SUBMIT_ARGS=f"--properties-file {shlex.quote(str(properties))} {rest}"
            )
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
        if properties is not None and "spark.authenticate.secret" in str(exc):
            raise RuntimeError(
                f"the cluster at {master} authenticates its drivers, and this process already "
                "runs a Spark JVM that cannot take its secret now: start a new process (restart "
                "the kernel) and call get_spark with this master first"
            ) from exc
        if "spark.jars.packages" in conf:
            raise RuntimeError(
                f"Spark could not start with {conf['spark.jars.packages']} (needed for "
                f"{roots[0]} in local mode): the first run downloads it from Maven Central "
                f"into ~/.ivy2. Without internet, download hadoop-aws and its AWS SDK bundle "
                f"and pass hadoop_aws_jars='/path/hadoop-aws.jar,/path/aws-sdk-bundle.jar' "
                f"(or set ${env.HADOOP_AWS_JARS_ENV}). Spark's stderr names the download that "
                "failed."
            ) from exc
        raise
    finally:
        if properties is not None:  # the next JVM this process starts is not the cluster's
            if submit_args:
                os.environ.update(PYSPARK_SUBMIT_ARGS=submit_args)
            else:
                os.environ.pop("PYSPARK_SUBMIT_ARGS", None)
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session, master %s", spark.version, spark.sparkContext.master)
    if conf:
        require_s3a(spark, roots)
    return spark
