"""The Python that turns image bytes into features (the features job's ``mapInArrow``
function, :class:`ImageFeaturizer`'s pandas UDF), and how Spark runs it.

The driver broadcasts what the runtime needs (:meth:`Runtime.payload`); on Spark Connect,
which has no broadcasts, it travels in the UDF itself. Each Python worker builds its model
once and keeps it across tasks (:func:`worker_infer`). On a classic session their daemon
imports the runtime before forking the workers (:func:`runtime_environment`).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.accumulators import Accumulator
from pyspark.broadcast import Broadcast
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    FloatType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from helpers.env import RUNTIME_ENV
from helpers.features.models import Weights, preprocess
from helpers.features.runtimes import RUNTIMES, Calibration, ConvertedModel, Infer
from helpers.features.spec import MAX_IMAGE_PIXELS, FeatureSpec
from helpers.images import VANISHED, decode_image
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
    contents: Sequence[bytes | None],
    image_size: int,
    batch_size: int,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> pa.RecordBatch:
    """Decode image bytes and run the model, ``batch_size`` images at a time: one row per
    image in :data:`RESULT_SCHEMA`'s columns, as Arrow (no per-float Python conversion).

    Undecodable images, and those over ``max_pixels``, get an error and null features;
    memory stays at one batch of pixels (and one image being decoded).
    """
    vectors: list[np.ndarray] = []
    errors: list[str | None] = []
    pixels = np.empty((batch_size, image_size, image_size, 3), dtype=np.float32)
    for start in range(0, len(contents), batch_size):
        good = 0
        for data in contents[start : start + batch_size]:
            try:
                pixels[good] = decode_image(data, image_size, max_pixels)
                good += 1
                errors.append(None)
            except ValueError as exc:
                errors.append(str(exc)[:500])
        if good:
            vectors.append(np.asarray(infer(preprocess(pixels[:good])), dtype=np.float32))
    failed = np.array([e is not None for e in errors], dtype=bool)
    values = np.concatenate(vectors).ravel() if vectors else np.empty(0, np.float32)
    dim = vectors[0].shape[1] if vectors else 0
    offsets = np.zeros(len(errors) + 1, dtype=np.int32)
    np.cumsum(np.where(failed, 0, dim), out=offsets[1:])
    features = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=pa.array(failed))
    return pa.RecordBatch.from_arrays(
        [features, pa.array(errors, pa.string())], names=RESULT_SCHEMA.names
    )


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


def _counters(spark: SparkSession) -> tuple[Accumulator | None, Accumulator | None]:
    """The images decoded, and the Arrow batches a converted runtime ran in a worker with
    TensorFlow imported (it should have none); ``None`` on Spark Connect (no accumulators)."""
    if is_connect(spark):
        return None, None
    return spark.sparkContext.accumulator(0), spark.sparkContext.accumulator(0)


def _count(
    spec: FeatureSpec, images: int, decoded: Accumulator | None, with_tf: Accumulator | None
) -> None:
    """Add one Arrow batch of ``images`` to the counters of :func:`_counters` (in a worker)."""
    if with_tf is not None and spec.runtime != "keras" and "tensorflow" in sys.modules:
        with_tf.add(1)
    if decoded is not None:
        decoded.add(images)


def feature_udf(
    spark: SparkSession, spec: FeatureSpec, broadcast: Broadcast | Inline, checksum: str
) -> tuple[Callable[..., Any], Accumulator | None, Accumulator | None]:
    """The pandas UDF from a column of image bytes to :data:`RESULT_SCHEMA`, and the two
    counters of :func:`_counters`: what :class:`ImageFeaturizer` adds to any DataFrame.

    ``spec`` is resolved (no ``auto``); ``broadcast`` holds its runtime's payload and
    ``checksum`` names the weights, so a reused worker takes new ones. Apply it inside
    :func:`runtime_environment`.
    """
    decoded, with_tf = _counters(spark)
    threads = _task_threads(spark)

    @F.pandas_udf(RESULT_SCHEMA)
    def extract(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        infer = worker_infer(spec, checksum, lambda: broadcast.value, threads)
        prepare = preprocess(spec.model_name)
        for contents in batches:
            _count(spec, len(contents), decoded, with_tf)
            yield featurize_batch(
                infer,
                prepare,
                contents.tolist(),
                spec.image_size,
                spec.batch_size,
                spec.max_image_pixels,
            ).to_pandas()

    return extract, decoded, with_tf


#: The rows of :func:`feature_batches`: the listing's columns with the UDF's two.
FEATURE_ROWS = StructType(
    [
        StructField("path", StringType(), True),
        StructField("split", StringType(), True),
        StructField("label", StringType(), True),
        *RESULT_SCHEMA.fields,
        StructField("size", LongType(), True),
        StructField("modified", TimestampType(), True),
    ]
)


def feature_batches(
    spark: SparkSession, spec: FeatureSpec, broadcast: Broadcast | Inline, checksum: str
) -> tuple[Callable[..., Any], Accumulator | None, Accumulator | None]:
    """The features job's function for ``mapInArrow``, from the listing's rows (``path,
    split, label, content, length, modificationTime``) to :data:`FEATURE_ROWS`, and the two
    counters of :func:`_counters`. Arguments as :func:`feature_udf`'s.

    Arrow in and out: the 1,280 floats of a row are not converted one by one in Python, as
    a pandas UDF's array result is (pyspark 3.5 and 4.0). A row whose content is null though
    its size is not (the file vanished after the listing) gets :data:`VANISHED`.
    """
    decoded, with_tf = _counters(spark)
    threads = _task_threads(spark)

    def extract(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        infer = worker_infer(spec, checksum, lambda: broadcast.value, threads)
        prepare = preprocess(spec.model_name)
        for batch in batches:
            contents = batch.column("content")
            _count(spec, len(contents), decoded, with_tf)
            out = featurize_batch(
                infer,
                prepare,
                contents.to_pylist(),
                spec.image_size,
                spec.batch_size,
                spec.max_image_pixels,
            )
            vanished = pc.and_(pc.is_null(contents), pc.greater(batch.column("length"), 0))
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("path"),
                    batch.column("split"),
                    batch.column("label"),
                    out.column("features"),
                    pc.if_else(vanished, VANISHED, out.column("error")),
                    batch.column("length"),
                    batch.column("modificationTime"),
                ],
                names=FEATURE_ROWS.names,
            )

    return extract, decoded, with_tf


#: One :func:`runtime_environment` block at a time (the workers' warm-up runs in a thread).
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


_WARM_UPS: dict[tuple[str, str, str, int], WarmUp] = {}


def start_python_workers(spark: SparkSession, spec: FeatureSpec) -> WarmUp | None:
    """Start the executors' Python workers in the background while the driver lists the
    files and loads the weights: their process start and imports (1-2 s a core) leave the
    first tasks' path. ``keras`` workers build the model too; the other runtimes' need the
    broadcast payload first.

    One task per core, once per session and model, through a pandas UDF made in the
    features function's environment (:func:`runtime_environment`): the features job reuses
    these workers. Spark Connect gets none (``None``: no job groups to wait on).
    """
    if is_connect(spark):
        return None
    context = spark.sparkContext
    key = (context.applicationId, spec.runtime, spec.model_name, spec.image_size)
    if key not in _WARM_UPS:
        cores = context.defaultParallelism
        threads = _task_threads(spark)
        group = f"fruits-warm-up-{len(_WARM_UPS)}-{spec.runtime}-{spec.image_size}"
        keras = spec.runtime == "keras"

        def warm_up() -> None:
            @F.pandas_udf(LongType())
            def build(ids: pd.Series) -> pd.Series:
                if keras:
                    worker_model(spec, threads)
                return ids

            context.setJobGroup(group, "start the Python workers")
            with runtime_environment(spark, spec.runtime):  # the features function's daemon
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
