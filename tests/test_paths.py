"""Tests for helpers.paths: resolving user paths and URIs, and whole-file reads and writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import moto_server

from helpers.paths import (
    PROJECT_ROOT,
    exists,
    io_uri,
    is_remote,
    is_s3,
    join,
    read_bytes,
    redact,
    refuse_credentials,
    resolve,
    spark_uri,
    write_bytes,
)
from helpers.spark.settings import resolve_s3_endpoint


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


# --- credentials: refused in every scheme and case, never shown --------------------------

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS secret keys may hold '/'

WITH_CREDENTIALS = [
    f"S3://{ACCESS_KEY}:{SECRET_KEY}@bucket/x",
    f"s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/x",
    f"S3A://{ACCESS_KEY}:{SECRET_KEY}@bucket/x",
    f"s3n://{ACCESS_KEY}@bucket/x",
    f"s3://{ACCESS_KEY}:{SECRET_KEY}/x",
    f"gs://{ACCESS_KEY}:{SECRET_KEY}@bucket/x",
    f"abfss://container:{SECRET_KEY}@account.dfs.core.windows.net/x",
    f"hdfs://{ACCESS_KEY}:{SECRET_KEY}@namenode:8020/x",
    f"HTTPS://{ACCESS_KEY}:{SECRET_KEY}@host/x",
    f"http://{ACCESS_KEY}@host:9000/x",
    f"dbfs://{ACCESS_KEY}:{SECRET_KEY}@workspace/x",
    f"file://{ACCESS_KEY}:{SECRET_KEY}@host/x",
    f"  s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/x  ",
]


def _hides_keys(text: str) -> bool:
    return not any(part in text for part in (ACCESS_KEY, *SECRET_KEY.split("/")))


@pytest.mark.parametrize("uri", WITH_CREDENTIALS)
def test_credentials_are_refused_without_showing_them(uri: str) -> None:
    """user:secret@ (or user@) in any scheme, any case: resolve, is_remote and is_s3 refuse
    it; the message names the parameter and shows the URI with *** in their place."""
    with pytest.raises(ValueError, match="holds credentials") as raised:
        resolve(uri, "data_root")
    message = str(raised.value)
    assert message.startswith("data_root '") and "***" in message
    assert _hides_keys(message)
    for check in (is_remote, is_s3, spark_uri, io_uri):
        with pytest.raises(ValueError, match="holds credentials") as raised:
            check(uri)
        assert _hides_keys(str(raised.value))
    assert "***" in redact(uri) and _hides_keys(redact(uri))


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/key@with-at",
        "abfss://container@account.dfs.core.windows.net/x",  # Azure's container, not a user
        "wasbs://c-1@account.blob.core.windows.net/x",
        "hdfs://namenode:8020/x",
        "http://[::1]:9000/x",
        "dbfs:/mnt/x@y",
        "/local/folder@2024/x",
        "relative@folder",
    ],
)
def test_names_that_only_look_like_credentials_pass(uri: str) -> None:
    """An @ in a key or a local name, a port, Azure's container@account: no credentials."""
    assert redact(uri) == uri
    refuse_credentials(uri, "data_root")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("S3://bucket/x/", "s3://bucket/x"),
        ("S3A://bucket/X", "s3a://bucket/X"),
        ("s3N://bucket/x", "s3n://bucket/x"),
        ("DBFS:/mnt/x", "dbfs:/mnt/x"),
        ("GS://bucket/x", "gs://bucket/x"),
    ],
)
def test_upper_case_schemes_are_that_store(uri: str, expected: str) -> None:
    """S3://bucket/x is S3 (scheme in lower case), never a local folder named 'S3:'."""
    assert is_remote(uri)
    assert resolve(uri) == expected
    assert spark_uri(uri) == expected
    assert is_s3(uri) == expected.startswith("s3")


def test_upper_case_s3_reaches_the_same_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upper-case S3:// URI reads and writes the objects of s3:// (moto's server)."""
    import boto3
    import s3fs

    with moto_server() as endpoint:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s3fs.S3FileSystem.clear_instance_cache()
        client = boto3.client("s3")
        client.create_bucket(
            Bucket="upper", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"}
        )
        try:
            write_bytes("S3://upper/x/blob.bin", b"fruit")
            assert client.get_object(Bucket="upper", Key="x/blob.bin")["Body"].read() == b"fruit"
            assert read_bytes("S3A://upper/x/blob.bin") == b"fruit"
            assert exists("S3N://upper/x")
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


FILE_SCHEME = ["FILE:", "File://"]


@pytest.mark.parametrize("prefix", FILE_SCHEME)
def test_file_scheme_in_any_case(prefix: str, tmp_path: Path) -> None:
    """FILE:/abs is the local path /abs, as file:/abs is."""
    assert resolve(f"{prefix}{tmp_path}/images") == str(tmp_path.resolve() / "images")


@pytest.mark.parametrize(
    "args",
    [
        ["--data-root", f"S3://{ACCESS_KEY}:{SECRET_KEY}@bucket/x"],
        ["--data-root", "data_sample", "--output-root", f"s3a://{ACCESS_KEY}@bucket/out"],
        ["--data-root", "data_sample", "--weights", f"S3://{ACCESS_KEY}:{SECRET_KEY}@b/w.h5"],
        ["--data-root", "data_sample", "--weights", f"https://{ACCESS_KEY}:{SECRET_KEY}@h/w.h5"],
        ["--data-root", "data_sample", "-p", "s3_endpoint", f"{ACCESS_KEY}:{SECRET_KEY}@h:9000"],
        ["--data-root", "data_sample", "-p", "s3_endpoint", f"http://{ACCESS_KEY}@h:9000"],
    ],
)
def test_run_refuses_credentials_and_never_shows_them(tmp_path: Path, args: list[str]) -> None:
    """python -m helpers.run with credentials in a root, the weights or the endpoint: exit
    status 2 before any notebook, and neither key anywhere in its output or its outputs."""
    out = tmp_path / "out"
    if "--output-root" not in args:
        args = [*args, "--output-root", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "helpers.run", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "holds credentials" in result.stderr and "***" in result.stderr
    assert _hides_keys(result.stdout + result.stderr)
    assert not out.exists()


def test_endpoint_with_credentials_is_refused_unshown(monkeypatch: pytest.MonkeyPatch) -> None:
    """s3_endpoint (parameter or $AWS_ENDPOINT_URL*) with userinfo: refused, never echoed."""
    for endpoint in (
        f"http://{ACCESS_KEY}:{SECRET_KEY}@minio:9000",
        f"{ACCESS_KEY}:{SECRET_KEY}@minio:9000",
        f"HTTPS://{ACCESS_KEY}@minio",
    ):
        with pytest.raises(ValueError, match="s3_endpoint '.*' holds credentials") as raised:
            resolve_s3_endpoint(endpoint)
        assert _hides_keys(str(raised.value))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{ACCESS_KEY}:{SECRET_KEY}@minio:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with pytest.raises(ValueError, match=r"\$AWS_ENDPOINT_URL") as raised:
        resolve_s3_endpoint("")
    assert _hides_keys(str(raised.value))
    assert resolve_s3_endpoint("HTTP://minio:9000/") == "http://minio:9000"
