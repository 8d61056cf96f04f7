"""Transfer-learning features: a pretrained CNN without its top, inside a Spark pandas UDF.

The driver loads the weights once (Keras' ImageNet download or a local file) and
broadcasts them; each Python worker builds the model once, from the broadcast, and keeps
it for every task and batch it runs. Global average pooling turns the last feature map
into one vector per image (1280 floats for MobileNetV2): the 7x7 map is never flattened.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.accumulators import Accumulator
from pyspark.broadcast import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from helpers.config import MODELS, WEIGHTS_ENV, resolve_weights
from helpers.images import decode_image
from helpers.paths import exists, join, spark_uri

log = logging.getLogger(__name__)

#: What the UDF returns per image: the vector, or null and the reason it could not be made.
RESULT_SCHEMA = StructType(
    [
        StructField("features", ArrayType(FloatType()), True),
        StructField("error", StringType(), True),
    ]
)

# Per-process cache: a Python worker builds each model once and reuses it across tasks.
_WORKER_MODELS: dict[tuple[Any, ...], Any] = {}


def build_model(model_name: str, weights: str | None, image_size: int) -> Any:
    """Build the Keras CNN ``model_name`` without its top, with global average pooling.

    ``weights`` is what Keras takes: ``'imagenet'``, a local .h5 path, or ``None`` (random;
    the workers then receive the driver's weights from the broadcast).
    """
    import keras

    spec = MODELS[model_name]
    application = getattr(keras.applications, spec["keras"])
    try:
        return application(
            weights=weights,
            include_top=False,
            pooling="avg",
            input_shape=(image_size, image_size, 3),
        )
    except Exception as exc:
        if weights not in (None, "imagenet"):
            raise ValueError(
                f"weights file '{weights}' does not fit {model_name} without its top: {exc}"
            ) from exc
        if weights == "imagenet":
            raise RuntimeError(
                f"could not download the ImageNet weights for {model_name} ({exc}); on a "
                f"machine without internet pass a local .h5 file as the 'weights' parameter "
                f"or in ${WEIGHTS_ENV}"
            ) from exc
        raise


def load_weights(model_name: str, weights: str, image_size: int) -> list[np.ndarray]:
    """Load the model on the driver and return its weight arrays, ready to broadcast.

    ``weights='random'`` (tests only) gives freshly initialised, seeded weights.
    """
    import keras

    resolved = resolve_weights(weights)
    if resolved == "random":
        log.warning("weights='random': features are meaningless, use this for tests only")
        keras.utils.set_random_seed(0)
    model = build_model(model_name, None if resolved == "random" else resolved, image_size)
    return model.get_weights()


def weights_checksum(arrays: list[np.ndarray]) -> str:
    """SHA-256 over the weight arrays, recorded in the manifest to tell runs' models apart."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _worker_model(
    model_name: str, image_size: int, weights: Broadcast, checksum: str, threads: int
) -> Callable[[np.ndarray], np.ndarray]:
    """This Python worker's inference function, built on first use from the broadcast weights.

    TensorFlow gets ``threads`` threads (the cores a Spark task owns), so several tasks on
    one executor share its cores instead of each one claiming all of them. The function is
    traced once for any batch length, so a short last batch costs no new trace.
    """
    key = (model_name, image_size, checksum)
    if key not in _WORKER_MODELS:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started in this process: keep its settings
            pass
        model = build_model(model_name, None, image_size)
        model.set_weights(weights.value)
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
        infer = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        _WORKER_MODELS.clear()  # one model per worker: free the previous run's
        _WORKER_MODELS[key] = lambda pixels: infer(pixels).numpy()
    return _WORKER_MODELS[key]


def featurize_batch(
    infer: Callable[[np.ndarray], np.ndarray],
    preprocess: Callable[[np.ndarray], np.ndarray],
    contents: pd.Series,
    image_size: int,
    batch_size: int,
) -> pd.DataFrame:
    """Decode image bytes and run the model, ``batch_size`` images at a time.

    Undecodable images get an error and null features; memory stays at one batch of pixels.
    """
    features: list[np.ndarray | None] = []
    errors: list[str | None] = []
    pixels = np.empty((batch_size, image_size, image_size, 3), dtype=np.float32)
    for start in range(0, len(contents), batch_size):
        chunk = contents.iloc[start : start + batch_size]
        good = 0
        chunk_errors: list[str | None] = []
        for data in chunk:
            try:
                pixels[good] = decode_image(data, image_size)
                good += 1
                chunk_errors.append(None)
            except ValueError as exc:
                chunk_errors.append(str(exc)[:500])
        vectors = iter(infer(preprocess(pixels[:good])) if good else [])
        features.extend(None if e else next(vectors) for e in chunk_errors)
        errors.extend(chunk_errors)
    return pd.DataFrame({"features": features, "error": errors})


