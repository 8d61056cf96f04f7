"""S3 for every part of the pipeline, against a real S3 API (moto's server on 127.0.0.1).

The manifest, figures, executed notebooks and Parquet read back for plots go through the
bucket for real, and so does Spark: the notebooks run with S3A (the jars `make jars`
cached) against the server, and writers are killed at every step of publishing. The
settings a session gets, and a session without the connector failing at once with the
fix, are checked too. Fake but distinctive credentials must never show up in anything
written or logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pandas as pd
import pyspark
import pytest
from conftest import DATA_SAMPLE, SETTINGS, moto_server, run_script
from test_outputs import publish_kill_chain

from helpers.env import HADOOP_AWS_JARS_ENV, MAVEN_REPO_ENV, S3_ENDPOINT_ENVS, WEIGHTS_ENV
from helpers.features.extract import extract_features
from helpers.features.models import resolve_weights
from helpers.features.spec import FeatureSpec
from helpers.features.store import read_features, write_features
from helpers.manifest import read_manifest, update_manifest
from helpers.paths import (
    PROJECT_ROOT,
    check_access,
    exists,
    io_uri,
    read_bytes,
    resolve,
    write_bytes,
)
from helpers.plots import save_figure
from helpers.reduce import fit_reduction, reduce_features
from helpers.run import main, run_notebooks
from helpers.spark.jars import cached_jars
from helpers.spark.jvm import hadoop_conf_get, jvm_hadoop_version
from helpers.spark.session import get_spark
from helpers.spark.settings import (
    resolve_hadoop_aws_jars,
    resolve_s3_endpoint,
    s3_roots,
    storage_conf,
)
from helpers.spark.versions import hadoop_version

JARS_CACHE_ENV = "FRUITS_JARS_CACHE"

BUCKET = "fruits-test"
REGION = "eu-west-3"
ACCESS_KEY = "AKIAFRUITSTEST7Q4X2Z"
SECRET_KEY = "fruitsTestSecret/NeverLog+8vQ2mZ"
SECRETS = (ACCESS_KEY, SECRET_KEY)


@dataclass(frozen=True)
class S3:
    """The running S3 emulator: its endpoint URL and a boto3 client on it."""

    endpoint: str
    client: object

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the test bucket under ``prefix``."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def body(self, key: str) -> bytes:
        """The bytes of one object in the test bucket."""
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _forget_clients() -> None:
    """Drop cached S3 clients: s3fs and papermill keep one per process, made with old env."""
    import papermill.s3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    papermill.s3.S3.s3_session = (None, None, None)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """A moto S3 server with bucket ``fruits-test`` holding ``data_sample/``; fake keys in env."""
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")
    with moto_server() as endpoint, pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", HADOOP_AWS_JARS_ENV, *S3_ENDPOINT_ENVS):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        env.setenv("AWS_DEFAULT_REGION", REGION)
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)  # the developer's ~/.aws stays out
        env.setenv("AWS_CONFIG_FILE", nowhere)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe
        _forget_clients()
        client = boto3.client("s3")
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        for path in sorted(DATA_SAMPLE.rglob("*")):
            if path.is_file():
                key = f"data_sample/{path.relative_to(DATA_SAMPLE).as_posix()}"
                client.upload_file(str(path), BUCKET, key)
        yield S3(endpoint, client)
        _forget_clients()


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AWS credentials anywhere (env, files, instance role), with fresh S3 clients."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    _forget_clients()
    yield
    _forget_clients()


# --- where things are: URIs for Spark and for everything else --------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3a://bucket/out/", "s3://bucket/out"),
        ("s3://bucket/out", "s3://bucket/out"),
        ("dbfs:/runs/fruits", "/dbfs/runs/fruits"),
        ("/Volumes/main/fruits/images/", "/Volumes/main/fruits/images"),
    ],
)
def test_io_uri_names_one_location_for_fsspec_and_papermill(uri: str, expected: str) -> None:
    """s3a:// is s3:// for s3fs and papermill; dbfs:/ goes through the /dbfs mount."""
    assert io_uri(uri) == expected


def test_credentials_in_uri_are_refused() -> None:
    """s3://KEY:SECRET@bucket is refused, and the message repeats neither key."""
    with pytest.raises(ValueError, match="credentials in a URI") as info:
        resolve(f"s3://{ACCESS_KEY}:{SECRET_KEY}@fruits/images")
    assert not any(secret in str(info.value) for secret in SECRETS)
    with pytest.raises(ValueError, match="credentials in a URI"):
        resolve(f"s3a://{ACCESS_KEY}@fruits/images")


