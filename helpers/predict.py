"""Name the fruits in a few photos, or in the photos of a folder, with the saved pipeline model.

    python -m helpers.predict photo.jpg other.png [--model outputs/pipeline_model] [--top 3]
    python -m helpers.predict my_photos/ --model s3://bucket/out/pipeline_model

Prints one line per image: its ``top`` classes with their probabilities, or the reason the
file could not be read (the other images are named all the same).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from helpers.classify import PIPELINE_MODEL, pipeline_labels, vector_or_null
from helpers.images import list_images
from helpers.outputs import POINTER, model_folder
from helpers.paths import exists, is_remote, join, list_files, read_bytes, resolve, spark_uri
from helpers.spark.kind import default_parallelism
from helpers.spark.session import get_spark

log = logging.getLogger(__name__)

DEFAULT_MODEL = join("outputs", PIPELINE_MODEL)


def check_model_path(model: str) -> None:
    """Raise, naming the fix, when no saved pipeline model is at ``model``."""
    if not exists(join(resolve(model), "metadata")) and not exists(join(model, POINTER)):
        raise FileNotFoundError(
            f"no pipeline model at '{model}': run the pipeline first (python -m helpers.run "
            f"writes <output_root>/{PIPELINE_MODEL}/) or pass --model <output_root>/"
            f"{PIPELINE_MODEL}"
        )


def load_pipeline_model(model: str) -> PipelineModel:
    """The saved pipeline model at ``model``; a clear error when it is not there."""
    check_model_path(model)
    loaded = PipelineModel.load(model_folder(model))
    if not pipeline_labels(loaded):
        raise ValueError(
            f"the pipeline model at '{model}' has no classifier (its Training split had fewer "
            f"than two classes: see the 'classifier' section of manifest.json)"
        )
    return loaded


def _local(path: str) -> str:
    """A local path the user typed, taken from the current directory; URIs unchanged."""
    if is_remote(path) or path.startswith("file:"):
        return path
    return os.path.abspath(os.path.expanduser(path))


def image_frame(spark: SparkSession, paths: list[str]) -> DataFrame:
    """``path, content`` for each file of ``paths`` and each image under its folders.

    Folders are read as the pipeline reads a data root (:func:`helpers.images.list_images`:
    hidden and odd names included); a file named on its own is read whatever its name, so a
    non-image gets an error row rather than being skipped. A missing path raises.
    """
    frames, files = [], []
    for given in paths:
        path = _local(given)
        if list_files(path):
            frames.append(list_images(spark, path).images.select("path", "content"))
        elif exists(path):
            files.append((spark_uri(path), read_bytes(path)))
        else:
            raise FileNotFoundError(f"'{given}' does not exist: give image files or folders")
    if files:
        frames.append(spark.createDataFrame(files, "path string, content binary"))
    images = frames[0]
    for frame in frames[1:]:
        images = images.unionByName(frame)
    return images


def predict(
    spark: SparkSession, model: PipelineModel, images: DataFrame, *, top: int = 3
) -> pd.DataFrame:
    """The ``top`` classes and probabilities of each image of ``images`` (``path, content``).

    One row per image, sorted by path: ``path``, ``label_1``, ``probability_1``, ...,
    ``error`` (the reason an image has no prediction, else None).
    """
    labels = pipeline_labels(model)
    count = images.count()
    tasks = max(1, min(default_parallelism(spark), math.ceil(count / 64)))
    out = (
        model.transform(images.repartition(tasks))
        .select("path", "error", vector_or_null("probability").alias("p"))
        .orderBy(F.col("path"))
        .toPandas()
    )
    rows = []
    for path, error, probabilities in out.itertuples(index=False):
        row: dict[str, object] = {"path": path}
        if probabilities is not None:
            order = np.argsort(-np.asarray(probabilities), kind="stable")[:top]
            for rank, index in enumerate(order, 1):
                row[f"label_{rank}"] = labels[index]
                row[f"probability_{rank}"] = float(probabilities[index])
        row["error"] = error
        rows.append(row)
    return pd.DataFrame(rows)


def format_predictions(table: pd.DataFrame, *, top: int = 3) -> str:
    """One line per image: ``path: label p, label p, ...`` or ``path: ERROR reason``."""
    lines = []
    for _, row in table.iterrows():
        name = str(row["path"]).removeprefix("file://").removeprefix("file:")
        if isinstance(row.get("error"), str):
            lines.append(f"{name}: ERROR {row['error']}")
            continue
        ranked = [
            f"{row[f'label_{i}']} {row[f'probability_{i}']:.3f}"
            for i in range(1, top + 1)
            if isinstance(row.get(f"label_{i}"), str)
        ]
        lines.append(f"{name}: " + ", ".join(ranked))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: prints the top classes per image; 2 on a missing input."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m helpers.predict", description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"saved pipeline model (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--top", type=int, default=3, help="classes shown per image (3)")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be at least 1")
    model_path = _local(args.model) if args.model != DEFAULT_MODEL else resolve(DEFAULT_MODEL)
    try:
        for given in args.paths:  # before Spark starts: a typo fails in a second
            if not exists(_local(given)):
                raise FileNotFoundError(f"'{given}' does not exist: give image files or folders")
        check_model_path(model_path)
        spark = get_spark(
            "fruits-predict",
            driver_memory="2g",
            data_root=_local(args.paths[0]),
            output_root=model_path,
        )
        model = load_pipeline_model(model_path)
        table = predict(spark, model, image_frame(spark, args.paths), top=args.top)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_predictions(table, top=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
