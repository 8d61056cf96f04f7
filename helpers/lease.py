"""One writer per ``output_root``: a lease file created exclusively before writing, removed after.

``<output_root>/_lease.json`` names its holder (host, pid, the process's start time, what it
writes). It is created with an exclusive create: ``O_EXCL`` on a local (or FUSE-mounted) file
system, a conditional PUT (``If-None-Match: *``) on S3, so of two runs starting together one
gets it and the other is refused with a message naming the holder. The holder renews it every
:data:`RENEW_S` seconds while it writes. A lease is taken over when its holder is gone: on the
same host when that pid no longer runs the process that took it (start time compared, so a
reused pid does not count); from anywhere when it was not renewed for :data:`STALE_S` seconds.

The lease is re-entrant within a process: a function that holds it may call others that take
it (the features write, the manifest update). Stores without an exclusive create (gs, abfss,
hdfs) run without one, with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import psutil

from helpers.paths import io_uri, is_remote, is_s3, join, storage_errors

log = logging.getLogger(__name__)

LEASE = "_lease.json"
#: Seconds between two renewals by the holder.
RENEW_S = 60.0
#: Seconds without renewal after which anyone takes a lease over (ten missed renewals).
STALE_S = 600.0


class LeaseHeld(RuntimeError):
    """Another run holds the writer lease of an ``output_root``."""


@dataclass
class _Held:
    uri: str
    token: str
    purpose: str
    depth: int = 1
    stop: threading.Event = field(default_factory=threading.Event)


_held: dict[str, _Held] = {}
_lock = threading.Lock()


def _holder(purpose: str, token: str) -> dict[str, Any]:
    me = psutil.Process()
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": me.pid,
        "pid_started": me.create_time(),
        "purpose": purpose,
        "token": token,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "renewed": now,
    }


def _create(uri: str, data: bytes) -> bool:
    """Create ``uri`` holding ``data`` unless it exists; whether this call created it."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            fs.pipe_file(path, data, mode="create")
        except OSError as exc:  # s3fs maps S3's 412 PreconditionFailed to EINVAL
            if exc.errno in (errno.EINVAL, errno.EEXIST) or isinstance(exc, FileExistsError):
                return False
            raise
        return True
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    try:
        os.link(tmp, target)  # fails if the lease exists; readers never see it half-written
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (some FUSE mounts): O_EXCL instead
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    finally:
        tmp.unlink()
    return True


def _replace(uri: str, data: bytes) -> None:
    """Rewrite ``uri`` whole: one PUT on S3, a temporary file renamed over it locally."""
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        fs.pipe_file(path, data)
        return
    target = Path(uri)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def _read(uri: str) -> dict[str, Any] | None:
    """The lease at ``uri``, ``None`` when there is none, ``{}`` when it is not one of ours."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        text = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _remove(uri: str) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def _gone(holder: dict[str, Any]) -> str:
    """Why ``holder`` no longer holds its lease, or ``''`` while it may still be writing."""
    if not holder:
        return ""  # not written by this pipeline: never taken over, the refusal names it
    if holder.get("host") == socket.gethostname():
        try:
            started = psutil.Process(int(holder.get("pid", -1))).create_time()
        except (psutil.Error, ValueError):
            return f"process {holder.get('pid')} no longer runs"
        if abs(started - float(holder.get("pid_started", 0))) > 1:
            return f"pid {holder.get('pid')} now belongs to another process"
        return ""
    silent = time.time() - float(holder.get("renewed", 0))
    if silent > STALE_S:
        return f"not renewed for {silent:.0f} s (more than {STALE_S:.0f})"
    return ""


def describe(holder: dict[str, Any]) -> str:
    """``holder`` in words: who writes, since when, what."""
    if not holder:
        return "a lease file this pipeline cannot read"
    return (
        f"{holder.get('purpose', '?')} by pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('started', '?')}"
    )


def check_free(output_root: str) -> None:
    """Raise :class:`LeaseHeld` now if a live run holds ``output_root``'s lease (no lease taken)."""
    uri = join(io_uri(output_root), LEASE)
    if not _supported(uri) or io_uri(output_root) in _held:
        return
    with storage_errors(output_root):
        holder = _read(uri)
    if holder is not None and not _gone(holder):
        raise LeaseHeld(_refusal(output_root, holder))


def _refusal(output_root: str, holder: dict[str, Any]) -> str:
    return (
        f"output_root '{output_root}' is being written by another run ({describe(holder)}): "
        f"wait for it to finish or choose another output_root. A lease whose process is gone "
        f"(same host) or that was not renewed for {STALE_S / 60:.0f} minutes is taken over "
        f"by the next run; remove {join(output_root, LEASE)} only if you know that run is over"
    )


def _supported(uri: str) -> bool:
    return not is_remote(uri) or is_s3(uri)


def _renew(held: _Held) -> None:
    """Rewrite the lease's ``renewed`` time every :data:`RENEW_S` s while it is still ours."""
    while not held.stop.wait(RENEW_S):
        current = _read(held.uri)
        if not current or current.get("token") != held.token:
            log.warning("writer lease %s taken over by %s", held.uri, describe(current or {}))
            return
        current["renewed"] = time.time()
        _replace(held.uri, json.dumps(current, indent=1).encode())


def _acquire(output_root: str, uri: str, purpose: str) -> _Held:
    token = uuid.uuid4().hex
    data = json.dumps(_holder(purpose, token), indent=1).encode()
    for _ in range(3):
        if _create(uri, data):
            return _Held(uri, token, purpose)
        holder = _read(uri)
        if holder is None:  # released between our create and our read
            continue
        reason = _gone(holder)
        if not reason:
            raise LeaseHeld(_refusal(output_root, holder))
        log.warning("taking over the lease of %s: %s (%s)", output_root, reason, describe(holder))
        if _read(uri) == holder:  # not already taken over by another run meanwhile
            _remove(uri)
    raise LeaseHeld(_refusal(output_root, _read(uri) or {}))


@contextmanager
def writer_lease(output_root: str, purpose: str) -> Iterator[None]:
    """Hold ``output_root``'s writer lease for the block, naming ``purpose`` to other runs."""
    key = io_uri(output_root)
    uri = join(key, LEASE)
    if not _supported(uri):
        log.warning("no writer lease on %s: one writer at a time is up to you", output_root)
        yield
        return
    with _lock:
        held = _held.get(key)
        if held is not None:
            held.depth += 1
    if held is None:
        with storage_errors(output_root):  # a missing bucket or credentials, named
            held = _acquire(output_root, uri, purpose)
        with _lock:
            _held[key] = held
        threading.Thread(target=_renew, args=(held,), name="fruits-lease", daemon=True).start()
    try:
        yield
    finally:
        with _lock:
            held.depth -= 1
            last = held.depth == 0
            if last:
                del _held[key]
        if last:
            held.stop.set()
            current = _read(uri)
            if current and current.get("token") == held.token:
                _remove(uri)
