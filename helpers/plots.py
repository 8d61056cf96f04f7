"""Figures for the notebooks: each function returns a matplotlib Figure; ``save_figure`` writes it.

Figures stay readable with 100+ classes: long bar charts grow with the class count and
the t-SNE shows a legend only for a few classes; beyond, it writes each class name at its
points, moving names apart so none overlap.
"""

from __future__ import annotations

import base64
import io
import logging
import sys
import textwrap
from types import ModuleType

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from helpers.paths import join, write_bytes

log = logging.getLogger(__name__)

#: Classes up to which the t-SNE has a legend; beyond, names are written beside the points.
LEGEND_MAX_CLASSES = 20

Color = tuple[float, float, float]


def save_figure(fig: Figure, output_root: str, name: str) -> str:
    """Save ``fig`` as ``<output_root>/figures/<name>.png`` (local or remote); return the URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    uri = join(output_root, "figures", f"{name}.png")
    write_bytes(uri, buffer.getvalue())
    log.info("figure saved: %s", uri)
    return uri


def show(fig: Figure) -> None:
    """Show ``fig`` as the cell's image, then close it, wherever the notebook runs.

    In an IPython kernel (Jupyter, papermill, Databricks) this is ``display(fig)``. Under
    sparkmagic's PySpark kernel the cell runs in Apache Livy's Python shell (its
    ``fake_shell.py``), whose replies carry only printed text unless a ``%matplot`` magic
    returns an ``image/png``; there the PNG is added to the reply of the statement being
    run, as that magic does, and sparkmagic displays it. Only one image per statement
    reaches the notebook (the last shown). Elsewhere (a script) the figure is only closed.
    """
    shell = _livy_shell()
    if shell is not None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        _livy_images(shell).append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    else:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            get_ipython = None  # noqa: N806 (no IPython: nothing to show in)
        if get_ipython is not None and get_ipython() is not None:
            display(fig)
    plt.close(fig)


def _livy_shell() -> ModuleType | None:
    """Livy's Python shell (the ``__main__`` running this code under Livy), or ``None``."""
    main = sys.modules.get("__main__")
    if main is not None and all(
        callable(getattr(main, name, None))
        for name in ("execute_request", "execute_reply_ok", "execute_reply_error", "magic_matplot")
    ):
        return main
    return None


def _livy_images(shell: ModuleType) -> list[str]:
    """The images waiting for the current statement's reply in Livy's ``shell``.

    The first call wraps the shell's reply functions: a successful reply takes the last
    waiting PNG as its ``image/png`` (next to the printed text), an error reply drops them.
    """
    if not hasattr(shell, "_fruits_images"):
        images: list[str] = []
        reply_ok, reply_error = shell.execute_reply_ok, shell.execute_reply_error

        def ok_with_image(data: dict) -> dict:
            if images:
                if len(images) > 1:
                    log.warning(
                        "%d figures in one Livy statement: only the last shows", len(images)
                    )
                data = {**data, "image/png": images[-1]}
                images.clear()
            return reply_ok(data)

        def error_without_image(*args: object) -> dict:
            images.clear()
            return reply_error(*args)

        shell._fruits_images = images
        shell.execute_reply_ok = ok_with_image
        shell.execute_reply_error = error_without_image
    return shell._fruits_images


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
    ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.01, 1))  # never over bars
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
    cum.plot([k], [cumulative[k - 1]], "o", color="tab:red")
    cum.set_xlabel("components kept")
    cum.set_ylabel("cumulative share of variance")
    cum.set_ylim(0, 1.01)
    cum.set_title("Cumulative explained variance")
    cum.legend(loc="lower right")
    fig.tight_layout()
    return fig


def _spread_palette(count: int) -> list[Color]:
    """``count`` distinct colours ordered so that neighbours in the list differ most.

    Classes sorted by name put look-alikes side by side ("Apple Red 1", "Apple Red 2"),
    and t-SNE puts them side by side too: stepping round the hue circle by the golden
    ratio gives them far-apart hues, alternating light and dark.
    """
    hues = sns.color_palette("husl", count)
    rank = np.argsort(np.argsort((np.arange(count) * 0.6180339887) % 1.0))
    darker = [0.75 if i % 2 else 1.0 for i in range(count)]
    return [tuple(float(v) * darker[i] for v in hues[rank[i]]) for i in range(count)]


