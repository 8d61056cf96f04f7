"""``manifest.json``: what a run used and found, one section per notebook, for audits."""

from __future__ import annotations

import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from helpers.lease import writer_lease
from helpers.paths import exists, join, read_bytes, write_bytes

PACKAGES = (
    "pyspark",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "scikit-learn",
    "papermill",
    # the converted runtimes and their converters: they run the model
    "ai-edge-litert",
    "onnxruntime",
    "tf2onnx",
    "openvino",
    "fruits-pipeline",
)


def versions() -> dict[str, str]:
    """Python and the versions of the packages that shape the results."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_manifest(output_root: str) -> dict[str, Any]:
    """The manifest under ``output_root``, or an empty dict before the first run."""
    uri = join(output_root, "manifest.json")
    return json.loads(read_bytes(uri)) if exists(uri) else {}


def update_manifest(output_root: str, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Replace one section of ``output_root/manifest.json`` and write the file whole.

    The read-modify-write holds the output root's lease: two runs never interleave it.
    """
    with writer_lease(output_root, f"manifest.json ({section})"):
        manifest = read_manifest(output_root)
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest[section] = {**values, "finished": finished}
        manifest["versions"] = versions()
        text = json.dumps(manifest, indent=2, sort_keys=True, default=_plain)
        write_bytes(join(output_root, "manifest.json"), text.encode())
    return manifest
