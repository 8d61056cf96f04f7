"""Tests for helpers.images: listing images with Spark and decoding them into pixels."""

from __future__ import annotations

import io
import os
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

from helpers.images import decode_image, input_files, list_images, to_rgb

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


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to claim another size."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), (200, 30, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


#: EPS made by hand (Pillow writes no EPS without Ghostscript): the header is what counts.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\n"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (EPS, "EPS"),
        (_encode(Image.new("RGB", (20, 20), (1, 2, 3)), "TIFF"), "TIFF"),
        (_encode(Image.new("RGB", (20, 20), (1, 2, 3)), "GIF"), "GIF"),
        (_encode(Image.new("RGB", (20, 20), (1, 2, 3)), "BMP"), "BMP"),
    ],
    ids=["eps", "tiff", "gif", "bmp"],
)
def test_decode_only_jpeg_and_png_content(data: bytes, named: str, monkeypatch) -> None:
    """Other formats, whatever the file name, are refused by content and named; no other
    Pillow plugin opens them (EPS would start Ghostscript)."""
    from PIL import EpsImagePlugin

    def never(*args: object) -> None:
        raise AssertionError("the EPS plugin was handed the bytes")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    with pytest.raises(ValueError, match=rf"not a JPEG or PNG image \({named}"):
        decode_image(data, SIZE)


@pytest.mark.parametrize(
    "data",
    [_png_header(20000, 20000), _jpeg_claiming(20000, 20000), _png_header(8000, 8000)],
    ids=["png-400M", "jpeg-400M", "png-64M-under-pillow-limits"],
)
def test_decode_refuses_too_many_pixels_from_the_header(data: bytes) -> None:
    """An image whose header claims more than max_image_pixels is refused before decoding:
    fast, in little memory, the message naming both numbers."""
    import time
    import tracemalloc

    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"image too large: (\d+x\d+ = )?\d+ pixels, over "):
        decode_image(data, SIZE)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1 and peak < 10 * 2**20, (seconds, peak)
    with pytest.raises(ValueError, match="over max_image_pixels = 50000000"):
        decode_image(data, SIZE)


def test_decode_pixel_limit_is_a_parameter() -> None:
    """The limit is max_image_pixels: 40x70 decodes under 2800 pixels and not under 2799."""
    png = _encode(Image.new("RGB", (40, 70), (10, 200, 30)), "PNG")
    assert decode_image(png, SIZE, max_pixels=2800).shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="40x70 = 2800 pixels, over max_image_pixels = 2799"):
        decode_image(png, SIZE, max_pixels=2799)


def test_decode_16_bit_without_float_copies() -> None:
    """16-bit samples become their high byte in integers (I;16 and 32-bit I alike)."""
    ramp = (np.arange(400, dtype=np.uint16) * 163).reshape(20, 20)
    expected = (ramp >> 8).astype(np.uint8)
    data = _encode(Image.fromarray(ramp), "PNG")
    assert (decode_image(data, 20)[..., 0] == expected).all()
    wide = Image.fromarray(ramp.astype(np.int32), "I")
    assert (decode_image(_encode(wide, "PNG"), 20)[..., 0] == expected).all()
    small = Image.fromarray(np.full((20, 20), 200, np.int32), "I")  # 8-bit values in mode I
    assert (np.asarray(to_rgb(small)) == 200).all()


def _rows(listing) -> list[str]:
    return sorted(r["path"] for r in listing.images.select("path").collect())


