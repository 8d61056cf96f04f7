"""The features dataset on storage: incremental, never half-written.

Layout: ``<output_root>/features/run=<id>/part-*.parquet``. Each run writes only the images
that are new or changed since the last one (same path, size and modification time means
unchanged) into a staging folder, then publishes it as a new ``run=`` folder with one
rename; readers keep the newest row per path. A run killed before that rename leaves the
previous outputs as they were: its staging folder is ignored and removed by the next run.
``overwrite`` featurizes everything again and, once published, removes the older runs.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from helpers.paths import join, spark_uri

log = logging.getLogger(__name__)

FEATURES = "features"
STAGING = "_staging"  # under output_root; a leading underscore hides it from Spark readers


def _hadoop_path(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    """The Hadoop FileSystem and Path for ``uri`` (local, HDFS, S3A, EMRFS, DBFS alike)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(spark_uri(uri))
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def remove(spark: SparkSession, uri: str) -> None:
    """Delete ``uri`` and everything under it, if it exists."""
    fs, path = _hadoop_path(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)


def publish(spark: SparkSession, staged: str, target: str) -> None:
    """Move the finished folder ``staged`` to ``target`` (one rename; replaces ``target``)."""
    fs, source = _hadoop_path(spark, staged)
    _, destination = _hadoop_path(spark, target)
    fs.mkdirs(destination.getParent())
    if fs.exists(destination):
        fs.delete(destination, True)
    if not fs.rename(source, destination):
        raise OSError(f"could not move {staged} to {target}")


def _runs(spark: SparkSession, output_root: str) -> list[str]:
    """Names of the published ``run=`` folders under ``features/``."""
    fs, path = _hadoop_path(spark, join(output_root, FEATURES))
    if not fs.exists(path):
        return []
    names = [status.getPath().getName() for status in fs.listStatus(path) if status.isDirectory()]
    return sorted(name for name in names if name.startswith("run="))


def new_run_id() -> str:
    """A run id that sorts by time: ``20261121T230102Z-1a2b3c``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def read_features(spark: SparkSession, output_root: str) -> DataFrame:
    """The current features: the newest row per path over all published runs."""
    runs = _runs(spark, output_root)
    if not runs:
        raise FileNotFoundError(
            f"no features under output_root '{output_root}': run 02_feature_extraction first"
        )
    rows = spark.read.parquet(spark_uri(join(output_root, FEATURES)))
    if len(runs) == 1:
        return rows
    newest = Window.partitionBy("path").orderBy(F.desc("run"))
    return rows.withColumn("_rank", F.row_number().over(newest)).where("_rank = 1").drop("_rank")


def pending_images(
    spark: SparkSession, images: DataFrame, output_root: str, overwrite: bool = False
) -> DataFrame:
    """The images of ``images`` that still need features: new, or changed since featurized."""
    if overwrite or not _runs(spark, output_root):
        return images
    done = read_features(spark, output_root).select(
        "path", F.col("size").alias("length"), F.col("modified").alias("modificationTime")
    )
    return images.join(done, ["path", "length", "modificationTime"], "left_anti")


def write_features(
    spark: SparkSession, features: DataFrame, output_root: str, overwrite: bool = False
) -> str:
    """Compute ``features`` into staging, then publish them as a new run; return its id.

    With ``overwrite`` the older runs are removed once the new one is published.
    """
    remove(spark, join(output_root, STAGING, FEATURES))  # leftovers of a killed run
    run_id = new_run_id()
    staged = join(output_root, STAGING, FEATURES, run_id)
    features.write.parquet(spark_uri(staged))
    publish(spark, staged, join(output_root, FEATURES, f"run={run_id}"))
    if overwrite:
        for old in _runs(spark, output_root):
            if old != f"run={run_id}":
                remove(spark, join(output_root, FEATURES, old))
    log.info("features run %s published under %s", run_id, join(output_root, FEATURES))
    return run_id


def feature_counts(features: DataFrame) -> dict[str, Any]:
    """Rows with features and rows with an error, in total and per split, plus sample errors."""
    by_split = (
        features.groupBy(F.coalesce("split", F.lit("(none)")).alias("split"))
        .agg(F.count("*").alias("rows"), F.count("features").alias("ok"))
        .collect()
    )
    errors = features.where(F.col("error").isNotNull()).select("path", "error").limit(100).collect()
    rows = sum(r["rows"] for r in by_split)
    ok = sum(r["ok"] for r in by_split)
    return {
        "rows": rows,
        "ok": ok,
        "errors": rows - ok,
        "by_split": {r["split"]: {"rows": r["rows"], "ok": r["ok"]} for r in by_split},
        "error_examples": {r["path"]: r["error"] for r in errors},
    }
