"""Finding images with Spark and decoding them into model-ready pixels.

Layout: ``<root>/<Split>/<Class>/<file>``; the label is the parent folder name, kept
exactly, and the split is the folder above it when it is named like one. A root may also
be a single split or a single class folder.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType

from helpers.config import IMAGE_EXTENSIONS, IMAGE_FORMATS, MAX_IMAGE_PIXELS
from helpers.paths import list_files, read_bytes, resolve, spark_uri
from helpers.spark.jvm import input_files
from helpers.spark.kind import default_parallelism, is_connect

log = logging.getLogger(__name__)

#: Extensions read (any letter case): :data:`helpers.config.IMAGE_EXTENSIONS`.
EXTENSIONS = IMAGE_EXTENSIONS

#: The same, as a Hadoop glob (case variants spelled out: the glob is case-sensitive):
#: ``*.{jpg,jpeg,png,JPG,JPEG,PNG,Jpg,Jpeg,Png}``.
_CASES = (str.lower, str.upper, str.capitalize)
IMAGE_GLOB = "*.{" + ",".join(case(ext[1:]) for case in _CASES for ext in EXTENSIONS) + "}"

#: The same, for messages: ``*.jpg, *.jpeg, *.png recursively``.
EXTENSIONS_TEXT = ", ".join(f"*{ext}" for ext in EXTENSIONS) + " recursively"

#: Folder names recognised as a split (compared case-insensitively).
SPLIT_NAMES = ("training", "test", "validation", "train", "val")

#: Pillow formats decoded, whatever the file name: no other plugin ever sees the bytes (EPS
#: would hand them to Ghostscript).
DECODED_FORMATS = tuple(dict.fromkeys(IMAGE_FORMATS.values()))

#: The error of a file listed but gone or unreadable when its bytes were read.
VANISHED = "file vanished or became unreadable after listing: run again to featurize it"

#: Bytes of files in one partition read by path, at most (a larger file alone).
READ_BYTES = 64 * 2**20

#: What some other formats start with, to name them in an error (never decoded).
_SIGNATURES = (
    (b"%!PS", "EPS/PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)


@dataclass
class ImageListing:
    """Every file under a data root, as the pipeline reads it.

    ``images`` has one row per image file (``path, split, label, content, length,
    modificationTime``): the files Spark's scan returns, plus those it leaves out without a
    word: 0-byte files (``content`` null) and names Hadoop's listing hides (``_x``, ``.x``,
    or under such a folder), whose bytes are read by path instead. ``ignored`` names the
    other files under the root, each with the reason it is not read: links (never followed),
    names that are not valid UTF-8 (shown with ``\\x..`` escapes), other extensions.
    ``scanned`` says whether Spark's own recursive scan read the bytes: it does unless the
    driver's listing found a link or a name Spark cannot read, as Hadoop's listing follows
    links (around a loop, out of the root); then every file is read by path. ``largest`` is
    the largest image file's size in bytes; ``paths`` the image files listed.
    """

    images: DataFrame
    files: int
    bytes: int
    hidden: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    scanned: bool = True
    largest: int = 0
    paths: list[str] = field(default_factory=list, repr=False)

    def report(self, limit: int = 1000) -> dict[str, Any]:
        """Counts and (at most ``limit``) paths of the files read specially or not read."""
        return {
            "image_files": self.files,
            "read_by_path": not self.scanned,
            "image_bytes": self.bytes,
            "hidden_read": len(self.hidden),
            "empty_files": len(self.empty),
            "ignored_files": len(self.ignored),
            "hidden": self.hidden[:limit],
            "ignored": dict(sorted(self.ignored.items())[:limit]),
        }

    def table(self) -> pd.DataFrame:
        """The files read specially or not read, one row each: ``path`` and ``status``."""
        rows = [(p, "hidden from Spark's listing: read by path") for p in self.hidden]
        rows += [(p, "empty file: a row with an error") for p in self.empty]
        rows += [(p, f"not read: {reason}") for p, reason in self.ignored.items()]
        return pd.DataFrame(sorted(rows), columns=["path", "status"])

    def missing(self, found: Iterable[str]) -> list[str]:
        """The image files listed that have no row among ``found`` (paths as ``images``
        gives them): files deleted or made unreadable between the listing and Spark's scan,
        which skips them (``ignoreMissingFiles``, ``ignoreCorruptFiles``) instead of failing."""
        return sorted(set(self.paths) - set(found))


def is_image_name(path: str) -> bool:
    """Whether ``path`` ends in an image extension the pipeline reads (any letter case)."""
    return path.rsplit("/", 1)[-1].lower().endswith(EXTENSIONS)


def _key(path: str) -> str:
    """A file's path without its scheme, to compare two listings of one root."""
    return re.sub(r"^[A-Za-z][\w+.-]*:/*", "", path)


