"""Judging features: a t-SNE of a stratified sample, a linear probe (Training -> Test), and
what a quantized runtime costs that probe on the run's own images."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, Union

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """A model trained on Training and scored on Test (the linear probe, the Spark ML
    classifier), or why there is none (``skipped``).

    ``worst_classes``: the five classes with the lowest Test accuracy; ``note``: what was
    left out of the score; ``iterations``: the optimizer's, where it reports them.
    """

    accuracy: float | None = None
    train_rows: int | None = None
    test_rows: int | None = None
    worst_classes: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    iterations: int | None = None
    skipped: str | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's keys: ``{"skipped": reason}``, or the scores (``note`` and
        ``iterations`` only when set)."""
        if self.skipped is not None:
            return {"skipped": self.skipped}
        values: dict[str, Any] = {
            "accuracy": self.accuracy,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "worst_classes": self.worst_classes,
        }
        if self.iterations is not None:
            values["iterations"] = self.iterations
        if self.note is not None:
            values["note"] = self.note
        return values

    @classmethod
    def from_manifest(cls, values: Mapping[str, Any]) -> Score:
        """A score as the manifest recorded it (other keys of its section are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


#: A score, or a score as read back from manifest.json.
ScoreLike = Union[Score, Mapping[str, Any]]


def as_score(value: ScoreLike) -> Score:
    """``value`` as a :class:`Score` (scores read back from the manifest are mappings)."""
    return value if isinstance(value, Score) else Score.from_manifest(value)


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
    from sklearn.manifold import TSNE  # here: helpers.classify imports Score from this module

    matrix = _matrix(sample, column)
    # scikit-learn needs perplexity < n_samples: cap it for small samples (2 rows: 1.0)
    perplexity = min(perplexity, max(2.0, (len(matrix) - 1) / 3), len(matrix) - 1)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(matrix)


#: Rows per class and split the linear probe uses, by default: the driver's cost stays
#: bounded as collections grow (Fruits-360 has about 490 Training images a class).
PROBE_PER_CLASS = 100


def linear_probe(
    df: DataFrame,
    column: str,
    *,
    seed: int = 42,
    standardize: bool = True,
    per_class: int = PROBE_PER_CLASS,
) -> Score:
    """Logistic regression trained on Training rows, scored on Test rows, on the driver.

    At most ``per_class`` rows of each class in each split, picked in Spark by a seeded
    hash of the path (0: all): only those reach the driver.

    ``standardize`` scales each column to unit variance on Training first: right for raw
    CNN features, wrong for PCA components of standardized features, which already share
    one scale; rescaling them would blow the faint, noisy last components up to the size
    of the first ones. Unscaled, the probe on k components is the same model as on the
    full standardized features, restricted to the subspace PCA kept, so it judges the
    reduction and nothing else.

    Returns accuracy, row counts and the five worst classes (:class:`Score`). Test images
    of classes that Training lacks cannot be named by the model: they are left out of the
    score and ``note`` says so. Without a probe to make (no Training or Test rows, fewer
    than two Training classes) the score is ``skipped``, with the reason.
    """
    rows = df.where(F.lower("split").isin("training", "test")).withColumn("split", F.lower("split"))
    if per_class:
        window = Window.partitionBy("split", "label").orderBy(F.xxhash64("path", F.lit(seed)))
        rows = rows.withColumn("rank", F.row_number().over(window)).where(
            F.col("rank") <= per_class
        )
    frame = rows.select("split", "label", column).toPandas()
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
        return Score(skipped=reason)
    if note:
        log.warning("linear probe: %s", note)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train, x_test = _matrix(train, column), _matrix(test, column)
    if standardize:
        scaler = StandardScaler().fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    model = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)
    model.fit(x_train, train["label"])
    predicted = model.predict(x_test)
    correct = pd.Series(predicted == test["label"].to_numpy(), index=test["label"].to_numpy())
    per_class = correct.groupby(level=0).mean().sort_values(kind="stable")
    return Score(
        accuracy=float(correct.mean()),
        train_rows=len(train),
        test_rows=len(test),
        worst_classes={k: float(v) for k, v in per_class.head(5).items()},
        note=note,
    )


def probe_table(probes: Mapping[str, ScoreLike]) -> pd.DataFrame:
    """One row per probe (``full``, ``pca_<k>``...): accuracy, rows, worst classes, and a
    ``note`` saying what was left out or why the probe was skipped. Scores may come as
    :class:`Score` or as read back from the manifest."""
    rows = {}
    for name, value in probes.items():
        score = as_score(value)
        if score.skipped is not None:
            rows[name] = {"note": f"skipped: {score.skipped}"}
            continue
        rows[name] = {
            "accuracy": score.accuracy,
            "train_rows": score.train_rows,
            "test_rows": score.test_rows,
            "worst_classes": ", ".join(f"{k} ({v:.0%})" for k, v in score.worst_classes.items()),
            "note": score.note or "",
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def probe_summary(probes: Mapping[str, ScoreLike]) -> str:
    """One line for a log or a terminal: each probe's accuracy, or why it was skipped."""
    scores = {name: as_score(value) for name, value in probes.items()}
    return "; ".join(
        f"{name} skipped ({s.skipped})" if s.skipped is not None else f"{name} {s.accuracy:.3f}"
        for name, s in scores.items()
    )