def _separate(boxes: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Move label boxes (centre x, centre y, half width, half height; pixels) apart.

    Each round pushes every overlapping pair apart along the axis where they overlap
    least, half the overlap each; it stops when nothing overlaps.
    """
    x, y, w, h = (boxes[:, i].astype(float).copy() for i in range(4))
    n = len(x)
    tiebreak = np.sign(np.subtract.outer(np.arange(n), np.arange(n))).astype(float)
    for _ in range(iterations):
        dx, dy = np.subtract.outer(x, x), np.subtract.outer(y, y)
        ox = np.add.outer(w, w) - np.abs(dx)
        oy = np.add.outer(h, h) - np.abs(dy)
        overlap = (ox > 0) & (oy > 0)
        np.fill_diagonal(overlap, False)
        if not overlap.any():
            break
        along_y = oy <= ox
        sx = np.where(dx != 0, np.sign(dx), tiebreak)
        sy = np.where(dy != 0, np.sign(dy), tiebreak)
        x += np.where(overlap & ~along_y, sx * (ox / 2 + 0.5), 0).sum(axis=1) / 2
        y += np.where(overlap & along_y, sy * (oy / 2 + 0.5), 0).sum(axis=1) / 2
    return np.column_stack([x, y])


def _label_centroids(
    ax: Axes, embedding: np.ndarray, labels: pd.Series, colors: dict[str, Color]
) -> None:
    """Write each class name near its points' median, moved so no two names overlap.

    A name that had to move is tied to its class by a thin line.
    """
    fig = ax.figure
    classes = list(colors)
    centers = np.array([np.median(embedding[(labels == c).to_numpy()], axis=0) for c in classes])
    style = {"fontsize": 7, "ha": "center", "va": "center"}
    probes = [ax.text(*center, label, **style) for center, label in zip(centers, classes)]
    renderer = fig.canvas.get_renderer()
    extents = [t.get_window_extent(renderer) for t in probes]
    for t in probes:
        t.remove()
    pixels = ax.transData.transform(centers)
    half = np.array([(e.width / 2 + 2, e.height / 2 + 1) for e in extents])
    moved = _separate(np.column_stack([pixels, half]))
    positions = ax.transData.inverted().transform(moved)
    for label, center, position, start, end in zip(classes, centers, positions, pixels, moved):
        far = np.hypot(*(end - start)) > 6
        ax.annotate(
            label,
            center,
            xytext=position,
            textcoords="data",
            color="black",
            bbox={
                "boxstyle": "round,pad=0.15",
                "fc": "white",
                "ec": colors[label],
                "alpha": 0.8,
                "lw": 0.8,
            },
            arrowprops={"arrowstyle": "-", "color": "0.35", "lw": 0.6} if far else None,
            **style,
        )


def tsne_scatter(embedding: np.ndarray, labels: pd.Series) -> Figure:
    """2-D t-SNE points coloured by class; legend for few classes, class names for many.

    With more than ``LEGEND_MAX_CLASSES`` classes no legend could be read, so each class
    name is written at its points' median, in a box outlined in its colour, moved
    aside (with a thin line back) where names would overlap.
    """
    classes = sorted(labels.unique())
    many = len(classes) > LEGEND_MAX_CLASSES
    colors = dict(
        zip(
            classes,
            _spread_palette(len(classes)) if many else sns.color_palette("husl", len(classes)),
        )
    )
    size = (14, 11.5) if many else (10, 8)
    fig, ax = plt.subplots(figsize=size)
    for label in classes:
        mask = (labels == label).to_numpy()
        ax.scatter(
            *embedding[mask].T,
            s=12 if many else 8,
            color=colors[label],
            label=label,
            alpha=0.75,
            lw=0,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(labels)} images, {len(classes)} classes")
    if not many:
        ax.legend(markerscale=2, fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
        fig.tight_layout()
        return fig
    ax.margins(0.04)
    fig.tight_layout()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    _label_centroids(ax, embedding, labels, colors)
    return fig


def _wrap(label: str, width: int = 16) -> str:
    """A class name broken over lines of at most ``width`` characters, for small titles."""
    return "\n".join(textwrap.wrap(label, width)) or label


def _blank(ax: Axes) -> None:
    """Hide an axis' ticks and frame, leaving only its image."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def sample_mosaic(samples: pd.DataFrame, per_class: int, columns: int = 0) -> Figure:
    """Thumbnails of every class in ``samples`` (``label``, ``pixels``), classes side by side.

    Each class is a labelled strip of ``per_class`` images; strips fill ``columns`` columns
    (0: chosen so the figure is about 4:3), so 100+ classes fit one readable page instead
    of one very tall column.
    """
    labels = sorted(samples["label"].unique())
    thumb, gap = 0.8, 0.25
    if columns <= 0:
        ratio = (per_class * thumb + gap) / (thumb + 0.35)
        columns = round(np.sqrt(1.3 * len(labels) / ratio))
    columns = int(min(max(columns, 1), max(len(labels), 1)))
    rows = int(np.ceil(len(labels) / columns)) or 1
    ratios = ([1.0] * per_class + [gap / thumb]) * columns
    fig, axes = plt.subplots(
        rows,
        len(ratios) - 1,
        figsize=((per_class * thumb + gap) * columns, (thumb + 0.35) * rows + 0.6),
        squeeze=False,
        gridspec_kw={"width_ratios": ratios[:-1], "wspace": 0.05, "hspace": 0.45},
    )
    for ax in axes.flat:
        _blank(ax)
    for index, label in enumerate(labels):
        row, first = divmod(index, columns)
        first *= per_class + 1
        images = samples[samples["label"] == label]["pixels"].tolist()[:per_class]
        for col, image in enumerate(images):
            axes[row][first + col].imshow(image)
        axes[row][first].set_title(label, loc="left", fontsize=8)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1 / height, top=1 - 0.55 / height)
    title = f"Sample images: {len(labels)} classes, {per_class} per class"
    fig.suptitle(title, y=1 - 0.1 / height, va="top")
    return fig


