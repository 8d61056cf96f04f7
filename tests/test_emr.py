"""EMR deployment as code, against a real AWS API emulator (moto's server on 127.0.0.1).

The bucket's settings are read back with the S3 API, the uploads listed, and the cluster
described with the EMR API (applications, bootstrap action, configurations, instance groups,
step), then terminated. The request builders are also checked against botocore's model of
the real API, for what moto does not keep (AutoTerminationPolicy). Fake credentials only.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.validate import validate_parameters
from conftest import DATA_SAMPLE, moto_server

from helpers import emr
from helpers.emr import (
    APPLICATIONS,
    VENV_PYTHON,
    WHEEL_NAME,
    Artifacts,
    EmrSettings,
    build_source_archive,
    cluster_status,
    configurations,
    ensure_bucket,
    job_flow_request,
    lifecycle_rules,
    main,
    pipeline_step,
    terminate,
    upload,
)
from helpers.paths import PROJECT_ROOT

# EMR as code (boto3 against moto), no Spark: make test runs it, make test-spark4 does not
pytestmark = pytest.mark.spark_neutral

REGION = "eu-west-3"
ACCESS_KEY = "AKIAFRUITSEMRTEST4Q2Z"
SECRET_KEY = "fruitsEmrTestSecret/NeverLog+2xQ"


@dataclass(frozen=True)
class Aws:
    """The running emulator: its endpoint and S3/EMR clients on it."""

    endpoint: str
    s3: Any
    emr: Any

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key of ``bucket`` under ``prefix``."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def body(self, bucket: str, key: str) -> bytes:
        """The bytes of one object."""
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()


#: Condition keys a TLS 1.2+ request (boto3 against AWS) never matches in our Deny statements.
_TRANSPORT_KEYS = {"aws:SecureTransport", "s3:TlsVersion"}


def _permission_over_tls(bucket: Any, action: str, resource: str) -> Any:
    """moto's bucket-policy check, for a request made over TLS 1.2+ as boto3 makes to AWS.

    moto evaluates only StringEquals conditions and takes any other condition (Bool,
    NumericLessThan) as met, so the TLS-only Deny statements would refuse every object
    request whatever the transport. Here statements conditioned only on the transport are
    left out, as S3 does for an HTTPS request; every other statement is moto's to judge.
    """
    from moto.iam.access_control import IAMPolicy, PermissionResult

    if bucket.policy is None:
        return PermissionResult.NEUTRAL
    policy = json.loads(bucket.policy)
    policy["Statement"] = [
        statement
        for statement in policy["Statement"]
        if not statement.get("Condition")
        or not {key for cond in statement["Condition"].values() for key in cond} <= _TRANSPORT_KEYS
    ]
    return IAMPolicy(json.dumps(policy)).is_action_permitted(action, resource)


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aws]:
    """moto's server (S3 and EMR over HTTP on 127.0.0.1), fake keys, region eu-west-3.

    Its bucket-policy check is given the transport of a TLS request (see
    :func:`_permission_over_tls`); everything else is moto's own.
    """
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")
    with moto_server() as endpoint, pytest.MonkeyPatch.context() as env:
        from moto.s3.models import FakeBucket

        env.setattr(FakeBucket, "get_permission", _permission_over_tls)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        env.setenv("AWS_DEFAULT_REGION", REGION)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
        env.setenv("AWS_CONFIG_FILE", nowhere)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s3, emr_client = emr.clients(REGION, endpoint)
        yield Aws(endpoint, s3, emr_client)


@pytest.fixture
def fake_wheel(tmp_path: Path) -> Path:
    """A stand-in for the built wheel (uploaded, never installed here)."""
    wheel = tmp_path / WHEEL_NAME
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    return wheel


@pytest.fixture
def fake_weights(tmp_path: Path) -> Path:
    """A stand-in .h5 weights file."""
    weights = tmp_path / "mobilenet_v2_no_top.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 32)
    return weights


def _settings(bucket: str, **overrides: Any) -> EmrSettings:
    return EmrSettings(bucket=bucket, region=REGION, **overrides)


# --- settings that fail before any call ----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"region": "us-east-1"}, "outside the EU"),
        ({"bucket": "Fruits_Bucket"}, "not a valid S3 bucket name"),
        ({"release": "emr-6.15.0"}, "not an EMR 7.x release label"),
        ({"python": "3.8"}, "python '3.8' is not supported"),
        ({"idle_minutes": 0}, "idle_minutes"),
        ({"prefix": "/fruits/"}, "prefix '/fruits/'"),
        ({"data_root": "data_sample"}, "must be an s3:// URI"),
        ({"weights": "model.bin"}, "not a Keras weights file"),
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    """Each wrong setting raises one message naming it and the fix."""
    values = {"bucket": "fruits-eu", **overrides}
    with pytest.raises(ValueError, match=message):
        EmrSettings(**values)


def test_non_eu_region_needs_an_explicit_override() -> None:
    """Outside the EU only with allow_non_eu_region (a documented, deliberate choice)."""
    assert EmrSettings(bucket="fruits-us", region="us-east-1", allow_non_eu_region=True)


# --- credentials: refused before any plan, never shown -----------------------------------

USER_KEY = "AKIAUSERKEYINAURI7Q3X"
USER_SECRET = "userSecret/InAUri+9zK"
USER_PARTS = (USER_KEY, *USER_SECRET.split("/"))


@pytest.mark.parametrize("name", ["data_root", "output_root", "weights"])
@pytest.mark.parametrize(
    "uri",
    [
        f"S3://{USER_KEY}:{USER_SECRET}@fruits-eu/x/w.h5",
        f"s3://{USER_KEY}:{USER_SECRET}@fruits-eu/x/w.h5",
        f"s3a://{USER_KEY}@fruits-eu/x/w.h5",
        f"https://{USER_KEY}:{USER_SECRET}@host/x/w.h5",
    ],
)
def test_credentials_in_settings_are_refused_unshown(name: str, uri: str) -> None:
    """A root or weights URI with userinfo, any scheme or case: refused naming the setting."""
    with pytest.raises(ValueError, match=f"{name} '.*\\*\\*\\*.*' holds credentials") as raised:
        EmrSettings(bucket="fruits-eu", **{name: uri})
    assert not any(part in str(raised.value) for part in USER_PARTS)


def test_upper_case_s3_is_s3() -> None:
    """S3://b/x roots and weights are s3:// everywhere: plan, bootstrap arguments, step."""
    settings = EmrSettings(
        bucket="fruits-eu",
        data_root="S3://fruits-data/images/",
        output_root="S3://fruits-out/run",
        weights="S3://fruits-models/w.h5",
    )
    assert settings.data_uri == "s3://fruits-data/images"
    assert settings.output_uri == "s3://fruits-out/run"
    args = emr.bootstrap_action(settings)["ScriptBootstrapAction"]["Args"]
    assert args[args.index("--weights") + 1] == "s3://fruits-models/w.h5"
    assert emr.expected_artifacts(settings).weights is None  # not a local file to upload
    script = emr.step_script(settings)
    assert "'s3://fruits-data/images'" in script or " s3://fruits-data/images " in script
    with pytest.raises(ValueError, match="local file .* or an s3:// URI"):
        EmrSettings(bucket="fruits-eu", weights="gs://fruits-models/w.h5")


