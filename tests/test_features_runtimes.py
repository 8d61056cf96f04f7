"""The converted runtimes (LiteRT, ONNX Runtime, OpenVINO f32 and bf16): features against
Keras on real weights and images, one cached TFLite model and one cached ONNX model for the
other three, workers without TensorFlow. A runtime the set lacks (the Python 3.9 set has
LiteRT only, `.ci/test-py39` runs this file there) skips its tests, saying so."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from helpers.caches import SUFFIX, read_record, sidecar
from helpers.config import PARAMETERS, validate
from helpers.features import models, runtimes
from helpers.features.extract import extract_features, featurize
from helpers.features.models import driver_weights, preprocess
from helpers.features.runtimes import RUNTIMES, import_openvino, resolve_runtime
from helpers.features.spec import FeatureSpec
from helpers.features.udf import runtime_environment
from helpers.images import list_images
from helpers.manifest import versions
from helpers.paths import PROJECT_ROOT

IMAGES = 32
#: Keras model building, kept before the runs fixture forbids it on the driver.
BUILD_MODEL = models.build_model


def installed(runtime: str) -> bool:
    """Whether this environment has ``runtime``'s packages (Keras: always)."""
    return not RUNTIMES[runtime].missing()


def needs(*runtimes: str) -> None:
    """Skip the test unless this environment has the packages of every one of ``runtimes``;
    only on Python 3.9, whose set leaves them out: the 3.10+ sets pin every runtime."""
    missing = ", ".join(r for r in runtimes if not installed(r))
    if missing and sys.version_info >= (3, 10):
        pytest.fail(f"{missing} not installed: the Python 3.10+ sets pin every runtime")
    if missing:
        pytest.skip(f"{missing} not installed in the Python 3.9 set")


@pytest.fixture(scope="module")
def real_images(fruits360: Path, tmp_path_factory) -> Path:
    """32 real Fruits-360 images: 2 of each of the first 16 training classes."""
    root = tmp_path_factory.mktemp("fruits360_32")
    classes = sorted(p for p in (fruits360 / "Training").iterdir() if p.is_dir())[:16]
    for folder in classes:
        for image in sorted(folder.glob("*.jpg"))[:2]:
            target = root / "Training" / folder.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
    assert len(list(root.rglob("*.jpg"))) == IMAGES
    return root


@pytest.fixture(scope="module")
def runs(spark, weights, real_images, tmp_path_factory):
    """The same images featurized by Keras, then twice by ONNX Runtime (own model cache),
    then by OpenVINO f32 and bf16 (the same cached model), twice by LiteRT, then by the
    feature step with each runtime, the driver forbidden to load the weights."""
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    patch.setenv("XDG_CACHE_HOME", str(cache))
    try:
        loaded = driver_weights("mobilenet_v2", weights, 224)
        by_runtime: dict = {"cache": cache / "fruits"}
        order = (
            ("keras", "keras"),
            ("onnx", "onnxruntime"),
            ("again", "onnxruntime"),
            ("openvino", "openvino"),
            ("bf16", "openvino-bf16"),
            ("litert", "litert"),
            ("litert-again", "litert"),
        )
        for name, runtime in order:
            if not installed(runtime):
                continue
            images = list_images(spark, str(real_images)).images
            spec = FeatureSpec(weights=weights, runtime=runtime)
            run = featurize(spark, images, spec, loaded=loaded)
            rows = run.features.toPandas().set_index("path").sort_index()
            by_runtime[name] = (run, rows)

        def no_model(*args, **kwargs):
            raise AssertionError("the driver built a Keras model")

        patch.setattr(models, "build_model", no_model)
        patch.setattr(runtimes, "build_model", no_model)
        for runtime in ("litert", "onnxruntime", "keras"):
            if not installed(runtime):
                continue
            out = str(tmp_path_factory.mktemp("out"))
            spec = FeatureSpec(weights=weights, runtime=runtime)
            by_runtime[f"extract-{runtime}"] = extract_features(spark, str(real_images), out, spec)
        yield by_runtime
    finally:
        patch.undo()


def _features(runs, name: str) -> np.ndarray:
    """The run ``name``'s feature matrix, rows in Keras' order, none in error."""
    _, keras_rows = runs["keras"]
    _, rows = runs[name]
    assert rows["error"].isna().all()
    assert list(rows.index) == list(keras_rows.index) and len(rows) == IMAGES
    return np.stack(rows["features"].to_numpy())


@pytest.mark.parametrize("name", ["litert", "onnx", "openvino"])
def test_converted_features_equal_keras(runs, name):
    """Every image's LiteRT, ONNX Runtime and OpenVINO f32 vector equals Keras' within 1e-4
    relative (max|a-b|/max|b|)."""
    needs({"onnx": "onnxruntime"}.get(name, name))
    expected, got = _features(runs, "keras"), _features(runs, name)
    assert got.shape == expected.shape == (IMAGES, 1280)
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4