def _read_file(path: str) -> bytes | None:
    """The bytes of the file at ``path`` (a Spark path: ``file:``, ``s3://``...); null when
    it is gone or unreadable since the listing (its row then gets :data:`VANISHED`)."""
    try:
        return read_bytes(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return None


def _by_path(spark: SparkSession, rows: list[tuple[str, int, float]]) -> DataFrame:
    """Image rows for ``rows`` (path, size, modified) of the driver's listing, read by path.

    Spark's Python UDFs exchange rows a hundred at a time within a partition: partitions of
    at most :data:`READ_BYTES` of files (one file when larger) bound what one exchange holds.
    """
    largest = max((size for _, size, _ in rows), default=1)
    slices = max(default_parallelism(spark), len(rows) * largest // READ_BYTES + 1)
    slices = min(len(rows), slices) or 1
    schema = "path string, length long, modified double"
    if is_connect(spark):  # no RDDs: the rows travel in the plan, then spread over tasks
        frame = spark.createDataFrame(rows, schema).repartition(slices)
    else:
        frame = spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), schema)
    return frame.select(
        "path",
        # made per call: a UDF is bound to the session kind (classic, Connect) it is made in
        F.when(F.col("length") > 0, F.udf(_read_file, BinaryType())("path")).alias("content"),
        "length",
        F.timestamp_seconds("modified").alias("modificationTime"),
    )


def list_images(spark: SparkSession, data_root: str) -> ImageListing:
    """Every file under ``data_root``: the images as a DataFrame, the other files named.

    The driver's listing (:func:`helpers.paths.list_files`: metadata only, hidden names
    included, links not followed) decides which files are read, each real file once. In
    the usual case Spark's ``binaryFile`` scan reads them, and the files it would drop
    silently (hidden names, empty files) are added. When the listing found a link or a name
    that is not valid UTF-8, Spark does not walk the tree (Hadoop's listing follows links,
    around a loop or out of the root, and cannot open such names): every listed image is
    read by path instead. A file deleted or made unreadable after the listing never fails
    the run: read by path it gets a row with :data:`VANISHED`; Spark's scan skips it, and
    :meth:`ImageListing.missing` names it. Raises ``FileNotFoundError`` naming
    ``data_root`` when it is missing or holds no images.
    """
    uri = spark_uri(data_root)
    skipped: dict[str, str] = {}
    listed = list_files(data_root, skipped)
    scan = not skipped
    raw = None
    if scan:  # a missing root raises here, naming it
        try:
            raw = (
                spark.read.format("binaryFile")
                .option("recursiveFileLookup", "true")
                .option("pathGlobFilter", IMAGE_GLOB)
                .option("ignoreMissingFiles", "true")
                .option("ignoreCorruptFiles", "true")
                .load(uri)
            )
        except Exception as exc:  # Spark raises AnalysisException for a missing path
            if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
                raise FileNotFoundError(
                    f"data_root '{data_root}' does not exist (resolved to {resolve(data_root)})"
                ) from exc
            raise
    scanned = {_key(unquote(u)) for u in input_files(raw)} if raw is not None else set()
    extra, hidden, empty, ignored, paths = [], [], [], dict(skipped), []
    total = largest = 0
    for path, size, modified in listed:
        if not is_image_name(path):
            ignored[path] = f"not an image file name ({', '.join(EXTENSIONS)})"
            continue
        total += size
        largest = max(largest, size)
        paths.append(path)
        if not size:
            empty.append(path)
        if not scan:
            extra.append((path, size, modified))
            continue
        if _key(path) not in scanned:
            hidden.append(path)
        elif size:
            continue
        extra.append((path, size, modified))
    files = len(paths)
    if not files:
        raise FileNotFoundError(
            f"data_root '{data_root}' has no images (looked for {EXTENSIONS_TEXT})"
        )
    if not scan:
        log.warning(
            "%d links or names Spark cannot read under %s are not read (see the listing's "
            "ignored files): the %d images are read by path, not by Spark's scan",
            len(skipped),
            data_root,
            files,
        )
        images = _by_path(spark, extra)
    elif extra:
        log.warning(
            "%d files Spark's scan leaves out are added: %d hidden names, %d empty files",
            len(extra),
            len(hidden),
            len(empty),
        )
        assert raw is not None
        images = raw.unionByName(_by_path(spark, extra))
    else:
        assert raw is not None
        images = raw
    if len(ignored) > len(skipped):
        log.info("%d files under %s are not images and are not read", len(ignored), data_root)
    return ImageListing(
        with_split_and_label(images),
        files,
        total,
        hidden,
        empty,
        ignored,
        scanned=scan,
        largest=largest,
        paths=paths,
    )


