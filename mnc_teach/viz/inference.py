"""Inference pictures (notebook 07): stage 4's refined boxes, and mask voting.

    draw_box_refinement   stage-1 boxes and the stage-3 regressed boxes made from them
    draw_mask_voting      a kept detection | its voters | the voted mask

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, R boxes, V voters.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from mnc_teach.viz.common import (
    add_box,
    add_gt_boxes,
    as_numpy,
    image_hwc,
    instance_colors,
    mask_overlay,
    new_axes,
)

__all__ = [
    "GID_KEPT_BOX", "GID_OWN_MASK", "GID_REFINED_BOX", "GID_SHIFT", "GID_STAGE1_BOX",
    "GID_VOTED_BOX", "GID_VOTED_MASK", "GID_VOTER_BOX", "draw_box_refinement", "draw_mask_voting",
]

GID_STAGE1_BOX = "stage1-box"  # a stage-1 box (proposal), dotted
GID_REFINED_BOX = "refined-box"  # the stage-3 regressed box made from it (stage 4's input)
GID_SHIFT = "box-shift"  # an arrow from a stage-1 box centre to its refined box centre
GID_KEPT_BOX = "kept-box"  # the detection that survived NMS
GID_OWN_MASK = "own-mask"  # its own mask, pasted and binarised
GID_VOTER_BOX = "voter-box"  # one box per voter
GID_VOTED_MASK = "voted-mask"  # the score-weighted average of the voters' pasted masks (soft)
GID_VOTED_BOX = "voted-box"  # the tight box of the voted mask >= threshold

MASK_THRESHOLD = 0.4  # binarisation of pasted / voted masks [code BINARIZE_THRESH]
OWN_MASK_COLOR = (0.1, 0.6, 1.0)  # light blue
VOTED_CMAP = "magma"  # voted soft mask: black 0, yellow 1
VOTER_CMAP = "viridis"  # voter boxes coloured by their voting weight
MAX_VOTER_WIDTH = 3.0  # line width of the heaviest voter (the lightest get 0.5)


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2  # (R, 4) -> (R, 2) as (x, y)


def draw_box_refinement(
    image: Tensor, stage1_boxes: Tensor, refined_boxes: Tensor, gt_boxes: Tensor | None = None, *,
    ax: Axes | None = None, title: str | None = None,
) -> Figure:
    """Stage-1 boxes (dotted) and the stage-3 regressed boxes made from them (solid, same colour).

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        stage1_boxes, refined_boxes (Tensor[R, 4], xyxy pixels): row i of the second is row i
            of the first moved by stage 3's box deltas (``CascadeIntermediates.refined_boxes``).
        gt_boxes (Tensor[G, 4] | None): drawn dashed gold (gid ``GID_GT``).

    Returns:
        The figure; R boxes of each kind (GID_STAGE1_BOX, GID_REFINED_BOX) and R arrows
        (GID_SHIFT, annotations from the stage-1 centre to the refined centre).
    """
    before, after = as_numpy(stage1_boxes).reshape(-1, 4), as_numpy(refined_boxes).reshape(-1, 4)
    if before.shape != after.shape:
        raise ValueError(f"draw_box_refinement: {len(before)} stage-1 boxes but {len(after)} "
                         "refined boxes; pass the refined box of every stage-1 box, in order")
    fig, ax = new_axes(ax, (4.5, 4.5))
    pixels = image_hwc(image)
    ax.imshow(pixels, interpolation="nearest")
    add_gt_boxes(ax, gt_boxes, linewidth=2.0)
    colors = instance_colors(len(before))
    pairs = zip(colors, before, after, _centres(before), _centres(after), strict=True)
    for color, box_before, box_after, start, end in pairs:
        add_box(ax, box_before, color, GID_STAGE1_BOX, linewidth=1.0, linestyle=":")
        add_box(ax, box_after, color, GID_REFINED_BOX, linewidth=1.8)
        arrow = ax.annotate("", xy=tuple(end), xytext=tuple(start),
                            arrowprops={"arrowstyle": "->", "color": color, "lw": 1.2})
        arrow.set_gid(GID_SHIFT)
    ax.set_xlim(0, pixels.shape[1])
    ax.set_ylim(pixels.shape[0], 0)
    ax.set_axis_off()
    legend = [Patch(facecolor="none", edgecolor="0.3", linestyle=":", label="stage 1"),
              Patch(facecolor="none", edgecolor="0.3", label="stage 3 regressed (stage 4 input)")]
    ax.legend(handles=legend, fontsize=7, loc="lower left", framealpha=0.8)
    if title is None:
        title = f"{len(before)} boxes: stage 1 -> refined"
    ax.set_title(title, fontsize=9)
    return fig


def _voters_panel(ax: Axes, boxes: np.ndarray, weights: np.ndarray) -> None:
    """Every voter's box, width and colour growing with its weight, the heaviest on top."""
    cmap = plt.get_cmap(VOTER_CMAP)
    top = max(float(weights.max()), 1e-12) if len(weights) else 1.0  # the heaviest voter's weight
    for i in np.argsort(weights, kind="stable"):  # lightest first, heaviest on top
        share = float(weights[i]) / top
        add_box(ax, boxes[i], cmap(share), GID_VOTER_BOX,
                linewidth=0.5 + (MAX_VOTER_WIDTH - 0.5) * share)
    ax.set_title(f"{len(boxes)} voters (box IoU >= 0.5), width ~ weight", fontsize=9)


