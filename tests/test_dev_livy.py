"""The notebooks as EMR's JupyterHub runs them: sparkmagic's PySpark kernel sends each cell to
a real Apache Livy server (helpers.dev.livy), whose PySpark session runs it and writes the outputs.

The server is a session fixture on 127.0.0.1; without sparkmagic (``make livy``) or a Livy
distribution (none cached, no zip: Maven Central has no Livy repl jar), or on Spark 4 (Livy
0.9 is built for Spark 3 / Scala 2.12), the tests skip, naming why. Small data and random
weights keep them short: what is checked is the chain, all four notebooks included.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import psutil
import pytest
from conftest import write_jpeg
from papermill.exceptions import PapermillExecutionError

from helpers.dev.livy import (
    DIST_NAME,
    SHARED_DIST,
    LivyServer,
    check_digest,
    install,
    install_kernel,
    livy_home,
    livy_server,
    session_lost_note,
    sparkmagic_config,
    status,
    unsupported_spark,
)
from helpers.env import SPARKMAGIC_CONF_ENV
from helpers.features.store import read_features
from helpers.run import NOTEBOOKS, run_notebooks

#: Starts notebooks, a cluster, a server or a Spark driver of its own: `make test` only.
pytestmark = pytest.mark.slow


LIVY_NOTEBOOKS = NOTEBOOKS  # EDA, features, PCA + t-SNE, classifier

CLASSES = {"Apple Red": (200, 20, 30), "Banana": (230, 210, 40), "Lime": (60, 200, 40)}
SMALL = {  # parameters that keep each notebook to seconds on 2 cores
    "weights": "random",
    "image_size": 96,
    "batch_size": 8,
    "grid_per_class": 2,
    "eda_sample_per_class": 4,
    "tsne_sample": 18,
    "tsne_perplexity": 4.0,
}


@pytest.fixture(scope="session")
def livy(tmp_path_factory) -> LivyServer:
    """A Livy server with local[2] sessions for the whole run, always stopped after it."""
    if unsupported_spark():  # Spark 4 (constraints-spark4.txt): Livy 0.9 is for Spark 3
        pytest.skip(unsupported_spark())
    if importlib.util.find_spec("sparkmagic") is None:
        pytest.skip("sparkmagic is not installed: make livy (needs libkrb5-dev)")
    try:
        install()
    except FileNotFoundError as exc:
        pytest.skip(f"no Livy distribution: {exc}")
    state = tmp_path_factory.mktemp("livy")
    with livy_server("local[2]", state, sparkmagic_conf_dir=state / "sparkmagic") as server:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(SPARKMAGIC_CONF_ENV, server.sparkmagic_conf_dir)
            yield server


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    """3 classes (one with a space) x Training 4 + Test 2 JPEGs."""
    root = tmp_path_factory.mktemp("livy-data") / "fruits"
    for c, (label, color) in enumerate(CLASSES.items()):
        for split, count in (("Training", 4), ("Test", 2)):
            for i in range(count):
                write_jpeg(root / split / label / f"{i}_100.jpg", color, seed=10 * c + i)
    return root


@pytest.fixture(scope="module")
def livy_run(livy, small_tree, tmp_path_factory) -> Path:
    """The four notebooks through sparkmagic and Livy; their output_root."""
    output = tmp_path_factory.mktemp("livy-out")
    run_notebooks(
        {"data_root": str(small_tree), "output_root": str(output), **SMALL},
        LIVY_NOTEBOOKS,
        kernel="pysparkkernel",
    )
    return output


def test_livy_server_answers_and_sparkmagic_is_configured(livy):
    """Livy listens on 127.0.0.1; sparkmagic's config names it with EMR's settings."""
    assert livy.url.startswith("http://127.0.0.1:")
    assert livy.sessions() is not None
    config = json.loads(Path(livy.sparkmagic_conf_dir, "config.json").read_text())
    assert config["kernel_python_credentials"]["url"] == livy.url
    assert config["all_errors_are_fatal"] is True
    assert config["livy_session_startup_timeout_seconds"] >= 120
    assert config["custom_headers"]["X-Requested-By"]  # what Livy's CSRF protection asks for


def _post(url: str, headers: dict[str, str]) -> int:
    """The HTTP status of an empty JSON POST to ``url``."""
    request = urllib.request.Request(
        url, data=b"{}", headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (127.0.0.1)
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_livy_refuses_a_post_without_the_csrf_header(livy):
    """CSRF protection is on: a POST without X-Requested-By (what a web page can send from a
    browser) is refused before it reaches a session; with it, Livy handles the request
    (here: no such session); reading needs no header."""
    conf = (Path(livy.state_dir) / "conf" / "livy.conf").read_text()
    assert "livy.server.csrf-protection.enabled = true" in conf
    statements = f"{livy.url}/sessions/987654/statements"
    assert _post(statements, {}) == 400
    assert _post(f"{livy.url}/sessions", {}) == 400
    assert _post(statements, {"X-Requested-By": "anyone"}) == 404
    assert livy.sessions() is not None


def test_livy_notebooks_write_the_outputs(livy_run, small_tree):
    """The Livy session, not the kernel, wrote features, PCA, figures and the manifest."""
    manifest = json.loads((livy_run / "manifest.json").read_text())
    images = sum(1 for _ in small_tree.rglob("*.jpg"))
    assert manifest["features"]["rows"] == images and manifest["features"]["errors"] == 0
    assert manifest["eda"]["images"] == images
    assert manifest["pca"]["k"] >= 1
    assert manifest["classifier"]["check"]["images"] >= 1  # notebook 04: the saved model ran
    assert len(list((livy_run / "pipeline_model").glob("v=*/metadata"))) == 1
    assert any((livy_run / "features").rglob("*.parquet"))
    assert any((livy_run / "pca").rglob("*.parquet"))
    for figure in ("class_balance", "sample_grid", "pca_variance", "tsne"):
        assert (livy_run / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")


def test_livy_outputs_equal_the_plain_kernel_run(spark, livy_run, small_tree, tmp_path_factory):
    """Notebooks 02 and 03 in the plain Python kernel on the same images: the same features
    (1e-4 relative) and the same k as through Livy."""
    plain = tmp_path_factory.mktemp("plain-out")
    run_notebooks(
        {"data_root": str(small_tree), "output_root": str(plain), **SMALL},
        ("02_feature_extraction.ipynb", "03_pca_tsne.ipynb"),
    )
    rows = [
        read_features(spark, str(root)).toPandas().set_index("path").sort_index()
        for root in (livy_run, plain)
    ]
    assert list(rows[0].index) == list(rows[1].index)
    np.testing.assert_allclose(
        np.stack(rows[0]["features"]), np.stack(rows[1]["features"]), rtol=1e-4, atol=1e-5
    )
    k = [json.loads((root / "manifest.json").read_text())["pca"]["k"] for root in (livy_run, plain)]
    assert k[0] == k[1]


def test_livy_notebooks_show_figures_and_tables(livy_run):
    """Every figure cell has an image/png output under sparkmagic; tables come back as text."""
    shown = {}
    for name in LIVY_NOTEBOOKS:
        notebook = nbformat.read(livy_run / "notebooks" / name, as_version=4)
        assert notebook.metadata["papermill"]["exception"] in (None, False)
        outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
        shown[name] = sum("image/png" in out.get("data", {}) for out in outputs)
        if name == "01_eda.ipynb":  # the per-class table, as pandas prints it
            text = "".join(out.get("text", "") for out in outputs)
            assert "Apple Red" in text and "Banana" in text
        if name == "04_classifier.ipynb":  # its last line: the saved model's stages
            text = "".join(out.get("text", "") for out in outputs)
            assert "stages, weights sha256" in text
    assert shown == {
        "01_eda.ipynb": 5,
        "02_feature_extraction.ipynb": 0,
        "03_pca_tsne.ipynb": 2,
        "04_classifier.ipynb": 0,
    }


def test_livy_spark_error_fails_the_run_with_its_message(livy, livy_run, tmp_path):
    """A Spark failure inside the Livy session (a corrupt Parquet file) stops papermill with
    Spark's own message, and the session is not left behind."""
    broken = tmp_path / "out"
    shutil.copytree(livy_run / "features", broken / "features")
    parquet = next((broken / "features").rglob("*.parquet"))
    parquet.write_bytes(b"not parquet at all")
    with pytest.raises(PapermillExecutionError) as failure:
        run_notebooks(
            {"output_root": str(broken), **SMALL},
            notebooks=("03_pca_tsne.ipynb",),
            kernel="pysparkkernel",
        )
    message = str(failure.value)
    assert parquet.name in message and "Parquet" in message, message[-2000:]
    assert all(s["state"] in ("dead", "killed", "shutting_down") for s in livy.sessions())


def _kill_session_driver(livy: LivyServer, started: float) -> int | None:
    """SIGKILL the driver of the first Livy session seen running a statement; its pid."""
    while time.monotonic() - started < 300:
        if any(s["state"] == "busy" for s in livy.sessions()):
            for process in psutil.process_iter(["cmdline"]):
                if any("RSCDriverBootstrapper" in arg for arg in process.info["cmdline"] or []):
                    process.kill()
                    return process.pid
        time.sleep(0.2)
    return None


def test_livy_session_that_dies_fails_the_run_naming_livys_log(livy, small_tree, tmp_path):
    """The session's driver killed while notebook 02 runs (a node lost, the OOM killer): the
    run fails, saying the session died and naming Livy's log with the exit it recorded."""
    killed: list[int | None] = []
    killer = threading.Thread(
        target=lambda: killed.append(_kill_session_driver(livy, time.monotonic())), daemon=True
    )
    killer.start()
    with pytest.raises(PapermillExecutionError) as failure:
        run_notebooks(
            {"data_root": str(small_tree), "output_root": str(tmp_path / "out"), **SMALL},
            notebooks=("02_feature_extraction.ipynb",),
            kernel="pysparkkernel",
        )
    killer.join(10)
    assert killed and killed[0] is not None
    message = str(failure.value)
    server_log = Path(livy.state_dir) / "logs" / "livy-server.out"
    assert f"The Livy session died. Livy's log: {server_log}" in message, message[-1500:]
    assert "exited with code 137" in message, message[-1500:]


def test_session_lost_note_names_emr_log_for_a_livy_it_did_not_start(tmp_path):
    """With sparkmagic configured for another Livy (EMR's), the note names EMR's log; an
    error that is not a lost session gets no note."""
    (tmp_path / "config.json").write_text(json.dumps(sparkmagic_config("http://10.0.0.1:8998")))
    lost = 'HttpClientException: ... {"msg":"requirement failed: Session isn\'t active."}'
    note = session_lost_note(lost, tmp_path)
    assert note is not None and "/var/log/livy/" in note and "%%logs" in note
    assert session_lost_note("Py4JJavaError: ... ParquetDecodingException", tmp_path) is None


def test_kernel_goes_into_this_environment(tmp_path, monkeypatch):
    """The kernel lands in this interpreter's ``sys.prefix``, not where a ``jupyter``
    command found on ``$PATH`` puts it (another activated environment got it once)."""
    if importlib.util.find_spec("sparkmagic") is None:
        pytest.skip("sparkmagic is not installed: make livy (needs libkrb5-dev)")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "env"))
    installed = install_kernel()
    assert installed == tmp_path / "env" / "share" / "jupyter" / "kernels" / "pysparkkernel"
    assert json.loads((installed / "kernel.json").read_text())["language"] == "python"


def test_livy_kernel_without_server_names_the_fix(tmp_path, monkeypatch):
    """Without a sparkmagic config, the run stops before any notebook, naming the command."""
    monkeypatch.setenv(SPARKMAGIC_CONF_ENV, str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="python -m helpers.livy start"):
        run_notebooks({"output_root": str(tmp_path / "out")}, kernel="pysparkkernel")
    assert not (tmp_path / "out" / "notebooks").exists()


