"""EMR as code: an EU bucket, the uploads, a cluster that runs the notebooks, status, end.

    python -m helpers.emr deploy --bucket NAME [--region eu-west-3] [--data data_sample]
        [--weights FILE.h5] [--python 3.9|3.11] [--run] [--dry-run]
    python -m helpers.emr bucket --bucket NAME [--dry-run]
    python -m helpers.emr run --bucket NAME --cluster-id j-XXXX [-p NAME VALUE]... [--dry-run]
    python -m helpers.emr status --cluster-id j-XXXX
    python -m helpers.emr terminate --cluster-id j-XXXX

The request builders (:func:`bucket_encryption`, :func:`lifecycle_rules`,
:func:`configurations`, :func:`job_flow_request`, :func:`pipeline_step`...) are pure
functions of :class:`EmrSettings`, so the whole plan prints with ``--dry-run`` and is tested
without AWS. The functions that call AWS are thin and take boto3 clients, made by
:func:`clients` with an optional ``endpoint_url`` (moto's server in the tests). Credentials
are never parameters: boto3's default chain (environment, ``AWS_PROFILE``, SSO, instance
role) provides them. GDPR choices (EU region, encryption, TLS only, retention) are enforced
here; ``docs/gdpr.md`` says where.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from helpers import __version__
from helpers.config import coerce
from helpers.paths import PROJECT_ROOT
from helpers.run import add_parameter_option
from helpers.spark import PYTHON_WORKER_CONF

log = logging.getLogger(__name__)

DEFAULT_REGION = "eu-west-3"
DEFAULT_RELEASE = "emr-7.5.0"
APPLICATIONS = ("Hadoop", "Spark", "Livy", "JupyterHub")

#: The pinned sets bootstrap-emr.sh installs, per Python version of the nodes.
REQUIREMENTS = {"3.9": "emr/requirements-py39.txt", "3.11": "emr/requirements-py311.txt"}

#: Where bootstrap-emr.sh puts the environment and the weights on every node (its defaults).
VENV_DIR = "/opt/fruits/venv"
VENV_PYTHON = f"{VENV_DIR}/bin/python"
WEIGHTS_DIR = "/opt/fruits/weights"
PROFILE = "/etc/profile.d/fruits.sh"

#: EMR's Spark on every node: the pipeline step puts its Python API on the path.
SPARK_HOME = "/usr/lib/spark"

#: The staging folder under output_root (helpers.dataset.STAGING; pca/ and pca_model/ use it).
STAGING = "_staging"

WHEEL_NAME = f"fruits_pipeline-{__version__}-py3-none-any.whl"
SOURCE_NAME = "fruits-src.tar.gz"
BOOTSTRAP_NAME = "bootstrap-emr.sh"

#: Files of a checkout the pipeline step needs: ``python -m helpers.run`` finds the
#: notebooks next to the ``helpers`` package it imports.
SOURCE_GLOBS = ("pyproject.toml", "README.md", "helpers/*.py", "notebooks/*.ipynb")

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
    tmp_days: int = 7  # tmp/ and the features' _staging/ expire after this many days
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
        for name in ("data_root", "output_root"):
            value = getattr(self, name)
            if value and not value.startswith("s3://"):
                raise ValueError(
                    f"{name} '{value}' must be an s3:// URI: the cluster cannot see this "
                    "machine's disk (give --data DIR to upload a local folder instead)"
                )
            if value and "@" in value.split("/")[2]:
                raise ValueError(f"{name} must not hold credentials (s3://KEY:SECRET@...)")
        if self.weights and not self.weights.endswith((".h5", ".keras")):
            raise ValueError(
                f"weights '{self.weights}' is not a Keras weights file (*.h5 or *.keras)"
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


# --- the bucket ----------------------------------------------------------------------------


def bucket_encryption(settings: EmrSettings) -> dict[str, Any]:
    """Default encryption at rest: SSE-KMS with ``kms_key_id`` if given, else SSE-S3."""
    if settings.kms_key_id:
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": settings.kms_key_id}
        return {
            "Rules": [{"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": True}]
        }
    return {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}


def public_access_block() -> dict[str, bool]:
    """Every kind of public access blocked: ACLs and policies alike."""
    return {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }


def bucket_policy_statements(bucket: str) -> list[dict[str, Any]]:
    """Deny any request without TLS, or with TLS older than 1.2: encryption in transit."""
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    return [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyOutdatedTLS",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
        },
    ]


def bucket_policy(bucket: str, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bucket policy: ``existing`` statements kept, ours added or replaced (by Sid)."""
    ours = bucket_policy_statements(bucket)
    statements = _merge((existing or {}).get("Statement", []), ours, "Sid")
    return {"Version": "2012-10-17", "Statement": statements}


