"""Drawings of training runs: loss and learning-rate curves, and a gallery of predictions on fixed images.

Pure matplotlib on figures made with the object API (``Figure()``, never pyplot), so that the
dashboard can draw from its training thread; :func:`figure_png` turns a figure into the PNG bytes
an ``ipywidgets.Image`` shows. Used by :mod:`mnc_teach.widgets.dashboard` and :mod:`mnc_teach.widgets.run_viewer`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, NullFormatter
from torch import Tensor

from mnc_teach.engine.state import TrainHistory
from mnc_teach.viz import common as viz

__all__ = ["draw_history", "draw_prediction_gallery", "figure_png", "new_gallery_figure", "plot_history"]

MAX_POINTS = 2000  # longer curves are thinned to every k-th step for drawing (the history keeps all)
LOG_DECADES = 4  # the loss axis spans at most this many decades below the largest loss
SCORE_THRESHOLD = 0.5  # the gallery draws the detections scoring at least this
MAX_DRAWN = 10  # the gallery draws at most this many detections per image (the highest scores)
GID_NO_DETECTIONS = "no-detections"  # the "no detections >= t" text of a gallery image
DPI = 80
LOSS_FIGSIZE = (10.0, 3.4)
GALLERY_PANEL = 2.2  # inches per gallery image (a column: ground truth above, predictions below)


def _thin(xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """Every k-th point (and the last) so that at most about ``max_points`` remain."""
    stride = math.ceil(len(xs) / max_points) if len(xs) > max_points else 1
    keep = list(range(0, len(xs), stride))
    if keep and keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def draw_history(fig: Figure, history: TrainHistory, max_steps: int | None = None, max_points: int = MAX_POINTS) -> None:
    """Draw loss curves (log y; one line per term plus ``total``, validation dashed with dots)
    and the learning rate into ``fig``. Lines carry gids ``train-<term>``, ``val-<term>``, ``lr``."""
    fig.clear()
    ax_loss, ax_lr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    colors = matplotlib.colormaps["tab10"]
    for k, term in enumerate([*history.terms(), "total"]):
        color, width = ("black", 2.0) if term == "total" else (colors(k % 10), 1.2)
        name = term.removeprefix("loss_")
        for split, entries, style in (("train", history.steps, "-"), ("val", history.val, "o--")):
            points = [(e["step"], e[term]) for e in entries if term in e]
            if points:
                xs, ys = _thin(*map(list, zip(*points, strict=True)), max_points)
                ax_loss.plot(xs, ys, style, color=color, lw=width, ms=4, gid=f"{split}-{term}",
                             label=name if split == "train" else None)  # fmt: skip
    if history.steps:
        ax_loss.set_yscale("log")
        positive = [y for line in ax_loss.lines for y in line.get_ydata() if y > 0]
        if positive:  # at most LOG_DECADES decades: a term near 0 would squeeze the others (and slow the drawing)
            ax_loss.set_ylim(bottom=max(min(positive), max(positive) * 10.0**-LOG_DECADES) / 1.5, top=max(positive) * 1.5)
        ax_loss.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # "0.01": plain text draws faster than mathtext 10^-2
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
        handles, _ = ax_loss.get_legend_handles_labels()
        if history.val:
            handles.append(Line2D([], [], ls="--", marker="o", color="gray", label="validation"))
        ax_loss.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        xs, ys = _thin([e["step"] for e in history.steps], [e["lr"] for e in history.steps], max_points)
        ax_lr.plot(xs, ys, color="tab:purple", gid="lr")
    else:
        ax_loss.text(0.5, 0.5, "waiting for the first step", ha="center", va="center", transform=ax_loss.transAxes)
    for ax in (ax_loss, ax_lr):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if max_steps:
            ax.set_xlim(0, max_steps)
    ax_loss.set_title("losses (log scale)", fontsize=10, y=1.0)  # a fixed y: no costly automatic placement
    ax_lr.set_title("learning rate", fontsize=10, y=1.0)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.15, wspace=0.55)


def plot_history(history: TrainHistory | dict | str | os.PathLike) -> Figure:
    """A finished (or running) run's curves: a TrainHistory, its dict, or a ``history.json`` path."""
    if isinstance(history, (str, os.PathLike)):
        history = TrainHistory.load(history)
    elif isinstance(history, dict):
        history = TrainHistory.from_dict(history)
    fig = Figure(figsize=LOSS_FIGSIZE)
    draw_history(fig, history)
    return fig


def _gallery_axes(fig: Figure, count: int) -> np.ndarray:
    """The figure's 2 x ``count`` gallery axes, emptied (making new axes takes longer than drawing into them)."""
    axes = fig.axes
    if len(axes) == 2 * count and all(ax.get_gid() == f"gallery-{i}" for i, ax in enumerate(axes)):
        for ax in axes:
            for artist in [*ax.images, *ax.patches, *ax.texts, *ax.collections, *ax.lines]:
                artist.remove()
        return np.array(axes).reshape(2, count)
    fig.clear()
    axes = fig.subplots(2, count, squeeze=False)  # (2, count): ground truth above, detections below
    for i, ax in enumerate(axes.flat):
        ax.set_gid(f"gallery-{i}")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.05, hspace=0.12)
    return axes


def draw_prediction_gallery(fig: Figure, images: Sequence[Tensor], targets: Sequence[dict], detections: Sequence[dict],
                            class_names: Sequence[str], score_threshold: float = SCORE_THRESHOLD,
                            step: int | None = None, max_drawn: int = MAX_DRAWN) -> Figure:  # fmt: skip
    """One column per image: its ground truth above, its detections scoring >= ``score_threshold`` below
    (at most ``max_drawn``, the highest scores; the step in the title). Axes ``[0, k]`` and ``[1, k]``
    (gids ``gallery-<k>``, ``gallery-<n + k>``) hold image k; an image without such detections says
    "no detections >= t" (gid GID_NO_DETECTIONS)."""
    axes = _gallery_axes(fig, len(images))
    for k, (image, target, found) in enumerate(zip(images, targets, detections, strict=True)):
        name = target.get("image_id", f"image {k}")
        viz.draw_instances(image, target, class_names, ax=axes[0, k], title=f"{name}: ground truth")
        shown, colors, num_above = viz.best_detections(found, score_threshold, max_drawn)
        num_shown = len(shown["scores"])
        count = f"{num_shown}" if num_shown == num_above else f"{num_shown} of {num_above}"
        when = "" if step is None else f"step {step}: "
        viz.draw_instances(image, shown, class_names, ax=axes[1, k], colors=colors,
                           title=f"{when}{count} with score >= {score_threshold:g}")  # fmt: skip
        if num_shown == 0:
            axes[1, k].text(0.5, 0.5, f"no detections >= {score_threshold:g}", transform=axes[1, k].transAxes,
                            ha="center", va="center", fontsize=8, gid=GID_NO_DETECTIONS,
                            bbox={"facecolor": "white", "alpha": 0.8})  # fmt: skip
        for ax in axes[:, k]:
            ax.set_title(ax.get_title(), fontsize=8, y=1.0)  # a fixed y: no costly automatic placement
    return fig


def new_gallery_figure(count: int) -> Figure:
    """An empty figure sized for a gallery of ``count`` images."""
    return Figure(figsize=(max(GALLERY_PANEL * count, 4.0), 2 * GALLERY_PANEL + 0.4))


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (what an ipywidgets.Image shows)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})  # faster, a little larger
    return buffer.getvalue()
