"""Cluster mode: the notebooks on a Spark standalone cluster (2 workers x 1 core on
127.0.0.1, separate executor JVMs), features equal to local mode, and executor and worker
losses survived; plus the executor settings every cluster configuration carries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import DATA_SAMPLE

from helpers.dev.cluster import (
    AUTH_FILE,
    EXECUTOR_CLASS,
    STATE_FILE,
    WORKER_CLASS,
    alive_workers,
    ensure_workers,
    status,
)
from helpers.env import JIT_ENV
from helpers.features.extract import extract_features
from helpers.features.spec import FeatureSpec
from helpers.paths import PROJECT_ROOT
from helpers.run import NOTEBOOKS, main, run_notebooks
from helpers.spark.cds import driver_java_options, java_feature
from helpers.spark.jvm import jvm_pid
from helpers.spark.session import cluster_properties, headless, java_options, master_conf
from helpers.spark.settings import (
    JIT_OPTION,
    LISTING_CONF,
    PYTHON_WORKER_CONF,
    VECTOR_JAVA,
    VECTOR_OPTION,
    executor_conf,
)

#: Starts notebooks, a cluster, a server or a Spark driver of its own: `make test` only.
pytestmark = pytest.mark.slow

BATCH = 16
ARROW = 64  # 320 images in 2 tasks of 3 Arrow batches: a task can be caught half-way
SIZE = 96  # small images: the cluster's behaviour, not the CNN's cost, is under test
FILES = len(list(DATA_SAMPLE.rglob("*.jpg")))

# The driver of the fault runs: the notebooks' feature step on the cluster, once per run
# folder (its markers/ and out/), all in one application, in its own process (this one
# already has its local session).
# Each worker leaves one empty file per Arrow batch it featurized in the run's markers/,
# ``<partition>-<attempt>-<batch>-<pid>``, so the test sees the tasks under way and retried.
DRIVER = """
import os
import sys
import helpers.features.udf as udf
from helpers.features.extract import extract_features
from helpers.features.spec import FeatureSpec
from helpers.spark.session import get_spark


def marking(original, folder):
    done = {}
    def featurize_batch(*args, **kwargs):
        from pyspark import TaskContext
        result = original(*args, **kwargs)
        context = TaskContext.get()
        key = (context.partitionId(), context.attemptNumber())
        batch = done[key] = done.get(key, -1) + 1
        name = f"{key[0]}-{key[1]}-{batch}-{os.getpid()}"
        open(os.path.join(folder, name), "w").close()
        return result
    return featurize_batch

master, data, weights, size, batch, arrow, *runs = sys.argv[1:]
udf.ARROW_IMAGES = int(arrow)
spark = get_spark("fruits-fault", master=master, driver_memory="1g")
original = udf.featurize_batch
spec = FeatureSpec(weights=weights, image_size=int(size), batch_size=int(batch))
for run in runs:
    udf.featurize_batch = marking(original, os.path.join(run, "markers"))
    extract_features(spark, data, os.path.join(run, "out"), spec)
