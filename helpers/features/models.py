"""The CNNs without their top, their preprocessing, and the weights they run with.

A leaf of the feature step: Keras and TensorFlow are imported inside the functions that
build a model, so the workers of a converted runtime and the daemon never import them.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helpers import env

log = logging.getLogger(__name__)

#: The CNNs the pipeline knows: Keras application name, feature width, preprocessing module.
MODELS: dict[str, dict[str, Any]] = {
    "mobilenet_v2": {"keras": "MobileNetV2", "dim": 1280, "module": "mobilenet_v2"},
    "resnet50": {"keras": "ResNet50", "dim": 2048, "module": "resnet50"},
}

#: ImageNet channel means, BGR order, of Keras' "caffe" preprocessing (ResNet50).
_CAFFE_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def check_model(model_name: str, parameter: str = "model_name") -> None:
    """Fail, naming ``parameter`` and the choices, on a model this project does not know."""
    if model_name not in MODELS:
        raise ValueError(f"{parameter} '{model_name}' is unknown; use one of {sorted(MODELS)}")


def preprocess(model_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Keras' ``preprocess_input`` for ``model_name`` in numpy, float32, without Keras.

    MobileNetV2 ("tf" mode) scales to [-1, 1] in place (no batch-sized temporaries);
    ResNet50 ("caffe" mode) turns RGB into BGR and subtracts the ImageNet means.
    """
    module = MODELS[model_name]["module"]
    if module == "mobilenet_v2":
        return _scale_tf
    return lambda pixels: pixels[..., ::-1] - _CAFFE_MEAN


def _scale_tf(pixels: np.ndarray) -> np.ndarray:
    """Keras' "tf" mode on a float32 batch, in place: ``x / 127.5 - 1``."""
    pixels /= np.float32(127.5)
    pixels -= np.float32(1.0)
    return pixels


def _does_not_fit(source: str, model_name: str, exc: Exception) -> ValueError:
    return ValueError(f"weights file '{source}' does not fit {model_name} without its top: {exc}")


@contextmanager
def _h5_file(data: bytes) -> Iterator[str]:
    """A weights file's bytes as a temporary ``.h5`` path (Keras loads files, not bytes)."""
    with tempfile.NamedTemporaryFile(suffix=".h5") as handle:
        handle.write(data)
        handle.flush()
        yield handle.name


def build_model(model_name: str, image_size: int, weights: str | None = None) -> Any:
    """The Keras CNN ``model_name`` without its top, with global average pooling.

    ``weights`` is what Keras takes: ``'imagenet'`` (its download), a local .h5 path, or
    ``None`` (random: the caller sets the run's weights).
    """
    import keras

    application = getattr(keras.applications, MODELS[model_name]["keras"])
    try:
        return application(
            weights=weights,
            include_top=False,
            pooling="avg",
            input_shape=(image_size, image_size, 3),
        )
    except Exception as exc:
        if weights == "imagenet":
            raise RuntimeError(
                f"could not download the ImageNet weights for {model_name} ({exc}); on a "
                f"machine without internet pass a local .h5 file as the 'weights' parameter "
                f"or in ${env.WEIGHTS_ENV}"
            ) from exc
        if weights is not None:
            raise _does_not_fit(weights, model_name, exc) from exc
        raise


def weights_checksum(arrays: list[np.ndarray]) -> str:
    """SHA-256 over the weight arrays (weights that come from no file: imagenet, random)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Weights:
    """The run's weights as the driver holds them, and their checksum.

    ``payload`` is a weights file's bytes (``checksum``: the file's SHA-256, comparable with
    published checksums) or the weight arrays (``imagenet`` through Keras' download, and
    ``random``; ``checksum``: :func:`weights_checksum`). ``source`` names them in messages.
    """

    payload: bytes | list[np.ndarray]
    checksum: str
    source: str

    def load_into(self, model: Any, model_name: str) -> None:
        """Give the Keras ``model`` these weights."""
        if not isinstance(self.payload, bytes):
            model.set_weights(self.payload)
            return
        with _h5_file(self.payload) as path:
            try:
                model.load_weights(path)
            except Exception as exc:
                raise _does_not_fit(self.source, model_name, exc) from exc

    def arrays(self, model_name: str, image_size: int) -> list[np.ndarray]:
        """The weight arrays (a file's bytes are loaded into a model: TensorFlow imported).

        Works where ``source`` is gone (a saved :class:`ImageFeaturizer`): bytes suffice.
        """
        if not isinstance(self.payload, bytes):
            return self.payload
        model = build_model(model_name, image_size)
        self.load_into(model, model_name)
        return model.get_weights()


def resolve_weights(weights: str) -> str:
    """What Keras' ``weights=`` should get: ``'imagenet'``, ``'random'`` or a local path.

    ``$FRUITS_WEIGHTS`` replaces ``'imagenet'`` (offline machines and CI point every
    notebook at a local copy). A URI (``s3://``, ``dbfs:/``) is downloaded once to the
    weights cache; only the driver reads it, the workers get the broadcast.
    """
    if weights == "imagenet" and env.get(env.WEIGHTS_ENV):
        weights = env.get(env.WEIGHTS_ENV)
    if weights in ("imagenet", "random"):
        return weights
    missing = (
        f"weights file '{weights}' not found: pass weights='imagenet' (Keras download, needs "
        f"internet), a local .h5 path or an s3:// URI, as the 'weights' parameter or "
        f"${env.WEIGHTS_ENV}"
    )
    from helpers.paths import download, is_remote

    if is_remote(weights):
        return str(download(weights, env.cache_dir("weights"), missing=missing))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(missing)
    return str(path.resolve())


def driver_weights(model_name: str, weights: str, image_size: int) -> Weights:
    """Read the run's weights on the driver.

    A weights file (a local path, or an ``s3://`` URI downloaded once) travels as its bytes:
    the driver neither imports TensorFlow nor builds the model. ``imagenet`` (Keras'
    download) and ``random`` (seeded; tests only) are loaded into a model and travel as
    arrays.
    """
    resolved = resolve_weights(weights)
    if resolved in ("imagenet", "random"):
        import keras

        if resolved == "random":
            log.warning("weights='random': features are meaningless, use this for tests only")
            keras.utils.set_random_seed(0)
        model = build_model(model_name, image_size, None if resolved == "random" else resolved)
        arrays = model.get_weights()
        return Weights(arrays, weights_checksum(arrays), resolved)
    import h5py

    if not h5py.is_hdf5(resolved):
        raise ValueError(
            f"weights file '{resolved}' is not a Keras .h5 weights file for {model_name} "
            f"without its top (parameter 'weights' or ${env.WEIGHTS_ENV})"
        )
    data = Path(resolved).read_bytes()
    return Weights(data, hashlib.sha256(data).hexdigest(), resolved)
