"""helpers.dev.process: the state records, process checks and logs that the local cluster and
Livy share; plain processes (``sleep``), no Spark, no Java."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from helpers.dev import process
from helpers.dev.process import (
    alive,
    free_port,
    identity,
    log_path,
    log_tail,
    read_record,
    recorded_status,
    same_process,
    spawn,
    stop_recorded,
    terminate,
    wait_until,
    write_private,
    write_record,
)

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_record_round_trip(tmp_path):
    """What write_record writes, read_record reads back; nothing written reads as None."""
    assert read_record(tmp_path, "x.json") is None
    record = {"url": "http://127.0.0.1:1", "pid": 12, "worker_pids": [3, 4]}
    write_record(tmp_path / "state", "x.json", record)
    assert read_record(tmp_path / "state", "x.json") == record
    assert json.loads((tmp_path / "state" / "x.json").read_text()) == record
    assert (tmp_path / "state" / "x.json").stat().st_mode & 0o777 == 0o600  # a secret's place


def test_write_private_is_for_this_user_only_even_over_an_open_file(tmp_path):
    path = tmp_path / "secret.properties"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "spark.authenticate.secret abc\n")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == "spark.authenticate.secret abc\n"


def test_record_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that fails half-way keeps the previous record and leaves no temp file."""
    write_record(tmp_path, "x.json", {"pid": 1})

    def broken_dump(record, out, **kwargs):
        out.write('{"pid": ')
        raise OSError("disk full")

    monkeypatch.setattr(process.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_record(tmp_path, "x.json", {"pid": 2})
    assert read_record(tmp_path, "x.json") == {"pid": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_alive_of_this_process_and_of_a_dead_one():
    assert alive(os.getpid())
    assert not alive(_dead_pid())


def test_alive_is_false_for_a_zombie():
    """An exited child not yet waited for is a zombie: not alive."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child.pid)
    child.wait()


def test_terminate_stops_a_process_and_its_children():
    """SIGTERM reaches the process and the child it started."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = int(parent.stdout.readline())
    assert alive(parent.pid) and alive(child_pid)
    terminate([parent.pid], timeout=10)  # waits for it: psutil reaps our child
    assert not alive(parent.pid)
    parent.wait()  # psutil reaped it: this only tells the Popen
    deadline = time.monotonic() + 10
    while alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child_pid)
    parent.stdout.close()


def test_terminate_kills_what_ignores_sigterm():
    """A process that ignores SIGTERM gets SIGKILL after the timeout."""
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stubborn.stdout.readline().strip() == "ready"
    began = time.monotonic()
    terminate([stubborn.pid], timeout=0.5)
    assert not alive(stubborn.pid)
    assert time.monotonic() - began >= 0.5  # SIGTERM did nothing: SIGKILL after the wait
    stubborn.wait()
    stubborn.stdout.close()


def test_terminate_of_gone_pids_does_nothing():
    terminate([_dead_pid()], timeout=1)


def test_log_tail(tmp_path):
    """The last lines of a log; a missing log says so."""
    path = tmp_path / "a.out"
    assert log_tail(path) == "(no log)"
    path.write_text("".join(f"line {i}\n" for i in range(50)))
    assert log_tail(path, 3) == "line 47\nline 48\nline 49"
    assert log_tail(path).splitlines()[0] == "line 30"


def test_spawn_logs_into_the_state_folder(tmp_path):
    """The child's output goes to logs/<name>.out; it runs in its own session."""
    command = [sys.executable, "-c", "import os; print('hello', os.getsid(0) == os.getpid())"]
    pid = spawn(tmp_path, "greeter", command, os.environ, cwd=tmp_path)
    assert wait_until(
        lambda: "hello" in log_tail(log_path(tmp_path, "greeter")), "greeting", 10, {}, tmp_path
    )
    assert log_tail(log_path(tmp_path, "greeter")) == "hello True"
    assert pid != os.getpid()


def test_wait_until_names_the_process_that_died_with_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('it broke'); sys.exit(3)"]
    pid = spawn(tmp_path, "server", command, os.environ)
    with pytest.raises(RuntimeError, match=r"server \(pid \d+\) exited .*\n.*it broke"):
        wait_until(lambda: None, "an answer", 10, {"server": pid}, tmp_path)


def test_wait_until_retries_through_errors_then_times_out(tmp_path):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError
        return "up" if len(calls) == 3 else None

    assert wait_until(flaky, "up", 10, {"me": os.getpid()}, tmp_path) == "up"
    with pytest.raises(TimeoutError, match="no nothing after 0 s"):
        wait_until(lambda: None, "nothing", 0.1, {"me": os.getpid()}, tmp_path)


def _record(*processes: subprocess.Popen, **fields) -> dict:
    """A record of ``processes``, as the launchers write it (pids and identities)."""
    idents = {str(p.pid): identity(p.pid, p.args) for p in processes}
    return {"pids": [p.pid for p in processes], "processes": idents, **fields}


def test_stop_recorded_stops_the_groups_and_deletes_the_record(tmp_path):
    sleepers = [subprocess.Popen(SLEEP) for _ in range(2)]
    written = _record(*sleepers, url="u")
    write_record(tmp_path, "s.json", written)
    record = stop_recorded(tmp_path, "s.json", lambda r: ([r["pids"][0]], [r["pids"][1]]), 10)
    assert record == written
    assert not any(alive(p.pid) for p in sleepers)
    for sleeper in sleepers:
        sleeper.wait()
    assert read_record(tmp_path, "s.json") is None
    assert stop_recorded(tmp_path, "s.json", lambda r: [], 10) is None  # twice is harmless


def test_recorded_status(tmp_path):
    """Nothing recorded, a live record, and a record whose process no longer answers."""
    assert recorded_status(tmp_path, "s.json", dict, "url") == {
        "running": False,
        "state_dir": str(tmp_path),
    }
    me = {str(os.getpid()): identity(os.getpid(), psutil.Process().cmdline())}
    write_record(tmp_path, "s.json", {"url": "http://127.0.0.1:1", "pid": 5, "processes": me})
    assert recorded_status(tmp_path, "s.json", lambda r: {"url": r["url"]}, "url") == {
        "running": True,
        "url": "http://127.0.0.1:1",
    }

    def gone(record):
        raise ConnectionRefusedError

    assert recorded_status(tmp_path, "s.json", gone, "url") == {
        "running": False,
        "url": "http://127.0.0.1:1",
        "stale_record": True,
    }


def test_free_port_keeps_a_free_preferred_port_and_replaces_a_taken_one():
    port = free_port()
    assert free_port(port) == port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        other = free_port(busy)
    assert other != busy and other > 0


def _launcher(tmp_path) -> list[str]:
    """A script that execs ``sleep`` with its arguments, as ``spark-class`` execs Java."""
    script = tmp_path / "launch"
    script.write_text('#!/bin/sh\nexec sleep "$@"\n')
    script.chmod(0o755)
    return [str(script), "60"]


def test_same_process_after_exec_and_not_after_pid_reuse(tmp_path):
    """The recorded process is recognised after its launcher execs (same start time, the
    command line ends with its arguments); the same pid with another start time or another
    command is another process."""
    command = _launcher(tmp_path)
    pid = spawn(tmp_path, "sleeper", command, os.environ)
    record = {"processes": {str(pid): identity(pid, command)}}
    try:
        # the kernel sets the name before the new command line: wait for both
        wait_until(
            lambda: psutil.Process(pid).cmdline() == ["sleep", "60"], "exec", 10, {}, tmp_path
        )
        assert same_process(record, pid)
        earlier = {**record["processes"][str(pid)]}
        earlier["create_time"] -= 5
        assert not same_process({"processes": {str(pid): earlier}}, pid)
        other = {**record["processes"][str(pid)], "args": ["61"]}
        assert not same_process({"processes": {str(pid): other}}, pid)
        assert not same_process({}, pid)  # no identity recorded: never taken as ours
    finally:
        terminate([pid], 10)


@pytest.mark.parametrize("change", ["create_time", "args"])
def test_stop_and_status_leave_a_reused_pid_alone(tmp_path, change, caplog):
    """A record whose pid now belongs to an unrelated live process (another start time, or
    another command line): stop does not signal it, says so and drops the record; status
    reports it stale and drops the record too."""
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        ident = identity(unrelated.pid, unrelated.args)
        ident[change] = ident["create_time"] - 30 if change == "create_time" else ["other"]
        stale = {"url": "http://127.0.0.1:1", "pids": [unrelated.pid]}
        stale["processes"] = {str(unrelated.pid): ident}
        write_record(tmp_path, "s.json", stale)
        with caplog.at_level("WARNING", logger=process.__name__):
            record = stop_recorded(tmp_path, "s.json", lambda r: (r["pids"],), 2)
        assert record["reused_pids"] == [unrelated.pid]
        assert f"pid {unrelated.pid} now belongs to another process" in caplog.text
        assert read_record(tmp_path, "s.json") is None
        assert unrelated.poll() is None and alive(unrelated.pid)

        write_record(tmp_path, "s.json", stale)
        asked = []
        assert recorded_status(tmp_path, "s.json", asked.append, "url") == {
            "running": False,
            "url": "http://127.0.0.1:1",
            "stale_record": True,
            "reused_pids": [unrelated.pid],
        }
        assert asked == [] and read_record(tmp_path, "s.json") is None
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


def test_stop_signals_only_the_recorded_processes_of_a_group(tmp_path):
    """In one group, the recorded process is stopped and the reused pid is left alone."""
    ours, unrelated = subprocess.Popen(SLEEP), subprocess.Popen(["sleep", "60"])
    try:
        record = _record(ours)
        record["pids"].append(unrelated.pid)
        record["processes"][str(unrelated.pid)] = {"create_time": 0.0, "args": ["60"]}
        write_record(tmp_path, "s.json", record)
        stop_recorded(tmp_path, "s.json", lambda r: (r["pids"],), 10)
        assert ours.wait(10) is not None
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
