"""Loss curves, the one module: a notebook's own loop, a run's history, several runs compared.

    draw_loss_curves          ``{term: [value per step]}`` of a notebook's loop, one line per term
    draw_history              a run's train and validation curves and its learning rate, into a
                              figure of the object API (the dashboard draws from its thread)
    plot_history              the same, in a new figure: ``plot_history(TrainHistory.load(path))``
    draw_history_comparison   several runs overlaid, one panel per loss term

A history is anything with ``steps`` and ``val`` lists of per-step dicts (``step``, each loss
term ``loss_*``, ``total``, and in ``steps`` also ``lr``), e.g. ``engine.state.TrainHistory``,
or the dict ``{"steps": [...], "val": [...]}`` of its ``history.json``. This module reads no
file and imports no engine: loading a history is the caller's.

Conventions: :mod:`mnc_teach.viz.common`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from mnc_teach.structures import LOSS_PREFIX, loss_terms
from mnc_teach.viz.common import new_axes

__all__ = [
    "GID_LOSS", "GID_LR", "GID_RUN_CURVE", "LOSS_FIGSIZE", "MAX_POINTS", "TOTAL", "LossHistory",
    "draw_history", "draw_history_comparison", "draw_loss_curves", "moving_average",
    "plot_history", "term_points",
]

GID_LOSS = "loss-curve"  # draw_loss_curves: one Line2D per loss term
GID_RUN_CURVE = "run-curve"  # draw_history_comparison: one Line2D per (run, loss term)
GID_LR = "lr"  # draw_history: the learning rate; its loss lines are "train-<term>", "val-<term>"

TOTAL = "total"  # the history key of the summed loss
MAX_POINTS = 2000  # draw_history thins longer curves to every k-th step (the history keeps all)
LOG_DECADES = 4  # draw_history's loss axis spans at most this many decades below the largest
LOG_SCALE_MIN_RATIO = 10.0  # draw_history_comparison: log y only when values span this factor
LOSS_FIGSIZE = (10.0, 3.4)


class LossHistory(Protocol):
    """What the drawings read of a run's history (``engine.state.TrainHistory`` is one)."""

    steps: list[dict[str, float]]
    val: list[dict[str, float]]


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points; the first points average the fewer points there are.

    Returns:
        ndarray[len(values)], float64: entry i is ``mean(values[max(0, i - window + 1) : i + 1])``.
    """
    if window < 1:
        raise ValueError(f"moving_average: window must be >= 1, got {window}")
    values = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    stop = np.arange(1, len(values) + 1)
    start = np.maximum(stop - window, 0)
    return (cumulative[stop] - cumulative[start]) / (stop - start)


def term_points(entries: Sequence[Mapping[str, float]], term: str) -> tuple[list, list]:
    """``(steps, values)`` of ``term`` over the entries that have it."""
    points = [(entry["step"], entry[term]) for entry in entries if term in entry]
    return [step for step, _ in points], [value for _, value in points]


def _label(term: str) -> str:
    return term.removeprefix(LOSS_PREFIX)


def _entries(history: LossHistory | Mapping) -> tuple[list[dict], list[dict]]:
    """``(steps, val)`` of a history object or of its ``{"steps", "val"}`` dict."""
    if isinstance(history, Mapping):
        return list(history.get("steps", [])), list(history.get("val", []))
    return list(history.steps), list(history.val)


def _thin(xs: list, ys: list, max_points: int) -> tuple[list, list]:
    """Every k-th point (and the last) so that at most about ``max_points`` remain."""
    stride = math.ceil(len(xs) / max_points) if len(xs) > max_points else 1
    keep = list(range(0, len(xs), stride))
    if keep and keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def draw_loss_curves(
    losses: Mapping[str, Sequence[float]], ax: Axes | None = None, *, smooth: int = 1,
    title: str | None = None,
) -> Figure:
    """One line per loss term against the step, optionally as a trailing moving average.

    Args:
        losses: ``term -> value at each step`` (all of the same length), steps 0, 1, ...
        smooth: moving-average window in steps (1 = raw values), see :func:`moving_average`.

    Returns:
        The figure; one line per term with gid GID_LOSS (its y data is the smoothed curve).
    """
    fig, ax = new_axes(ax, (5.5, 3.2))
    for name, values in losses.items():
        ax.plot(np.arange(len(values)), moving_average(values, smooth), label=_label(name),
                gid=GID_LOSS)
    ax.set_xlabel("step")
    ax.set_ylabel("loss" if smooth == 1 else f"loss (mean of {smooth} steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title is not None:
        ax.set_title(title, fontsize=10)
    return fig


def _limit_log_axis(ax: Axes) -> None:
    """Log y spanning at most LOG_DECADES decades below the largest value, plain-number ticks."""
    ax.set_yscale("log")
    positive = [y for line in ax.lines for y in line.get_ydata() if y > 0]
    if positive:  # a term near 0 would squeeze the others (and slow the drawing)
        low = max(min(positive), max(positive) * 10.0**-LOG_DECADES)
        ax.set_ylim(bottom=low / 1.5, top=max(positive) * 1.5)
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # "0.01": plain text, no mathtext
    ax.yaxis.set_minor_formatter(NullFormatter())


def _draw_split_curves(ax: Axes, steps: list[dict], val: list[dict], max_points: int) -> None:
    """Train (solid) and validation (dashed, dots) lines of every term and of the total."""
    colors = matplotlib.colormaps["tab10"]
    for k, term in enumerate([*loss_terms(steps + val), TOTAL]):
        color, width = ("black", 2.0) if term == TOTAL else (colors(k % 10), 1.2)
        for split, entries, style in (("train", steps, "-"), ("val", val, "o--")):
            xs, ys = term_points(entries, term)
            if xs:
                xs, ys = _thin(xs, ys, max_points)
                ax.plot(xs, ys, style, color=color, lw=width, ms=4, gid=f"{split}-{term}",
                        label=_label(term) if split == "train" else None)


def draw_history(fig: Figure, history: LossHistory | Mapping, *, max_steps: int | None = None,
                 max_points: int = MAX_POINTS) -> None:
    """Draw a run's loss curves and learning rate into ``fig`` (cleared first).

    Left: log-scale loss curves, one line per term plus ``total`` (black), validation dashed
    with dots; right: the learning rate. Curves longer than ``max_points`` are thinned.

    Args:
        history: a :class:`LossHistory` or its dict; ``max_steps``: the x axes' right end.

    Lines carry gids ``train-<term>``, ``val-<term>`` and GID_LR.
    """
    steps, val = _entries(history)
    fig.clear()
    ax_loss, ax_lr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    _draw_split_curves(ax_loss, steps, val, max_points)
    if steps:
        _limit_log_axis(ax_loss)
        handles, _ = ax_loss.get_legend_handles_labels()
        if val:
            handles.append(Line2D([], [], ls="--", marker="o", color="gray", label="validation"))
        ax_loss.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       frameon=False)
        xs, ys = _thin(*term_points(steps, "lr"), max_points)
        ax_lr.plot(xs, ys, color="tab:purple", gid=GID_LR)
    else:
        ax_loss.text(0.5, 0.5, "waiting for the first step", ha="center", va="center",
                     transform=ax_loss.transAxes)
    for ax in (ax_loss, ax_lr):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if max_steps:
            ax.set_xlim(0, max_steps)
    ax_loss.set_title("losses (log scale)", fontsize=10, y=1.0)  # a fixed y: no automatic placement
    ax_lr.set_title("learning rate", fontsize=10, y=1.0)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.15, wspace=0.55)


def plot_history(history: LossHistory | Mapping) -> Figure:
    """A run's curves (:func:`draw_history`) in a new figure of LOSS_FIGSIZE.

    Pass a ``TrainHistory`` or its dict; for a run on disk, ``TrainHistory.load(path)``.
    """
    fig = Figure(figsize=LOSS_FIGSIZE)
    draw_history(fig, history)
    return fig


def _comparison_panel(ax: Axes, runs: Mapping[str, Sequence[Mapping]], term: str, smooth: int,
                      log_scale: bool) -> None:
    """One term's panel: a line per run that has the term, log y when the values span decades."""
    colors = plt.get_cmap("tab10")
    for k, (label, entries) in enumerate(runs.items()):
        steps, values = term_points(entries, term)
        if steps:
            ax.plot(steps, moving_average(values, smooth), color=colors(k % 10), lw=1.2,
                    label=label, gid=GID_RUN_CURVE)
    values = np.concatenate([line.get_ydata() for line in ax.lines]) if ax.lines else np.zeros(0)
    if (log_scale and len(values) and values.min() > 0
            and values.max() >= LOG_SCALE_MIN_RATIO * values.min()):
        ax.set_yscale("log")
    ax.set_title(_label(term), fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def draw_history_comparison(
    runs: Mapping[str, Sequence[Mapping[str, float]]], *, terms: Sequence[str] | None = None,
    smooth: int = 1, ncols: int = 4, log_scale: bool = True, title: str | None = None,
) -> Figure:
    """Loss curves of several training runs overlaid, one panel per loss term.

    Args:
        runs: ``label -> per-step entries``, e.g. ``{"detach": history.steps, ...}``.
        terms: the keys to draw, one panel each (default: every ``loss_*`` key, then ``total``).
            A run without a term gets no line in that panel.
        smooth: trailing moving-average window in steps (1 = raw values).
        ncols: panels per row.
        log_scale: log y axes for panels whose positive values span a factor of at least
            LOG_SCALE_MIN_RATIO (losses often span decades; narrower ranges stay linear).

    Returns:
        The figure: one axes per term (titled with the term) in the order of ``terms``, and one
        line with gid GID_RUN_CURVE per (run, term), labelled with the run, in run order.
    """
    if not runs:
        raise ValueError("draw_history_comparison: no runs to draw; pass {label: history.steps}")
    if terms is None:
        terms = [*loss_terms([entry for entries in runs.values() for entry in entries]), TOTAL]
    nrows = max(1, math.ceil(len(terms) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.3 * nrows), squeeze=False)
    for ax, term in zip(axes.flat, terms, strict=False):  # spare panels are hidden below
        _comparison_panel(ax, runs, term, smooth, log_scale)
    for ax in axes.flat[len(terms) :]:
        ax.set_axis_off()
    if axes.flat[0].lines:
        axes.flat[0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    suffix = "" if smooth == 1 else f" (mean of {smooth} steps)"
    fig.suptitle(title if title is not None else f"loss per term{suffix}", fontsize=10)
    fig.tight_layout()
    return fig
