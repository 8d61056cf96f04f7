"""The inference runtimes of the feature step, one class each, and the worker's one model.

A runtime owns everything that differs between ways of running the CNN: the packages it
needs, what the driver sends the workers (Keras: the weights; the others: the model
converted once per weights and cached), how a Python worker builds its inference function,
and what Spark's Python daemon imports before forking workers (:mod:`helpers.daemon`).
Adding a runtime is adding a class to :data:`RUNTIMES`.

The converted runtimes need no TensorFlow on the workers: ``litert`` runs a TFLite file
(TensorFlow's converter), ``onnxruntime``, ``openvino`` and ``openvino-bf16`` one ONNX file
(tf2onnx). All but ``openvino-bf16`` give Keras' features within 1e-4. ``litert-int8`` (opt-in)
runs a full-integer quantization of the TFLite model, calibrated on the run's own Training
images (:class:`Calibration`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from helpers import caches, env
from helpers.features.models import Weights, build_model, preprocess

log = logging.getLogger(__name__)

#: A worker's inference function: preprocessed pixels (n, size, size, 3) -> features (n, dim).
Infer = Callable[[np.ndarray], np.ndarray]

#: ONNX opset of the converted models (ONNX Runtime 1.31 runs it; tf2onnx 1.17 writes it).
OPSET = 17


#: Training images a quantized model is calibrated on, at most, and the seed that picks them.
CALIBRATION_IMAGES = 200
CALIBRATION_SEED = 42


@dataclass(frozen=True)
class Calibration:
    """The images a quantized model is calibrated on: a digest of their bytes (which names
    the model), how many, the seed that picked them, and their pixels (uint8, ``size`` x
    ``size`` x 3; empty when only the record is known, e.g. a saved featurizer's: the cached
    model is then the only source)."""

    digest: str
    count: int
    seed: int
    pixels: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, images: Iterable[tuple[bytes, np.ndarray]], seed: int) -> Calibration:
        """The calibration of ``images`` (each its file's bytes and decoded pixels)."""
        # ordered by content: the digest and the model depend on the bytes, not on paths
        hashed = sorted(
            ((hashlib.sha256(data).digest(), pixels) for data, pixels in images),
            key=lambda pair: pair[0],  # duplicate files: never compare their pixels
        )
        digest = hashlib.sha256(b"".join(h for h, _ in hashed)).hexdigest()
        return cls(digest, len(hashed), seed, tuple(p for _, p in hashed))

    def to_manifest(self) -> dict[str, Any]:
        """What the manifest and the commit records keep: count, digest, seed."""
        return {"count": self.count, "digest": self.digest, "seed": self.seed}

    @classmethod
    def from_manifest(cls, values: Mapping[str, Any]) -> Calibration:
        """A calibration as recorded (no pixels)."""
        return cls(str(values["digest"]), int(values["count"]), int(values["seed"]))


@dataclass(frozen=True)
class ConvertedModel:
    """A converted model's bytes, its cache file, and whether it came from the cache."""

    data: bytes
    path: Path
    cached: bool


class Runtime:
    """A way to run the CNN: Keras itself (this base class's defaults are the converted
    runtimes'; :class:`Keras` overrides them)."""

    name = ""
    #: Modules it needs besides TensorFlow (every set has TensorFlow: Keras, converters).
    packages: tuple[str, ...] = ()
    #: Whether its model is calibrated on the run's images (:class:`Calibration`).
    calibrated = False

    def has_model(
        self, model_name: str, image_size: int, checksum: str, calibration: Calibration
    ) -> bool:
        """A calibrated runtime's: whether the cache holds the model of ``calibration``."""
        return False

    def missing(self) -> list[str]:
        """The modules it needs that are not installed (looked up, not imported)."""
        return [p for p in self.packages if importlib.util.find_spec(p) is None]

    def preload(self) -> None:
        """Import what its workers need: run by the Python daemon before it forks them."""
        for package in self.packages:
            if package != "tf2onnx":  # the driver's converter
                importlib.import_module(package)

    # --- the driver -----------------------------------------------------------------------

    def payload(
        self,
        model_name: str,
        image_size: int,
        weights: Weights,
        calibration: Calibration | None = None,
    ) -> tuple[Any, ConvertedModel | None]:
        """What the driver broadcasts to the workers, and the conversion it came from
        (``calibration``: a calibrated runtime's images; the others take none)."""
        model = self.converted(model_name, image_size, weights, calibration)
        return model.data, model

    def cache_path(self, model_name: str, image_size: int, checksum: str) -> Path:
        """The converted model's cache file: named by what the conversion depends on."""
        raise NotImplementedError

    def convert(self, model_name: str, image_size: int, arrays: list[np.ndarray]) -> bytes:
        """The Keras model holding ``arrays``, converted for this runtime."""
        raise NotImplementedError

    def converted(
        self,
        model_name: str,
        image_size: int,
        weights: Weights,
        calibration: Calibration | None = None,
    ) -> ConvertedModel:
        """The converted model: from the cache, else converted once and cached.

        A cached model needs neither the weight arrays nor TensorFlow on the driver. The file
        is written to a temporary name and renamed: a run killed mid-write, or two drivers
        converting at once, never leave a truncated model behind. It is used only while its
        SHA-256 matches the record written after it (:mod:`helpers.caches`); a damaged file
        or one without a record is converted again.
        """
        self.check_installed()
        path = self.cache_path(model_name, image_size, weights.checksum)
        return self._cached(
            path,
            lambda: self.convert(model_name, image_size, weights.arrays(model_name, image_size)),
        )

    def check_installed(self) -> None:
        """Fail, naming the packages, when one it needs is not installed."""
        missing = self.missing()
        if missing:
            raise ValueError(
                f"runtime '{self.name}' needs {', '.join(missing)}, not installed here (the "
                "Python 3.10+ sets install every runtime; the Python 3.9 set LiteRT only): use "
                "runtime 'keras' or 'auto'"
            )

    @staticmethod
    def cached(path: Path) -> ConvertedModel | None:
        """The model in the cache file ``path``, when there and matching its record."""
        if path.is_file():
            data = path.read_bytes()
            if caches.verified(path, hashlib.sha256(data).hexdigest(), action="converted again"):
                log.info("converted model from the cache: %s", path)
                return ConvertedModel(data, path, cached=True)
        return None

    def _cached(self, path: Path, convert: Callable[[], bytes]) -> ConvertedModel:
        """The model in ``path``, else ``convert()``'s, written there first."""
        found = self.cached(path)
        if found is not None:
            return found
        log.info("converting for %s (once per weights): %s", self.name, path)
        data = convert()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        caches.record(path, hashlib.sha256(data).hexdigest())
        return ConvertedModel(data, path, cached=False)

    # --- a Python worker ------------------------------------------------------------------

    def build(self, model_name: str, image_size: int, threads: int) -> Any:
        """What a worker can make before the weights arrive (Keras: the traced model)."""
        return None

    def session(self, model_name: str, built: Any, payload: Any, threads: int) -> Infer:
        """The worker's inference function for the broadcast ``payload``, on ``threads``."""
        raise NotImplementedError


def _versions() -> dict[str, str]:
    from helpers.manifest import versions  # the packages' metadata: no TF or tf2onnx import

    return versions()


def _inference_function(model_name: str, size: int, arrays: list[np.ndarray]) -> Any:
    """The Keras model holding ``arrays`` as a ``tf.function`` of any batch length."""
    import tensorflow as tf

    model = build_model(model_name, size)
    model.set_weights(arrays)
    signature = tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")
    return tf.function(lambda x: model(x, training=False), input_signature=[signature])


class Keras(Runtime):
    """TensorFlow itself: the workers build the model and receive the weights."""

    name = "keras"

    def missing(self) -> list[str]:
        return []

    def preload(self) -> None:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

    def payload(
        self,
        model_name: str,
        image_size: int,
        weights: Weights,
        calibration: Calibration | None = None,
    ) -> tuple[Any, ConvertedModel | None]:
        return weights, None

    def build(self, model_name: str, image_size: int, threads: int) -> tuple[Any, Infer]:
        """The model with random weights, traced once for any batch length; TensorFlow on
        ``threads`` threads (a Spark task's cores: tasks sharing an executor share them)."""
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started in this process: keep its settings
            pass
        model = build_model(model_name, image_size)
        size = image_size
        signature = tf.TensorSpec([None, size, size, 3], tf.float32)
        infer = tf.function(lambda x: model(x, training=False), input_signature=[signature])
        infer(np.zeros((1, size, size, 3), np.float32))
        return model, lambda pixels: infer(pixels).numpy()

    def session(self, model_name: str, built: Any, payload: Any, threads: int) -> Infer:
        model, infer = built
        payload.load_into(model, model_name)
        return infer


class LiteRT(Runtime):
    """The model converted to TFLite by TensorFlow's converter, run by LiteRT (XNNPACK)."""

    name = "litert"
    packages = ("ai_edge_litert",)

    def preload(self) -> None:
        import ai_edge_litert.interpreter  # noqa: F401

    def cache_path(self, model_name: str, image_size: int, checksum: str) -> Path:
        found = _versions()
        tensorflow = found.get("tensorflow-cpu") or found.get("tensorflow")
        stem = f"{model_name}-{image_size}px-{checksum[:32]}"
        return env.cache_dir("tflite") / f"{stem}-tensorflow{tensorflow}.tflite"

    def convert(self, model_name: str, image_size: int, arrays: list[np.ndarray]) -> bytes:
        """float32, no optimization asked: no quantization."""
        import tensorflow as tf

        function = _inference_function(model_name, image_size, arrays)
        # the function as the converter's trackable: it freezes the weights the function holds
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [function.get_concrete_function()], function
        )
        return converter.convert()

    def session(self, model_name: str, built: Any, payload: Any, threads: int) -> Infer:
        """One image per call: on one thread XNNPACK was fastest so (docs/decisions.md)."""
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=payload, num_threads=threads)
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


