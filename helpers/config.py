"""Every pipeline parameter, with its default and meaning, in one place.

The notebooks' ``parameters`` cells mirror :data:`PARAMETERS`; ``python -m helpers.run``
and the tests read it too, so a default changes here and nowhere else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from helpers import env
from helpers.env import HADOOP_AWS_JARS_ENV, S3_ENDPOINT_ENVS, WEIGHTS_ENV
from helpers.features.spec import BATCH_SIZE, MAX_IMAGE_PIXELS, FeatureSpec
from helpers.paths import refuse_credentials, resolve

#: Image files the pipeline reads, by extension (any letter case), with Pillow's format name.
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)


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
        "spark_remote",
        "",
        str,
        "Spark Connect server, sc://host:port (python -m helpers.connect start); empty: "
        f"${env.SPARK_REMOTE_ENV}, else a classic session (spark_master). On Databricks the "
        "provided session, whichever kind",
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
        "without TensorFlow; or opt-in reduced precision, faster with features moved: "
        "litert-int8 (full-integer TFLite calibrated on 200 of the run's Training images; "
        "notebook 03 reports its probe change) or openvino-bf16",
    ),
    Parameter("image_size", 224, int, "side in pixels the images are resized to for the CNN"),
    Parameter("batch_size", BATCH_SIZE, int, "images per model call in the Python workers"),
    Parameter(
        "max_image_pixels",
        MAX_IMAGE_PIXELS,
        int,
        "largest image decoded, width x height read from its header: a larger one gets a row "
        "with an error instead of gigabytes of pixels",
    ),
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


#: How Spark Connect URLs start.
REMOTE_PREFIX = "sc://"


def check_remote(remote: str) -> str:
    """``remote`` stripped, if it is a Spark Connect URL; else a ValueError naming the form."""
    remote = remote.strip()
    if "token=" in remote.lower():  # injected into the notebooks, a token would stay there
        raise ValueError(
            f"spark_remote '{remote.split(';', 1)[0]};...' holds a token, refused: it would end "
            f"up in the executed notebooks; set ${env.SPARK_REMOTE_ENV} to the URL instead"
        )
    if not remote.startswith(REMOTE_PREFIX) or len(remote) == len(REMOTE_PREFIX):
        raise ValueError(
            f"spark_remote {remote!r} is not a Spark Connect URL: use sc://host:port (e.g. "
            "from python -m helpers.connect start), or leave it empty for a classic session"
        )
    return remote


def defaults() -> dict[str, Any]:
    """Return every parameter's default, with ``weights`` taken from $FRUITS_WEIGHTS if set."""
    values = {p.name: p.default for p in PARAMETERS}
    if env.get(WEIGHTS_ENV):
        values["weights"] = env.get(WEIGHTS_ENV)
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


#: Characters Hadoop reads as a glob pattern in the paths Spark loads: under a root holding
#: one, Spark would look for other files, or none.
GLOB_CHARS = "*?[]{}\\"


def _canonical(uri: str, name: str) -> str:
    """``uri`` in one spelling per location: ``s3a://``/``s3n://`` as ``s3://``, any scheme
    in lower case, a local path absolute with links resolved, no trailing ``/``."""
    resolved = resolve(uri, name)
    scheme, sep, rest = resolved.partition("://")
    if not sep:
        return resolved.rstrip("/")
    scheme = "s3" if scheme.lower() in ("s3a", "s3n") else scheme.lower()
    return f"{scheme}://{rest.rstrip('/')}"


def check_roots(data_root: str, output_root: str) -> None:
    """Refuse a ``data_root`` and an ``output_root`` that are one folder or nested.

    Outputs inside the data would be read as images by the next run (its figures as a class
    named ``figures``); data inside the outputs could be tidied away with them.
    """
    data, output = _canonical(data_root, "data_root"), _canonical(output_root, "output_root")
    if data == output or output.startswith(data + "/") or data.startswith(output + "/"):
        where = "the same folder" if data == output else "nested in one another"
        raise ValueError(
            f"data_root '{data_root}' and output_root '{output_root}' are {where} ({data}, "
            f"{output}): choose an output_root outside the images, and the images outside it"
        )


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check parameter values before any heavy work; return them coerced to their types."""
    values = {name: coerce(name, value) for name, value in params.items()}
    for name in ("data_root", "output_root", "weights", "s3_endpoint"):
        if values.get(name):  # first: no later message may show them
            refuse_credentials(str(values[name]), name)
    for name in ("data_root", "output_root"):
        found = sorted({c for c in str(values.get(name, "")) if c in GLOB_CHARS})
        if found:
            raise ValueError(
                f"{name} '{values[name]}' contains {' '.join(found)}: Spark reads such paths "
                f"as glob patterns ({GLOB_CHARS}) and would not find its files; use a folder "
                "name without them"
            )
    if values.get("data_root") and values.get("output_root"):
        check_roots(values["data_root"], values["output_root"])
    FeatureSpec.from_params(values)  # the feature settings given, checked as the step will
    variance = values.get("pca_variance", 0.95)
    if not 0 < variance <= 1:
        raise ValueError(f"pca_variance must be in (0, 1], got {variance}")
    for name in ("tsne_sample", "grid_per_class", "eda_image_size"):
        if name in values and values[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {values[name]}")
    for name in ("grid_classes", "eda_sample_per_class"):
        if name in values and values[name] < 0:
            raise ValueError(f"{name} must be 0 (all) or a positive integer, got {values[name]}")
    if values.get("spark_master", "").strip():
        values["spark_master"] = check_master(values["spark_master"])
    if values.get("spark_remote", "").strip():
        values["spark_remote"] = check_remote(values["spark_remote"])
    if values.get("pca_k", 0) < 0:
        raise ValueError(f"pca_k must be 0 (choose by variance) or positive, got {values['pca_k']}")
    return values
