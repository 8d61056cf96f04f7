"""Standardize and reduce features with Spark ML: StandardScaler then PCA, k chosen by variance.

The PCA is solved once with every component, which gives the whole explained-variance
spectrum; the kept model is its first k components, so choosing k costs no second pass.

How it is fitted, and why: PCA of standardized columns is the eigendecomposition of their
d x d correlation matrix. One Spark pass computes it: each task turns its Arrow batches
into a float64 matrix and adds up the column sums and the scatter matrix X^T X with one
BLAS-3 product (``mapInArrow``), the driver combines the tasks' partial results and
decomposes the matrix with numpy's LAPACK. A plain scan of local Parquet files (notebook
03's) is read by the tasks with pyarrow, skipping the JVM's value-by-value conversion.
Spark ML's own ``StandardScaler.fit`` + ``PCA.fit`` gives the same model
(tests/test_reduce.py) but about 10 times slower (docs/decisions.md). The result is an
ordinary Spark ML ``PipelineModel`` (``StandardScalerModel`` + ``PCAModel``) that transforms
in the JVM. Memory: every task and the driver hold a few d x d float64 matrices (13 MB each
for 1280 columns; bench/README.md says up to what width it is safe).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCA, PCAModel, StandardScaler, StandardScalerModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector, MatrixUDT, VectorUDT
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructField, StructType
from threadpoolctl import threadpool_limits

from helpers.outputs import publish, published, staging_folder
from helpers.paths import join, spark_uri
from helpers.spark.files import fs_delete, fs_write
from helpers.spark.jvm import (
    java_pca_model,
    java_standard_scaler_model,
    parquet_scan_files,
)
from helpers.spark.kind import default_parallelism, is_connect

log = logging.getLogger(__name__)

KEYS = ["path", "split", "label"]
#: Most tasks of the moments pass: the driver receives one d x d matrix from each.
MAX_PARTS = 16
#: The columns the moments pass reads.
MOMENT_COLUMNS = ["path", "features", "error"]
#: Rows per Arrow batch when a task reads Parquet files itself (Spark's default batch size).
FILE_BATCH_ROWS = 10_000
#: One row per task: rows used and left out, column means and packed scatter (float64 bytes).
MOMENTS_ARROW = pa.schema(
    [
        ("rows", pa.int64()),
        ("excluded", pa.int64()),
        ("mean", pa.binary()),
        ("scatter", pa.binary()),
    ]
)


@dataclass
class Reduction:
    """A fitted scaler + PCA and what was learned choosing k.

    ``rows`` were used for the fit; ``excluded`` rows were left out because they have an
    ``error`` (or no features).
    """

    model: PipelineModel
    explained_variance: np.ndarray  # every component's share of the total variance
    k: int
    rows: int
    dim: int
    excluded: int = 0

    def variance_at(self, k: int) -> float:
        """Cumulative share of variance kept by the first ``k`` components."""
        return float(self.explained_variance[: min(k, len(self.explained_variance))].sum())

    def to_manifest(self) -> dict[str, Any]:
        """What the manifest keeps of a fit: rows used and left out, width, k, variance
        kept, the variance table and the whole explained-variance spectrum."""
        return {
            "rows": self.rows,
            "excluded": self.excluded,
            "dim": self.dim,
            "k": self.k,
            "variance_kept": self.variance_at(self.k),
            "variance_table": variance_table(self).to_dict("records"),
            "explained_variance": self.explained_variance,
        }

    def summary(self) -> str:
        """One line: rows used and left out, width, k and the variance it keeps."""
        return (
            f"fitted on {self.rows} rows x {self.dim} features, {self.excluded} rows with an "
            f"error left out; k = {self.k} keeps {self.variance_at(self.k):.3f} of the variance"
        )


def _usable() -> Column:
    """True for rows that have features: ``error`` null and ``features`` present."""
    return F.col("error").isNull() & F.col("features").isNotNull()


def usable_features(features: DataFrame) -> DataFrame:
    """Rows with features (``error`` null), with the arrays as Spark ML vectors in ``vector``."""
    return features.where(_usable()).select(*KEYS, array_to_vector("features").alias("vector"))


def choose_k(explained_variance: np.ndarray, variance: float) -> int:
    """The smallest k whose first k components reach ``variance`` of the total."""
    if not 0 < variance <= 1:
        raise ValueError(f"pca_variance must be in (0, 1], got {variance}")
    cumulative = np.cumsum(explained_variance)
    reached = np.nonzero(cumulative >= variance - 1e-9)[0]
    return int(reached[0] + 1) if len(reached) else len(explained_variance)


def _principal_axes(correlation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors (columns, by decreasing eigenvalue) and eigenvalues of a correlation.

    Signs are fixed so each axis' largest entry is positive: refits give the same model.
    """
    values, axes = np.linalg.eigh(correlation)
    values, axes = np.clip(values[::-1], 0.0, None), axes[:, ::-1]
    largest = axes[np.argmax(np.abs(axes), axis=0), np.arange(axes.shape[1])]
    return axes * np.where(largest < 0, -1.0, 1.0), values