# --- local Spark on S3: the session's settings ------------------------------------------


def test_s3_roots_picks_s3_and_s3a_only() -> None:
    """Only s3:// and s3a:// roots need the S3A connector; blanks are ignored."""
    roots = ["s3://a/x", None, "", "s3a://b/y", "dbfs:/z", "/Volumes/c/d", "data_sample"]
    assert s3_roots(roots) == ["s3://a/x", "s3a://b/y"]


def test_storage_conf_for_aws() -> None:
    """An s3:// root gets hadoop-aws matching Hadoop, s3:// on S3A, the default AWS chain."""
    conf = storage_conf(["data_sample", "s3://fruits/out"], "3.3.4")
    assert conf == {
        "spark.jars.packages": "org.apache.hadoop:hadoop-aws:3.3.4",
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "com.amazonaws.auth.DefaultAWSCredentialsProviderChain"
        ),
    }
    regional = storage_conf(["s3a://fruits/images"], "3.3.4", region=REGION)
    assert regional["spark.hadoop.fs.s3a.endpoint"] == f"s3.{REGION}.amazonaws.com"
    assert regional["spark.hadoop.fs.s3a.endpoint.region"] == REGION


def test_storage_conf_for_s3_compatible_store_and_offline_jars() -> None:
    """An endpoint gets path-style access (TLS off for http://); local jars replace the download."""
    conf = storage_conf(
        ["s3://fruits/images"],
        "3.3.4",
        hadoop_aws_jars=["/jars/hadoop-aws-3.3.4.jar", "/jars/aws-java-sdk-bundle-1.12.262.jar"],
        s3_endpoint="http://127.0.0.1:9000",
    )
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.jars"] == (
        "/jars/hadoop-aws-3.3.4.jar,/jars/aws-java-sdk-bundle-1.12.262.jar"
    )
    assert "spark.jars.packages" not in conf
    tls = storage_conf(["s3://f/i"], "3.3.4", s3_endpoint="https://minio.example:9000")
    assert tls["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"


def test_storage_conf_hadoop_34_uses_sdk_v2_chain() -> None:
    """Spark 4 (Hadoop 3.4, AWS SDK v2) gets the SDK v2 default credential chain."""
    conf = storage_conf(["s3://fruits/out"], "3.4.1")
    assert conf["spark.jars.packages"] == "org.apache.hadoop:hadoop-aws:3.4.1"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == (
        "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
    )


def test_storage_conf_with_spark_hadoop_cloud_uses_the_magic_committer() -> None:
    """With spark-hadoop-cloud among the jars, Parquet to S3 goes through the S3A committer."""
    jars = ["/j/hadoop-aws-3.3.4.jar", "/j/spark-hadoop-cloud_2.12-3.5.8.jar"]
    conf = storage_conf(["s3://fruits/out"], "3.3.4", hadoop_aws_jars=jars)
    assert conf["spark.hadoop.fs.s3a.committer.name"] == "magic"
    assert conf["spark.sql.sources.commitProtocolClass"].endswith("PathOutputCommitProtocol")
    assert conf["spark.hadoop.mapreduce.outputcommitter.factory.scheme.s3"].endswith(
        "S3ACommitterFactory"
    )
    assert "spark.sql.sources.commitProtocolClass" not in storage_conf(
        ["s3://fruits/out"], "3.3.4", hadoop_aws_jars=jars[:1]
    )


def test_jars_fetched_once_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fetch downloads each jar from the repository once, checked against its .sha1."""
    import hashlib

    from helpers.spark import jars

    repo = tmp_path / "repo"
    for artifact in jars.s3a_artifacts("3.3.4", "3.5.8"):
        jar = Path(artifact.url(str(repo)))
        jar.parent.mkdir(parents=True)
        jar.write_bytes(artifact.name.encode())
        jar.with_name(jar.name + ".sha1").write_text(hashlib.sha1(jar.read_bytes()).hexdigest())
    monkeypatch.setenv(JARS_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(MAVEN_REPO_ENV, f"file://{repo}")
    assert jars.cached_jars("3.3.4", "3.5.8") == []
    fetched = jars.fetch("3.3.4", "3.5.8")
    assert [Path(p).name for p in fetched] == [
        "hadoop-aws-3.3.4.jar",
        "aws-java-sdk-bundle-1.12.262.jar",
        "spark-hadoop-cloud_2.12-3.5.8.jar",
    ]
    assert jars.cached_jars("3.3.4", "3.5.8") == fetched
    bad = Path(jars.s3a_artifacts("3.3.4", "3.5.9")[2].url(str(repo)))
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"corrupt")
    bad.with_name(bad.name + ".sha1").write_text("0" * 40)
    with pytest.raises(OSError, match="SHA-1.*hadoop_aws_jars"):
        jars.fetch("3.3.4", "3.5.9")
    assert not (tmp_path / "cache" / bad.name).exists()


@pytest.mark.parametrize("roots", [["data_sample", "outputs"], ["dbfs:/x", "/Volumes/a/b/c"]])
def test_storage_conf_empty_off_s3(roots: list[str]) -> None:
    """Local, dbfs:/ and /Volumes/ roots change nothing in the session."""
    assert storage_conf(roots, "3.3.4") == {}


def test_hadoop_version_from_jars(tmp_path: Path) -> None:
    """The version comes from the jar names; no such jar names the fix."""
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "hadoop-client-api-3.4.1.jar").touch()
    assert hadoop_version(str(tmp_path)) == "3.4.1"
    (tmp_path / "jars" / "hadoop-client-api-3.4.1.jar").unlink()
    with pytest.raises(RuntimeError, match="hadoop_aws_jars"):
        hadoop_version(str(tmp_path))


def test_endpoint_and_jars_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """s3_endpoint beats $AWS_ENDPOINT_URL_S3 beats $AWS_ENDPOINT_URL; jars must exist."""
    for name in (*S3_ENDPOINT_ENVS, HADOOP_AWS_JARS_ENV):
        monkeypatch.delenv(name, raising=False)
    assert resolve_s3_endpoint("") == ""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:9000/")
    assert resolve_s3_endpoint("") == "http://generic:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")
    assert resolve_s3_endpoint("") == "http://s3-only:9000"
    assert resolve_s3_endpoint("https://given") == "https://given"
    with pytest.raises(ValueError, match="s3_endpoint 'minio:9000' is not a URL"):
        resolve_s3_endpoint("minio:9000")

    jar = tmp_path / "hadoop-aws-3.3.4.jar"
    jar.touch()
    assert resolve_hadoop_aws_jars("") == []
    monkeypatch.setenv(HADOOP_AWS_JARS_ENV, str(jar))
    assert resolve_hadoop_aws_jars("") == [str(jar.resolve())]
    with pytest.raises(
        FileNotFoundError, match=rf"nope\.jar.*hadoop_aws_jars.*{HADOOP_AWS_JARS_ENV}"
    ):
        resolve_hadoop_aws_jars(f"{jar}, {tmp_path / 'nope.jar'}")


def test_hadoop_version_matches_the_jvm(spark) -> None:
    """The version read from jar names before the JVM starts is the JVM's own."""
    assert hadoop_version() == jvm_hadoop_version(spark)


def test_session_without_hadoop_aws_fails_fast_with_the_fix(spark, s3: S3) -> None:
    """A running local session without the connector: one error naming both fixes."""
    with pytest.raises(RuntimeError) as info:
        get_spark(data_root=f"s3://{BUCKET}/data_sample", output_root=f"s3a://{BUCKET}/out")
    message = str(info.value)
    version = hadoop_version()
    assert f"s3://{BUCKET}/data_sample" in message
    assert f"spark.jars.packages=org.apache.hadoop:hadoop-aws:{version}" in message
    assert "hadoop_aws_jars" in message and HADOOP_AWS_JARS_ENV in message
    assert not any(secret in message for secret in SECRETS)
    # the Hadoop settings did reach the running session: only the jar is missing
    assert hadoop_conf_get(spark, "fs.s3.impl") == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert hadoop_conf_get(spark, "fs.s3a.endpoint") == s3.endpoint
    assert hadoop_conf_get(spark, "fs.s3a.path.style.access") == "true"
    assert hadoop_conf_get(spark, "fs.s3a.access.key") is None  # keys stay in the environment


def test_missing_jar_fails_before_spark(s3: S3, tmp_path: Path) -> None:
    """A hadoop_aws_jars path that does not exist is named before any session is touched."""
    missing = str(tmp_path / "hadoop-aws-3.3.4.jar")
    with pytest.raises(FileNotFoundError, match="hadoop_aws_jars"):
        get_spark(data_root=f"s3://{BUCKET}/data_sample", hadoop_aws_jars=missing)
    assert HADOOP_AWS_JARS_ENV not in os.environ


@pytest.mark.slow
def test_new_session_without_maven_fails_fast_with_the_fix(s3: S3, tmp_path: Path) -> None:
    """A new local session whose hadoop-aws download fails: one error naming the fix.

    Ivy gets a repository with nothing in it, standing for a machine without Maven Central.
    """
    settings = tmp_path / "ivysettings.xml"
    settings.write_text(
        '<ivysettings><settings defaultResolver="empty"/><resolvers>'
        f'<filesystem name="empty"><artifact pattern="{tmp_path}/repo/[module]-[revision].jar"/>'
        "</filesystem></resolvers></ivysettings>"
    )
    script = (
        "from helpers.spark.session import get_spark\n"
        f"get_spark('fruits-s3-offline', 'local[1]', '512m', data_root='s3://{BUCKET}/data')\n"
    )
    env = {
        **os.environ,
        "PYSPARK_SUBMIT_ARGS": f"--conf spark.jars.ivySettings={settings} "
        f"--conf spark.jars.ivy={tmp_path / 'ivy'} pyspark-shell",
        JARS_CACHE_ENV: str(tmp_path / "no-jars"),  # not the jars `make jars` fetched
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode != 0
    version = hadoop_version()
    assert f"RuntimeError: Spark could not start with org.apache.hadoop:hadoop-aws:{version}" in (
        result.stderr
    )
    assert "hadoop_aws_jars" in result.stderr and "Maven Central" in result.stderr
    assert not any(secret in result.stdout + result.stderr for secret in SECRETS)


# --- everything that is not Spark: through the bucket for real --------------------------


def test_images_in_the_bucket_read_as_on_disk(s3: S3) -> None:
    """data_sample/ uploaded to the bucket reads back byte for byte, via s3:// and s3a://."""
    image = sorted(DATA_SAMPLE.rglob("*.jpg"))[0]
    key = f"data_sample/{image.relative_to(DATA_SAMPLE).as_posix()}"
    assert key in s3.keys("data_sample/")
    assert read_bytes(f"s3://{BUCKET}/{key}") == image.read_bytes()
    assert read_bytes(f"s3a://{BUCKET}/{key}") == image.read_bytes()
    assert exists(f"s3a://{BUCKET}/data_sample") and not exists(f"s3://{BUCKET}/nothing-here")


def test_manifest_on_s3(s3: S3) -> None:
    """update_manifest/read_manifest with an s3:// root: one object, sections merged."""
    root = f"s3://{BUCKET}/runs/manifest"
    assert read_manifest(root) == {}
    update_manifest(root, "eda", {"images": 3})
    update_manifest(f"s3a://{BUCKET}/runs/manifest/", "features", {"rows": 3})
    stored = json.loads(s3.body("runs/manifest/manifest.json"))
    assert stored["eda"]["images"] == 3 and stored["features"]["rows"] == 3
    assert read_manifest(root) == stored


def test_save_figure_on_s3(s3: S3) -> None:
    """save_figure writes a PNG under <output_root>/figures/ in the bucket."""
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    uri = save_figure(fig, f"s3a://{BUCKET}/runs/figs", "line")
    plt.close(fig)
    assert uri.endswith("runs/figs/figures/line.png")
    assert s3.body("runs/figs/figures/line.png").startswith(b"\x89PNG")


def test_spark_parquet_read_back_from_s3_for_plots(spark, s3: S3, tmp_path: Path) -> None:
    """A Parquet folder as Spark writes it, in the bucket, reads back with pandas via s3fs."""
    import fsspec

    local = tmp_path / "features"
    spark.range(5).selectExpr(
        "concat('s3://fruits/Training/Apple/', id, '.jpg') AS path",
        "'Training' AS split",
        "'Apple' AS label",
        "array(CAST(id AS FLOAT), 0.5f) AS features",
        "CAST(NULL AS STRING) AS error",
    ).coalesce(2).write.parquet(f"file://{local}")
    fs = fsspec.filesystem("s3")
    fs.put(str(local), f"{BUCKET}/runs/parquet/features", recursive=True)
    assert any(key.endswith("_SUCCESS") for key in s3.keys("runs/parquet/features/"))

    frame = pd.read_parquet(io_uri(f"s3a://{BUCKET}/runs/parquet/features"))
    assert sorted(frame["path"]) == [f"s3://fruits/Training/Apple/{i}.jpg" for i in range(5)]
    assert frame["error"].isna().all() and len(frame["features"].iloc[0]) == 2


# --- one clear error for a wrong bucket or missing credentials --------------------------


def test_wrong_bucket_is_named_and_never_created(s3: S3, caplog: pytest.LogCaptureFixture) -> None:
    """Writing, checking or running against a missing bucket names it; nothing is created."""
    wrong = "fruits-typo"
    for action in (
        lambda: write_bytes(f"s3://{wrong}/out/manifest.json", b"{}"),
        lambda: update_manifest(f"s3a://{wrong}/out", "eda", {"images": 1}),
        lambda: check_access(f"s3://{wrong}/images"),
    ):
        with pytest.raises(FileNotFoundError, match=f"S3 bucket '{wrong}' does not exist"):
            action()
    assert wrong not in [b["Name"] for b in s3.client.list_buckets()["Buckets"]]

    caplog.set_level(logging.INFO)
    code = main(["--data-root", f"s3://{BUCKET}/data_sample", "--output-root", f"s3://{wrong}/o"])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"'{wrong}' does not exist" in errors[0]


def test_missing_credentials_are_named(s3: S3, no_credentials: None) -> None:
    """Without credentials every S3 access says so, naming the bucket and where keys go."""
    for action in (
        lambda: write_bytes(f"s3://{BUCKET}/runs/nocreds.json", b"{}"),
        lambda: read_manifest(f"s3://{BUCKET}/runs/manifest"),
        lambda: check_access(f"s3a://{BUCKET}/data_sample"),
    ):
        with pytest.raises(PermissionError, match=f"no AWS credentials for bucket '{BUCKET}'"):
            action()
    with pytest.raises(PermissionError, match="AWS_PROFILE"):
        run_notebooks({"data_root": f"s3://{BUCKET}/data_sample", "weights": "random"})


# --- papermill to s3://, and no credentials anywhere -----------------------------------


def _probe_notebook(folder: Path) -> str:
    """A two-cell notebook: a parameters cell and one cell writing the manifest on S3."""
    notebook = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'data_root: str = "data_sample"  # images\noutput_root: str = "outputs"  # results'
    )
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "from helpers.manifest import update_manifest\n"
        "from helpers.paths import exists\n"
        "images = exists(data_root + '/Training')\n"
        "update_manifest(output_root, 'probe', {'data_root': data_root, 'images': images})\n"
        "print('probe done', images)"
    )
    notebook.cells = [params, body]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.write(notebook, folder / "probe.ipynb")
    return "probe.ipynb"