def lifecycle_rules(settings: EmrSettings) -> list[dict[str, Any]]:
    """Retention: temporary outputs and logs expire; unfinished uploads are aborted.

    ``tmp/`` and the features' ``_staging/`` (left by interrupted runs) after ``tmp_days``;
    EMR logs and Spark event logs after ``log_days``; incomplete multipart uploads after a
    day, bucket-wide. Images, features and models are kept until deleted on purpose.
    """
    expiring = [
        ("fruits-tmp", settings.key("tmp") + "/", settings.tmp_days),
        ("fruits-logs", settings.key("logs") + "/", settings.log_days),
        ("fruits-spark-history", settings.key("spark-history") + "/", settings.log_days),
    ]
    ours = f"s3://{settings.bucket}/"
    if settings.output_uri.startswith(ours):  # an output_root in another bucket is not ours
        output_key = settings.output_uri[len(ours) :]
        expiring.insert(1, ("fruits-staging", f"{output_key}/{STAGING}/", settings.tmp_days))
    rules: list[dict[str, Any]] = [
        {
            "ID": rule_id,
            "Filter": {"Prefix": prefix},
            "Status": "Enabled",
            "Expiration": {"Days": days},
        }
        for rule_id, prefix, days in expiring
    ]
    rules.append(
        {
            "ID": "fruits-abort-incomplete-uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    )
    return rules


def _merge(existing: Iterable[dict[str, Any]], ours: list[dict[str, Any]], key: str) -> list:
    """``existing`` entries whose ``key`` is not one of ours, then ours."""
    mine = {entry[key] for entry in ours}
    return [entry for entry in existing if entry.get(key) not in mine] + ours


def bucket_plan(settings: EmrSettings) -> dict[str, Any]:
    """What :func:`ensure_bucket` applies, for ``--dry-run`` and the docs."""
    return {
        "bucket": settings.bucket,
        "region": settings.region,
        "encryption": bucket_encryption(settings),
        "public_access_block": public_access_block(),
        "ownership": "BucketOwnerEnforced (ACLs disabled)",
        "policy": bucket_policy(settings.bucket),
        "lifecycle": lifecycle_rules(settings),
    }


# --- uploads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifacts:
    """The local files a deployment uploads next to the data."""

    bootstrap: Path
    requirements: Path
    wheel: Path
    source: Path
    weights: Path | None = None


def code_uploads(settings: EmrSettings, artifacts: Artifacts) -> list[tuple[Path, str]]:
    """(local file, key) for the bootstrap script, pinned set, wheel, sources and weights."""
    items = [
        (artifacts.bootstrap, settings.key("code", BOOTSTRAP_NAME)),
        (artifacts.requirements, settings.key("code", artifacts.requirements.name)),
        (artifacts.wheel, settings.key("code", artifacts.wheel.name)),
        (artifacts.source, settings.key("code", SOURCE_NAME)),
    ]
    if artifacts.weights is not None:
        items.append((artifacts.weights, settings.key("models", artifacts.weights.name)))
    return items


def data_uploads(settings: EmrSettings, data_dir: Path) -> list[tuple[Path, str]]:
    """(local file, key) for every file under ``data_dir``, kept in its layout under data/."""
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data folder '{data_dir}' does not exist: give the local Fruits-360 root "
            "(<root>/<Split>/<Class>/*.jpg) to --data, or an s3:// --data-root"
        )
    if settings.data_root:
        raise ValueError("give either --data (upload a local folder) or --data-root, not both")
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [(path, settings.key("data", path.relative_to(data_dir).as_posix())) for path in files]


def expected_artifacts(settings: EmrSettings) -> Artifacts:
    """The artifacts :func:`build_artifacts` would make, by name only (for ``--dry-run``)."""
    build = Path("<built at deploy>")
    weights = Path(settings.weights) if settings.weights and "://" not in settings.weights else None
    return Artifacts(
        bootstrap=PROJECT_ROOT / BOOTSTRAP_NAME,
        requirements=settings.requirements_file,
        wheel=build / WHEEL_NAME,
        source=build / SOURCE_NAME,
        weights=weights,
    )


def build_source_archive(out_dir: Path, root: Path = PROJECT_ROOT) -> Path:
    """A ``fruits/`` tree with the notebooks and the package, for the pipeline step.

    ``python -m helpers.run`` runs the notebooks next to the ``helpers`` it imports, so the
    step unpacks this and runs from it. Reproducible: sorted names, no owners or times.
    """
    files = sorted({p for pattern in SOURCE_GLOBS for p in root.glob(pattern) if p.is_file()})
    if not any(p.suffix == ".ipynb" for p in files):
        raise FileNotFoundError(
            f"no notebooks under {root / 'notebooks'}: run from a checkout of the repository"
        )
    target = out_dir / SOURCE_NAME
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
    ):  # no parenthesized context managers: helpers must import on Python 3.9
        with tarfile.open(fileobj=gz, mode="w") as archive:
            for path in files:
                name = f"fruits/{path.relative_to(root).as_posix()}"
                info = archive.gettarinfo(str(path), name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
    return target


def build_wheel(out_dir: Path, root: Path = PROJECT_ROOT) -> Path:
    """The project's wheel, built from a clean copy of the package (no build/ in the checkout).

    pip fetches the build backend (setuptools) from the package index on first use.
    """
    if not (root / "pyproject.toml").is_file():
        raise FileNotFoundError(
            f"no pyproject.toml in {root}: build the wheel from a checkout, or pass --wheel FILE"
        )
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "fruits-pipeline"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, source / name)
        shutil.copytree(
            root / "helpers", source / "helpers", ignore=shutil.ignore_patterns("__pycache__")
        )
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(out_dir),
            str(source),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"building the wheel failed ({' '.join(command[2:5])}): {result.stderr[-2000:]}"
            )
    wheel = out_dir / WHEEL_NAME
    if not wheel.is_file():
        raise RuntimeError(f"pip wheel did not produce {wheel.name} in {out_dir}")
    return wheel


