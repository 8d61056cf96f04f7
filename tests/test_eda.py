"""Tests for helpers.eda and the EDA figures: inventory, properties, unusual and unreadable
files, duplicates and leakage, class samples and variability, all computed with Spark."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import DATA_SAMPLE, write_jpeg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from helpers.eda import (
    class_sample,
    class_table,
    class_variability,
    content_hashes,
    duplicate_groups,
    duplicate_summary,
    eda_images,
    eda_summary,
    file_size_summary,
    image_properties,
    inventory,
    property_summary,
    sample_images,
    split_mismatches,
    split_totals,
    spread_labels,
    unreadable,
    unusual_images,
)
from helpers.images import decode_image, list_images
from helpers.plots import (
    class_mean_extremes,
    class_means,
    sample_mosaic,
    save_figure,
    variability_bars,
)

BROKEN = "broken_100.jpg"


def _walk(root: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(split, class) -> (files, bytes) of every *.jpg, from the file system."""
    found: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for path in root.rglob("*.jpg"):
        entry = found[(path.parent.parent.name, path.parent.name)]
        entry[0] += 1
        entry[1] += path.stat().st_size
    return {key: tuple(value) for key, value in found.items()}


def _hash_walk(root: Path) -> dict[str, list[str]]:
    """sha256 -> sorted file names (split/class/file) of every content held twice or more."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in root.rglob("*.jpg"):
        found[hashlib.sha256(path.read_bytes()).hexdigest()].append(_tail(str(path)))
    return {digest: sorted(names) for digest, names in found.items() if len(names) > 1}


def _tail(path: str) -> str:
    """The split/class/file end of a path or URI."""
    return "/".join(path.split("/")[-3:])


def _table(counts) -> dict[tuple[str, str], tuple[int, int]]:
    return {(r.split, r.label): (r.images, r.bytes) for r in counts.itertuples()}


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    """Close every figure a test opened."""
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sample_images_df(spark):
    """data_sample/ listed once for the module."""
    return eda_images(list_images(spark, str(DATA_SAMPLE))).cache()


@pytest.fixture(scope="module")
def sample_properties(sample_images_df):
    """image_properties of data_sample/, computed once for the module."""
    return image_properties(sample_images_df).cache()


@pytest.fixture(scope="module")
def sample_variability(sample_images_df) -> pd.DataFrame:
    """class_variability of data_sample/ on 6 images per class at 16 px."""
    return class_variability(sample_images_df, per_class=6, size=16, seed=3)


@pytest.fixture
def distinct_root(tiny_root: Path) -> Path:
    """tiny_root with its Test images redrawn, so no file repeats another (tiny_root's do)."""
    for path in sorted((tiny_root / "Test").rglob("*.jpg")):
        write_jpeg(path, (90, 60, 200), seed=1000 + len(str(path)) + int(path.name[0]))
    return tiny_root


@pytest.fixture
def broken_root(tiny_root: Path) -> Path:
    """tiny_root plus one .jpg file that holds text and one empty .jpg."""
    (tiny_root / "Training" / "Banana" / BROKEN).write_text("this is not a JPEG\n")
    (tiny_root / "Test" / "Banana" / "empty_100.jpg").write_bytes(b"")
    return tiny_root


# --- inventory ---------------------------------------------------------------------------


def test_inventory_data_sample(sample_images_df) -> None:
    """inventory() counts images and bytes per split and class exactly as the disk has them."""
    counts = inventory(sample_images_df)
    assert list(counts.columns) == ["split", "label", "images", "bytes"]
    assert _table(counts) == _walk(DATA_SAMPLE)


def test_inventory_counts_unreadable_files(spark, broken_root: Path) -> None:
    """Non-images and empty files still count in the inventory (they are *.jpg on disk)."""
    counts = inventory(list_images(spark, str(broken_root)).images)
    assert _table(counts) == _walk(broken_root)
    assert _table(counts)[("Training", "Banana")][0] == 4
    assert _table(counts)[("Test", "Banana")] == (3, _walk(broken_root)[("Test", "Banana")][1])


def test_listing_adds_empty_files(spark, broken_root: Path) -> None:
    """Spark's scan skips a 0-byte file; the listing adds it back, named as on disk."""
    (broken_root / "Test" / "Banana" / "empty 50%.jpg").write_bytes(b"")
    listing = list_images(spark, str(broken_root))
    empty = listing.images.where("length = 0").orderBy("path").collect()
    assert [(_tail(r["path"]), r["split"], r["label"]) for r in empty] == [
        ("Test/Banana/empty 50%.jpg", "Test", "Banana"),
        ("Test/Banana/empty_100.jpg", "Test", "Banana"),
    ]
    assert empty[0]["path"].startswith("file:/") and empty[0]["content"] is None
    assert listing.files == listing.images.count() == 13
    assert [_tail(p) for p in listing.empty] == [_tail(r["path"]) for r in empty]


def test_eda_images_sizes_tasks(spark) -> None:
    """eda_images coalesces into tasks sized by the listing's files and bytes, no job run."""
    listing = list_images(spark, str(DATA_SAMPLE))
    planned = listing.images.rdd.getNumPartitions()  # never more tasks than Spark's own plan
    cores = spark.sparkContext.defaultParallelism
    assert eda_images(listing).rdd.getNumPartitions() == min(cores, planned)
    assert eda_images(listing, files_per_task=1).rdd.getNumPartitions() == planned
    assert eda_images(listing, bytes_per_task=1000).rdd.getNumPartitions() == planned
    assert listing.bytes == sum(p.stat().st_size for p in DATA_SAMPLE.rglob("*.jpg"))


def test_class_table_and_split_totals(sample_images_df) -> None:
    """class_table has one row per class with per-split columns; split_totals adds a total."""
    counts = inventory(sample_images_df)
    table = class_table(counts)
    assert len(table) == counts["label"].nunique() == 8
    assert list(table.columns[:3]) == ["images", "Test images", "Training images"]
    assert (table["images"] == table["Test images"] + table["Training images"]).all()
    assert table["images"].is_monotonic_decreasing
    totals = split_totals(counts)
    assert totals.loc["total", "images"] == counts["images"].sum() == 320
    assert totals.loc["total", "bytes"] == sum(b for _, b in _walk(DATA_SAMPLE).values())
    assert totals.loc["Training", "classes"] == 8


def test_split_mismatches(spark, tiny_root: Path) -> None:
    """A class present only in Training is reported as missing from Test, and only there."""
    assert split_mismatches(inventory(list_images(spark, str(tiny_root)).images)) == {}
    write_jpeg(tiny_root / "Training" / "Cherry" / "0_100.jpg", (150, 0, 30))
    counts = inventory(list_images(spark, str(tiny_root)).images)
    assert split_mismatches(counts) == {"Test": ["Cherry"]}


# --- properties, unusual and unreadable files --------------------------------------------


def test_properties_data_sample(sample_properties) -> None:
    """Every data_sample image is a readable 100x100 RGB JPEG; sha256 matches hashlib."""
    summary = property_summary(sample_properties)
    assert summary[["width", "height", "mode", "format", "images"]].values.tolist() == [
        [100, 100, "RGB", "JPEG", 320]
    ]
    assert unreadable(sample_properties).empty
    first = sample_properties.orderBy("path").first()
    local = first["path"].removeprefix("file:")
    assert first["sha256"] == hashlib.sha256(Path(local).read_bytes()).hexdigest()


def test_file_size_summary(sample_properties) -> None:
    """file_size_summary has one ordered row of byte statistics per split."""
    sizes = file_size_summary(sample_properties)
    assert list(sizes.index) == ["Test", "Training"]
    assert sizes["files"].sum() == 320
    for row in sizes.itertuples():
        assert row.min <= row.q1 <= row.median <= row.q3 <= row.max


def test_unreadable_lists_injected_files(spark, broken_root: Path) -> None:
    """unreadable() names the text-in-a-.jpg and the empty file with a reason each."""
    properties = image_properties(list_images(spark, str(broken_root)).images)
    bad = unreadable(properties)
    reasons = {_tail(p): e for p, e in zip(bad["path"], bad["error"])}
    assert reasons == {
        f"Training/Banana/{BROKEN}": reasons[f"Training/Banana/{BROKEN}"],
        "Test/Banana/empty_100.jpg": "empty file",
    }
    assert reasons[f"Training/Banana/{BROKEN}"].startswith("cannot read image")
    summary = property_summary(properties)
    assert summary["images"].sum() == 10
    assert (summary["format"] == "JPEG").all()


def test_unusual_images(spark, tiny_root: Path) -> None:
    """Odd size, mode, format, extension and a far too small file are each named with why."""
    apples = tiny_root / "Training" / "Apple Red"
    for i in range(3, 12):  # enough siblings for the class's file-size fences
        write_jpeg(apples / f"{i}_100.jpg", (200, 20, 30), seed=50 + i)
    write_jpeg(apples / "wide_100.jpg", (200, 20, 30), seed=7)
    Image.open(apples / "wide_100.jpg").resize((120, 100)).save(apples / "wide_100.jpg")
    Image.open(apples / "3_100.jpg").convert("L").save(apples / "gray_100.jpg")
    Image.open(apples / "4_100.jpg").save(apples / "png_100.jpg", format="PNG")
    Image.new("RGB", (100, 100), (255, 255, 255)).save(apples / "blank_100.jpg", quality=90)

    properties = image_properties(list_images(spark, str(tiny_root)).images).cache()
    unusual = unusual_images(properties)
    reasons = {Path(p).name: r for p, r in zip(unusual["path"], unusual["reason"])}
    assert set(reasons) == {"wide_100.jpg", "gray_100.jpg", "png_100.jpg", "blank_100.jpg"}
    assert reasons["wide_100.jpg"].startswith("size 120x100 (most common 100x100)")
    assert reasons["gray_100.jpg"].startswith("mode L (most common RGB)")
    assert "format PNG (most common JPEG)" in reasons["png_100.jpg"]
    assert "extension .jpg holds PNG" in reasons["png_100.jpg"]
    assert reasons["blank_100.jpg"].startswith("small file")
    assert list(unusual.columns[:4]) == ["path", "split", "label", "reason"]


def test_no_unusual_images_in_data_sample(sample_properties) -> None:
    """data_sample's uniform images raise no size, mode, format or extension flags."""
    unusual = unusual_images(sample_properties)
    assert not unusual["reason"].str.contains("most common|extension").any()


# --- duplicates ----------------------------------------------------------------------------


def test_duplicates_within_and_across_splits(spark, distinct_root: Path) -> None:
    """A Training image copied into Test is leakage; a copy inside Training is not."""
    tiny_root = distinct_root
    banana = tiny_root / "Training" / "Banana" / "0_100.jpg"
    shutil.copy(banana, tiny_root / "Test" / "Banana" / "leak_100.jpg")
    apple = tiny_root / "Training" / "Apple Red" / "1_100.jpg"
    shutil.copy(apple, tiny_root / "Training" / "Apple Red" / "again_100.jpg")
    shutil.copy(apple, tiny_root / "Training" / "Banana" / "mislabelled_100.jpg")

    hashed = content_hashes(list_images(spark, str(tiny_root)).images)
    groups = duplicate_groups(hashed)
    assert len(groups) == 2
    leak, inside = groups.iloc[0], groups.iloc[1]
    assert leak["leakage"] and not inside["leakage"]
    assert [_tail(p) for p in leak["paths"]] == [
        "Test/Banana/leak_100.jpg",
        "Training/Banana/0_100.jpg",
    ]
    assert list(leak["splits"]) == ["Test", "Training"] and not leak["conflicting_labels"]
    assert inside["copies"] == 3 and list(inside["splits"]) == ["Training"]
    assert inside["conflicting_labels"] and list(inside["labels"]) == ["Apple Red", "Banana"]
    assert duplicate_summary(hashed) == {
        "groups": 2,
        "images": 5,
        "within_split_groups": 1,
        "cross_split_groups": 1,
        "leakage_groups": 1,
        "leakage_images": 1,
        "conflicting_label_groups": 1,
    }


def test_duplicates_match_hashlib_on_data_sample(sample_properties) -> None:
    """Spark's duplicate groups equal a hashlib walk of data_sample (none expected)."""
    groups = duplicate_groups(sample_properties)
    found = {g.sha256: sorted(_tail(p) for p in g.paths) for g in groups.itertuples()}
    assert found == _hash_walk(DATA_SAMPLE)
    assert duplicate_summary(sample_properties)["groups"] == len(found)


# --- samples and variability ---------------------------------------------------------------


def test_spread_labels() -> None:
    """spread_labels picks evenly over the sorted list, and all of it for 0."""
    labels = [f"c{i:02d}" for i in range(10)]
    assert spread_labels(labels[::-1], 0) == labels
    assert spread_labels(labels, 5) == ["c00", "c02", "c04", "c06", "c08"]
    assert spread_labels(labels, 50) == labels


def test_class_sample_is_seeded_and_nested(sample_images_df) -> None:
    """class_sample takes per_class rows of each class; smaller samples are subsets."""

    def paths(per_class: int, seed: int) -> set[str]:
        rows = class_sample(sample_images_df, per_class, seed).select("path").collect()
        return {r["path"] for r in rows}

    three, five = paths(3, 7), paths(5, 7)
    assert len(three) == 3 * 8 and len(five) == 5 * 8
    assert three < five
    assert paths(3, 7) == three != paths(3, 8)
    assert class_sample(sample_images_df, 0) is sample_images_df


def test_sample_images(sample_images_df) -> None:
    """sample_images() decodes per_class images for max_classes classes spread over the list."""
    picked = sample_images(sample_images_df, per_class=3, max_classes=2, seed=1, size=64)
    assert list(picked["label"]) == ["Apple Red"] * 3 + ["Lemon"] * 3
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
    images = list_images(spark, str(broken_root)).images
    picked = sample_images(images, per_class=10)
    assert not any(p.endswith(BROKEN) for p in picked["path"])
    assert picked.groupby("label").size().to_dict() == {"Apple Red": 5, "Banana": 5}


def test_class_variability_every_class(sample_images_df, sample_variability) -> None:
    """Every class gets a mean image and an MSE equal to numpy's on the same sample."""
    table = sample_variability
    assert sorted(table["label"]) == sorted(p.name for p in (DATA_SAMPLE / "Training").iterdir())
    assert (table["images"] == 6).all()
    assert table["mse"].is_monotonic_decreasing and (table["mse"] > 0).all()
    assert all(m.shape == (16, 16, 3) and 0 <= m.min() <= m.max() <= 1 for m in table["mean"])

    label = table["label"].iloc[0]
    chosen = class_sample(sample_images_df.where(f"label = '{label}'"), 6, 3).toPandas()
    pixels = np.stack([decode_image(bytes(c), 16) / 255 for c in chosen["content"]])
    row = table.iloc[0]
    np.testing.assert_allclose(row["mean"], pixels.mean(axis=0), atol=1e-5)
    assert row["mse"] == pytest.approx(((pixels - pixels.mean(axis=0)) ** 2).mean(), rel=1e-4)


def test_class_variability_identical_images(spark, broken_root: Path) -> None:
    """A class of identical copies has MSE 0; unreadable files are left out of the sample."""
    original = broken_root / "Training" / "Apple Red" / "0_100.jpg"
    for path in (broken_root / "Training" / "Apple Red").glob("[12]_100.jpg"):
        shutil.copy(original, path)
    for path in (broken_root / "Test" / "Apple Red").glob("*.jpg"):
        shutil.copy(original, path)
    images = list_images(spark, str(broken_root)).images
    table = class_variability(images, per_class=0, size=8)
    by_label = table.set_index("label")
    assert by_label.loc["Apple Red", "mse"] == pytest.approx(0, abs=1e-9)
    assert by_label.loc["Banana", "mse"] > 0
    assert by_label["images"].to_dict() == {"Apple Red": 5, "Banana": 5}
    assert list(table["label"]) == ["Banana", "Apple Red"]  # most variable first


def test_class_variability_rejects_bad_parameters(sample_images_df) -> None:
    """A non-positive size or a negative sample names the parameter to fix."""
    with pytest.raises(ValueError, match="eda_image_size"):
        class_variability(sample_images_df, size=0)
    with pytest.raises(ValueError, match="eda_sample_per_class"):
        class_variability(sample_images_df, per_class=-1)


# --- summary and figures -----------------------------------------------------------------


def test_eda_summary_is_json_ready(sample_images_df, sample_properties, sample_variability):
    """eda_summary gathers the manifest numbers as plain JSON types."""
    counts = inventory(sample_images_df)
    summary = eda_summary(
        counts,
        mismatches=split_mismatches(counts),
        properties=property_summary(sample_properties),
        unusual=unusual_images(sample_properties),
        bad_files=unreadable(sample_properties),
        duplicates=duplicate_summary(sample_properties),
        variability=sample_variability,
        shown=3,
    ).to_manifest()
    json.dumps(summary)
    assert summary["images"] == 320 and summary["classes"] == 8
    assert summary["by_split"] == {"Test": 80, "Training": 240}
    assert summary["by_class"]["Apple Red"] == {"Test": 10, "Training": 30}
    assert summary["duplicate_groups"] == 0 and summary["leakage"] == 0
    assert summary["variability_classes"] == 8
    assert [c["label"] for c in summary["most_variable"]] == list(sample_variability["label"][:3])
    assert summary["least_variable"][0]["label"] == sample_variability["label"].iloc[-1]


def _variability(count: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "label": [f"Fruit number {i:03d} long name" for i in range(count)],
            "images": 30,
            "mse": rng.uniform(0.01, 0.1, count),
            "mean": [rng.uniform(0, 1, (8, 8, 3)).astype(np.float32) for _ in range(count)],
        }
    )


