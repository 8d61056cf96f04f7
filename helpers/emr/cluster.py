"""The cluster and its pipeline step: the RunJobFlow request (applications, nodes on demand
and spot, bootstrap action, configurations, auto-termination, tags), the step that runs the
notebooks with papermill, and the thin boto3 EMR calls; :func:`deploy` puts bucket, uploads
and cluster together, :func:`plan` prints what it would do.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path
from typing import Any

from helpers.config import coerce
from helpers.emr.artifacts import Artifacts, code_uploads, data_uploads, upload
from helpers.emr.bucket import bucket_plan, ensure_bucket
from helpers.emr.settings import (
    APPLICATIONS,
    BOOTSTRAP_NAME,
    PROFILE,
    REQUIREMENTS,
    SOURCE_NAME,
    SPARK_HOME,
    VENV_PYTHON,
    WHEEL_NAME,
    EmrSettings,
)
from helpers.paths import refuse_credentials
from helpers.spark.settings import PYTHON_WORKER_CONF, resolve_s3_endpoint

log = logging.getLogger(__name__)

#: A URI anywhere in a text (a step script, an argument): quotes and blanks end it.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def refuse_credentials_in(document: Any, where: str) -> None:
    """Raise ``ValueError`` if any URI in ``document`` (nested dicts, lists, strings) holds
    credentials; the message names ``where`` and the URI with them replaced by ``***``.

    Bootstrap arguments, step scripts and plans are shown by EMR's console and API to anyone
    who may describe the cluster, and printed by ``--dry-run``.
    """
    if isinstance(document, dict):
        for key, value in document.items():
            refuse_credentials_in(value, f"{where}.{key}")
    elif isinstance(document, (list, tuple)):
        for i, value in enumerate(document):
            refuse_credentials_in(value, f"{where}[{i}]")
    elif isinstance(document, str):
        for match in _URI_IN_TEXT.finditer(document):
            refuse_credentials(match.group(0), f"a URI in {where}")


def bootstrap_action(settings: EmrSettings, wheel_name: str = WHEEL_NAME) -> dict[str, Any]:
    """The bootstrap action: bootstrap-emr.sh with the wheel, pinned set and weights."""
    args = [
        "--python",
        settings.python,
        "--requirements",
        settings.uri("code", Path(REQUIREMENTS[settings.python]).name),
        "--wheel",
        settings.uri("code", wheel_name),
    ]
    if settings.weights_uri:
        args += ["--weights", settings.weights_uri]
    return {
        "Name": "fruits: pinned Python packages and the project wheel",
        "ScriptBootstrapAction": {"Path": settings.uri("code", BOOTSTRAP_NAME), "Args": args},
    }


def node_environment(settings: EmrSettings) -> dict[str, str]:
    """Environment of Spark and Livy processes: the bootstrap's Python, and the weights."""
    env = {"PYSPARK_PYTHON": VENV_PYTHON, "PYSPARK_DRIVER_PYTHON": VENV_PYTHON}
    if settings.weights_path:
        env["FRUITS_WEIGHTS"] = settings.weights_path
    return env


def configurations(settings: EmrSettings) -> list[dict[str, Any]]:
    """EMR configuration classifications: Arrow, Python, memory, history on S3, Livy, YARN.

    The Python of every Spark process (spark-env, Livy, the YARN application master of a
    cluster-mode Livy driver) is the bootstrap's environment. Livy sessions time out after
    ``idle_minutes`` so that a forgotten notebook does not keep the cluster from idling.
    Application masters (and so Livy drivers) stay on core nodes, away from spot reclaims.
    """
    env = node_environment(settings)
    spark_defaults = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.pyspark.python": VENV_PYTHON,
        "spark.pyspark.driver.python": VENV_PYTHON,
        # executors' Python workers forked from the runtime-preloading daemon, reused
        **PYTHON_WORKER_CONF,
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
        "spark.executor.memoryOverhead": settings.executor_memory_overhead,
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": settings.history_uri,
        "spark.history.fs.logDirectory": settings.history_uri,
    }
    for name, value in env.items():
        spark_defaults[f"spark.yarn.appMasterEnv.{name}"] = value
    if settings.weights_path:
        spark_defaults["spark.executorEnv.FRUITS_WEIGHTS"] = settings.weights_path
    return [
        {"Classification": "spark-defaults", "Properties": spark_defaults},
        {
            "Classification": "spark-env",
            "Properties": {},
            "Configurations": [{"Classification": "export", "Properties": dict(env)}],
        },
        {
            "Classification": "livy-env",
            "Properties": {},
            "Configurations": [{"Classification": "export", "Properties": dict(env)}],
        },
        {
            "Classification": "livy-conf",
            "Properties": {
                "livy.server.session.timeout-check": "true",
                "livy.server.session.timeout": f"{settings.idle_minutes}m",
            },
        },
        {
            "Classification": "yarn-site",
            "Properties": {
                "yarn.node-labels.enabled": "true",
                "yarn.node-labels.am.default-node-label-expression": "CORE",
            },
        },
        {
            "Classification": "jupyter-sparkmagic-conf",
            "Properties": {
                "all_errors_are_fatal": "true",
                "shutdown_session_on_spark_statement_errors": "true",
            },
        },
        {
            "Classification": "jupyter-s3-conf",
            "Properties": {
                "s3.persistence.enabled": "true",
                "s3.persistence.bucket": settings.bucket,
            },
        },
    ]


