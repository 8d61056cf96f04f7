"""Tests for helpers.manifest: one JSON file per run, a section per notebook, with versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyspark

from helpers.manifest import read_manifest, update_manifest, versions


def test_read_manifest_before_first_run(tmp_path: Path) -> None:
    """An output_root without manifest.json (or not created yet) reads as {}."""
    assert read_manifest(str(tmp_path)) == {}
    assert read_manifest(str(tmp_path / "not_yet")) == {}


def test_update_manifest_merges_sections(tmp_path: Path) -> None:
    """Each update replaces its own section and keeps the others; the file is plain JSON."""
    root = str(tmp_path / "run")
    update_manifest(root, "eda", {"images": 320, "classes": 8})
    update_manifest(root, "reduce", {"k": 3})
    manifest = update_manifest(root, "eda", {"images": 321})
    on_disk = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert on_disk == manifest == read_manifest(root)
    assert set(on_disk) == {"eda", "reduce", "versions"}
    assert on_disk["eda"]["images"] == 321
    assert "classes" not in on_disk["eda"]  # a section is replaced whole
    assert on_disk["reduce"]["k"] == 3
    assert on_disk["eda"]["finished"].endswith("Z")


def test_update_manifest_serializes_numpy(tmp_path: Path) -> None:
    """numpy arrays and scalars are written as JSON lists and numbers."""
    values = {
        "explained": np.array([0.5, 0.25], dtype=np.float32),
        "k": np.int64(3),
        "kept": np.float64(0.75),
        "ok": np.bool_(True),
    }
    update_manifest(str(tmp_path), "reduce", values)
    section = read_manifest(str(tmp_path))["reduce"]
    assert section["explained"] == [0.5, 0.25]
    assert section["k"] == 3 and isinstance(section["k"], int)
    assert section["kept"] == 0.75
    assert section["ok"] is True


def test_update_manifest_records_versions(tmp_path: Path) -> None:
    """The manifest records Python and the installed versions, pyspark included."""
    manifest = update_manifest(str(tmp_path), "eda", {})
    assert manifest["versions"] == versions()
    assert manifest["versions"]["pyspark"] == pyspark.__version__
    assert manifest["versions"]["python"].count(".") == 2
