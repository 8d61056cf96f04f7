"""The pandas UDF from image bytes to features, and how Spark runs it.

The driver broadcasts what the runtime needs (:meth:`Runtime.payload`); on Spark Connect,
which has no broadcasts, it travels in the UDF itself. Each Python worker builds its model
once and keeps it across tasks (:func:`worker_infer`). On a classic session the UDF's daemon
imports the runtime before forking the workers (:func:`runtime_environment`).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.accumulators import Accumulator
from pyspark.broadcast import Broadcast
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, LongType, StringType, StructField, StructType

from helpers.env import RUNTIME_ENV
from helpers.features.models import Weights, preprocess
from helpers.features.runtimes import RUNTIMES, Calibration, ConvertedModel, Infer
from helpers.features.spec import MAX_IMAGE_PIXELS, FeatureSpec
from helpers.images import decode_image
from helpers.spark.kind import default_parallelism, is_connect

#: What the UDF returns per image: the vector, or null and the reason it could not be made.
RESULT_SCHEMA = StructType(
    [
        StructField("features", ArrayType(FloatType()), True),
        StructField("error", StringType(), True),
    ]
)

#: Images in a task, at most: each task start costs about a second.
TASK_IMAGES = 2048

#: Images per Arrow batch the UDF receives (at least one model batch): a worker holds a
#: bounded amount of image bytes, and per-batch costs stay small.
ARROW_IMAGES = 256

#: Image bytes per Arrow batch, at most: rows per batch are cut so that this many bytes of
#: the largest file fit (Spark 3.5 sizes these batches by rows only; 4.x's
#: ``spark.sql.execution.arrow.maxBytesPerBatch`` serves its grouped operators, not scalar
#: pandas UDFs). The JVM's Arrow buffer and the worker's copy each hold one batch.
ARROW_BYTES = 64 * 2**20

#: The size assumed of each image when it is not known (a phone photo).
UNKNOWN_IMAGE_BYTES = 4 * 2**20


def featurize_batch(
    infer: Infer,
    preprocess: Callable[[np.ndarray], np.ndarray],
    contents: pd.Series,
    image_size: int,
    batch_size: int,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> pd.DataFrame:
    """Decode image bytes and run the model, ``batch_size`` images at a time.

    Undecodable images, and those over ``max_pixels``, get an error and null features;
    memory stays at one batch of pixels (and one image being decoded).
    """
    features: list[np.ndarray | None] = []
    errors: list[str | None] = []
    pixels = np.empty((batch_size, image_size, image_size, 3), dtype=np.float32)
    for start in range(0, len(contents), batch_size):
        good = 0
        chunk_errors: list[str | None] = []
        for data in contents.iloc[start : start + batch_size]:
            try:
                pixels[good] = decode_image(data, image_size, max_pixels)
                good += 1
                chunk_errors.append(None)
            except ValueError as exc:
                chunk_errors.append(str(exc)[:500])
        vectors = iter(infer(preprocess(pixels[:good])) if good else [])
        features.extend(None if e else next(vectors) for e in chunk_errors)
        errors.extend(chunk_errors)
    return pd.DataFrame({"features": features, "error": errors})


@dataclass
class _WorkerModel:
    """A Python worker's model: what it built, and the weights it holds now."""

    key: tuple[str, str, int]
    built: Any
    checksum: str | None = None
    infer: Infer | None = None


#: The one model of this Python worker, kept across tasks and batches.
_WORKER: list[_WorkerModel] = []


def worker_model(spec: FeatureSpec, threads: int) -> _WorkerModel:
    """This worker's model for ``spec``, built once (a new spec replaces the old one)."""
    key = (spec.runtime, spec.model_name, spec.image_size)
    if not _WORKER or _WORKER[0].key != key:
        _WORKER.clear()  # free the previous model before building the next
        built = RUNTIMES[spec.runtime].build(spec.model_name, spec.image_size, threads)
        _WORKER.append(_WorkerModel(key, built))
    return _WORKER[0]


def worker_infer(
    spec: FeatureSpec, checksum: str, payload: Callable[[], Any], threads: int
) -> Infer:
    """This worker's inference function holding the weights ``checksum``; ``payload`` (the
    broadcast's value, fetched lazily) is read only when they change."""
    model = worker_model(spec, threads)
    if model.checksum != checksum or model.infer is None:
        runtime = RUNTIMES[spec.runtime]
        model.infer = runtime.session(spec.model_name, model.built, payload(), threads)
        model.checksum = checksum
    return model.infer


@dataclass(frozen=True)
class Inline:
    """A payload carried by the UDF's closure, read like a broadcast (``.value``)."""

    value: Any


def broadcast_model(
    spark: SparkSession,
    spec: FeatureSpec,
    weights: Weights,
    calibration: Calibration | None = None,
) -> tuple[Broadcast | Inline, ConvertedModel | None]:
    """Broadcast what ``spec``'s (resolved) runtime runs, and the conversion it came from
    (``calibration``: a calibrated runtime's images).

    On Spark Connect the payload is :class:`Inline`: it reaches the server once per query in
    the UDF, and each Python worker unpickles it once with the UDF.
    """
    payload, converted = RUNTIMES[spec.runtime].payload(
        spec.model_name, spec.image_size, weights, calibration
    )
    if is_connect(spark):
        return Inline(payload), converted
    return spark.sparkContext.broadcast(payload), converted


def _task_threads(spark: SparkSession) -> int:
    return int(spark.conf.get("spark.task.cpus", "1"))


