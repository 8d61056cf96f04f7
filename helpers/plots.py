"""Figures for the notebooks: each function returns a matplotlib Figure; ``save_figure`` writes it.

Figures stay readable with 100+ classes: long bar charts grow with the class count and
the t-SNE shows a legend only for a few classes, labelling class centroids otherwise.
"""

from __future__ import annotations

import io
import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from helpers.paths import join, write_bytes

log = logging.getLogger(__name__)

#: Classes up to which the t-SNE has a legend; beyond, names are written at class centroids.
LEGEND_MAX_CLASSES = 20


def save_figure(fig: Figure, output_root: str, name: str) -> str:
    """Save ``fig`` as ``<output_root>/figures/<name>.png`` (local or remote); return the URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    uri = join(output_root, "figures", f"{name}.png")
    write_bytes(uri, buffer.getvalue())
    log.info("figure saved: %s", uri)
    return uri


def class_balance(counts: pd.DataFrame) -> Figure:
    """Horizontal bars of images per class and split, sorted by total count."""
    table = counts.pivot_table(index="label", columns="split", values="images", fill_value=0)
    table = table.loc[table.sum(axis=1).sort_values().index]
    height = max(3.0, 0.22 * len(table) + 1)
    fig, ax = plt.subplots(figsize=(8, height))
    table.plot.barh(stacked=True, ax=ax, width=0.8)
    ax.set_xlabel("images")
    ax.set_ylabel("")
    ax.set_title(f"Images per class ({len(table)} classes)")
    ax.legend(title="split", loc="lower right")
    fig.tight_layout()
    return fig


def sample_grid(samples: pd.DataFrame, per_class: int) -> Figure:
    """A grid of thumbnails: one row per class (``label``), ``per_class`` images (``pixels``)."""
    labels = sorted(samples["label"].unique())
    fig, axes = plt.subplots(
        len(labels), per_class, figsize=(1.3 * per_class + 1.6, 1.3 * len(labels)), squeeze=False
    )
    for row, label in enumerate(labels):
        images = samples[samples["label"] == label]["pixels"].tolist()[:per_class]
        for col, ax in enumerate(axes[row]):
            if col < len(images):
                ax.imshow(images[col])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        axes[row][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Sample images per class")
    fig.tight_layout()
    return fig


def variance_curves(explained: np.ndarray, threshold: float, k: int) -> Figure:
    """Scree (log scale) and cumulative explained variance, with the threshold and k marked."""
    components = np.arange(1, len(explained) + 1)
    cumulative = np.cumsum(explained)
    fig, (scree, cum) = plt.subplots(1, 2, figsize=(11, 4))
    scree.semilogy(components, np.clip(explained, 1e-12, None))
    scree.axvline(k, color="tab:red", linestyle="--", label=f"k = {k}")
    scree.set_xlabel("component")
    scree.set_ylabel("share of variance (log)")
    scree.set_title("Scree")
    scree.legend()
    cum.plot(components, cumulative)
    cum.axhline(threshold, color="tab:gray", linestyle=":", label=f"threshold {threshold:.0%}")
    cum.axvline(k, color="tab:red", linestyle="--", label=f"k = {k} ({cumulative[k - 1]:.1%})")
    cum.set_xlabel("components kept")
    cum.set_ylabel("cumulative share of variance")
    cum.set_ylim(0, 1.01)
    cum.set_title("Cumulative explained variance")
    cum.legend(loc="lower right")
    fig.tight_layout()
    return fig


def tsne_scatter(embedding: np.ndarray, labels: pd.Series) -> Figure:
    """2-D t-SNE points coloured by class; legend for few classes, centroid labels for many."""
    classes = sorted(labels.unique())
    palette = dict(zip(classes, sns.color_palette("husl", len(classes))))
    fig, ax = plt.subplots(figsize=(10, 8))
    for label in classes:
        mask = (labels == label).to_numpy()
        ax.scatter(*embedding[mask].T, s=8, color=palette[label], label=label, alpha=0.7)
    if len(classes) <= LEGEND_MAX_CLASSES:
        ax.legend(markerscale=2, fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    else:
        for label in classes:
            center = np.median(embedding[(labels == label).to_numpy()], axis=0)
            ax.annotate(label, center, fontsize=6, ha="center", alpha=0.9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(labels)} images, {len(classes)} classes")
    fig.tight_layout()
    return fig
