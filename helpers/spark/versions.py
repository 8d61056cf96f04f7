"""The versions of the installed Spark that a new session will launch, read from its files
(the JVM that could tell does not exist yet)."""

from __future__ import annotations

import re
from pathlib import Path

#: Jars whose name carries Spark's Hadoop version (client API first, then older layouts).
_HADOOP_JARS = (r"hadoop-client-api-(\d+\.\d+\.\d+)\.jar", r"hadoop-common-(\d+\.\d+\.\d+)\.jar")


def spark_home() -> Path:
    """The Spark installation sessions start: pip pyspark's, or ``$SPARK_HOME``."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def spark_version() -> str:
    """The installed pyspark's version, e.g. ``'3.5.8'``."""
    import pyspark

    return pyspark.__version__


def hadoop_version(home: str | Path | None = None) -> str:
    """The Hadoop version of the Spark at ``home`` (default :func:`spark_home`), e.g.
    ``'3.3.4'``, from its jar names: hadoop-aws must match it exactly."""
    jars = Path(home or spark_home(), "jars")
    for pattern in _HADOOP_JARS:
        for jar in sorted(jars.glob("hadoop-*.jar")):
            match = re.fullmatch(pattern, jar.name)
            if match:
                return match.group(1)
    raise RuntimeError(
        f"cannot tell Spark's Hadoop version: no hadoop-client-api-*.jar or hadoop-common-*.jar "
        f"in {jars}; pass hadoop_aws_jars= with the hadoop-aws jar matching your Spark"
    )


def scala_version(spark_version: str) -> str:
    """The Scala version of pip's pyspark ``spark_version``: 2.12 for 3.x, 2.13 from 4.0 on
    (Spark 4 is built for Scala 2.13 only)."""
    return "2.13" if int(spark_version.split(".")[0]) >= 4 else "2.12"