def feature_udf(
    spark: SparkSession, spec: FeatureSpec, broadcast: Broadcast | Inline, checksum: str
) -> tuple[Callable[..., Any], Accumulator | None, Accumulator | None]:
    """The pandas UDF from image bytes to :data:`RESULT_SCHEMA`, and its two counters.

    ``spec`` is resolved (no ``auto``); ``broadcast`` holds its runtime's payload and
    ``checksum`` names the weights, so a reused worker takes new ones. The counters are the
    images decoded and the Arrow batches a converted runtime ran in a worker with
    TensorFlow imported (it should have none); ``None`` on Spark Connect, which has no
    accumulators. Apply it inside :func:`runtime_environment`.
    """
    connect = is_connect(spark)
    decoded = None if connect else spark.sparkContext.accumulator(0)
    with_tensorflow = None if connect else spark.sparkContext.accumulator(0)
    threads = _task_threads(spark)
    keras = spec.runtime == "keras"

    @F.pandas_udf(RESULT_SCHEMA)
    def extract(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        infer = worker_infer(spec, checksum, lambda: broadcast.value, threads)
        prepare = preprocess(spec.model_name)
        for contents in batches:
            if with_tensorflow is not None and not keras and "tensorflow" in sys.modules:
                with_tensorflow.add(1)
            if decoded is not None:
                decoded.add(len(contents))
            yield featurize_batch(
                infer, prepare, contents, spec.image_size, spec.batch_size, spec.max_image_pixels
            )

    return extract, decoded, with_tensorflow


#: One :func:`runtime_environment` block at a time (the Keras warm-up runs in a thread).
_ENVIRONMENT_LOCK = threading.RLock()


@contextmanager
def runtime_environment(spark: SparkSession, runtime: str) -> Iterator[None]:
    """Create the UDFs of ``runtime`` inside this block: their workers' daemon gets the
    runtime in ``$FRUITS_RUNTIME`` and imports it before forking them.

    Spark keys its Python daemons by the UDF's environment (the SparkContext's, read when
    the UDF's Java function is made); UDFs created outside (the EDA's, PCA's) get a daemon
    that imports no TensorFlow. A Spark Connect client cannot set it: its workers import the
    runtime when the model is first built.
    """
    if is_connect(spark):
        yield
        return
    environment = spark.sparkContext.environment
    with _ENVIRONMENT_LOCK:
        previous = environment.get(RUNTIME_ENV)
        environment[RUNTIME_ENV] = runtime
        try:
            yield
        finally:
            environment.pop(RUNTIME_ENV, None)
            if previous is not None:
                environment[RUNTIME_ENV] = previous


@dataclass
class WarmUp:
    """The job starting the Python workers (:func:`start_python_workers`), run in a thread."""

    thread: threading.Thread
    group: str

    def wait_submitted(self, spark: SparkSession) -> None:
        """Return once the warm-up job is queued (or over): a job submitted after it waits
        behind its tasks, so the features job can be planned while the workers start."""
        tracker = spark.sparkContext.statusTracker()
        while self.thread.is_alive() and not tracker.getJobIdsForGroup(self.group):
            self.thread.join(0.01)


_WARM_UPS: dict[tuple[str, str, int], WarmUp] = {}


def start_python_workers(spark: SparkSession, spec: FeatureSpec) -> WarmUp | None:
    """For ``keras``: start the executors' Python workers in the background, each building
    the model, while the driver lists the files and loads the weights.

    One task per core, once per session and model, through a pandas UDF (Spark keeps other
    workers for RDD functions). Other runtimes get none (``None``): their workers have
    nothing to build before the broadcast, and the warm-up job held their tasks back; nor
    does Spark Connect (no job groups to wait on).
    """
    if spec.runtime != "keras" or is_connect(spark):
        return None
    context = spark.sparkContext
    key = (context.applicationId, spec.model_name, spec.image_size)
    if key not in _WARM_UPS:
        cores = context.defaultParallelism
        threads = _task_threads(spark)
        group = f"fruits-warm-up-{len(_WARM_UPS)}-{spec.model_name}-{spec.image_size}"

        def warm_up() -> None:
            @F.pandas_udf(LongType())
            def build(ids: pd.Series) -> pd.Series:
                worker_model(spec, threads)
                return ids

            context.setJobGroup(group, "start the Python workers and build the model")
            with runtime_environment(spark, spec.runtime):  # the features UDF's daemon
                job = spark.range(cores, numPartitions=cores).select(build("id"))
            job.write.format("noop").mode("overwrite").save()

        thread = threading.Thread(target=warm_up, name="fruits-start-python-workers", daemon=True)
        _WARM_UPS[key] = WarmUp(thread, group)
        thread.start()
    return _WARM_UPS[key]


def task_count(spark: SparkSession, images: int) -> int:
    """Tasks for ``images``: a multiple of the cores, each of at most :data:`TASK_IMAGES`
    (few large tasks keep per-task costs small; whole waves keep every core busy)."""
    cores = default_parallelism(spark)
    return cores * max(1, math.ceil(images / (cores * TASK_IMAGES)))


def arrow_rows(batch_size: int, largest: int | None = None) -> int:
    """Rows per Arrow batch: :data:`ARROW_IMAGES` (or one model batch when larger), fewer
    when :data:`ARROW_BYTES` would not hold as many of the ``largest`` file (bytes; unknown:
    :data:`UNKNOWN_IMAGE_BYTES` each), and at least one."""
    per_image = UNKNOWN_IMAGE_BYTES if largest is None else max(1, largest)
    return max(1, min(max(ARROW_IMAGES, batch_size), ARROW_BYTES // per_image))


def set_arrow_batch(spark: SparkSession, batch_size: int, largest: int | None = None) -> None:
    """Give the session's next pandas UDFs Arrow batches of :func:`arrow_rows` rows: bounded
    in images and in bytes (``largest``: the largest image file's size, when known)."""
    spark.conf.set(
        "spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_rows(batch_size, largest))
    )