def instance_groups(settings: EmrSettings) -> list[dict[str, Any]]:
    """Primary and core nodes on demand; task nodes on spot (cheap, may be reclaimed)."""
    groups: list[dict[str, Any]] = [
        {
            "Name": "primary",
            "InstanceRole": "MASTER",
            "Market": "ON_DEMAND",
            "InstanceType": settings.instance_type,
            "InstanceCount": 1,
        },
        {
            "Name": "core",
            "InstanceRole": "CORE",
            "Market": "ON_DEMAND",
            "InstanceType": settings.instance_type,
            "InstanceCount": settings.core_count,
        },
    ]
    if settings.task_count:
        groups.append(
            {
                "Name": "task-spot",
                "InstanceRole": "TASK",
                "Market": "SPOT",
                "InstanceType": settings.task_instance_type or settings.instance_type,
                "InstanceCount": settings.task_count,
            }
        )
    return groups


def step_script(settings: EmrSettings, params: dict[str, Any] | None = None) -> str:
    """The bash script of the pipeline step, run on the primary node by command-runner.jar.

    It unpacks the sources (notebooks + package), puts EMR's pyspark on the path of the
    bootstrap's Python, and runs ``python -m helpers.run`` with the cluster's roots.
    """
    args = ["--data-root", settings.data_uri, "--output-root", settings.output_uri]
    for name, value in (params or {}).items():
        args += ["-p", name, str(value)]
    run = " ".join(shlex.quote(a) for a in [VENV_PYTHON, "-m", "helpers.run", *args])
    source = shlex.quote(settings.uri("code", SOURCE_NAME))
    lines = [
        "set -euo pipefail",
        "work=$(mktemp -d)",
        f'aws s3 cp --only-show-errors {source} - | tar -xz -C "$work"',
        'cd "$work/fruits"',
        "# shellcheck source=/dev/null  # written by bootstrap-emr.sh: FRUITS_WEIGHTS",
        f"if [ -f {PROFILE} ]; then . {PROFILE}; fi",
        f"export SPARK_HOME={SPARK_HOME}",
        f"py4j=({SPARK_HOME}/python/lib/py4j-*-src.zip)",
        f'export PYTHONPATH="{SPARK_HOME}/python:${{py4j[0]}}"',
        f"export AWS_REGION={shlex.quote(settings.region)}",
        f"export AWS_DEFAULT_REGION={shlex.quote(settings.region)}",
        run,
    ]
    return "\n".join(lines) + "\n"


