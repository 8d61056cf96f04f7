"""What a deployment uploads: the bootstrap script, the nodes' pinned set, the project wheel,
the sources the pipeline step runs, the weights and the images; built here, uploaded by
:func:`upload` (skipping unchanged files) with one boto3 S3 client.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import PROJECT_ROOT
from helpers.emr.bucket import error_code
from helpers.emr.settings import BOOTSTRAP_NAME, SOURCE_NAME, WHEEL_NAME, EmrSettings

log = logging.getLogger(__name__)

#: Files of a checkout the pipeline step needs: ``python -m helpers.run`` finds the
#: notebooks next to the ``helpers`` package it imports.
SOURCE_GLOBS = ("pyproject.toml", "README.md", "helpers/**/*.py", "notebooks/*.ipynb")


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


# --- AWS calls (thin) ----------------------------------------------------------------------


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
            if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
        s3.upload_file(str(path), bucket, key)
        uploaded += 1
    log.info("s3://%s: %d files uploaded, %d unchanged", bucket, uploaded, skipped)
    return uploaded, skipped