def test_openvino_bf16_features_stay_close(runs):
    """bf16 (opt-in) runs and says so; its vectors point about where Keras' do (cosine per
    image > 0.9; measured 0.941-0.988 on these 32, max relative difference 0.35), and they
    moved: the hint reached the workers (where the CPU has bfloat16 instructions; elsewhere
    OpenVINO runs f32)."""
    needs("openvino-bf16")
    ov = import_openvino()
    run, _ = runs["bf16"]
    assert run.info.runtime == "openvino-bf16" and run.images_decoded == IMAGES
    expected, got = _features(runs, "keras"), _features(runs, "bf16")
    cosine = (
        (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() > 0.9
    relative = np.abs(got - expected).max() / np.abs(expected).max()
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert relative > 1e-3


def test_converted_model_is_cached_and_recorded(runs):
    """The first ONNX run converts and caches; the second and both OpenVINO runs read that
    same file (one conversion for every converted runtime); each run records its runtime."""
    needs("onnxruntime", "openvino")
    first, onnx_rows = runs["onnx"]
    second, again_rows = runs["again"]
    assert first.info.runtime == "onnxruntime" and runs["keras"][0].info.runtime == "keras"
    assert first.info.converted_from_cache is False
    for name, runtime in (("again", "onnxruntime"), ("openvino", "openvino")):
        run, _ = runs[name]
        assert run.info.runtime == runtime and run.info.converted_from_cache is True
        assert run.info.converted_model == first.info.converted_model
    assert runs["bf16"][0].info.converted_model == first.info.converted_model
    name = first.info.converted_model
    assert sorted(p.name for p in (runs["cache"] / "onnx").iterdir()) == [name, name + SUFFIX]
    assert first.info.weights_sha256[:32] in first.info.converted_model
    np.testing.assert_array_equal(
        np.stack(again_rows["features"].to_numpy()), np.stack(onnx_rows["features"].to_numpy())
    )


def test_litert_model_is_its_own_cached_tflite(runs):
    """LiteRT converts once to its own TFLite file, named by the weights and TensorFlow's
    version; its second run reads that file and gives the same features."""
    needs("litert")
    (first, rows), (second, again_rows) = runs["litert"], runs["litert-again"]
    assert first.info.runtime == second.info.runtime == "litert"
    assert (first.info.converted_from_cache, second.info.converted_from_cache) == (False, True)
    name = first.info.converted_model
    assert name.endswith(".tflite") and first.info.weights_sha256[:32] in name
    found = versions()  # the manifest's record of the installed TensorFlow names the file
    assert f"tensorflow{found.get('tensorflow-cpu') or found['tensorflow']}" in name
    assert sorted(p.name for p in (runs["cache"] / "tflite").iterdir()) == [name, name + SUFFIX]
    assert second.info.converted_model == runs["extract-litert"].info.converted_model == name
    np.testing.assert_array_equal(
        np.stack(again_rows["features"].to_numpy()), np.stack(rows["features"].to_numpy())
    )


def test_converted_workers_never_import_tensorflow(runs):
    """No batch of the converted runtimes' UDFs ran in a worker with TensorFlow imported."""
    converted = [
        n for n in ("onnx", "again", "openvino", "bf16", "litert", "litert-again") if n in runs
    ]
    assert converted, "no converted runtime ran"
    for name in converted:
        run, _ = runs[name]
        assert run.images_decoded == IMAGES
        assert run.batches_with_tensorflow == 0


@pytest.mark.parametrize("module", ["mobilenet_v2", "resnet50"])
def test_numpy_preprocessing_equals_keras(module):
    """The workers' numpy preprocessing gives exactly Keras' preprocess_input values."""
    import keras

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    np.testing.assert_array_equal(preprocess(module)(pixels), expected)


def test_unknown_runtime_is_rejected():
    """An unknown runtime names the parameter and the choices, before any work."""
    with pytest.raises(ValueError, match="runtime 'tensorrt'.*auto.*keras.*onnxruntime"):
        validate({"runtime": "tensorrt"})
    with pytest.raises(ValueError, match="parameter 'runtime'"):
        FeatureSpec(runtime="tensorrt")


def test_auto_runtime_is_litert_then_onnxruntime_where_installed(monkeypatch):
    """``auto`` (the default) picks LiteRT when it is installed, else ONNX Runtime when it and
    tf2onnx are, else Keras; a named runtime is kept as it is."""
    assert {p.name: p.default for p in PARAMETERS}["runtime"] == "auto"
    assert resolve_runtime("auto") == "litert"
    assert resolve_runtime("keras") == "keras"
    assert resolve_runtime("openvino-bf16") == "openvino-bf16"
    monkeypatch.setattr(RUNTIMES["litert"], "packages", ("no_such_package_xyz",))
    second = "onnxruntime" if installed("onnxruntime") else "keras"  # 3.9: keras
    assert resolve_runtime("auto") == second
    monkeypatch.setattr(RUNTIMES["onnxruntime"], "packages", ("no_such_package_xyz",))
    assert resolve_runtime("auto") == "keras"
    assert resolve_runtime("onnxruntime") == "onnxruntime"


def test_converted_runtime_names_missing_packages(monkeypatch):
    """A converted runtime whose packages are missing (the Python 3.9 set) fails before any
    conversion, naming the package and the runtimes that remain."""
    openvino = RUNTIMES["openvino"]
    monkeypatch.setattr(openvino, "packages", ("no_such_package_xyz",))

    def convert(*args):
        raise AssertionError("converted without the runtime's packages")

    monkeypatch.setattr(openvino, "convert", convert)
    weights = models.Weights([], "0" * 64, "test")
    with pytest.raises(ValueError, match="runtime 'openvino' needs no_such_package_xyz.*'keras'"):
        openvino.converted("mobilenet_v2", 224, weights)


def test_daemon_imports_tensorflow_only_for_keras(spark):
    """UDFs made under runtime_environment(R) run in workers whose daemon pre-imported R's
    package: TensorFlow for keras only. Other UDFs (EDA, PCA) get a daemon importing none."""

    def loaded(runtime: str | None) -> set[str]:
        @F.pandas_udf("string")
        def imported(ids: pd.Series) -> pd.Series:
            import sys

            names = ("tensorflow", "ai_edge_litert", "onnxruntime", "openvino")
            return pd.Series([",".join(n for n in names if n in sys.modules)] * len(ids))

        if runtime is None:
            column = imported("id")
        else:
            with runtime_environment(spark, runtime):
                column = imported("id")
        rows = spark.range(4, numPartitions=2).select(column.alias("modules")).collect()
        return {row.modules for row in rows}

    for runtime, module in (
        ("litert", "ai_edge_litert"),
        ("onnxruntime", "onnxruntime"),
        ("openvino", "openvino"),
    ):
        if installed(runtime):
            assert loaded(runtime) == {module}
    assert loaded("keras") == {"tensorflow"}
    assert loaded(None) == {""}


def test_weights_file_needs_no_model_on_the_driver(runs, weights):
    """A weights file goes to the workers as its bytes, named by its own SHA-256: with a
    cached conversion (litert, onnxruntime) or none needed (keras), the driver never builds a
    model."""
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    extracted = [r for r in ("litert", "onnxruntime", "keras") if f"extract-{r}" in runs]
    assert len(extracted) > 1, "no converted runtime ran"
    for runtime in extracted:
        summary = runs[f"extract-{runtime}"]
        assert summary.images_decoded == IMAGES and summary.info.weights_sha256 == digest
        if runtime != "keras":
            assert summary.info.converted_from_cache is True


def test_unfit_weights_file_is_named(spark, tiny_root, tmp_path):
    """A file that is no .h5 weights file is named before any job runs."""
    bad = tmp_path / "bad.h5"
    bad.write_text("not weights")
    with pytest.raises(ValueError, match="bad.h5.*not a Keras .h5 weights file"):
        featurize(spark, list_images(spark, str(tiny_root)).images, FeatureSpec(weights=str(bad)))


def test_openvino_imports_without_telemetry():
    """OpenVINO as the workers import it: its telemetry never loads, so no thread sends usage
    data, and none is left running when Spark's daemon forks a worker."""
    needs("openvino")
    code = (
        "import sys, threading\n"
        "from helpers.features.runtimes import import_openvino\n"
        "import_openvino().Core()\n"
        "print(threading.active_count(), sys.modules['openvino_telemetry'])\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert child.stdout.split() == ["1", "None"]


def test_damaged_converted_model_is_converted_again(
    runs, spark, weights, real_images, caplog, monkeypatch
):
    """The cached TFLite model damaged in place (same size): the next run converts it again,
    warning with its name, and gives the same features; without its record, the same. Runs
    last: it rewrites the cache the tests above read."""
    needs("litert")
    for module in (models, runtimes):  # converting builds the model on the driver
        monkeypatch.setattr(module, "build_model", BUILD_MODEL)
    first, rows = runs["litert"]
    path = runs["cache"] / "tflite" / first.info.converted_model
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="helpers.caches")
    spec = FeatureSpec(weights=weights, runtime="litert")
    loaded = driver_weights("mobilenet_v2", weights, 224)
    for damage in ("its SHA-256 differs from the record", "no record"):
        caplog.clear()
        images = list_images(spark, str(real_images)).images
        run = featurize(spark, images, spec, loaded=loaded)
        assert run.info.converted_from_cache is False and run.info.converted_model == path.name
        assert f"cached {path}: {damage}" in caplog.text and "converted again" in caplog.text
        assert read_record(path)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        again = run.features.toPandas().set_index("path").sort_index()
        expected = np.stack(rows["features"].to_numpy())
        got = np.stack(again["features"].to_numpy())
        assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-6
        if damage != "no record":
            sidecar(path).unlink()