def _pca_model(axes: np.ndarray, explained: np.ndarray, k: int) -> PCAModel:
    """A Spark ML PCAModel (``scaled`` -> ``pca``) keeping the first ``k`` of ``axes``."""
    estimator = PCA(k=k, inputCol="scaled", outputCol="pca")
    model = PCAModel(java_pca_model(estimator.uid, axes[:, :k], explained[:k]))
    model._set(k=k, inputCol="scaled", outputCol="pca")
    return model


def _ragged(path: object, length: int, width: int) -> str:
    """The error for a row whose features have another width than the others'."""
    return (
        f"features of {path} have {length} values where other rows have {width}: "
        "were they written by another model? Re-run feature extraction with overwrite=True"
    )


def _partition_moments(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One row per partition: rows with and without features, column means, scatter matrix.

    Runs in the executors (``mapInArrow``): each Arrow batch becomes an n x d float64 matrix
    without a per-row Python step, and its scatter matrix is one BLAS-3 product. Batches are
    shifted by the partition's first mean before the products (no cancellation when a
    column's mean dwarfs its spread); BLAS gets the task's cores (``spark.task.cpus``).
    """
    context = TaskContext.get()
    rows = excluded = 0
    shift = total = scatter = None
    with threadpool_limits(limits=context.cpus() if context else None, user_api="blas"):
        for batch in batches:
            usable = pc.and_kleene(pc.is_null(batch["error"]), pc.is_valid(batch["features"]))
            lists = batch["features"]
            if usable.true_count < batch.num_rows:
                lists = pc.filter(lists, usable)
            excluded += batch.num_rows - len(lists)
            if not len(lists):
                continue
            lengths = pc.list_value_length(lists).to_numpy()
            width = lengths[0] if shift is None else len(shift)
            if (lengths != width).any():
                odd = int(np.argmax(lengths != width))
                path = pc.filter(batch["path"], usable)[odd]
                raise ValueError(_ragged(path, lengths[odd], width))
            flat = lists.flatten().to_numpy(zero_copy_only=False)  # a null value: NaN
            values = flat.reshape(len(lists), width)
            if shift is None:
                shift = values.mean(axis=0, dtype=np.float64)
                total, scatter = np.zeros(width), np.zeros((width, width))
            matrix = values - shift  # float64
            total += matrix.sum(axis=0)
            scatter += matrix.T @ matrix
            rows += len(lists)
    mean = scatter_bytes = b""
    if rows:
        mean = (shift + total / rows).tobytes()
        scatter -= np.outer(total, total) / rows
        scatter_bytes = scatter[np.triu_indices(len(total))].tobytes()  # symmetric: half
    yield pa.RecordBatch.from_pydict(
        {"rows": [rows], "excluded": [excluded], "mean": [mean], "scatter": [scatter_bytes]},
        schema=MOMENTS_ARROW,
    )


def local_parquet_files(features: DataFrame) -> list[str] | None:
    """The files ``features`` reads, as local paths, when it is nothing but a scan of Parquet
    files on ``file:`` (what :func:`helpers.features.store.read_features` returns for one run);
    else None: a filter, a join or any other operator, another file system, Spark Connect.
    """
    files = parquet_scan_files(features) if set(MOMENT_COLUMNS) <= set(features.columns) else None
    uris = [urlparse(uri) for uri in files or []]
    if not uris or any(uri.scheme != "file" for uri in uris):
        return None
    return [unquote(uri.path) for uri in uris]


def _file_moments(groups: Iterable[list[str]]) -> Iterator[dict[str, Any]]:
    """Runs in the executors: :func:`_partition_moments` of the rows of these Parquet files,
    read with pyarrow."""

    def batches() -> Iterator[pa.RecordBatch]:
        for paths in groups:
            for path in paths:
                try:
                    parquet = pq.ParquetFile(path)
                except (pa.ArrowException, OSError) as exc:  # named here: Spark's trace does not
                    raise ValueError(
                        f"features file {path} is not a readable Parquet file ({exc}); run "
                        "notebook 02 with overwrite=True to write the features again"
                    ) from exc
                yield from parquet.iter_batches(FILE_BATCH_ROWS, columns=MOMENT_COLUMNS)

    for part in _partition_moments(batches()):
        yield part.to_pylist()[0]


def _balanced(paths: list[str], groups: int) -> list[list[str]]:
    """``paths`` in ``groups`` lists of about equal bytes (largest file first, to the lightest)."""
    sizes = {path: os.path.getsize(path) for path in paths}
    bins: list[list[str]] = [[] for _ in range(groups)]
    weights = [0] * groups
    for path in sorted(paths, key=sizes.__getitem__, reverse=True):
        lightest = weights.index(min(weights))
        bins[lightest].append(path)
        weights[lightest] += sizes[path]
    return [group for group in bins if group]


def _moments(features: DataFrame) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Rows with features, rows left out, column means and the d x d scatter matrix.

    One pass over ``features``, in at most ``MAX_PARTS`` tasks (one per core up to that):
    the driver receives one mean and one packed triangle per task and combines them with
    the pairwise update of Chan et al. A plain scan of local Parquet files
    (:func:`local_parquet_files`) is read by the tasks with pyarrow; anything else goes
    through ``mapInArrow``.
    """
    spark = features.sparkSession
    tasks = max(1, min(default_parallelism(spark), MAX_PARTS))
    files = local_parquet_files(features)
    if files:
        groups = _balanced(files, tasks)
        rdd = spark.sparkContext.parallelize(groups, len(groups))
        parts = pd.DataFrame(rdd.mapPartitions(_file_moments).collect())
    else:
        parts = (
            features.select(*MOMENT_COLUMNS)
            .coalesce(tasks)
            .mapInArrow(_partition_moments, from_arrow_schema(MOMENTS_ARROW))
            .toPandas()
        )
    rows, excluded = int(parts["rows"].sum()), int(parts["excluded"].sum())
    parts = parts[parts["rows"] > 0]
    if parts.empty:
        return rows, excluded, np.zeros(0), np.zeros((0, 0))
    means = [np.frombuffer(mean) for mean in parts["mean"]]
    width = len(means[int(np.argmax(parts["rows"]))])
    if any(len(mean) != width for mean in means):
        odd = features.where(_usable() & (F.size("features") != width)).first()
        raise ValueError(_ragged(odd["path"], len(odd["features"]), width))
    mean = sum(n * part_mean for n, part_mean in zip(parts["rows"], means)) / rows
    if not np.isfinite(mean).all():
        odd = F.exists("features", lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == np.inf))
        path = features.where(_usable() & odd).first()["path"]
        raise ValueError(f"features of {path} contain NaN, infinite or null values")
    counts = parts["rows"].to_numpy()
    gaps = np.stack(means) - mean
    scatter = np.zeros((width, width))
    scatter[np.triu_indices(width)] = sum(np.frombuffer(packed) for packed in parts["scatter"])
    scatter += np.triu(scatter, 1).T
    return rows, excluded, mean, scatter + (gaps.T * counts) @ gaps


