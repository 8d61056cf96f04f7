"""The settings of the sessions this project starts, and of the clusters it configures.

Plain values and functions of the parameters: no session, no JVM (a leaf of
:mod:`helpers.spark`). :mod:`helpers.spark.session` applies them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from helpers import env
from helpers.paths import refuse_credentials

#: How every executor, local or on a cluster, runs Python: workers kept across tasks and
#: forked from :mod:`helpers.daemon` (the features UDFs' workers find their runtime
#: imported and start in milliseconds). Local and standalone sessions (:mod:`helpers.spark`),
#: the EMR configurations (:mod:`helpers.emr`) and ``databricks.yml`` carry these settings.
PYTHON_WORKER_CONF = {
    "spark.python.worker.reuse": "true",
    "spark.python.daemon.module": "helpers.daemon",
}

#: Settings every session gets: Arrow for pandas UDFs, quiet progress for headless runs.
SESSION_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
}

#: List up to 1,024 folders on the driver: above Spark's 32, listing Fruits-360's class
#: folders became a Spark job of its own (docs/decisions.md).
LISTING_CONF = {"spark.sql.sources.parallelPartitionDiscovery.threshold": "1024"}

#: Extra settings for a local session, where the driver is also the only executor: its RPC
#: and block manager listen on the loopback only (its UI too: ``SPARK_LOCAL_IP``, set by
#: :func:`helpers.spark.session.get_spark` and :mod:`helpers.dev.livy`).
LOCAL_CONF = {
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
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
    return Path(EMR_MARKER).exists() or bool(env.get(env.DATABRICKS_ENV))


def executor_conf(python: str | None = None) -> dict[str, str]:
    """Settings that make a cluster's executors run the project's Python with its daemon.

    ``python`` is the interpreter every executor host runs for the Python workers; by
    default ``$PYSPARK_PYTHON`` or this one (a standalone cluster on this machine, or hosts
    that install the project at the same path). The executors get TensorFlow's quiet log
    level too, as local workers do from the driver's environment.
    """
    python = python or env.get(env.PYSPARK_PYTHON_ENV) or sys.executable
    return {
        **PYTHON_WORKER_CONF,
        "spark.pyspark.python": python,
        "spark.executorEnv.PYSPARK_PYTHON": python,
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
    }


#: The JIT of the JVMs started here: C1 only leaves the cores to the Python workers
#: (docs/decisions.md); the code cache keeps C2's default size, which long sessions need.
JIT_OPTION = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"

#: Java 16+'s Vector API, which Spark ML's BLAS (dev.ludovic.netlib) uses when the module is
#: there: its SIMD kernels need C2, so it goes with the full JIT (``get_spark(ml=True)``).
VECTOR_OPTION = "--add-modules=jdk.incubator.vector"
#: The first Java feature release with ``jdk.incubator.vector``.
VECTOR_JAVA = 16


def s3_roots(roots: Iterable[str | None]) -> list[str]:
    """The roots among ``roots`` that are ``s3://`` or ``s3a://`` URIs (blanks ignored); a
    root holding credentials raises ``ValueError`` without showing them."""
    roots = [r for r in roots if r]
    for root in roots:
        refuse_credentials(root, "data_root/output_root")
    return [
        r.strip()
        for r in roots
        if r and r.strip().split("://", 1)[0].lower() in S3_SCHEMES and "://" in r
    ]


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
    cache ``python -m helpers.spark.jars fetch`` fills; else ``spark.jars.packages``, downloaded
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


def storage_env(s3_endpoint: str = "", hadoop_aws_jars: str = "") -> dict[str, str]:
    """Environment variables that carry explicitly given storage settings to other clients.

    An endpoint given as a parameter must reach s3fs, boto3 (papermill) and the notebook
    kernels too; they all read ``AWS_ENDPOINT_URL_S3``, so that is where it goes.
    """
    values = {}
    if s3_endpoint:
        values[env.S3_ENDPOINT_ENVS[0]] = s3_endpoint
    if hadoop_aws_jars:
        values[env.HADOOP_AWS_JARS_ENV] = hadoop_aws_jars
    return values


def resolve_s3_endpoint(s3_endpoint: str = "") -> str:
    """The S3-compatible endpoint URL to use, or ``''`` for AWS itself.

    ``s3_endpoint`` wins, then ``$AWS_ENDPOINT_URL_S3`` and ``$AWS_ENDPOINT_URL``: the
    variables boto3 and s3fs read themselves, so Spark, the manifest and papermill all talk
    to the same store. An endpoint holding credentials (``user:secret@``) raises without
    showing them: it would reach Spark's configuration, the kernels' environment and logs.
    """
    from helpers.paths import redact, refuse_credentials

    given = bool(s3_endpoint.strip())
    endpoint = s3_endpoint.strip() or env.first(env.S3_ENDPOINT_ENVS)
    name = "s3_endpoint" if given else f"${env.S3_ENDPOINT_ENVS[0]} or ${env.S3_ENDPOINT_ENVS[1]}"
    if "@" in endpoint and "://" not in endpoint:  # no scheme: 'KEY:SECRET@host:9000'
        endpoint = "http://" + endpoint
    refuse_credentials(endpoint, name)
    scheme, sep, rest = endpoint.partition("://")
    endpoint = scheme.lower() + sep + rest  # HTTPS://host is https://host
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ValueError(
            f"s3_endpoint '{redact(endpoint)}' is not a URL: give http(s)://host[:port] of the "
            f"S3-compatible store (parameter s3_endpoint or ${env.S3_ENDPOINT_ENVS[1]}), or "
            "nothing for AWS"
        )
    return endpoint.rstrip("/")


def resolve_hadoop_aws_jars(hadoop_aws_jars: str = "") -> list[str]:
    """The local jars giving Spark the S3A connector, or ``[]`` to download them instead.

    ``hadoop_aws_jars`` (comma-separated) wins over ``$FRUITS_HADOOP_AWS_JARS``. A jar that
    does not exist raises now rather than as a Java error when Spark starts.
    """
    value = hadoop_aws_jars.strip() or env.get(env.HADOOP_AWS_JARS_ENV).strip()
    jars = [part.strip() for part in value.split(",") if part.strip()]
    resolved = []
    for jar in jars:
        if "://" in jar:  # a URL Spark fetches itself
            resolved.append(jar)
            continue
        path = Path(jar).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"hadoop-aws jar '{jar}' not found: fix the 'hadoop_aws_jars' parameter or "
                f"${env.HADOOP_AWS_JARS_ENV} (comma-separated local jars), or leave both empty to "
                "download hadoop-aws from Maven Central"
            )
        resolved.append(str(path.resolve()))
    return resolved


def aws_region() -> str:
    """The AWS region from ``$AWS_REGION`` or ``$AWS_DEFAULT_REGION``, ``''`` if unset."""
    return env.first(env.REGION_ENVS)
