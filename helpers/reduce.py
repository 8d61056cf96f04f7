"""Standardize and reduce features with Spark ML: StandardScaler then PCA, k chosen by variance.

The PCA is solved once with every component, which gives the whole explained-variance
spectrum; the kept model is its first k components, so choosing k costs no second pass.

How it is fitted, and why: PCA of standardized columns is the eigendecomposition of their
d x d correlation matrix. Spark ML builds that matrix (``Correlation``: the same
``RowMatrix`` covariance, one ``treeAggregate`` pass, that ``PCA.fit`` uses) and the driver
decomposes it with numpy's LAPACK. ``PCA.fit`` would decompose it on the driver too, but
with Breeze, which without a system LAPACK (the log then says "Failed to load
implementation from: dev.ludovic.netlib.lapack.JNILAPACK", as with a pip-installed pyspark)
runs pure-Java LAPACK on one thread: about 5 s for 1280 columns, against 0.2 s for numpy
(bench/README.md). The result is an ordinary Spark ML ``PipelineModel``
(``StandardScalerModel`` + ``PCAModel``). Memory: the driver holds a few d x d float64
matrices (13 MB each for 1280 columns); bench/README.md says up to what width it is safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark import SparkContext
from pyspark.ml import PipelineModel
from pyspark.ml.common import _py2java
from pyspark.ml.feature import PCA, PCAModel, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.ml.stat import Correlation
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from helpers.dataset import STAGING, new_run_id, publish, remove
from helpers.paths import join, spark_uri

log = logging.getLogger(__name__)

KEYS = ["path", "split", "label"]


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
    spark_context = SparkContext.getOrCreate()
    pc = np.ascontiguousarray(axes[:, :k])
    matrix = DenseMatrix(pc.shape[0], k, pc.flatten(order="F").tolist())
    variance = DenseVector(explained[:k])
    estimator = PCA(k=k, inputCol="scaled", outputCol="pca")
    java_model = spark_context._jvm.org.apache.spark.ml.feature.PCAModel(
        estimator.uid, _py2java(spark_context, matrix), _py2java(spark_context, variance)
    )
    model = PCAModel(java_model)
    model._set(k=k, inputCol="scaled", outputCol="pca")
    return model


def _correlation(vectors: DataFrame, std: np.ndarray) -> np.ndarray:
    """The d x d covariance of the standardized ``vector`` column, computed by Spark ML.

    That is the columns' correlation matrix, except for constant columns (std 0, which
    StandardScaler maps to 0): they get no variance at all instead of Spark's NaN and 1.
    Spark treats a variance up to 1e-12 as zero; so does this, and PCA ignores the column.
    """
    correlation = Correlation.corr(vectors, "vector").head()[0].toArray()
    constant = std**2 <= 1e-12
    correlation = np.nan_to_num(correlation, nan=0.0)
    correlation[constant, :] = 0.0
    correlation[:, constant] = 0.0
    return correlation


def fit_reduction(features: DataFrame, variance: float = 0.95, k: int = 0) -> Reduction:
    """Fit StandardScaler (mean and std) and PCA on rows with features; choose k.

    Rows with an ``error`` are left out and counted in ``Reduction.excluded``. ``k=0``
    picks the smallest k reaching ``variance``; a given k must not exceed the feature
    width. Passes over the data: one to cache it and count, one for mean and std, two for
    the covariance (column means, then the centered products); ``features`` is read once.
    """
    marked = features.select(
        _usable().alias("usable"),
        F.when(_usable(), array_to_vector("features")).alias("vector"),
    ).cache()
    try:
        counts = {r["usable"]: r["count"] for r in marked.groupBy("usable").count().collect()}
        rows, excluded = counts.get(True, 0), counts.get(False, 0)
        if rows < 2:
            raise ValueError(
                f"PCA needs at least 2 rows with features, found {rows} "
                f"({excluded} rows with an error were left out)"
            )
        vectors = marked.where("usable").select("vector")
        scaler = StandardScaler(
            withMean=True, withStd=True, inputCol="vector", outputCol="scaled"
        ).fit(vectors)
        std = scaler.std.toArray()
        dim = len(std)
        if k > dim:
            raise ValueError(f"pca_k={k} is larger than the number of features ({dim})")
        correlation = _correlation(vectors, std)
    finally:
        marked.unpersist()
    axes, eigenvalues = _principal_axes(correlation)
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
    model = PipelineModel(stages=[scaler, _pca_model(axes, explained, chosen)])
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


def reduction_summary(reduction: Reduction) -> dict[str, Any]:
    """What the manifest keeps of a fit: rows used and left out, width, k, variance kept,
    the variance table and the whole explained-variance spectrum."""
    return {
        "rows": reduction.rows,
        "excluded": reduction.excluded,
        "dim": reduction.dim,
        "k": reduction.k,
        "variance_kept": reduction.variance_at(reduction.k),
        "variance_table": variance_table(reduction).to_dict("records"),
        "explained_variance": reduction.explained_variance,
    }


def save_reduction(reduction: Reduction, reduced: DataFrame, output_root: str) -> str:
    """Write the fitted model to ``pca_model/`` and the reduced rows to ``pca/``.

    Each is written whole into staging, then moved into place: a run stopped half-way
    leaves the previous model and rows readable.
    """
    spark = reduced.sparkSession
    staging = join(output_root, STAGING, new_run_id())
    reduction.model.write().save(spark_uri(join(staging, "pca_model")))
    reduced.write.parquet(spark_uri(join(staging, "pca")))
    for name in ("pca_model", "pca"):
        publish(spark, join(staging, name), join(output_root, name))
    remove(spark, staging)
    return spark_uri(join(output_root, "pca"))