class LiteRTInt8(LiteRT):
    """TensorFlow's post-training full-integer quantization of the TFLite model (weights and
    activations int8, float32 in and out), calibrated on the run's own Training images, run
    by LiteRT like ``litert``. Opt-in: faster, features moved (bench/README.md)."""

    name = "litert-int8"
    calibrated = True

    def int8_cache_path(
        self, model_name: str, image_size: int, checksum: str, calibration: Calibration
    ) -> Path:
        """The cache file: ``litert``'s name and the calibration images' digest (another
        data set gets another model)."""
        base = self.cache_path(model_name, image_size, checksum)
        return base.with_name(f"{base.stem}-int8-calibration{calibration.digest[:32]}.tflite")

    def has_model(
        self, model_name: str, image_size: int, checksum: str, calibration: Calibration
    ) -> bool:
        """Whether the cache holds the model of ``calibration`` (checked when read)."""
        return self.int8_cache_path(model_name, image_size, checksum, calibration).is_file()

    def converted(
        self,
        model_name: str,
        image_size: int,
        weights: Weights,
        calibration: Calibration | None = None,
    ) -> ConvertedModel:
        """The int8 model for ``calibration``: from the cache, else quantized once (about
        a minute for 200 images at 224 px). A calibration known by its record only (no
        pixels) must be in the cache."""
        self.check_installed()
        if calibration is None:
            raise ValueError(
                f"runtime '{self.name}' is calibrated on the run's Training images, and none "
                "were given: featurize with notebook 02 (or pass the calibration), or use "
                "runtime 'litert' (parameter 'runtime')"
            )
        path = self.int8_cache_path(model_name, image_size, weights.checksum, calibration)
        if not calibration.pixels:
            found = self.cached(path)
            if found is None:
                raise ValueError(
                    f"runtime '{self.name}': the int8 model calibrated on {calibration.count} "
                    f"images (digest {calibration.digest[:12]}...) is not in the cache ({path}); "
                    "run notebook 02 on the data again to rebuild it"
                )
            return found
        arrays = weights.arrays(model_name, image_size)
        return self._cached(
            path, lambda: self.quantize(model_name, image_size, arrays, calibration)
        )

    def quantize(
        self, model_name: str, image_size: int, arrays: list[np.ndarray], calibration: Calibration
    ) -> bytes:
        """Full-integer quantization of the Keras model holding ``arrays``, its activation
        ranges taken from ``calibration``'s images."""
        import tensorflow as tf

        function = _inference_function(model_name, image_size, arrays)
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [function.get_concrete_function()], function
        )
        prepare = preprocess(model_name)

        def representative() -> Any:
            for pixels in calibration.pixels:
                yield [prepare(np.array(pixels[np.newaxis], np.float32))]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return converter.convert()


