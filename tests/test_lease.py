"""Tests for helpers.lease: one writer per output_root, refusals that name the holder, takeover."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import lease
from helpers.lease import LEASE, LeaseHeld, check_free, writer_lease
from helpers.manifest import update_manifest

#: Holds the lease of argv[1] until killed, after saying so.
HOLDER = """
import sys, time
from helpers.lease import writer_lease
with writer_lease(sys.argv[1], "02_feature_extraction: features/"):
    print("HELD", flush=True)
    time.sleep(600)
"""


def _holder(root: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "HELD"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_then_takes_over(tmp_path: Path) -> None:
    """Another live process holds the lease: refused, naming its pid and what it writes;
    once that process is killed (its lease left behind), the lease is taken over."""
    root = tmp_path / "out"
    holder = _holder(root)
    try:
        with pytest.raises(LeaseHeld, match=rf"features/ by pid {holder.pid} on"):
            with writer_lease(str(root), "test"):
                pass
        with pytest.raises(LeaseHeld, match="wait for it to finish"):
            check_free(str(root))
        with pytest.raises(LeaseHeld):
            update_manifest(str(root), "eda", {"images": 1})
        assert not (root / "manifest.json").exists()
        run = [sys.executable, "-m", "helpers.run", "--data-root", "data_sample"]
        second = subprocess.run(
            [*run, "--output-root", str(root)], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2 and f"by pid {holder.pid}" in second.stderr
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((root / LEASE).read_text())["pid"] == holder.pid  # left by the killed run
    with writer_lease(str(root), "test"):
        assert json.loads((root / LEASE).read_text())["pid"] == os.getpid()
        with writer_lease(str(root), "nested"):  # re-entrant within a process
            update_manifest(str(root), "eda", {"images": 1})
        assert (root / LEASE).exists()
    assert not (root / LEASE).exists()
    assert json.loads((root / "manifest.json").read_text())["eda"]["images"] == 1


def _write_lease(root: Path, **holder: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    values = {
        "host": socket.gethostname(),
        "pid": me.pid,
        "pid_started": me.create_time(),
        "purpose": "elsewhere",
        "token": "t",
        "started": "2026-12-07T00:00:00Z",
        "renewed": time.time(),
    }
    (root / LEASE).write_text(json.dumps({**values, **holder}))


def test_takeover_rules(tmp_path: Path) -> None:
    """Same host: taken over when the pid is gone or now runs another process (start time
    differs); another host: only once not renewed for STALE_S seconds; a file this pipeline
    cannot read: never taken over."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        reused = {"pid": sleeper.pid, "pid_started": 1.0}  # a live pid, another process's
        stale = {"host": "elsewhere", "renewed": time.time() - lease.STALE_S - 1}
        for taken in (reused, {"pid": 2**22 + 7}, stale):
            _write_lease(tmp_path / "a", **taken)
            with writer_lease(str(tmp_path / "a"), "test"):
                pass
        assert sleeper.poll() is None  # the process with the reused pid was left alone
        _write_lease(tmp_path / "b", host="elsewhere")
        with pytest.raises(LeaseHeld, match="elsewhere by pid .* on elsewhere"):
            with writer_lease(str(tmp_path / "b"), "test"):
                pass
        (tmp_path / "b" / LEASE).write_text("not json")
        with pytest.raises(LeaseHeld, match="a lease file this pipeline cannot read"):
            with writer_lease(str(tmp_path / "b"), "test"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_holder_renews_its_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While held, the lease's ``renewed`` time moves forward."""
    monkeypatch.setattr(lease, "RENEW_S", 0.05)
    root = tmp_path / "out"
    with writer_lease(str(root), "test"):
        first = json.loads((root / LEASE).read_text())["renewed"]
        time.sleep(0.5)
        assert json.loads((root / LEASE).read_text())["renewed"] > first