def build_artifacts(settings: EmrSettings, out_dir: Path, wheel: Path | None = None) -> Artifacts:
    """Build (or take) what the cluster needs: wheel, sources, with the script and pins."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = None
    if settings.weights and not settings.weights.startswith("s3://"):
        weights = Path(settings.weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(
                f"weights file '{settings.weights}' not found: give a local .h5 to upload, an "
                "s3:// URI the cluster can read, or nothing for Keras' ImageNet download"
            )
    if wheel is not None and not wheel.is_file():
        raise FileNotFoundError(f"wheel '{wheel}' not found: build it or leave --wheel out")
    return Artifacts(
        bootstrap=PROJECT_ROOT / BOOTSTRAP_NAME,
        requirements=settings.requirements_file,
        wheel=wheel or build_wheel(out_dir),
        source=build_source_archive(out_dir),
        weights=weights,
    )


# --- the cluster ---------------------------------------------------------------------------


def bootstrap_action(settings: EmrSettings, wheel_name: str = WHEEL_NAME) -> dict[str, Any]:
    """The bootstrap action: bootstrap-emr.sh with the wheel, pinned set and weights."""
    args = [
        "--python",
        settings.python,
        "--requirements",
        settings.uri("code", Path(REQUIREMENTS[settings.python]).name),
        "--wheel",
        settings.uri("code", wheel_name),
    ]
    if settings.weights_uri:
        args += ["--weights", settings.weights_uri]
    return {
        "Name": "fruits: pinned Python packages and the project wheel",
        "ScriptBootstrapAction": {"Path": settings.uri("code", BOOTSTRAP_NAME), "Args": args},
    }


def node_environment(settings: EmrSettings) -> dict[str, str]:
    """Environment of Spark and Livy processes: the bootstrap's Python, and the weights."""
    env = {"PYSPARK_PYTHON": VENV_PYTHON, "PYSPARK_DRIVER_PYTHON": VENV_PYTHON}
    if settings.weights_path:
        env["FRUITS_WEIGHTS"] = settings.weights_path
    return env


