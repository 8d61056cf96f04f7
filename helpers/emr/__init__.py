"""EMR as code: an EU bucket, the uploads, a cluster that runs the notebooks, status, end.

``python -m helpers.emr deploy|bucket|run|status|terminate|plan`` (:mod:`helpers.emr.cli`;
``docs/emr.md``). One module per concern:

- :mod:`~helpers.emr.settings`: :class:`EmrSettings`, checked on creation, and the paths the
  nodes share with ``bootstrap-emr.sh``;
- :mod:`~helpers.emr.bucket`: the bucket and its GDPR rules (EU region, encryption, no
  public access, TLS only, retention), :func:`ensure_bucket`;
- :mod:`~helpers.emr.artifacts`: the wheel, sources, pinned set and weights, :func:`upload`;
- :mod:`~helpers.emr.cluster`: the RunJobFlow request, the pipeline step, the EMR calls,
  :func:`deploy` and :func:`plan`;
- :mod:`~helpers.emr.estimate`: the wall time and cost of a run before a cluster starts
  (``plan --images N``), from the benchmark's figures and a price table;
- :mod:`~helpers.emr.cli`: the command line.

The request builders (:func:`bucket_encryption`, :func:`lifecycle_rules`,
:func:`configurations`, :func:`job_flow_request`, :func:`pipeline_step`...) are pure
functions of :class:`EmrSettings`, so the whole plan prints with ``--dry-run`` and is tested
without AWS. The functions that call AWS are thin and take boto3 clients, made by
:func:`clients` with an optional ``endpoint_url`` (moto's server in the tests). Credentials
are never parameters: boto3's default chain (environment, ``AWS_PROFILE``, SSO, instance
role) provides them. GDPR choices (EU region, encryption, TLS only, retention) are enforced
here; ``docs/gdpr.md`` says where. Planning and deploying need boto3 only: nothing here
imports Spark, TensorFlow, papermill, Pillow or matplotlib (``tests/test_emr.py`` checks).
"""

from helpers.emr.artifacts import (
    SOURCE_GLOBS,
    Artifacts,
    build_artifacts,
    build_source_archive,
    build_wheel,
    code_uploads,
    data_uploads,
    expected_artifacts,
    upload,
)
from helpers.emr.bucket import (
    bucket_encryption,
    bucket_plan,
    bucket_policy,
    bucket_policy_statements,
    ensure_bucket,
    lifecycle_rules,
    public_access_block,
)
from helpers.emr.cli import main
from helpers.emr.cluster import (
    add_pipeline_step,
    bootstrap_action,
    clients,
    cluster_status,
    configurations,
    create_cluster,
    deploy,
    instance_groups,
    job_flow_request,
    node_environment,
    pipeline_step,
    plan,
    step_script,
    terminate,
)
from helpers.emr.settings import (
    APPLICATIONS,
    BOOTSTRAP_NAME,
    DEFAULT_REGION,
    DEFAULT_RELEASE,
    PROFILE,
    REQUIREMENTS,
    SOURCE_NAME,
    SPARK_HOME,
    VENV_DIR,
    VENV_PYTHON,
    WEIGHTS_DIR,
    WHEEL_NAME,
    EmrSettings,
)

__all__ = [
    "APPLICATIONS",
    "BOOTSTRAP_NAME",
    "DEFAULT_REGION",
    "DEFAULT_RELEASE",
    "PROFILE",
    "REQUIREMENTS",
    "SOURCE_GLOBS",
    "SOURCE_NAME",
    "SPARK_HOME",
    "VENV_DIR",
    "VENV_PYTHON",
    "WEIGHTS_DIR",
    "WHEEL_NAME",
    "Artifacts",
    "EmrSettings",
    "add_pipeline_step",
    "bootstrap_action",
    "bucket_encryption",
    "bucket_plan",
    "bucket_policy",
    "bucket_policy_statements",
    "build_artifacts",
    "build_source_archive",
    "build_wheel",
    "clients",
    "cluster_status",
    "code_uploads",
    "configurations",
    "create_cluster",
    "data_uploads",
    "deploy",
    "ensure_bucket",
    "expected_artifacts",
    "instance_groups",
    "job_flow_request",
    "lifecycle_rules",
    "main",
    "node_environment",
    "pipeline_step",
    "plan",
    "public_access_block",
    "step_script",
    "terminate",
    "upload",
]
