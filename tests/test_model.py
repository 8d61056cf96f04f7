"""The pipeline as one Spark ML model: ImageFeaturizer, the Spark ML classifier, the saved
PipelineModel loaded in a fresh session, and ``python -m helpers.predict``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_jpeg
from pyspark.ml import PipelineModel

from helpers.classify import (
    PIPELINE_MODEL,
    check_pipeline_model,
    check_weights,
    load_reduction_model,
    pipeline_model,
    read_reduced,
    save_pipeline_model,
    train_classifier,
)
from helpers.features.extract import extract_features
from helpers.features.spec import FeatureSpec
from helpers.features.store import read_features
from helpers.features.transformer import ImageFeaturizer
from helpers.predict import main as predict_main
from helpers.reduce import fit_reduction, reduce_features, save_reduction

COLORS = {"Apple Red": (200, 20, 30), "Banana": (230, 210, 40), "Lime": (60, 190, 50)}


@pytest.fixture(scope="module")
def built(spark, weights, tmp_path_factory):
    """Features, PCA and a saved pipeline model of a tiny 3-class tree with one bad file."""
    root = tmp_path_factory.mktemp("fruits")
    for c, (label, color) in enumerate(COLORS.items()):
        for split, count in (("Training", 5), ("Test", 2)):
            for i in range(count):
                seed = 100 * c + 10 * (split == "Test") + i
                write_jpeg(root / split / label / f"{i}_100.jpg", color, seed=seed)
    (root / "Test" / "Lime" / "broken.jpg").write_text("not an image")
    out = str(tmp_path_factory.mktemp("out"))
    extract_features(spark, str(root), out, FeatureSpec(weights=weights, batch_size=8))
    features = read_features(spark, out)
    reduction = fit_reduction(features, variance=0.95)
    save_reduction(reduction, reduce_features(reduction, features), out)
    classification = train_classifier(read_reduced(spark, out))
    featurizer = ImageFeaturizer(weights=weights, batchSize=8)
    model = pipeline_model(featurizer, load_reduction_model(spark, out), classification)
    uri = save_pipeline_model(model, out)
    return root, Path(out), uri, featurizer, classification


def _images(spark, root: Path):
    return spark.read.format("binaryFile").load(sorted(str(p) for p in root.rglob("*.jpg")))


def test_featurizer_equals_featurize_and_reports_bad_bytes(spark, built):
    """Same features as notebook 02's path for the same bytes; a bad file: null + error."""
    root, out, _, featurizer, _ = built
    got = featurizer.transform(_images(spark, root)).select("path", "features", "error")
    got = got.toPandas().set_index("path")
    expected = read_features(spark, str(out)).toPandas().set_index("path")
    assert sorted(got.index) == sorted(expected.index) and len(got) == 22
    bad = got.loc[[p for p in got.index if p.endswith("broken.jpg")][0]]
    assert bad["features"] is None and "cannot decode image" in bad["error"]
    ok = expected[expected["error"].isna()].index
    diff = np.abs(np.stack(got.loc[ok, "features"]) - np.stack(expected.loc[ok, "features"]))
    assert diff.max() <= 1e-5


def test_featurizer_rejects_bad_params_and_columns(spark, built):
    """Unknown model or runtime, a missing or non-binary column: errors naming the fix."""
    with pytest.raises(ValueError, match="'vgg' is unknown"):
        ImageFeaturizer(modelName="vgg")
    with pytest.raises(ValueError, match="runtime 'tpu' is unknown"):
        ImageFeaturizer(runtime="tpu")
    featurizer = built[3]
    with pytest.raises(ValueError, match="inputCol 'content' is not a column"):
        featurizer.transform(spark.range(2))
    with pytest.raises(ValueError, match="'content' is string, not binary"):
        featurizer.transform(spark.range(2).selectExpr("'x' AS content"))


def test_classifier_scores_test_like_the_probe(built):
    """Spark ML logistic regression: accuracy and worst classes in the probe's shape."""
    result = built[4].result
    assert result.train_rows == 15 and result.test_rows == 6
    assert result.accuracy == 1.0 and set(result.worst_classes) <= set(COLORS)
    assert built[4].labels == sorted(COLORS)