def configurations(settings: EmrSettings) -> list[dict[str, Any]]:
    """EMR configuration classifications: Arrow, Python, memory, history on S3, Livy, YARN.

    The Python of every Spark process (spark-env, Livy, the YARN application master of a
    cluster-mode Livy driver) is the bootstrap's environment. Livy sessions time out after
    ``idle_minutes`` so that a forgotten notebook does not keep the cluster from idling.
    Application masters (and so Livy drivers) stay on core nodes, away from spot reclaims.
    """
    env = node_environment(settings)
    spark_defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.pyspark.python": VENV_PYTHON,
        "spark.pyspark.driver.python": VENV_PYTHON,
        # executors' Python workers forked from the TensorFlow-preloading daemon, reused
        **PYTHON_WORKER_CONF,
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
        "spark.executor.memoryOverhead": settings.executor_memory_overhead,
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": settings.history_uri,
        "spark.history.fs.logDirectory": settings.history_uri,
    }
    for name, value in env.items():
        spark_defaults[f"spark.yarn.appMasterEnv.{name}"] = value
    if settings.weights_path:
        spark_defaults["spark.executorEnv.FRUITS_WEIGHTS"] = settings.weights_path
    return [
        {"Classification": "spark-defaults", "Properties": spark_defaults},
        {
            "Classification": "spark-env",
            "Properties": {},
            "Configurations": [{"Classification": "export", "Properties": dict(env)}],
        },
        {
            "Classification": "livy-env",
            "Properties": {},
            "Configurations": [{"Classification": "export", "Properties": dict(env)}],
        },
        {
            "Classification": "livy-conf",
            "Properties": {
                "livy.server.session.timeout-check": "true",
                "livy.server.session.timeout": f"{settings.idle_minutes}m",
            },
        },
        {
            "Classification": "yarn-site",
            "Properties": {
                "yarn.node-labels.enabled": "true",
                "yarn.node-labels.am.default-node-label-expression": "CORE",
            },
        },
        {
            "Classification": "jupyter-sparkmagic-conf",
            "Properties": {
                "all_errors_are_fatal": "true",
                "shutdown_session_on_spark_statement_errors": "true",
            },
        },
        {
            "Classification": "jupyter-s3-conf",
            "Properties": {
                "s3.persistence.enabled": "true",
                "s3.persistence.bucket": settings.bucket,
            },
        },
    ]


def instance_groups(settings: EmrSettings) -> list[dict[str, Any]]:
    """Primary and core nodes on demand; task nodes on spot (cheap, may be reclaimed)."""
    groups: list[dict[str, Any]] = [
        {
            "Name": "primary",
            "InstanceRole": "MASTER",
            "Market": "ON_DEMAND",
            "InstanceType": settings.instance_type,
            "InstanceCount": 1,
        },
        {
            "Name": "core",
            "InstanceRole": "CORE",
            "Market": "ON_DEMAND",
            "InstanceType": settings.instance_type,
            "InstanceCount": settings.core_count,
        },
    ]
    if settings.task_count:
        groups.append(
            {
                "Name": "task-spot",
                "InstanceRole": "TASK",
                "Market": "SPOT",
                "InstanceType": settings.task_instance_type or settings.instance_type,
                "InstanceCount": settings.task_count,
            }
        )
    return groups