def with_split_and_label(df: DataFrame) -> DataFrame:
    """Add ``label`` (parent folder) and ``split`` (folder above, if named like a split)."""
    parts = F.split(F.col("path"), "/")
    parent = F.element_at(parts, -2)
    grandparent = F.element_at(parts, -3)
    split = F.when(F.lower(grandparent).isin(*SPLIT_NAMES), grandparent)
    return df.select(
        "path",
        split.alias("split"),
        parent.alias("label"),
        "content",
        "length",
        "modificationTime",
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` upright, as 8-bit RGB; transparency is laid on white like the dataset."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit samples (PNG loads them as I;16 or I): keep the high byte, in integers (a
        # float64 copy of a large image is gigabytes); mode I holds 8-bit values as they are
        values = np.array(image)
        if image.mode != "I" or values.max() > 255:
            np.clip(values, 0, 65535, out=values)
            np.right_shift(values, 8, out=values)
        else:
            np.clip(values, 0, 255, out=values)
        image = Image.fromarray(values.astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def sniff_format(data: bytes) -> str:
    """The format other than JPEG and PNG that ``data`` starts like, or ``""`` (for messages)."""
    head = data[:16]
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return "HEIF/AVIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return ""


def decode_image(data: bytes | None, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode JPEG or PNG bytes into a ``size`` x ``size`` x 3 uint8 array.

    The content decides, not the file name: only Pillow's JPEG and PNG plugins ever read the
    bytes. The pixel count is read from the header and checked against ``max_pixels`` before
    any pixel is decoded. Raises ``ValueError`` with a short reason for an empty, truncated,
    too large or non-JPEG/PNG file.
    """
    if not data:
        raise ValueError("empty file")
    try:
        with warnings.catch_warnings():  # Pillow's warning over 89 M pixels: checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
    except Image.UnidentifiedImageError as exc:
        found = sniff_format(data)
        raise ValueError(
            "cannot decode image: not a JPEG or PNG image"
            + (f" ({found} content)" if found else "")
        ) from exc
    except Image.DecompressionBombError as exc:  # Pillow's own limit, above ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = found.group(1) if found else "more"
        raise ValueError(
            f"image too large: {pixels} pixels, over max_image_pixels = {max_pixels}"
        ) from exc
    except Exception as exc:  # a damaged header raises many types (struct.error, EOFError...)
        raise ValueError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(
                f"image too large: {width}x{height} = {width * height} pixels, over "
                f"max_image_pixels = {max_pixels}"
            )
        try:
            image.draft("RGB", (size, size))  # JPEG: decode already downscaled when large
            rgb = to_rgb(image)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
        except Exception as exc:  # corrupt data raises many types (OSError, SyntaxError...)
            raise ValueError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc
