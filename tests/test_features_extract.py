"""Feature extraction in Spark with the real MobileNetV2 weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SETTINGS, write_jpeg

from helpers.features.extract import featurize
from helpers.features.models import build_model, driver_weights, preprocess
from helpers.features.spec import FeatureSpec
from helpers.features.store import read_features, write_features
from helpers.features.udf import (
    ARROW_BYTES,
    ARROW_IMAGES,
    TASK_IMAGES,
    arrow_rows,
    featurize_batch,
    task_count,
)
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


def test_featurize_batch_gives_arrow_rows_in_order_across_model_batches(weights, tmp_path):
    """One row per input, in order, over model batches that failures cut short: Arrow
    ``list<float>`` of the model's output, null where an error (empty, not an image) is."""
    import pyarrow as pa

    model = build_model("mobilenet_v2", 96, weights)
    good = [
        write_jpeg(tmp_path / f"{i}.jpg", (40 * i, 90, 200), seed=i).read_bytes() for i in range(3)
    ]
    contents = [good[0], b"not an image", None, good[1], good[2]]
    prepare = preprocess("mobilenet_v2")
    out = featurize_batch(lambda x: model(x).numpy(), prepare, contents, 96, 2)
    assert out.schema.field("features").type == pa.list_(pa.float32())
    errors = out.column("error").to_pylist()
    assert [e is None for e in errors] == [True, False, False, True, True]
    assert errors[2] == "empty file" and "not a JPEG or PNG" in errors[1]
    features = out.column("features").to_pylist()
    assert features[1] is None and features[2] is None
    pixels = np.stack([decode_image(b, 96) for b in good]).astype(np.float32)
    expected = model(prepare(pixels)).numpy()
    for row, index in zip([0, 3, 4], range(3)):
        np.testing.assert_allclose(features[row], expected[index], rtol=1e-4, atol=1e-4)
    assert featurize_batch(model, prepare, [b"x"], 96, 2).column("features").null_count == 1


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


def _hostile_root(root: Path) -> dict[str, str]:
    """Real JPEGs beside files that must each give an error row, and a loop link."""
    import struct
    import zlib

    from PIL import Image

    kiwi = root / "Training" / "Kiwi"
    for i in range(3):
        write_jpeg(kiwi / f"{i}.jpg", (90, 140, 40), seed=i)
    (kiwi / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(kiwi / "tiff.jpg", format="TIFF")
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
    (kiwi / "bomb.png").write_bytes(bomb + chunk(b"IEND", b""))
    deep = np.linspace(0, 65535, 400).astype(np.uint16).reshape(20, 20)
    Image.fromarray(deep).save(kiwi / "deep.png")
    return {
        "eps.jpg": "cannot decode image: not a JPEG or PNG image (EPS",
        "tiff.jpg": "cannot decode image: not a JPEG or PNG image (TIFF content)",
        "bomb.png": "image too large: 400000000 pixels, over max_image_pixels = 50000000",
        "1.jpg": "file vanished or became unreadable after listing",
    }


@pytest.mark.parametrize("with_link", [True, False], ids=["read-by-path", "spark-scan"])
def test_hostile_folder_one_row_per_real_file(spark, weights, tmp_path: Path, with_link: bool):
    """EPS and TIFF named .jpg, a decompression bomb, a 16-bit PNG, a loop link, a name that
    is not UTF-8 and a file deleted after the listing: the run completes, each real file
    gives one row (a deleted one its error, or a name from ``missing`` under Spark's scan)."""
    expected = _hostile_root(tmp_path)
    kiwi = tmp_path / "Training" / "Kiwi"
    if with_link:
        (kiwi / "loop").symlink_to("..")
        with open(os.path.join(os.fsencode(kiwi), b"caf\xe9.jpg"), "wb") as bad:
            bad.write((kiwi / "0.jpg").read_bytes())
    listing = list_images(spark, str(tmp_path))
    (kiwi / "1.jpg").unlink()
    spec = FeatureSpec(weights=weights, batch_size=4)
    run = featurize(spark, listing.images, spec, largest=listing.largest)
    rows = {r["path"].rsplit("/", 1)[1]: r for r in run.features.collect()}
    if not with_link:
        assert listing.missing(f"file:{kiwi / name}" for name in rows) == [f"file:{kiwi}/1.jpg"]
        del expected["1.jpg"]
    else:
        assert sorted(p.rsplit("/", 1)[1] for p in listing.ignored) == ["caf\\xe9.jpg", "loop"]
    assert set(rows) == {"0.jpg", "2.jpg", "deep.png", *expected}
    for name, error in expected.items():
        assert rows[name]["error"].startswith(error) and rows[name]["features"] is None, name
    for name in ("0.jpg", "2.jpg", "deep.png"):
        assert rows[name]["error"] is None and len(rows[name]["features"]) == 1280


def test_max_image_pixels_travels_to_the_udf(spark, weights, tmp_path: Path):
    """max_image_pixels is a FeatureSpec field, checked, and the UDF applies it."""
    with pytest.raises(ValueError, match="max_image_pixels must be a positive integer"):
        FeatureSpec(max_image_pixels=0)
    assert FeatureSpec.from_params({"max_image_pixels": 9}).max_image_pixels == 9
    write_jpeg(tmp_path / "Kiwi" / "a.jpg", (90, 140, 40), size=100)
    spec = FeatureSpec(weights=weights, max_image_pixels=100 * 100 - 1)
    [row] = featurize(spark, list_images(spark, str(tmp_path)).images, spec).features.collect()
    assert row["error"] == "image too large: 100x100 = 10000 pixels, over max_image_pixels = 9999"


def test_arrow_batches_are_bounded_in_bytes():
    """Rows per Arrow batch: 256 small images, fewer large ones, never 0."""
    assert arrow_rows(4, 5_000) == ARROW_IMAGES
    assert arrow_rows(4, 20 * 2**20) == ARROW_BYTES // (20 * 2**20) == 3
    assert arrow_rows(4, 2**31) == 1 and arrow_rows(512, 1) == 512


def test_featurizer_max_image_pixels_is_saved_and_defaults_for_old_models(spark, tmp_path):
    """The transformer's maxImagePixels comes from the spec, is saved, and a model saved
    before it existed loads with the default."""
    import json

    from helpers.features.spec import MAX_IMAGE_PIXELS
    from helpers.features.transformer import ImageFeaturizer

    featurizer = ImageFeaturizer.from_spec(FeatureSpec(weights="random", max_image_pixels=1234))
    assert featurizer.spec().max_image_pixels == 1234
    featurizer.save(str(tmp_path / "new"))
    assert ImageFeaturizer.load(str(tmp_path / "new")).getMaxImagePixels() == 1234
    featurizer.save(str(tmp_path / "old"))
    [part] = (tmp_path / "old" / "metadata").glob("part-*")
    metadata = json.loads(part.read_text())
    for section in ("paramMap", "defaultParamMap"):
        metadata[section].pop("maxImagePixels", None)
    part.write_text(json.dumps(metadata) + "\n")
    part.with_name(f".{part.name}.crc").unlink()  # Hadoop's checksum of the old text
    assert ImageFeaturizer.load(str(tmp_path / "old")).getMaxImagePixels() == MAX_IMAGE_PIXELS