@pytest.mark.parametrize("count", [3, 60])
def test_eda_figures(tmp_path: Path, count: int) -> None:
    """The EDA figures build for few and for many classes (one bar, one title per class)."""
    rng = np.random.default_rng(1)
    samples = pd.DataFrame(
        {
            "label": [f"Class {c:03d}" for c in range(count) for _ in range(4)],
            "pixels": [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(4 * count)],
        }
    )
    variability = _variability(count)
    figures = {
        "sample_grid": sample_mosaic(samples, per_class=4),
        "class_variability": variability_bars(variability, highlight=2),
        "class_mean_extremes": class_mean_extremes(variability, count=8),
        "class_means": class_means(variability),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        if count < 10:  # saving is the slow part; one size is enough to check it
            save_figure(fig, str(tmp_path), name)
            assert (tmp_path / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    bars = figures["class_variability"].axes[0]
    assert len(bars.patches) == count
    most = variability.sort_values("mse")["label"].iloc[-1]
    assert bars.get_yticklabels()[-1].get_text() == most  # the most variable class on top
    assert bars.patches[-1].get_facecolor() == to_rgba("tab:red")
    titled = [ax for ax in figures["sample_grid"].axes if ax.get_title(loc="left")]
    assert len(titled) == count


# --- the real Fruits-360 subset ------------------------------------------------------------


def test_fruits360_counts_and_duplicates(spark, fruits360: Path) -> None:
    """On the real images: counts equal a file-system walk, duplicates equal a hashlib walk."""
    images = eda_images(list_images(spark, str(fruits360)))
    counts = inventory(images)
    assert _table(counts) == _walk(fruits360)
    hashed = content_hashes(images).cache()
    groups = duplicate_groups(hashed)
    found = {g.sha256: sorted(_tail(p) for p in g.paths) for g in groups.itertuples()}
    expected = _hash_walk(fruits360)
    assert found == expected
    leaking = {d for d, names in expected.items() if len({n.split("/")[0] for n in names}) > 1}
    assert set(groups.loc[groups["leakage"], "sha256"]) == leaking
    hashed.unpersist()
