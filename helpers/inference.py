"""Inference runtimes besides Keras: the CNN converted to TFLite, run by LiteRT, or to ONNX,
run by ONNX Runtime or OpenVINO.

The driver converts the Keras model, holding the run's weights, once and caches the file,
keyed by the conversion: model, image size, weights checksum (a weights file's own
SHA-256) and converter. ``litert`` reads a TFLite file (TensorFlow's own converter, under
``WEIGHTS_CACHE / "tflite"``); ``onnxruntime``, ``openvino`` and ``openvino-bf16`` read
one ONNX file (tf2onnx and its opset, under ``WEIGHTS_CACHE / "onnx"``). A later run with
the same weights file reads the cache without loading the weights or importing
TensorFlow. The bytes are broadcast; each Python worker builds one LiteRT interpreter,
ONNX Runtime session or OpenVINO compiled model from them and keeps it across tasks.
Nothing on the worker side imports TensorFlow or Keras: the preprocessing is the numpy
equivalent of Keras' ``preprocess_input``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helpers.config import MODELS, OPENVINO_PRECISION, RUNTIME_CHOICES, WEIGHTS_CACHE

log = logging.getLogger(__name__)

#: ONNX opset of the converted models (ONNX Runtime 1.31 runs it; tf2onnx 1.17 writes it).
OPSET = 17

#: ImageNet channel means, BGR order, of Keras' "caffe" preprocessing (ResNet50).
_CAFFE_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


#: The packages each converted runtime needs on the driver (conversion) and the workers,
#: besides TensorFlow (every set has it: the ``keras`` runtime and TFLite's converter).
_RUNTIME_PACKAGES = {
    "litert": ("ai_edge_litert",),
    "onnxruntime": ("onnxruntime", "tf2onnx"),
    **{runtime: ("openvino", "tf2onnx") for runtime in OPENVINO_PRECISION},
}

#: The converted runtimes ``auto`` tries, in order: LiteRT measured fastest through Spark,
#: then ONNX Runtime. OpenVINO is named only: its f32 path measured no faster than ONNX
#: Runtime through Spark, and bf16 moves the features (bench/README.md#runtimes).
_AUTO = ("litert", "onnxruntime")


def _missing(runtime: str) -> list[str]:
    """The packages ``runtime`` needs that are not installed (looked up, not imported)."""
    return [p for p in _RUNTIME_PACKAGES[runtime] if importlib.util.find_spec(p) is None]


def check_runtime(runtime: str) -> None:
    """Fail early, naming the choices, on a runtime this project does not know."""
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(
            f"runtime '{runtime}' is unknown; use one of {list(RUNTIME_CHOICES)} "
            "(parameter 'runtime')"
        )


def resolve_runtime(runtime: str) -> str:
    """The runtime that runs the model: ``runtime`` itself, or for ``auto`` the first of LiteRT
    and ONNX Runtime whose packages are installed (both exact to 1e-4 and faster, see
    bench/README.md), else Keras.

    The Python 3.9 set (EMR 7's default Python) has LiteRT 2.1 and no ONNX Runtime.
    Looks the packages up without importing them.
    """
    check_runtime(runtime)
    if runtime != "auto":
        return runtime
    for name in _AUTO:
        missing = _missing(name)
        if not missing:
            return name
        log.info("runtime auto: not %s (%s not installed)", name, ", ".join(missing))
    return "keras"


def preprocess(module: str) -> Callable[[np.ndarray], np.ndarray]:
    """Keras' ``preprocess_input`` of ``module`` in numpy, float32, without importing Keras.

    ``mobilenet_v2`` ("tf" mode) scales to [-1, 1] in place, as Keras does with a float
    array (no temporaries the size of the batch); ``resnet50`` ("caffe" mode) turns RGB into
    BGR and subtracts the ImageNet means. Same float32 operations as Keras, same values.
    """
    if module == "mobilenet_v2":
        return _scale_tf
    if module == "resnet50":
        return lambda pixels: pixels[..., ::-1] - _CAFFE_MEAN
    raise ValueError(f"no numpy preprocessing for '{module}'; known: mobilenet_v2, resnet50")


def _scale_tf(pixels: np.ndarray) -> np.ndarray:
    """Keras' "tf" mode on a float32 batch, in place: ``x / 127.5 - 1``."""
    pixels /= np.float32(127.5)
    pixels -= np.float32(1.0)
    return pixels


@dataclass(frozen=True)
class ConvertedModel:
    """The converted model: its serialized bytes (ONNX or TFLite), cache file, and whether
    the bytes come from the cache (``False``: converted by this call)."""

    data: bytes
    path: Path
    cached: bool


def cache_path(model_name: str, image_size: int, checksum: str, runtime: str) -> Path:
    """The cache file of ``model_name`` at ``image_size`` with weights ``checksum`` for
    ``runtime``: named by the conversion only, so the ONNX runtimes read the same file."""
    from helpers.manifest import versions  # the packages' metadata: no TF or tf2onnx import

    found = versions()
    stem = f"{model_name}-{image_size}px-{checksum[:32]}"
    if runtime == "litert":
        tensorflow = found.get("tensorflow-cpu") or found.get("tensorflow")
        return WEIGHTS_CACHE / "tflite" / f"{stem}-tensorflow{tensorflow}.tflite"
    return WEIGHTS_CACHE / "onnx" / f"{stem}-tf2onnx{found['tf2onnx']}-opset{OPSET}.onnx"


def _inference_function(model_name: str, image_size: int, arrays: list[np.ndarray]) -> Any:
    """The Keras model ``model_name`` holding ``arrays`` as a ``tf.function`` from a batch of
    preprocessed ``image_size`` pixels (any batch size) to the features."""
    import tensorflow as tf

    from helpers.features import build_model

    model = build_model(model_name, None, image_size)
    model.set_weights(arrays)
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


def _to_onnx(model_name: str, image_size: int, arrays: list[np.ndarray]) -> bytes:
    """Convert the Keras model ``model_name`` holding ``arrays`` to ONNX bytes (tf2onnx)."""
    import tf2onnx

    function = _inference_function(model_name, image_size, arrays)
    proto, _ = tf2onnx.convert.from_function(
        function, input_signature=function.input_signature, opset=OPSET
    )
    return proto.SerializeToString()


def _to_tflite(model_name: str, image_size: int, arrays: list[np.ndarray]) -> bytes:
    """Convert the Keras model ``model_name`` holding ``arrays`` to TFLite bytes, float32 (no
    optimization asked: no quantization), with TensorFlow's own converter."""
    import tensorflow as tf

    function = _inference_function(model_name, image_size, arrays)
    # the function as the converter's trackable: it freezes the weights the function holds
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    return converter.convert()


def converted_model(
    model_name: str,
    image_size: int,
    arrays: Callable[[], list[np.ndarray]],
    checksum: str,
    runtime: str,
) -> ConvertedModel:
    """The converted model for ``runtime``: from the cache, else converted once and cached.

    ``litert`` reads TFLite; one ONNX file serves ONNX Runtime and both OpenVINO runtimes.

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
    missing = _missing(runtime)
    if missing:
        raise ValueError(
            f"runtime '{runtime}' needs {', '.join(missing)}, not installed here (the Python "
            "3.10+ sets install every runtime; the Python 3.9 set LiteRT only): use "
            "runtime 'keras' or 'auto'"
        )
    path = cache_path(model_name, image_size, checksum, runtime)
    if path.is_file():
        log.info("converted model from the cache: %s", path)
        return ConvertedModel(path.read_bytes(), path, cached=True)
    log.info("converting %s at %d px (once per weights): %s", model_name, image_size, path)
    convert = _to_tflite if runtime == "litert" else _to_onnx
    data = convert(model_name, image_size, arrays())
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


def worker_session(
    key: str, model: object, threads: int, runtime: str = "onnxruntime"
) -> Callable[[np.ndarray], np.ndarray]:
    """This Python worker's inference function for the converted model ``key``.

    ``model`` is the broadcast of the converted bytes, read only the first time (its value
    is fetched lazily); ``runtime`` runs it (``litert``, ``onnxruntime`` or OpenVINO) on
    ``threads`` threads: the cores a Spark task owns. One session per worker: a new ``key``
    (other weights, model or runtime) replaces the old.
    """
    if key not in _WORKER_SESSIONS:
        data = model.value  # type: ignore[attr-defined]
        if runtime in OPENVINO_PRECISION:
            infer = _openvino_session(data, threads, OPENVINO_PRECISION[runtime])
        elif runtime == "onnxruntime":
            infer = _onnxruntime_session(data, threads)
        elif runtime == "litert":
            infer = _litert_session(data, threads)
        else:
            raise ValueError(f"runtime '{runtime}' is no converted runtime: nothing to run")
        _WORKER_SESSIONS.clear()
        _WORKER_SESSIONS[key] = infer
    return _WORKER_SESSIONS[key]


def _onnxruntime_session(data: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime session on the CPU: ``threads`` intra-op threads, one inter-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def infer(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(pixels, np.float32)})[0]

    return infer


def _litert_session(data: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A LiteRT interpreter of the TFLite bytes (XNNPACK, ``threads`` threads) that runs a
    batch one image per call.

    On one thread XNNPACK was fastest at one image per call, about 1.2x ONNX Runtime at 4
    images (bench/README.md, "LiteRT, the default runtime"), so the UDF's batch size only
    sizes this loop.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data, num_threads=threads)
    (source,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(source["index"], [1, *source["shape"][1:]])
    interpreter.allocate_tensors()
    (target,) = interpreter.get_output_details()

    def infer(pixels: np.ndarray) -> np.ndarray:
        features = np.empty((len(pixels), target["shape"][-1]), np.float32)
        for row, image in enumerate(np.ascontiguousarray(pixels, np.float32)):
            interpreter.set_tensor(source["index"], image[np.newaxis])
            interpreter.invoke()
            features[row] = interpreter.get_tensor(target["index"])[0]
        return features

    return infer


def openvino_config(threads: int, precision: str) -> dict[str, Any]:
    """OpenVINO CPU settings of a worker's compiled model: ``precision`` (``f32``, ``bf16``),
    ``threads`` threads in one stream, and no pinning of threads to cores.

    Several Python workers share a machine, each with its own OpenVINO: pinned, they all
    take the same first cores (two 1-thread workers on 2 cores measured half the speed),
    so the operating system places the threads, as for ONNX Runtime.
    """
    return {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
    }


def import_openvino() -> Any:
    """Import OpenVINO without its usage telemetry.

    ``import openvino`` starts ``openvino_telemetry``, which, unless the user opted out,
    sends an event to Google Analytics from a background thread (no consent asked of
    scripts; not what a GDPR-minded pipeline does on its workers). That thread also imports
    modules while Spark's daemon forks workers, and a worker forked mid-import waits forever
    on the import lock (seen here: a test hung 40 min). With the telemetry module marked
    absent, OpenVINO uses its own stub: no thread, nothing sent.
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def _openvino_session(
    data: bytes, threads: int, precision: str
) -> Callable[[np.ndarray], np.ndarray]:
    """An OpenVINO model compiled for the CPU from the ONNX bytes (batch dimension dynamic)."""
    core = import_openvino().Core()
    compiled = core.compile_model(
        core.read_model(model=data), "CPU", openvino_config(threads, precision)
    )
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def infer(pixels: np.ndarray) -> np.ndarray:
        # a copy of the output (share_outputs=False): the next call reuses the request's memory
        return request.infer({0: np.ascontiguousarray(pixels, np.float32)})[output]

    return infer