def _correlation(scatter: np.ndarray, std: np.ndarray, rows: int) -> np.ndarray:
    """The d x d covariance of the standardized columns: their correlation matrix.

    Constant columns (std 0, which StandardScaler maps to 0) get no variance at all. As in
    Spark, a variance up to 1e-12 counts as zero, and PCA ignores the column.
    """
    constant = std**2 <= 1e-12
    scale = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, std))
    return scatter / (rows - 1) * np.outer(scale, scale)


#: The fitted scaler's settings (``vector`` -> ``scaled``).
SCALER_PARAMS = {"withMean": True, "withStd": True, "inputCol": "vector", "outputCol": "scaled"}


def _scaler_model(mean: np.ndarray, std: np.ndarray) -> StandardScalerModel:
    """A Spark ML StandardScalerModel (``vector`` -> ``scaled``, mean and std)."""
    estimator = StandardScaler(**SCALER_PARAMS)
    model = StandardScalerModel(java_standard_scaler_model(estimator.uid, mean, std))
    model._set(**SCALER_PARAMS)
    return model


def _load_written(
    spark: SparkSession,
    folder: str,
    model: type,
    uid: str,
    params: dict[str, Any],
    data: StructType,
    row: tuple,
) -> Any:
    """Write a Spark ML model's files into ``folder`` as its own writer does (metadata JSON,
    one Parquet row of data), then load it in the server."""
    metadata = {
        "class": f"org.apache.spark.ml.feature.{model.__name__}",
        "timestamp": int(time.time() * 1000),
        "sparkVersion": spark.version,
        "uid": uid,
        "paramMap": params,
        "defaultParamMap": {},
    }
    fs_write(spark, join(folder, "metadata", "part-00000"), (json.dumps(metadata) + "\n").encode())
    spark.createDataFrame([row], data).coalesce(1).write.parquet(spark_uri(join(folder, "data")))
    return model.load(spark_uri(folder))