def step_script(settings: EmrSettings, params: dict[str, Any] | None = None) -> str:
    """The bash script of the pipeline step, run on the primary node by command-runner.jar.

    It unpacks the sources (notebooks + package), puts EMR's pyspark on the path of the
    bootstrap's Python, and runs ``python -m helpers.run`` with the cluster's roots.
    """
    args = ["--data-root", settings.data_uri, "--output-root", settings.output_uri]
    for name, value in (params or {}).items():
        args += ["-p", name, str(value)]
    run = " ".join(shlex.quote(a) for a in [VENV_PYTHON, "-m", "helpers.run", *args])
    source = shlex.quote(settings.uri("code", SOURCE_NAME))
    lines = [
        "set -euo pipefail",
        "work=$(mktemp -d)",
        f'aws s3 cp --only-show-errors {source} - | tar -xz -C "$work"',
        'cd "$work/fruits"',
        "# shellcheck source=/dev/null  # written by bootstrap-emr.sh: FRUITS_WEIGHTS",
        f"if [ -f {PROFILE} ]; then . {PROFILE}; fi",
        f"export SPARK_HOME={SPARK_HOME}",
        f"py4j=({SPARK_HOME}/python/lib/py4j-*-src.zip)",
        f'export PYTHONPATH="{SPARK_HOME}/python:${{py4j[0]}}"',
        f"export AWS_REGION={shlex.quote(settings.region)}",
        f"export AWS_DEFAULT_REGION={shlex.quote(settings.region)}",
        run,
    ]
    return "\n".join(lines) + "\n"


