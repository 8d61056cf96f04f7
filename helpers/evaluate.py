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


def stratified_sample(df: DataFrame, column: str, *, size: int, seed: int = 42) -> pd.DataFrame:
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
    sample: pd.DataFrame, column: str, *, perplexity: float = 30.0, seed: int = 42
) -> np.ndarray:
    """2-D t-SNE of the arrays in ``sample[column]`` (seeded; perplexity capped for few rows)."""
    matrix = _matrix(sample, column)
    # scikit-learn needs perplexity < n_samples: cap it for small samples (2 rows: 1.0)
    perplexity = min(perplexity, max(2.0, (len(matrix) - 1) / 3), len(matrix) - 1)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(matrix)


def linear_probe(
    df: DataFrame, column: str, *, seed: int = 42, standardize: bool = True
) -> dict[str, Any]:
    """Logistic regression trained on Training rows, scored on Test rows, on the driver.

    ``standardize`` scales each column to unit variance on Training first: right for raw
    CNN features, wrong for PCA components of standardized features, which already share
    one scale; rescaling them would blow the faint, noisy last components up to the size
    of the first ones. Unscaled, the probe on k components is the same model as on the
    full standardized features, restricted to the subspace PCA kept, so it judges the
    reduction and nothing else.

    Returns accuracy, row counts and the five worst classes. Test images of classes that
    Training lacks cannot be named by the model: they are left out of the score and
    ``note`` says so. Without a probe to make (no Training or Test rows, fewer than two
    Training classes) it returns ``{"skipped": reason}``.
    """
    frame = (
        df.where(F.lower("split").isin("training", "test"))
        .select(F.lower("split").alias("split"), "label", column)
        .toPandas()
    )
    train, test = frame[frame.split == "training"], frame[frame.split == "test"]
    classes = sorted(train["label"].unique())
    unknown = sorted(set(test["label"]) - set(classes))
    note = None
    if unknown:
        left_out = test["label"].isin(unknown)
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        note = (
            f"{int(left_out.sum())} Test images of {len(unknown)} classes that Training lacks "
            f"are left out of the score ({shown})"
        )
        test = test[~left_out]
    if train.empty or frame[frame.split == "test"].empty:
        reason = "it needs both a Training and a Test split"
    elif len(classes) < 2:
        reason = f"Training holds a single class ('{classes[0]}'); a probe needs at least two"
    elif test.empty:
        reason = "no Test image belongs to a class that Training holds"
    else:
        reason = None
    if reason:
        log.warning("linear probe skipped: %s", reason)
        return {"skipped": reason}
    if note:
        log.warning("linear probe: %s", note)
    x_train, x_test = _matrix(train, column), _matrix(test, column)
    if standardize:
        scaler = StandardScaler().fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    model = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)
    model.fit(x_train, train["label"])
    predicted = model.predict(x_test)
    correct = pd.Series(predicted == test["label"].to_numpy(), index=test["label"].to_numpy())
    per_class = correct.groupby(level=0).mean().sort_values(kind="stable")
    result = {
        "accuracy": float(correct.mean()),
        "train_rows": len(train),
        "test_rows": len(test),
        "worst_classes": {k: float(v) for k, v in per_class.head(5).items()},
    }
    return {**result, "note": note} if note else result


def probe_table(probes: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per probe (``full``, ``pca_<k>``...): accuracy, rows, worst classes, and a
    ``note`` saying what was left out or why the probe was skipped."""
    rows = {}
    for name, result in probes.items():
        if "skipped" in result:
            rows[name] = {"note": f"skipped: {result['skipped']}"}
            continue
        rows[name] = {
            "accuracy": result["accuracy"],
            "train_rows": result["train_rows"],
            "test_rows": result["test_rows"],
            "worst_classes": ", ".join(
                f"{k} ({v:.0%})" for k, v in result["worst_classes"].items()
            ),
            "note": result.get("note", ""),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def probe_summary(probes: dict[str, dict[str, Any]]) -> str:
    """One line for a log or a terminal: each probe's accuracy, or why it was skipped."""
    return "; ".join(
        f"{name} skipped ({r['skipped']})" if "skipped" in r else f"{name} {r['accuracy']:.3f}"
        for name, r in probes.items()
    )
