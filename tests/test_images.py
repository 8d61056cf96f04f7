"""Tests for helpers.images: listing images with Spark and decoding them into pixels."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    DATA_SAMPLE,
    ODD_IGNORED,
    ODD_IMAGE_NAMES,
    ODD_NOT_IMAGES,
    write_jpeg,
    write_odd_names,
)
from PIL import Image

from helpers.images import decode_image, input_files, list_images

SIZE = 32


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _walk(root: Path, pattern: str = "*.jpg") -> Counter:
    """(split folder, class folder) -> number of files, from the file system."""
    return Counter((p.parent.parent.name, p.parent.name) for p in root.rglob(pattern))


def _listed(df) -> Counter:
    return Counter((r["split"], r["label"]) for r in df.select("split", "label").collect())


def test_list_images_data_sample(spark) -> None:
    """Every *.jpg under data_sample/ is one row, with split and label from its folders."""
    df = list_images(spark, "data_sample").images
    expected = _walk(DATA_SAMPLE)
    assert df.count() == sum(expected.values()) == 320
    assert _listed(df) == expected
    assert {s for s, _ in expected} == {"Training", "Test"}
    assert ("Training", "Apple Red") in expected  # a label with a space, kept as is
    assert df.columns[:3] == ["path", "split", "label"]


def test_list_images_extensions(spark, tmp_path: Path) -> None:
    """.jpg, .JPG, .jpeg and .png are listed; other files are not."""
    folder = tmp_path / "Training" / "Kiwi"
    write_jpeg(folder / "a.jpg", (90, 140, 40))
    write_jpeg(folder / "b.JPG", (90, 140, 40), seed=1)
    write_jpeg(folder / "c.jpeg", (90, 140, 40), seed=2)
    Image.new("RGB", (10, 10), (90, 140, 40)).save(folder / "d.png")
    (folder / "notes.txt").write_text("not an image")
    names = sorted(
        r["path"].rsplit("/", 1)[1] for r in list_images(spark, str(tmp_path)).images.collect()
    )
    assert names == ["a.jpg", "b.JPG", "c.jpeg", "d.png"]


def test_list_images_split_root(spark, tiny_root: Path) -> None:
    """A root that is one split folder keeps that split and the class labels."""
    df = list_images(spark, str(tiny_root / "Test")).images
    assert _listed(df) == {("Test", "Apple Red"): 2, ("Test", "Banana"): 2}


def test_list_images_class_root(spark, tiny_root: Path) -> None:
    """A root that is one class folder gives that label, and the split above it."""
    df = list_images(spark, str(tiny_root / "Training" / "Apple Red")).images
    assert _listed(df) == {("Training", "Apple Red"): 3}


def test_list_images_no_split_folder(spark, tmp_path: Path) -> None:
    """Classes directly under the root get a null split."""
    write_jpeg(tmp_path / "Pear" / "0_100.jpg", (200, 200, 60))
    assert _listed(list_images(spark, str(tmp_path)).images) == {(None, "Pear"): 1}


def test_list_images_missing_root(spark, tmp_path: Path) -> None:
    """A data_root that does not exist raises FileNotFoundError naming it."""
    missing = str(tmp_path / "no_such_folder")
    with pytest.raises(FileNotFoundError, match=r"data_root '.*no_such_folder' does not exist"):
        list_images(spark, missing)


def test_list_images_no_images(spark, tmp_path: Path) -> None:
    """A data_root with no image files raises FileNotFoundError naming it and the patterns."""
    (tmp_path / "Training" / "Kiwi").mkdir(parents=True)
    (tmp_path / "Training" / "Kiwi" / "readme.txt").write_text("no pictures here")
    with pytest.raises(FileNotFoundError, match=r"data_root '.*' has no images .*\*\.jpg"):
        list_images(spark, str(tmp_path))


def test_decode_jpeg_and_png() -> None:
    """JPEG and PNG decode to size x size x 3 uint8, resized from any source size."""
    jpeg = (DATA_SAMPLE / "Training" / "Apple Red" / "0_100.jpg").read_bytes()
    png = _encode(Image.new("RGB", (40, 70), (10, 200, 30)), "PNG")
    for data in (jpeg, png):
        pixels = decode_image(data, SIZE)
        assert pixels.shape == (SIZE, SIZE, 3)
        assert pixels.dtype == np.uint8
    assert (decode_image(png, SIZE) == (10, 200, 30)).all()


def test_decode_grayscale() -> None:
    """An 8-bit grayscale (L) image becomes three equal channels."""
    pixels = decode_image(_encode(Image.new("L", (20, 20), 128), "PNG"), SIZE)
    assert (pixels == 128).all()


def test_decode_rgba_transparent_is_white() -> None:
    """RGBA is laid on white: transparent pixels become white, opaque ones keep their colour."""
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (255, 0, 0, 0)  # fully transparent red
    rgba[:, 10:] = (0, 0, 255, 255)  # opaque blue
    pixels = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), 20)
    assert (pixels[:, :10] == 255).all()
    assert (pixels[:, 10:] == (0, 0, 255)).all()


def test_decode_palette_with_transparency() -> None:
    """A palette PNG with a transparent index decodes that index as white."""
    index = np.zeros((20, 20), np.uint8)
    index[:, 10:] = 1
    palette = Image.fromarray(index, "P")
    palette.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)  # 0: green (transparent), 1: red
    data = _encode(palette, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    pixels = decode_image(data, 20)
    assert (pixels[:, :10] == 255).all()
    assert (pixels[:, 10:] == (255, 0, 0)).all()


def test_decode_cmyk_jpeg() -> None:
    """A CMYK JPEG is converted to RGB colours (cyan-free, full magenta+yellow is red)."""
    data = _encode(Image.new("CMYK", (30, 30), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pixels = decode_image(data, SIZE).astype(int)
    assert np.abs(pixels - (255, 0, 0)).max() <= 3


def test_decode_16_bit_grayscale() -> None:
    """A 16-bit grayscale PNG (I;16) is scaled to 8 bits, not clipped or wrapped."""
    levels = np.zeros((20, 20), np.uint16)
    levels[:, 10:] = 40000
    data = _encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = decode_image(data, 20)
    assert (pixels[:, :10] == 0).all()
    assert (pixels[:, 10:] == 40000 // 256).all()


def test_decode_applies_exif_orientation() -> None:
    """EXIF Orientation=6 (rotate 90 degrees clockwise) is applied before resizing."""
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :40] = (255, 0, 0)  # left half red
    wide[:, 40:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(wide), "JPEG", exif=exif.tobytes(), quality=95)
    pixels = decode_image(data, SIZE).astype(int)
    # upright, the image is tall: the left (red) half on top, the right (blue) half below
    top, bottom = pixels[: SIZE // 2 - 3], pixels[SIZE // 2 + 3 :]
    assert np.abs(top - (255, 0, 0)).max() <= 40
    assert np.abs(bottom - (0, 0, 255)).max() <= 40


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"Fruits-360 is a data set of fruit images\n", "cannot decode image"),
    ],
    ids=["empty", "text"],
)
def test_decode_rejects_non_images(data: bytes, reason: str) -> None:
    """Empty and non-image bytes raise ValueError with a short reason."""
    with pytest.raises(ValueError, match=reason):
        decode_image(data, SIZE)


def test_decode_rejects_truncated_jpeg() -> None:
    """The first half of a real JPEG raises ValueError instead of returning partial pixels."""
    jpeg = (DATA_SAMPLE / "Test" / "Banana" / "0_100.jpg").read_bytes()
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(jpeg[: len(jpeg) // 2], SIZE)


def test_input_files_in_one_call(spark, tmp_path: Path) -> None:
    """``input_files`` gives what ``DataFrame.inputFiles()`` gives, odd names and none alike."""
    write_odd_names(tmp_path / "Odd")
    scan = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    frame = scan.load(str(tmp_path))
    assert len(frame.inputFiles()) > 5
    assert input_files(frame) == frame.inputFiles()
    empty = scan.option("pathGlobFilter", "*.none").load(str(tmp_path))
    assert input_files(empty) == empty.inputFiles() == []


def test_list_images_odd_names(spark, tmp_path: Path) -> None:
    """Names Spark's listing hides or a URI misreads each give exactly one row, read whole."""
    folder = tmp_path / "Training" / "Odd"
    write_odd_names(folder)
    write_jpeg(tmp_path / "Test" / "Odd" / "plain.jpg", (30, 160, 90))
    listing = list_images(spark, str(tmp_path))
    rows = listing.images.select("path", "split", "label", "content", "length").collect()
    odd = "/Training/Odd/"
    by_name = {r["path"].split(odd, 1)[1]: r for r in rows if odd in r["path"]}
    expected = {*ODD_IMAGE_NAMES, *ODD_NOT_IMAGES}
    assert set(by_name) == expected
    assert len(rows) == listing.files == len(expected) + 1  # and Test/Odd/plain.jpg
    for name in expected:
        row = by_name[name]
        assert row["content"] == (folder / name).read_bytes() and row["length"] > 0, name
        folder_name = name.rsplit("/", 1)[0] if "/" in name else "Odd"  # the label
        assert row["label"] == folder_name and (row["split"] == "Training") == ("/" not in name)
    hidden = {p.split(odd, 1)[1] for p in listing.hidden}
    assert {"_underscore.jpg", ".dot.jpg", "._companion.jpg", ".hidden/b.jpg"} <= hidden
    assert "with space.jpg" not in hidden  # Spark's own scan reads it
    assert sorted(p.rsplit("/", 1)[1] for p in listing.ignored) == sorted(ODD_IGNORED)
    assert set(listing.ignored.values()) == {"not an image file name (.jpg, .jpeg, .png)"}
    assert set(listing.table()["path"]) == {*listing.hidden, *listing.ignored}
