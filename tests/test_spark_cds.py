"""The class archive of local Spark drivers (helpers.spark.cds): made once, checked, used."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest

from helpers import caches
from helpers.paths import PROJECT_ROOT
from helpers.spark import cds

#: Starts notebooks, a cluster, a server or a Spark driver of its own: `make test` only.
pytestmark = pytest.mark.slow

SESSION = """
from helpers.spark.session import get_spark

spark = get_spark("cds-test", master="local[1]")
jvm = spark.sparkContext._jvm
print(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
print(spark.range(5).count())
"""


def _session(**env: str) -> str:
    """Start a session in a fresh process (a fresh JVM); its JVM arguments and a count."""
    child = subprocess.run(
        [sys.executable, "-c", SESSION],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return child.stdout


def test_archive_is_made_and_used() -> None:
    """make_archive (a no-op once `make setup` made it) gives the archive that get_spark maps."""
    path = cds.make_archive()
    assert path is not None and path.exists() and path.stat().st_size > 10_000_000
    assert cds.driver_java_options() == f"-XX:SharedArchiveFile={path}"
    output = _session()
    assert f"-XX:SharedArchiveFile={path}" in output and output.split()[-1] == "5"
    assert "Unable to use shared archive" not in output  # the JVM mapped it, not just got it
    assert "SharedArchiveFile" not in _session(FRUITS_CLASS_ARCHIVE="off")


def test_damaged_archive_is_refused(tmp_path: Path) -> None:
    """A truncated archive fails the check that comes before installing one."""
    path = cds.make_archive()
    assert path is not None
    damaged = tmp_path / "damaged.jsa"
    damaged.write_bytes(path.read_bytes()[:1_000_000])
    crash = tmp_path / "hs_err_%p.log"
    check = f"-Xshare:on -XX:ErrorFile={crash} {cds.USE_OPTION}{damaged}"
    code, _ = cds._run_child(check, 300, "check")
    assert code != 0
    assert not list(PROJECT_ROOT.glob("hs_err_pid*.log"))


def test_archive_names_pyspark_and_java(tmp_path: Path) -> None:
    """Another cache, another name; no Java at all, no archive."""
    path = cds.archive_path(tmp_path)
    assert path is not None and path.parent == tmp_path
    assert path.name.startswith(f"spark-{pyspark.__version__}-java-")
    assert cds.driver_java_options(tmp_path) == ""  # nothing made there


def test_changed_jars_name_another_archive(tmp_path: Path) -> None:
    """A reinstalled jar (same name, new time) gives another digest: the JVM would refuse
    the archive made with the old one."""
    jar = tmp_path / "spark-core.jar"
    jar.write_bytes(b"jar")
    before = cds._jars_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("not a jar")
    assert cds._jars_digest(tmp_path) == before
    os.utime(jar, ns=(0, jar.stat().st_mtime_ns + 1_000_000_000))
    assert cds._jars_digest(tmp_path) != before


def test_damaged_or_unrecorded_archive_is_not_used_and_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An archive damaged in place (same size) is left out of the JVM options, with a warning
    naming it, and sessions start without it; make_archive makes it again, and sessions map
    it. An archive without its record is treated the same (made again, never trusted)."""
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("XDG_CACHE_HOME", cache)
    path = cds.make_archive()
    assert path is not None and path.is_relative_to(tmp_path)
    record = caches.read_record(path)
    assert record is not None and record["sha256"] == caches.sha256(path)
    assert cds.driver_java_options() == f"{cds.USE_OPTION}{path}"

    caplog.set_level(logging.WARNING, logger="helpers.caches")
    size = path.stat().st_size
    path.chmod(0o644)  # the JVM writes it read-only
    with path.open("r+b") as handle:
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert path.stat().st_size == size
    assert cds.driver_java_options() == ""
    assert f"cached {path}: its modification time differs" in caplog.text
    output = _session(XDG_CACHE_HOME=cache)
    assert "SharedArchiveFile" not in output and output.split()[-1] == "5"

    inode = path.stat().st_ino
    assert cds.make_archive() == path and path.stat().st_ino != inode  # made again
    assert caches.verified(path)
    output = _session(XDG_CACHE_HOME=cache)
    assert f"{cds.USE_OPTION}{path}" in output and output.split()[-1] == "5"
    assert "Unable to use shared archive" not in output

    caches.sidecar(path).unlink()
    caplog.clear()
    assert cds.driver_java_options() == ""
    assert f"cached {path}: no record" in caplog.text
    inode = path.stat().st_ino
    assert cds.make_archive() == path and path.stat().st_ino != inode
    assert cds.driver_java_options() == f"{cds.USE_OPTION}{path}"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + caches.SUFFIX]
