"""Which kind of Spark session the code holds: classic (a driver with a SparkContext in this
process or Livy's) or Spark Connect (a client of a remote driver: Databricks serverless and
standard access mode, ``spark.api.mode=connect``, ``sc://`` URLs).

A Connect session has no SparkContext, RDDs, broadcasts, accumulators or py4j; one check,
:func:`is_connect`, chooses the code path that needs none of them.
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any

from pyspark.sql import functions as F

#: Partitions of the probe that counts a Connect session's default parallelism.
_PROBE_ROWS = 4096

_PARALLELISM: dict[int, int] = {}


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` (a SparkSession or a DataFrame) is a Spark Connect client's."""
    session = getattr(spark, "sparkSession", spark)
    return type(session).__module__.startswith("pyspark.sql.connect")


def session_key(spark: Any) -> str:
    """What identifies ``spark``'s session: its application (classic), its session (Connect)."""
    if is_connect(spark):
        return f"connect-{spark.session_id}"
    return str(spark.sparkContext.applicationId)


def metadata_context(spark: Any) -> Any:
    """What pyspark.ml's ``DefaultParamsWriter``/``Reader`` take: the SparkContext (every
    version, classic), the session itself on Connect (Spark 4 reads and writes through it)."""
    return spark if is_connect(spark) else spark.sparkContext


def default_parallelism(spark: Any) -> int:
    """The tasks Spark runs at once by default: the cores of ``spark``'s executors.

    On Connect, read once per session from the plan of a range, which Spark splits into the
    default parallelism (no job: 0.8 s on a cold local server); from a small job counting a
    range's partitions if the plan does not say.
    """
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    key = id(spark)
    if key not in _PARALLELISM:
        plan = io.StringIO()
        with contextlib.redirect_stdout(plan):  # explain() prints: no job runs
            spark.range(1).explain()
        splits = re.search(r"splits=(\d+)", plan.getvalue())
        if splits is None:
            probe = spark.range(_PROBE_ROWS).select(F.spark_partition_id()).distinct()
            _PARALLELISM[key] = max(1, probe.count())
        else:
            _PARALLELISM[key] = max(1, int(splits.group(1)))
    return _PARALLELISM[key]


#: Where the notebooks that fit Spark ML models run, when this Connect session cannot.
ML_ALTERNATIVES = (
    "run it on Spark 4 (Databricks Runtime 17 or later; a Spark 4.0 Connect server), or on a "
    "classic session (Databricks dedicated access mode, EMR, local Spark)"
)


def require_connect_ml(spark: Any, notebook: str) -> None:
    """Stop ``notebook`` at its first Spark cell, in one message, when it fits Spark ML models
    and ``spark`` is a Spark Connect client that cannot: Spark 3.5's Connect serves only
    ``pyspark.ml.connect`` (no PCA, no persisted pipelines); Spark 4.0 serves ``pyspark.ml``.
    """
    if not is_connect(spark):
        return
    version = spark.version
    if int(version.split(".")[0]) < 4:
        raise RuntimeError(
            f"{notebook} fits and saves Spark ML models (StandardScaler, PCA, "
            f"LogisticRegression, a PipelineModel), which Spark Connect serves from Spark 4.0 "
            f"on; this session is a Spark Connect client of Spark {version}: {ML_ALTERNATIVES}"
        )
