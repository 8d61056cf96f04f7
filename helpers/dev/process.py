"""What the local stand-ins (:mod:`helpers.dev.cluster`, :mod:`helpers.dev.livy`) share: a
detached process with its log in a state folder, a JSON record of it there, and the
``stop`` and ``status`` that read that record.

A state folder holds JSON records (``cluster.json``, mode 0600: a cluster's holds its secret)
and logs (``logs/<name>.out``); ``stop`` and ``status`` run in later commands, so they know the
processes only from the record. A record names each process by its pid, start time and
command (:func:`identity`): a pid that the system gave to another process since is never
signalled (:func:`same_process`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

#: A record, as written to and read from its JSON file.
Record = dict[str, Any]


def free_port(preferred: int = 0) -> int:
    """``preferred`` if nothing listens on it on 127.0.0.1, else a port that nothing does."""
    if preferred:
        with socket.socket() as probe:
            try:
                probe.bind((HOST, preferred))
                return preferred
            except OSError:
                log.info("port %d is taken: using a free one", preferred)
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def log_path(state_dir: Path, name: str) -> Path:
    """Where :func:`spawn` writes the output of the process ``name``."""
    return state_dir / "logs" / f"{name}.out"


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of the log ``path``, for error messages."""
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    state_dir: Path,
    name: str,
    command: list[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> int:
    """Start ``command`` detached, its output appended to ``logs/<name>.out``; its pid."""
    path = log_path(state_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,  # a Ctrl-C in the calling terminal does not reach it
        )
    return process.pid


def identity(pid: int, command: list[str]) -> dict[str, Any]:
    """What tells the process ``pid`` started with ``command`` from a later one given its pid:
    its start time, and the arguments its command line must end with (``command`` less the
    program: a launcher script that execs Java, as ``spark-class`` does, keeps them)."""
    return {"create_time": psutil.Process(pid).create_time(), "args": list(command[1:])}


def _matching(pid: int, ident: dict[str, Any] | None) -> psutil.Process | None:
    """The process ``pid`` if it is alive and still the one ``ident`` describes, else None."""
    if not ident:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        args, cmdline = ident["args"], process.cmdline()
        # psutil adds /proc/stat's boot time, whole seconds that a clock sync can move by one
        started = abs(process.create_time() - ident["create_time"]) <= 1.0
        if started and (not args or cmdline[-len(args) :] == args):
            return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def same_process(record: Record, pid: int) -> bool:
    """Whether ``pid`` runs and is the process ``record`` started (same start time and
    command), not another one that was given its pid since."""
    return _matching(pid, record.get("processes", {}).get(str(pid))) is not None


def alive(pid: int) -> bool:
    """Whether the process ``pid`` runs (a zombie does not: it only awaits its parent)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminate(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM ``pids`` and their children, then SIGKILL what is left after ``timeout``."""
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _terminate(found, timeout)


def _terminate(parents: Iterable[psutil.Process], timeout: float) -> None:
    """SIGTERM ``parents`` and their children, then SIGKILL what is left after ``timeout``.

    psutil's signals check each object's start time: a pid reused meanwhile is not signalled.
    """
    processes = []
    for process in parents:
        try:
            processes += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(processes, timeout=timeout)
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=timeout)


def wait_until(
    condition: Callable[[], Any],
    what: str,
    timeout: float,
    pids: dict[str, int],
    state_dir: Path,
) -> Any:
    """Poll ``condition()`` until it returns a true value; fail if a process in ``pids`` dies.

    ``pids`` maps the names given to :func:`spawn` to pids, so a failure shows their logs.
    Each try asks the processes themselves (their HTTP API), so this waits on observable
    state; the short pause between tries only spares the CPU.
    """
    deadline = time.monotonic() + timeout
    while True:
        for name, pid in pids.items():
            if not alive(pid):
                path = log_path(state_dir, name)
                raise RuntimeError(
                    f"{name} (pid {pid}) exited while waiting for {what}; its log "
                    f"({path}):\n{log_tail(path)}"
                )
        try:
            result = condition()
        except (OSError, ValueError):  # not listening yet, or half an answer
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no {what} after {timeout:.0f} s; logs under {state_dir / 'logs'}:\n"
                + "\n".join(f"--- {n}\n{log_tail(log_path(state_dir, n))}" for n in pids)
            )
        time.sleep(0.2)


def write_record(state_dir: Path | str, file: str, record: Record) -> None:
    """Write ``record`` to ``<state_dir>/<file>`` whole (temp file, then rename): a reader
    never sees half of it."""
    path = Path(state_dir, file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{file}.{os.getpid()}.tmp")  # beside it: os.replace stays atomic
    try:
        write_private(tmp, "")
        with tmp.open("w") as out:
            json.dump(record, out, indent=2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (0600 from its creation on)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # a file that existed keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w") as out:
        out.write(text)


def read_record(state_dir: Path | str, file: str) -> Record | None:
    """The record ``<state_dir>/<file>``, or ``None`` if none was written there."""
    path = Path(state_dir, file)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def stop_recorded(
    state_dir: Path | str,
    file: str,
    pid_groups: Callable[[Record], Iterable[Iterable[int]]],
    timeout: float,
) -> Record | None:
    """Terminate the processes of the record ``file``, group by group, then delete it.

    Only a pid that is still the recorded process (:func:`same_process`) is signalled; one
    now held by another process is named in the log and under ``reused_pids`` of the
    returned record, and left alone. Returns the record, or ``None`` if there was none (so
    stopping twice is harmless).
    """
    record = read_record(state_dir, file)
    if record is None:
        return None
    reused = _reused(record, [pid for pids in pid_groups(record) for pid in pids])
    for pids in pid_groups(record):
        idents = record.get("processes", {})
        matching = [_matching(pid, idents.get(str(pid))) for pid in pids]
        _terminate([process for process in matching if process is not None], timeout)
    Path(state_dir, file).unlink(missing_ok=True)
    return {**record, "reused_pids": reused} if reused else record


def _reused(record: Record, pids: Iterable[int]) -> list[int]:
    """The ``pids`` that run but are not the recorded processes, each logged."""
    reused = [pid for pid in pids if alive(pid) and not same_process(record, pid)]
    for pid in reused:
        try:
            command = " ".join(psutil.Process(pid).cmdline())[:200]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            command = "?"
        log.warning(
            "pid %d now belongs to another process (%s): not signalled; its record is dropped",
            pid,
            command,
        )
    return reused


def recorded_status(
    state_dir: Path | str, file: str, describe: Callable[[Record], dict[str, Any]], url_key: str
) -> dict[str, Any]:
    """``describe(record)`` of the process recorded in ``file``, or why nothing runs there.

    ``describe`` asks the process; an ``OSError`` means it is gone and the record is stale
    (it was killed, not stopped), which is reported with the record's ``url_key``. When no
    recorded process runs any more (gone, or its pid now another process's: those are
    ``reused_pids``), the record is stale and deleted; nothing is asked or signalled.
    """
    record = read_record(state_dir, file)
    if record is None:
        return {"running": False, "state_dir": str(state_dir)}
    pids = [int(pid) for pid in record.get("processes", {})]
    if not any(same_process(record, pid) for pid in pids):
        reused = _reused(record, pids)
        Path(state_dir, file).unlink(missing_ok=True)
        stale = {"running": False, url_key: record[url_key], "stale_record": True}
        return {**stale, "reused_pids": reused} if reused else stale
    try:
        return {"running": True, **describe(record)}
    except OSError:
        return {"running": False, url_key: record[url_key], "stale_record": True}
