"""Cache entries checked before use: a record of each entry's content, made when it is made.

Every file the project caches (downloaded weights, converted models, S3A jars, the class
archive) gets a sidecar ``<file>.sha256.json`` holding its SHA-256, size and modification
time (plus what the source said, e.g. an S3 ETag), written atomically after the entry
itself. Before use the entry is checked against it: a missing record, another SHA-256, or a
source that changed means the entry is made again. A run killed between entry and record
leaves an entry without a record, which is made again, never trusted.

``quick`` checks compare size and modification time instead of hashing, for entries too
large to hash at every session start (the class archive, the AWS SDK jar); their full
SHA-256 is still recorded, and checked whenever the entry is made or fetched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The sidecar's suffix, after the entry's own file name.
SUFFIX = ".sha256.json"


def sidecar(path: Path) -> Path:
    """The record of the cache entry ``path``: ``<path>.sha256.json`` beside it."""
    return path.with_name(path.name + SUFFIX)


def sha256(path: Path) -> str:
    """The SHA-256 of the file ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def record(path: Path, digest: str | None = None, **source: Any) -> dict[str, Any]:
    """Record the entry ``path`` as it is now; returns the record.

    ``digest``: its SHA-256 when the caller has it already (computed while writing it),
    else it is read. ``source``: what its origin said (e.g. ``etag=...``), compared again
    by :func:`verified`. Written to a temporary name and renamed: whole or not at all.
    """
    stat = path.stat()
    entry = {
        "sha256": digest or sha256(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        **source,
    }
    target = sidecar(path)
    # a name of its own per writer, created with the umask's mode (mkstemp's is 0600)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x") as out:
            json.dump(entry, out)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return entry


def read_record(path: Path) -> dict[str, Any] | None:
    """The record of ``path``, or ``None`` when it is missing or unreadable."""
    try:
        found = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "sha256" in found else None


def problem(
    path: Path, digest: str | None = None, quick: bool = False, **source: Any
) -> str | None:
    """Why the entry ``path`` cannot be used, or ``None`` when it matches its record.

    ``digest``: the SHA-256 of bytes already read from it (no second read). ``quick``: size
    and modification time instead of the SHA-256. ``source``: values the record must hold
    (``None`` values are not compared).
    """
    if not path.is_file():
        return "missing"
    entry = read_record(path)
    if entry is None:
        return f"no record ({sidecar(path).name})"
    for key, value in source.items():
        if value is not None and entry.get(key) != value:
            return f"its source changed ({key} {entry.get(key)!r} -> {value!r})"
    stat = path.stat()
    if stat.st_size != entry.get("size"):
        return "its size differs from the record"
    if quick:
        if stat.st_mtime_ns != entry.get("mtime_ns"):
            return "its modification time differs from the record"
        return None
    if (digest or sha256(path)) != entry["sha256"]:
        return "its SHA-256 differs from the record"
    return None


def verified(
    path: Path,
    digest: str | None = None,
    quick: bool = False,
    action: str = "made again",
    **source: Any,
) -> bool:
    """Whether the entry ``path`` matches its record (see :func:`problem`).

    A mismatch is logged naming the file, the reason and ``action`` (what the caller does
    instead): a warning for damage or a missing record, info for a changed source. A
    missing entry is the ordinary cold cache: not logged.
    """
    reason = problem(path, digest, quick, **source)
    if reason is None:
        return True
    if reason != "missing":
        level = logging.INFO if reason.startswith("its source") else logging.WARNING
        log.log(level, "cached %s: %s; %s", path, reason, action)
    return False