def _voted_panel(ax: Axes, voted: np.ndarray, voted_box: Tensor | None,
                 mask_threshold: float) -> None:
    """The voted soft mask as a heat map with a colour bar, its contour and box at the threshold."""
    heat = ax.imshow(np.ma.masked_less_equal(voted, 0.0), cmap=VOTED_CMAP, vmin=0.0, vmax=1.0,
                     alpha=0.75, interpolation="nearest")
    heat.set_gid(GID_VOTED_MASK)
    if voted.max() >= mask_threshold > voted.min():
        ax.contour(voted, levels=[mask_threshold], colors="cyan", linewidths=1.0)
    if voted_box is not None:
        add_box(ax, as_numpy(voted_box).reshape(4), "cyan", GID_VOTED_BOX, linewidth=1.5,
                linestyle="--")
    ax.figure.colorbar(heat, ax=ax, fraction=0.046, pad=0.02)
    ax.set_title(f"voted mask (contour and box at {mask_threshold:g})", fontsize=9)


def draw_mask_voting(
    image: Tensor, *, kept_box: Tensor, own_mask: Tensor, voter_boxes: Tensor,
    voter_weights: Tensor, voted_mask: Tensor, voted_box: Tensor | None = None,
    mask_threshold: float = MASK_THRESHOLD, title: str | None = None,
) -> Figure:
    """Mask voting for one kept detection, in three panels (docs/paper_vs_code.md, section
    "Inference").

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        kept_box (Tensor[4], xyxy pixels): the detection that survived per-class NMS.
        own_mask (Tensor[H, W], soft): its own m x m mask pasted into the image.
        voter_boxes (Tensor[V, 4]): every candidate with box IoU >= 0.5 to it (itself included).
        voter_weights (Tensor[V]): their class scores, normalised to sum to 1.
        voted_mask (Tensor[H, W], soft): the weighted average of the voters' pasted masks.
        voted_box (Tensor[4] | None): the tight box of ``voted_mask >= mask_threshold``.
        mask_threshold: binarisation of the drawn own mask and the voted mask's contour (0.4).

    Returns:
        The figure with three axes: the kept detection (GID_KEPT_BOX, GID_OWN_MASK), its voters
        (V boxes GID_VOTER_BOX, line width growing with the weight, heaviest on top), and the
        voted soft mask (GID_VOTED_MASK, its contour at ``mask_threshold``, GID_VOTED_BOX).
    """
    boxes, weights = as_numpy(voter_boxes).reshape(-1, 4), as_numpy(voter_weights).reshape(-1)
    if len(boxes) != len(weights):
        raise ValueError(f"draw_mask_voting: {len(boxes)} voter boxes but {len(weights)} weights")
    pixels = image_hwc(image)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
    for ax in axes:
        ax.imshow(pixels, interpolation="nearest")

    own_binary = as_numpy(own_mask) >= mask_threshold  # (H, W)
    overlay = axes[0].imshow(mask_overlay(own_binary, OWN_MASK_COLOR, 0.5), interpolation="nearest")
    overlay.set_gid(GID_OWN_MASK)
    add_box(axes[0], as_numpy(kept_box).reshape(4), "tab:blue", GID_KEPT_BOX, linewidth=2.0)
    axes[0].set_title("kept detection, its own mask", fontsize=9)
    _voters_panel(axes[1], boxes, weights)
    _voted_panel(axes[2], as_numpy(voted_mask), voted_box, mask_threshold)

    for ax in axes:
        ax.set_xlim(0, pixels.shape[1])
        ax.set_ylim(pixels.shape[0], 0)
        ax.set_axis_off()
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
