"""Every pipeline parameter, with its default and meaning, in one place.

The notebooks' ``parameters`` cells mirror :data:`PARAMETERS`; ``python -m helpers.run``
and the tests read it too, so a default changes here and nowhere else. Environment
variables are read here and only here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Environment variable that overrides the default of ``weights`` (e.g. an offline .h5 file).
WEIGHTS_ENV = "FRUITS_WEIGHTS"

#: Environment variables naming an S3-compatible endpoint, in the order boto3 reads them.
S3_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

#: Environment variables naming the AWS region, in the order boto3 reads them.
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")

#: Environment variable with local hadoop-aws + AWS SDK jars (offline local Spark on S3).
HADOOP_AWS_JARS_ENV = "FRUITS_HADOOP_AWS_JARS"

#: The CNNs the pipeline knows: Keras application name, feature width, preprocessing module.
MODELS: dict[str, dict[str, Any]] = {
    "mobilenet_v2": {"keras": "MobileNetV2", "dim": 1280, "module": "mobilenet_v2"},
    "resnet50": {"keras": "ResNet50", "dim": 2048, "module": "resnet50"},
}

#: The OpenVINO runtimes and the inference precision each asks of the CPU plugin: ``f32``
#: (exact to 1e-4 of Keras) or ``bf16`` (opt-in, reduced precision: faster where the CPU
#: has bfloat16 instructions, features moved; see bench/README.md#runtimes).
OPENVINO_PRECISION = {"openvino": "f32", "openvino-bf16": "bf16"}

#: Inference runtimes of the feature step: Keras itself, the model converted to TFLite and
#: run by LiteRT (XNNPACK), or converted to ONNX and run by ONNX Runtime or OpenVINO (the
#: same ONNX file for all three).
RUNTIMES = ("keras", "litert", "onnxruntime", *OPENVINO_PRECISION)

#: What the ``runtime`` parameter takes: a runtime, or ``auto`` (the fastest exact one that
#: is installed: :func:`helpers.inference.resolve_runtime`).
RUNTIME_CHOICES = ("auto", *RUNTIMES)

#: Images per model call, by default: with one thread per Python worker, a small batch keeps
#: each layer's activations in the core's caches (bench/README.md#model-batch).
BATCH_SIZE = 4

#: Environment variable of the Python workers' daemon (:mod:`helpers.daemon`): the runtime
#: its workers run, imported before the fork; unset (any UDF but the features'): none.
RUNTIME_ENV = "FRUITS_RUNTIME"

#: How every executor, local or on a cluster, runs Python: workers kept across tasks and
#: forked from :mod:`helpers.daemon` (the features UDFs' workers find their runtime
#: imported and start in milliseconds). Local and standalone sessions (:mod:`helpers.spark`),
#: the EMR configurations (:mod:`helpers.emr`) and ``databricks.yml`` carry these settings.
PYTHON_WORKER_CONF = {
    "spark.python.worker.reuse": "true",
    "spark.python.daemon.module": "helpers.daemon",
}

#: Image files the pipeline reads, by extension (any letter case), with Pillow's format name.
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)

#: Scratch folder under ``output_root`` (PCA outputs before they are published); the leading
#: underscore hides it from Spark readers, and the EMR bucket's lifecycle expires it.
STAGING = "_staging"


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter: its name, default, type and meaning."""

    name: str
    default: Any
    type: type
    help: str


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "data_root",
        "data_sample",
        str,
        "images root: local path (relative to the repository or absolute), file:, s3://",
    ),
    Parameter(
        "output_root",
        "outputs",
        str,
        "where features/, pca/, pca_model/, figures/, manifest.json and notebooks/ go",
    ),
    Parameter(
        "s3_endpoint",
        "",
        str,
        "S3-compatible store URL (MinIO, Ceph...) for s3:// roots; empty: "
        f"${S3_ENDPOINT_ENVS[0]} or ${S3_ENDPOINT_ENVS[1]}, else AWS itself",
    ),
    Parameter(
        "hadoop_aws_jars",
        "",
        str,
        "local Spark on s3:// without Maven Central: comma-separated hadoop-aws and AWS SDK "
        f"bundle jars; empty: ${HADOOP_AWS_JARS_ENV}, else those `make jars` cached, else Ivy",
    ),
    Parameter(
        "spark_master",
        "",
        str,
        "Spark master: empty for local[*,3] off-cluster and the cluster's own session on "
        "EMR, Databricks and Livy; or spark://host:7077 (python -m helpers.cluster), yarn, "
        "local[N]",
    ),
    Parameter(
        "weights",
        "imagenet",
        str,
        f"'imagenet' (Keras download), a local .h5 path or an s3:// URI; ${WEIGHTS_ENV} "
        "overrides the default; 'random' is for tests only",
    ),
    Parameter("model_name", "mobilenet_v2", str, "CNN without its top: mobilenet_v2 or resnet50"),
    Parameter(
        "runtime",
        "auto",
        str,
        "inference runtime: auto (litert where installed, else onnxruntime, else keras), "
        "keras (TensorFlow), litert (the model converted to TFLite once per weights), "
        "onnxruntime or openvino (converted to ONNX): same features within 1e-4, workers "
        "without TensorFlow; or openvino-bf16 (opt-in reduced precision: faster, features "
        "moved)",
    ),
    Parameter("image_size", 224, int, "side in pixels the images are resized to for the CNN"),
    Parameter("batch_size", BATCH_SIZE, int, "images per model call inside the pandas UDF"),
    Parameter(
        "overwrite", False, bool, "featurize every image again instead of only new or changed ones"
    ),
    Parameter("pca_variance", 0.95, float, "keep the fewest components reaching this variance"),
    Parameter("pca_k", 0, int, "number of components; 0 chooses k from pca_variance"),
    Parameter("tsne_sample", 2000, int, "points in the stratified t-SNE sample"),
    Parameter("tsne_perplexity", 30.0, float, "t-SNE perplexity"),
    Parameter("grid_per_class", 4, int, "images per class in the EDA sample grid"),
    Parameter("grid_classes", 24, int, "classes shown in the EDA sample grid (0: all)"),
    Parameter(
        "eda_sample_per_class",
        30,
        int,
        "images per class behind the EDA class mean images and variability (0: all)",
    ),
    Parameter("eda_image_size", 50, int, "side in pixels of the EDA mean images"),
    Parameter("seed", 42, int, "seed for every sample and for t-SNE"),
)

