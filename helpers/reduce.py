"""Standardize and reduce features with Spark ML: StandardScaler then PCA, k chosen by variance.

The PCA is fitted once with every component, which gives the whole explained-variance
spectrum; the kept model is that fit cut to its first k components, so choosing k costs
no second pass over the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import SparkContext
from pyspark.ml import PipelineModel
from pyspark.ml.common import _py2java
from pyspark.ml.feature import PCA, PCAModel, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from helpers.paths import join, spark_uri

log = logging.getLogger(__name__)

KEYS = ["path", "split", "label"]


@dataclass
class Reduction:
    """A fitted scaler + PCA and what was learned choosing k."""

    model: PipelineModel
    explained_variance: np.ndarray  # every component's share of the total variance
    k: int
    rows: int
    dim: int

    def variance_at(self, k: int) -> float:
        """Cumulative share of variance kept by the first ``k`` components."""
        return float(self.explained_variance[: min(k, len(self.explained_variance))].sum())


def usable_features(features: DataFrame) -> DataFrame:
    """Rows with features (``error`` null), with the arrays as Spark ML vectors in ``vector``."""
    return features.where(F.col("error").isNull()).select(
        *KEYS, array_to_vector("features").alias("vector")
    )


def choose_k(explained_variance: np.ndarray, variance: float) -> int:
    """The smallest k whose first k components reach ``variance`` of the total."""
    if not 0 < variance <= 1:
        raise ValueError(f"pca_variance must be in (0, 1], got {variance}")
    cumulative = np.cumsum(explained_variance)
    reached = np.nonzero(cumulative >= variance - 1e-9)[0]
    return int(reached[0] + 1) if len(reached) else len(explained_variance)


def _truncate(full: PCAModel, k: int) -> PCAModel:
    """A PCAModel keeping the first ``k`` components of ``full`` (no refit)."""
    spark_context = SparkContext.getOrCreate()
    pc = full.pc.toArray()[:, :k]
    matrix = DenseMatrix(pc.shape[0], k, pc.flatten(order="F").tolist())
    variance = DenseVector(full.explainedVariance.toArray()[:k])
    java_model = spark_context._jvm.org.apache.spark.ml.feature.PCAModel(
        full.uid, _py2java(spark_context, matrix), _py2java(spark_context, variance)
    )
    model = PCAModel(java_model)
    model._set(k=k, inputCol=full.getInputCol(), outputCol=full.getOutputCol())
    return model


def fit_reduction(features: DataFrame, variance: float = 0.95, k: int = 0) -> Reduction:
    """Fit StandardScaler (mean and std) and PCA on rows with features; choose k.

    ``k=0`` picks the smallest k reaching ``variance``; a given k must not exceed the
    feature width.
    """
    vectors = usable_features(features).cache()
    try:
        rows = vectors.count()
        if rows < 2:
            raise ValueError(f"PCA needs at least 2 rows with features, found {rows}")
        dim = len(vectors.first()["vector"])
        if k > dim:
            raise ValueError(f"pca_k={k} is larger than the number of features ({dim})")
        scaler = StandardScaler(
            withMean=True, withStd=True, inputCol="vector", outputCol="scaled"
        ).fit(vectors)
        full = PCA(k=dim, inputCol="scaled", outputCol="pca").fit(scaler.transform(vectors))
    finally:
        vectors.unpersist()
    explained = full.explainedVariance.toArray()
    chosen = k or choose_k(explained, variance)
    log.info(
        "PCA on %d x %d: k=%d keeps %.3f of the variance",
        rows,
        dim,
        chosen,
        explained[:chosen].sum(),
    )
    model = PipelineModel(stages=[scaler, _truncate(full, chosen)])
    return Reduction(model=model, explained_variance=explained, k=chosen, rows=rows, dim=dim)


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
    """Write the reduced rows to ``pca/`` and the fitted model to ``pca_model/``."""
    reduction.model.write().overwrite().save(spark_uri(join(output_root, "pca_model")))
    uri = spark_uri(join(output_root, "pca"))
    reduced.write.mode("overwrite").parquet(uri)
    return uri
