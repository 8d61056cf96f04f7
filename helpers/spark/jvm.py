"""Every call this project makes into Spark's JVM through py4j, in one place.

Hadoop's ``FileSystem`` (the atomic publish of features, models and commit records, on
local disk, HDFS, S3A, EMRFS or DBFS alike), the construction of fitted Spark ML models
from numpy arrays (``StandardScalerModel``, ``PCAModel``), the Hadoop configuration and
version, the files behind a DataFrame's plan, and the driver's status store go through
``spark.sparkContext._jvm`` / ``_jsc`` / ``_gateway`` / ``DataFrame._jdf``: private PySpark
attributes of a *classic* session, whose driver runs a JVM beside this Python process.

Spark Connect limit: none of these calls works on a Spark Connect session (``pyspark``'s
``sql.connect`` client, Databricks serverless compute and Databricks shared-access-mode
clusters, Spark 4's ``spark.remote``): there is no ``SparkContext`` and no py4j gateway on
the client. The pipeline therefore needs a classic session (EMR, Databricks single-user or
no-isolation clusters, local and standalone Spark, Livy). Porting to Spark Connect means
replacing the functions of this module, and only them, e.g. with ``pyarrow.fs`` / fsspec
for the file system and Spark ML's own estimators for the models. The other modules also
use ``spark.sparkContext`` (broadcasts, accumulators, the Python workers' environment),
which Spark Connect lacks as well.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
from py4j.protocol import Py4JError
from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession

from helpers.paths import spark_uri


def _context(spark: SparkSession | None = None) -> SparkContext:
    """The classic SparkContext behind ``spark`` (or the active one)."""
    return spark.sparkContext if spark is not None else SparkContext.getOrCreate()


# --- Hadoop FileSystem ---------------------------------------------------------------------


def _fs_path(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    """The Hadoop FileSystem and Path for ``uri`` (local, HDFS, S3A, EMRFS, DBFS alike)."""
    context = _context(spark)
    path = context._jvm.org.apache.hadoop.fs.Path(spark_uri(uri))
    return path.getFileSystem(context._jsc.hadoopConfiguration()), path


def fs_scheme(spark: SparkSession, uri: str) -> str:
    """The scheme of the file system that holds ``uri`` (``file``, ``s3a``, ``hdfs``...)."""
    fs, _ = _fs_path(spark, uri)
    return str(fs.getUri().getScheme())


def fs_delete(spark: SparkSession, uri: str, recursive: bool = True) -> None:
    """Delete ``uri`` (and, ``recursive``, everything under it) if it exists."""
    fs, path = _fs_path(spark, uri)
    if fs.exists(path):
        fs.delete(path, recursive)


def fs_move(spark: SparkSession, source: str, target: str) -> None:
    """Rename ``source`` to ``target``, replacing ``target``; its parent is created.

    One rename: atomic on local disk and HDFS, a copy and a delete per file on S3.
    """
    fs, origin = _fs_path(spark, source)
    _, destination = _fs_path(spark, target)
    fs.mkdirs(destination.getParent())
    if fs.exists(destination):
        fs.delete(destination, True)
    if not fs.rename(origin, destination):
        raise OSError(f"could not move {source} to {target}")


def fs_write(spark: SparkSession, uri: str, data: bytes) -> None:
    """Create (or replace) the file ``uri`` holding ``data``: one create-write-close."""
    fs, path = _fs_path(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def fs_read_text(spark: SparkSession, uri: str) -> str:
    """The text (UTF-8) of the file ``uri``."""
    fs, path = _fs_path(spark, uri)
    stream = fs.open(path)
    try:
        return _context(spark)._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def fs_children(spark: SparkSession, uri: str) -> list[tuple[str, bool, int]]:
    """Name, is-folder and size of each entry directly under ``uri`` (none if missing)."""
    fs, path = _fs_path(spark, uri)
    if not fs.exists(path):
        return []
    return [
        (status.getPath().getName(), status.isDirectory(), status.getLen())
        for status in fs.listStatus(path)
    ]


# --- file listings ------------------------------------------------------------------------


def input_files(frame: DataFrame) -> list[str]:
    """The files a file-scan DataFrame reads, as ``DataFrame.inputFiles()`` gives them.

    In one py4j call (pyspark's ``inputFiles()`` makes one per file). A DataFrame without a
    JVM side (Spark Connect) uses ``inputFiles()``.
    """
    jdf = getattr(frame, "_jdf", None)
    if jdf is None:
        return frame.inputFiles()
    return _joined(frame, jdf.inputFiles())


def _joined(frame: DataFrame, names: Any) -> list[str]:
    """A JVM ``String[]`` as a list, in one py4j call (the JVM joins the names)."""
    joined = _context(frame.sparkSession)._jvm.org.apache.hadoop.util.StringUtils.join("\0", names)
    return joined.split("\0") if joined else []


def parquet_scan_files(frame: DataFrame) -> list[str] | None:
    """The files ``frame`` reads when its plan is nothing but a scan of Parquet files; else None.

    The analyzed plan must be one ``LogicalRelation`` over a ``HadoopFsRelation`` in the
    Parquet format (no filter, projection, union or join); its files come from the relation
    itself, as URIs: ``DataFrame.inputFiles()`` finds none once the frame is cached. None on
    Spark Connect, or for a plan py4j cannot read this way.
    """
    jdf = getattr(frame, "_jdf", None)
    if jdf is None:
        return None
    try:
        plan = jdf.queryExecution().analyzed()
        if plan.getClass().getSimpleName() != "LogicalRelation":
            return None
        relation = plan.relation()
        if relation.getClass().getSimpleName() != "HadoopFsRelation":
            return None
        if relation.fileFormat().getClass().getSimpleName() != "ParquetFileFormat":
            return None
        return _joined(frame, relation.location().inputFiles())
    except Py4JError:
        return None


# --- Hadoop configuration ------------------------------------------------------------------


def jvm_hadoop_version(spark: SparkSession) -> str:
    """The version of the Hadoop libraries in the driver's JVM (e.g. ``3.3.4``)."""
    return str(_context(spark)._jvm.org.apache.hadoop.util.VersionInfo.getVersion())


def hadoop_conf_get(spark: SparkSession, key: str) -> str | None:
    """The session's Hadoop configuration value of ``key`` (None when unset)."""
    value = _context(spark)._jsc.hadoopConfiguration().get(key)
    return None if value is None else str(value)


def hadoop_conf_set(spark: SparkSession, values: dict[str, str]) -> None:
    """Set ``values`` in the running session's Hadoop configuration."""
    conf = _context(spark)._jsc.hadoopConfiguration()
    for key, value in values.items():
        conf.set(key, value)


def filesystem_class_error(spark: SparkSession, scheme: str) -> Exception | None:
    """None when the driver's JVM has a FileSystem for ``scheme``, else the JVM's error."""
    context = _context(spark)
    try:
        context._jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(
            scheme, context._jsc.hadoopConfiguration()
        )
    except Exception as exc:  # Py4JJavaError: ClassNotFound or UnsupportedFileSystem
        return exc
    return None


# --- the driver ---------------------------------------------------------------------------


def jvm_pid(spark: SparkSession) -> int:
    """The process id of the driver's JVM."""
    return int(_context(spark)._jvm.java.lang.ProcessHandle.current().pid())


def executor_cores(spark: SparkSession) -> tuple[int, int]:
    """(executors, their cores in all) registered with ``spark``, the driver left out."""
    summaries = _context(spark)._jsc.sc().statusStore().executorList(True)
    executors = [summaries.apply(i) for i in range(summaries.size())]
    executors = [e for e in executors if e.id() != "driver"]
    return len(executors), sum(e.totalCores() for e in executors)


# --- fitted Spark ML models from numpy -----------------------------------------------------


def _doubles(context: SparkContext, values: np.ndarray) -> Any:
    """``values`` as a JVM ``double[]``, passed through a temporary file on the driver.

    Faster than Py4J's base64 text for a PCA matrix of megabytes; the driver's Python and
    JVM share a host.
    """
    jvm = context._jvm
    data = np.ascontiguousarray(values, dtype="<f8").ravel()
    raw = jvm.java.nio.ByteBuffer.allocate(data.nbytes)
    with tempfile.NamedTemporaryFile(suffix=".f64") as handle:
        data.tofile(handle.name)
        channel = jvm.java.io.RandomAccessFile(handle.name, "r").getChannel()
        try:
            while raw.hasRemaining() and channel.read(raw) >= 0:
                pass
        finally:
            channel.close()
    doubles = context._gateway.new_array(jvm.double, data.size)
    raw.flip()  # (on Java 8 flip() returns a Buffer, which has no order())
    raw.order(jvm.java.nio.ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(doubles)
    return doubles


def _java_vector(context: SparkContext, values: np.ndarray) -> Any:
    """A JVM ``DenseVector`` of ``values``."""
    # pyspark.ml at first use only: it costs every Python worker importing this module 0.4 s
    from pyspark.ml.common import _py2java
    from pyspark.ml.linalg import DenseVector

    return _py2java(context, DenseVector(values))


def java_pca_model(uid: str, axes: np.ndarray, explained: np.ndarray) -> Any:
    """A JVM ``org.apache.spark.ml.feature.PCAModel`` with the columns of ``axes`` (d x k)
    as principal components and ``explained`` (k) as their explained variance."""
    context = _context()
    jvm = context._jvm
    rows, k = axes.shape
    matrix = jvm.org.apache.spark.ml.linalg.DenseMatrix(
        rows, k, _doubles(context, axes.ravel(order="F"))
    )
    return jvm.org.apache.spark.ml.feature.PCAModel(uid, matrix, _java_vector(context, explained))


def java_standard_scaler_model(uid: str, mean: np.ndarray, std: np.ndarray) -> Any:
    """A JVM ``org.apache.spark.ml.feature.StandardScalerModel`` with ``mean`` and ``std``."""
    context = _context()
    return context._jvm.org.apache.spark.ml.feature.StandardScalerModel(
        uid, _java_vector(context, std), _java_vector(context, mean)
    )
