"""Exploration of an image collection, computed with Spark: only aggregates reach the driver."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pandas as pd
from PIL import Image
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from helpers.images import decode_image

NO_SPLIT = "(none)"

PROPERTIES_SCHEMA = StructType(
    [
        StructField("width", IntegerType()),
        StructField("height", IntegerType()),
        StructField("mode", StringType()),
        StructField("format", StringType()),
        StructField("error", StringType()),
    ]
)


def inventory(images: DataFrame) -> pd.DataFrame:
    """Images and bytes per split and class, as a small pandas table."""
    table = (
        images.groupBy(F.coalesce("split", F.lit(NO_SPLIT)).alias("split"), "label")
        .agg(F.count("*").alias("images"), F.sum("length").alias("bytes"))
        .orderBy("split", "label")
        .toPandas()
    )
    return table


def split_mismatches(counts: pd.DataFrame) -> dict[str, list[str]]:
    """Classes present in one split but not another, by split."""
    by_split = {s: set(g["label"]) for s, g in counts.groupby("split")}
    every = set().union(*by_split.values()) if by_split else set()
    return {s: sorted(every - labels) for s, labels in by_split.items() if every - labels}


@F.pandas_udf(PROPERTIES_SCHEMA)
def _properties(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
    """Width, height, mode and format from each image's header, or why it cannot be read."""
    for contents in batches:
        rows = []
        for data in contents:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
                with Image.open(io.BytesIO(data)) as image:
                    rows.append((*image.size, image.mode, image.format, None))
            except Exception as exc:  # any decoder failure is a finding, not a crash
                rows.append((None, None, None, None, f"cannot read image: {exc}"[:300]))
        yield pd.DataFrame(rows, columns=["width", "height", "mode", "format", "error"])


def image_properties(images: DataFrame) -> DataFrame:
    """Per image: ``path, split, label, length, width, height, mode, format, error``."""
    props = images.withColumn("p", _properties("content"))
    return props.select("path", "split", "label", "length", "p.*")


def property_summary(properties: DataFrame) -> pd.DataFrame:
    """Counts of each (width, height, mode, format) combination, most common first."""
    return (
        properties.where(F.col("error").isNull())
        .groupBy("width", "height", "mode", "format")
        .agg(F.count("*").alias("images"), F.round(F.avg("length")).alias("mean_bytes"))
        .orderBy(F.desc("images"))
        .toPandas()
    )


def unreadable(properties: DataFrame, limit: int = 1000) -> pd.DataFrame:
    """Files that cannot be read as images, with the reason (at most ``limit``)."""
    return (
        properties.where(F.col("error").isNotNull()).select("path", "error").limit(limit).toPandas()
    )


def sample_images(
    images: DataFrame, per_class: int, max_classes: int = 0, seed: int = 42, size: int = 100
) -> pd.DataFrame:
    """A seeded sample of ``per_class`` decoded images for the first ``max_classes`` classes."""
    labels = [r["label"] for r in images.select("label").distinct().orderBy("label").collect()]
    if max_classes:
        labels = labels[:max_classes]
    window = Window.partitionBy("label").orderBy(F.xxhash64("path", F.lit(seed)))
    picked = (
        images.where(F.col("label").isin(labels))
        .withColumn("rank", F.row_number().over(window))
        .where(F.col("rank") <= per_class)
        .select("label", "path", "content")
        .toPandas()
    )
    pixels = []
    for data in picked["content"]:
        try:
            pixels.append(decode_image(bytes(data), size))
        except ValueError:
            pixels.append(None)
    picked["pixels"] = pixels
    return picked.dropna(subset=["pixels"]).drop(columns="content").sort_values(["label", "path"])
