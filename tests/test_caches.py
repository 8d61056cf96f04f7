"""Cache entries checked before use (helpers.caches): the record itself, the s3:// weights
on moto's S3 server, the S3A jars from a local Maven repository, converted models. Each
entry damaged in place (same size, other bytes) or left without its record is made again.
The class archive's own tests are in tests/test_spark_cds.py (they start JVMs)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import moto_server

from helpers import caches
from helpers.env import HADOOP_AWS_JARS_ENV, MAVEN_REPO_ENV, S3_ENDPOINT_ENVS
from helpers.features.models import Weights, resolve_weights
from helpers.features.runtimes import Runtime
from helpers.spark import jars

BUCKET = "fruits-caches"


def flip(path: Path, offset: int = 0) -> None:
    """Damage ``path`` in place: one byte inverted, same size (a read-only file made
    writable first, as a careless tool would)."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def later(path: Path) -> None:
    """Move ``path``'s modification time 1 s on, as a write a moment after the record would
    (within one clock tick of its creation a rewrite keeps the time the record holds)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


# --- the record ---------------------------------------------------------------------------


def test_record_is_written_after_the_entry_and_checked(tmp_path: Path, caplog) -> None:
    """The record holds SHA-256, size and time; a flipped byte, a missing record, a changed
    source each fail the check with a warning naming the file."""
    entry = tmp_path / "model.bin"
    entry.write_bytes(b"0123456789" * 1000)
    assert not caches.verified(entry)  # no record yet
    saved = caches.record(entry, etag='"abc"')
    assert json.loads(caches.sidecar(entry).read_text()) == saved
    assert saved["sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest()
    assert saved["size"] == 10_000 and saved["etag"] == '"abc"'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.bin.sha256.json"]
    assert caches.verified(entry) and caches.verified(entry, quick=True, etag='"abc"')
    assert caches.verified(entry, etag=None)  # a store without ETags compares nothing more

    caplog.set_level(logging.INFO, logger="helpers.caches")
    caplog.clear()
    assert not caches.verified(entry, etag='"def"', action="fetched again")
    assert "its source changed" in caplog.text and "fetched again" in caplog.text

    flip(entry, 5000)
    assert entry.stat().st_size == 10_000
    caplog.clear()
    assert not caches.verified(entry, action="made again")
    assert f"cached {entry}: its SHA-256 differs from the record; made again" in caplog.text
    assert caplog.records[0].levelno == logging.WARNING

    later(entry)
    assert caches.problem(entry, quick=True) == "its modification time differs from the record"
    caches.record(entry)
    caches.sidecar(entry).unlink()
    assert caches.problem(entry) == "no record (model.bin.sha256.json)"
    caches.sidecar(entry).write_text("{not json")
    assert caches.problem(entry) == "no record (model.bin.sha256.json)"
    caches.sidecar(entry).unlink()
    caplog.clear()
    assert not caches.verified(tmp_path / "absent.bin")  # a cold cache is not worth a warning
    assert caplog.text == ""


# --- s3:// weights on moto's S3 server ------------------------------------------------------


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A moto S3 server with an empty bucket, fake keys in the environment, a fresh cache."""
    import boto3
    import s3fs

    nowhere = str(tmp_path / "none")
    with moto_server() as endpoint:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", HADOOP_AWS_JARS_ENV, *S3_ENDPOINT_ENVS):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFRUITSCACHES0000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fruitsCachesTestSecret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
        monkeypatch.setenv("AWS_CONFIG_FILE", nowhere)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        s3fs.S3FileSystem.clear_instance_cache()  # one client per process, made with old env
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
        s3fs.S3FileSystem.clear_instance_cache()


def test_weights_fetched_again_when_replaced_or_damaged(s3, tmp_path: Path, caplog) -> None:
    """An s3:// weights file is fetched once; again when the object is replaced by one of the
    same size (its ETag changed), when the local copy is damaged, or has no record."""
    uri = f"s3://{BUCKET}/models/w.h5"
    s3.put_object(Bucket=BUCKET, Key="models/w.h5", Body=b"weights v1")
    local = Path(resolve_weights(uri))
    assert local.read_bytes() == b"weights v1" and local.is_relative_to(tmp_path / "cache")
    etag = s3.head_object(Bucket=BUCKET, Key="models/w.h5")["ETag"]
    assert caches.read_record(local)["etag"] == etag
    inode = local.stat().st_ino  # a download renames a new file in
    assert Path(resolve_weights(uri)) == local and local.stat().st_ino == inode

    s3.put_object(Bucket=BUCKET, Key="models/w.h5", Body=b"weights v2")  # same size
    assert Path(resolve_weights(uri)).read_bytes() == b"weights v2"
    assert caches.verified(local)

    caplog.set_level(logging.WARNING, logger="helpers.caches")
    flip(local)
    assert Path(resolve_weights(uri)).read_bytes() == b"weights v2"
    assert f"cached {local}: its SHA-256 differs from the record; fetched again" in caplog.text

    caches.sidecar(local).unlink()
    local.write_bytes(b"weights v0")  # an older copy, same size, no record: never trusted
    assert Path(resolve_weights(uri)).read_bytes() == b"weights v2"
    assert caches.verified(local)
    cached = sorted(p.name for p in local.parent.iterdir())
    assert cached == [local.name, local.name + caches.SUFFIX]


