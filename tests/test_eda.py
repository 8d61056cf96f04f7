"""Tests for helpers.eda: inventory, split checks, image properties and samples, with Spark."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_SAMPLE, write_jpeg

from helpers.eda import (
    image_properties,
    inventory,
    property_summary,
    sample_images,
    split_mismatches,
    unreadable,
)
from helpers.images import list_images

BROKEN = "broken_100.jpg"


def _walk(root: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(split, class) -> (files, bytes) of every *.jpg, from the file system."""
    found: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for path in root.rglob("*.jpg"):
        entry = found[(path.parent.parent.name, path.parent.name)]
        entry[0] += 1
        entry[1] += path.stat().st_size
    return {key: tuple(value) for key, value in found.items()}


def _table(counts) -> dict[tuple[str, str], tuple[int, int]]:
    return {(r.split, r.label): (r.images, r.bytes) for r in counts.itertuples()}


@pytest.fixture(scope="module")
def sample_images_df(spark):
    """data_sample/ listed once for the module."""
    return list_images(spark, str(DATA_SAMPLE)).cache()


@pytest.fixture
def broken_root(tiny_root: Path) -> Path:
    """tiny_root plus one .jpg file that holds text."""
    (tiny_root / "Training" / "Banana" / BROKEN).write_text("this is not a JPEG\n")
    return tiny_root


def test_inventory_data_sample(sample_images_df) -> None:
    """inventory() counts images and bytes per split and class exactly as the disk has them."""
    counts = inventory(sample_images_df)
    assert list(counts.columns) == ["split", "label", "images", "bytes"]
    assert _table(counts) == _walk(DATA_SAMPLE)


def test_inventory_counts_unreadable_files(spark, broken_root: Path) -> None:
    """A file that is not an image still counts in the inventory (it is a *.jpg on disk)."""
    counts = inventory(list_images(spark, str(broken_root)))
    assert _table(counts) == _walk(broken_root)
    assert _table(counts)[("Training", "Banana")][0] == 4


def test_split_mismatches(spark, tiny_root: Path) -> None:
    """A class present only in Training is reported as missing from Test, and only there."""
    assert split_mismatches(inventory(list_images(spark, str(tiny_root)))) == {}
    write_jpeg(tiny_root / "Training" / "Cherry" / "0_100.jpg", (150, 0, 30))
    counts = inventory(list_images(spark, str(tiny_root)))
    assert split_mismatches(counts) == {"Test": ["Cherry"]}


def test_properties_data_sample(sample_images_df) -> None:
    """Every data_sample image is a readable 100x100 RGB JPEG."""
    properties = image_properties(sample_images_df)
    summary = property_summary(properties)
    assert summary[["width", "height", "mode", "format", "images"]].values.tolist() == [
        [100, 100, "RGB", "JPEG", 320]
    ]
    assert unreadable(properties).empty


def test_unreadable_lists_injected_file(spark, broken_root: Path) -> None:
    """unreadable() names the text-in-a-.jpg file with a reason; the rest stay in the summary."""
    properties = image_properties(list_images(spark, str(broken_root)))
    bad = unreadable(properties)
    assert len(bad) == 1
    assert bad["path"].iloc[0].endswith(f"/Training/Banana/{BROKEN}")
    assert bad["error"].iloc[0].startswith("cannot read image")
    summary = property_summary(properties)
    assert summary["images"].sum() == 10
    assert (summary["format"] == "JPEG").all()


def test_sample_images(sample_images_df) -> None:
    """sample_images() decodes per_class images for each of the first max_classes classes."""
    picked = sample_images(sample_images_df, per_class=3, max_classes=2, seed=1, size=64)
    assert list(picked["label"]) == ["Apple Red"] * 3 + ["Banana"] * 3
    assert picked["path"].is_unique
    for pixels in picked["pixels"]:
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


def test_sample_images_all_classes(sample_images_df) -> None:
    """max_classes=0 keeps every class."""
    picked = sample_images(sample_images_df, per_class=1, max_classes=0)
    assert picked["label"].nunique() == len(picked) == 8


def test_sample_images_seeded(sample_images_df) -> None:
    """The same seed picks the same files; another seed picks others."""
    paths = [
        list(sample_images(sample_images_df, per_class=4, max_classes=3, seed=s)["path"])
        for s in (7, 7, 8)
    ]
    assert paths[0] == paths[1]
    assert paths[0] != paths[2]


def test_sample_images_skips_unreadable(spark, broken_root: Path) -> None:
    """An undecodable file is never returned as a sample image."""
    picked = sample_images(list_images(spark, str(broken_root)), per_class=10)
    assert not any(p.endswith(BROKEN) for p in picked["path"])
    assert picked.groupby("label").size().to_dict() == {"Apple Red": 5, "Banana": 5}