spark.stop()
"""


def _features(out: Path) -> pd.DataFrame:
    rows = pd.read_parquet(out / "features")
    assert rows["path"].is_unique, "an image has more than one row"
    return rows.set_index("path").sort_index()


def _max_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    assert list(a.index) == list(b.index)
    return float(np.abs(np.stack(a["features"]) - np.stack(b["features"])).max())


@pytest.fixture(scope="module")
def local_features(spark, weights, tmp_path_factory) -> pd.DataFrame:
    """data_sample featurized by the local session (the reference)."""
    out = tmp_path_factory.mktemp("local-out")
    spec = FeatureSpec(weights=weights, image_size=SIZE, batch_size=BATCH)
    extract_features(spark, str(DATA_SAMPLE), str(out), spec)
    return _features(out)


@pytest.fixture(scope="module")
def cluster_run(cluster, weights, tmp_path_factory) -> Path:
    """The three notebooks on data_sample through helpers.run --spark-master: output_root."""
    out = tmp_path_factory.mktemp("cluster-out")
    code = main(
        [
            "--data-root",
            str(DATA_SAMPLE),
            "--output-root",
            str(out),
            "--weights",
            weights,
            "--spark-master",
            cluster.master_url,
            *("-p", "image_size", str(SIZE), "-p", "batch_size", str(BATCH)),
            *("-p", "tsne_sample", "100", "-p", "eda_sample_per_class", "5"),
            *("-p", "grid_classes", "4", "-p", "grid_per_class", "2"),
        ]
    )
    assert code == 0
    return out


def test_cluster_is_up_with_two_one_core_workers(cluster):
    """The session cluster: 2 ALIVE workers of 1 core, as the master reports them."""
    report = status(cluster.state_dir)
    assert report["running"] and report["master_url"] == cluster.master_url
    assert [(w["state"], w["cores"]) for w in report["workers"]] == [("ALIVE", 1)] * 2


def test_executor_settings_reach_every_cluster():
    """Standalone sessions, EMR's spark-defaults and the Databricks bundle all run the
    executors' Python through the TensorFlow-preloading daemon, with worker reuse."""
    import yaml

    from helpers.emr import EmrSettings, configurations

    assert PYTHON_WORKER_CONF["spark.python.daemon.module"] == "helpers.daemon"
    standalone = executor_conf("/opt/venv/bin/python")
    assert standalone["spark.pyspark.python"] == "/opt/venv/bin/python"
    emr = {c["Classification"]: c for c in configurations(EmrSettings(bucket="fruits-bucket"))}
    bundle = yaml.safe_load((PROJECT_ROOT / "databricks.yml").read_text())
    databricks = bundle["targets"]["dev"]["resources"]["jobs"]["fruits_pipeline"]["job_clusters"][0]
    for conf in (standalone, emr["spark-defaults"]["Properties"]):
        assert PYTHON_WORKER_CONF.items() <= conf.items()
    assert PYTHON_WORKER_CONF.items() <= databricks["new_cluster"]["spark_conf"].items()


def test_sessions_on_a_master_list_on_the_driver(monkeypatch):
    """Sessions started on any master list folders on the driver (no 100-task listing job);
    only a cluster on this machine gets the driver's address and the executors' archive."""
    here, yarn = master_conf("spark://127.0.0.1:7077"), master_conf("yarn")
    for conf in (here, yarn, master_conf("local[2]")):
        assert LISTING_CONF.items() <= conf.items()
    assert executor_conf().items() <= yarn.items() and here["spark.driver.host"] == "127.0.0.1"
    assert "spark.driver.host" not in yarn and "spark.executor.extraJavaOptions" not in yarn
    # the driver listens on the loopback where it is this machine's only, not on a cluster
    for conf in (here, master_conf("local[2]")):
        assert conf["spark.driver.bindAddress"] == conf["spark.driver.host"] == "127.0.0.1"
    for master in ("yarn", "spark://10.0.0.5:7077", "k8s://https://k8s:443"):
        assert "spark.driver.bindAddress" not in master_conf(master)
    assert here["spark.executor.extraJavaOptions"] == here["spark.driver.extraJavaOptions"]
    assert here["spark.executor.extraJavaOptions"] == java_options()
    assert JIT_OPTION in java_options()  # C1 only, unless FRUITS_JIT=full
    monkeypatch.setenv(JIT_ENV, "full")
    assert JIT_OPTION not in master_conf("local[2]")["spark.driver.extraJavaOptions"]
    monkeypatch.delenv(JIT_ENV)
    ml = master_conf("spark://127.0.0.1:7077", ml=True)
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        assert JIT_OPTION not in ml[key]
        assert (VECTOR_OPTION in ml[key]) == ((java_feature() or 0) >= VECTOR_JAVA)


#: A session with ``ml=True`` in its own process (a JVM's options are set at its start):
#: the BLAS class Spark ML's math runs on.
_ML_SESSION = """
from helpers.spark.session import get_spark
spark = get_spark("fruits-ml-test", master="local[1]", ml=True)
print(spark.sparkContext._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName())
spark.stop()
"""


