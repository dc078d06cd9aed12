"""Pure matplotlib pictures of cascade training runs and of inference; each function returns a ``Figure``.

The companion of ``viz.py`` and ``viz_cascade.py`` (same conventions: nothing is kept between
calls, single-axes functions take an optional ``ax``, and every artist that stands for one
object has a ``gid`` so that ``viz.count_artists(fig, gid)`` counts what was drawn). Only
notebooks and widgets import this module; the model never does.

    training   draw_history_comparison (one panel per loss term, one line per run)
    stage 4    draw_box_refinement (stage-1 boxes and the stage-3 regressed boxes made from them)
    inference  draw_mask_voting (a kept detection | its voters | the voted mask)

Shape legend (structures.py): H, W image size, R boxes, V voters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from mnc_teach.viz.common import (
    GID_GT,
    _add_box,
    _as_numpy,
    _image_hwc,
    _new_axes,
    _overlay,
    instance_colors,
    moving_average,
)

__all__ = [
    "GID_RUN_CURVE", "GID_STAGE1_BOX", "GID_REFINED_BOX", "GID_SHIFT", "GID_KEPT_BOX", "GID_OWN_MASK",
    "GID_VOTER_BOX", "GID_VOTED_MASK", "GID_VOTED_BOX", "draw_history_comparison",
    "draw_box_refinement", "draw_mask_voting",
]  # fmt: skip

GID_RUN_CURVE = "run-curve"  # one Line2D per (run, loss term)
GID_STAGE1_BOX = "stage1-box"  # a stage-1 box (proposal), dashed
GID_REFINED_BOX = "refined-box"  # the stage-3 regressed box made from it (stage 4's input), solid
GID_SHIFT = "box-shift"  # an arrow from a stage-1 box centre to its refined box centre
GID_KEPT_BOX = "kept-box"  # the detection that survived NMS
GID_OWN_MASK = "own-mask"  # its own mask, pasted and binarised
GID_VOTER_BOX = "voter-box"  # one box per voter
GID_VOTED_MASK = "voted-mask"  # the score-weighted average of the voters' pasted masks (soft)
GID_VOTED_BOX = "voted-box"  # the tight box of the voted mask >= threshold

TOTAL = "total"  # the history key of the summed loss
MASK_THRESHOLD = 0.4  # binarisation of pasted / voted masks [code BINARIZE_THRESH, MNC_SPEC §8]
OWN_MASK_COLOR = (0.1, 0.6, 1.0)  # light blue
VOTED_CMAP = "magma"  # voted soft mask: black 0, yellow 1
VOTER_CMAP = "viridis"  # voter boxes coloured by their voting weight
LOG_SCALE_MIN_RATIO = 10.0  # a panel gets a log y axis only when its values span at least this factor
MAX_VOTER_WIDTH = 3.0  # line width of the heaviest voter (the lightest get 0.5)


def _terms_of(runs: Mapping[str, Sequence[Mapping[str, float]]]) -> list[str]:
    """Loss terms (``loss_*``) in the order they first appear over all runs, then ``total``."""
    names = {key: None for entries in runs.values() for entry in entries for key in entry if key.startswith("loss_")}
    return [*names, TOTAL]


def draw_history_comparison(
    runs: Mapping[str, Sequence[Mapping[str, float]]], terms: Sequence[str] | None = None, smooth: int = 1,
    ncols: int = 4, log_scale: bool = True, title: str | None = None,
) -> Figure:
    """Loss curves of several training runs overlaid, one panel per loss term.

    Args:
        runs: ``label -> per-step entries``, e.g. ``{"detach": history.steps, ...}`` with
            ``TrainHistory.steps`` (dicts with ``step`` and the loss values).
        terms: the keys to draw, one panel each (default: every ``loss_*`` key, then ``total``).
            A run without a term gets no line in that panel.
        smooth: trailing moving-average window in steps (1 = raw values), see :func:`mnc_teach.viz.common.moving_average`.
        ncols: panels per row.
        log_scale: log y axes for panels whose positive values span a factor of at least
            LOG_SCALE_MIN_RATIO (losses often span decades; narrower ranges stay linear and readable).

    Returns:
        The figure: one axes per term (titled with the term) in the order of ``terms``, and one
        line with gid GID_RUN_CURVE per (run, term), labelled with the run, in the order of ``runs``.
    """
    if not runs:
        raise ValueError("viz_inference.draw_history_comparison: no runs to draw; pass {label: history.steps}")
    terms = list(terms) if terms is not None else _terms_of(runs)
    nrows = max(1, math.ceil(len(terms) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 2.3 * nrows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, term in zip(axes.flat, terms, strict=False):  # spare panels are hidden below
        for k, (label, entries) in enumerate(runs.items()):
            points = [(entry["step"], entry[term]) for entry in entries if term in entry]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            ax.plot(steps, moving_average(values, smooth), color=colors(k % 10), lw=1.2, label=label, gid=GID_RUN_CURVE)
        values = np.concatenate([line.get_ydata() for line in ax.lines]) if ax.lines else np.zeros(0)
        if log_scale and len(values) and values.min() > 0 and values.max() >= LOG_SCALE_MIN_RATIO * values.min():
            ax.set_yscale("log")
        ax.set_title(term.removeprefix("loss_"), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(terms) :]:
        ax.set_axis_off()
    first = axes.flat[0]
    if first.lines:
        first.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    suffix = "" if smooth == 1 else f" (mean of {smooth} steps)"
    fig.suptitle(title if title is not None else f"loss per term{suffix}", fontsize=10)
    fig.tight_layout()
    return fig


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2  # (R, 4) -> (R, 2) as (x, y)


def draw_box_refinement(
    image: Tensor, stage1_boxes: Tensor, refined_boxes: Tensor, gt_boxes: Tensor | None = None,
    ax: Axes | None = None, title: str | None = None,
) -> Figure:
    """Stage-1 boxes (dashed) and the stage-3 regressed boxes made from them (solid, same colour).

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        stage1_boxes, refined_boxes (Tensor[R, 4], xyxy pixels): row i of the second is row i
            of the first moved by stage 3's box deltas (``CascadeIntermediates.refined_boxes``).
        gt_boxes (Tensor[G, 4] | None): drawn dashed gold (gid ``viz.GID_GT``).

    Returns:
        The figure; R boxes of each kind (GID_STAGE1_BOX, GID_REFINED_BOX) and R arrows
        (GID_SHIFT, annotations from the stage-1 centre to the refined centre).
    """
    before, after = _as_numpy(stage1_boxes).reshape(-1, 4), _as_numpy(refined_boxes).reshape(-1, 4)
    if before.shape != after.shape:
        raise ValueError(f"viz_inference.draw_box_refinement: {len(before)} stage-1 boxes but {len(after)} "
                         "refined boxes; pass the refined box of every stage-1 box, in the same order")  # fmt: skip
    fig, ax = _new_axes(ax, (4.5, 4.5))
    pixels = _image_hwc(image)
    ax.imshow(pixels, interpolation="nearest")
    for box in _as_numpy(gt_boxes if gt_boxes is not None else np.zeros((0, 4))).reshape(-1, 4):
        _add_box(ax, box, "gold", GID_GT, linewidth=2.0, linestyle="--")
    colors = instance_colors(len(before))
    pairs = zip(colors, before, after, _centres(before), _centres(after), strict=True)
    for color, box_before, box_after, start, end in pairs:
        _add_box(ax, box_before, color, GID_STAGE1_BOX, linewidth=1.0, linestyle=":")
        _add_box(ax, box_after, color, GID_REFINED_BOX, linewidth=1.8)
        arrow = ax.annotate("", xy=tuple(end), xytext=tuple(start),
                            arrowprops={"arrowstyle": "->", "color": color, "lw": 1.2})  # fmt: skip
        arrow.set_gid(GID_SHIFT)
    ax.set_xlim(0, pixels.shape[1])
    ax.set_ylim(pixels.shape[0], 0)
    ax.set_axis_off()
    ax.legend(handles=[Patch(facecolor="none", edgecolor="0.3", linestyle=":", label="stage 1"),
                       Patch(facecolor="none", edgecolor="0.3", label="stage 3 regressed (stage 4 input)")],
              fontsize=7, loc="lower left", framealpha=0.8)  # fmt: skip
    ax.set_title(title if title is not None else f"{len(before)} boxes: stage 1 -> refined", fontsize=9)
    return fig


def draw_mask_voting(
    image: Tensor, kept_box: Tensor, own_mask: Tensor, voter_boxes: Tensor, voter_weights: Tensor,
    voted_mask: Tensor, voted_box: Tensor | None = None, mask_threshold: float = MASK_THRESHOLD,
    title: str | None = None,
) -> Figure:
    """Mask voting for one kept detection, in three panels (MNC_SPEC §8).

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        kept_box (Tensor[4], xyxy pixels): the detection that survived per-class NMS.
        own_mask (Tensor[H, W], soft): its own m x m mask pasted into the image.
        voter_boxes (Tensor[V, 4]): every candidate with box IoU >= 0.5 to it (itself included).
        voter_weights (Tensor[V]): their class scores, normalised to sum to 1.
        voted_mask (Tensor[H, W], soft): the weighted average of the voters' pasted masks.
        voted_box (Tensor[4] | None): the tight box of ``voted_mask >= mask_threshold``.
        mask_threshold: binarisation for the drawn own mask and the voted mask's contour (0.4).

    Returns:
        The figure with three axes: the kept detection (GID_KEPT_BOX, GID_OWN_MASK), its voters
        (V boxes GID_VOTER_BOX, line width growing with the weight, heaviest on top), and the
        voted soft mask (GID_VOTED_MASK, its contour at ``mask_threshold``, GID_VOTED_BOX).
    """
    boxes, weights = _as_numpy(voter_boxes).reshape(-1, 4), _as_numpy(voter_weights).reshape(-1)
    if len(boxes) != len(weights):
        raise ValueError(f"viz_inference.draw_mask_voting: {len(boxes)} voter boxes but {len(weights)} weights")
    pixels = _image_hwc(image)
    kept = _as_numpy(kept_box).reshape(4)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))

    ax_own = axes[0]
    ax_own.imshow(pixels, interpolation="nearest")
    own_binary = _as_numpy(own_mask) >= mask_threshold  # (H, W)
    overlay = ax_own.imshow(_overlay(own_binary, OWN_MASK_COLOR, 0.5), interpolation="nearest")
    overlay.set_gid(GID_OWN_MASK)
    _add_box(ax_own, kept, "tab:blue", GID_KEPT_BOX, linewidth=2.0)
    ax_own.set_title("kept detection, its own mask", fontsize=9)

    ax_voters = axes[1]
    ax_voters.imshow(pixels, interpolation="nearest")
    cmap = plt.get_cmap(VOTER_CMAP)
    top = max(float(weights.max()), 1e-12) if len(weights) else 1.0  # the heaviest voter's weight
    for i in np.argsort(weights, kind="stable"):  # lightest first, heaviest on top
        share = float(weights[i]) / top
        _add_box(ax_voters, boxes[i], cmap(share), GID_VOTER_BOX, linewidth=0.5 + (MAX_VOTER_WIDTH - 0.5) * share)
    ax_voters.set_title(f"{len(boxes)} voters (box IoU >= 0.5), width ~ weight", fontsize=9)

    ax_voted = axes[2]
    ax_voted.imshow(pixels, interpolation="nearest")
    voted = _as_numpy(voted_mask)
    heat = ax_voted.imshow(np.ma.masked_less_equal(voted, 0.0), cmap=VOTED_CMAP, vmin=0.0, vmax=1.0, alpha=0.75,
                           interpolation="nearest")  # fmt: skip
    heat.set_gid(GID_VOTED_MASK)
    if voted.max() >= mask_threshold > voted.min():
        ax_voted.contour(voted, levels=[mask_threshold], colors="cyan", linewidths=1.0)
    if voted_box is not None:
        _add_box(ax_voted, _as_numpy(voted_box).reshape(4), "cyan", GID_VOTED_BOX, linewidth=1.5, linestyle="--")
    fig.colorbar(heat, ax=ax_voted, fraction=0.046, pad=0.02)
    ax_voted.set_title(f"voted mask (contour and box at {mask_threshold:g})", fontsize=9)

    for ax in axes:
        ax.set_xlim(0, pixels.shape[1])
        ax.set_ylim(pixels.shape[0], 0)
        ax.set_axis_off()
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
