"""Which kind of Spark session the code holds: classic (a driver with a SparkContext in this
process or Livy's) or Spark Connect (a client of a remote driver: Databricks serverless and
standard access mode, ``spark.api.mode=connect``, ``sc://`` URLs).

A Connect session has no SparkContext, RDDs, broadcasts, accumulators or py4j; one check,
:func:`is_connect`, chooses the code path that needs none of them.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import functions as F

#: Partitions of the probe that counts a Connect session's default parallelism.
_PROBE_ROWS = 4096

_PARALLELISM: dict[int, int] = {}


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` (a SparkSession or a DataFrame) is a Spark Connect client's."""
    session = getattr(spark, "sparkSession", spark)
    return type(session).__module__.startswith("pyspark.sql.connect")


def default_parallelism(spark: Any) -> int:
    """The tasks Spark runs at once by default: the cores of ``spark``'s executors.

    On Connect, counted once per session from the partitions of a range (Spark gives a range
    the default parallelism; a job of milliseconds).
    """
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    key = id(spark)
    if key not in _PARALLELISM:
        probe = spark.range(_PROBE_ROWS).select(F.spark_partition_id().alias("p")).distinct()
        _PARALLELISM[key] = max(1, probe.count())
    return _PARALLELISM[key]


def require_classic(spark: Any, what: str, alternatives: str) -> None:
    """Stop with one message when ``what`` needs a classic session and ``spark`` is Connect."""
    if is_connect(spark):
        raise RuntimeError(
            f"{what} needs a classic Spark session (a SparkContext), and this one is a Spark "
            f"Connect client ({spark.version}): {alternatives}"
        )