# --- the S3A jars from a Maven repository ----------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local Maven repository serving the three jars of Spark 3.5.8 with their .sha1, and
    an empty jar cache."""
    repo = tmp_path / "repo"
    for artifact in jars.s3a_artifacts("3.3.4", "3.5.8"):
        jar = Path(artifact.url(str(repo)))
        jar.parent.mkdir(parents=True)
        jar.write_bytes(artifact.name.encode() * 100)
        jar.with_name(jar.name + ".sha1").write_text(hashlib.sha1(jar.read_bytes()).hexdigest())
    monkeypatch.setenv("FRUITS_JARS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(MAVEN_REPO_ENV, f"file://{repo}")
    return repo


def test_damaged_jar_is_not_used_and_fetched_again(repo: Path, caplog) -> None:
    """fetch records each jar's SHA-256; a jar damaged in place is left out of the session
    (warning naming it) and downloaded again by the next fetch."""
    fetched = jars.fetch("3.3.4", "3.5.8")
    assert jars.cached_jars("3.3.4", "3.5.8") == fetched
    bundle = Path(fetched[1])
    original = bundle.read_bytes()
    assert caches.read_record(bundle)["sha256"] == hashlib.sha256(original).hexdigest()
    assert not list(bundle.parent.glob("*.verified")) and not list(bundle.parent.glob(".*"))

    caplog.set_level(logging.WARNING, logger="helpers.caches")
    flip(bundle, 10)
    later(bundle)
    assert jars.cached_jars("3.3.4", "3.5.8") == []
    assert f"cached {bundle}: its modification time differs" in caplog.text
    assert "helpers.spark.jars fetch" in caplog.text

    assert jars.fetch("3.3.4", "3.5.8") == fetched
    assert bundle.read_bytes() == original
    assert jars.cached_jars("3.3.4", "3.5.8") == fetched


def test_unrecorded_jar_is_checked_against_maven(repo: Path) -> None:
    """A jar cached without a record (by an earlier version) is recorded when it matches
    Maven's SHA-1, without a download; one that does not is downloaded again."""
    fetched = [Path(p) for p in jars.fetch("3.3.4", "3.5.8")]
    for jar in fetched:
        caches.sidecar(jar).unlink()
    assert jars.cached_jars("3.3.4", "3.5.8") == []  # unrecorded: not used by a session
    inodes = [jar.stat().st_ino for jar in fetched]  # a download renames a new file in
    flip(fetched[0])
    assert jars.fetch("3.3.4", "3.5.8") == [str(p) for p in fetched]
    assert fetched[0].stat().st_ino != inodes[0]  # damaged: downloaded again
    assert [jar.stat().st_ino for jar in fetched[1:]] == inodes[1:]  # vouched for by Maven
    assert all(caches.verified(jar) for jar in fetched)
    source = Path(jars.s3a_artifacts("3.3.4", "3.5.8")[0].url(str(repo)))
    assert fetched[0].read_bytes() == source.read_bytes()


def test_jar_without_sha1_is_recorded_by_its_own_digest(
    repo: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A repository (over HTTP) that publishes no .sha1 for a jar: the jar is fetched, said
    so in a warning, and recorded by its own SHA-256."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(repo))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(MAVEN_REPO_ENV, f"http://127.0.0.1:{server.server_port}")
        artifact = jars.s3a_artifacts("3.3.4", "3.5.8")[2]
        Path(artifact.url(str(repo)) + ".sha1").unlink()
        caplog.set_level(logging.WARNING, logger="helpers.spark.jars")
        fetched = [Path(p) for p in jars.fetch("3.3.4", "3.5.8")]
    finally:
        server.shutdown()
        server.server_close()
    assert f"{artifact.file_name}.sha1 not found" in caplog.text
    assert all(caches.verified(jar) for jar in fetched)
    assert fetched[2].read_bytes() == Path(artifact.url(str(repo))).read_bytes()


# --- converted models ----------------------------------------------------------------------


class Counting(Runtime):
    """A runtime whose conversion is a counter: the cache logic without TensorFlow (the
    real conversions, damaged and made again, are in tests/test_features_runtimes.py)."""

    name = "counting"

    def __init__(self, folder: Path) -> None:
        self.folder, self.conversions = folder, 0

    def cache_path(self, model_name: str, image_size: int, checksum: str) -> Path:
        return self.folder / f"{model_name}-{image_size}px-{checksum[:32]}.model"

    def convert(self, model_name: str, image_size: int, arrays: list[np.ndarray]) -> bytes:
        self.conversions += 1
        return b"converted model " * 64


def test_damaged_converted_model_is_converted_again(tmp_path: Path, caplog) -> None:
    """A converted model is used from the cache while it matches its record; damaged (same
    size) or unrecorded, it is converted again, and the warning names it."""
    runtime = Counting(tmp_path)
    weights = Weights([np.zeros(3, np.float32)], "ab" * 32, "test")
    first = runtime.converted("m", 32, weights)
    assert (first.cached, runtime.conversions) == (False, 1)
    assert caches.verified(first.path)
    assert runtime.converted("m", 32, weights).cached is True and runtime.conversions == 1

    caplog.set_level(logging.WARNING, logger="helpers.caches")
    flip(first.path, 100)
    again = runtime.converted("m", 32, weights)
    assert (again.cached, runtime.conversions) == (False, 2) and again.data == first.data
    assert f"cached {first.path}: its SHA-256 differs from the record; converted again" in (
        caplog.text
    )
    assert first.path.read_bytes() == first.data and caches.verified(first.path)

    caches.sidecar(first.path).unlink()
    assert runtime.converted("m", 32, weights).cached is False and runtime.conversions == 3
    assert runtime.converted("m", 32, weights).cached is True and runtime.conversions == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        first.path.name,
        first.path.name + caches.SUFFIX,
    ]