_BY_NAME = {p.name: p for p in PARAMETERS}

#: Masters that ``spark_master`` accepts (Spark's own spellings).
MASTER_PREFIXES = ("local", "spark://", "yarn", "k8s://", "mesos://")


def check_master(master: str) -> str:
    """``master`` stripped, if it is a Spark master URL; else a ValueError naming the fix."""
    master = master.strip()
    if not master.startswith(MASTER_PREFIXES):
        raise ValueError(
            f"spark_master {master!r} is not a Spark master: use local[N], spark://host:7077 "
            f"(e.g. from python -m helpers.cluster start), yarn or k8s://..., or leave it "
            f"empty for local[*,3] (the cluster's own session on EMR, Databricks, Livy)"
        )
    return master


#: Test hook: ``crash-worker:N`` kills the Python worker at its Nth batch on the first attempt
#: of the first task (Spark must retry it); ``kill-driver:N`` kills the driver there (a run
#: interrupted mid-write). Never set in production.
FAULT_ENV = "FRUITS_FAULT"


#: ``kill-publish:STEP`` kills the process at that step of publishing a run (tests only):
#: see :func:`helpers.dataset.fault_point`.
PUBLISH_FAULT = "kill-publish"


#: Test hook: a folder where the feature UDF leaves one empty file per Arrow batch it has
#: featurized, ``<partition>-<attempt>-<batch>-<pid>`` (pid: the Python worker's), so a test
#: can wait for featurization to be under way, and see which tasks ran again, before and
#: after it kills an executor. Never set in production.
PROGRESS_ENV = "FRUITS_PROGRESS_DIR"


def progress_dir() -> str | None:
    """The folder ``$FRUITS_PROGRESS_DIR`` asks the feature UDF to mark batches in (tests)."""
    return os.environ.get(PROGRESS_ENV) or None


def fault_injection() -> tuple[str, int] | None:
    """The fault ``$FRUITS_FAULT`` asks the feature UDF to inject, if any (tests only)."""
    value = os.environ.get(FAULT_ENV, "")
    if not value or value.startswith(PUBLISH_FAULT + ":"):
        return None
    kind, _, batch = value.partition(":")
    if kind not in ("crash-worker", "kill-driver") or not batch.isdigit():
        raise ValueError(
            f"{FAULT_ENV}={value!r}: expected crash-worker:N, kill-driver:N or kill-publish:STEP"
        )
    return kind, int(batch)


def daemon_runtime() -> str:
    """The runtime ``$FRUITS_RUNTIME`` gives this Python daemon's workers ('' if none)."""
    return os.environ.get(RUNTIME_ENV, "")


def defaults() -> dict[str, Any]:
    """Return every parameter's default, with ``weights`` taken from $FRUITS_WEIGHTS if set."""
    values = {p.name: p.default for p in PARAMETERS}
    if os.environ.get(WEIGHTS_ENV):
        values["weights"] = os.environ[WEIGHTS_ENV]
    return values


