"""Exploration of an image collection, computed with Spark: only aggregates reach the driver.

Every per-image step (reading headers, hashing bytes, decoding thumbnails) runs in Spark,
in pandas UDFs or SQL functions; the driver gets per-class tables, the few files worth
naming, and small seeded samples. So the same calls work on 300 images or 150,000.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from helpers.config import IMAGE_FORMATS
from helpers.images import ImageListing, decode_image
from helpers.spark.kind import default_parallelism

log = logging.getLogger(__name__)

NO_SPLIT = "(none)"

#: The split whose images a model learns from: a duplicate of one of them elsewhere leaks.
TRAINING = "Training"

#: Files per task in the EDA's scans: large enough that per-task costs stop mattering.
FILES_PER_TASK = 1000

#: Bytes of images per task at most, so a task of large photos stays small in memory.
BYTES_PER_TASK = 256 * 1024 * 1024

#: Image format each file extension promises (lower case, without the dot).
EXTENSION_FORMATS = {ext[1:]: fmt for ext, fmt in IMAGE_FORMATS.items()}

PROPERTIES_SCHEMA = StructType(
    [
        StructField("width", IntegerType()),
        StructField("height", IntegerType()),
        StructField("mode", StringType()),
        StructField("format", StringType()),
        StructField("error", StringType()),
    ]
)


def eda_images(
    listing: ImageListing,
    *,
    files_per_task: int = FILES_PER_TASK,
    bytes_per_task: int = BYTES_PER_TASK,
) -> DataFrame:
    """The images of ``listing`` ready for the EDA: in fewer and larger tasks.

    Spark plans one task per few dozen small files, and every task of a pandas UDF pays a
    round trip to a Python worker (a quarter to half a second on a busy laptop), so the
    images are coalesced to about ``files_per_task`` files per task, never fewer tasks
    than cores, nor more than ``bytes_per_task`` of images per task (the bytes a Python
    worker holds at once). The listing's counts size the tasks: no Spark job runs.
    """
    images = listing.images
    cores = default_parallelism(images.sparkSession)
    files, size = listing.files, listing.bytes
    tasks = max(cores, math.ceil(files / files_per_task), math.ceil(size / bytes_per_task))
    log.info("%d images, %d bytes: %d tasks", files, size, tasks)
    return images.coalesce(tasks)


def inventory(images: DataFrame) -> pd.DataFrame:
    """Images and bytes per split and class, as a small pandas table."""
    table = (
        images.groupBy(F.coalesce("split", F.lit(NO_SPLIT)).alias("split"), "label")
        .agg(F.count("*").alias("images"), F.sum("length").alias("bytes"))
        .orderBy("split", "label")
        .toPandas()
    )
    return table


def class_table(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per class: images and bytes in each split and in all, most images first."""
    table = counts.pivot_table(
        index="label", columns="split", values=["images", "bytes"], fill_value=0, aggfunc="sum"
    )
    table.columns = [f"{split} {what}" for what, split in table.columns]
    splits = sorted(counts["split"].unique())
    table["images"] = table[[f"{s} images" for s in splits]].sum(axis=1)
    table["bytes"] = table[[f"{s} bytes" for s in splits]].sum(axis=1)
    order = ["images", *(f"{s} images" for s in splits), "bytes", *(f"{s} bytes" for s in splits)]
    table = table[order].astype("int64")
    table = table.reset_index().sort_values(["images", "label"], ascending=[False, True])
    return table.set_index("label")


def split_totals(counts: pd.DataFrame) -> pd.DataFrame:
    """Classes, images and bytes per split (plus a total row), from an :func:`inventory`."""
    totals = counts.groupby("split").agg(
        classes=("label", "nunique"), images=("images", "sum"), bytes=("bytes", "sum")
    )
    totals.loc["total"] = [counts["label"].nunique(), counts["images"].sum(), counts["bytes"].sum()]
    return totals