class Comparison(Protocol):
    """The same images' features from two runtimes (``helpers.features.transformer``'s
    ``RuntimeComparison``): ``frame`` with ``split, label, int8, float32``, or ``skipped``."""

    frame: DataFrame | None
    per_class: int
    seed: int
    skipped: str | None


@dataclass(frozen=True)
class ProbeChange:
    """The linear probe on int8 features and on float32 features of the same sampled
    images: both scores, the change in points (int8 minus float32), the sample's images and
    its bound per class and split; or why there is none (``skipped``)."""

    float32: Score | None = None
    int8: Score | None = None
    images: int = 0
    per_class: int = 0
    seed: int = 42
    skipped: str | None = None

    @property
    def change_points(self) -> float | None:
        """int8's accuracy minus float32's, in points (``None`` without both)."""
        if self.float32 is None or self.int8 is None:
            return None
        if self.float32.accuracy is None or self.int8.accuracy is None:
            return None
        return 100 * (self.int8.accuracy - self.float32.accuracy)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's keys: ``{"skipped": reason}``, or both accuracies, the change in
        points and the sample."""
        if self.skipped is not None:
            return {"skipped": self.skipped}
        assert self.float32 is not None and self.int8 is not None
        return {
            "float32": self.float32.to_manifest(),
            "int8": self.int8.to_manifest(),
            "change_points": self.change_points,
            "sample_images": self.images,
            "per_class": self.per_class,
            "seed": self.seed,
        }

    def table(self) -> pd.DataFrame:
        """Both probes, one row each (:func:`probe_table`), or the reason there are none."""
        if self.skipped is not None:
            return pd.DataFrame({"note": [f"skipped: {self.skipped}"]}, index=["int8"])
        assert self.float32 is not None and self.int8 is not None
        return probe_table({"float32 (litert)": self.float32, "int8 (litert-int8)": self.int8})

    def summary(self) -> str:
        """One line: what int8 costs the probe on this sample."""
        if self.skipped is not None:
            return f"int8 against float32: skipped ({self.skipped})"
        change = self.change_points
        if change is None:
            assert self.int8 is not None
            return f"int8 against float32: probe skipped ({self.int8.skipped})"
        assert self.float32 is not None and self.int8 is not None
        return (
            f"int8 against float32 on {self.images} of this run's images (at most "
            f"{self.per_class} per class and split): probe {self.int8.accuracy:.4f} against "
            f"{self.float32.accuracy:.4f}, {change:+.2f} points"
        )


def probe_change(comparison: Comparison) -> ProbeChange:
    """The linear probe (:func:`linear_probe`, standardized) on the int8 and on the float32
    features of ``comparison``'s images, with the same seed."""
    base = {"per_class": comparison.per_class, "seed": comparison.seed}
    if comparison.skipped is not None or comparison.frame is None:
        return ProbeChange(skipped=comparison.skipped or "no comparison", **base)
    frame = comparison.frame
    return ProbeChange(
        float32=linear_probe(frame, "float32", seed=comparison.seed),
        int8=linear_probe(frame, "int8", seed=comparison.seed),
        images=int(frame.count()),
        **base,
    )
