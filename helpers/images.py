"""Finding images with Spark and decoding them into model-ready pixels.

Layout: ``<root>/<Split>/<Class>/<file>``; the label is the parent folder name, kept
exactly, and the split is the folder above it when it is named like one. A root may also
be a single split or a single class folder.
"""

from __future__ import annotations

import io
import logging
import re
from urllib.parse import unquote

import numpy as np
from PIL import Image, ImageOps
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from helpers.paths import resolve, spark_uri

log = logging.getLogger(__name__)

#: Extensions read, as a Hadoop glob (case variants spelled out: the glob is case-sensitive).
IMAGE_GLOB = "*.{jpg,jpeg,png,JPG,JPEG,PNG,Jpg,Jpeg,Png}"
EXTENSIONS_TEXT = "*.jpg, *.jpeg, *.png recursively"

#: Folder names recognised as a split (compared case-insensitively).
SPLIT_NAMES = ("training", "test", "validation", "train", "val")


def list_images(spark: SparkSession, data_root: str) -> DataFrame:
    """Read every image file under ``data_root`` with Spark's ``binaryFile`` source.

    Returns ``path, split, label, content, length, modificationTime``, one row per file.
    Raises ``FileNotFoundError`` naming ``data_root`` when it is missing or holds no images.
    """
    uri = spark_uri(data_root)
    try:
        raw = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("pathGlobFilter", IMAGE_GLOB)
            .load(uri)
        )
    except Exception as exc:  # Spark raises AnalysisException for a missing path
        if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
            raise FileNotFoundError(
                f"data_root '{data_root}' does not exist (resolved to {resolve(data_root)})"
            ) from exc
        raise
    if not raw.inputFiles():  # the file listing Spark already made: no job runs
        raise FileNotFoundError(
            f"data_root '{data_root}' has no images (looked for {EXTENSIONS_TEXT})"
        )
    return with_split_and_label(raw)


def _scan_path(uri: str) -> str:
    """A listed file URI (``file:///a%20b``) in the form a scan's ``path`` column has."""
    return re.sub(r"^file:/+", "file:/", unquote(uri))


def include_empty_files(images: DataFrame, rows: int | None = None) -> DataFrame:
    """``images`` plus a row for each listed file that Spark's scan returned no row for.

    Spark drops 0-byte files from file scans, so an empty ``.jpg`` would vanish from every
    count without a word; here it comes back with ``content`` null and ``length`` 0, to be
    counted and reported as unreadable. ``images`` is :func:`helpers.images.list_images`
    output, unfiltered; ``rows``, its row count if known, spares a join when nothing is
    missing. Only the missing paths reach the driver; usually there are none and
    ``images`` is returned as it is.
    """
    listed = [_scan_path(u) for u in images.inputFiles()]
    if rows is not None and rows >= len(listed):
        return images
    spark = images.sparkSession
    found = spark.createDataFrame([(p,) for p in listed], "path string")
    missing = [r["path"] for r in found.join(images.select("path"), "path", "left_anti").collect()]
    if not missing:
        return images
    log.warning("%d empty files skipped by Spark's scan are added back", len(missing))
    extra = spark.createDataFrame(
        [(path, None, 0, None) for path in sorted(missing)],
        "path string, content binary, length long, modificationTime timestamp",
    )
    return images.unionByName(with_split_and_label(extra))


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
        # 16-bit samples (PNG loads them as I;16 or I): keep the high byte
        values = np.asarray(image, dtype=np.float64)
        scale = 1 / 256 if image.mode != "I" or values.max() > 255 else 1
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes into a ``size`` x ``size`` x 3 uint8 array.

    Raises ``ValueError`` with a short reason for an empty, truncated or non-image file.
    """
    if not data:
        raise ValueError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))  # JPEG: decode already downscaled when large
            rgb = to_rgb(image)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image too large: {exc}") from exc
    except Exception as exc:  # corrupt files raise many types (struct.error, EOFError...)
        raise ValueError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc
