"""Repository hygiene: lint, pins that agree, scripts that parse."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers.paths import PROJECT_ROOT

# lint and repository files, no Spark: make test runs it, make test-spark4 does not
pytestmark = pytest.mark.spark_neutral


def _pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.match(r'^\s*"?([A-Za-z0-9_.\-]+)==([^"\s]+)"?', line)
        if match:
            found[re.sub(r"[_.]", "-", match.group(1).lower())] = match.group(2)
    return found


def test_ruff_clean():
    """ruff lint and format pass on code and notebooks."""
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=PROJECT_ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_bootstrap_reads_its_pins_from_the_emr_sets():
    """bootstrap-emr.sh pins nothing itself: it installs emr/requirements-py*.txt, whose
    agreement with pyproject.toml and constraints.txt tests/test_bootstrap.py checks."""
    script = (PROJECT_ROOT / "bootstrap-emr.sh").read_text()
    bootstrap = _pins(script.splitlines())
    assert set(bootstrap) <= {"pip"}, f"pins in bootstrap-emr.sh: move them to emr/: {bootstrap}"
    # the environment's own pip: the version `make setup` uses
    pip = re.search(r'PIP_VERSION="([^"]+)"', script).group(1)
    assert f'"pip=={pip}"' in (PROJECT_ROOT / "Makefile").read_text()
    for name in ("requirements-py39.txt", "requirements-py311.txt"):
        assert _pins((PROJECT_ROOT / "emr" / name).read_text().splitlines())


def test_constraints_cover_direct_pins():
    """constraints.txt (the full tested set) agrees with every direct pin."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    direct = _pins(project["dependencies"] + extras["spark"] + extras["dev"])
    locked = _pins((PROJECT_ROOT / "constraints.txt").read_text().splitlines())
    for name, version in direct.items():
        assert locked.get(name) == version, (
            f"{name}: constraints {locked.get(name)}, pyproject {version}"
        )


def test_shell_scripts_parse():
    """bootstrap-emr.sh and .ci/run are valid bash."""
    for script in ("bootstrap-emr.sh", ".ci/run"):
        result = subprocess.run(["bash", "-n", str(PROJECT_ROOT / script)], capture_output=True)
        assert result.returncode == 0, result.stderr


def _bundle() -> dict:
    """databricks.yml, parsed."""
    import yaml

    return yaml.safe_load((PROJECT_ROOT / "databricks.yml").read_text())


def _databricks_jobs(bundle: dict) -> dict[str, dict]:
    """The classic job (every target) and the serverless one (target ``serverless``)."""
    serverless = bundle["targets"]["serverless"]["resources"]["jobs"]
    return {
        "classic": bundle["targets"]["dev"]["resources"]["jobs"]["fruits_pipeline"],
        "serverless": serverless["fruits_pipeline_serverless"],
    }


def _resolve(value: str, bundle: dict, target: str) -> str:
    """``${var.NAME}`` replaced as ``bundle deploy -t target`` does without ``--var``."""
    values = {name: spec.get("default") for name, spec in bundle["variables"].items()}
    values.update(bundle["targets"][target].get("variables", {}))
    return re.sub(r"\$\{var\.(\w+)\}", lambda m: str(values[m.group(1)]), str(value))


def test_databricks_bundle_runs_the_notebooks_with_their_parameters():
    """databricks.yml, both jobs: each task's notebook exists, in order, and every
    base_parameters name is a parameter its notebook's parameters cell declares."""
    import nbformat

    jobs = _databricks_jobs(_bundle())
    classic = jobs["classic"]["job_clusters"][0]["new_cluster"]
    assert classic["spark_version"].startswith("15.4.x-cpu-ml")
    for kind, job in jobs.items():
        paths = []
        for task in job["tasks"]:
            notebook = PROJECT_ROOT / task["notebook_task"]["notebook_path"]
            assert notebook.is_file(), notebook
            paths.append(notebook.name)
            cells = nbformat.read(notebook, as_version=4).cells
            source = next(c.source for c in cells if "parameters" in c.metadata.get("tags", []))
            declared = {line.split(":")[0].strip() for line in source.splitlines() if ":" in line}
            given = set(task["notebook_task"].get("base_parameters", {}))
            assert given <= declared, f"{kind} {notebook.name}: {given - declared} not declared"
        assert paths == sorted(paths), kind


def test_databricks_featurizing_tasks_install_the_tested_litert():
    """The classic job's tasks that featurize (02, 04) install LiteRT at constraints.txt's pin,
    so ``runtime=auto`` runs it there as it does here (the ML runtime has TensorFlow, not
    LiteRT)."""
    from helpers.pins import read_pins

    pin = f"ai-edge-litert=={read_pins(PROJECT_ROOT / 'constraints.txt')['ai-edge-litert'].version}"
    for task in _databricks_jobs(_bundle())["classic"]["tasks"]:
        if "weights" in task["notebook_task"].get("base_parameters", {}):
            assert {"pypi": {"package": pin}} in task.get("libraries", []), task["task_key"]


