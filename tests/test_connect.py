"""The four notebooks as Databricks serverless and standard access mode run them: through a
Spark Connect session (``spark_remote``), against a real Spark Connect server on 127.0.0.1
(the ``connect_remote`` fixture, ANSI SQL on as on serverless).

The Connect client has no SparkContext, RDDs, broadcasts, accumulators or py4j: a notebook
that reached one of them would fail here. On Spark 4 all four notebooks run, and their
outputs equal a classic run's on the same real images; on Spark 3.5, whose Connect has no
``pyspark.ml``, notebooks 01 and 02 run and 03 and 04 stop at once, saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import run_script
from papermill.exceptions import PapermillExecutionError
from pyspark.ml import PipelineModel

from helpers.features.store import read_features
from helpers.outputs import published
from helpers.run import NOTEBOOKS, run_notebooks
from helpers.sample import make_real_sample
from helpers.spark.versions import spark_version

#: Starts a server and notebooks: `make test` only.
pytestmark = pytest.mark.slow

SPARK_4 = int(spark_version().split(".")[0]) >= 4
#: What runs through Connect on this set (Spark 3.5's Connect has no pyspark.ml).
CONNECT_NOTEBOOKS = NOTEBOOKS if SPARK_4 else NOTEBOOKS[:2]
PARAMS = {  # real weights at 224 px; samples that keep each notebook short on 2 cores
    "grid_per_class": 1,
    "grid_classes": 8,
    "eda_sample_per_class": 3,
    "tsne_sample": 200,
    "tsne_perplexity": 10.0,
}


@pytest.fixture(scope="module")
def real_images(fruits360: Path, tmp_path_factory) -> Path:
    """5 Training and 2 Test images of each real class."""
    root = tmp_path_factory.mktemp("connect-data") / "fruits"
    make_real_sample(fruits360, root, 5, 2)
    return root


@pytest.fixture(scope="module")
def runs(connect_remote, weights, real_images, tmp_path_factory) -> dict[str, Path]:
    """The notebooks through the Connect server, and in a classic local session."""
    outputs = {}
    for kind, remote in (("connect", connect_remote), ("classic", "")):
        outputs[kind] = tmp_path_factory.mktemp(f"{kind}-out")
        params = {
            "data_root": str(real_images),
            "output_root": str(outputs[kind]),
            "weights": weights,
            "spark_remote": remote,
            **PARAMS,
        }
        run_notebooks(params, CONNECT_NOTEBOOKS if remote else NOTEBOOKS)
    return outputs


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_connect_runs_are_connect_sessions(runs):
    """The notebooks ran as Spark Connect clients: no accumulator counted the decodes."""
    connect = _manifest(runs["connect"])["features"]
    assert connect["images_decoded"] is None
    assert _manifest(runs["classic"])["features"]["images_decoded"] == connect["files"]
    notebook = nbformat.read(runs["connect"] / "notebooks" / NOTEBOOKS[1], as_version=4)
    assert "not counted (Spark Connect)" in json.dumps([c.get("outputs") for c in notebook.cells])


def test_connect_features_equal_the_classic_run(spark, runs, real_images):
    """Every image has one row, with the classic run's features (1e-4) or its error."""
    rows = [
        read_features(spark, str(runs[kind])).toPandas().set_index("path").sort_index()
        for kind in ("connect", "classic")
    ]
    files = sum(1 for p in real_images.rglob("*.jpg"))
    assert len(rows[0]) == len(rows[1]) == files
    assert list(rows[0].index) == list(rows[1].index)
    assert rows[0]["error"].isna().all() and rows[1]["error"].isna().all()
    np.testing.assert_allclose(
        np.stack(rows[0]["features"]), np.stack(rows[1]["features"]), rtol=1e-4, atol=1e-5
    )
    assert (
        _manifest(runs["connect"])["eda"]["images"] == _manifest(runs["classic"])["eda"]["images"]
    )


@pytest.mark.skipif(not SPARK_4, reason="Spark ML on Spark Connect is Spark 4's")
def test_connect_pca_and_classifier_equal_the_classic_run(spark, runs):
    """Same k, the same reduced rows (1e-3), the classifier within half a point; the saved
    pipeline_model/ loads in a classic session and names the same classes."""
    manifests = [_manifest(runs[kind]) for kind in ("connect", "classic")]
    assert manifests[0]["pca"]["k"] == manifests[1]["pca"]["k"]
    reduced = [
        pd.read_parquet(published(str(runs[kind]), "pca")).set_index("path").sort_index()
        for kind in ("connect", "classic")
    ]
    assert list(reduced[0].index) == list(reduced[1].index)
    np.testing.assert_allclose(
        np.stack(reduced[0]["pca"]), np.stack(reduced[1]["pca"]), rtol=1e-3, atol=1e-3
    )
    accuracy = [m["classifier"]["accuracy"] for m in manifests]
    assert abs(accuracy[0] - accuracy[1]) <= 0.005, accuracy
    model = PipelineModel.load(published(str(runs["connect"]), "pipeline_model"))
    assert type(model.stages[0]).__name__ == "ImageFeaturizer"
    assert type(model.stages[-1]).__name__ == "NullOnError"


@pytest.mark.skipif(SPARK_4, reason="Spark 4's Connect runs notebooks 03 and 04")
@pytest.mark.parametrize("notebook", NOTEBOOKS[2:])
def test_connect_35_stops_ml_notebooks_naming_why(connect_remote, runs, notebook):
    """On Spark 3.5's Connect, notebooks 03 and 04 stop in their first Spark cell with one
    message: the limitation and where they run instead."""
    with pytest.raises(PapermillExecutionError) as failure:
        run_notebooks(
            {"output_root": str(runs["connect"]), "spark_remote": connect_remote},
            (notebook,),
        )
    assert failure.value.exec_count <= 4
    message = failure.value.evalue
    assert "Spark Connect serves from Spark 4.0" in message, message
    assert "Databricks Runtime 17" in message and "dedicated access mode" in message


SHIP = """
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from pyspark.sql import functions as F
from helpers.spark.session import get_spark, ship_package

spark = get_spark(remote=sys.argv[1])
package = Path(sys.argv[2])
first, again = ship_package(spark, package), ship_package(spark, package)

def probe(ids: Iterator[pd.Series]) -> Iterator[pd.Series]:
    import fruits_ship_probe

    for batch in ids:
        yield batch * 0 + fruits_ship_probe.VALUE

value = spark.range(1).select(F.pandas_udf(probe, "long")("id")).first()[0]
print(f"shipped={first} again={again} value={value}")
"""


def test_connect_ships_a_package_the_server_cannot_import(connect_remote, tmp_path):
    """A package the server's Python workers lack reaches them as a session artifact, once:
    what get_spark does for helpers/ on a server without this project."""
    package = tmp_path / "fruits_ship_probe"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 42\n")
    log = tmp_path / "ship.log"
    assert run_script(SHIP, connect_remote, str(package), log=log) == 0, log.read_text()[-3000:]
    assert "shipped=True again=False value=42" in log.read_text()