def test_saved_model_is_self_contained_and_checked(spark, built, weights, tmp_path):
    """The featurizer stage's folder holds the weights and their checksum; a damaged copy
    is refused on load."""
    _, out, uri, featurizer, _ = built
    stages = sorted((Path(uri.removeprefix("file://")) / "stages").iterdir())
    assert [s.name.split("_", 1)[1].split("_")[0] for s in stages][:2] == [
        "ImageFeaturizer",
        "ArrayToVector",
    ]
    folder = stages[0]
    # Spark 3.5 writes metadata/part-00000, Spark 4 metadata/part-00000-<uuid>-c000.txt
    part = next((folder / "metadata").glob("part-00000*"))
    metadata = json.loads(part.read_text())
    # a weights file: its bytes inside, named by the file's own SHA-256, as in the manifest
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    assert metadata["weights_format"] == "h5-file" and metadata["weights_sha256"] == digest
    assert featurizer.weightsChecksum() == digest and "weights_arrays_sha256" not in metadata
    assert any((folder / "weights").glob("*.parquet"))
    settings = {"model_name": "mobilenet_v2", "weights_sha256": digest, "image_size": 224}
    assert check_weights(featurizer, settings) == digest
    with pytest.raises(ValueError, match="weights_sha256 0000.* differs|differs from the one"):
        check_weights(featurizer, {**settings, "weights_sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"image_size 224 \(features/: 100\)"):
        check_weights(featurizer, {**settings, "image_size": 100})
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    text = (damaged / "metadata" / part.name).read_text()
    (damaged / "metadata" / part.name).write_text(text.replace(metadata["weights_sha256"], "0"))
    (damaged / "metadata" / f".{part.name}.crc").unlink()  # Hadoop's own checksum of the file
    with pytest.raises(ValueError, match="the folder is damaged or incomplete"):
        ImageFeaturizer.load(str(damaged))


def test_arrays_weights_have_their_own_checksum_name(spark, tmp_path):
    """Weights from no file (here 'random') are kept as arrays, their digest under
    weights_arrays_sha256, never weights_sha256 (a file's SHA-256); they load back whole."""
    featurizer = ImageFeaturizer(weights="random", batchSize=4)
    folder = tmp_path / "stage"
    featurizer.save(str(folder))
    metadata = json.loads(next((folder / "metadata").glob("part-00000*")).read_text())
    assert metadata["weights_format"] == "arrays" and "weights_sha256" not in metadata
    assert metadata["weights_arrays_sha256"] == featurizer.weightsChecksum()
    loaded = ImageFeaturizer.load(str(folder))
    assert loaded.weightsChecksum() == featurizer.weightsChecksum()
    assert len(loaded.loadedWeights().payload) == metadata["weights_arrays"]


FRESH = """
import json, sys
from pyspark.ml import PipelineModel
from helpers.classify import vector_or_null
from helpers.spark.session import get_spark
model, folder, target = sys.argv[1:4]
spark = get_spark("fresh", master="local[2]", driver_memory="1g")
images = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(folder)
rows = PipelineModel.load(model).transform(images).select(
    "path", "error", "predicted_label",
    vector_or_null("pca").alias("pca"), vector_or_null("probability").alias("probability"),
).toPandas()
rows.to_json(target, orient="records")
"""


@pytest.mark.slow
def test_pipeline_model_in_a_fresh_session(spark, built, tmp_path):
    """Loaded by another process without the .h5 or its path: features -> pca equal to
    pca/ (1e-4), the Test images named, the bad file an error and nulls, not a crash."""
    root, out, uri, _, _ = built
    target = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "FRUITS_WEIGHTS"}
    env["KERAS_HOME"] = str(tmp_path / "no-keras-cache")
    subprocess.run(
        [sys.executable, "-c", FRESH, uri, str(root / "Test"), str(target)],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    rows = pd.read_json(target, orient="records").set_index("path")
    assert len(rows) == 7
    bad = rows.loc[[p for p in rows.index if p.endswith("broken.jpg")][0]]
    assert "cannot decode image" in bad["error"]
    assert bad[["predicted_label", "pca", "probability"]].isna().all()
    ok = rows[rows["error"].isna()]
    assert (ok["predicted_label"] == [p.split("/")[-2] for p in ok.index]).all()
    reduced = pd.read_parquet(out / "pca").set_index("path").loc[ok.index]
    expected = np.stack(reduced["pca"])
    assert np.abs(np.stack(ok["pca"]) - expected).max() <= 1e-4 * np.abs(expected).max()
    assert np.allclose(np.stack(ok["probability"]).sum(axis=1), 1.0)

    check = check_pipeline_model(spark, uri, read_reduced(spark, str(out)), images=3)
    assert check.images == 3 and check.max_relative_pca_difference <= 1e-4


@pytest.mark.slow
def test_predict_command(built, tmp_path, capsys):
    """Top-3 with probabilities for files and a folder; a bad image reported, the rest named;
    a missing model or path: exit 2 with the fix."""
    root, out, _, _, _ = built
    photos = tmp_path / "photos"
    write_jpeg(photos / "banana.jpg", COLORS["Banana"], seed=7)
    (photos / "notes.jpg").write_text("not an image")
    apple = root / "Test" / "Apple Red" / "0_100.jpg"
    model = str(out / PIPELINE_MODEL)
    assert predict_main([str(apple), str(photos), "--model", model]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    by_name = {}
    for line in lines:
        path, said = line.split(": ", 1)
        assert path.startswith("/")  # the full path: two folders may hold the same name
        by_name[path.rsplit("/", 1)[1]] = said
    assert by_name["0_100.jpg"].startswith("Apple Red ")
    assert by_name["banana.jpg"].startswith("Banana ")
    assert len(by_name["banana.jpg"].split(", ")) == 3
    assert by_name["notes.jpg"].startswith("ERROR cannot decode image")

    assert predict_main([str(apple), "--model", str(tmp_path / "none")]) == 2
    assert "no pipeline model at" in capsys.readouterr().err
    assert predict_main([str(tmp_path / "missing.jpg"), "--model", model]) == 2
    assert "missing.jpg' does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_model_loads_with_pyspark_alone(built):
    """The saved folder is a plain PipelineModel: pyspark's own loader reads every stage."""
    model = PipelineModel.load(built[2])
    names = [type(stage).__name__ for stage in model.stages]
    assert names == [
        "ImageFeaturizer",
        "ArrayToVector",
        "StandardScalerModel",
        "PCAModel",
        "LogisticRegressionModel",
        "IndexToString",
        "NullOnError",
    ]
