"""What decides a deployment: :class:`EmrSettings`, checked on creation, and the names the
nodes share with ``bootstrap-emr.sh`` (environment, weights, profile)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from helpers import PROJECT_ROOT, __version__
from helpers.paths import refuse_credentials
from helpers.pins import SETS

DEFAULT_REGION = "eu-west-3"
DEFAULT_RELEASE = "emr-7.5.0"
APPLICATIONS = ("Hadoop", "Spark", "Livy", "JupyterHub")

#: The pinned sets bootstrap-emr.sh installs, per Python version of the nodes.
REQUIREMENTS = SETS

#: Where bootstrap-emr.sh puts the environment and the weights on every node (its defaults).
VENV_DIR = "/opt/fruits/venv"
VENV_PYTHON = f"{VENV_DIR}/bin/python"
WEIGHTS_DIR = "/opt/fruits/weights"
PROFILE = "/etc/profile.d/fruits.sh"

#: EMR's Spark on every node: the pipeline step puts its Python API on the path.
SPARK_HOME = "/usr/lib/spark"

WHEEL_NAME = f"fruits_pipeline-{__version__}-py3-none-any.whl"
SOURCE_NAME = "fruits-src.tar.gz"
BOOTSTRAP_NAME = "bootstrap-emr.sh"

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_RELEASE_RE = re.compile(r"^emr-7\.\d+\.\d+$")
_EU_PREFIX = "eu-"


@dataclass(frozen=True)
class EmrSettings:
    """Everything that decides the bucket, the uploads and the cluster; checked on creation.

    ``bucket`` has no default on purpose (bucket names are global and personal). Keys live
    under ``prefix``: ``code/``, ``data/``, ``models/``, ``out/``, ``logs/``,
    ``spark-history/``, ``tmp/``.
    """

    bucket: str
    prefix: str = "fruits"
    region: str = DEFAULT_REGION
    allow_non_eu_region: bool = False
    kms_key_id: str = ""  # empty: SSE-S3 (AES256); else SSE-KMS with this key
    tmp_days: int = 7  # tmp/ expires after this many days
    log_days: int = 30  # logs/ and spark-history/ expire after this many days
    name: str = "fruits"
    release: str = DEFAULT_RELEASE
    python: str = "3.9"
    instance_type: str = "m5.xlarge"
    core_count: int = 2
    task_count: int = 2  # spot task nodes; 0 for none
    task_instance_type: str = ""  # empty: instance_type
    idle_minutes: int = 60  # auto-termination after this long idle
    keep_alive: bool = True  # False: terminate when the steps are done (batch)
    service_role: str = "EMR_DefaultRole"
    instance_profile: str = "EMR_EC2_DefaultRole"
    subnet_id: str = ""
    key_name: str = ""
    security_configuration: str = ""
    executor_memory_overhead: str = "2g"  # TensorFlow in the Python workers lives off-heap
    root_volume_gb: int = 32
    data_root: str = ""  # empty: s3://<bucket>/<prefix>/data
    output_root: str = ""  # empty: s3://<bucket>/<prefix>/out
    weights: str = ""  # a local .h5 (uploaded to models/) or an s3:// URI; empty: imagenet
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _BUCKET_RE.match(self.bucket) or ".." in self.bucket:
            raise ValueError(
                f"bucket '{self.bucket}' is not a valid S3 bucket name: 3-63 lowercase letters, "
                "digits, dots or hyphens, starting and ending with a letter or digit"
            )
        if not self.prefix or self.prefix != self.prefix.strip("/") or "//" in self.prefix:
            raise ValueError(
                f"prefix '{self.prefix}' must be a non-empty key prefix without leading or "
                "trailing '/', e.g. 'fruits' or 'teams/fruits'"
            )
        if not self.region.startswith(_EU_PREFIX) and not self.allow_non_eu_region:
            raise ValueError(
                f"region '{self.region}' is outside the EU: data must stay in the EU (GDPR, "
                "docs/gdpr.md); use e.g. eu-west-3 (Paris), eu-west-1 or eu-central-1, or pass "
                "--allow-non-eu-region if your data protection officer agreed"
            )
        if not _RELEASE_RE.match(self.release):
            raise ValueError(
                f"release '{self.release}' is not an EMR 7.x release label (emr-7.N.N, e.g. "
                f"{DEFAULT_RELEASE}): the bootstrap and pins target EMR 7 (Spark 3.5, AL2023)"
            )
        if self.python not in REQUIREMENTS:
            raise ValueError(
                f"python '{self.python}' is not supported on the nodes; use one of "
                f"{sorted(REQUIREMENTS)}"
            )
        if not 1 <= self.idle_minutes <= 7 * 24 * 60:
            raise ValueError(
                f"idle_minutes must be between 1 and 10080 (7 days), got {self.idle_minutes}"
            )
        for name, low in (("core_count", 1), ("task_count", 0), ("tmp_days", 1), ("log_days", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("data_root", "output_root", "weights"):
            value = getattr(self, name).strip()
            refuse_credentials(value, name)  # before any message that would show the value
            scheme, sep, rest = value.partition("://")
            if sep and "/" not in scheme:  # S3://b/x is s3://b/x, as everywhere in the project
                value = scheme.lower() + sep + rest
            object.__setattr__(self, name, value)
        for name in ("data_root", "output_root"):
            value = getattr(self, name)
            if value and not value.startswith("s3://"):
                raise ValueError(
                    f"{name} '{value}' must be an s3:// URI: the cluster cannot see this "
                    "machine's disk (give --data DIR to upload a local folder instead)"
                )
        if self.weights and not self.weights.endswith((".h5", ".keras")):
            raise ValueError(
                f"weights '{self.weights}' is not a Keras weights file (*.h5 or *.keras)"
            )
        if "://" in self.weights and not self.weights.startswith("s3://"):
            raise ValueError(
                f"weights '{self.weights}' must be a local file (uploaded to models/) or an "
                "s3:// URI the cluster's instance role can read"
            )

    # --- where things are in the bucket ----------------------------------------------------
    def key(self, *parts: str) -> str:
        """The object key of ``parts`` under the prefix."""
        return "/".join([self.prefix, *(p.strip("/") for p in parts if p)])

    def uri(self, *parts: str) -> str:
        """The ``s3://`` URI of ``parts`` under the prefix."""
        return f"s3://{self.bucket}/{self.key(*parts)}"

    @property
    def data_uri(self) -> str:
        """The pipeline's ``data_root`` on the cluster."""
        return self.data_root.rstrip("/") or self.uri("data")

    @property
    def output_uri(self) -> str:
        """The pipeline's ``output_root`` on the cluster."""
        return self.output_root.rstrip("/") or self.uri("out")

    @property
    def logs_uri(self) -> str:
        """EMR's LogUri: node, bootstrap and step logs."""
        return self.uri("logs") + "/"

    @property
    def history_uri(self) -> str:
        """Spark's event logs, read by the history server."""
        return self.uri("spark-history") + "/"

    @property
    def requirements_file(self) -> Path:
        """The pinned set for the nodes' Python, in this checkout."""
        return PROJECT_ROOT / REQUIREMENTS[self.python]

    @property
    def weights_uri(self) -> str:
        """Where the nodes copy the weights from, or ``''`` for Keras' ImageNet download."""
        if not self.weights or self.weights.startswith("s3://"):
            return self.weights
        return self.uri("models", Path(self.weights).name)

    @property
    def weights_path(self) -> str:
        """The weights file on every node (FRUITS_WEIGHTS), or ``''``."""
        return f"{WEIGHTS_DIR}/{self.weights.rsplit('/', 1)[-1]}" if self.weights else ""