def variability_bars(variability: pd.DataFrame, highlight: int = 8) -> Figure:
    """Horizontal bars of each class's MSE to its mean image, most variable on top.

    ``variability`` has ``label, images, mse``; the ``highlight`` most and least variable
    classes are coloured, the rest grey.
    """
    table = variability.sort_values("mse")
    count = len(table)
    colors = ["tab:gray"] * count
    for i in range(min(highlight, count // 2)):  # the two ends never overlap
        colors[i] = "tab:blue"
        colors[count - 1 - i] = "tab:red"
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.2 * count + 1.2)))
    ax.barh(table["label"], table["mse"], color=colors, height=0.8)
    ax.set_ylim(-0.6, count - 0.4)
    ax.tick_params(axis="y", labelsize=8 if count <= 60 else 7)
    ax.set_xlabel("mean squared error to the class mean image (pixels in [0, 1])")
    most = int(table["images"].max()) if count else 0
    ax.set_title(f"Intra-class variability ({count} classes, up to {most} images each)")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color="tab:red"),
        plt.Rectangle((0, 0), 1, 1, color="tab:blue"),
    ]
    ax.legend(handles, ["most variable", "least variable"], loc="lower right")
    ax.margins(y=0)
    fig.tight_layout()
    return fig


def class_mean_extremes(variability: pd.DataFrame, count: int = 8) -> Figure:
    """Mean images of the ``count`` most variable classes (top row) and least (bottom row).

    A sharp mean means photos that line up (same pose, same size); a blurred one, a class
    whose photos vary, or a folder mixing several fruits.
    """
    table = variability.sort_values("mse", ascending=False)
    count = max(1, min(count, len(table) // 2))  # no class in both rows
    rows = {"most variable": table.head(count), "least variable": table.tail(count)[::-1]}
    fig, axes = plt.subplots(2, count, figsize=(1.5 * count + 0.8, 4.4), squeeze=False)
    for row, (name, part) in enumerate(rows.items()):
        for col, ax in enumerate(axes[row]):
            _blank(ax)
            if col < len(part):
                record = part.iloc[col]
                ax.imshow(np.clip(record["mean"], 0, 1))
                ax.set_title(f"{_wrap(record['label'])}\nMSE {record['mse']:.4f}", fontsize=7)
        axes[row][0].set_ylabel(name, fontsize=9)
    fig.suptitle("Class mean images: most and least variable classes")
    fig.tight_layout()
    return fig


def class_means(variability: pd.DataFrame, columns: int = 12) -> Figure:
    """Every class's mean image, in label order, each titled with its class and MSE."""
    table = variability.sort_values("label")
    columns = max(1, min(columns, len(table)))
    rows = int(np.ceil(len(table) / columns)) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(1.15 * columns, 1.45 * rows + 0.5))
    axes = np.atleast_1d(axes).reshape(rows, columns)
    for ax in axes.flat:
        _blank(ax)
    for ax, record in zip(axes.flat, table.itertuples()):
        ax.imshow(np.clip(record.mean, 0, 1))
        ax.set_title(f"{_wrap(record.label, 14)}\n{record.mse:.4f}", fontsize=6)
    fig.suptitle(f"Mean image of each class ({len(table)} classes; MSE to the mean below)")
    fig.tight_layout()
    return fig