class _Onnx(Runtime):
    """The model converted to ONNX by tf2onnx: one file for every ONNX runtime."""

    def cache_path(self, model_name: str, image_size: int, checksum: str) -> Path:
        stem = f"{model_name}-{image_size}px-{checksum[:32]}"
        tf2onnx = _versions()["tf2onnx"]
        return env.cache_dir("onnx") / f"{stem}-tf2onnx{tf2onnx}-opset{OPSET}.onnx"

    def convert(self, model_name: str, image_size: int, arrays: list[np.ndarray]) -> bytes:
        import tf2onnx

        function = _inference_function(model_name, image_size, arrays)
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=OPSET
        )
        return proto.SerializeToString()


class OnnxRuntime(_Onnx):
    """ONNX Runtime on the CPU."""

    name = "onnxruntime"
    packages = ("onnxruntime", "tf2onnx")

    def session(self, model_name: str, built: Any, payload: Any, threads: int) -> Infer:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda pixels: session.run(None, {name: np.ascontiguousarray(pixels, np.float32)})[0]


def import_openvino() -> Any:
    """Import OpenVINO without its usage telemetry.

    Its telemetry sends an event from a background thread (not what a GDPR-minded pipeline
    does), and a worker forked while that thread imports waits forever on the import lock.
    With the module marked absent, OpenVINO uses its own stub: no thread, nothing sent.
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


class OpenVINO(_Onnx):
    """OpenVINO on the CPU at ``precision``: ``f32`` (exact) or ``bf16`` (opt-in, faster on
    CPUs with bfloat16 instructions, features moved)."""

    packages = ("openvino", "tf2onnx")

    def __init__(self, name: str, precision: str) -> None:
        self.name, self.precision = name, precision

    def preload(self) -> None:
        import_openvino()

    def config(self, threads: int) -> dict[str, Any]:
        """CPU settings: ``threads`` threads in one stream, not pinned to cores (pinned, the
        workers sharing a machine all took the same first cores)."""
        return {
            "INFERENCE_PRECISION_HINT": self.precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,
        }

    def session(self, model_name: str, built: Any, payload: Any, threads: int) -> Infer:
        core = import_openvino().Core()
        compiled = core.compile_model(core.read_model(model=payload), "CPU", self.config(threads))
        request = compiled.create_infer_request()
        output = compiled.output(0)
        # the output is copied (share_outputs=False): the next call reuses the request's memory
        return lambda pixels: request.infer({0: np.ascontiguousarray(pixels, np.float32)})[output]


#: Every runtime, by name.
RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Keras(),
        LiteRT(),
        LiteRTInt8(),
        OnnxRuntime(),
        OpenVINO("openvino", "f32"),
        OpenVINO("openvino-bf16", "bf16"),
    )
}

#: What ``auto`` tries, in order: the fastest exact runtimes measured through Spark.
AUTO = ("litert", "onnxruntime")

#: What the ``runtime`` parameter takes.
RUNTIME_CHOICES = ("auto", *RUNTIMES)


def check_runtime(name: str, parameter: str = "runtime") -> None:
    """Fail, naming ``parameter`` and the choices, on a runtime this project does not know."""
    if name not in RUNTIME_CHOICES:
        raise ValueError(
            f"{parameter} '{name}' is unknown; use one of {list(RUNTIME_CHOICES)} "
            f"(parameter '{parameter}')"
        )


def resolve_runtime(name: str) -> str:
    """``name`` itself, or for ``auto`` the first of :data:`AUTO` that is installed, else
    ``keras``. Looks the packages up without importing them."""
    check_runtime(name)
    if name != "auto":
        return name
    for candidate in AUTO:
        missing = RUNTIMES[candidate].missing()
        if not missing:
            return candidate
        log.info("runtime auto: not %s (%s not installed)", candidate, ", ".join(missing))
    return "keras"
