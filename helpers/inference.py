"""Inference runtimes besides Keras: the CNN converted to ONNX and run by ONNX Runtime.

The driver converts the Keras model, holding the run's weights, to ONNX once (tf2onnx) and
caches the file under ``WEIGHTS_CACHE / "onnx"``, keyed by model, image size, weights
checksum (a weights file's own SHA-256) and runtime: a later run with the same weights file
reads the cached model without loading the weights or importing TensorFlow. The bytes are
broadcast; each Python worker builds one ONNX Runtime session from them and keeps it
across tasks. Nothing on the worker side imports TensorFlow
or Keras: the preprocessing is the numpy equivalent of Keras' ``preprocess_input``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.config import MODELS, RUNTIME_CHOICES, WEIGHTS_CACHE

log = logging.getLogger(__name__)

#: ONNX opset of the converted models (ONNX Runtime 1.31 runs it; tf2onnx 1.17 writes it).
OPSET = 17

#: ImageNet channel means, BGR order, of Keras' "caffe" preprocessing (ResNet50).
_CAFFE_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


#: The packages each converted runtime needs on the driver (conversion) and the workers.
_RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "tf2onnx")}


def check_runtime(runtime: str) -> None:
    """Fail early, naming the choices, on a runtime this project does not know."""
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(
            f"runtime '{runtime}' is unknown; use one of {list(RUNTIME_CHOICES)} "
            "(parameter 'runtime')"
        )


def resolve_runtime(runtime: str) -> str:
    """The runtime that runs the model: ``runtime`` itself, or for ``auto`` ONNX Runtime where
    its packages are installed (exact to 1e-4 and faster, see bench/README.md), else Keras.

    Python 3.9 sets (EMR 7's default Python) have no ONNX Runtime that works with Keras 3,
    so ``auto`` is ``keras`` there. Looks the packages up without importing them.
    """
    check_runtime(runtime)
    if runtime != "auto":
        return runtime
    for name, packages in _RUNTIME_PACKAGES.items():
        missing = [p for p in packages if importlib.util.find_spec(p) is None]
        if not missing:
            return name
        log.info("runtime auto: not %s (%s not installed)", name, ", ".join(missing))
    return "keras"


def preprocess(module: str) -> Callable[[np.ndarray], np.ndarray]:
    """Keras' ``preprocess_input`` of ``module`` in numpy, float32, without importing Keras.

    ``mobilenet_v2`` ("tf" mode) scales to [-1, 1]; ``resnet50`` ("caffe" mode) turns RGB
    into BGR and subtracts the ImageNet means. Same float32 operations as Keras, same values.
    """
    if module == "mobilenet_v2":
        return lambda pixels: pixels / np.float32(127.5) - np.float32(1.0)
    if module == "resnet50":
        return lambda pixels: pixels[..., ::-1] - _CAFFE_MEAN
    raise ValueError(f"no numpy preprocessing for '{module}'; known: mobilenet_v2, resnet50")


@dataclass(frozen=True)
class ConvertedModel:
    """A model converted for a runtime: its serialized bytes, cache file, and whether the
    bytes come from the cache (``False``: converted by this call)."""

    data: bytes
    path: Path
    cached: bool


def cache_path(model_name: str, image_size: int, checksum: str, runtime: str) -> Path:
    """The cache file of ``model_name`` at ``image_size`` with weights ``checksum``."""
    from importlib.metadata import version  # not tf2onnx itself: importing it imports TF

    name = f"{model_name}-{image_size}px-{checksum[:32]}-{runtime}-tf2onnx{version('tf2onnx')}"
    return WEIGHTS_CACHE / "onnx" / f"{name}-opset{OPSET}.onnx"


def _to_onnx(model_name: str, image_size: int, arrays: list[np.ndarray]) -> bytes:
    """Convert the Keras model ``model_name`` holding ``arrays`` to ONNX bytes (tf2onnx)."""
    import tensorflow as tf
    import tf2onnx

    from helpers.features import build_model

    model = build_model(model_name, None, image_size)
    model.set_weights(arrays)
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")
    function = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=OPSET)
    return proto.SerializeToString()


def converted_model(
    model_name: str,
    image_size: int,
    arrays: Callable[[], list[np.ndarray]],
    checksum: str,
    runtime: str,
) -> ConvertedModel:
    """The ONNX model for ``runtime``: from the cache, else converted once and cached.

    ``checksum`` names the weights (a weights file's SHA-256): a cached model needs neither
    the weight arrays nor TensorFlow on the driver; ``arrays`` is called only to convert.
    The file is written to a temporary name and renamed, so a run interrupted mid-write,
    or two drivers converting at once, never leave a truncated model behind.
    """
    check_runtime(runtime)
    if runtime in ("keras", "auto"):
        raise ValueError(f"runtime '{runtime}' is no converted runtime: nothing to convert")
    if model_name not in MODELS:
        raise ValueError(f"model_name '{model_name}' is unknown; use one of {sorted(MODELS)}")
    path = cache_path(model_name, image_size, checksum, runtime)
    if path.is_file():
        log.info("ONNX model from the cache: %s", path)
        return ConvertedModel(path.read_bytes(), path, cached=True)
    log.info("converting %s at %d px to ONNX (once per weights): %s", model_name, image_size, path)
    data = _to_onnx(model_name, image_size, arrays())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ConvertedModel(data, path, cached=False)


# Per-process cache: a Python worker builds one session and reuses it across tasks.
_WORKER_SESSIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def worker_session(key: str, model: object, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """This Python worker's inference function for the converted model ``key``.

    ``model`` is the broadcast of the ONNX bytes, read only the first time (its value is
    fetched lazily). ONNX Runtime gets ``threads`` intra-op threads: the cores a Spark task
    owns. One session per worker: a new ``key`` (other weights or model) replaces the old.
    """
    if key not in _WORKER_SESSIONS:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            model.value,
            options,
            providers=["CPUExecutionProvider"],  # type: ignore[attr-defined]
        )
        name = session.get_inputs()[0].name

        def infer(pixels: np.ndarray) -> np.ndarray:
            return session.run(None, {name: np.ascontiguousarray(pixels, np.float32)})[0]

        _WORKER_SESSIONS.clear()
        _WORKER_SESSIONS[key] = infer
    return _WORKER_SESSIONS[key]
