"""Data locations: one place that turns a user's ``data_root``/``output_root`` into URIs.

Local paths may be relative to the repository root (where ``make run`` lives) or absolute;
``file:``, ``s3://``, ``s3a://``, ``dbfs:/`` and ``/Volumes/`` are kept as given.
Files that are not Spark's (figures, manifest) go through fsspec, so the same code
writes to disk or to object stores.
"""

from __future__ import annotations

from pathlib import Path

import fsspec

#: The repository checkout this package was installed from (``pip install -e .``).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

_REMOTE_SCHEMES = ("s3://", "s3a://", "s3n://", "gs://", "abfss://", "dbfs:/", "hdfs://")


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store or cluster file system rather than local disk."""
    return uri.startswith(_REMOTE_SCHEMES)


def resolve(uri: str) -> str:
    """Return ``uri`` as an absolute local path, or unchanged (minus a trailing /) if remote.

    A relative path is taken from the repository root when running from a checkout,
    so notebooks executed from ``notebooks/`` and ``make run`` agree on ``data_sample``.
    """
    if not uri or not uri.strip():
        raise ValueError("path is empty: give a local path, file:, s3://, dbfs:/ or /Volumes/")
    uri = uri.strip()
    if is_remote(uri):
        return uri.rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif uri.startswith("file:"):
        uri = uri[len("file:") :]
    path = Path(uri).expanduser()
    if not path.is_absolute():
        base = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()
        path = base / path
    return str(path.resolve())


def spark_uri(uri: str) -> str:
    """The form Spark reads and writes: ``file:`` for local paths, remote URIs as given."""
    resolved = resolve(uri)
    return resolved if is_remote(resolved) else f"file://{resolved}"


def join(root: str, *parts: str) -> str:
    """Join ``parts`` under ``root`` with ``/``, for local paths and URIs alike."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    """Whether a file or folder exists at ``uri`` (local or remote)."""
    fs, path = fsspec.core.url_to_fs(resolve(uri))
    return fs.exists(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` whole: a local file is replaced atomically (temp + rename)."""
    resolved = resolve(uri)
    if is_remote(resolved):
        with fsspec.open(resolved, "wb") as handle:
            handle.write(data)
        return
    target = Path(resolved)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def read_bytes(uri: str) -> bytes:
    """Read the whole file at ``uri`` (local or remote)."""
    with fsspec.open(resolve(uri), "rb") as handle:
        return handle.read()
