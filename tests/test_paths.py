"""Tests for helpers.paths: resolving user paths and URIs, and whole-file reads and writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.paths import (
    PROJECT_ROOT,
    exists,
    is_remote,
    join,
    read_bytes,
    resolve,
    spark_uri,
    write_bytes,
)


def test_resolve_relative_is_from_repository_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path is taken from the repository root, whatever the working directory."""
    monkeypatch.chdir(tmp_path)
    assert resolve("data_sample") == str(PROJECT_ROOT / "data_sample")
    assert resolve("outputs/run1/") == str(PROJECT_ROOT / "outputs" / "run1")


def test_resolve_absolute(tmp_path: Path) -> None:
    """An absolute path is kept (normalized, trailing slash dropped), existing or not."""
    assert resolve(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve(f"{tmp_path}/new/") == str(tmp_path.resolve() / "new")


@pytest.mark.parametrize("prefix", ["file:", "file://"])
def test_resolve_file_scheme(prefix: str, tmp_path: Path) -> None:
    """file:/abs and file:///abs both become the plain local path."""
    assert resolve(f"{prefix}{tmp_path}/images") == str(tmp_path.resolve() / "images")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/fruits/", "s3://bucket/fruits"),
        ("s3a://bucket/fruits", "s3a://bucket/fruits"),
        ("dbfs:/mnt/fruits/", "dbfs:/mnt/fruits"),
        ("  s3://bucket/with space/ ", "s3://bucket/with space"),
    ],
)
def test_resolve_remote_kept(uri: str, expected: str) -> None:
    """Object-store URIs are kept as given, minus surrounding blanks and a trailing slash."""
    assert is_remote(expected)
    assert resolve(uri) == expected


@pytest.mark.parametrize("uri", ["", "   "])
def test_resolve_empty_raises(uri: str) -> None:
    """An empty path raises ValueError saying what kinds of path are accepted."""
    with pytest.raises(ValueError, match="path is empty"):
        resolve(uri)


def test_spark_uri(tmp_path: Path) -> None:
    """Local paths become file:// URIs for Spark; remote URIs pass through."""
    assert spark_uri("data_sample") == f"file://{PROJECT_ROOT / 'data_sample'}"
    assert spark_uri(f"file:{tmp_path}") == f"file://{tmp_path.resolve()}"
    assert spark_uri("s3://bucket/out/") == "s3://bucket/out"
    assert not is_remote(str(tmp_path))


def test_join() -> None:
    """join() puts exactly one / between root and parts, for paths and URIs alike."""
    assert join("s3://bucket/out/", "figures", "pca.png") == "s3://bucket/out/figures/pca.png"
    assert join("/tmp/out", "/figures/", "x.png") == "/tmp/out/figures/x.png"
    assert join("dbfs:/runs") == "dbfs:/runs"


def test_write_read_exists_round_trip(tmp_path: Path) -> None:
    """write_bytes creates parent folders; read_bytes and exists see the file."""
    uri = str(tmp_path / "a" / "b" / "blob.bin")
    assert not exists(uri)
    write_bytes(uri, b"\x00fruit\xff")
    assert exists(uri)
    assert exists(str(tmp_path / "a"))
    assert read_bytes(uri) == b"\x00fruit\xff"
    assert read_bytes(f"file://{uri}") == b"\x00fruit\xff"


def test_write_bytes_replaces_atomically(tmp_path: Path) -> None:
    """Rewriting a file replaces its whole content and leaves no temporary file beside it."""
    uri = str(tmp_path / "manifest.json")
    write_bytes(uri, b"x" * 1000)
    write_bytes(uri, b"short")
    assert read_bytes(uri) == b"short"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize(
    "uri",
    ["/Volumes/main/fruits/images", "dbfs:/mnt/fruits", "s3://bucket/x", "s3a://bucket/x"],
)
def test_cluster_locations_reach_spark_as_given(uri: str) -> None:
    """Databricks volumes, dbfs:/ and S3 URIs reach Spark unchanged (no file: prefix)."""
    assert resolve(f"{uri}/") == uri
    assert spark_uri(uri) == uri