@pytest.mark.slow
def test_papermill_writes_to_s3_and_no_credentials_leak(
    s3: S3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """run_notebooks with s3a:// roots and s3_endpoint as a parameter (not in the env).

    The executed notebook lands in the bucket, the kernel reaches the same store with the
    same login, and no object in the bucket, log record or console line holds a key.
    """
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    _forget_clients()
    name = _probe_notebook(tmp_path)
    executed = run_notebooks(
        {
            "data_root": f"s3a://{BUCKET}/data_sample",
            "output_root": f"s3a://{BUCKET}/runs/papermill",
            "s3_endpoint": s3.endpoint,
            "weights": "random",
        },
        notebooks=(name,),
        notebook_dir=tmp_path,
    )
    assert executed == [f"s3://{BUCKET}/runs/papermill/notebooks/{name}"]
    assert "AWS_ENDPOINT_URL_S3" not in os.environ  # the run's setting did not leak out

    notebook = nbformat.reads(s3.body(f"runs/papermill/notebooks/{name}").decode(), 4)
    assert notebook.metadata["papermill"]["exception"] in (None, False)
    assert "probe done True" in "".join(
        out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
    )
    manifest = json.loads(s3.body("runs/papermill/manifest.json"))
    assert manifest["probe"] == {
        "data_root": f"s3a://{BUCKET}/data_sample",
        "images": True,
        "finished": manifest["probe"]["finished"],
    }

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    _forget_clients()
    written = {key: s3.body(key) for key in s3.keys() if not key.startswith("data_sample/")}
    assert {"runs/papermill/manifest.json", f"runs/papermill/notebooks/{name}"} <= set(written)
    console = capsys.readouterr()
    for secret in SECRETS:
        for key, body in written.items():
            assert secret.encode() not in body, key
        assert secret not in caplog.text
        assert secret not in console.out + console.err
    assert not any(secret in (PROJECT_ROOT / "docs" / "s3.md").read_text() for secret in SECRETS)


def test_weights_from_s3_downloaded_once(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """weights (or $FRUITS_WEIGHTS) as an s3:// URI: one local copy, fetched again if changed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s3.client.put_object(Bucket=BUCKET, Key="models/w.h5", Body=b"weights v1")
    uri = f"s3://{BUCKET}/models/w.h5"
    local = Path(resolve_weights(uri))
    assert local.read_bytes() == b"weights v1" and local.is_relative_to(tmp_path / "cache")
    stamp = local.stat().st_mtime_ns
    monkeypatch.setenv(WEIGHTS_ENV, uri)
    assert Path(resolve_weights("imagenet")) == local
    assert local.stat().st_mtime_ns == stamp  # not fetched again
    s3.client.put_object(Bucket=BUCKET, Key="models/w.h5", Body=b"weights v2, longer")
    assert Path(resolve_weights(uri)).read_bytes() == b"weights v2, longer"
    cached = tmp_path / "cache" / "fruits" / "weights"
    assert sorted(p.name for p in cached.iterdir()) == [local.name, local.name + ".sha256.json"]


def test_missing_weights_object_is_named(s3: S3) -> None:
    """A weights URI with no object behind it fails naming it and the ways to fix it."""
    with pytest.raises(
        FileNotFoundError, match=r"weights file 's3://.*/models/none\.h5' not found"
    ):
        resolve_weights(f"s3://{BUCKET}/models/none.h5")


# --- Spark itself on S3: S3A against the moto server ------------------------------------

S3A_JARS = cached_jars(hadoop_version(), pyspark.__version__)
needs_s3a = pytest.mark.skipif(
    not S3A_JARS, reason="S3A jars not cached: run `make jars` (needs Maven Central once)"
)
SMALL = ("Banana", "Kiwi")  # 2 classes x 2 splits of data_sample: the heavy tests stay short
SMALL_PARAMS = {"image_size": 96, "tsne_sample": 40, "tsne_perplexity": 5.0, "grid_classes": 2}


@pytest.fixture(scope="module")
def small_root(s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local copy of 2 classes of data_sample, also uploaded to s3://fruits-test/small/."""
    local = tmp_path_factory.mktemp("small")
    for split in ("Training", "Test"):
        for label in SMALL:
            shutil.copytree(DATA_SAMPLE / split / label, local / split / label)
    for path in sorted(local.rglob("*.jpg")):
        s3.client.upload_file(str(path), BUCKET, f"small/{path.relative_to(local).as_posix()}")
    return local


def _by_relative_path(frame: pd.DataFrame, root: str) -> pd.DataFrame:
    """Rows indexed by their path below ``root`` (an S3 prefix or a local folder)."""
    relative = frame["path"].str.split(root.rstrip("/") + "/", n=1, regex=False).str[1]
    return frame.assign(path=relative).set_index("path").sort_index()


@pytest.mark.slow
@needs_s3a
def test_notebooks_on_s3_through_s3a_match_local_run(
    spark, s3: S3, small_root: Path, weights: str, tmp_path: Path
) -> None:
    """The three notebooks read s3:// and write s3a:// through Spark's S3A (magic committer):
    same features and PCA as the same images featurized locally; a re-run after 3 new images
    in the bucket featurizes those 3 only."""
    out = f"s3a://{BUCKET}/runs/e2e"
    params = {**SMALL_PARAMS, "weights": weights, "output_root": out}
    run_notebooks({**params, "data_root": f"s3://{BUCKET}/small"})
    keys = s3.keys("runs/e2e/")
    manifest = json.loads(s3.body("runs/e2e/manifest.json"))
    run_id = manifest["features"]["run_id"]
    assert f"runs/e2e/features/_commits/run={run_id}.json" in keys
    success = json.loads(s3.body(f"runs/e2e/features/run={run_id}/_SUCCESS"))
    assert success["committer"] == "magic"  # S3A's committer wrote the Parquet, no rename
    # metadata/part-00000 (Spark 3.5) or part-00000-<uuid>-c000.txt (Spark 4)
    assert any(k.startswith("runs/e2e/pca_model/v=") and "/metadata/part-00000" in k for k in keys)
    # notebook 04, through S3A
    assert any(
        k.startswith("runs/e2e/pipeline_model/v=") and "/metadata/part-00000" in k for k in keys
    )
    assert {f"runs/e2e/figures/{f}.png" for f in ("class_balance", "pca_variance", "tsne")} <= set(
        keys
    )

    local_out = tmp_path / "local"
    spec = FeatureSpec(weights=weights, image_size=96, batch_size=64)
    extract_features(spark, str(small_root), str(local_out), spec)
    local_features = read_features(spark, str(local_out))
    expected = _by_relative_path(local_features.toPandas(), f"file:{small_root}")
    remote = _by_relative_path(pd.read_parquet(io_uri(f"{out}/features")), f"s3://{BUCKET}/small")
    assert list(remote.index) == list(expected.index) and len(expected) == manifest["eda"]["images"]
    np.testing.assert_allclose(
        np.stack(remote["features"]), np.stack(expected["features"]), rtol=1e-4, atol=1e-5
    )
    reduction = fit_reduction(local_features, variance=0.95)
    assert manifest["pca"]["k"] == reduction.k
    local_pca = _by_relative_path(
        reduce_features(reduction, local_features).toPandas(), f"file:{small_root}"
    )
    remote_pca = _by_relative_path(pd.read_parquet(io_uri(f"{out}/pca")), f"s3://{BUCKET}/small")
    first = slice(0, 3)  # the leading axes are well separated; the tail may rotate
    np.testing.assert_allclose(
        np.stack(remote_pca["pca"])[:, first], np.stack(local_pca["pca"])[:, first], atol=2e-3
    )

    for i, image in enumerate(sorted((DATA_SAMPLE / "Training" / "Lemon").glob("*.jpg"))[:3]):
        s3.client.upload_file(str(image), BUCKET, f"small/Training/Kiwi/new_{i}.jpg")
    run_notebooks(
        {**params, "data_root": f"s3://{BUCKET}/small"}, notebooks=("02_feature_extraction.ipynb",)
    )
    again = json.loads(s3.body("runs/e2e/manifest.json"))["features"]
    assert (again["featurized"], again["rows"]) == (3, len(expected) + 3)
    for key in s3.keys("runs/e2e/"):  # notebooks, manifest, Parquet, committer reports
        assert not any(secret.encode() in s3.body(key) for secret in SECRETS), key


# A writer killed (SIGKILL) at a step of publishing: before its commit record
# (written-not-committed), right after it (committed), or, on local disk, between writing the
# record's temporary file and renaming it (record-written-not-renamed).
KILL_STEP = """
import json, os, signal, sys
from helpers.features import store
from helpers.features.store import read_features, write_features
from helpers.spark.session import get_spark
root, run, fault = sys.argv[1], sys.argv[2], sys.argv[3]
SETTINGS = {"model_name": "mobilenet_v2", "weights_sha256": "0" * 64, "image_size": 224}
kill = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
write_whole, fs_move = store.write_whole, store.fs_move
if fault == "written-not-committed":
    store.write_whole = kill
elif fault == "committed":
    store.write_whole = lambda *args: (write_whole(*args), kill())
elif fault == "record-written-not-renamed":
    def moving(spark, source, target):
        return kill() if source.endswith(".tmp") else fs_move(spark, source, target)
    store.fs_move = moving
spark = get_spark("kill-step", master="local[1]", driver_memory="1g", output_root=root)
try:
    seen = sorted(r.path + "@" + r.run for r in read_features(spark, root).collect())
except FileNotFoundError:
    seen = []
print("SEEN " + json.dumps(seen), flush=True)
rows = spark.range(4).selectExpr(
    f"concat('{run}-', id) AS path", "CAST(id AS LONG) AS size", "CAST(id AS LONG) AS modified"
)
if run.startswith("all"):  # every path again, as overwrite=True does
    rows = rows.union(spark.range(4).selectExpr(
        "concat('a-', id) AS path", "CAST(id AS LONG) AS size", "CAST(id AS LONG) AS modified"
    ))
write_features(spark, rows.repartition(2), root, SETTINGS, overwrite=run.startswith("all"))
print("DONE", flush=True)
"""


def _kill_step(root: str, run: str, fault: str, log: Path) -> tuple[int, list[str]]:
    """One writer process: read what is visible, then write run ``run`` with ``fault``."""
    returncode = run_script(KILL_STEP, root, run, fault, log=log)
    text = log.read_text()
    seen = [line for line in text.splitlines() if line.startswith("SEEN ")]
    assert seen, text[-3000:]
    return returncode, sorted({p.split("@")[0].split("-")[0] for p in json.loads(seen[0][5:])})


def _kill_chain(root: str, tmp_path: Path) -> None:
    """Kill the writer at every step of publishing; each next writer sees old or new state.

    Runs are named by their paths' prefix: ``a`` (4 paths), ``b`` killed before its commit
    record, ``all`` an overwrite run killed right after its record, then ``d`` completes.
    """
    steps = [
        ("a", "", 0, []),
        ("b", "written-not-committed", -9, ["a"]),
        ("all", "committed", -9, ["a"]),
        ("d", "", 0, ["a", "all"]),
    ]
    for run, fault, code, visible in steps:
        returncode, seen = _kill_step(root, run, fault, tmp_path / f"{run}.log")
        assert seen == visible, (run, seen)
        assert returncode == code, (tmp_path / f"{run}.log").read_text()[-3000:]


@pytest.mark.slow
@needs_s3a
def test_publish_killed_at_every_step_on_s3(s3: S3, tmp_path: Path) -> None:
    """On S3 (moto) a writer SIGKILLed before or after its commit record: readers see the
    previous runs or the whole new one, and the next run completes and clears the debris."""
    root = f"s3a://{BUCKET}/runs/kills"
    _kill_chain(root, tmp_path)
    keys = s3.keys("runs/kills/features/")
    records = sorted(k for k in keys if "/_commits/run=" in k)
    folders = sorted({k.split("/")[3] for k in keys if k.split("/")[3].startswith("run=")})
    assert len(records) == 2 and [f"runs/kills/features/_commits/{f}.json" for f in folders] == (
        records
    )


@pytest.mark.slow
def test_publish_killed_at_every_step_locally(spark, tmp_path: Path) -> None:
    """On local disk the record is a temp file renamed into place: a writer killed between
    the two leaves the previous run visible; the next run completes and clears the debris.
    (The other steps run the same code as on S3, tested above.)"""
    root = str(tmp_path / "out")
    rows = "concat('{0}-', id) AS path", "id AS size", "id AS modified"
    write_features(spark, spark.range(4).selectExpr(*[r.format("a") for r in rows]), root, SETTINGS)
    returncode, seen = _kill_step(root, "c", "record-written-not-renamed", tmp_path / "c.log")
    assert (returncode, seen) == (-9, ["a"]), (tmp_path / "c.log").read_text()[-3000:]
    features = tmp_path / "out" / "features"
    assert len(list((features / "_commits").glob(".*.tmp"))) == 1  # it died right there
    assert sorted({r.path[0] for r in read_features(spark, root).collect()}) == ["a"]
    write_features(spark, spark.range(4).selectExpr(*[r.format("d") for r in rows]), root, SETTINGS)
    assert sorted({r.path[0] for r in read_features(spark, root).collect()}) == ["a", "d"]
    records = sorted(p.stem for p in (features / "_commits").glob("run=*.json"))
    assert sorted(p.name for p in features.glob("run=*")) == records and len(records) == 2
    assert not list((features / "_commits").glob(".*.tmp"))  # the killed temp record is gone


def test_writer_lease_on_s3_is_a_conditional_put(s3: S3) -> None:
    """On S3 the lease is created with ``If-None-Match: *`` (moto checks it like S3): held,
    it names its holder; a second writer is refused naming it; released, it is gone."""
    from botocore.exceptions import ClientError

    from helpers.lease import LeaseHeld, writer_lease

    _forget_clients()
    key = "runs/lease/_lease.json"
    with writer_lease(f"s3a://{BUCKET}/runs/lease", "first"):
        holder = json.loads(s3.body(key))
        assert holder["purpose"] == "first" and holder["pid"] == os.getpid()
        with pytest.raises(ClientError, match="PreconditionFailed"):
            s3.client.put_object(Bucket=BUCKET, Key=key, Body=b"x", IfNoneMatch="*")
    assert s3.keys("runs/lease/") == []
    other = {**holder, "host": "elsewhere", "token": "other", "renewed": time.time()}
    s3.client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(other).encode())
    with pytest.raises(LeaseHeld, match="first by pid .* on elsewhere"):
        with writer_lease(f"s3://{BUCKET}/runs/lease", "second"):
            pass
    assert json.loads(s3.body(key))["token"] == "other"  # another's lease: kept


@pytest.mark.slow
@needs_s3a
def test_pca_publish_killed_at_every_step_on_s3(s3: S3, tmp_path: Path) -> None:
    """``pca_model/`` + ``pca/`` on S3 (moto): a writer killed before any pointer, between
    the two, or after both leaves a whole pair readable; the last publish leaves one version."""
    publish_kill_chain(f"s3a://{BUCKET}/runs/publish", tmp_path)
    keys = s3.keys("runs/publish/pca/")
    versions = {k.split("/")[3] for k in keys if k.split("/")[3].startswith("v=")}
    assert len(versions) == 1 and "runs/publish/pca/_current.json" in keys
