"""The opt-in int8 runtime (`litert-int8`): calibrated on the run's own Training images,
cached by the calibration's digest, recorded with the features, and judged by notebook 03's
probe against float32 on a sample of the run's images. Real Spark, real weights, real
Fruits-360 images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.caches import SUFFIX
from helpers.evaluate import probe_change
from helpers.features.extract import calibration_paths, extract_features
from helpers.features.runtimes import AUTO, CALIBRATION_SEED, RUNTIMES, Calibration
from helpers.features.spec import FeatureSpec
from helpers.features.store import committed_settings, read_features
from helpers.features.transformer import ImageFeaturizer, RuntimeComparison, int8_comparison
from helpers.run import NOTEBOOKS, run_notebooks

#: Real classes, and images of each per split.
CLASSES, TRAINING, TEST = 4, 8, 4


def _copy_subset(fruits360: Path, root: Path, classes: int, training: int, test: int) -> Path:
    """The first ``classes`` classes of Fruits-360 with ``training`` and ``test`` images each."""
    for split, count in (("Training", training), ("Test", test)):
        for folder in sorted(p for p in (fruits360 / split).iterdir() if p.is_dir())[:classes]:
            for image in sorted(folder.glob("*.jpg"))[:count]:
                target = root / split / folder.name / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image, target)
    return root


def _by_path(spark, output_root: Path) -> pd.Series:
    frame = read_features(spark, str(output_root)).select("path", "features").toPandas()
    return frame.set_index("path")["features"].sort_index()


def test_litert_int8_is_opt_in():
    """A registry runtime, never chosen by auto, calibrated; the others are not."""
    assert "litert-int8" in RUNTIMES and "litert-int8" not in AUTO
    assert RUNTIMES["litert-int8"].calibrated
    assert not any(r.calibrated for n, r in RUNTIMES.items() if n != "litert-int8")


def test_calibration_paths_spread_over_training_classes():
    """One of each Training class per round, in a seeded order; never a Test image."""
    paths = [f"file:/d/Training/A/{i}.jpg" for i in range(5)]
    paths += [f"file:/d/Training/B/{i}.jpg" for i in range(2)]
    paths += [f"file:/d/training/C/{i}.jpg" for i in range(10)]
    paths += [f"file:/d/Test/A/{i}.jpg" for i in range(5)]
    chosen = calibration_paths(paths, count=7)
    labels = [p.split("/")[-2] for p in chosen]
    assert len(chosen) == 7 and "Test" not in "".join(chosen)
    assert sorted(labels[:3]) == ["A", "B", "C"] and sorted(labels[3:6]) == ["A", "B", "C"]
    assert calibration_paths(reversed(paths), count=7) == chosen  # the listing's order: none
    elsewhere = [p.replace("file:/d/", "s3://bucket/copy/") for p in paths]
    assert calibration_paths(elsewhere, count=7) == [  # the root's place: none
        p.replace("file:/d/", "s3://bucket/copy/") for p in chosen
    ]
    assert calibration_paths(paths, count=7, seed=1) != chosen
    assert len(calibration_paths(paths, count=200)) == 17


def test_calibration_digest_names_the_bytes():
    """Same bytes, any order: same digest; other bytes: another."""
    pixels = np.zeros((2, 2, 3), np.uint8)
    one = Calibration.of([(b"a", pixels), (b"b", pixels)], seed=3)
    assert one.digest == Calibration.of([(b"b", pixels), (b"a", pixels)], seed=3).digest
    assert one.digest != Calibration.of([(b"a", pixels), (b"c", pixels)], seed=3).digest
    assert one.to_manifest() == {"count": 2, "digest": one.digest, "seed": 3}
    assert Calibration.from_manifest(one.to_manifest()) == one
    assert Calibration.of([(b"a", pixels), (b"a", pixels)], seed=3).count == 2  # duplicates


def test_empty_training_split_names_the_runtime(spark, weights, fruits360, tmp_path):
    """Data without a Training split: the int8 runtime has nothing to calibrate on."""
    root = tmp_path / "data"
    _copy_subset(fruits360, root, 2, 0, 2)
    spec = FeatureSpec(weights=weights, runtime="litert-int8")
    with pytest.raises(ValueError, match=r"Training images.*parameter 'runtime'"):
        extract_features(spark, str(root), str(tmp_path / "out"), spec)
    assert not (tmp_path / "out" / "features").exists()


def test_featurizer_without_calibration_is_refused(spark, tiny_root):
    """A featurizer asked for litert-int8 without the recorded calibration names the param."""
    frame = spark.read.format("binaryFile").load(
        str(tiny_root / "Training"), recursiveFileLookup=True
    )
    featurizer = ImageFeaturizer(runtime="litert-int8", weights="random")
    with pytest.raises(ValueError, match="parameter 'calibration'"):
        featurizer.transform(frame)
    with pytest.raises(ValueError, match="parameter 'calibration'"):
        ImageFeaturizer(calibration="{not json")


@pytest.fixture(scope="module")
def int8_runs(spark, weights, fruits360, tmp_path_factory):
    """The same real images featurized by litert-int8 twice (converted, then cached), by
    litert (float32), and by litert-int8 on a data set with one Training image less."""
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    patch.setenv("XDG_CACHE_HOME", str(cache))
    base = tmp_path_factory.mktemp("int8")
    root = _copy_subset(fruits360, base / "data", CLASSES, TRAINING, TEST)
    other = base / "other"
    shutil.copytree(root, other)
    removed = next(iter(sorted((other / "Training").rglob("*.jpg"))))
    removed.unlink()
    runs: dict = {"cache": cache / "fruits", "root": root, "other": other, "removed": removed}
    try:
        for name, runtime, data in (
            ("int8", "litert-int8", root),
            ("again", "litert-int8", root),
            ("float32", "litert", root),
            ("fewer", "litert-int8", other),
        ):
            out = base / f"out-{name}"
            spec = FeatureSpec(weights=weights, runtime=runtime)
            runs[name] = (extract_features(spark, str(data), str(out), spec), out)
        yield runs
    finally:
        patch.undo()


@pytest.mark.slow
def test_int8_features_follow_float32(spark, int8_runs):
    """Each image's int8 vector points where its float32 one does: cosine >= 0.9 each,
    >= 0.95 on average (0.95-0.99 measured on real images; exact runtimes are within 1e-4)."""
    int8 = _by_path(spark, int8_runs["int8"][1])
    float32 = _by_path(spark, int8_runs["float32"][1])
    assert list(int8.index) == list(float32.index) and len(int8) == CLASSES * (TRAINING + TEST)
    a, b = np.stack(int8.to_numpy()), np.stack(float32.to_numpy())
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.9 and cosine.mean() >= 0.95
    assert np.abs(a - b).max() > 1e-3  # quantized: not the float32 model again


@pytest.mark.slow
def test_int8_model_is_cached_by_calibration_digest(int8_runs):
    """Same images: the cached model; one Training image less: another digest, another file."""
    first, again, other = (int8_runs[k][0].info for k in ("int8", "again", "fewer"))
    assert (first.converted_from_cache, again.converted_from_cache) == (False, True)
    assert other.converted_from_cache is False
    assert first.calibration == again.calibration != other.calibration
    assert first.converted_model == again.converted_model != other.converted_model
    for info in (first, other):
        assert info.calibration["digest"][:32] in info.converted_model
    tflite = sorted(p.name for p in (int8_runs["cache"] / "tflite").iterdir())
    assert first.converted_model in tflite and first.converted_model + SUFFIX in tflite


@pytest.mark.slow
def test_calibration_is_recorded_with_the_features(spark, int8_runs, weights):
    """The manifest's features section and the commit records carry count, digest, seed;
    float32 features added to int8 ones are refused (their settings differ)."""
    extraction, out = int8_runs["int8"]
    recorded = extraction.to_manifest()
    assert recorded["runtime"] == "litert-int8"
    assert recorded["calibration"] == {
        "count": CLASSES * TRAINING,
        "digest": recorded["calibration"]["digest"],
        "seed": CALIBRATION_SEED,
    }
    assert committed_settings(spark, str(out))["int8_calibration"] == recorded["calibration"]
    assert "calibration" not in int8_runs["float32"][0].to_manifest()
    assert "int8_calibration" not in committed_settings(spark, str(int8_runs["float32"][1]))
    spec = FeatureSpec(weights=weights, runtime="litert")
    with pytest.raises(ValueError, match="int8 calibrated on 32 images"):
        extract_features(spark, str(int8_runs["root"]), str(out), spec)


@pytest.mark.slow
def test_saved_featurizer_recreates_the_int8_model(spark, int8_runs, weights, tmp_path):
    """A featurizer given the recorded calibration runs the same int8 model (from the
    cache, by its digest), saved and loaded with it."""
    extraction, out = int8_runs["int8"]
    featurizer = ImageFeaturizer(
        runtime="litert-int8",
        weights=weights,
        calibration=json.dumps(extraction.to_manifest()["calibration"]),
    )
    featurizer.write().overwrite().save(str(tmp_path / "featurizer"))
    loaded = ImageFeaturizer.load(str(tmp_path / "featurizer"))
    assert loaded.getCalibration() == featurizer.getCalibration()
    settings = committed_settings(spark, str(out))
    assert ImageFeaturizer().setCalibration(settings["int8_calibration"]).getCalibration() == (
        featurizer.getCalibration()
    )
    images = spark.read.format("binaryFile").load(
        str(int8_runs["root"] / "Test"), recursiveFileLookup=True
    )
    rows = loaded.transform(images).select("path", "features").toPandas().set_index("path")
    expected = _by_path(spark, out)
    for path, vector in rows["features"].items():
        np.testing.assert_allclose(vector, expected[path], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_added_images_keep_the_committed_calibration(spark, int8_runs, weights):
    """Images added to int8 features keep the committed calibration and its cached model
    (a fresh sample of the grown data would be another): one model for every run."""
    fewer, out = int8_runs["fewer"]
    removed = int8_runs["removed"]
    shutil.copyfile(int8_runs["root"] / removed.relative_to(int8_runs["other"]), removed)
    spec = FeatureSpec(weights=weights, runtime="litert-int8")
    added = extract_features(spark, str(int8_runs["other"]), str(out), spec)
    assert added.featurized == 1 and added.info is not None
    assert added.info.calibration == fewer.info.calibration
    assert added.info.converted_model == fewer.info.converted_model
    assert added.info.converted_from_cache is True
    fresh = extract_features(spark, str(int8_runs["other"]), str(out), spec, overwrite=True)
    assert (
        fresh.info.calibration == int8_runs["int8"][0].info.calibration
    )  # overwrite: a new sample


@pytest.mark.slow
def test_comparison_is_skipped_for_float32_features(spark, int8_runs):
    """Features not made by litert-int8: nothing to compare, said so, nothing computed."""
    out = str(int8_runs["float32"][1])
    comparison = int8_comparison(spark, out, read_features(spark, out))
    assert comparison.frame is None and "not made by litert-int8" in comparison.skipped
    change = probe_change(comparison)
    assert change.to_manifest() == {"skipped": comparison.skipped}
    assert "skipped" in change.summary() and "skipped" in change.table()["note"].iloc[0]
    assert probe_change(RuntimeComparison(None, 10, 42, "why")).skipped == "why"


@pytest.mark.slow
def test_notebook_03_reports_what_int8_costs(weights, fruits360, tmp_path):
    """Notebooks 02-04 with runtime litert-int8 on real images: notebook 03 shows and
    records both probes, their change in points and the sample, from the run's images;
    notebook 04's pipeline featurizes in int8 like notebook 02, whatever its runtime."""
    root = _copy_subset(fruits360, tmp_path / "data", CLASSES, TRAINING, TEST)
    out = tmp_path / "out"
    params = {
        "data_root": str(root),
        "output_root": str(out),
        "weights": weights,
        "runtime": "litert-int8",
        "tsne_sample": 40,
    }
    run_notebooks(params, NOTEBOOKS[1:])
    manifest = json.loads((out / "manifest.json").read_text())
    # the saved pipeline featurizes new images in int8 too: the PCA rows it gives are those
    # of features/ (float32 features would differ by a few percent)
    assert manifest["classifier"]["check"]["max_relative_pca_difference"] < 1e-3
    assert manifest["features"]["calibration"]["count"] == CLASSES * TRAINING
    int8 = manifest["pca"]["int8"]
    assert int8["sample_images"] == CLASSES * (TRAINING + TEST)  # at most 10 per class, split
    assert int8["per_class"] == 10 and int8["seed"] == 42
    for side in ("float32", "int8"):
        assert 0.5 <= int8[side]["accuracy"] <= 1 and int8[side]["test_rows"] == CLASSES * TEST
    change = 100 * (int8["int8"]["accuracy"] - int8["float32"]["accuracy"])
    assert int8["change_points"] == pytest.approx(change)
    executed = (out / "notebooks" / NOTEBOOKS[2]).read_text()
    assert "int8 against float32 on 48 of this run's images" in executed
    assert "int8 (litert-int8)" in executed
    run_notebooks({**params, "runtime": "auto"}, NOTEBOOKS[3:])  # follows features/ anyway
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classifier"]["check"]["max_relative_pca_difference"] < 1e-3
