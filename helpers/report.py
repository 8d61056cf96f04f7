"""What the notebooks say after a figure or table: a line or two computed from the run.

Each function returns a :class:`Note`, Markdown in Jupyter and Databricks, plain text in
Livy's shell and logs, so a notebook reads as a report: the number, then what it means.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from helpers.evaluate import ScoreLike, as_score


class Note(str):
    """A short interpretation: shown as Markdown by Jupyter, as its text elsewhere."""

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return str(self)


def _n(value: float) -> str:
    return f"{value:,.0f}"


def balance_note(counts: pd.DataFrame) -> Note:
    """Classes and images, and how far the largest class is from the smallest."""
    per_class = counts.groupby("label")["images"].sum().sort_values()
    if per_class.empty:
        return Note("No images found.")
    small, large = per_class.index[0], per_class.index[-1]
    ratio = per_class.iloc[-1] / per_class.iloc[0]
    if per_class.iloc[0] == per_class.iloc[-1]:
        return Note(f"{len(per_class)} classes of {_n(per_class.iloc[0])} images each: balanced.")
    verdict = "balanced" if ratio <= 1.5 else "imbalanced: weigh or resample the small classes"
    return Note(
        f"{len(per_class)} classes, {_n(per_class.sum())} images. Largest class **{large}** "
        f"({_n(per_class.iloc[-1])}), smallest **{small}** ({_n(per_class.iloc[0])}): "
        f"{ratio:.1f}x apart, {verdict}."
    )


def properties_note(properties: pd.DataFrame, unusual: pd.DataFrame, bad: pd.DataFrame) -> Note:
    """The most common size, mode and format, with its share, and the files that differ."""
    if properties.empty:
        return Note("No image could be read.")
    top = properties.iloc[0]
    share = top["images"] / properties["images"].sum()
    return Note(
        f"{share:.1%} of the readable images are {top['width']}x{top['height']} {top['mode']} "
        f"{top['format']}; {len(unusual)} unusual and {len(bad)} unreadable files are listed "
        "below."
    )


def duplicates_note(duplicates: Mapping[str, int]) -> Note:
    """Identical files, and whether any Test image repeats a Training one (leakage)."""
    if not duplicates.get("groups"):
        return Note("No two files have the same bytes.")
    leak = duplicates.get("leakage_images", 0)
    leakage = (
        f"**{leak} images outside Training repeat a Training image**: the Test score "
        "overstates what the model learned."
        if leak
        else "none crosses from Training to another split."
    )
    return Note(
        f"{duplicates['groups']} groups of identical files ({duplicates['images']} images); "
        f"{leakage}"
    )


def variability_note(variability: pd.DataFrame) -> Note:
    """The most and least varied classes (mean squared error to the class mean image)."""
    if variability.empty:
        return Note("No class mean was computed.")
    most, least = variability.iloc[0], variability.iloc[-1]
    return Note(
        f"Most varied: **{most['label']}** (MSE {most['mse']:.4f}, blurred mean image); most "
        f"uniform: **{least['label']}** (MSE {least['mse']:.4f}, a sharp mean image)."
    )


def features_note(extraction: Any, counts: Any, seconds: float) -> Note:
    """What the feature step did, and how many rows hold an error."""
    errors = (
        f"{counts.errors} rows hold an error instead of features (listed below)"
        if counts.errors
        else "every row has features"
    )
    return Note(
        f"{_n(extraction.featurized)} images featurized and {_n(extraction.skipped)} kept from "
        f"earlier runs; of {_n(counts.rows)} rows, {errors}. The notebook took {seconds:.0f} s."
    )


def variance_note(reduction: Any) -> Note:
    """k, the variance it keeps, and how concentrated the spectrum is."""
    half = 1
    while reduction.variance_at(half) < 0.5 and half < len(reduction.explained_variance):
        half += 1
    return Note(
        f"k = {reduction.k} of {_n(reduction.dim)} components keep "
        f"{reduction.variance_at(reduction.k):.1%} of the variance; the first {half} already "
        f"keep half of it."
    )


def probe_note(probes: Mapping[str, ScoreLike]) -> Note:
    """The probe's Test accuracy on full and reduced features, and what PCA costs."""
    scores = {name: as_score(value) for name, value in probes.items()}
    full = scores.get("full")
    reduced = next((s for name, s in scores.items() if name.startswith("pca_")), None)
    if full is None or reduced is None or full.skipped or reduced.skipped:
        reasons = "; ".join(f"{n}: {s.skipped}" for n, s in scores.items() if s.skipped)
        return Note(f"No comparison: {reasons or 'a probe is missing'}.")
    change = (reduced.accuracy - full.accuracy) * 100
    verdict = "loses" if change < 0 else "gains"
    cost = (
        "the reduction keeps what the probe needs"
        if abs(change) < 0.05
        else f"the reduction {verdict} {abs(change):.1f} point"
    )
    return Note(
        f"The linear probe reaches {full.accuracy:.1%} on Test with every feature and "
        f"{reduced.accuracy:.1%} with PCA: {cost}."
    )


def classifier_note(result: ScoreLike, probes: Mapping[str, ScoreLike]) -> Note:
    """Spark ML's classifier against the probe on the same PCA features."""
    score = as_score(result)
    if score.skipped:
        return Note(f"No classifier: {score.skipped}.")
    reduced = next((as_score(s) for n, s in probes.items() if n.startswith("pca_")), None)
    if reduced is None or reduced.skipped:
        return Note(f"Spark ML's logistic regression reaches {score.accuracy:.1%} on Test.")
    change = (score.accuracy - reduced.accuracy) * 100
    return Note(
        f"Spark ML's logistic regression reaches {score.accuracy:.1%} on Test, "
        f"{change:+.1f} point against the probe on the same PCA features."
    )


def progress_display(what: str = "images featurized") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback: one line updated in place in Jupyter, a line per
    update in Livy's shell and scripts (IPython's ``display`` prints there)."""
    from IPython.display import display

    handle = display(Note(f"0 {what}, starting"), display_id=True)

    def progress(done: int, total: int) -> None:
        note = Note(f"{_n(done)} / {_n(total)} {what} ({done / max(total, 1):.0%})")
        if handle is None:
            display(note)
        else:
            handle.update(note)

    return progress