def split_mismatches(counts: pd.DataFrame) -> dict[str, list[str]]:
    """Classes present in one split but not another, by split."""
    by_split = {s: set(g["label"]) for s, g in counts.groupby("split")}
    every = set().union(*by_split.values()) if by_split else set()
    return {s: sorted(every - labels) for s, labels in by_split.items() if every - labels}


def _properties(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
    """Width, height, mode and format from each image's header, or why it cannot be read."""
    for contents in batches:
        rows = []
        for data in contents:
            if data is None or len(data) == 0:
                rows.append((None, None, None, None, "empty file"))
                continue
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
                with Image.open(io.BytesIO(data)) as image:
                    rows.append((*image.size, image.mode, image.format, None))
            except Exception as exc:  # any decoder failure is a finding, not a crash
                reason = f"cannot read image: {type(exc).__name__}: {exc}"
                rows.append((None, None, None, None, reason[:300]))
        yield pd.DataFrame(rows, columns=["width", "height", "mode", "format", "error"])


def content_hashes(images: DataFrame) -> DataFrame:
    """Per image: ``path, split, label, length, sha256`` (hex digest of the file's bytes)."""
    return images.select("path", "split", "label", "length", _sha256())


def _sha256() -> Column:
    """The sha256 of an image's bytes, computed by Spark itself (no Python round trip)."""
    return F.sha2("content", 256).alias("sha256")


def image_properties(images: DataFrame) -> DataFrame:
    """Per image: ``path, split, label, length, sha256, width, height, mode, format, error``.

    One read of the bytes gives both the header properties and the content hash (for
    :func:`duplicate_groups`); the result holds no image bytes, so it is cheap to cache.
    """
    props = images.select(
        "path",
        "split",
        "label",
        "length",
        _sha256(),
        # made per call: a UDF is bound to the session kind (classic, Connect) it is made in
        F.pandas_udf(_properties, PROPERTIES_SCHEMA)("content").alias("p"),
    )
    return props.select("path", "split", "label", "length", "sha256", "p.*")


def property_summary(properties: DataFrame) -> pd.DataFrame:
    """Counts of each (width, height, mode, format) combination, most common first."""
    return (
        properties.where(F.col("error").isNull())
        .groupBy("width", "height", "mode", "format")
        .agg(F.count("*").alias("images"), F.round(F.avg("length")).alias("mean_bytes"))
        .orderBy(F.desc("images"), "width", "height", "mode", "format")
        .toPandas()
    )


def file_size_summary(properties: DataFrame) -> pd.DataFrame:
    """File sizes in bytes per split: count, min, quartiles, max and mean."""
    quartiles = F.percentile_approx("length", [0.25, 0.5, 0.75], 10000)
    table = (
        properties.groupBy(F.coalesce("split", F.lit(NO_SPLIT)).alias("split"))
        .agg(
            F.count("*").alias("files"),
            F.min("length").alias("min"),
            quartiles.alias("q"),
            F.max("length").alias("max"),
            F.round(F.avg("length")).alias("mean"),
        )
        .select(
            "split",
            "files",
            "min",
            F.col("q")[0].alias("q1"),
            F.col("q")[1].alias("median"),
            F.col("q")[2].alias("q3"),
            "max",
            "mean",
        )
        .orderBy("split")
        .toPandas()
    )
    return table.set_index("split")


def _most_common(summary: pd.DataFrame, columns: str | list[str]) -> Any:
    """The value of ``columns`` shared by the most readable images in a property summary,
    as Python values (Spark Connect's literals take no numpy scalars)."""
    value = summary.groupby(columns)["images"].sum().idxmax()
    if isinstance(value, tuple):
        return tuple(v.item() if hasattr(v, "item") else v for v in value)
    return value.item() if hasattr(value, "item") else value


def _size_fences(properties: DataFrame, iqr_factor: float) -> DataFrame:
    """Per class, the file sizes below or above which a file is an outlier (Tukey fences)."""
    quartiles = F.percentile_approx("length", [0.25, 0.75], 10000)
    return (
        properties.where(F.col("error").isNull())
        .groupBy("label")
        .agg(quartiles.alias("q"))
        .select(
            "label",
            (F.col("q")[0] - iqr_factor * (F.col("q")[1] - F.col("q")[0])).alias("low"),
            (F.col("q")[1] + iqr_factor * (F.col("q")[1] - F.col("q")[0])).alias("high"),
        )
    )


def _reasons(common: dict[str, Any]) -> Column:
    """A '; '-joined description of every way an image departs from ``common``."""
    width, height = common["size"]
    extension = F.lower(F.regexp_extract("path", r"\.([^./]+)$", 1))
    promised = F.coalesce(
        *[F.when(extension == ext, F.lit(fmt)) for ext, fmt in EXTENSION_FORMATS.items()]
    )
    size = F.format_string("%dx%d", "width", "height")
    return F.concat_ws(
        "; ",
        F.when(
            (F.col("width") != width) | (F.col("height") != height),
            F.concat(F.lit("size "), size, F.lit(f" (most common {width}x{height})")),
        ),
        F.when(
            F.col("mode") != common["mode"],
            F.concat(F.lit("mode "), "mode", F.lit(f" (most common {common['mode']})")),
        ),
        F.when(
            F.col("format") != common["format"],
            F.concat(F.lit("format "), "format", F.lit(f" (most common {common['format']})")),
        ),
        F.when(
            F.col("format") != promised,
            F.concat(F.lit("extension ."), extension, F.lit(" holds "), "format"),
        ),
        F.when(
            F.col("length") < F.col("low"),
            F.format_string("small file: %d B (class fence %.0f B)", "length", "low"),
        ),
        F.when(
            F.col("length") > F.col("high"),
            F.format_string("large file: %d B (class fence %.0f B)", "length", "high"),
        ),
    )


def unusual_images(
    properties: DataFrame, *, iqr_factor: float = 3.0, limit: int = 1000
) -> pd.DataFrame:
    """Readable images that differ from the collection, each with the reason, by path.

    Flags a size, mode or format other than the most common one, an extension that does
    not match the content, and a file size outside its class's Tukey fences (quartiles
    -/+ ``iqr_factor`` x IQR): a far smaller file than its siblings is often a blank or
    cropped picture. Returns ``path, split, label, reason, width, height, mode, format,
    length`` (at most ``limit`` rows, sorted by path; a warning gives the total beyond).
    """
    readable = properties.where(F.col("error").isNull())
    summary = property_summary(properties)
    if summary.empty:
        return pd.DataFrame(
            columns=["path", "split", "label", "reason", "width", "height", "mode", "format"]
            + ["length"]
        )
    common = {
        "size": _most_common(summary, ["width", "height"]),
        "mode": _most_common(summary, "mode"),
        "format": _most_common(summary, "format"),
    }
    flagged = (
        readable.join(F.broadcast(_size_fences(properties, iqr_factor)), "label")
        .withColumn("reason", _reasons(common))
        .where(F.col("reason") != "")
        .select("path", "split", "label", "reason", "width", "height", "mode", "format", "length")
    )
    table = flagged.orderBy("path").limit(limit).toPandas()
    if len(table) == limit:
        log.warning("%d unusual images; the first %d by path are listed", flagged.count(), limit)
    return table


def unreadable(properties: DataFrame, *, limit: int = 1000) -> pd.DataFrame:
    """Files that cannot be read as images, with the reason (at most ``limit``)."""
    return (
        properties.where(F.col("error").isNotNull())
        .select("path", "split", "label", "length", "error")
        .orderBy("path")
        .limit(limit)
        .toPandas()
    )


def _duplicates(hashed: DataFrame, paths_shown: int) -> DataFrame:
    """One row per content hash held by two files or more (Spark, lazy)."""
    splits = F.array_sort(F.collect_set(F.coalesce("split", F.lit(NO_SPLIT))))
    return (
        hashed.where(F.col("sha256").isNotNull())
        .groupBy("sha256")
        .agg(
            F.count("*").alias("copies"),
            splits.alias("splits"),
            F.array_sort(F.collect_set("label")).alias("labels"),
            F.sum(F.when(F.col("split") == TRAINING, 1).otherwise(0)).alias("in_training"),
            F.slice(F.array_sort(F.collect_list("path")), 1, paths_shown).alias("paths"),
        )
        .where(F.col("copies") > 1)
        .withColumn("leakage", (F.col("in_training") > 0) & (F.size("splits") > 1))
        .withColumn("conflicting_labels", F.size("labels") > 1)
    )


def duplicate_groups(
    hashed: DataFrame, *, limit: int = 1000, paths_shown: int = 20
) -> pd.DataFrame:
    """Files with identical bytes (same sha256), one row per group, leakage first.

    ``hashed`` has ``path, split, label, sha256`` (e.g. :func:`image_properties`). A group
    with a Training file and a file of another split is ``leakage``: the model would be
    scored on an image it learned from. ``conflicting_labels`` marks one picture filed
    under two classes. Lists at most ``paths_shown`` paths per group, ``limit`` groups.
    """
    return (
        _duplicates(hashed, paths_shown)
        .drop("in_training")
        .orderBy(F.desc("leakage"), F.desc("copies"), "sha256")
        .limit(limit)
        .toPandas()
    )


def duplicate_summary(hashed: DataFrame) -> dict[str, int]:
    """Counts of duplicate groups and images, within and across splits, over all groups.

    ``leakage_images`` counts the files outside Training whose bytes also occur in Training.
    """
    row = (
        _duplicates(hashed, 1)
        .agg(
            F.count("*").alias("groups"),
            F.sum("copies").alias("images"),
            F.sum(F.when(F.size("splits") == 1, 1).otherwise(0)).alias("within_split_groups"),
            F.sum(F.when(F.size("splits") > 1, 1).otherwise(0)).alias("cross_split_groups"),
            F.sum(F.col("leakage").cast("int")).alias("leakage_groups"),
            F.sum(
                F.when(F.col("leakage"), F.col("copies") - F.col("in_training")).otherwise(0)
            ).alias("leakage_images"),
            F.sum(F.col("conflicting_labels").cast("int")).alias("conflicting_label_groups"),
        )
        .first()
    )
    return {key: int(value or 0) for key, value in row.asDict().items()}


def class_sample(images: DataFrame, per_class: int, seed: int = 42) -> DataFrame:
    """Up to ``per_class`` rows of ``images`` for each class (0: all), chosen by a seeded hash.

    The choice looks at paths only; the bytes of the chosen files are then fetched by a
    broadcast join, so no image content is shuffled. The same seed always picks the same
    files, and a smaller ``per_class`` picks a subset of a larger one.
    """
    if per_class <= 0:
        return images
    order = Window.partitionBy("label").orderBy(F.xxhash64("path", F.lit(seed)), "path")
    picked = (
        images.select("path", "label")
        .withColumn("rank", F.row_number().over(order))
        .where(F.col("rank") <= per_class)
        .select("path")
    )
    return images.join(F.broadcast(picked), "path")


def spread_labels(labels: list[str], count: int) -> list[str]:
    """``count`` labels spread evenly over sorted ``labels`` (all of them when count is 0)."""
    labels = sorted(labels)
    if count <= 0 or count >= len(labels):
        return labels
    return [labels[i * len(labels) // count] for i in range(count)]


def sample_images(
    images: DataFrame, *, per_class: int, max_classes: int = 0, seed: int = 42, size: int = 100
) -> pd.DataFrame:
    """A seeded sample of ``per_class`` decoded images per class, as ``label, path, pixels``.

    ``max_classes`` > 0 keeps that many classes spread evenly over the sorted class list
    (so a grid of 100+ classes is not all apples); 0 keeps every class.
    """
    labels = [r["label"] for r in images.select("label").distinct().collect()]
    chosen = spread_labels(labels, max_classes)
    subset = images if len(chosen) == len(labels) else images.where(F.col("label").isin(chosen))
    picked = class_sample(subset, per_class, seed).select("label", "path", "content").toPandas()
    pixels = []
    for data in picked["content"]:
        try:
            pixels.append(decode_image(bytes(data or b""), size))
        except ValueError:
            pixels.append(None)
    picked["pixels"] = pixels
    picked = picked.dropna(subset=["pixels"]).drop(columns="content")
    return picked.sort_values(["label", "path"]).reset_index(drop=True)


#: Per task and class: images decoded, the sum of their pixels (float64 bytes), of squares.
PARTIAL_SCHEMA = "label string, images long, pixel_sum binary, square_sum double"

#: Per class: images, mean image (float32 bytes, size x size x 3), MSE to the mean.
CLASS_SCHEMA = "label string, images long, mean binary, mse double"


def _partial_sums(size: int) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A ``mapInPandas`` function: one task's images -> per-class pixel sums (no pixels out)."""

    def partial(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        sums: dict[str, list[Any]] = {}
        for batch in batches:
            for label, data in zip(batch["label"], batch["content"]):
                try:
                    pixels = decode_image(bytes(data or b""), size).reshape(-1) / 255.0
                except ValueError:  # unreadable files are reported by unreadable()
                    continue
                entry = sums.setdefault(label, [0, np.zeros(pixels.size), 0.0])
                entry[0] += 1
                entry[1] += pixels
                entry[2] += float(pixels @ pixels)
        rows = [(label, n, total.tobytes(), squares) for label, (n, total, squares) in sums.items()]
        yield pd.DataFrame(rows, columns=["label", "images", "pixel_sum", "square_sum"])

    return partial


def _class_mean(partials: pd.DataFrame) -> pd.DataFrame:
    """An ``applyInPandas`` function: one class's partial sums -> its mean image and MSE."""
    images = int(partials["images"].sum())
    total = np.sum([np.frombuffer(b, dtype=np.float64) for b in partials["pixel_sum"]], axis=0)
    mean = total / images
    # mean over images of |x - mean|^2 = mean of |x|^2 - |mean|^2, per pixel and channel
    mse = max(float(partials["square_sum"].sum() / images - mean @ mean) / mean.size, 0.0)
    label = partials["label"].iloc[0]
    return pd.DataFrame([(label, images, mean.astype(np.float32).tobytes(), mse)])


def class_variability(
    images: DataFrame, *, per_class: int = 30, size: int = 50, seed: int = 42
) -> pd.DataFrame:
    """Per class: its mean image and how far its images are from it, on a seeded sample.

    Each Spark task decodes its sampled images at ``size`` x ``size`` and keeps only
    per-class sums (``mapInPandas``); Spark then combines the sums per class
    (``applyInPandas``), so neither pixels nor images reach the driver, only one mean image
    per class. ``mse`` is the mean squared error of an image to its class mean image
    (pixels in [0, 1], averaged over pixels, channels and images): 0 for identical
    pictures, higher for a class whose photos vary more (pose, ripeness, a mixed-up
    folder). Returns ``label, images, mse, mean`` (mean: size x size x 3 floats), most
    variable class first.
    """
    if size < 1:
        raise ValueError(f"eda_image_size must be a positive number of pixels, got {size}")
    if per_class < 0:
        raise ValueError(
            f"eda_sample_per_class must be 0 (all images) or positive, got {per_class}"
        )
    rows = (
        class_sample(images, per_class, seed)
        .select("label", "content")
        .mapInPandas(_partial_sums(size), PARTIAL_SCHEMA)
        .groupBy("label")
        .applyInPandas(_class_mean, CLASS_SCHEMA)
        .collect()
    )
    table = pd.DataFrame(
        {
            "label": [r["label"] for r in rows],
            "images": [int(r["images"]) for r in rows],
            "mse": [float(r["mse"]) for r in rows],
            "mean": [np.frombuffer(r["mean"], np.float32).reshape(size, size, 3) for r in rows],
        },
        columns=["label", "images", "mse", "mean"],
    )
    log.info("variability of %d classes from %d images", len(table), table["images"].sum())
    return table.sort_values(["mse", "label"], ascending=[False, True]).reset_index(drop=True)


@dataclass(frozen=True)
class EdaSummary:
    """The numbers of an EDA run (:func:`eda_summary`), JSON-ready: images, bytes and
    classes in all, per split and per class; classes missing from a split; image property
    combinations; unusual and unreadable files by path with the reason; duplicate counts
    and Training/Test leakage; the most and least variable classes."""

    images: int
    bytes: int
    classes: int
    by_split: dict[str, int]
    classes_by_split: dict[str, int]
    by_class: dict[str, dict[str, int]]
    split_mismatches: dict[str, list[str]]
    properties: list[dict[str, Any]]
    unusual: dict[str, str]
    unreadable: dict[str, str]
    duplicates: dict[str, int]
    duplicate_groups: int
    leakage: int
    variability_classes: int
    most_variable: list[dict[str, Any]]
    least_variable: list[dict[str, Any]]

    def to_manifest(self) -> dict[str, Any]:
        """The ``eda`` section's keys for these numbers."""
        return asdict(self)

    def table(self) -> pd.DataFrame:
        """A few lines for the end of the notebook: what the inventory found."""
        most = self.most_variable[0]["label"] if self.most_variable else "-"
        splits = ", ".join(f"{split} {n}" for split, n in sorted(self.by_split.items()))
        rows = {
            "images": f"{self.images} ({splits})",
            "classes": str(self.classes),
            "bytes": f"{self.bytes / 2**20:.1f} MiB",
            "classes missing from a split": str(sum(map(len, self.split_mismatches.values()))),
            "unreadable files": str(len(self.unreadable)),
            "unusual images": str(len(self.unusual)),
            "duplicate groups": str(self.duplicate_groups),
            "Test images leaking from Training": str(self.leakage),
            "most variable class": most,
        }
        return pd.DataFrame({"value": list(rows.values())}, index=list(rows))


def eda_summary(
    counts: pd.DataFrame,
    *,
    mismatches: dict[str, list[str]],
    properties: pd.DataFrame,
    unusual: pd.DataFrame,
    bad_files: pd.DataFrame,
    duplicates: dict[str, int],
    variability: pd.DataFrame,
    shown: int = 5,
) -> EdaSummary:
    """The numbers of an EDA run, for the ``eda`` section of the manifest.

    ``counts`` is the :func:`inventory`, ``mismatches`` :func:`split_mismatches`,
    ``properties`` :func:`property_summary`, ``unusual`` :func:`unusual_images`,
    ``bad_files`` :func:`unreadable`, ``duplicates`` :func:`duplicate_summary` and
    ``variability`` :func:`class_variability`; ``shown`` classes at each end of the
    variability ranking are named.
    """

    def extremes(table: pd.DataFrame) -> list[dict[str, Any]]:
        return [{"label": r.label, "mse": round(r.mse, 5)} for r in table.itertuples()]

    return EdaSummary(
        images=int(counts["images"].sum()),
        bytes=int(counts["bytes"].sum()),
        classes=int(counts["label"].nunique()),
        by_split={k: int(v) for k, v in counts.groupby("split")["images"].sum().items()},
        classes_by_split={k: int(v) for k, v in counts.groupby("split")["label"].nunique().items()},
        by_class={
            label: {r.split: int(r.images) for r in group.itertuples()}
            for label, group in counts.groupby("label")
        },
        split_mismatches=mismatches,
        properties=[
            {
                "size": f"{r.width}x{r.height}",
                "mode": r.mode,
                "format": r.format,
                "images": int(r.images),
            }
            for r in properties.itertuples()
        ],
        unusual=dict(zip(unusual["path"], unusual["reason"])),
        unreadable=dict(zip(bad_files["path"], bad_files["error"])),
        duplicates=duplicates,
        duplicate_groups=duplicates["groups"],
        leakage=duplicates["leakage_images"],
        variability_classes=len(variability),
        most_variable=extremes(variability.head(shown)),
        least_variable=extremes(variability.tail(shown).iloc[::-1]),
    )