def _server_models(
    spark: SparkSession,
    staging: str,
    mean: np.ndarray,
    std: np.ndarray,
    axes: np.ndarray,
    explained: np.ndarray,
    k: int,
) -> PipelineModel:
    """The scaler and the PCA as models of a Spark Connect server, which builds models only
    by fitting or loading: their files are written under a hidden folder of ``staging``
    (which client and server both reach), loaded, and removed."""
    folder = staging_folder(staging)
    try:
        scaler = _load_written(
            spark,
            join(folder, "scaler"),
            StandardScalerModel,
            StandardScaler().uid,
            SCALER_PARAMS,
            StructType([StructField("std", VectorUDT()), StructField("mean", VectorUDT())]),
            (DenseVector(std), DenseVector(mean)),
        )
        pca = _load_written(
            spark,
            join(folder, "pca"),
            PCAModel,
            PCA().uid,
            {"k": k, "inputCol": "scaled", "outputCol": "pca"},
            StructType(
                [StructField("pc", MatrixUDT()), StructField("explainedVariance", VectorUDT())]
            ),
            (
                DenseMatrix(len(axes), k, axes[:, :k].ravel(order="F").tolist()),
                DenseVector(explained[:k]),
            ),
        )
    finally:
        fs_delete(spark, folder)
    return PipelineModel(stages=[scaler, pca])


def fit_reduction(
    features: DataFrame, *, variance: float = 0.95, k: int = 0, staging: str | None = None
) -> Reduction:
    """Fit StandardScaler (mean and std) and PCA on rows with features; choose k.

    Rows with an ``error`` are left out and counted in ``Reduction.excluded``. ``k=0``
    picks the smallest k reaching ``variance``; a given k must not exceed the feature
    width. One pass over ``features``. On Spark Connect (Spark 4), the models reach the
    server as files in a hidden folder under ``staging`` (notebook 03: ``output_root``),
    removed once loaded.
    """
    rows, excluded, mean, scatter = _moments(features)
    if rows < 2:
        raise ValueError(
            f"PCA needs at least 2 rows with features, found {rows} "
            f"({excluded} rows with an error were left out)"
        )
    dim = len(mean)
    if k > dim:
        raise ValueError(f"pca_k={k} is larger than the number of features ({dim})")
    std = np.sqrt(np.clip(np.diag(scatter) / (rows - 1), 0.0, None))
    axes, eigenvalues = _principal_axes(_correlation(scatter, std, rows))
    total = eigenvalues.sum()
    explained = eigenvalues / total if total > 0 else np.zeros_like(eigenvalues)
    chosen = k or choose_k(explained, variance)
    log.info(
        "PCA on %d x %d (%d rows with an error left out): k=%d keeps %.3f of the variance",
        rows,
        dim,
        excluded,
        chosen,
        explained[:chosen].sum(),
    )
    if is_connect(features):
        if staging is None:
            raise ValueError("fit_reduction on Spark Connect needs staging (e.g. output_root)")
        model = _server_models(features.sparkSession, staging, mean, std, axes, explained, chosen)
    else:
        model = PipelineModel(
            stages=[_scaler_model(mean, std), _pca_model(axes, explained, chosen)]
        )
    return Reduction(
        model=model,
        explained_variance=explained,
        k=chosen,
        rows=rows,
        dim=dim,
        excluded=excluded,
    )


def reduce_features(reduction: Reduction, features: DataFrame) -> DataFrame:
    """Project rows with features: ``path, split, label, pca`` (array<float> of k)."""
    projected = reduction.model.transform(usable_features(features))
    return projected.select(*KEYS, vector_to_array("pca", "float32").alias("pca"))


def variance_table(
    reduction: Reduction, ks: tuple[int, ...] = (2, 10, 50, 100, 200)
) -> pd.DataFrame:
    """Cumulative variance kept at a few k and at the chosen k."""
    chosen = sorted({k for k in (*ks, reduction.k) if k <= reduction.dim})
    return pd.DataFrame(
        {
            "k": chosen,
            "variance_kept": [reduction.variance_at(k) for k in chosen],
            "chosen": [k == reduction.k for k in chosen],
        }
    )


def save_reduction(reduction: Reduction, reduced: DataFrame, output_root: str) -> str:
    """Publish the fitted model to ``pca_model/`` and the reduced rows to ``pca/``; the URI
    of the rows.

    One new version of each, then their pointers, ``pca``'s last (:mod:`helpers.outputs`):
    a run stopped at any step leaves the previous pair readable.
    """
    spark = reduced.sparkSession
    publish(
        spark,
        output_root,
        {
            "pca_model": lambda uri: reduction.model.write().save(uri),
            "pca": lambda uri: reduced.write.parquet(uri),
        },
        purpose="03_pca_tsne: pca/, pca_model/",
    )
    return published(output_root, "pca")