@pytest.mark.slow
def test_ml_session_runs_spark_ml_on_the_vector_api() -> None:
    """``get_spark(ml=True)`` on Java 16+: Spark ML's BLAS is the Vector API's, not F2J's."""
    if (java_feature() or 0) < VECTOR_JAVA:
        pytest.skip(f"Java {java_feature()} has no jdk.incubator.vector")
    done = subprocess.run(
        [sys.executable, "-c", _ML_SESSION], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "VectorBLAS" in done.stdout.strip().splitlines()[-1], done.stdout


def test_bad_spark_master_fails_before_any_notebook(tmp_path):
    """A master that is not a Spark URL stops the run with one message naming it."""
    assert main(["--output-root", str(tmp_path), "--spark-master", "127.0.0.1:7077"]) == 2
    with pytest.raises(ValueError, match="spark_master '127.0.0.1:7077' is not a Spark master"):
        run_notebooks({"spark_master": "127.0.0.1:7077", "output_root": str(tmp_path)})


def test_notebooks_on_the_cluster_equal_local_mode(cluster_run, local_features):
    """All three notebooks ran on the cluster; every file once, features as in local mode."""
    features = _features(cluster_run)
    assert len(features) == FILES and features["error"].isna().all()
    assert _max_diff(features, local_features) <= 1e-4
    manifest = json.loads((cluster_run / "manifest.json").read_text())
    assert manifest["eda"]["images"] == manifest["features"]["rows"] == FILES
    assert manifest["features"]["images_decoded"] == FILES
    assert manifest["pca"]["k"] >= 1 and any((cluster_run / "pca_model").glob("v=*/metadata"))
    for name in NOTEBOOKS:
        executed = json.loads((cluster_run / "notebooks" / name).read_text())
        assert executed["metadata"]["papermill"]["exception"] in (None, False)


def test_executors_map_the_class_archive(cluster, cluster_run):
    """Executors of a cluster on this machine map the drivers' class archive, and the JVM
    takes it (it warns, and loads every class again, when the archive does not match)."""
    option = driver_java_options()
    if not option:
        pytest.skip("no class archive here (make setup makes it)")
    logs = sorted(Path(cluster.state_dir).glob("work-*/app-*/*/stderr"))
    assert logs
    for stderr in logs:
        assert option in stderr.read_text().splitlines()[0]  # the executor's command
        assert "Unable to use shared archive" not in (stderr.parent / "stdout").read_text()


def _wait(condition: Callable[[], object], what: str, driver: subprocess.Popen) -> object:
    """Poll ``condition`` (observable state: marker files, the master's JSON) until true."""
    deadline = time.monotonic() + 300
    while not (result := condition()):
        assert driver.poll() is None, f"the driver exited ({driver.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after 300 s"
        time.sleep(0.02)
    return result


def _ancestor(pid: int, main_class: str) -> psutil.Process:
    """The JVM running ``main_class`` above the Python worker ``pid``."""
    for parent in psutil.Process(pid).parents():
        if main_class in parent.cmdline():
            return parent
    raise AssertionError(f"no {main_class} above Python worker {pid}")


@pytest.fixture(scope="module")
def fault_runs(cluster, weights, tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """Featurize data_sample twice on the cluster, in one driver: once a task of the first
    run is half-way, SIGKILL the executor JVM running it; in the second, its whole worker.
    Per kill ('executor', 'worker'): the run's output root and the progress markers of the
    UDF (partition-attempt-batch-pid)."""
    root = tmp_path_factory.mktemp("faults")
    kills = {"executor": EXECUTOR_CLASS, "worker": WORKER_CLASS}
    for kill in kills:
        (root / kill / "markers").mkdir(parents=True)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, cluster.master_url, str(DATA_SAMPLE), weights]
        + [str(SIZE), str(BATCH), str(ARROW)]
        + [str(root / kill) for kill in kills],
        cwd=PROJECT_ROOT,
    )
    caught = {}
    try:
        for kill, main_class in kills.items():
            markers = root / kill / "markers"
            first = _wait(lambda m=markers: sorted(os.listdir(m)), f"{kill} run batch", driver)[0]
            partition, _, _, pid = first.split("-")
            python_worker = psutil.Process(int(pid))
            # the Python worker was forked from the project's daemon, under an executor JVM
            assert "helpers.daemon" in python_worker.parent().cmdline()
            _ancestor(int(pid), main_class).send_signal(signal.SIGKILL)
            caught[kill] = partition
        assert driver.wait(timeout=600) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    runs = {}
    for kill, partition in caught.items():
        done = sorted(os.listdir(root / kill / "markers"))
        # the task caught half-way ran again: the kill hit featurization under way
        assert any(m.startswith(f"{partition}-") and m.split("-")[1] != "0" for m in done), done
        runs[kill] = (root / kill / "out", done)
    return runs


def test_executor_killed_mid_task(fault_runs, cluster_run):
    """SIGKILL one executor JVM while it featurizes: Spark runs its task again, every image
    has exactly one row, features identical to the clean run."""
    features, clean = _features(fault_runs["executor"][0]), _features(cluster_run)
    assert len(features) == FILES and features["error"].isna().all()
    assert _max_diff(features, clean) == 0.0


def test_worker_killed_mid_task(cluster, fault_runs, cluster_run):
    """SIGKILL a whole worker (its executor goes with it): the job finishes on the other
    one, every image exactly once, features identical; then the worker is replaced."""
    try:
        features, clean = _features(fault_runs["worker"][0]), _features(cluster_run)
        assert len(features) == FILES and features["error"].isna().all()
        assert _max_diff(features, clean) == 0.0
        assert len(alive_workers(cluster.webui_url)) == 1
    finally:
        ensure_workers(cluster)  # the session cluster has its 2 workers again
    assert len(alive_workers(cluster.webui_url)) == 2


# A driver of the cluster: its listening sockets, the UI and a job.
CHECK_DRIVER = """
import json, sys
import psutil
from helpers.spark.session import get_spark
spark = get_spark("fruits-auth", master=sys.argv[1], driver_memory="1g")
count = spark.sparkContext.parallelize(range(10), 2).count()
jvms = psutil.Process().children(recursive=True)
listening = sorted({c.laddr.ip for p in jvms for c in p.net_connections() if c.status == "LISTEN"})
print(json.dumps({"count": count, "ui": spark.sparkContext.uiWebUrl, "listening": listening,
                  "authenticate": spark.conf.get("spark.authenticate")}))
spark.stop()
"""

# A driver that does not take the cluster's secret (plain pyspark): none, or a wrong one.
FOREIGN_DRIVER = """
import sys
from pyspark.sql import SparkSession
builder = SparkSession.builder.master(sys.argv[1]).appName(sys.argv[2])
builder = builder.config("spark.driver.host", "127.0.0.1")
if sys.argv[3:]:
    builder = builder.config("spark.authenticate", "true")
    builder = builder.config("spark.authenticate.secret", sys.argv[3])
builder.getOrCreate().sparkContext.parallelize(range(10)).count()
print("RAN A JOB")
"""

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def test_cluster_secret_is_private(cluster):
    """The generated secret is in the 0600 record and properties file only: on no command
    line (``ps``), in no log, not in status nor in the record's repr."""
    state = Path(cluster.state_dir)
    secret = json.loads((state / STATE_FILE).read_text())["secret"]
    assert len(secret) == 64 and secret in (state / AUTH_FILE).read_text()
    for name in (STATE_FILE, AUTH_FILE):
        assert (state / name).stat().st_mode & 0o777 == 0o600
    commands = []
    for process in psutil.process_iter(["cmdline"]):
        commands.append(" ".join(process.info["cmdline"] or []))
    assert not [c for c in commands if secret in c]
    assert any(str(state / AUTH_FILE) in c for c in commands)  # what they read instead
    for path in state.rglob("*"):
        if path.is_file() and path.name not in (STATE_FILE, AUTH_FILE):
            assert secret not in path.read_text(errors="replace"), path
    assert secret not in json.dumps(status(cluster.state_dir)) and secret not in repr(cluster)


def test_cluster_refuses_drivers_without_its_secret(cluster):
    """A driver without the secret, or with another one, cannot register: the master
    answers it with SASL it does not speak (or a secret that does not match), and no
    application of theirs appears on the master."""
    drivers = {
        name: subprocess.Popen(
            [sys.executable, "-c", FOREIGN_DRIVER, cluster.master_url, name, *secret],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=PROJECT_ROOT,
        )
        for name, secret in (("fruits-no-secret", []), ("fruits-wrong-secret", ["0" * 64]))
    }
    try:
        for driver in drivers.values():
            lines = []
            for line in driver.stdout:  # until its first failed attempt to reach the master
                lines.append(line)
                if "Failed to connect to master" in line or "RAN A JOB" in line:
                    break
            output = "".join(lines)
            assert "Failed to connect to master" in output, output[-3000:]
            assert "RAN A JOB" not in output
        apps = {a["name"] for a in cluster.master_state().get("activeapps", [])}
        assert not apps & set(drivers)
    finally:
        for driver in drivers.values():
            driver.kill()
            driver.wait()
            driver.stdout.close()


def test_cluster_driver_gets_the_secret_and_listens_on_the_loopback(cluster):
    """get_spark on the cluster's URL finds its secret (from the master process, wherever
    its state folder is) and runs a job; the driver listens on 127.0.0.1 only, UI off
    (a script: headless)."""
    assert cluster_properties(cluster.master_url) == Path(cluster.state_dir) / AUTH_FILE
    assert cluster_properties("spark://127.0.0.1:1") is None
    assert cluster_properties("yarn") is None
    result = subprocess.run(
        [sys.executable, "-c", CHECK_DRIVER, cluster.master_url],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["count"] == 10 and report["authenticate"] == "true"
    assert report["ui"] is None
    assert report["listening"] and set(report["listening"]) <= set(LOOPBACK)


def test_local_session_listens_on_the_loopback_only(spark):
    """The tests' local session (headless: pytest is no notebook) has no UI, and its JVM
    listens on 127.0.0.1 only (RPC, block manager)."""
    assert headless()
    assert spark.sparkContext.uiWebUrl is None
    assert spark.conf.get("spark.driver.bindAddress") == "127.0.0.1"
    jvm = psutil.Process(jvm_pid(spark))  # not the other servers a test run may have started
    addresses = {c.laddr.ip for c in jvm.net_connections() if c.status == "LISTEN"}
    assert addresses and addresses <= set(LOOPBACK)


NOTEBOOK_CELL = """
import json, psutil
from helpers.spark.session import get_spark
spark = get_spark("fruits-ui", master="local[1]", driver_memory="1g")
jvms = [p for p in psutil.Process().children(recursive=True) if "java" in p.name()]
print(json.dumps({"ui": spark.sparkContext.uiWebUrl, "listening": sorted({
    c.laddr.ip for p in jvms for c in p.net_connections() if c.status == "LISTEN"})}))
spark.stop()
"""


def test_notebook_driver_ui_on_the_loopback_and_off_under_papermill(tmp_path):
    """In a notebook kernel someone may look at: the UI, on 127.0.0.1 only. In a kernel
    that papermill started (helpers.run, the papermill command): no UI."""
    import nbformat
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", cwd=str(PROJECT_ROOT))
    try:
        outputs = []
        reply = client.execute_interactive(NOTEBOOK_CELL, timeout=300, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok", reply["content"]
        text = "".join(o["content"].get("text", "") for o in outputs if o["msg_type"] == "stream")
        interactive = json.loads(text.strip().splitlines()[-1])
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert interactive["ui"].startswith("http://127.0.0.1:")
    assert interactive["listening"] and set(interactive["listening"]) <= set(LOOPBACK)

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK_CELL)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, tmp_path / "ui.ipynb")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(tmp_path / "ui.ipynb"),
            str(tmp_path / "out.ipynb"),
        ],
        check=True,
        capture_output=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    text = "".join(o.get("text", "") for o in executed.cells[0].outputs)
    assert json.loads(text.strip().splitlines()[-1])["ui"] is None