def test_credentials_anywhere_in_a_request_are_refused() -> None:
    """A URI with userinfo in a parameter, a tag or any other field: no plan, no request."""
    settings = _settings("fruits-eu")
    for params in (
        {"weights": f"s3://{USER_KEY}:{USER_SECRET}@b/w.h5"},
        {"s3_endpoint": f"{USER_KEY}:{USER_SECRET}@minio:9000"},
        {"s3_endpoint": f"HTTP://{USER_KEY}@minio:9000"},
    ):
        with pytest.raises(ValueError, match="holds credentials") as raised:
            pipeline_step(settings, params)
        assert not any(part in str(raised.value) for part in USER_PARTS)
    tagged = _settings("fruits-eu", tags={"source": f"gs://{USER_KEY}:{USER_SECRET}@b/x"})
    with pytest.raises(ValueError, match=r"run_job_flow\.Tags.* holds credentials") as raised:
        job_flow_request(tagged)
    assert not any(part in str(raised.value) for part in USER_PARTS)


@pytest.mark.parametrize(
    "args",
    [
        ["deploy", "--weights", f"S3://{USER_KEY}:{USER_SECRET}@fruits-eu/w.h5"],
        ["deploy", "--data-root", f"s3://{USER_KEY}:{USER_SECRET}@fruits-eu/x"],
        ["deploy", "--output-root", f"S3A://{USER_KEY}@fruits-eu/x", "--run"],
        ["deploy", "--run", "-p", "weights", f"s3n://{USER_KEY}:{USER_SECRET}@b/w.h5"],
        ["deploy", "--tag", f"from=s3://{USER_KEY}:{USER_SECRET}@b/x"],
        ["run", "--cluster-id", "j-1", "-p", "s3_endpoint", f"{USER_KEY}:{USER_SECRET}@h:9"],
        ["bucket", "--endpoint-url", f"http://{USER_KEY}:{USER_SECRET}@127.0.0.1:9"],
    ],
)
def test_dry_run_refuses_credentials_unshown(args: list[str]) -> None:
    """python -m helpers.emr ... --dry-run with a key in a URI: exit 2, no plan printed, and
    neither part of the key anywhere in the output."""
    result = subprocess.run(
        [sys.executable, "-m", "helpers.emr", *args, "--bucket", "fruits-eu", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "holds credentials" in result.stderr and "***" in result.stderr
    assert result.stdout == ""
    assert not any(part in result.stdout + result.stderr for part in USER_PARTS)


# --- the bucket, read back through the S3 API ---------------------------------------------


def test_bucket_has_the_settings_the_code_claims(aws: Aws) -> None:
    """Location, default encryption, public access block, TLS-only policy, lifecycle."""
    settings = _settings("fruits-eu-bucket", tmp_days=3, log_days=14)
    ensure_bucket(aws.s3, settings)
    bucket = settings.bucket

    assert aws.s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == REGION
    rules = aws.s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert rules["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = aws.s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    ownership = aws.s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]
    assert ownership["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]

    policy = json.loads(aws.s3.get_bucket_policy(Bucket=bucket)["Policy"])
    tls = next(s for s in policy["Statement"] if s["Sid"] == "DenyInsecureTransport")
    assert tls["Effect"] == "Deny" and tls["Principal"] == "*" and tls["Action"] == "s3:*"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(tls["Resource"]) == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}

    lifecycle = aws.s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    by_prefix = {r["Filter"]["Prefix"]: r for r in lifecycle}
    assert by_prefix["fruits/tmp/"]["Expiration"]["Days"] == 3
    assert by_prefix["fruits/logs/"]["Expiration"]["Days"] == 14
    assert by_prefix["fruits/spark-history/"]["Expiration"]["Days"] == 14
    assert by_prefix[""]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert all(r["Status"] == "Enabled" for r in lifecycle)
    # images, features and models are never expired
    assert not any(p.startswith(("fruits/data", "fruits/models")) for p in by_prefix)
    assert "fruits/out/" not in by_prefix


def test_kms_encryption_when_a_key_is_given(aws: Aws) -> None:
    """With kms_key_id the default encryption is SSE-KMS with that key and a bucket key."""
    key = "arn:aws:kms:eu-west-3:123456789012:key/0b1c2d3e-aaaa-bbbb-cccc-0123456789ab"
    settings = _settings("fruits-eu-kms", kms_key_id=key)
    ensure_bucket(aws.s3, settings)
    rule = aws.s3.get_bucket_encryption(Bucket=settings.bucket)[
        "ServerSideEncryptionConfiguration"
    ]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": key,
    }
    assert rule["BucketKeyEnabled"] is True


def test_ensure_bucket_is_idempotent_and_keeps_other_rules(aws: Aws) -> None:
    """Re-applying changes nothing; another team's policy statement and rule survive."""
    bucket = "fruits-eu-shared"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    theirs = {
        "Sid": "TheirReadOnly",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:role/reader"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/shared/*",
    }
    aws.s3.put_bucket_policy(
        Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [theirs]})
    )
    their_rule = {
        "ID": "their-archive",
        "Filter": {"Prefix": "archive/"},
        "Status": "Enabled",
        "Expiration": {"Days": 365},
    }
    aws.s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [their_rule]}
    )
    settings = _settings(bucket)
    ensure_bucket(aws.s3, settings)
    first = (
        aws.s3.get_bucket_policy(Bucket=bucket)["Policy"],
        aws.s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"],
    )
    ensure_bucket(aws.s3, settings)
    second = (
        aws.s3.get_bucket_policy(Bucket=bucket)["Policy"],
        aws.s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"],
    )
    assert json.loads(first[0]) == json.loads(second[0]) and first[1] == second[1]
    sids = [s["Sid"] for s in json.loads(second[0])["Statement"]]
    assert sids.count("TheirReadOnly") == 1 and sids.count("DenyInsecureTransport") == 1
    ids = [r["ID"] for r in second[1]]
    assert ids.count("their-archive") == 1
    assert len(ids) == len(set(ids)) == 1 + len(lifecycle_rules(settings))


