"""The notebooks' interpretations (helpers.report) and the featurization's progress
(helpers.spark.progress, on a real local session)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from helpers import report
from helpers.evaluate import Score
from helpers.spark.progress import task_progress


def test_note_is_markdown_in_jupyter_and_text_elsewhere():
    note = report.Note("k = **3**")
    assert note._repr_markdown_() == repr(note) == str(note) == "k = **3**"


def test_balance_note_names_the_extremes():
    counts = pd.DataFrame(
        {
            "split": ["Training", "Test", "Training", "Training"],
            "label": ["Apple", "Apple", "Kiwi", "Lime"],
            "images": [40, 10, 20, 45],
            "bytes": [1, 1, 1, 1],
        }
    )
    note = report.balance_note(counts)
    assert "3 classes, 115 images" in note
    assert "**Apple** (50)" in note and "**Kiwi** (20)" in note and "2.5x apart" in note
    assert "imbalanced" in note
    assert report.balance_note(counts.iloc[:0]) == "No images found."
    even = counts.assign(images=[10, 0, 10, 10])
    assert report.balance_note(even) == "3 classes of 10 images each: balanced."


def test_properties_duplicates_and_variability_notes():
    properties = pd.DataFrame(
        {"width": [100, 50], "height": [100, 50], "mode": ["RGB", "L"], "format": ["JPEG"] * 2}
        | {"images": [99, 1]}
    )
    note = report.properties_note(properties, pd.DataFrame({"path": ["a"]}), pd.DataFrame())
    assert note.startswith("99.0% of the readable images are 100x100 RGB JPEG; 1 unusual and 0")
    assert report.duplicates_note({"groups": 0}) == "No two files have the same bytes."
    leak = report.duplicates_note({"groups": 2, "images": 5, "leakage_images": 1})
    assert "2 groups of identical files (5 images)" in leak and "**1 images outside" in leak
    variability = pd.DataFrame({"label": ["Kiwi", "Lime"], "mse": [0.04, 0.01]})
    assert "Most varied: **Kiwi**" in report.variability_note(variability)


def test_features_note_counts_and_rate():
    extraction = SimpleNamespace(featurized=300, skipped=20)
    counts = SimpleNamespace(rows=320, errors=2)
    note = report.features_note(extraction, counts, 10.0)
    assert "300 images featurized and 20 kept" in note and "took 10 s" in note
    assert "2 rows hold an error" in note


def test_variance_probe_and_classifier_notes():
    reduction = SimpleNamespace(
        k=3,
        dim=8,
        explained_variance=np.array([0.4, 0.3, 0.25, 0.05]),
        variance_at=lambda k: float(np.array([0.4, 0.3, 0.25, 0.05])[:k].sum()),
    )
    note = report.variance_note(reduction)
    assert "k = 3 of 8 components keep 95.0%" in note and "first 2 already" in note
    probes = {"full": Score(accuracy=0.99), "pca_3": {"accuracy": 0.985}}
    assert "the reduction loses 0.5 point" in report.probe_note(probes)
    same = report.probe_note({"full": Score(accuracy=1.0), "pca_3": Score(accuracy=1.0)})
    assert same.endswith("the reduction keeps what the probe needs.")
    skipped = report.probe_note({"full": Score(skipped="one class"), "pca_3": Score(0.5)})
    assert skipped == "No comparison: full: one class."
    assert "+0.5 point against the probe" in report.classifier_note(Score(accuracy=0.99), probes)
    assert report.classifier_note({"skipped": "no Test"}, probes) == "No classifier: no Test."


def test_task_progress_counts_finished_tasks_up_to_the_total(spark):
    """Reports follow the finished tasks of the block's last stage: they never go back, never
    exceed the total, and end at it; the job group is restored afterwards."""

    @F.pandas_udf("long")
    def plus_one(ids: pd.Series) -> pd.Series:
        return ids + 1

    before = spark.sparkContext.getLocalProperty("spark.jobGroup.id")
    seen: list[tuple[int, int]] = []
    with task_progress(spark, 80, lambda done, total: seen.append((done, total)), every=0.01):
        frame = spark.range(80, numPartitions=8).select(plus_one("id"))
        frame.write.format("noop").mode("overwrite").save()
    assert seen[-1] == (80, 80)
    done = [d for d, _ in seen]
    assert done == sorted(done) and max(done) <= 80
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") == before
