"""Notebook 02's step: featurize the new or changed images under a root, commit them as a run.

A pretrained CNN without its top, with global average pooling (MobileNetV2: 1280 floats
per image; the 7x7 map is never flattened), in the ``mapInArrow`` function of
:mod:`helpers.features.udf`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd
from pyspark.accumulators import Accumulator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from helpers.features.models import Weights, driver_weights
from helpers.features.runtimes import (
    CALIBRATION_IMAGES,
    CALIBRATION_SEED,
    RUNTIMES,
    Calibration,
)
from helpers.features.spec import FeatureSpec
from helpers.features.store import (
    check_settings,
    committed_rows,
    committed_settings,
    pending_images,
    read_features,
    write_features,
)
from helpers.features.udf import (
    FEATURE_ROWS,
    broadcast_model,
    feature_batches,
    runtime_environment,
    set_arrow_batch,
    start_python_workers,
    task_count,
)
from helpers.images import ImageListing, decode_image, list_images
from helpers.spark.jvm import input_files
from helpers.spark.progress import Report, task_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureInfo:
    """How a featurization ran: the spec, its weights and the tasks (manifest facts).

    ``weights_sha256`` names the weights everywhere (a weights file's own SHA-256).
    ``converted_model`` and ``converted_from_cache`` are set for a converted runtime only;
    ``calibration`` (count, digest, seed of its images) for a calibrated one only.
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
    calibration: dict[str, Any] | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's keys for these facts (the conversion's, the calibration's only
        when there was one)."""
        values = asdict(self)
        if self.converted_model is None:
            del values["converted_model"], values["converted_from_cache"]
        if self.calibration is None:
            del values["calibration"]
        return values


@dataclass
class Featurization:
    """A lazy featurization: the DataFrame to write, facts for the manifest, two counters."""

    features: DataFrame
    info: FeatureInfo
    decoded: Accumulator | None
    with_tensorflow: Accumulator | None

    @property
    def images_decoded(self) -> int | None:
        """Images the UDF decoded so far (after the write: once per image, plus any retries);
        ``None`` on Spark Connect (no accumulators)."""
        return None if self.decoded is None else int(self.decoded.value)

    @property
    def batches_with_tensorflow(self) -> int | None:
        """Arrow batches a converted runtime ran in a worker that had TensorFlow imported."""
        return None if self.with_tensorflow is None else int(self.with_tensorflow.value)


def featurize(
    spark: SparkSession,
    images: DataFrame,
    spec: FeatureSpec,
    *,
    count: int | None = None,
    loaded: Weights | None = None,
    largest: int | None = None,
    calibration: Calibration | None = None,
) -> Featurization:
    """Add CNN features to ``images`` (from :func:`helpers.images.list_images`), lazily.

    Writing the result decodes and featurizes each image once; its rows are ``path, split,
    label, features, error, size, modified``. ``count`` (rows, when the caller knows it)
    sizes the tasks; ``loaded`` are the weights, when the caller read them already;
    ``largest`` (the largest file's bytes, ``ImageListing.largest``) sizes the Arrow batches
    in bytes (unknown: :data:`helpers.features.udf.UNKNOWN_IMAGE_BYTES` each; a job to find
    it costs 2-5 s on 7,725 files). A file gone or unreadable since the listing gets
    :data:`helpers.images.VANISHED` as its error. ``calibration``: the images a calibrated
    runtime (``litert-int8``) is calibrated on (:func:`calibration_images`).
    """
    spec = spec.resolved()
    warm_up = start_python_workers(spark, spec)
    if loaded is None:
        loaded = driver_weights(spec.model_name, spec.weights, spec.image_size)
    broadcast, converted = broadcast_model(spark, spec, loaded, calibration)
    if warm_up is not None:
        warm_up.wait_submitted(spark)
    # names the model the workers hold: another calibration is another model
    key = loaded.checksum if calibration is None else f"{loaded.checksum}-{calibration.digest}"
    extract, decoded, with_tensorflow = feature_batches(spark, spec, broadcast, key)
    count = len(input_files(images)) if count is None else count
    tasks = task_count(spark, count)
    set_arrow_batch(spark, spec.batch_size, largest)
    columns = ["path", "split", "label", "content", "length", "modificationTime"]
    with runtime_environment(spark, spec.runtime):
        out = images.select(*columns).coalesce(tasks).mapInArrow(extract, FEATURE_ROWS)
    info = FeatureInfo(
        model_name=spec.model_name,
        feature_dim=spec.dim,
        image_size=spec.image_size,
        batch_size=spec.batch_size,
        weights=spec.weights,
        weights_sha256=loaded.checksum,
        runtime=spec.runtime,
        tasks=tasks,
        converted_model=None if converted is None else converted.path.name,
        converted_from_cache=None if converted is None else converted.cached,
        calibration=None if calibration is None else calibration.to_manifest(),
    )
    log.info("featurizing %d files in %d tasks with %s", count, tasks, spec)
    return Featurization(out, info, decoded, with_tensorflow)


@dataclass(frozen=True)
class Extraction:
    """What :func:`extract_features` did, for the manifest and the notebook.

    ``files`` found under ``data_root``; ``featurized`` of them new or changed, the others
    ``skipped``; ``images_decoded`` by the UDF; ``run_id`` of the committed run (None when
    nothing was new); ``listing``: the files read specially or not read; ``info``: the
    model, weights and tasks (None when nothing was featurized); ``vanished``: files
    listed that were deleted or made unreadable before Spark's scan read them (no row).
    """

    files: int
    featurized: int
    skipped: int
    listing: dict[str, Any]
    images_decoded: int | None = 0
    run_id: str | None = None
    info: FeatureInfo | None = None
    vanished: list[str] = field(default_factory=list)

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
        return {
            **values,
            "images_decoded": self.images_decoded,
            "run_id": self.run_id,
            "vanished": len(self.vanished),
            "vanished_files": self.vanished[:1000],
        }

    def summary(self) -> pd.DataFrame:
        """A few lines for the notebook: files, featurized, skipped, model, weights, run."""
        rows: dict[str, Any] = {
            "files found": self.files,
            "featurized now": self.featurized,
            "already featurized (skipped)": self.skipped,
            "images decoded": (
                "not counted (Spark Connect)"
                if self.images_decoded is None
                else self.images_decoded
            ),
        }
        if self.info is not None:
            rows["model"] = (
                f"{self.info.model_name} ({self.info.feature_dim} features, "
                f"{self.info.image_size} px, {self.info.runtime})"
            )
            rows["weights sha256"] = self.info.weights_sha256[:16] + "..."
        rows["run"] = self.run_id or "none (nothing new)"
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def feature_settings(
    spec: FeatureSpec, weights: Weights, calibration: Calibration | None = None
) -> dict[str, Any]:
    """The settings a features run records: what decides the values (not the exact
    runtimes, which agree within 1e-4; a quantized one's calibration does)."""
    settings: dict[str, Any] = {
        "model_name": spec.model_name,
        "weights_sha256": weights.checksum,
        "image_size": spec.image_size,
    }
    if calibration is not None:
        settings["int8_calibration"] = calibration.to_manifest()
    return settings


def _split_and_label(path: str) -> tuple[str, str]:
    """A listed path's split (lower case; '' when none) and label, as the listing reads them."""
    parts = path.rstrip("/").split("/")
    return (parts[-3].lower() if len(parts) >= 3 else ""), (parts[-2] if len(parts) >= 2 else "")


def calibration_paths(
    paths: Iterable[str], *, count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
) -> list[str]:
    """Up to ``count`` Training images of ``paths``, spread evenly over the classes: each
    class's files in a seeded order, then one of each class per round (classes in a seeded
    order too) until ``count``. The order hashes ``class/file`` only, so a copy of the data
    elsewhere (another folder, a bucket) gets the same images and the same cached model.
    Raises ``ValueError`` naming the runtime parameter when the Training split holds none."""

    def order(text: str) -> bytes:
        return hashlib.sha256(f"{seed}:{text}".encode()).digest()

    by_class: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        split, label = _split_and_label(path)
        if split == "training":
            by_class[label].append(path)
    for label, files in by_class.items():
        files.sort(key=lambda p, label=label: order(f"{label}/{p.rsplit('/', 1)[-1]}"))
    if not by_class:
        raise ValueError(
            "runtime 'litert-int8' calibrates its int8 model on the run's Training images "
            "(data_root/Training/<class>/...), and this data_root has none: add a Training "
            "split or use runtime 'litert' (parameter 'runtime')"
        )
    queues = [by_class[c] for c in sorted(by_class, key=order)]
    chosen: list[str] = []
    for round_ in range(max(len(q) for q in queues)):
        chosen += [q[round_] for q in queues if round_ < len(q)]
        if len(chosen) >= count:
            break
    return chosen[:count]


def calibration_images(
    listing: ImageListing,
    image_size: int,
    *,
    count: int = CALIBRATION_IMAGES,
    seed: int = CALIBRATION_SEED,
) -> Calibration:
    """The calibration of a quantized runtime: :func:`calibration_paths` of the listing,
    their bytes read through the listing's own DataFrame (local, ``s3://``...), decoded at
    ``image_size``. Files that do not decode are left out (named in the log)."""
    chosen = calibration_paths(listing.paths, count=count, seed=seed)
    rows = listing.images.where(F.col("path").isin(chosen)).select("path", "content").collect()
    images = []
    for row in rows:
        try:
            images.append((bytes(row["content"]), decode_image(row["content"], image_size)))
        except ValueError as exc:
            log.warning("calibration: %s left out (%s)", row["path"], exc)
    if not images:
        raise ValueError(
            f"runtime 'litert-int8': none of the {len(chosen)} Training images picked for its "
            "calibration decodes; use runtime 'litert' (parameter 'runtime')"
        )
    log.info("int8 calibration: %d Training images", len(images))
    return Calibration.of(images, seed)


def run_calibration(
    spark: SparkSession,
    output_root: str,
    listing: ImageListing,
    spec: FeatureSpec,
    loaded: Weights,
    *,
    overwrite: bool = False,
) -> Calibration | None:
    """The calibration a run of ``spec``'s runtime uses (``None``: not a calibrated one).

    Images added to committed int8 features keep their calibration while its model is in
    the cache (the same model for every run); otherwise (a first run, ``overwrite``, a
    cache without it) :func:`calibration_images` of the listing.
    """
    runtime = RUNTIMES[spec.runtime]
    if not runtime.calibrated:
        return None
    if not overwrite:
        try:
            committed = committed_settings(spark, output_root) or {}
        except ValueError:  # mixed runs: check_settings names them
            committed = {}
        recorded = committed.get("int8_calibration")
        if recorded and committed == feature_settings(
            spec, loaded, Calibration.from_manifest(recorded)
        ):
            calibration = Calibration.from_manifest(recorded)
            if runtime.has_model(spec.model_name, spec.image_size, loaded.checksum, calibration):
                log.info("int8 calibration of the committed features: %s", recorded)
                return calibration
    return calibration_images(listing, spec.image_size)


def extract_features(
    spark: SparkSession,
    data_root: str,
    output_root: str,
    spec: FeatureSpec,
    *,
    overwrite: bool = False,
    progress: Report | None = None,
) -> Extraction:
    """Featurize the new or changed images under ``data_root`` and commit them as one run.

    Images already featurized under ``output_root`` (same path, size and modification time)
    are skipped unless ``overwrite``; a run with other settings than the committed features
    is refused unless ``overwrite`` (:func:`helpers.features.store.check_settings`). The Keras
    workers' start and the driver's weight loading overlap the listing.
    ``progress(done, total)`` is told the images featurized, task by task, while the run
    writes (:func:`helpers.report.progress_display` shows them).
    """
    spec = spec.resolved()
    start_python_workers(spark, spec)
    pool = ThreadPoolExecutor(1, thread_name_prefix="fruits-load-weights")
    try:
        loading = pool.submit(driver_weights, spec.model_name, spec.weights, spec.image_size)
        listing = list_images(spark, data_root)
        files = listing.files
        loaded = loading.result()
    finally:
        pool.shutdown(wait=False)
    calibration = run_calibration(spark, output_root, listing, spec, loaded, overwrite=overwrite)
    settings = feature_settings(spec, loaded, calibration)
    check_settings(spark, output_root, settings, overwrite=overwrite)
    todo = pending_images(spark, listing.images, output_root, overwrite=overwrite)
    count = files if todo is listing.images else int(todo.count())  # first run: no job
    found = Extraction(
        files=files, featurized=count, skipped=files - count, listing=listing.report()
    )
    if count == 0:
        log.info("all %d images already featurized under %s", files, output_root)
        return found
    run = featurize(
        spark,
        todo,
        spec,
        count=count,
        loaded=loaded,
        largest=listing.largest,
        calibration=calibration,
    )
    watch = nullcontext() if progress is None else task_progress(spark, count, progress)
    with watch:
        run_id = write_features(spark, run.features, output_root, settings, overwrite=overwrite)
    vanished = []
    if committed_rows(spark, output_root, run_id) < count:  # Spark's scan skipped some files
        written = read_features(spark, output_root).where(F.col("run") == run_id).select("path")
        vanished = listing.missing(row["path"] for row in written.collect())
        log.warning("%d files vanished between the listing and the read", len(vanished))
    return replace(
        found, images_decoded=run.images_decoded, run_id=run_id, info=run.info, vanished=vanished
    )