def test_bucket_in_another_region_is_refused(aws: Aws) -> None:
    """An existing bucket outside the requested region stops the deployment, named."""
    frankfurt, _ = emr.clients("eu-central-1", aws.endpoint)
    frankfurt.create_bucket(
        Bucket="fruits-frankfurt", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    with pytest.raises(ValueError, match="is in eu-central-1, not eu-west-3"):
        ensure_bucket(aws.s3, _settings("fruits-frankfurt"))


# --- deploy, through the command line -----------------------------------------------------


def test_deploy_uploads_and_starts_the_cluster_then_terminates(
    aws: Aws,
    fake_wheel: Path,
    fake_weights: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`deploy --run`: bucket, code, data, weights uploaded; cluster as requested; step;
    status; terminate. No key appears in anything printed or logged."""
    caplog.set_level(logging.INFO)
    bucket = "fruits-eu-deploy"
    code = main(
        [
            "deploy",
            "--bucket",
            bucket,
            "--endpoint-url",
            aws.endpoint,
            "--data",
            str(DATA_SAMPLE),
            "--wheel",
            str(fake_wheel),
            "--weights",
            str(fake_weights),
            "--release",
            "emr-7.5.0",
            "--idle-minutes",
            "45",
            "--run",
            "-p",
            "tsne_perplexity",
            "12",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    cluster_id = printed["cluster"]
    assert printed["output_root"] == f"s3://{bucket}/fruits/out"

    # uploads: the script and pins byte for byte, the wheel, sources, weights, every image
    keys = set(aws.keys(bucket))
    script = aws.body(bucket, "fruits/code/bootstrap-emr.sh")
    assert script == (PROJECT_ROOT / "bootstrap-emr.sh").read_bytes()
    pins = aws.body(bucket, "fruits/code/requirements-py39.txt")
    assert pins == (PROJECT_ROOT / "emr/requirements-py39.txt").read_bytes()
    assert {f"fruits/code/{WHEEL_NAME}", "fruits/models/mobilenet_v2_no_top.h5"} <= keys
    with tarfile.open(fileobj=io.BytesIO(aws.body(bucket, "fruits/code/fruits-src.tar.gz"))) as tar:
        members = set(tar.getnames())
    assert {"fruits/notebooks/02_feature_extraction.ipynb", "fruits/helpers/run.py"} <= members
    images = sorted(p.relative_to(DATA_SAMPLE).as_posix() for p in DATA_SAMPLE.rglob("*.jpg"))
    assert images and {f"fruits/data/{name}" for name in images} <= keys

    # the cluster, as the EMR API describes it
    cluster = aws.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.5.0"
    assert {a["Name"] for a in cluster["Applications"]} == set(APPLICATIONS)
    assert cluster["LogUri"] == f"s3://{bucket}/fruits/logs/"
    classifications = {c["Classification"]: c for c in cluster["Configurations"]}
    spark = classifications["spark-defaults"]["Properties"]
    assert spark["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert spark["spark.eventLog.dir"] == f"s3://{bucket}/fruits/spark-history/"
    assert spark["spark.history.fs.logDirectory"] == f"s3://{bucket}/fruits/spark-history/"
    assert spark["spark.executor.memoryOverhead"] == "2g"
    assert spark["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == VENV_PYTHON
    weights_path = "/opt/fruits/weights/mobilenet_v2_no_top.h5"
    assert spark["spark.yarn.appMasterEnv.FRUITS_WEIGHTS"] == weights_path
    for env in ("spark-env", "livy-env"):
        exported = classifications[env]["Configurations"][0]
        assert exported["Classification"] == "export"
        assert exported["Properties"]["PYSPARK_PYTHON"] == VENV_PYTHON
        assert exported["Properties"]["FRUITS_WEIGHTS"] == weights_path
    assert classifications["livy-conf"]["Properties"]["livy.server.session.timeout"] == "45m"
    assert {"Key": "personal-data", "Value": "none"} in cluster["Tags"]

    actions = aws.emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert len(actions) == 1
    assert actions[0]["ScriptPath"] == f"s3://{bucket}/fruits/code/bootstrap-emr.sh"
    args = actions[0]["Args"]
    assert args[args.index("--wheel") + 1] == f"s3://{bucket}/fruits/code/{WHEEL_NAME}"
    assert args[args.index("--requirements") + 1].endswith("/code/requirements-py39.txt")
    assert args[args.index("--weights") + 1] == f"s3://{bucket}/fruits/models/{fake_weights.name}"

    groups = aws.emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]
    by_role = {g["InstanceGroupType"]: g for g in groups}
    assert by_role["MASTER"]["Market"] == "ON_DEMAND" and by_role["CORE"]["Market"] == "ON_DEMAND"
    assert by_role["TASK"]["Market"] == "SPOT"
    assert {g["InstanceType"] for g in groups} == {"m5.xlarge"}

    steps = aws.emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert len(steps) == 1 and steps[0]["Config"]["Jar"] == "command-runner.jar"
    command = steps[0]["Config"]["Args"]
    assert command[:2] == ["bash", "-c"]
    assert (
        f"helpers.run --data-root s3://{bucket}/fruits/data --output-root s3://{bucket}/fruits/out"
        " -p tsne_perplexity 12.0" in command[2]
    )

    # status and termination, through the command line
    assert main(["status", "--cluster-id", cluster_id, "--endpoint-url", aws.endpoint]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] in ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
    assert status["steps"][0]["name"].startswith("fruits: notebooks")
    assert main(["terminate", "--cluster-id", cluster_id, "--endpoint-url", aws.endpoint]) == 0
    assert json.loads(capsys.readouterr().out)["state"] in ("TERMINATING", "TERMINATED")
    assert cluster_status(aws.emr, cluster_id)["state"] in ("TERMINATING", "TERMINATED")

    everything = caplog.text + json.dumps(printed) + json.dumps(cluster, default=str)
    assert ACCESS_KEY not in everything and SECRET_KEY not in everything


def test_run_adds_the_step_to_a_running_cluster(aws: Aws) -> None:
    """`run` queues the pipeline step on an existing cluster; it is listed there."""
    settings = _settings("fruits-eu-run")
    cluster_id = emr.create_cluster(aws.emr, job_flow_request(settings))
    assert aws.emr.list_steps(ClusterId=cluster_id)["Steps"] == []
    code = main(
        ["run", "--bucket", settings.bucket, "--cluster-id", cluster_id]
        + ["--endpoint-url", aws.endpoint, "--data-root", "s3://other-eu-bucket/fruits360"]
    )
    assert code == 0
    steps = aws.emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert (
        len(steps) == 1
        and "--data-root s3://other-eu-bucket/fruits360" in (steps[0]["Config"]["Args"][2])
    )
    assert steps[0]["ActionOnFailure"] == "CONTINUE"
    assert terminate(aws.emr, cluster_id) in ("TERMINATING", "TERMINATED")


def test_upload_skips_unchanged_files(aws: Aws, tmp_path: Path) -> None:
    """A second upload of the same files sends nothing; a changed file is sent again."""
    settings = _settings("fruits-eu-upload")
    ensure_bucket(aws.s3, settings)
    files = []
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(name)
        files.append((tmp_path / name, settings.key("tmp", name)))
    assert upload(aws.s3, settings.bucket, files) == (2, 0)
    assert upload(aws.s3, settings.bucket, files) == (0, 2)
    (tmp_path / "a.txt").write_text("changed")
    assert upload(aws.s3, settings.bucket, files) == (1, 1)
    assert aws.body(settings.bucket, "fruits/tmp/a.txt") == b"changed"


def test_dry_run_calls_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--dry-run prints bucket settings, uploads and the full request, without AWS.

    No credentials and an endpoint where nothing listens: any call would fail.
    """
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    args = ["--bucket", "fruits-eu-plan", "--endpoint-url", "http://127.0.0.1:9", "--dry-run"]
    deploy = ["deploy", *args, "--data", str(DATA_SAMPLE), "--python", "3.11", "--run"]
    assert main([*deploy, "--tag", "team=vision"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {"Key": "team", "Value": "vision"} in document["run_job_flow"]["Tags"]
    assert set(document) == {"bucket", "uploads", "data", "output_root", "run_job_flow"}
    assert document["bucket"]["policy"]["Statement"][0]["Sid"] == "DenyInsecureTransport"
    uploaded = [p for p in DATA_SAMPLE.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert document["data"]["files"] == len(uploaded)
    assert any(u["to"].endswith("/code/requirements-py311.txt") for u in document["uploads"])
    request = document["run_job_flow"]
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert len(request["Steps"]) == 1
    assert main(["bucket", *args]) == 0
    assert json.loads(capsys.readouterr().out)["region"] == REGION
    assert main(["run", *args, "--cluster-id", "j-NOTHING"]) == 0
    assert "add_job_flow_steps" in json.loads(capsys.readouterr().out)
    assert main([*deploy, "--tag", "no-equals-sign"]) == 2


def test_bad_parameter_fails_before_any_call(
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong step parameter is named at once (exit 2), before the bucket is touched."""
    code = main(
        ["deploy", "--bucket", "fruits-eu-bad", "--endpoint-url", "http://127.0.0.1:9"]
        + ["--run", "-p", "pca_k", "many", "--wheel", "nowhere.whl"]
    )
    assert code == 2
    assert "parameter 'pca_k' must be int" in caplog.text
    with pytest.raises(ValueError, match="--data-root"):
        pipeline_step(_settings("fruits-eu-bad"), {"data_root": "s3://x/y"})


# --- the request, against the real API's model --------------------------------------------


def test_request_matches_the_emr_api_model() -> None:
    """The RunJobFlow request, step and all, is valid for botocore's model of EMR's API."""
    settings = _settings(
        "fruits-eu-model", weights="s3://models-eu/w.h5", subnet_id="subnet-0abc", key_name="me"
    )
    request = job_flow_request(settings, run=True, params={"pca_variance": 0.9})
    model = boto3.session.Session(region_name=REGION).client("emr").meta.service_model
    validate_parameters(request, model.operation_model("RunJobFlow").input_shape)
    step = pipeline_step(settings)
    validate_parameters(
        {"JobFlowId": "j-1", "Steps": [step]},
        model.operation_model("AddJobFlowSteps").input_shape,
    )
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert request["Instances"]["Ec2SubnetId"] == "subnet-0abc"
    assert request["JobFlowRole"] == "EMR_EC2_DefaultRole"
    assert request["ServiceRole"] == "EMR_DefaultRole"
    args = request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert args[args.index("--weights") + 1] == "s3://models-eu/w.h5"


def test_configurations_for_a_cluster_without_weights() -> None:
    """No weights: no FRUITS_WEIGHTS anywhere (Keras downloads ImageNet on the driver)."""
    text = json.dumps(configurations(_settings("fruits-eu-conf")))
    assert "FRUITS_WEIGHTS" not in text and VENV_PYTHON in text


def test_batch_cluster_terminates_after_its_step() -> None:
    """--batch: no keep-alive, and a failed step ends the cluster."""
    settings = _settings("fruits-eu-batch", keep_alive=False)
    request = job_flow_request(settings, run=True)
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False
    assert request["Steps"][0]["ActionOnFailure"] == "TERMINATE_CLUSTER"


# --- what the cluster runs ---------------------------------------------------------------


def test_source_archive_is_reproducible_and_complete(tmp_path: Path) -> None:
    """The step's archive holds the notebooks, the package and pyproject, nothing else."""
    first = build_source_archive(tmp_path)
    content = first.read_bytes()
    second = build_source_archive(tmp_path)
    assert second.read_bytes() == content
    with tarfile.open(first) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert "fruits/pyproject.toml" in names
    package = {f"fruits/helpers/emr/{p.name}" for p in (PROJECT_ROOT / "helpers/emr").glob("*.py")}
    assert package and package <= set(names)
    assert {f"fruits/notebooks/{n.name}" for n in (PROJECT_ROOT / "notebooks").glob("*.ipynb")} <= (
        set(names)
    )
    assert all(
        n.startswith(("fruits/helpers/", "fruits/notebooks/"))
        or n in ("fruits/pyproject.toml", "fruits/README.md")
        for n in names
    )


def test_names_agree_with_the_project() -> None:
    """The wheel name follows pyproject's version."""
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert WHEEL_NAME == f"fruits_pipeline-{version}-py3-none-any.whl"
    artifacts = emr.expected_artifacts(_settings("fruits-eu-names", python="3.11"))
    assert isinstance(artifacts, Artifacts)
    assert artifacts.requirements == PROJECT_ROOT / "emr/requirements-py311.txt"


def test_wheel_packages_every_helpers_package() -> None:
    """pyproject's package list names helpers and each subpackage (helpers.emr): the wheel
    the nodes install holds them all."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    found = sorted(
        ".".join(init.parent.relative_to(PROJECT_ROOT).parts)
        for init in (PROJECT_ROOT / "helpers").rglob("__init__.py")
    )
    assert sorted(packages) == found


def test_planning_imports_boto3_alone() -> None:
    """helpers.emr and its command line load no Spark, TensorFlow, Keras, papermill, Pillow
    or matplotlib: a laptop plans and deploys with boto3 only, in a fraction of a second."""
    heavy = ("pyspark", "tensorflow", "keras", "papermill", "PIL", "matplotlib")
    probe = (
        "import sys, helpers.emr, helpers.emr.cli; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported by helpers.emr: {result.stdout.strip()}"
    usage = subprocess.run(
        [sys.executable, "-m", "helpers.emr", "--help"], capture_output=True, text=True
    )
    assert usage.returncode == 0, usage.stderr
    assert "deploy" in usage.stdout and "terminate" in usage.stdout
    assert "RuntimeWarning" not in usage.stderr
