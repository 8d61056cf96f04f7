"""The bucket and its GDPR rules: EU region, encryption at rest, no public access, TLS only,
retention. The rules are pure functions of :class:`EmrSettings` (printed by ``--dry-run``,
cited by ``docs/gdpr.md``); :func:`ensure_bucket` applies them with one boto3 S3 client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from helpers.emr.settings import EmrSettings

log = logging.getLogger(__name__)


def bucket_encryption(settings: EmrSettings) -> dict[str, Any]:
    """Default encryption at rest: SSE-KMS with ``kms_key_id`` if given, else SSE-S3."""
    if settings.kms_key_id:
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": settings.kms_key_id}
        return {
            "Rules": [{"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": True}]
        }
    return {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}


def public_access_block() -> dict[str, bool]:
    """Every kind of public access blocked: ACLs and policies alike."""
    return {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }


def bucket_policy_statements(bucket: str) -> list[dict[str, Any]]:
    """Deny any request without TLS, or with TLS older than 1.2: encryption in transit."""
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    return [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyOutdatedTLS",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
        },
    ]


def bucket_policy(bucket: str, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bucket policy: ``existing`` statements kept, ours added or replaced (by Sid)."""
    ours = bucket_policy_statements(bucket)
    statements = _merge((existing or {}).get("Statement", []), ours, "Sid")
    return {"Version": "2012-10-17", "Statement": statements}


def lifecycle_rules(settings: EmrSettings) -> list[dict[str, Any]]:
    """Retention: temporary outputs and logs expire; unfinished uploads are aborted.

    ``tmp/`` after ``tmp_days``;
    EMR logs and Spark event logs after ``log_days``; incomplete multipart uploads after a
    day, bucket-wide. Images, features and models are kept until deleted on purpose.
    """
    expiring = [
        ("fruits-tmp", settings.key("tmp") + "/", settings.tmp_days),
        ("fruits-logs", settings.key("logs") + "/", settings.log_days),
        ("fruits-spark-history", settings.key("spark-history") + "/", settings.log_days),
    ]
    rules: list[dict[str, Any]] = [
        {
            "ID": rule_id,
            "Filter": {"Prefix": prefix},
            "Status": "Enabled",
            "Expiration": {"Days": days},
        }
        for rule_id, prefix, days in expiring
    ]
    rules.append(
        {
            "ID": "fruits-abort-incomplete-uploads",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    )
    return rules


def _merge(existing: Iterable[dict[str, Any]], ours: list[dict[str, Any]], key: str) -> list:
    """``existing`` entries whose ``key`` is not one of ours, then ours."""
    mine = {entry[key] for entry in ours}
    return [entry for entry in existing if entry.get(key) not in mine] + ours


def bucket_plan(settings: EmrSettings) -> dict[str, Any]:
    """What :func:`ensure_bucket` applies, for ``--dry-run`` and the docs."""
    return {
        "bucket": settings.bucket,
        "region": settings.region,
        "encryption": bucket_encryption(settings),
        "public_access_block": public_access_block(),
        "ownership": "BucketOwnerEnforced (ACLs disabled)",
        "policy": bucket_policy(settings.bucket),
        "lifecycle": lifecycle_rules(settings),
    }


# --- AWS calls (thin) ----------------------------------------------------------------------


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ``ClientError`` (``"404"``, ``"NoSuchKey"``...)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def ensure_bucket(s3: Any, settings: EmrSettings) -> dict[str, Any]:
    """Create the bucket in ``settings.region`` if needed, then apply every setting.

    Idempotent: an existing bucket of ours is brought back to the settings; its other policy
    statements and lifecycle rules are kept. A bucket in another region, or one we cannot
    reach, stops here with the fix.
    """
    from botocore.exceptions import ClientError

    bucket = settings.bucket
    try:
        s3.head_bucket(Bucket=bucket)
        exists = True
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            exists = False
        elif error_code(exc) in ("403", "AccessDenied"):
            raise PermissionError(
                f"bucket '{bucket}' exists but these credentials may not use it (someone "
                "else's, bucket names are global): choose another --bucket, or check the role"
            ) from exc
        else:
            raise
    if exists:
        location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
        if location != settings.region:
            raise ValueError(
                f"bucket '{bucket}' is in {location}, not {settings.region}: pass "
                f"--region {location} if that is where it should be, or choose another --bucket"
            )
        log.info("bucket s3://%s exists in %s: applying the settings", bucket, location)
    else:
        s3.create_bucket(
            Bucket=bucket,
            CreateBucketConfiguration={"LocationConstraint": settings.region},
        )
        log.info("created bucket s3://%s in %s", bucket, settings.region)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=public_access_block())
    s3.put_bucket_ownership_controls(
        Bucket=bucket,
        OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
    )
    s3.put_bucket_encryption(
        Bucket=bucket, ServerSideEncryptionConfiguration=bucket_encryption(settings)
    )
    try:
        existing = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError as exc:
        if error_code(exc) != "NoSuchBucketPolicy":
            raise
        existing = None
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(bucket_policy(bucket, existing)))
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as exc:
        if error_code(exc) != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={"Rules": _merge(rules, lifecycle_rules(settings), "ID")},
    )
    return bucket_plan(settings)
