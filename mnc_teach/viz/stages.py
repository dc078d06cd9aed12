"""Pure matplotlib pictures of the cascade's stage inputs and outputs; each function returns a ``Figure``.

The companion of ``viz.py`` (same conventions: nothing is kept between calls, single-axes
functions take an optional ``ax``, and every artist that stands for one object has a ``gid``
so that ``viz.count_artists(fig, gid)`` counts what was drawn). Only notebooks and widgets
import this module; the model never does.

    stage 1   draw_proposals, draw_recall_curve
    stage 2   draw_mask_grid (RoI on the image | m x m target | m x m prediction | pasted)
    stage 3   draw_mask_pooling (feature channel, mask, product), draw_class_scores
    training  draw_loss_curves

Shape legend (structures.py): H, W image size, R boxes or RoIs, M mask side, P RoI-feature side, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mnc_teach.postprocess import paste_masks
from mnc_teach.stage3_classify import mask_pool
from mnc_teach.viz import common as viz  # shared helpers: viz._add_box, viz._image_hwc, ...

__all__ = [
    "GID_PROPOSAL", "GID_RECALL", "GID_LOSS", "GID_ROI_BOX", "GID_MASK_TARGET", "GID_MASK_PRED", "GID_PASTED",
    "GID_FEATURE", "GID_POOL_MASK", "GID_POOLED", "GID_SCORE_BAR", "draw_proposals", "draw_recall_curve",
    "draw_loss_curves", "draw_mask_grid", "draw_mask_pooling", "draw_class_scores",
]  # fmt: skip

GID_PROPOSAL = "proposal-box"  # one Rectangle per proposal
GID_RECALL = "recall-curve"  # one Line2D per recall curve
GID_LOSS = "loss-curve"  # one Line2D per loss term
GID_ROI_BOX = "roi-box"  # the RoI on its image, one per row of draw_mask_grid
GID_MASK_TARGET = "mask-target"  # an m x m target image
GID_MASK_PRED = "mask-pred"  # an m x m predicted (soft) mask image
GID_PASTED = "pasted-mask"  # a mask pasted into the image, as an overlay
GID_FEATURE = "feature-map"  # one channel of RoI features, P x P
GID_POOL_MASK = "pool-mask"  # the soft mask resized to P x P
GID_POOLED = "pooled-feature"  # feature channel x mask
GID_SCORE_BAR = "score-bar"  # one bar per (RoI, class)

PROPOSAL_CMAP = "winter"  # proposal colour = its objectness score (blue = low, green = high); GT stays gold
MASK_CMAP = "gray"  # m x m masks: black 0, white 1
FEATURE_CMAP = "magma"
PASTE_THRESHOLD = 0.4  # pasted masks are shown binarised at the code's BINARIZE_THRESH (MNC_SPEC §3)
ZOOM_MARGIN = 0.25  # the pasted column shows the RoI plus this fraction of its larger side


def draw_proposals(
    image: Tensor, boxes: Tensor, scores: Tensor | None = None, gt_boxes: Tensor | None = None,
    ax: Axes | None = None, max_boxes: int | None = None, title: str | None = None,
) -> Figure:
    """Proposals (stage-1 boxes) on their image, coloured by objectness.

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        boxes (Tensor[R, 4], xyxy pixels); scores (Tensor[R] in [0, 1] | None): with scores,
            the ``max_boxes`` best are drawn, best on top, coloured by score; without, the first
            ``max_boxes`` in one colour.
        gt_boxes (Tensor[G, 4] | None): drawn dashed gold (gid ``viz.GID_GT``).
        max_boxes: how many proposals to draw (None: all).

    Returns:
        The figure; ``count_artists(fig, GID_PROPOSAL) == min(R, max_boxes)``.
    """
    fig, ax = viz._new_axes(ax, (4.5, 4.5))
    pixels = viz._image_hwc(image)
    ax.imshow(pixels, interpolation="nearest")
    boxes_np = viz._as_numpy(boxes).reshape(-1, 4)
    scores_np = None if scores is None else viz._as_numpy(scores).reshape(-1)
    order = np.arange(len(boxes_np)) if scores_np is None else np.argsort(-scores_np, kind="stable")
    order = order[: len(order) if max_boxes is None else max_boxes]
    cmap = plt.get_cmap(PROPOSAL_CMAP)
    for i in order if scores_np is None else order[::-1]:  # by score: worst first, so the best end on top
        color = "tab:cyan" if scores_np is None else cmap(float(scores_np[i]))
        viz._add_box(ax, boxes_np[i], color, GID_PROPOSAL, linewidth=1.0)
    for box in viz._as_numpy(gt_boxes if gt_boxes is not None else np.zeros((0, 4))).reshape(-1, 4):
        viz._add_box(ax, box, "gold", viz.GID_GT, linewidth=2.0, linestyle="--")
    ax.set_xlim(0, pixels.shape[1])
    ax.set_ylim(pixels.shape[0], 0)
    ax.set_axis_off()
    ax.set_title(title if title is not None else f"{len(order)} of {len(boxes_np)} proposals", fontsize=9)
    return fig


def draw_recall_curve(
    num_proposals: Sequence[int], recalls: dict[str, Sequence[float]], ax: Axes | None = None, title: str | None = None,
) -> Figure:
    """Recall (fraction of ground-truth objects covered) against the number of proposals kept.

    Args:
        num_proposals: the x values, e.g. ``[1, 2, 5, 10, 20, 50, 100]`` (log scale).
        recalls: one curve per entry, ``label -> recall at each x`` (values in [0, 1]).

    Returns:
        The figure; one line per curve with gid GID_RECALL, in the order of ``recalls``.
    """
    owns_figure = ax is None
    fig, ax = viz._new_axes(ax, (7, 3.5))
    for label, values in recalls.items():
        if len(values) != len(num_proposals):
            raise ValueError(f"recall curve {label!r} has {len(values)} values for {len(num_proposals)} x values")
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


def draw_loss_curves(
    losses: dict[str, Sequence[float]], ax: Axes | None = None, smooth: int = 1, title: str | None = None,
) -> Figure:
    """One line per loss term against the step, optionally as a trailing moving average.

    Args:
        losses: ``term -> value at each step`` (all of the same length).
        smooth: moving-average window in steps (1 = raw values); the first points average fewer steps.

    Returns:
        The figure; one line per term with gid GID_LOSS (its y data is the smoothed curve).
    """
    fig, ax = viz._new_axes(ax, (5.5, 3.2))
    for name, values in losses.items():
        ax.plot(np.arange(len(values)), viz.moving_average(values, smooth), label=name.removeprefix("loss_"), gid=GID_LOSS)
    ax.set_xlabel("step")
    ax.set_ylabel("loss" if smooth == 1 else f"loss (mean of {smooth} steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title is not None:
        ax.set_title(title, fontsize=10)
    return fig


def _zoom(ax: Axes, box: np.ndarray, height: int, width: int) -> None:
    """Show ``box`` plus a margin, inside the image, y growing downwards."""
    x1, y1, x2, y2 = box
    pad = ZOOM_MARGIN * max(x2 - x1, y2 - y1)
    ax.set_xlim(max(x1 - pad, 0), min(x2 + pad, width))
    ax.set_ylim(min(y2 + pad, height), max(y1 - pad, 0))


def draw_mask_grid(
    image: Tensor, boxes: Tensor, target_masks: Tensor, pred_masks: Tensor | None = None,
    titles: Sequence[str] | None = None, threshold: float = PASTE_THRESHOLD,
) -> Figure:
    """Stage 2, one row per RoI: the RoI on its image | m x m target | m x m prediction | pasted mask.

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        boxes (Tensor[R, 4], xyxy pixels), R >= 1.
        target_masks (Tensor[R, M, M], 0/1): e.g. ``stage2_masks.mask_targets``.
        pred_masks (Tensor[R, M, M] in [0, 1] | None): soft predictions (sigmoid of the logits);
            without them the prediction column is left out and the *target* is pasted.
        titles: one line per row, written above its first panel.
        threshold: the pasted mask (``postprocess.paste_masks``) is drawn where it is >= this.

    Returns:
        The figure with R rows of 3 or 4 axes. Per row: one GID_ROI_BOX, one GID_MASK_TARGET,
        one GID_MASK_PRED (if predictions), one GID_PASTED overlay (zoomed on the RoI).
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError("draw_mask_grid needs at least one RoI (boxes is empty)")
    if target_masks.shape[0] != len(boxes) or (pred_masks is not None and pred_masks.shape[0] != len(boxes)):
        raise ValueError(f"draw_mask_grid: {len(boxes)} boxes but {target_masks.shape[0]} targets" + (
            "" if pred_masks is None else f" and {pred_masks.shape[0]} predictions"))
    pixels = viz._image_hwc(image)
    height, width = pixels.shape[:2]
    to_paste = (pred_masks if pred_masks is not None else target_masks).detach().float()
    pasted = paste_masks(to_paste, boxes, (0, 0, width, height)).numpy()  # (R, H, W)
    columns = 3 if pred_masks is None else 4
    fig, axes = plt.subplots(len(boxes), columns, figsize=(2.3 * columns, 2.3 * len(boxes)), squeeze=False)
    colors = viz.instance_colors(len(boxes))
    for r, row in enumerate(axes):
        row[0].imshow(pixels, interpolation="nearest")
        viz._add_box(row[0], boxes[r].tolist(), colors[r], GID_ROI_BOX, linewidth=2)
        row[0].set_title(titles[r] if titles is not None else f"RoI {r}", fontsize=8)
        target = row[1].imshow(viz._as_numpy(target_masks[r]), cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
        target.set_gid(GID_MASK_TARGET)
        row[1].set_title(f"target {target_masks.shape[-1]}x{target_masks.shape[-1]}", fontsize=8)
        if pred_masks is not None:
            pred = row[2].imshow(viz._as_numpy(pred_masks[r]), cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
            pred.set_gid(GID_MASK_PRED)
            row[2].set_title("prediction (sigmoid)", fontsize=8)
        row[-1].imshow(pixels, interpolation="nearest")
        overlay = row[-1].imshow(viz._overlay(pasted[r] >= threshold, colors[r], 0.6), interpolation="nearest")
        overlay.set_gid(GID_PASTED)
        _zoom(row[-1], boxes[r].numpy(), height, width)
        pasted_name = "prediction" if pred_masks is not None else "target"
        row[-1].set_title(f"{pasted_name} pasted (>= {threshold:g})", fontsize=8)
        for ax in row:
            ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def draw_mask_pooling(
    feature: Tensor, mask: Tensor, image: Tensor | None = None, box: Tensor | None = None, channel: int | None = None,
) -> Figure:
    """Stage 3's mask pooling for one RoI and one channel: feature, mask (resized to P x P), product.

    The product is computed by ``stage3_classify.mask_pool``, the function the model uses.

    Args:
        feature (Tensor[P, P]): one channel of the RoI's warped features.
        mask (Tensor[M, M] in [0, 1]): the RoI's soft stage-2 mask (or its target).
        image (Tensor[3, H, W] | None), box (Tensor[4] | None): when both are given, a first
            panel shows the RoI on the image (gid GID_ROI_BOX).
        channel: the channel's index, for the title.

    Returns:
        The figure: GID_FEATURE, GID_POOL_MASK and GID_POOLED images (one each); feature and
        product share one colour scale, so what the mask removes shows as the scale's zero.
    """
    feature, mask = feature.detach().float(), mask.detach().float()
    pooled = mask_pool(feature[None, None], mask[None])[0, 0]  # (1, 1, P, P) -> (P, P)
    resized = mask_pool(torch.ones_like(feature)[None, None], mask[None])[0, 0]  # the mask on the P x P grid
    show_image = image is not None and box is not None
    fig, axes = plt.subplots(1, 3 + show_image, figsize=(2.6 * (3 + show_image), 2.8))
    if show_image:
        axes[0].imshow(viz._image_hwc(image), interpolation="nearest")
        viz._add_box(axes[0], viz._as_numpy(box).reshape(4), "tab:orange", GID_ROI_BOX, linewidth=2)
        axes[0].set_title("RoI", fontsize=9)
    low, high = float(min(feature.min(), pooled.min())), float(max(feature.max(), pooled.max()))
    name = "feature" if channel is None else f"feature channel {channel}"
    size = feature.shape[-1]
    panels = ((feature, FEATURE_CMAP, (low, high), GID_FEATURE, f"{name} ({size}x{size})"),
              (resized, MASK_CMAP, (0, 1), GID_POOL_MASK, f"mask {mask.shape[-1]}x{mask.shape[-1]} -> {size}x{size}"),
              (pooled, FEATURE_CMAP, (low, high), GID_POOLED, "feature x mask"))  # fmt: skip
    for ax, (values, cmap, (vmin, vmax), gid, title) in zip(axes[show_image:], panels, strict=True):
        artist = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        artist.set_gid(gid)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def draw_class_scores(
    probs: Tensor, class_names: Sequence[str], true_labels: Tensor | None = None, titles: Sequence[str] | None = None,
) -> Figure:
    """Stage 3's (K+1)-way class probabilities of R RoIs, one bar chart per RoI.

    Args:
        probs (Tensor[R, K+1]): softmax probabilities, column 0 = background.
        class_names: K+1 names, ``"background"`` first.
        true_labels (Tensor[R], int64 | None): the training label of each RoI; its bar is green,
            the others grey, and the predicted (argmax) class is outlined in black.
        titles: one title per RoI (default: "RoI r").

    Returns:
        The figure with R axes; ``count_artists(fig, GID_SCORE_BAR) == R * (K + 1)``.
    """
    probs_np = viz._as_numpy(probs).reshape(len(probs), -1)
    if probs_np.shape[1] != len(class_names):
        raise ValueError(f"draw_class_scores: {probs_np.shape[1]} scores per RoI but {len(class_names)} class names")
    fig, axes = plt.subplots(1, len(probs_np), figsize=(2.2 * len(probs_np), 2.6), squeeze=False, sharey=True)
    labels = None if true_labels is None else viz._as_numpy(true_labels).reshape(-1)
    for r, ax in enumerate(axes[0]):
        colors = ["0.6"] * len(class_names)
        if labels is not None:
            colors[int(labels[r])] = "tab:green"
        bars = ax.bar(np.arange(len(class_names)), probs_np[r], color=colors)
        for k, bar in enumerate(bars):
            bar.set_gid(GID_SCORE_BAR)
            if k == int(probs_np[r].argmax()):
                bar.set_edgecolor("black")
                bar.set_linewidth(1.5)
        ax.set_xticks(np.arange(len(class_names)), [name[:6] for name in class_names], rotation=60, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(titles[r] if titles is not None else f"RoI {r}", fontsize=8)
    axes[0, 0].set_ylabel("probability")
    fig.tight_layout()
    return fig
