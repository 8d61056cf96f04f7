"""The SparkSession: local mode on a laptop or CI, the existing one on EMR and Databricks."""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: Settings every session gets: Arrow for pandas UDFs, quiet progress for headless runs.
SESSION_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
}

#: Extra settings for a local session, where the driver is also the only executor.
LOCAL_CONF = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1024",
    "spark.python.worker.reuse": "true",
    # workers forked from a daemon that already imported TensorFlow start in milliseconds
    "spark.python.daemon.module": "helpers.daemon",
}


#: A file every EMR node has; there the cluster's spark-defaults choose the master (YARN).
EMR_MARKER = "/mnt/var/lib/info/instance.json"


def on_cluster() -> bool:
    """Whether this process runs on an EMR node or a Databricks cluster."""
    return os.path.exists(EMR_MARKER) or "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(
    app_name: str = "fruits",
    master: str | None = None,
    driver_memory: str = "4g",
) -> SparkSession:
    """Return the active SparkSession if there is one (EMR, Databricks, Livy), else a new one.

    ``master`` defaults to ``local[*]`` off-cluster and to the cluster's own settings on EMR
    or Databricks. A local session runs its Python workers with the interpreter running this
    code, so the notebook kernel, the driver and the pandas UDFs see the same packages.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        log.info("reusing the active Spark session (master %s)", active.sparkContext.master)
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # workers inherit it: quiet TensorFlow
    builder = SparkSession.builder.appName(app_name)
    if master is None and not on_cluster():
        master = "local[*]"
    if master is not None and master.startswith("local"):
        builder = builder.master(master).config("spark.driver.memory", driver_memory)
        for key, value in LOCAL_CONF.items():
            builder = builder.config(key, value)
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session, master %s", spark.version, spark.sparkContext.master)
    return spark