def pipeline_step(settings: EmrSettings, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The EMR step running the notebooks with papermill (command-runner.jar)."""
    for name, value in (params or {}).items():
        coerce(name, value)  # an unknown name or bad value fails here, not on the cluster
        if name in ("data_root", "output_root"):
            raise ValueError(
                f"give {name} as --{name.replace('_', '-')}, not as a -p parameter: the step "
                "passes the cluster's roots itself"
            )
    return {
        "Name": "fruits: notebooks 01-03 (python -m helpers.run)",
        "ActionOnFailure": "CONTINUE" if settings.keep_alive else "TERMINATE_CLUSTER",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": ["bash", "-c", step_script(settings, params)],
        },
    }


def job_flow_request(
    settings: EmrSettings,
    wheel_name: str = WHEEL_NAME,
    run: bool = False,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole RunJobFlow request: applications, nodes, bootstrap, settings, step, roles."""
    instances: dict[str, Any] = {
        "InstanceGroups": instance_groups(settings),
        "KeepJobFlowAliveWhenNoSteps": settings.keep_alive,
        "TerminationProtected": False,
    }
    if settings.subnet_id:
        instances["Ec2SubnetId"] = settings.subnet_id
    if settings.key_name:
        instances["Ec2KeyName"] = settings.key_name
    request: dict[str, Any] = {
        "Name": settings.name,
        "ReleaseLabel": settings.release,
        "LogUri": settings.logs_uri,
        "Applications": [{"Name": name} for name in APPLICATIONS],
        "Instances": instances,
        "BootstrapActions": [bootstrap_action(settings, wheel_name)],
        "Configurations": configurations(settings),
        "Steps": [pipeline_step(settings, params)] if run else [],
        "AutoTerminationPolicy": {"IdleTimeout": settings.idle_minutes * 60},
        "JobFlowRole": settings.instance_profile,
        "ServiceRole": settings.service_role,
        "VisibleToAllUsers": True,
        "EbsRootVolumeSize": settings.root_volume_gb,
        "Tags": [
            {"Key": key, "Value": value}
            for key, value in {
                "project": "fruits",
                "personal-data": "none",
                **settings.tags,
            }.items()
        ],
    }
    if settings.security_configuration:
        request["SecurityConfiguration"] = settings.security_configuration
    return request


def plan(
    settings: EmrSettings,
    artifacts: Artifacts,
    data_dir: Path | None = None,
    run: bool = False,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``deploy`` would do, as one JSON-ready document (``--dry-run``)."""
    uploads = [
        {"from": str(path), "to": f"s3://{settings.bucket}/{key}"}
        for path, key in code_uploads(settings, artifacts)
    ]
    data: dict[str, Any] = {"data_root": settings.data_uri}
    if data_dir is not None:
        files = data_uploads(settings, data_dir)
        data.update({"from": str(data_dir), "files": len(files)})
    return {
        "bucket": bucket_plan(settings),
        "uploads": uploads,
        "data": data,
        "output_root": settings.output_uri,
        "run_job_flow": job_flow_request(settings, artifacts.wheel.name, run, params),
    }


# --- AWS calls (thin) ----------------------------------------------------------------------


def clients(region: str, endpoint_url: str | None = None) -> tuple[Any, Any]:
    """boto3 S3 and EMR clients for ``region`` (``endpoint_url``: an emulator such as moto).

    Credentials come from boto3's default chain, never from here.
    """
    import boto3

    session = boto3.session.Session(region_name=region)
    return (
        session.client("s3", endpoint_url=endpoint_url),
        session.client("emr", endpoint_url=endpoint_url),
    )


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def ensure_bucket(s3: Any, settings: EmrSettings) -> dict[str, Any]:
    """Create the bucket in ``settings.region`` if needed, then apply every setting.

    Idempotent: an existing bucket of ours is brought back to the settings; its other policy
    statements and lifecycle rules are kept. A bucket in another region, or one we cannot
    reach, stops here with the fix.
    """
    from botocore.exceptions import ClientError

    bucket = settings.bucket
    try:
        s3.head_bucket(Bucket=bucket)
        exists = True
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            exists = False
        elif _error_code(exc) in ("403", "AccessDenied"):
            raise PermissionError(
                f"bucket '{bucket}' exists but these credentials may not use it (someone "
                "else's, bucket names are global): choose another --bucket, or check the role"
            ) from exc
        else:
            raise
    if exists:
        location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
        if location != settings.region:
            raise ValueError(
                f"bucket '{bucket}' is in {location}, not {settings.region}: pass "
                f"--region {location} if that is where it should be, or choose another --bucket"
            )
        log.info("bucket s3://%s exists in %s: applying the settings", bucket, location)
    else:
        s3.create_bucket(
            Bucket=bucket,
            CreateBucketConfiguration={"LocationConstraint": settings.region},
        )
        log.info("created bucket s3://%s in %s", bucket, settings.region)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=public_access_block())
    s3.put_bucket_ownership_controls(
        Bucket=bucket,
        OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
    )
    s3.put_bucket_encryption(
        Bucket=bucket, ServerSideEncryptionConfiguration=bucket_encryption(settings)
    )
    try:
        existing = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError as exc:
        if _error_code(exc) != "NoSuchBucketPolicy":
            raise
        existing = None
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(bucket_policy(bucket, existing)))
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as exc:
        if _error_code(exc) != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={"Rules": _merge(rules, lifecycle_rules(settings), "ID")},
    )
    return bucket_plan(settings)


def upload(s3: Any, bucket: str, items: Sequence[tuple[Path, str]]) -> tuple[int, int]:
    """Upload ``(file, key)`` pairs; files already there with the same MD5 are skipped.

    Returns (uploaded, skipped). Objects are encrypted by the bucket's default encryption.
    """
    from botocore.exceptions import ClientError

    uploaded = skipped = 0
    for path, key in items:
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if head.get("ETag", "").strip('"') == digest:
                skipped += 1
                continue
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
        s3.upload_file(str(path), bucket, key)
        uploaded += 1
    log.info("s3://%s: %d files uploaded, %d unchanged", bucket, uploaded, skipped)
    return uploaded, skipped


def create_cluster(emr: Any, request: dict[str, Any]) -> str:
    """Start the cluster; return its id (j-...)."""
    cluster_id = emr.run_job_flow(**request)["JobFlowId"]
    log.info("cluster %s starting (%s)", cluster_id, request["ReleaseLabel"])
    return cluster_id


def add_pipeline_step(emr: Any, cluster_id: str, step: dict[str, Any]) -> str:
    """Queue the pipeline step on a running cluster; return the step id."""
    step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"][0]
    log.info("step %s queued on %s", step_id, cluster_id)
    return step_id


def cluster_status(emr: Any, cluster_id: str) -> dict[str, Any]:
    """State, reason, primary node address and the steps' states of a cluster."""
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    status = cluster["Status"]
    steps = emr.list_steps(ClusterId=cluster_id).get("Steps", [])
    return {
        "id": cluster["Id"],
        "name": cluster["Name"],
        "state": status["State"],
        "reason": status.get("StateChangeReason", {}).get("Message", ""),
        "primary_dns": cluster.get("MasterPublicDnsName", ""),
        "release": cluster.get("ReleaseLabel", ""),
        "steps": [{"id": s["Id"], "name": s["Name"], "state": s["Status"]["State"]} for s in steps],
    }


def terminate(emr: Any, cluster_id: str) -> str:
    """Terminate the cluster; return its state afterwards (TERMINATING or TERMINATED)."""
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    log.info("cluster %s: %s", cluster_id, state)
    return state


def deploy(
    settings: EmrSettings,
    s3: Any,
    emr: Any,
    artifacts: Artifacts,
    data_dir: Path | None = None,
    run: bool = False,
    params: dict[str, Any] | None = None,
) -> str:
    """Bucket, uploads, cluster (and step): the whole deployment; return the cluster id."""
    request = job_flow_request(settings, artifacts.wheel.name, run, params)  # checks params
    ensure_bucket(s3, settings)
    upload(s3, settings.bucket, code_uploads(settings, artifacts))
    if data_dir is not None:
        upload(s3, settings.bucket, data_uploads(settings, data_dir))
    return create_cluster(emr, request)


# --- command line --------------------------------------------------------------------------


def _settings_arguments(parser: argparse.ArgumentParser, full: bool) -> None:
    defaults = EmrSettings(bucket="defaults")
    parser.add_argument("--bucket", required=True, help="bucket name (created if missing)")
    parser.add_argument("--prefix", default=defaults.prefix, help="key prefix in the bucket")
    parser.add_argument("--region", default=defaults.region, help="AWS region (EU)")
    parser.add_argument("--allow-non-eu-region", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kms-key-id", default="", help="SSE-KMS key (default: SSE-S3)")
    parser.add_argument("--tmp-days", type=int, default=defaults.tmp_days)
    parser.add_argument("--log-days", type=int, default=defaults.log_days)
    parser.add_argument("--data-root", default="", help="images already in S3 (s3://...)")
    parser.add_argument("--output-root", default="", help="default s3://BUCKET/PREFIX/out")
    parser.add_argument("--weights", default="", help="local .h5 to upload, or s3:// URI")
    parser.add_argument("--python", default=defaults.python, choices=sorted(REQUIREMENTS))
    if not full:
        return
    parser.add_argument("--name", default=defaults.name, help="cluster name")
    parser.add_argument("--release", default=defaults.release, help="EMR 7.x release label")
    parser.add_argument("--instance-type", default=defaults.instance_type)
    parser.add_argument("--core-count", type=int, default=defaults.core_count)
    parser.add_argument("--task-count", type=int, default=defaults.task_count, help="spot")
    parser.add_argument("--task-instance-type", default="")
    parser.add_argument("--idle-minutes", type=int, default=defaults.idle_minutes)
    parser.add_argument("--batch", action="store_true", help="terminate after the steps")
    parser.add_argument("--service-role", default=defaults.service_role)
    parser.add_argument("--instance-profile", default=defaults.instance_profile)
    parser.add_argument("--subnet-id", default="")
    parser.add_argument("--key-name", default="", help="EC2 key pair for SSH")
    parser.add_argument("--security-configuration", default="")
    parser.add_argument("--executor-memory-overhead", default=defaults.executor_memory_overhead)
    parser.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="cluster tag, repeatable"
    )


def _settings(args: argparse.Namespace) -> EmrSettings:
    names = {f for f in EmrSettings.__dataclass_fields__ if f != "tags"}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if getattr(args, "batch", False):
        values["keep_alive"] = False
    tags = {}
    for tag in getattr(args, "tag", []):
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag '{tag}' must be KEY=VALUE")
        tags[key] = value
    return EmrSettings(**values, tags=tags)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.emr",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\nsee docs/emr.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint-url", default=None, help="AWS API emulator (tests)")
    common.add_argument("--dry-run", action="store_true", help="print the plan, call nothing")

    deploy_ = commands.add_parser("deploy", parents=[common], help="bucket, uploads, cluster")
    _settings_arguments(deploy_, full=True)
    deploy_.add_argument("--data", type=Path, help="local images folder to upload to data/")
    deploy_.add_argument("--wheel", type=Path, help="a built wheel (default: build one)")
    deploy_.add_argument("--run", action="store_true", help="add the pipeline step")
    add_parameter_option(deploy_, "pipeline parameter for the step")

    bucket_ = commands.add_parser("bucket", parents=[common], help="create/configure the bucket")
    _settings_arguments(bucket_, full=False)

    run_ = commands.add_parser("run", parents=[common], help="add the pipeline step")
    _settings_arguments(run_, full=False)
    run_.add_argument("--cluster-id", required=True)
    run_.add_argument("--batch", action="store_true", help="terminate the cluster on failure")
    add_parameter_option(run_, "pipeline parameter")

    for name, text in (("status", "cluster and step states"), ("terminate", "end the cluster")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("--cluster-id", required=True)
        sub.add_argument("--region", default=DEFAULT_REGION)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints the plan, the cluster id or the status as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2


def _print(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def _command(args: argparse.Namespace) -> int:
    if args.command in ("status", "terminate"):
        if args.dry_run:
            _print({args.command: args.cluster_id, "region": args.region})
            return 0
        _, emr = clients(args.region, args.endpoint_url)
        if args.command == "status":
            _print(cluster_status(emr, args.cluster_id))
        else:
            _print({"id": args.cluster_id, "state": terminate(emr, args.cluster_id)})
        return 0

    settings = _settings(args)
    params = {name: coerce(name, value) for name, value in getattr(args, "parameter", [])}
    if args.command == "bucket":
        if args.dry_run:
            _print(bucket_plan(settings))
            return 0
        s3, _ = clients(settings.region, args.endpoint_url)
        _print(ensure_bucket(s3, settings))
        return 0
    if args.command == "run":
        step = pipeline_step(settings, params)
        if args.dry_run:
            _print({"cluster": args.cluster_id, "add_job_flow_steps": step})
            return 0
        _, emr = clients(settings.region, args.endpoint_url)
        _print({"cluster": args.cluster_id, "step": add_pipeline_step(emr, args.cluster_id, step)})
        return 0

    # deploy
    if args.dry_run:
        artifacts = expected_artifacts(settings)
        if args.wheel:
            artifacts = replace(artifacts, wheel=args.wheel)
        _print(plan(settings, artifacts, args.data, args.run, params))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = build_artifacts(settings, Path(tmp), args.wheel)
        s3, emr = clients(settings.region, args.endpoint_url)
        cluster_id = deploy(settings, s3, emr, artifacts, args.data, args.run, params)
    region = "" if settings.region == DEFAULT_REGION else f" --region {settings.region}"
    _print(
        {
            "cluster": cluster_id,
            "data_root": settings.data_uri,
            "output_root": settings.output_uri,
            "logs": settings.logs_uri,
            "next": [
                f"python -m helpers.emr status --cluster-id {cluster_id}{region}",
                f"python -m helpers.emr run --bucket {settings.bucket} --cluster-id {cluster_id}"
                f"{region}",
                f"python -m helpers.emr terminate --cluster-id {cluster_id}{region}",
            ],
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
