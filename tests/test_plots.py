"""Tests for helpers.plots: every figure builds from small inputs and saves as a PNG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from helpers.plots import (
    LEGEND_MAX_CLASSES,
    class_balance,
    save_figure,
    tsne_scatter,
    variance_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    """Close every figure a test opened."""
    yield
    plt.close("all")


def _check_saved(fig: Figure, tmp_path: Path, name: str) -> None:
    """save_figure writes a non-empty PNG at <output_root>/figures/<name>.png and returns it."""
    uri = save_figure(fig, str(tmp_path), name)
    target = tmp_path / "figures" / f"{name}.png"
    assert uri == str(target)
    data = target.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)


def _labels(count: int, per_class: int = 10) -> pd.Series:
    return pd.Series([f"Class {c:03d}" for c in range(count) for _ in range(per_class)])


def test_class_balance(tmp_path: Path) -> None:
    """class_balance draws one bar per class from an inventory table, even if a split lacks one."""
    counts = pd.DataFrame(
        {
            "split": ["Training", "Training", "Training", "Test", "Test"],
            "label": ["Apple Red", "Banana", "Cherry", "Apple Red", "Banana"],
            "images": [30, 35, 12, 10, 11],
            "bytes": [1] * 5,
        }
    )
    fig = class_balance(counts)
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].get_yticklabels()) == 3
    _check_saved(fig, tmp_path, "class_balance")


def test_variance_curves(tmp_path: Path) -> None:
    """variance_curves draws the scree and the cumulative curve with k marked."""
    explained = np.array([0.5, 0.3, 0.15, 0.04, 0.01])
    fig = variance_curves(explained, threshold=0.95, k=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    _check_saved(fig, tmp_path, "variance")


@pytest.mark.parametrize("classes", [3, LEGEND_MAX_CLASSES, 120])
def test_tsne_scatter(classes: int, tmp_path: Path) -> None:
    """tsne_scatter has a legend for few classes and centroid labels for many."""
    labels = _labels(classes, per_class=5)
    embedding = np.random.default_rng(0).normal(size=(len(labels), 2))
    fig = tsne_scatter(embedding, labels)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    if classes <= LEGEND_MAX_CLASSES:
        assert len(ax.get_legend().get_texts()) == classes
    else:
        assert ax.get_legend() is None
        assert len(ax.texts) == classes
    _check_saved(fig, tmp_path, f"tsne_{classes}")