def test_databricks_serverless_job_is_the_classic_one_without_a_cluster():
    """The serverless job runs the classic job's notebooks, in the same order, with the same
    parameters, and names no compute: no job cluster, no cluster on a task, no task
    libraries (refused on serverless; its dependencies are its environment's)."""
    jobs = _databricks_jobs(_bundle())
    serverless = jobs["serverless"]
    assert "job_clusters" not in serverless
    compute = {"job_cluster_key", "new_cluster", "existing_cluster_id", "libraries"}
    for task in serverless["tasks"]:
        assert not compute & set(task), f"{task['task_key']}: {compute & set(task)}"

    def plan(job: dict) -> list:
        return [(t["task_key"], t.get("depends_on", []), t["notebook_task"]) for t in job["tasks"]]

    assert plan(serverless) == plan(jobs["classic"])


def test_databricks_serverless_tasks_get_the_project_and_the_tested_litert():
    """Every serverless task names a job environment (Spark 4's environment version or later,
    for Spark ML on Spark Connect) that installs the bundle's wheel and LiteRT, every pin in
    it at constraints.txt's version, and nothing that brings pyspark (installing PySpark on
    serverless stops the session)."""
    from helpers.pins import normalize, project_requirements, read_pins

    bundle = _bundle()
    target = bundle["targets"]["serverless"]
    job = _databricks_jobs(bundle)["serverless"]
    environments = {e["environment_key"]: e["spec"] for e in job["environments"]}
    locked = {
        name: pin.version for name, pin in read_pins(PROJECT_ROOT / "constraints.txt").items()
    }
    # the wheel the bundle builds from this directory, into ./dist
    assert [a["path"] for a in target["artifacts"].values() if a["type"] == "whl"] == ["."]
    wheel = "./dist/*.whl"
    for task in job["tasks"]:
        spec = environments[task["environment_key"]]
        assert "client" not in spec  # deprecated for environment_version
        assert int(_resolve(spec["environment_version"], bundle, "serverless")) >= 4
        dependencies = spec["dependencies"]
        assert wheel in dependencies, task["task_key"]
        pinned = dict(d.split("==") for d in dependencies if "==" in d)
        assert "ai-edge-litert" in pinned, task["task_key"]
        for name, version in pinned.items():
            tested = locked.get(normalize(name))
            assert tested == version, f"{name}: {version} here, {tested} in constraints.txt"
        assert not {normalize(d.split("==")[0]) for d in dependencies} & {"pyspark", "py4j"}
    assert "pyspark" not in project_requirements()  # the wheel's own requirements


def test_databricks_serverless_paths_are_volumes():
    """On serverless (no DBFS root) the job's data, outputs and weights are Unity Catalog
    volume paths, /Volumes/<catalog>/<schema>/<volume>/..., the weights a .h5 file there."""
    bundle = _bundle()
    for task in _databricks_jobs(bundle)["serverless"]["tasks"]:
        parameters = task["notebook_task"].get("base_parameters", {})
        for name in {"data_root", "output_root", "weights"} & set(parameters):
            path = _resolve(parameters[name], bundle, "serverless")
            assert re.match(r"^/Volumes/[^/]+/[^/]+/[^/]+", path), f"{name}: {path}"
            if name == "weights":
                assert path.endswith(".h5"), path


def test_helpers_compile_on_python_39():
    """EMR 7's default Python 3.9 can import every helper (no newer syntax)."""
    import shutil

    import pytest

    candidates = [
        shutil.which("python3.9"),
        *Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"),
    ]
    working = [
        str(c)
        for c in candidates
        if c and not subprocess.run([c, "--version"], capture_output=True).returncode
    ]
    if not working:
        pytest.skip("python3.9 is not installed here")
    python39 = working[0]
    sources = sorted(str(p) for p in (PROJECT_ROOT / "helpers").rglob("*.py"))
    code = "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')"
    result = subprocess.run([python39, "-c", code, *sources], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_step_functions_take_options_by_keyword():
    """The steps take spark, the roots and the data positionally, every option by keyword,
    and return dataclasses that serialize themselves for the manifest."""
    import dataclasses
    import inspect
    import typing

    from helpers.classify import check_pipeline_model, train_classifier
    from helpers.eda import eda_summary
    from helpers.evaluate import linear_probe
    from helpers.features.extract import extract_features, featurize
    from helpers.features.store import feature_counts
    from helpers.reduce import fit_reduction

    positional = {
        extract_features: ["spark", "data_root", "output_root", "spec"],
        featurize: ["spark", "images", "spec"],
        fit_reduction: ["features"],
        train_classifier: ["reduced"],
        check_pipeline_model: ["spark", "model_uri", "reduced"],
        eda_summary: ["counts"],
        linear_probe: ["df", "column"],
        feature_counts: ["features"],
    }
    for function, names in positional.items():
        params = inspect.signature(function).parameters.values()
        given = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
        assert given == names, f"{function.__name__}: {given} not keyword-only"
    steps = (extract_features, fit_reduction, train_classifier, check_pipeline_model)
    for function in (*steps, eda_summary, feature_counts, linear_probe):
        returned = typing.get_type_hints(function)["return"]
        assert dataclasses.is_dataclass(returned), function.__name__
        assert callable(getattr(returned, "to_manifest", None)), returned.__name__
