"""Stage 1's proposals (notebook 02 and the proposal viewer): boxes by objectness, and recall.

    draw_proposals       proposals on their image, coloured by objectness, best on top
    draw_recall_curve    recall against the number of proposals kept
    draw_proposal_view   both side by side, the current top-k marked (ProposalViewer's picture)

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, R proposals, G ground-truth boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mnc_teach.viz.common import add_box, add_gt_boxes, as_numpy, image_hwc, new_axes

__all__ = [
    "GID_PROPOSAL", "GID_RECALL", "draw_proposal_view", "draw_proposals", "draw_recall_curve",
]

GID_PROPOSAL = "proposal-box"  # one Rectangle per proposal
GID_RECALL = "recall-curve"  # one Line2D per recall curve

PROPOSAL_CMAP = "winter"  # colour = objectness (blue = low, green = high); GT stays gold
PROPOSAL_VIEW_FIGSIZE = (10.5, 4.2)
PROPOSAL_VIEW_DPI = 80


def draw_proposals(
    image: Tensor, boxes: Tensor, scores: Tensor | None = None, gt_boxes: Tensor | None = None,
    *, ax: Axes | None = None, max_boxes: int | None = None, title: str | None = None,
) -> Figure:
    """Proposals (stage-1 boxes) on their image, coloured by objectness.

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        boxes (Tensor[R, 4], xyxy pixels); scores (Tensor[R] in [0, 1] | None): with scores,
            the ``max_boxes`` best are drawn, best on top, coloured by score; without, the first
            ``max_boxes`` in one colour.
        gt_boxes (Tensor[G, 4] | None): drawn dashed gold (gid ``GID_GT``).
        max_boxes: how many proposals to draw (None: all).

    Returns:
        The figure; ``count_artists(fig, GID_PROPOSAL) == min(R, max_boxes)``.
    """
    fig, ax = new_axes(ax, (4.5, 4.5))
    pixels = image_hwc(image)
    ax.imshow(pixels, interpolation="nearest")
    boxes_np = as_numpy(boxes).reshape(-1, 4)
    scores_np = None if scores is None else as_numpy(scores).reshape(-1)
    order = np.arange(len(boxes_np)) if scores_np is None else np.argsort(-scores_np, kind="stable")
    order = order[: len(order) if max_boxes is None else max_boxes]
    cmap = plt.get_cmap(PROPOSAL_CMAP)
    for i in order if scores_np is None else order[::-1]:  # worst first: the best end on top
        color = "tab:cyan" if scores_np is None else cmap(float(scores_np[i]))
        add_box(ax, boxes_np[i], color, GID_PROPOSAL, linewidth=1.0)
    add_gt_boxes(ax, gt_boxes, linewidth=2.0)
    ax.set_xlim(0, pixels.shape[1])
    ax.set_ylim(pixels.shape[0], 0)
    ax.set_axis_off()
    if title is None:
        title = f"{len(order)} of {len(boxes_np)} proposals"
    ax.set_title(title, fontsize=9)
    return fig


def draw_recall_curve(
    num_proposals: Sequence[int], recalls: dict[str, Sequence[float]], ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Recall (fraction of ground-truth objects covered) against the number of proposals kept.

    Args:
        num_proposals: the x values, e.g. ``[1, 2, 5, 10, 20, 50, 100]`` (log scale).
        recalls: one curve per entry, ``label -> recall at each x`` (values in [0, 1]).

    Returns:
        The figure; one line per curve with gid GID_RECALL, in the order of ``recalls``.
    """
    owns_figure = ax is None
    fig, ax = new_axes(ax, (7, 3.5))
    for label, values in recalls.items():
        if len(values) != len(num_proposals):
            raise ValueError(f"recall curve {label!r} has {len(values)} values for "
                             f"{len(num_proposals)} x values")
        ax.plot(list(num_proposals), list(values), "o-", ms=3, label=label, gid=GID_RECALL)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("proposals per image (top-N by objectness)")
    ax.set_ylabel("recall")
    ax.grid(alpha=0.3)
    if owns_figure:  # to the right of the curves, which fill the plot
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.subplots_adjust(left=0.09, right=0.62, bottom=0.15)
    else:
        ax.legend(fontsize=7, loc="lower right")
    if title is not None:
        ax.set_title(title, fontsize=10)
    return fig


def draw_proposal_view(
    image: Tensor, boxes: Tensor, scores: Tensor, gt_boxes: Tensor, *, counts: Sequence[int],
    recalls: dict[str, Sequence[float]], chosen: int, title: str, max_boxes: int = 100,
) -> Figure:
    """Proposals on the image (left), recall against the number kept (right), top-k marked.

    Args:
        image (Tensor[3, H, W]); boxes (Tensor[R, 4]), scores (Tensor[R]): proposals after NMS.
        gt_boxes (Tensor[G, 4]): drawn dashed gold.
        counts, recalls: the curve's x values and ``label -> recall at each count`` (see
            :func:`draw_recall_curve`).
        chosen: the current post-NMS top-k, drawn as a vertical line.
        title: the recall panel's title.
        max_boxes: at most this many proposals are drawn (the best by score).

    Returns:
        The figure; ``count_artists(fig, GID_PROPOSAL) == min(R, max_boxes)``, one GID_RECALL
        line per curve.
    """
    fig, (ax_image, ax_recall) = plt.subplots(1, 2, figsize=PROPOSAL_VIEW_FIGSIZE,
                                              dpi=PROPOSAL_VIEW_DPI,
                                              gridspec_kw={"width_ratios": [1, 1.4]})
    shown = f"{min(len(boxes), max_boxes)} of {len(boxes)} proposals (colour: objectness)"
    draw_proposals(image, boxes, scores, gt_boxes=gt_boxes, ax=ax_image, max_boxes=max_boxes,
                   title=shown)
    draw_recall_curve(counts, recalls, ax=ax_recall, title=title)
    ax_recall.axvline(max(chosen, 1), color="0.3", ls=":", lw=1)
    fig.subplots_adjust(left=0.01, right=0.98, top=0.9, bottom=0.13, wspace=0.12)
    return fig
