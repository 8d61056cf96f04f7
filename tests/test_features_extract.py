"""Feature extraction in Spark with the real MobileNetV2 weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SETTINGS, write_jpeg

from helpers.features.extract import featurize
from helpers.features.models import build_model, driver_weights
from helpers.features.spec import FeatureSpec
from helpers.features.store import read_features, write_features
from helpers.features.udf import TASK_IMAGES, task_count
from helpers.images import decode_image, list_images


@pytest.fixture(scope="module")
def featurized(spark, weights, tmp_path_factory):
    """Features of a tiny tree with one corrupt file, written to Parquet and read back."""
    root = tmp_path_factory.mktemp("images")
    for i in range(3):
        write_jpeg(root / "Training" / "Apple Red" / f"{i}.jpg", (200, 20, 30), seed=i)
        write_jpeg(root / "Test" / "Banana" / f"{i}.jpg", (230, 210, 40), seed=10 + i)
    (root / "Test" / "Banana" / "broken.jpg").write_text("not an image")
    out = str(tmp_path_factory.mktemp("out"))
    spec = FeatureSpec(weights=weights, batch_size=4)
    run = featurize(spark, list_images(spark, str(root)).images, spec)
    write_features(spark, run.features, out, SETTINGS)
    assert run.images_decoded == 7  # each file decoded once, the corrupt one included
    return root, run.info, read_features(spark, out).toPandas().set_index("path")


def test_one_row_per_file_with_1280_finite_floats(featurized):
    """Every file gives a row; readable images get 1280 finite floats and no error."""
    root, info, rows = featurized
    assert len(rows) == len(list(root.rglob("*.jpg"))) == 7
    ok = rows[rows["error"].isna()]
    assert len(ok) == 6 and info.feature_dim == 1280
    matrix = np.stack(ok["features"].to_numpy())
    assert matrix.shape == (6, 1280) and np.isfinite(matrix).all()
    assert set(ok["label"]) == {"Apple Red", "Banana"} and set(ok["split"]) == {"Training", "Test"}


def test_corrupt_file_gets_an_error_and_no_features(featurized):
    """A .jpg holding text is kept, with a reason and null features."""
    _, _, rows = featurized
    broken = rows[[p.endswith("broken.jpg") for p in rows.index]].iloc[0]
    assert broken["features"] is None
    assert "cannot decode image" in broken["error"]


def test_spark_features_equal_bare_keras(featurized, weights):
    """The UDF's output for an image is what Keras gives for the same pixels."""
    import keras

    root, _, rows = featurized
    path = root / "Training" / "Apple Red" / "0.jpg"
    model = build_model("mobilenet_v2", 224, weights)
    pixels = decode_image(path.read_bytes(), 224)[None].astype(np.float32)
    expected = model.predict(keras.applications.mobilenet_v2.preprocess_input(pixels), verbose=0)
    got = rows.loc[f"file:{path}", "features"]
    np.testing.assert_allclose(got, expected[0], rtol=1e-3, atol=1e-3)


def test_weights_file_errors_name_the_file(tmp_path: Path):
    """A missing or unfit weights file fails with a message naming it and the fix."""
    with pytest.raises(FileNotFoundError, match="FRUITS_WEIGHTS"):
        driver_weights("mobilenet_v2", str(tmp_path / "missing.h5"), 224)
    bad = tmp_path / "bad.h5"
    bad.write_text("not weights")
    with pytest.raises(ValueError, match="bad.h5"):
        driver_weights("mobilenet_v2", str(bad), 224)


def test_feature_spec_is_checked_once_naming_the_parameter():
    """An unknown model or runtime, or a size below 1, names the parameter before any work."""
    with pytest.raises(ValueError, match="model_name 'vgg99'.*mobilenet_v2"):
        FeatureSpec(model_name="vgg99")
    with pytest.raises(ValueError, match="runtime 'tensorrt'.*litert"):
        FeatureSpec(runtime="tensorrt")
    for name in ("image_size", "batch_size"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            FeatureSpec(**{name: 0})
    assert FeatureSpec.from_params({"image_size": 96, "seed": 1}) == FeatureSpec(image_size=96)


def test_reused_workers_take_the_new_weights(spark, featurized, weights):
    """Keras workers keep their built model across runs, but never the previous run's weights
    (a file's bytes, then arrays, then the file again)."""
    root = featurized[0]
    path = f"file:{root / 'Training' / 'Apple Red' / '0.jpg'}"
    vectors = []
    for source in (weights, "random", weights):
        images = list_images(spark, str(root)).images
        spec = FeatureSpec(weights=source, batch_size=4, runtime="keras")
        run = featurize(spark, images, spec)
        vectors.append(run.features.toPandas().set_index("path").loc[path, "features"])
    assert not np.allclose(vectors[1], vectors[0])
    np.testing.assert_array_equal(vectors[2], vectors[0])


def test_tasks_are_whole_waves_of_at_most_2048_images(spark):
    """Few large tasks, one per core a wave, sized by images whatever the model batch."""
    cores = spark.sparkContext.defaultParallelism
    assert task_count(spark, 10) == cores
    assert task_count(spark, cores * TASK_IMAGES) == cores
    assert task_count(spark, cores * TASK_IMAGES + 1) == 2 * cores