@dataclass
class Featurization:
    """A lazy featurization: the DataFrame to write, facts for the manifest, a decode count."""

    features: DataFrame
    info: dict[str, Any]
    decoded: Accumulator

    @property
    def images_decoded(self) -> int:
        """Images the UDF decoded so far (after the write: once per image, plus any retries)."""
        return int(self.decoded.value)


def task_count(spark: SparkSession, images: int, batch_size: int) -> int:
    """Tasks for ``images``: at least one per core, each of about 8 model batches.

    Few large tasks keep per-task costs small; at least one per core keeps every core busy.
    """
    cores = spark.sparkContext.defaultParallelism
    return max(cores, math.ceil(images / (batch_size * 8)))


def featurize(
    spark: SparkSession,
    images: DataFrame,
    model_name: str = "mobilenet_v2",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = 64,
) -> Featurization:
    """Add CNN features to ``images`` (from :func:`helpers.images.list_images`).

    The result is lazy: computing it (writing it) decodes and featurizes each image once.
    Its rows are ``path, split, label, features, error``.
    """
    if model_name not in MODELS:
        raise ValueError(f"model_name '{model_name}' is unknown; use one of {sorted(MODELS)}")
    arrays = load_weights(model_name, weights, image_size)
    broadcast = spark.sparkContext.broadcast(arrays)
    checksum = weights_checksum(arrays)
    decoded = spark.sparkContext.accumulator(0)
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    module = MODELS[model_name]["module"]

    @F.pandas_udf(RESULT_SCHEMA)
    def extract(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        import keras

        preprocess = getattr(keras.applications, module).preprocess_input
        infer = _worker_model(model_name, image_size, broadcast, checksum, threads)
        for contents in batches:
            decoded.add(len(contents))
            yield featurize_batch(infer, preprocess, contents, image_size, batch_size)

    count = len(images.inputFiles())
    tasks = task_count(spark, count, batch_size)
    # Arrow batches of a few model batches: bounded memory even for large photos
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size * 4))
    result = images.coalesce(tasks).withColumn("result", extract("content"))
    out = result.select(
        "path",
        "split",
        "label",
        F.col("result.features").alias("features"),
        F.col("result.error").alias("error"),
    )
    info = {
        "model_name": model_name,
        "feature_dim": MODELS[model_name]["dim"],
        "image_size": image_size,
        "batch_size": batch_size,
        "weights": weights,
        "weights_sha256": checksum,
        "files": count,
        "tasks": tasks,
    }
    log.info("featurizing %d files in %d tasks with %s", count, tasks, model_name)
    return Featurization(out, info, decoded)


def write_features(features: DataFrame, output_root: str) -> str:
    """Compute and write the features as Parquet under ``output_root/features``; return it."""
    uri = spark_uri(join(output_root, "features"))
    features.write.mode("overwrite").parquet(uri)
    return uri


def read_features(spark: SparkSession, output_root: str) -> DataFrame:
    """The features written by :func:`write_features`, read back (never recomputed)."""
    uri = spark_uri(join(output_root, "features"))
    if not exists(join(output_root, "features")):
        raise FileNotFoundError(
            f"no features under output_root '{output_root}': run 02_feature_extraction first"
        )
    return spark.read.parquet(uri)


def feature_counts(features: DataFrame) -> dict[str, Any]:
    """Rows with features and rows with an error, in total and per split, plus sample errors."""
    by_split = (
        features.groupBy(F.coalesce("split", F.lit("(none)")).alias("split"))
        .agg(F.count("*").alias("rows"), F.count("features").alias("ok"))
        .collect()
    )
    errors = features.where(F.col("error").isNotNull()).select("path", "error").limit(100).collect()
    rows = sum(r["rows"] for r in by_split)
    ok = sum(r["ok"] for r in by_split)
    return {
        "rows": rows,
        "ok": ok,
        "errors": rows - ok,
        "by_split": {r["split"]: {"rows": r["rows"], "ok": r["ok"]} for r in by_split},
        "error_examples": {r["path"]: r["error"] for r in errors},
    }
