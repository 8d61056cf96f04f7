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
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.accumulators import Accumulator
from pyspark.broadcast import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, LongType, StringType, StructField, StructType

from helpers import inference
from helpers.config import (
    BATCH_SIZE,
    MODELS,
    RUNTIME_ENV,
    WEIGHTS_ENV,
    fault_injection,
    progress_dir,
    resolve_weights,
)
from helpers.dataset import pending_images, write_features
from helpers.images import decode_image, input_files, list_images

log = logging.getLogger(__name__)

#: What the UDF returns per image: the vector, or null and the reason it could not be made.
RESULT_SCHEMA = StructType(
    [
        StructField("features", ArrayType(FloatType()), True),
        StructField("error", StringType(), True),
    ]
)


@dataclass
class _WorkerModel:
    """A Python worker's model, traced once, and the checksum of the weights it holds."""

    model: Any
    infer: Callable[[np.ndarray], np.ndarray]
    checksum: str | None = None  # None: random initial weights, not usable yet


# Per-process cache: a Python worker builds each model once and reuses it across tasks.
_WORKER_MODELS: dict[tuple[str, int], _WorkerModel] = {}


def _check_model_name(model_name: str) -> None:
    """Fail early, naming the choices, on a model this project does not know."""
    if model_name not in MODELS:
        raise ValueError(f"model_name '{model_name}' is unknown; use one of {sorted(MODELS)}")


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
    """SHA-256 over the weight arrays (weights that come from no file: imagenet, random)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Weights:
    """The weights as the driver broadcasts them, and their checksum.

    ``payload`` is a weights file's bytes (``checksum``: the file's SHA-256, comparable with
    published checksums) or the weight arrays (``imagenet`` through Keras' download, and
    ``random``; ``checksum``: :func:`weights_checksum`). ``source`` names them in messages.
    """

    payload: bytes | list[np.ndarray]
    checksum: str
    source: str

    def arrays(self, model_name: str, image_size: int) -> list[np.ndarray]:
        """The weight arrays (a file's bytes are loaded on the driver: TensorFlow imported).

        The bytes are loaded through a temporary file, so this works where ``source`` is
        not there any more (a saved :class:`helpers.featurizer.ImageFeaturizer`).
        """
        if not isinstance(self.payload, bytes):
            return self.payload
        with tempfile.NamedTemporaryFile(suffix=".h5") as handle:
            handle.write(self.payload)
            handle.flush()
            try:
                return build_model(model_name, handle.name, image_size).get_weights()
            except ValueError as exc:
                raise ValueError(
                    f"weights file '{self.source}' does not fit {model_name} without its top: {exc}"
                ) from exc


def driver_weights(model_name: str, weights: str, image_size: int) -> Weights:
    """Read the run's weights on the driver, for the broadcast.

    A weights file (a local path, or an ``s3://`` URI downloaded once) goes to the workers
    as its bytes, which they load into the model they built: the driver neither imports
    TensorFlow nor builds the model. ``imagenet`` (Keras' download) and ``random`` are
    loaded into a model on the driver and go as arrays.
    """
    resolved = resolve_weights(weights)
    if resolved in ("imagenet", "random"):
        arrays = load_weights(model_name, weights, image_size)
        return Weights(arrays, weights_checksum(arrays), resolved)
    import h5py

    if not h5py.is_hdf5(resolved):
        raise ValueError(
            f"weights file '{resolved}' is not a Keras .h5 weights file for {model_name} "
            f"without its top (parameter 'weights' or ${WEIGHTS_ENV})"
        )
    data = Path(resolved).read_bytes()
    return Weights(data, hashlib.sha256(data).hexdigest(), resolved)


def _built_model(model_name: str, image_size: int, threads: int) -> _WorkerModel:
    """This Python worker's model ``model_name`` at ``image_size``, built and traced once.

    TensorFlow gets ``threads`` threads (the cores a Spark task owns), so several tasks on
    one executor share its cores instead of each one claiming all of them. The inference
    function is traced, and run once, for any batch length: a short last batch costs no
    new trace. The weights are the random initial ones until :func:`_worker_model` sets them.
    """
    key = (model_name, image_size)
    if key not in _WORKER_MODELS:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started in this process: keep its settings
            pass
        model = build_model(model_name, None, image_size)
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
        infer = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        infer(np.zeros((1, image_size, image_size, 3), np.float32))
        _WORKER_MODELS.clear()  # one model per worker: free the previous run's
        _WORKER_MODELS[key] = _WorkerModel(model, lambda pixels: infer(pixels).numpy())
    return _WORKER_MODELS[key]


def _set_weights(model: Any, payload: bytes | list[np.ndarray], model_name: str, name: str) -> None:
    """Give ``model`` the broadcast weights: an .h5 file's bytes, or the weight arrays."""
    if not isinstance(payload, bytes):
        model.set_weights(payload)
        return
    with tempfile.NamedTemporaryFile(suffix=".h5") as handle:
        handle.write(payload)
        handle.flush()
        try:
            model.load_weights(handle.name)
        except Exception as exc:
            raise ValueError(
                f"weights file '{name}' does not fit {model_name} without its top: {exc}"
            ) from exc


def _worker_model(
    model_name: str, image_size: int, weights: Broadcast, checksum: str, threads: int, name: str
) -> Callable[[np.ndarray], np.ndarray]:
    """This Python worker's inference function, holding the broadcast weights (``name``:
    where they came from, for messages)."""
    built = _built_model(model_name, image_size, threads)
    if built.checksum != checksum:
        _set_weights(built.model, weights.value, model_name, name)
        built.checksum = checksum
    return built.infer


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


@dataclass(frozen=True)
class FeatureInfo:
    """How a featurization runs: the model, its weights and the tasks (manifest facts).

    ``weights_sha256`` names the weights everywhere (:attr:`Weights.checksum`: a weights
    file's own SHA-256). ``converted_model`` and ``converted_from_cache`` are set for a
    converted runtime (``litert``, ``onnxruntime``, ``openvino``, ``openvino-bf16``) only.
    """

    model_name: str
    feature_dim: int
    image_size: int
    batch_size: int
    weights: str
    weights_sha256: str
    runtime: str
    tasks: int
    converted_model: str | None = None
    converted_from_cache: bool | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's keys for these facts (the conversion's only when there was one)."""
        values = asdict(self)
        if self.converted_model is None:
            del values["converted_model"], values["converted_from_cache"]
        return values


@dataclass
class Featurization:
    """A lazy featurization: the DataFrame to write, facts for the manifest, a decode count."""

    features: DataFrame
    info: FeatureInfo
    decoded: Accumulator
    with_tensorflow: Accumulator | None = None

    @property
    def images_decoded(self) -> int:
        """Images the UDF decoded so far (after the write: once per image, plus any retries)."""
        return int(self.decoded.value)

    @property
    def batches_with_tensorflow(self) -> int:
        """Arrow batches a non-Keras runtime ran in a worker that had TensorFlow imported."""
        return 0 if self.with_tensorflow is None else int(self.with_tensorflow.value)


#: One :func:`runtime_environment` block at a time (the Keras warm-up runs in a thread).
_ENVIRONMENT_LOCK = threading.RLock()


@contextmanager
def runtime_environment(spark: SparkSession, runtime: str) -> Iterator[None]:
    """Create the UDFs of ``runtime`` inside this block: their workers' daemon gets the
    runtime in ``$FRUITS_RUNTIME``.

    Spark keys its Python daemons by the UDF's environment (the SparkContext's, read when
    the UDF's Java function is made): a UDF created here runs in workers of a daemon that
    imported ``runtime`` before forking them (:mod:`helpers.daemon`). UDFs created outside
    get a daemon that imports none: the EDA's and PCA's workers load no TensorFlow.
    """
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
        """Return once the warm-up job is queued (or over), not when it ends.

        A job submitted after it waits behind its tasks (Spark schedules jobs in order), so
        the features job can be planned while the workers start and build their models.
        """
        tracker = spark.sparkContext.statusTracker()
        while self.thread.is_alive() and not tracker.getJobIdsForGroup(self.group):
            self.thread.join(0.01)


_WARM_UPS: dict[tuple[str, str, int], WarmUp] = {}


def start_python_workers(
    spark: SparkSession, model_name: str, image_size: int, runtime: str = "keras"
) -> WarmUp | None:
    """For ``keras``: start the executors' Python workers in the background, each building
    the model.

    One task per core (once per session and model): each starts a Python worker (with
    :mod:`helpers.daemon`, importing TensorFlow) that builds and traces ``model_name``, so
    that work overlaps the file listing and the driver's weight loading instead of delaying
    the first batch; the features tasks then only set the weights. It runs a pandas UDF,
    like the features job: Spark keeps separate workers for SQL UDFs and for RDD functions.
    Call :meth:`WarmUp.wait_submitted` before submitting the features job.

    Another ``runtime`` gets no warm-up (``None``): its workers have nothing to build
    before the broadcast arrives and their daemon starts in about a second, while the
    warm-up job, planned in a still cold JVM beside the listing, held the features tasks
    back: on 2,575 images they launched at 4.1 s with it, 1.4-1.7 s without
    (bench/README.md).
    """
    if runtime != "keras":
        return None
    context = spark.sparkContext
    key = (context.applicationId, model_name, image_size)
    if key not in _WARM_UPS:
        cores = context.defaultParallelism
        threads = int(spark.conf.get("spark.task.cpus", "1"))
        group = f"fruits-warm-up-{len(_WARM_UPS)}-{model_name}-{image_size}"

        def warm_up() -> None:
            @F.pandas_udf(LongType())
            def build(ids: pd.Series) -> pd.Series:
                _built_model(model_name, image_size, threads)
                return ids

            context.setJobGroup(group, "start the Python workers and build the model")
            with runtime_environment(spark, runtime):  # the features UDF's daemon
                job = spark.range(cores, numPartitions=cores).select(build("id"))
            job.write.format("noop").mode("overwrite").save()

        thread = threading.Thread(target=warm_up, name="fruits-start-python-workers", daemon=True)
        _WARM_UPS[key] = WarmUp(thread, group)
        thread.start()
    return _WARM_UPS[key]


#: Images in a task, at most: each task start costs about a second (measured).
TASK_IMAGES = 2048

#: Images per Arrow batch the features UDF receives (at least one model batch): the image
#: bytes a worker holds stay bounded even for large photos, and the per-batch costs small
#: (Arrow batches of 8 to 32 images ran 0.1-0.6 s slower on 2,575 images).
ARROW_IMAGES = 256


def task_count(spark: SparkSession, images: int) -> int:
    """Tasks for ``images``: a multiple of the cores, each of at most 2,048 images.

    Few large tasks keep per-task costs small; whole waves of one task per core keep every
    core busy until the end (3 tasks on 2 cores would leave one idle for the last third).
    """
    cores = spark.sparkContext.defaultParallelism
    return cores * max(1, math.ceil(images / (cores * TASK_IMAGES)))


def set_arrow_batch(spark: SparkSession, batch_size: int) -> None:
    """Give the session's next pandas UDFs Arrow batches of :data:`ARROW_IMAGES` rows, or of
    one model batch of ``batch_size`` images when that is larger."""
    spark.conf.set(
        "spark.sql.execution.arrow.maxRecordsPerBatch", str(max(ARROW_IMAGES, batch_size))
    )


def _inject_fault(fault: tuple[str, int], batch: int, driver_pid: int) -> None:
    """Test hook (``$FRUITS_FAULT``): crash this worker or kill the driver at a given batch."""
    from pyspark import TaskContext

    kind, at = fault
    context = TaskContext.get()
    if batch != at or context is None or context.partitionId() != 0:
        return
    if kind == "crash-worker" and context.attemptNumber() == 0:
        os._exit(1)
    if kind == "kill-driver":
        os.kill(driver_pid, signal.SIGKILL)


def _mark_progress(folder: str, batch: int) -> None:
    """Test hook (``$FRUITS_PROGRESS_DIR``): leave a file saying this batch is featurized."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None:
        name = f"{context.partitionId()}-{context.attemptNumber()}-{batch}-{os.getpid()}"
        open(os.path.join(folder, name), "w").close()


def feature_udf(
    spark: SparkSession,
    broadcast: Broadcast,
    checksum: str,
    *,
    model_name: str = "mobilenet_v2",
    image_size: int = 224,
    batch_size: int = BATCH_SIZE,
    runtime: str = "keras",
    source: str = "",
) -> tuple[Callable[..., Any], Accumulator, Accumulator]:
    """The pandas UDF from image bytes to :data:`RESULT_SCHEMA`, and its two counters.

    ``broadcast`` holds the model for ``runtime`` (a resolved one, not ``auto``): the
    :class:`Weights` payload (``keras``: a weights file's bytes or the arrays) or the
    converted model's bytes; ``checksum`` names those weights, so a reused worker takes new
    weights; ``source`` names where they came from in messages. Each Python worker builds
    the model once and keeps it across tasks.
    The counters are the images decoded and the Arrow batches a non-Keras runtime ran in a
    worker with TensorFlow imported. Apply the UDF inside :func:`runtime_environment`.
    Shared by :func:`featurize` and :class:`helpers.featurizer.ImageFeaturizer`.
    """
    decoded = spark.sparkContext.accumulator(0)
    with_tensorflow = spark.sparkContext.accumulator(0)
    threads = int(spark.conf.get("spark.task.cpus", "1"))
    module = MODELS[model_name]["module"]
    fault, driver_pid, progress = fault_injection(), os.getpid(), progress_dir()

    session_key = f"{model_name}-{image_size}-{checksum}-{runtime}"

    @F.pandas_udf(RESULT_SCHEMA)
    def extract(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        if runtime == "keras":
            import keras

            preprocess = getattr(keras.applications, module).preprocess_input
            infer = _worker_model(model_name, image_size, broadcast, checksum, threads, source)
        else:
            preprocess = inference.preprocess(module)
            infer = inference.worker_session(session_key, broadcast, threads, runtime)
        for index, contents in enumerate(batches):
            if runtime != "keras" and "tensorflow" in sys.modules:
                with_tensorflow.add(1)
            if fault:
                _inject_fault(fault, index, driver_pid)
            decoded.add(len(contents))
            batch = featurize_batch(infer, preprocess, contents, image_size, batch_size)
            if progress:
                _mark_progress(progress, index)
            yield batch

    return extract, decoded, with_tensorflow


def featurize(
    spark: SparkSession,
    images: DataFrame,
    *,
    model_name: str = "mobilenet_v2",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = BATCH_SIZE,
    count: int | None = None,
    loaded: Weights | None = None,
    runtime: str = "auto",
) -> Featurization:
    """Add CNN features to ``images`` (from :func:`helpers.images.list_images`).

    The result is lazy: computing it (writing it) decodes and featurizes each image once.
    Its rows are ``path, split, label, features, error, size, modified``. ``count`` (the
    number of rows, when the caller knows it) sizes the tasks; by default every listed file.
    ``loaded`` are the weights from :func:`driver_weights`, when the caller read them.
    ``runtime`` runs the model: ``keras``, ``litert`` (converted to TFLite), ``onnxruntime``,
    ``openvino`` or ``openvino-bf16`` (converted to ONNX; each converted once per weights on
    the driver and cached, see :mod:`helpers.inference`) or ``auto`` (``litert``, else
    ``onnxruntime``, where installed).
    """
    _check_model_name(model_name)
    runtime = inference.resolve_runtime(runtime)
    warm_up = start_python_workers(spark, model_name, image_size, runtime)
    if loaded is None:
        loaded = driver_weights(model_name, weights, image_size)
    checksum = loaded.checksum
    model: inference.ConvertedModel | None = None
    if runtime == "keras":
        broadcast = spark.sparkContext.broadcast(loaded.payload)
    else:
        model = inference.converted_model(
            model_name, image_size, lambda: loaded.arrays(model_name, image_size), checksum, runtime
        )
        broadcast = spark.sparkContext.broadcast(model.data)
    converted_info = model
    if warm_up is not None:
        warm_up.wait_submitted(spark)
    extract, decoded, with_tensorflow = feature_udf(
        spark,
        broadcast,
        checksum,
        model_name=model_name,
        image_size=image_size,
        batch_size=batch_size,
        runtime=runtime,
        source=loaded.source,
    )

    count = len(input_files(images)) if count is None else count
    tasks = task_count(spark, count)
    set_arrow_batch(spark, batch_size)
    with runtime_environment(spark, runtime):
        result = images.coalesce(tasks).withColumn("result", extract("content"))
    out = result.select(
        "path",
        "split",
        "label",
        F.col("result.features").alias("features"),
        F.col("result.error").alias("error"),
        F.col("length").alias("size"),
        F.col("modificationTime").alias("modified"),
    )
    info = FeatureInfo(
        model_name=model_name,
        feature_dim=int(MODELS[model_name]["dim"]),
        image_size=image_size,
        batch_size=batch_size,
        weights=weights,
        weights_sha256=checksum,
        runtime=runtime,
        tasks=tasks,
        converted_model=None if converted_info is None else converted_info.path.name,
        converted_from_cache=None if converted_info is None else converted_info.cached,
    )
    log.info("featurizing %d files in %d tasks with %s (%s)", count, tasks, model_name, runtime)
    return Featurization(out, info, decoded, with_tensorflow)


@dataclass(frozen=True)
class Extraction:
    """What the feature-extraction step did (:func:`extract_features`), for the manifest.

    ``files`` found under ``data_root``; ``featurized`` of them new or changed, the others
    ``skipped``; ``images_decoded`` by the UDF (once per image, plus any retries);
    ``run_id`` of the committed run (None when nothing was new); ``listing``: the files
    read specially or not read (:meth:`helpers.images.ImageListing.report`); ``info``: the
    model, weights and tasks (None when nothing was featurized).
    """

    files: int
    featurized: int
    skipped: int
    listing: dict[str, Any]
    images_decoded: int = 0
    run_id: str | None = None
    info: FeatureInfo | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The ``features`` section's keys for this step (flat, as the manifest has them)."""
        values = {
            "files": self.files,
            "featurized": self.featurized,
            "skipped": self.skipped,
            "listing": self.listing,
        }
        if self.info is not None:
            values.update(self.info.to_manifest())
        return {**values, "images_decoded": self.images_decoded, "run_id": self.run_id}

    def summary(self) -> pd.DataFrame:
        """A few lines for the notebook: files, featurized, skipped, model, weights, run."""
        rows: dict[str, Any] = {
            "files found": self.files,
            "featurized now": self.featurized,
            "already featurized (skipped)": self.skipped,
            "images decoded": self.images_decoded,
        }
        if self.info is not None:
            rows["model"] = (
                f"{self.info.model_name} ({self.info.feature_dim} features, "
                f"{self.info.image_size} px, {self.info.runtime})"
            )
            rows["weights sha256"] = self.info.weights_sha256[:16] + "..."
        rows["run"] = self.run_id or "none (nothing new)"
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def extract_features(
    spark: SparkSession,
    data_root: str,
    output_root: str,
    *,
    model_name: str = "mobilenet_v2",
    weights: str = "imagenet",
    image_size: int = 224,
    batch_size: int = BATCH_SIZE,
    overwrite: bool = False,
    runtime: str = "auto",
) -> Extraction:
    """The feature-extraction step: featurize the new or changed images under ``data_root``.

    Images already featurized under ``output_root`` (same path, size and modification time)
    are skipped unless ``overwrite``; the new rows are published atomically as one run.
    Returns what it did (:class:`Extraction`): files found, images featurized, decode
    count, run id, and the listing's report (files hidden from Spark read anyway, files
    not read). ``runtime`` runs the model (:data:`helpers.config.RUNTIME_CHOICES`;
    ``auto``: :func:`helpers.inference.resolve_runtime`).
    """
    _check_model_name(model_name)
    runtime = inference.resolve_runtime(runtime)
    # the (Keras) workers' start and the driver's weight loading overlap the listing below
    start_python_workers(spark, model_name, image_size, runtime)
    pool = ThreadPoolExecutor(1, thread_name_prefix="fruits-load-weights")
    try:
        loading = pool.submit(driver_weights, model_name, weights, image_size)
        listing = list_images(spark, data_root)
        files = listing.files
        todo = pending_images(spark, listing.images, output_root, overwrite=overwrite)
        count = files if todo is listing.images else todo.count()  # first run: no job
        found = Extraction(
            files=files, featurized=count, skipped=files - count, listing=listing.report()
        )
        if count == 0:
            log.info("all %d images already featurized under %s", files, output_root)
            return found
        loaded = loading.result()
    finally:
        pool.shutdown(wait=False)
    run = featurize(
        spark,
        todo,
        model_name=model_name,
        weights=weights,
        image_size=image_size,
        batch_size=batch_size,
        count=count,
        loaded=loaded,
        runtime=runtime,
    )
    run_id = write_features(spark, run.features, output_root, overwrite=overwrite)
    return replace(found, images_decoded=run.images_decoded, run_id=run_id, info=run.info)
