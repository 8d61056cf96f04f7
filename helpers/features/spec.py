"""``FeatureSpec``: the settings that decide the features, checked once, passed whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from helpers.features.models import MODELS, check_model
from helpers.features.runtimes import check_runtime, resolve_runtime

#: Images per model call, by default: with one thread per Python worker, a small batch keeps
#: each layer's activations in the core's caches (docs/decisions.md).
BATCH_SIZE = 4

#: Largest image decoded, in pixels (width x height, read from the header), by default: well
#: under Pillow's own warning (89 M) and error (179 M) limits.
MAX_IMAGE_PIXELS = 50_000_000


@dataclass(frozen=True)
class FeatureSpec:
    """How images become features: the CNN, its weights, the input size, the images per
    model call, the runtime and the largest image decoded, in pixels (names as the
    pipeline's parameters; a larger image gets an error row, read from its header).

    ``weights`` says where they come from (``imagenet``, a .h5 path or an ``s3://`` URI;
    ``random`` for tests); ``runtime`` may be ``auto`` until :meth:`resolved`.
    """

    model_name: str = "mobilenet_v2"
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = BATCH_SIZE
    runtime: str = "auto"
    max_image_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        check_model(self.model_name)
        check_runtime(self.runtime)
        for name in ("image_size", "batch_size", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FeatureSpec:
        """The spec named by pipeline parameters (others in ``params`` are ignored)."""
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})

    @property
    def dim(self) -> int:
        """Width of the features: 1280 for MobileNetV2, 2048 for ResNet50."""
        return int(MODELS[self.model_name]["dim"])

    def resolved(self) -> FeatureSpec:
        """This spec with ``auto`` replaced by the runtime that will run."""
        return replace(self, runtime=resolve_runtime(self.runtime))