def test_links_are_never_followed(spark, tmp_path: Path) -> None:
    """A loop link, links to a folder or a file outside the root, a link to a file inside
    and a dangling link: one row per real file, each link named, Spark's scan not used."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for i in range(3):
        write_jpeg(root / "Training" / "Kiwi" / f"{i}.jpg", (90, 140, 40), seed=i)
    write_jpeg(root / "Test" / "Kiwi" / "t.jpg", (90, 140, 40), seed=9)
    write_jpeg(outside / "Kiwi" / "far.jpg", (90, 140, 40), seed=10)
    kiwi = root / "Training" / "Kiwi"
    (kiwi / "loop").symlink_to("..")
    (root / "Test" / "away").symlink_to(outside)
    (kiwi / "far.jpg").symlink_to(outside / "Kiwi" / "far.jpg")
    (kiwi / "again.jpg").symlink_to(kiwi / "0.jpg")
    (kiwi / "gone.jpg").symlink_to(kiwi / "nothing.jpg")
    listing = list_images(spark, str(root))
    real = sorted(f"file:{p}" for p in root.rglob("*.jpg") if not p.is_symlink())
    assert len(real) == 4 and _rows(listing) == real and listing.files == 4
    assert listing.images.count() == 4 and not listing.scanned
    reasons = {p.rsplit("/", 1)[1]: r for p, r in listing.ignored.items()}
    assert (
        reasons["loop"]
        == "a link to a folder inside data_root (a loop or a second path): not followed"
    )
    assert reasons["away"] == "a link to a folder outside data_root: not followed"
    assert reasons["far.jpg"] == "a link to a file outside data_root: not followed"
    assert reasons["again.jpg"].endswith("0.jpg, a file under data_root: read there, once")
    assert reasons["gone.jpg"].startswith("a link to nothing")
    contents = {r["path"]: r["content"] for r in listing.images.collect()}
    assert contents[f"file:{kiwi / '1.jpg'}"] == (kiwi / "1.jpg").read_bytes()


def test_no_links_keeps_spark_scan(spark, tiny_root: Path) -> None:
    """Without links or odd names, Spark's own scan reads the files."""
    listing = list_images(spark, str(tiny_root))
    assert listing.scanned and listing.files == 10 and not listing.ignored
    assert listing.largest == max(p.stat().st_size for p in tiny_root.rglob("*.jpg"))


def test_name_not_utf8_is_named_not_fatal(spark, tmp_path: Path) -> None:
    """A file name with a byte that is not UTF-8 fails nothing: it is named, escaped, with
    the reason and the fix; every other file gives its row, read whole."""
    kiwi = tmp_path / "Training" / "Kiwi"
    write_jpeg(kiwi / "ok.jpg", (90, 140, 40))
    with open(os.path.join(os.fsencode(kiwi), b"caf\xe9.jpg"), "wb") as bad:
        bad.write((kiwi / "ok.jpg").read_bytes())
    listing = list_images(spark, str(tmp_path))
    assert _rows(listing) == [f"file:{kiwi / 'ok.jpg'}"] and listing.files == 1
    [(name, reason)] = listing.ignored.items()
    assert name == f"file:{kiwi}/caf\\xe9.jpg"
    assert "not valid UTF-8" in reason and "rename" in reason
    assert listing.images.select("content").first()[0] == (kiwi / "ok.jpg").read_bytes()
    assert name in set(listing.table()["path"])


@pytest.mark.parametrize("with_link", [False, True], ids=["spark-scan", "read-by-path"])
def test_file_deleted_after_listing(spark, tmp_path: Path, with_link: bool) -> None:
    """A file gone between the listing and the read fails nothing: read by path it gets a
    row without bytes; Spark's scan skips it and ``missing`` names it."""
    kiwi = tmp_path / "Training" / "Kiwi"
    for i in range(3):
        write_jpeg(kiwi / f"{i}.jpg", (90, 140, 40), seed=i)
    if with_link:
        (kiwi / "loop").symlink_to("..")
    listing = list_images(spark, str(tmp_path))
    assert listing.scanned is not with_link
    (kiwi / "1.jpg").unlink()
    rows = {r["path"]: r for r in listing.images.collect()}
    gone = f"file:{kiwi / '1.jpg'}"
    if with_link:
        assert len(rows) == 3 and rows[gone]["content"] is None and rows[gone]["length"] > 0
    else:
        assert gone not in rows and len(rows) == 2
        assert listing.missing(rows) == [gone]
