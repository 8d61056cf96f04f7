"""Finding images with Spark and decoding them into model-ready pixels.

Layout: ``<root>/<Split>/<Class>/<file>``; the label is the parent folder name, kept
exactly, and the split is the folder above it when it is named like one. A root may also
be a single split or a single class folder.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType

from helpers.config import IMAGE_EXTENSIONS
from helpers.paths import list_files, read_bytes, resolve, spark_uri
from helpers.spark.jvm import input_files

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


@dataclass
class ImageListing:
    """Every file under a data root, as the pipeline reads it.

    ``images`` has one row per image file (``path, split, label, content, length,
    modificationTime``): the files Spark's scan returns, plus those it leaves out without a
    word: 0-byte files (``content`` null) and names Hadoop's listing hides (``_x``, ``.x``,
    or under such a folder), whose bytes are read by path instead. ``ignored`` names the
    other files under the root, each with the reason it is not read.
    """

    images: DataFrame
    files: int
    bytes: int
    hidden: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)

    def report(self, limit: int = 1000) -> dict[str, Any]:
        """Counts and (at most ``limit``) paths of the files read specially or not read."""
        return {
            "image_files": self.files,
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


def is_image_name(path: str) -> bool:
    """Whether ``path`` ends in an image extension the pipeline reads (any letter case)."""
    return path.rsplit("/", 1)[-1].lower().endswith(EXTENSIONS)


def _key(path: str) -> str:
    """A file's path without its scheme, to compare two listings of one root."""
    return re.sub(r"^[A-Za-z][\w+.-]*:/*", "", path)


@F.udf(BinaryType())
def _read_file(path: str) -> bytes:
    """The bytes of the file at ``path`` (a Spark path: ``file:``, ``s3://``...)."""
    return read_bytes(path)


def list_images(spark: SparkSession, data_root: str) -> ImageListing:
    """Every file under ``data_root``: the images as a DataFrame, the other files named.

    Spark's ``binaryFile`` scan reads the images; a listing of the root on the driver
    (metadata only, hidden names included) finds what that scan would drop silently, so
    each image file gets exactly one row and no file is read twice. Raises
    ``FileNotFoundError`` naming ``data_root`` when it is missing or holds no images.
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
    scanned = {_key(unquote(u)) for u in input_files(raw)}  # the listing Spark made: no job
    extra, hidden, empty, ignored, total = [], [], [], {}, 0
    for path, size, modified in list_files(data_root):
        if not is_image_name(path):
            ignored[path] = f"not an image file name ({', '.join(EXTENSIONS)})"
            continue
        total += size
        if _key(path) not in scanned:
            hidden.append(path)
        elif size:
            continue
        if not size:
            empty.append(path)
        extra.append((path, size, modified))
    files = len(scanned) + len(hidden)
    if not files:
        raise FileNotFoundError(
            f"data_root '{data_root}' has no images (looked for {EXTENSIONS_TEXT})"
        )
    images = raw
    if extra:
        log.warning(
            "%d files Spark's scan leaves out are added: %d hidden names, %d empty files",
            len(extra),
            len(hidden),
            len(empty),
        )
        rows = spark.createDataFrame(extra, "path string, length long, modified double")
        images = raw.unionByName(
            rows.select(
                "path",
                F.when(F.col("length") > 0, _read_file("path")).alias("content"),
                "length",
                F.timestamp_seconds("modified").alias("modificationTime"),
            )
        )
    if ignored:
        log.info("%d files under %s are not images and are not read", len(ignored), data_root)
    return ImageListing(with_split_and_label(images), files, total, hidden, empty, ignored)


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