def test_livy_sessions_on_the_standalone_cluster(
    livy, cluster, small_tree, tmp_path_factory, monkeypatch
):
    """Given a master URL (helpers.cluster), Livy's sessions run there, as EMR's run on YARN
    executors: executors in their own JVMs run the project's Python, pandas UDFs included,
    and notebook 02 through the PySpark kernel featurizes every image there."""
    state = tmp_path_factory.mktemp("livy-cluster")
    code = (
        "import sys\n"
        "from pyspark.sql import functions as F\n"
        "from helpers.spark.session import get_spark\n"
        "session = get_spark()\n"
        "pythons = session.sparkContext.parallelize(range(4), 2)"
        ".map(lambda _: sys.executable).distinct().collect()\n"
        "doubled = session.range(4).select(F.pandas_udf(lambda c: c * 2, 'long')('id'))\n"
        "print(session is spark, session.sparkContext.master, pythons,"
        " sorted(r[0] for r in doubled.collect()))"
    )
    output_root = tmp_path_factory.mktemp("livy-cluster-out")
    with livy_server(cluster.master_url, state, sparkmagic_conf_dir=state / "sparkmagic") as server:
        output = server.run_code(code)
        monkeypatch.setenv(SPARKMAGIC_CONF_ENV, server.sparkmagic_conf_dir)
        run_notebooks(
            {"data_root": str(small_tree), "output_root": str(output_root), **SMALL},
            ("02_feature_extraction.ipynb",),
            kernel="pysparkkernel",
        )
    assert output["status"] == "ok", output
    features = json.loads((output_root / "manifest.json").read_text())["features"]
    assert features["rows"] == sum(1 for _ in small_tree.rglob("*.jpg"))
    assert features["errors"] == 0
    # the cluster's secret reached the sessions through a file of this user's, no log line
    secret = json.loads(Path(cluster.state_dir, "cluster.json").read_text())["secret"]
    defaults = state / "spark-conf" / "spark-defaults.conf"
    assert secret in defaults.read_text() and defaults.stat().st_mode & 0o777 == 0o600
    assert not [p for p in state.rglob("*.out") if secret in p.read_text(errors="replace")]
    assert output["data"]["text/plain"] == (
        f"True {cluster.master_url} {[sys.executable]} [0, 2, 4, 6]"
    )


def test_livy_refuses_spark_4_naming_why():
    """Livy 0.9 runs Spark 3 (Scala 2.12) only: on Spark 4 the reason is one sentence."""
    assert unsupported_spark("3.5.8") == ""
    reason = unsupported_spark("4.0.2")
    assert "Spark 3 / Scala 2.12" in reason and "4.0.2" in reason and "pyspark 3.5" in reason


def test_livy_status_without_server(tmp_path):
    """status of a folder where no server was started says so."""
    assert status(tmp_path) == {"running": False, "state_dir": str(tmp_path)}


def test_install_checks_the_zip_against_the_digest_beside_it(tmp_path, monkeypatch):
    """A zip whose SHA-256 (``SHA256SUMS``) or SHA-512 (Apache's ``.sha512``) differs from the
    one published beside it is refused before anything is unpacked; a matching one goes on."""
    monkeypatch.setenv("FRUITS_LIVY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FRUITS_LIVY_HOME", raising=False)
    archive = tmp_path / "dist" / f"{DIST_NAME}.zip"
    (tmp_path / "not-livy").mkdir()
    (tmp_path / "not-livy" / "README").write_text("not Livy")
    shutil.make_archive(str(archive.with_suffix("")), "zip", tmp_path / "not-livy")
    sums = archive.with_name("SHA256SUMS")
    sums.write_text(f"{'0' * 64}  {archive.name}\n")
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, not the 0{64} published"):
        install(archive)
    assert not livy_home().exists()
    sums.write_text(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}\n")
    with pytest.raises(FileNotFoundError, match="is not a Livy"):  # checked, then unpacked
        install(archive)
    sums.write_text(f"{'0' * 64}  other.zip\n")
    with pytest.raises(ValueError, match="does not list"):
        install(archive)
    sums.unlink()
    sha512 = archive.with_name(archive.name + ".sha512")
    sha512.write_text(f"{hashlib.sha512(archive.read_bytes()).hexdigest()}  {archive.name}\n")
    assert check_digest(archive) == "sha512 matches the published digest"
    sha512.write_text("f" * 128)
    with pytest.raises(ValueError, match="sha512"):
        install(archive)
    sha512.unlink()
    assert check_digest(archive) == "no published digest beside it"
    if SHARED_DIST.is_file():  # the project's offline copy matches its SHA256SUMS
        assert check_digest(SHARED_DIST) == "sha256 matches the published digest"
