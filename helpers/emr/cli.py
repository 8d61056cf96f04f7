"""EMR as code: an EU bucket, the uploads, a cluster that runs the notebooks, status, end.

    python -m helpers.emr deploy --bucket NAME [--region eu-west-3] [--data data_sample]
        [--weights FILE.h5] [--python 3.9|3.11] [--run] [--dry-run]
    python -m helpers.emr bucket --bucket NAME [--dry-run]
    python -m helpers.emr run --bucket NAME --cluster-id j-XXXX [-p NAME VALUE]... [--dry-run]
    python -m helpers.emr status --cluster-id j-XXXX
    python -m helpers.emr terminate --cluster-id j-XXXX
    python -m helpers.emr plan --images 100000 [--instance-type m5.xlarge] [--json]

The command line of :mod:`helpers.emr`: it reads the options into :class:`EmrSettings`, then
prints the plan (``--dry-run``) or calls AWS, and prints the result as JSON. ``plan``
estimates the wall time and cost of a run on the cluster ``deploy`` would start, calling
nothing (:mod:`helpers.emr.estimate`).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from helpers.config import add_parameter_option, coerce
from helpers.emr.artifacts import build_artifacts, expected_artifacts
from helpers.emr.bucket import bucket_plan, ensure_bucket
from helpers.emr.cluster import (
    add_pipeline_step,
    clients,
    cluster_status,
    deploy,
    instance_groups,
    pipeline_step,
    plan,
    terminate,
)
from helpers.emr.estimate import (
    STARTUP_MINUTES,
    estimate,
    format_estimate,
    parse_price,
    read_prices,
    rounded,
)
from helpers.emr.settings import DEFAULT_REGION, REQUIREMENTS, EmrSettings
from helpers.paths import refuse_credentials

log = logging.getLogger(__name__)


def _settings_arguments(parser: argparse.ArgumentParser, full: bool) -> None:
    defaults = EmrSettings(bucket="defaults")
    parser.add_argument("--bucket", required=True, help="bucket name (created if missing)")
    parser.add_argument("--prefix", default=defaults.prefix, help="key prefix in the bucket")
    parser.add_argument("--region", default=defaults.region, help="AWS region (EU)")
    parser.add_argument("--allow-non-eu-region", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kms-key-id", default="", help="SSE-KMS key (default: SSE-S3)")
    parser.add_argument("--tmp-days", type=int, default=defaults.tmp_days)
    parser.add_argument("--log-days", type=int, default=defaults.log_days)
    parser.add_argument("--data-root", default="", help="images already in S3 (s3://...)")
    parser.add_argument("--output-root", default="", help="default s3://BUCKET/PREFIX/out")
    parser.add_argument("--weights", default="", help="local .h5 to upload, or s3:// URI")
    parser.add_argument("--python", default=defaults.python, choices=sorted(REQUIREMENTS))
    if not full:
        return
    parser.add_argument("--name", default=defaults.name, help="cluster name")
    parser.add_argument("--release", default=defaults.release, help="EMR 7.x release label")
    _cluster_arguments(parser, defaults)
    parser.add_argument("--service-role", default=defaults.service_role)
    parser.add_argument("--instance-profile", default=defaults.instance_profile)
    parser.add_argument("--subnet-id", default="")
    parser.add_argument("--key-name", default="", help="EC2 key pair for SSH")
    parser.add_argument("--security-configuration", default="")
    parser.add_argument("--executor-memory-overhead", default=defaults.executor_memory_overhead)
    parser.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="cluster tag, repeatable"
    )


def _settings(args: argparse.Namespace) -> EmrSettings:
    names = {f for f in EmrSettings.__dataclass_fields__ if f != "tags"}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if getattr(args, "batch", False):
        values["keep_alive"] = False
    tags = {}
    for tag in getattr(args, "tag", []):
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag '{tag}' must be KEY=VALUE")
        tags[key] = value
    return EmrSettings(**values, tags=tags)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.emr",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\nsee docs/emr.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint-url", default=None, help="AWS API emulator (tests)")
    common.add_argument("--dry-run", action="store_true", help="print the plan, call nothing")

    deploy_ = commands.add_parser("deploy", parents=[common], help="bucket, uploads, cluster")
    _settings_arguments(deploy_, full=True)
    deploy_.add_argument("--data", type=Path, help="local images folder to upload to data/")
    deploy_.add_argument("--wheel", type=Path, help="a built wheel (default: build one)")
    deploy_.add_argument("--run", action="store_true", help="add the pipeline step")
    add_parameter_option(deploy_, "pipeline parameter for the step")

    bucket_ = commands.add_parser("bucket", parents=[common], help="create/configure the bucket")
    _settings_arguments(bucket_, full=False)

    run_ = commands.add_parser("run", parents=[common], help="add the pipeline step")
    _settings_arguments(run_, full=False)
    run_.add_argument("--cluster-id", required=True)
    run_.add_argument("--batch", action="store_true", help="terminate the cluster on failure")
    add_parameter_option(run_, "pipeline parameter")

    for name, text in (("status", "cluster and step states"), ("terminate", "end the cluster")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("--cluster-id", required=True)
        sub.add_argument("--region", default=DEFAULT_REGION)
    _plan_arguments(commands.add_parser("plan", help="wall time and cost, before deploying"))
    return parser


def _cluster_arguments(parser: argparse.ArgumentParser, defaults: EmrSettings) -> None:
    """The options that shape the cluster (``deploy`` and ``plan`` alike)."""
    parser.add_argument("--instance-type", default=defaults.instance_type)
    parser.add_argument("--core-count", type=int, default=defaults.core_count)
    parser.add_argument("--task-count", type=int, default=defaults.task_count, help="spot")
    parser.add_argument("--task-instance-type", default="")
    parser.add_argument("--idle-minutes", type=int, default=defaults.idle_minutes)
    parser.add_argument("--batch", action="store_true", help="terminate after the steps")


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    """``plan``: the cluster options of ``deploy`` that decide time and cost, and prices."""
    defaults = EmrSettings(bucket="defaults")
    parser.add_argument("--images", type=int, required=True, help="images in data_root")
    parser.add_argument("--region", default=defaults.region, help="AWS region (EU)")
    _cluster_arguments(parser, defaults)
    parser.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="TYPE[:spot|:emr]=USD",
        help="USD per hour of one instance (EC2 on demand; :spot, :emr), repeatable",
    )
    parser.add_argument("--prices", type=Path, help="JSON: {TYPE: {on_demand, spot, emr, vcpus}}")
    parser.add_argument(
        "--startup-minutes",
        type=float,
        default=STARTUP_MINUTES,
        help="provisioning and bootstrap, billed",
    )
    parser.add_argument(
        "--core-speed",
        type=float,
        default=1.0,
        help="a cluster vCPU's speed against a core of the benchmark machine",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints the plan, the cluster id or the status as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2


def _print(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def _plan_command(args: argparse.Namespace) -> int:
    """``plan``: the estimate for the cluster ``deploy`` would start with these options."""
    settings = EmrSettings(
        bucket="estimate-only",  # plan touches no bucket; EmrSettings checks the rest
        region=args.region,
        instance_type=args.instance_type,
        core_count=args.core_count,
        task_count=args.task_count,
        task_instance_type=args.task_instance_type,
        idle_minutes=args.idle_minutes,
        keep_alive=not args.batch,
    )
    prices = read_prices(args.prices) if args.prices else {}
    for text in args.price:
        instance_type, key, value = parse_price(text)
        prices.setdefault(instance_type, {})[key] = value
    document = estimate(
        instance_groups(settings),
        args.images,
        prices=prices,
        startup_minutes=args.startup_minutes,
        idle_minutes=settings.idle_minutes if settings.keep_alive else 0,
        core_speed=args.core_speed,
        region=settings.region,
    )
    if args.json:
        _print(rounded(document))
    else:
        print(format_estimate(document))
    return 0


def _command(args: argparse.Namespace) -> int:
    if args.command == "plan":
        return _plan_command(args)
    if args.endpoint_url:
        refuse_credentials(args.endpoint_url, "--endpoint-url")
    if args.command in ("status", "terminate"):
        if args.dry_run:
            _print({args.command: args.cluster_id, "region": args.region})
            return 0
        _, emr = clients(args.region, args.endpoint_url)
        if args.command == "status":
            _print(cluster_status(emr, args.cluster_id))
        else:
            _print({"id": args.cluster_id, "state": terminate(emr, args.cluster_id)})
        return 0

    settings = _settings(args)
    params = {name: coerce(name, value) for name, value in getattr(args, "parameter", [])}
    if args.command == "bucket":
        if args.dry_run:
            _print(bucket_plan(settings))
            return 0
        s3, _ = clients(settings.region, args.endpoint_url)
        _print(ensure_bucket(s3, settings))
        return 0
    if args.command == "run":
        step = pipeline_step(settings, params)
        if args.dry_run:
            _print({"cluster": args.cluster_id, "add_job_flow_steps": step})
            return 0
        _, emr = clients(settings.region, args.endpoint_url)
        _print({"cluster": args.cluster_id, "step": add_pipeline_step(emr, args.cluster_id, step)})
        return 0

    # deploy
    if args.dry_run:
        artifacts = expected_artifacts(settings)
        if args.wheel:
            artifacts = replace(artifacts, wheel=args.wheel)
        _print(plan(settings, artifacts, args.data, args.run, params))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = build_artifacts(settings, Path(tmp), args.wheel)
        s3, emr = clients(settings.region, args.endpoint_url)
        cluster_id = deploy(settings, s3, emr, artifacts, args.data, args.run, params)
    region = "" if settings.region == DEFAULT_REGION else f" --region {settings.region}"
    _print(
        {
            "cluster": cluster_id,
            "data_root": settings.data_uri,
            "output_root": settings.output_uri,
            "logs": settings.logs_uri,
            "next": [
                f"python -m helpers.emr status --cluster-id {cluster_id}{region}",
                f"python -m helpers.emr run --bucket {settings.bucket} --cluster-id {cluster_id}"
                f"{region}",
                f"python -m helpers.emr terminate --cluster-id {cluster_id}{region}",
            ],
        }
    )
    return 0
