"""Tests for helpers.evaluate: stratified sampling, the linear probe and the t-SNE embedding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from helpers.evaluate import (
    linear_probe,
    probe_summary,
    probe_table,
    stratified_sample,
    tsne_embedding,
)

CLASSES = ("Apple Red", "Banana", "Kiwi")
PER_SPLIT = {"Training": 20, "Test": 8}
DIM = 6

SCHEMA = StructType(
    [
        StructField("path", StringType()),
        StructField("split", StringType()),
        StructField("label", StringType()),
        StructField("pca", ArrayType(FloatType())),
    ]
)


def _clusters(seed: int = 0) -> list[tuple]:
    """Rows of three tight, far-apart Gaussian clusters, one per class, in both splits."""
    rng = np.random.default_rng(seed)
    centers = 10.0 * np.eye(len(CLASSES), DIM)
    rows = []
    for split, count in PER_SPLIT.items():
        for c, label in enumerate(CLASSES):
            points = centers[c] + 0.3 * rng.normal(size=(count, DIM))
            rows += [
                (f"{split}/{label}/{i}.jpg", split, label, p.tolist()) for i, p in enumerate(points)
            ]
    return rows


@pytest.fixture(scope="module")
def clusters(spark):
    return spark.createDataFrame(_clusters(), SCHEMA).cache()


def test_stratified_sample_is_balanced(clusters) -> None:
    """stratified_sample spreads about ``size`` rows evenly over the classes."""
    sample = stratified_sample(clusters, "pca", size=30, seed=1)
    assert list(sample.columns) == ["label", "pca"]
    assert sample["label"].value_counts().to_dict() == dict.fromkeys(CLASSES, 10)
    rounded_up = stratified_sample(clusters, "pca", size=10, seed=1)
    assert rounded_up["label"].value_counts().to_dict() == dict.fromkeys(CLASSES, 4)


def test_stratified_sample_seeded(clusters) -> None:
    """The same seed gives the same sample."""
    first, second = (stratified_sample(clusters, "pca", size=9, seed=3) for _ in range(2))
    pd.testing.assert_frame_equal(
        first.sort_values("label").reset_index(drop=True),
        second.sort_values("label").reset_index(drop=True),
    )


def test_linear_probe_separable_clusters(clusters) -> None:
    """Separable clusters are classified perfectly, with row counts and worst classes reported."""
    result = linear_probe(clusters, "pca")
    assert set(result.to_manifest()) == {"accuracy", "train_rows", "test_rows", "worst_classes"}
    assert result.accuracy == 1.0 and result.skipped is None and result.note is None
    assert result.train_rows == PER_SPLIT["Training"] * len(CLASSES)
    assert result.test_rows == PER_SPLIT["Test"] * len(CLASSES)
    assert result.worst_classes == dict.fromkeys(CLASSES, 1.0)


def test_linear_probe_per_class_cap(clusters) -> None:
    """``per_class`` caps the rows of each class in each split (seeded), 0 keeps them all."""
    capped = linear_probe(clusters, "pca", per_class=5)
    assert (capped.train_rows, capped.test_rows) == (5 * len(CLASSES), 5 * len(CLASSES))
    assert capped.accuracy == 1.0
    every = linear_probe(clusters, "pca", per_class=0)
    assert every.train_rows == PER_SPLIT["Training"] * len(CLASSES)
    assert every.test_rows == PER_SPLIT["Test"] * len(CLASSES)


def test_linear_probe_unstandardized(clusters) -> None:
    """standardize=False fits on the columns as given (PCA components keep their scale)."""
    result = linear_probe(clusters, "pca", standardize=False).to_manifest()
    assert result["accuracy"] == 1.0
    assert result["test_rows"] == PER_SPLIT["Test"] * len(CLASSES)


def test_probe_table_one_row_per_probe(clusters) -> None:
    """probe_table lists each probe's accuracy, rows and worst classes, or why it was skipped."""
    probes = {"full": linear_probe(clusters, "pca"), "pca_2": {"skipped": "no Test split"}}
    table = probe_table(probes)
    assert table.index.tolist() == ["full", "pca_2"]
    assert table.loc["full", "accuracy"] == 1.0
    assert table.loc["full", "worst_classes"] == "Apple Red (100%), Banana (100%), Kiwi (100%)"
    assert table.loc["pca_2", "note"] == "skipped: no Test split"
    assert probe_summary(probes) == "full 1.000; pca_2 skipped (no Test split)"


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("split = 'Training'", "both a Training and a Test split"),
        ("split = 'Test'", "both a Training and a Test split"),
        ("label = 'Kiwi'", "Training holds a single class ('Kiwi')"),
        ("split = 'Test' OR label = 'Kiwi'", "Training holds a single class ('Kiwi')"),
        (
            "split = 'Training' AND label = 'Kiwi' OR split = 'Test' AND label != 'Kiwi'",
            "Training holds a single class",
        ),
    ],
)
def test_linear_probe_skipped(clusters, where: str, reason: str) -> None:
    """Without two splits or without two Training classes the probe says why, and no more."""
    result = linear_probe(clusters.where(where), "pca").to_manifest()
    assert list(result) == ["skipped"] and reason in result["skipped"]


def test_linear_probe_test_classes_unknown_to_training(clusters) -> None:
    """Test images of classes Training lacks are left out of the score, and the note says so."""
    rows = clusters.where("NOT (split = 'Training' AND label = 'Kiwi')")
    result = linear_probe(rows, "pca").to_manifest()
    assert result["accuracy"] == 1.0 and result["test_rows"] == 2 * PER_SPLIT["Test"]
    assert result["note"] == (
        f"{PER_SPLIT['Test']} Test images of 1 classes that Training lacks are left out of "
        "the score (Kiwi)"
    )
    unknown_only = "split = 'Training' AND label != 'Kiwi' OR split = 'Test' AND label = 'Kiwi'"
    assert linear_probe(clusters.where(unknown_only), "pca").to_manifest() == {
        "skipped": "no Test image belongs to a class that Training holds"
    }


def test_linear_probe_single_image_class(clusters, spark) -> None:
    """A class with one Training image and one Test image is probed like any other."""
    one = spark.createDataFrame(
        [
            ("Training/Lime/0.jpg", "Training", "Lime", [0.0, 0.0, 0.0, 10.0, 0.0, 0.0]),
            ("Test/Lime/0.jpg", "Test", "Lime", [0.0, 0.0, 0.0, 10.2, 0.0, 0.0]),
        ],
        SCHEMA,
    )
    result = linear_probe(clusters.unionByName(one), "pca").to_manifest()
    assert result["train_rows"] == PER_SPLIT["Training"] * len(CLASSES) + 1
    assert "Lime" in result["worst_classes"] and "note" not in result


def test_tsne_embedding_shape_and_seed(clusters) -> None:
    """t-SNE gives finite (n, 2) coordinates, identical for the same seed."""
    sample = stratified_sample(clusters, "pca", size=30)
    first = tsne_embedding(sample, "pca", perplexity=5, seed=0)
    second = tsne_embedding(sample, "pca", perplexity=5, seed=0)
    assert first.shape == (30, 2)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("rows", [2, 3, 5])
def test_tsne_embedding_tiny_sample(rows: int) -> None:
    """A sample smaller than the perplexity still embeds: the perplexity is capped."""
    rng = np.random.default_rng(0)
    sample = pd.DataFrame({"label": ["a"] * rows, "pca": list(rng.normal(size=(rows, DIM)))})
    embedding = tsne_embedding(sample, "pca", perplexity=30.0)
    assert embedding.shape == (rows, 2)
    assert np.isfinite(embedding).all()