def add_parameter_option(parser: argparse.ArgumentParser, text: str) -> None:
    """The repeatable ``-p NAME VALUE`` option that passes any pipeline parameter."""
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help=text,
    )


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (often a command-line string) to the type of parameter ``name``."""
    if name not in _BY_NAME:
        known = ", ".join(sorted(_BY_NAME))
        raise ValueError(f"unknown parameter '{name}'; known parameters: {known}")
    kind = _BY_NAME[name].type
    if kind is bool and isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"parameter '{name}' must be true or false, got {value!r}")
        return value.strip().lower() in ("true", "1", "yes")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"parameter '{name}' must be int, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameter '{name}' must be {kind.__name__}, got {value!r}") from exc


#: Where weights named by a URI (``s3://...``) are downloaded to on the driver.
WEIGHTS_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "fruits"


def resolve_weights(weights: str) -> str:
    """Return what Keras' ``weights=`` should get: ``'imagenet'``, ``'random'`` or a file path.

    ``$FRUITS_WEIGHTS`` replaces the default ``'imagenet'``, so an offline machine or CI can
    point every notebook at a local copy without editing them. A URI (``s3://``, ``dbfs:/``)
    is downloaded once to ``WEIGHTS_CACHE`` (again if its size changed): air-gapped clusters
    keep the file in their bucket, and only the driver reads it (the workers get the
    broadcast). A file that does not exist raises at once, naming both ways to fix it.
    """
    if weights == "imagenet" and os.environ.get(WEIGHTS_ENV):
        weights = os.environ[WEIGHTS_ENV]
    if weights in ("imagenet", "random"):
        return weights
    from helpers.paths import download, is_remote

    if is_remote(weights):
        return str(download(weights, WEIGHTS_CACHE / "weights", missing=_no_weights(weights)))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(_no_weights(weights))
    return str(path.resolve())


def _no_weights(weights: str) -> str:
    return (
        f"weights file '{weights}' not found: pass weights='imagenet' (Keras download, needs "
        f"internet), a local .h5 path or an s3:// URI, as the 'weights' parameter or "
        f"${WEIGHTS_ENV}"
    )


#: Characters Hadoop reads as a glob pattern in the paths Spark loads: under a root holding
#: one, Spark would look for other files, or none.
GLOB_CHARS = "*?[]{}\\"


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check parameter values before any heavy work; return them coerced to their types."""
    values = {name: coerce(name, value) for name, value in params.items()}
    for name in ("data_root", "output_root"):
        found = sorted({c for c in str(values.get(name, "")) if c in GLOB_CHARS})
        if found:
            raise ValueError(
                f"{name} '{values[name]}' contains {' '.join(found)}: Spark reads such paths "
                f"as glob patterns ({GLOB_CHARS}) and would not find its files; use a folder "
                "name without them"
            )
    if values.get("model_name", "mobilenet_v2") not in MODELS:
        raise ValueError(
            f"model_name '{values['model_name']}' is unknown; use one of {sorted(MODELS)}"
        )
    if values.get("runtime", "auto") not in RUNTIME_CHOICES:
        raise ValueError(
            f"runtime '{values['runtime']}' is unknown; use one of {list(RUNTIME_CHOICES)} "
            "(parameter 'runtime')"
        )
    variance = values.get("pca_variance", 0.95)
    if not 0 < variance <= 1:
        raise ValueError(f"pca_variance must be in (0, 1], got {variance}")
    for name in ("image_size", "batch_size", "tsne_sample", "grid_per_class", "eda_image_size"):
        if name in values and values[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {values[name]}")
    for name in ("grid_classes", "eda_sample_per_class"):
        if name in values and values[name] < 0:
            raise ValueError(f"{name} must be 0 (all) or a positive integer, got {values[name]}")
    if values.get("spark_master", "").strip():
        values["spark_master"] = check_master(values["spark_master"])
    if values.get("pca_k", 0) < 0:
        raise ValueError(f"pca_k must be 0 (choose by variance) or positive, got {values['pca_k']}")
    return values


def resolve_s3_endpoint(s3_endpoint: str = "") -> str:
    """The S3-compatible endpoint URL to use, or ``''`` for AWS itself.

    ``s3_endpoint`` wins, then ``$AWS_ENDPOINT_URL_S3`` and ``$AWS_ENDPOINT_URL``: the
    variables boto3 and s3fs read themselves, so Spark, the manifest and papermill all talk
    to the same store.
    """
    endpoint = s3_endpoint.strip() or next(
        (os.environ[name] for name in S3_ENDPOINT_ENVS if os.environ.get(name)), ""
    )
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ValueError(
            f"s3_endpoint '{endpoint}' is not a URL: give http(s)://host[:port] of the "
            f"S3-compatible store (parameter s3_endpoint or ${S3_ENDPOINT_ENVS[1]}), or nothing "
            "for AWS"
        )
    return endpoint.rstrip("/")


def resolve_hadoop_aws_jars(hadoop_aws_jars: str = "") -> list[str]:
    """The local jars giving Spark the S3A connector, or ``[]`` to download them instead.

    ``hadoop_aws_jars`` (comma-separated) wins over ``$FRUITS_HADOOP_AWS_JARS``. A jar that
    does not exist raises now rather than as a Java error when Spark starts.
    """
    value = hadoop_aws_jars.strip() or os.environ.get(HADOOP_AWS_JARS_ENV, "").strip()
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
                f"${HADOOP_AWS_JARS_ENV} (comma-separated local jars), or leave both empty to "
                "download hadoop-aws from Maven Central"
            )
        resolved.append(str(path.resolve()))
    return resolved


def aws_region() -> str:
    """The AWS region from ``$AWS_REGION`` or ``$AWS_DEFAULT_REGION``, ``''`` if unset."""
    return next((os.environ[name] for name in REGION_ENVS if os.environ.get(name)), "")
