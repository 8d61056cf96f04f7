"""Every environment variable the project reads, and the folders it caches things in.

Other modules ask this one rather than ``os.environ``, so each knob is named once, here.
(Setting variables for child processes, Spark's or papermill's, stays with their callers.)
"""

from __future__ import annotations

import os
from pathlib import Path

#: Overrides the default of the ``weights`` parameter (e.g. an offline .h5 file).
WEIGHTS_ENV = "FRUITS_WEIGHTS"
#: An S3-compatible endpoint, in the order boto3 reads them.
S3_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
#: The AWS region, in the order boto3 reads them.
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
#: Local hadoop-aws + AWS SDK jars (offline local Spark on S3), comma-separated.
HADOOP_AWS_JARS_ENV = "FRUITS_HADOOP_AWS_JARS"
#: The runtime a Python daemon pre-imports for its workers (:mod:`helpers.daemon`).
RUNTIME_ENV = "FRUITS_RUNTIME"
#: A Maven mirror for the S3A jars and Livy's repl check.
MAVEN_REPO_ENV = "FRUITS_MAVEN_REPO"
#: ``off`` starts the JVMs without the class archive of :mod:`helpers.spark.cds`.
CLASS_ARCHIVE_ENV = "FRUITS_CLASS_ARCHIVE"
#: ``full`` keeps the JVM's default JIT (C1 then C2) in the JVMs started here.
JIT_ENV = "FRUITS_JIT"
#: A Livy distribution folder to run instead of the cached one.
LIVY_HOME_ENV = "FRUITS_LIVY_HOME"
#: A Livy binary zip to install from.
LIVY_DIST_ENV = "FRUITS_LIVY_DIST"
#: sparkmagic's configuration folder (sparkmagic reads it too).
SPARKMAGIC_CONF_ENV = "SPARKMAGIC_CONF_DIR"
#: The Python that Spark's workers run.
PYSPARK_PYTHON_ENV = "PYSPARK_PYTHON"
#: A Spark Connect server (``sc://host:port``) that sessions are clients of (pyspark reads it too).
SPARK_REMOTE_ENV = "SPARK_REMOTE"
#: Set by Databricks Runtime on its clusters.
DATABRICKS_ENV = "DATABRICKS_RUNTIME_VERSION"

#: Cache folders under :func:`cache_root`, and the variable that moves each elsewhere.
CACHE_DIRS = {
    "weights": None,  # s3:// weights downloaded on the driver
    "tflite": None,  # converted models, keyed by model, size, weights and converter
    "onnx": None,
    "cds": None,  # the JVM class archive
    "jars": "FRUITS_JARS_CACHE",  # S3A jars from Maven Central
    "livy": "FRUITS_LIVY_CACHE",  # the unpacked Livy distribution
}


def get(name: str) -> str:
    """The value of ``$name``, ``''`` when unset."""
    return os.environ.get(name, "")


def first(names: tuple[str, ...]) -> str:
    """The value of the first of ``names`` that is set and not empty, else ``''``."""
    return next((os.environ[name] for name in names if os.environ.get(name)), "")


def is_off(name: str) -> bool:
    """Whether ``$name`` says no (``0``, ``off``, ``false``, ``no``)."""
    return get(name).lower() in ("0", "off", "false", "no")


def java_home() -> Path | None:
    """The Java installation that Spark starts: ``$JAVA_HOME`` (None when unset)."""
    home = get("JAVA_HOME")
    return Path(home).resolve() if home else None


def cache_root() -> Path:
    """Everything the project caches: ``$XDG_CACHE_HOME/fruits`` (``~/.cache/fruits``)."""
    return Path(get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "fruits"


def cache_dir(name: str) -> Path:
    """The cache folder ``name`` of :data:`CACHE_DIRS` (its variable, if set, wins)."""
    override = CACHE_DIRS[name]
    if override and get(override):
        return Path(get(override)).expanduser()
    return cache_root() / name
