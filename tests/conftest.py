"""Shared fixtures: one local SparkSession per run, a standalone cluster, the offline weights,
tiny image sets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.paths import PROJECT_ROOT

SHARED = PROJECT_ROOT.parent / "shared"
WEIGHTS_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
WEIGHTS_FILE = SHARED / "models" / WEIGHTS_NAME
FRUITS360 = SHARED / "data" / "fruits360"
DATA_SAMPLE = PROJECT_ROOT / "data_sample"

#: Feature settings for tests that write feature rows of their own making.
SETTINGS = {"model_name": "mobilenet_v2", "weights_sha256": "0" * 64, "image_size": 224}

# This machine cannot download Keras weights: point the default at the local copy.
if WEIGHTS_FILE.is_file():
    os.environ.setdefault("FRUITS_WEIGHTS", str(WEIGHTS_FILE))


#: How the ``connect_remote`` fixture's skips begin (in CI they fail the test).
CONNECT_UNAVAILABLE = "no Spark Connect server here"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In CI (``$CI``), a test of a path that must stay tested fails instead of skipping:
    a Livy test with the Livy zip at ``../shared/livy/`` and a Spark Livy runs on; a test
    whose Spark Connect server (``connect_remote``) could not start."""
    outcome = yield
    report = outcome.get_result()
    from helpers import env

    if not (report.skipped and env.get("CI")):
        return
    if item.module.__name__ == "test_dev_livy":
        from helpers.dev.livy import SHARED_DIST, unsupported_spark

        if SHARED_DIST.is_file() and not unsupported_spark():
            report.outcome = "failed"
            report.longrepr = (
                f"a Livy test skipped in CI although {SHARED_DIST} is here "
                f"({report.longrepr}): make livy (sparkmagic, libkrb5-dev) must have failed"
            )
    elif CONNECT_UNAVAILABLE in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = (
            f"the Spark Connect server did not start in CI ({report.longrepr}): the "
            "'connect' extra (make setup) or the server's jar (make jars) must be missing"
        )


def pytest_report_header(config) -> list[str]:
    """The set under test, first in the log: Spark, its Hadoop and Scala, Python, numpy."""
    import platform

    import pandas
    import pyspark

    from helpers.spark.versions import hadoop_version, scala_version

    return [
        f"fruits set: Spark {pyspark.__version__} (Hadoop {hadoop_version()}, Scala "
        f"{scala_version(pyspark.__version__)}), Python {platform.python_version()}, "
        f"numpy {np.__version__}, pandas {pandas.__version__}"
    ]


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session for the whole run."""
    from helpers.spark.session import get_spark

    # local[2,3]: two cores, and a failed task is tried up to 3 times, as on a cluster
    session = get_spark("fruits-tests", master="local[2,3]", driver_memory="2g")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A Spark standalone cluster on 127.0.0.1 (2 workers x 1 core), started once, always stopped.

    Its executors are separate JVMs, as on EMR or Databricks; sessions reach it through
    subprocesses (papermill kernels, a driver script), as this process has its local session.
    """
    from helpers.dev.cluster import standalone_cluster

    with standalone_cluster(2, 1, "2g", tmp_path_factory.mktemp("spark-cluster")) as running:
        yield running


@pytest.fixture(scope="session")
def weights() -> str:
    """The offline ImageNet MobileNetV2 weights (skips when ../shared is absent)."""
    if not WEIGHTS_FILE.is_file():
        pytest.skip(f"offline weights not found at {WEIGHTS_FILE}")
    return str(WEIGHTS_FILE)


@pytest.fixture(scope="session")
def fruits360() -> Path:
    """The real Fruits-360 subset beside the repository (skips when absent)."""
    if not FRUITS360.is_dir():
        pytest.skip(f"real Fruits-360 images not found at {FRUITS360}")
    return FRUITS360


def write_jpeg(path: Path, color: tuple[int, int, int], size: int = 100, seed: int = 0) -> Path:
    """A small noisy JPEG of one colour on white, so no two are identical."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), 255, dtype=np.uint8)
    pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = color
    pixels = np.clip(pixels + rng.integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """A Fruits-360-shaped tree: 2 classes (one with a space) x Training 3 + Test 2."""
    colors = {"Apple Red": (200, 20, 30), "Banana": (230, 210, 40)}
    for split, count in (("Training", 3), ("Test", 2)):
        for c, (label, color) in enumerate(colors.items()):
            for i in range(count):
                write_jpeg(tmp_path / split / label / f"{i}_100.jpg", color, seed=100 * c + i)
    return tmp_path


def run_script(script: str, *args: str, log: Path) -> int:
    """Run the Python ``script`` with ``args`` in a new process, its output in ``log``; its
    return code (``-9``: it killed itself). A file, not a pipe: no wait for an orphaned JVM."""
    with log.open("wb") as sink:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    return done.returncode


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's AWS API server on 127.0.0.1 (a free port) for the block; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


#: Image file names that Hadoop's listing hides or that a URI or a glob would misread, each
#: a real JPEG (paths relative to a class folder; a folder part is hidden or odd itself).
ODD_IMAGE_NAMES = (
    "_underscore.jpg",
    ".dot.jpg",
    "percent%20.jpg",
    "hash#1.jpg",
    "question?.jpg",
    "brace{1,2}.jpg",
    "star*.jpg",
    "[bracket].jpg",
    "key=value.jpg",
    "with space.jpg",
    "MiXeD.JpG",
    "ünïcödé.jpg",
    "_hidden folder/a.jpg",
    ".hidden/b.jpg",
    "part=1/c.jpg",
)
#: Names with an image extension that hold no image: a row with an error each.
ODD_NOT_IMAGES = ("._companion.jpg",)  # macOS AppleDouble metadata beside a copied file
#: Files without an image extension: not read, named in the listing with the reason.
ODD_IGNORED = (".DS_Store", "notes.txt", "_SUCCESS")


def write_odd_names(folder: Path) -> None:
    """A real JPEG under each of :data:`ODD_IMAGE_NAMES`, plus the other odd files."""
    for i, name in enumerate(ODD_IMAGE_NAMES):
        write_jpeg(folder / name, (30 + 12 * i, 160, 90), seed=500 + i)
    for name in ODD_NOT_IMAGES:
        (folder / name).write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    for name in ODD_IGNORED:
        (folder / name).write_text("not an image")


def crash_first_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the features UDF's Python worker die at its first batch in the first attempt of
    task 0, so that Spark must retry it. The wrapper reaches the workers pickled by value
    (this module is not importable there); the pipeline itself has no fault branch."""
    import sys

    from pyspark import cloudpickle

    import helpers.features.udf as udf

    original = udf.featurize_batch

    def crashing(*args, **kwargs):
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None and context.partitionId() == 0 and context.attemptNumber() == 0:
            os._exit(1)
        return original(*args, **kwargs)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(udf, "featurize_batch", crashing)


@pytest.fixture(scope="session")
def connect_remote(tmp_path_factory) -> Iterator[str]:
    """The ``sc://`` URL of a Spark Connect server (local[2], ANSI SQL on) on 127.0.0.1 for
    the whole run, its token (Spark 4) in ``$SPARK_CONNECT_AUTHENTICATE_TOKEN`` meanwhile, so
    that clients here and in child processes (notebook kernels) authenticate; stopped after.
    Skips, naming why, without the client's packages or the server's jar."""
    from helpers.dev.connect import connect_server, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(f"{CONNECT_UNAVAILABLE}: {reason}")
    with connect_server("local[2]", tmp_path_factory.mktemp("connect")) as server:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in server.client_env().items():
                patch.setenv(name, value)
            yield server.url