def pipeline_step(settings: EmrSettings, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The EMR step running the three notebooks with papermill (command-runner.jar)."""
    for name, value in (params or {}).items():
        if isinstance(value, str):
            refuse_credentials(value, f"parameter '{name}'")  # before coerce shows it
        coerce(name, value)  # an unknown name or bad value fails here, not on the cluster
        if name == "s3_endpoint" and str(value).strip():
            resolve_s3_endpoint(str(value))  # 'KEY:SECRET@host' without a scheme too
        if name in ("data_root", "output_root"):
            raise ValueError(
                f"give {name} as --{name.replace('_', '-')}, not as a -p parameter: the step "
                "passes the cluster's roots itself"
            )
    step = {
        "Name": "fruits: notebooks 01-03 (python -m helpers.run)",
        "ActionOnFailure": "CONTINUE" if settings.keep_alive else "TERMINATE_CLUSTER",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": ["bash", "-c", step_script(settings, params)],
        },
    }
    refuse_credentials_in(step, "the pipeline step")
    return step


def job_flow_request(
    settings: EmrSettings,
    wheel_name: str = WHEEL_NAME,
    run: bool = False,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole RunJobFlow request: applications, nodes, bootstrap, settings, step, roles."""
    instances: dict[str, Any] = {
        "InstanceGroups": instance_groups(settings),
        "KeepJobFlowAliveWhenNoSteps": settings.keep_alive,
        "TerminationProtected": False,
    }
    if settings.subnet_id:
        instances["Ec2SubnetId"] = settings.subnet_id
    if settings.key_name:
        instances["Ec2KeyName"] = settings.key_name
    request: dict[str, Any] = {
        "Name": settings.name,
        "ReleaseLabel": settings.release,
        "LogUri": settings.logs_uri,
        "Applications": [{"Name": name} for name in APPLICATIONS],
        "Instances": instances,
        "BootstrapActions": [bootstrap_action(settings, wheel_name)],
        "Configurations": configurations(settings),
        "Steps": [pipeline_step(settings, params)] if run else [],
        "AutoTerminationPolicy": {"IdleTimeout": settings.idle_minutes * 60},
        "JobFlowRole": settings.instance_profile,
        "ServiceRole": settings.service_role,
        "VisibleToAllUsers": True,
        "EbsRootVolumeSize": settings.root_volume_gb,
        "Tags": [
            {"Key": key, "Value": value}
            for key, value in {
                "project": "fruits",
                "personal-data": "none",
                **settings.tags,
            }.items()
        ],
    }
    if settings.security_configuration:
        request["SecurityConfiguration"] = settings.security_configuration
    refuse_credentials_in(request, "run_job_flow")
    return request


# --- AWS calls (thin) ----------------------------------------------------------------------


def clients(region: str, endpoint_url: str | None = None) -> tuple[Any, Any]:
    """boto3 S3 and EMR clients for ``region`` (``endpoint_url``: an emulator such as moto).

    Credentials come from boto3's default chain, never from here.
    """
    import boto3

    session = boto3.session.Session(region_name=region)
    return (
        session.client("s3", endpoint_url=endpoint_url),
        session.client("emr", endpoint_url=endpoint_url),
    )


def create_cluster(emr: Any, request: dict[str, Any]) -> str:
    """Start the cluster; return its id (j-...)."""
    cluster_id = emr.run_job_flow(**request)["JobFlowId"]
    log.info("cluster %s starting (%s)", cluster_id, request["ReleaseLabel"])
    return cluster_id


def add_pipeline_step(emr: Any, cluster_id: str, step: dict[str, Any]) -> str:
    """Queue the pipeline step on a running cluster; return the step id."""
    step_id = emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"][0]
    log.info("step %s queued on %s", step_id, cluster_id)
    return step_id


def cluster_status(emr: Any, cluster_id: str) -> dict[str, Any]:
    """State, reason, primary node address and the steps' states of a cluster."""
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    status = cluster["Status"]
    steps = emr.list_steps(ClusterId=cluster_id).get("Steps", [])
    return {
        "id": cluster["Id"],
        "name": cluster["Name"],
        "state": status["State"],
        "reason": status.get("StateChangeReason", {}).get("Message", ""),
        "primary_dns": cluster.get("MasterPublicDnsName", ""),
        "release": cluster.get("ReleaseLabel", ""),
        "steps": [{"id": s["Id"], "name": s["Name"], "state": s["Status"]["State"]} for s in steps],
    }


def terminate(emr: Any, cluster_id: str) -> str:
    """Terminate the cluster; return its state afterwards (TERMINATING or TERMINATED)."""
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    log.info("cluster %s: %s", cluster_id, state)
    return state


# --- the whole deployment ------------------------------------------------------------------


def plan(
    settings: EmrSettings,
    artifacts: Artifacts,
    data_dir: Path | None = None,
    run: bool = False,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``deploy`` would do, as one JSON-ready document (``--dry-run``)."""
    uploads = [
        {"from": str(path), "to": f"s3://{settings.bucket}/{key}"}
        for path, key in code_uploads(settings, artifacts)
    ]
    data: dict[str, Any] = {"data_root": settings.data_uri}
    if data_dir is not None:
        files = data_uploads(settings, data_dir)
        data.update({"from": str(data_dir), "files": len(files)})
    document = {
        "bucket": bucket_plan(settings),
        "uploads": uploads,
        "data": data,
        "output_root": settings.output_uri,
        "run_job_flow": job_flow_request(settings, artifacts.wheel.name, run, params),
    }
    refuse_credentials_in(document, "plan")
    return document


def deploy(
    settings: EmrSettings,
    s3: Any,
    emr: Any,
    artifacts: Artifacts,
    data_dir: Path | None = None,
    run: bool = False,
    params: dict[str, Any] | None = None,
) -> str:
    """Bucket, uploads, cluster (and step): the whole deployment; return the cluster id."""
    request = job_flow_request(settings, artifacts.wheel.name, run, params)  # checks params
    ensure_bucket(s3, settings)
    upload(s3, settings.bucket, code_uploads(settings, artifacts))
    if data_dir is not None:
        upload(s3, settings.bucket, data_uploads(settings, data_dir))
    return create_cluster(emr, request)
