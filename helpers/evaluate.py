"""Judging features: a t-SNE of a stratified sample and a linear probe (Training -> Test)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)


def _matrix(frame: pd.DataFrame, column: str) -> np.ndarray:
    return np.stack(frame[column].to_numpy()).astype(np.float32)


def stratified_sample(df: DataFrame, column: str, size: int, seed: int = 42) -> pd.DataFrame:
    """About ``size`` rows spread evenly over classes: ``label`` and the array ``column``."""
    classes = df.select("label").distinct().count()
    per_class = max(1, math.ceil(size / max(classes, 1)))
    window = Window.partitionBy("label").orderBy(F.xxhash64("path", F.lit(seed)))
    return (
        df.withColumn("rank", F.row_number().over(window))
        .where(F.col("rank") <= per_class)
        .select("label", column)
        .toPandas()
    )


def tsne_embedding(
    sample: pd.DataFrame, column: str, perplexity: float = 30.0, seed: int = 42
) -> np.ndarray:
    """2-D t-SNE of the arrays in ``sample[column]`` (seeded; perplexity capped for few rows)."""
    matrix = _matrix(sample, column)
    # scikit-learn needs perplexity < n_samples: cap it for small samples (2 rows: 1.0)
    perplexity = min(perplexity, max(2.0, (len(matrix) - 1) / 3), len(matrix) - 1)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(matrix)


def linear_probe(df: DataFrame, column: str, seed: int = 42) -> dict[str, Any] | None:
    """Logistic regression trained on Training rows, scored on Test rows, on the driver.

    Returns accuracy, row counts and the five worst classes, or None without both splits.
    """
    frame = (
        df.where(F.lower("split").isin("training", "test"))
        .select(F.lower("split").alias("split"), "label", column)
        .toPandas()
    )
    train, test = frame[frame.split == "training"], frame[frame.split == "test"]
    if train.empty or test.empty:
        log.warning("linear probe skipped: it needs both a Training and a Test split")
        return None
    scaler = StandardScaler().fit(_matrix(train, column))
    model = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)
    model.fit(scaler.transform(_matrix(train, column)), train["label"])
    predicted = model.predict(scaler.transform(_matrix(test, column)))
    correct = pd.Series(predicted == test["label"].to_numpy(), index=test["label"].to_numpy())
    per_class = correct.groupby(level=0).mean().sort_values()
    return {
        "accuracy": float(correct.mean()),
        "train_rows": len(train),
        "test_rows": len(test),
        "worst_classes": {k: float(v) for k, v in per_class.head(5).items()},
    }
