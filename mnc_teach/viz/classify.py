"""Stage 3's classification (notebook 05): mask pooling of the RoI features, and class scores.

    draw_mask_pooling   one feature channel, the mask on its grid, and their product
    draw_class_scores   the (K+1)-way probabilities of each RoI, one bar chart per RoI
    draw_regression_iou IoU with the object before vs after stage 3's box regression

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, R RoIs, P RoI-feature side, M mask side,
K foreground classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from mnc_teach.stage3_classify import mask_pool
from mnc_teach.viz.common import add_box, as_numpy, draw_iou_histograms, image_hwc
from mnc_teach.viz.masks import GID_ROI_BOX, MASK_CMAP

__all__ = [
    "GID_DIAGONAL", "GID_FEATURE", "GID_IOU_POINTS", "GID_POOL_MASK", "GID_POOLED",
    "GID_SCORE_BAR", "draw_class_scores", "draw_mask_pooling", "draw_regression_iou",
]

GID_FEATURE = "feature-map"  # one channel of RoI features, P x P
GID_POOL_MASK = "pool-mask"  # the soft mask resized to P x P
GID_POOLED = "pooled-feature"  # feature channel x mask
GID_SCORE_BAR = "score-bar"  # one bar per (RoI, class)
GID_IOU_POINTS = "iou-points"  # the scatter of (IoU before, IoU after), one point per RoI
GID_DIAGONAL = "iou-diagonal"  # the line "after = before"

FEATURE_CMAP = "magma"


def draw_mask_pooling(
    feature: Tensor, mask: Tensor, image: Tensor | None = None, box: Tensor | None = None, *,
    channel: int | None = None,
) -> Figure:
    """Stage 3's mask pooling of one RoI and one channel: feature, mask (on P x P), product.

    The product is computed by ``stage3_classify.mask_pool``, the function the model uses.

    Args:
        feature (Tensor[P, P]): one channel of the RoI's warped features.
        mask (Tensor[M, M] in [0, 1]): the RoI's soft stage-2 mask (or its target).
        image (Tensor[3, H, W] | None), box (Tensor[4] | None): when both are given, a first
            panel shows the RoI on the image (gid ``viz.masks.GID_ROI_BOX``).
        channel: the channel's index, for the title.

    Returns:
        The figure: GID_FEATURE, GID_POOL_MASK and GID_POOLED images (one each); feature and
        product share one colour scale, so what the mask removes shows as the scale's zero.
    """
    feature, mask = feature.detach().float(), mask.detach().float()
    pooled = mask_pool(feature[None, None], mask[None])[0, 0]  # (1, 1, P, P) -> (P, P)
    resized = mask_pool(torch.ones_like(feature)[None, None], mask[None])[0, 0]  # mask on P x P
    show_image = image is not None and box is not None
    fig, axes = plt.subplots(1, 3 + show_image, figsize=(2.6 * (3 + show_image), 2.8))
    if show_image:
        axes[0].imshow(image_hwc(image), interpolation="nearest")
        add_box(axes[0], as_numpy(box).reshape(4), "tab:orange", GID_ROI_BOX, linewidth=2)
        axes[0].set_title("RoI", fontsize=9)
    low, high = float(min(feature.min(), pooled.min())), float(max(feature.max(), pooled.max()))
    name = "feature" if channel is None else f"feature channel {channel}"
    size, side = feature.shape[-1], mask.shape[-1]
    panels = (
        (feature, FEATURE_CMAP, (low, high), GID_FEATURE, f"{name} ({size}x{size})"),
        (resized, MASK_CMAP, (0, 1), GID_POOL_MASK, f"mask {side}x{side} -> {size}x{size}"),
        (pooled, FEATURE_CMAP, (low, high), GID_POOLED, "feature x mask"),
    )
    for ax, (values, cmap, (vmin, vmax), gid, title) in zip(axes[show_image:], panels, strict=True):
        artist = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        artist.set_gid(gid)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def draw_class_scores(
    probs: Tensor, class_names: Sequence[str], true_labels: Tensor | None = None, *,
    titles: Sequence[str] | None = None,
) -> Figure:
    """Stage 3's (K+1)-way class probabilities of R RoIs, one bar chart per RoI.

    Args:
        probs (Tensor[R, K+1]): softmax probabilities, column 0 = background.
        class_names: K+1 names, ``"background"`` first.
        true_labels (Tensor[R], int64 | None): the training label of each RoI; its bar is
            green, the others grey, and the predicted (argmax) class is outlined in black.
        titles: one title per RoI (default: "RoI r").

    Returns:
        The figure with R axes; ``count_artists(fig, GID_SCORE_BAR) == R * (K + 1)``.
    """
    probs_np = as_numpy(probs).reshape(len(probs), -1)
    if probs_np.shape[1] != len(class_names):
        raise ValueError(f"draw_class_scores: {probs_np.shape[1]} scores per RoI but "
                         f"{len(class_names)} class names")
    fig, axes = plt.subplots(1, len(probs_np), figsize=(2.2 * len(probs_np), 2.6), squeeze=False,
                             sharey=True)
    labels = None if true_labels is None else as_numpy(true_labels).reshape(-1)
    positions = np.arange(len(class_names))
    for r, ax in enumerate(axes[0]):
        colors = ["0.6"] * len(class_names)
        if labels is not None:
            colors[int(labels[r])] = "tab:green"
        bars = ax.bar(positions, probs_np[r], color=colors)
        for k, bar in enumerate(bars):
            bar.set_gid(GID_SCORE_BAR)
            if k == int(probs_np[r].argmax()):
                bar.set_edgecolor("black")
                bar.set_linewidth(1.5)
        ax.set_xticks(positions, [name[:6] for name in class_names], rotation=60, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(titles[r] if titles is not None else f"RoI {r}", fontsize=8)
    axes[0, 0].set_ylabel("probability")
    fig.tight_layout()
    return fig


def draw_regression_iou(iou_before: Tensor, iou_after: Tensor, *, title: str = "") -> Figure:
    """Stage 3's box regression judged by IoU with each RoI's object: a scatter of the IoU
    after vs before, with the diagonal (above it: the box moved closer), and both histograms.

    Args:
        iou_before (Tensor[R]): IoU of each RoI (a proposal) with its object.
        iou_after (Tensor[R]): IoU of the regressed box with the same object.

    Returns:
        The figure with 2 axes: one GID_IOU_POINTS collection of R points, one GID_DIAGONAL
        line, and two ``viz.common.GID_IOU_HIST`` histograms.
    """
    before = as_numpy(iou_before).reshape(-1).astype(np.float64)
    after = as_numpy(iou_after).reshape(-1).astype(np.float64)
    if before.shape != after.shape:
        raise ValueError(f"draw_regression_iou: {len(before)} IoUs before but {len(after)} after")
    fig, (scatter, hist) = plt.subplots(1, 2, figsize=(10, 4))
    better = after > before
    colors = np.where(better, "tab:green", "tab:red")
    scatter.scatter(before, after, s=8, c=colors, alpha=0.6).set_gid(GID_IOU_POINTS)
    scatter.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1)[0].set_gid(GID_DIAGONAL)
    low = float(min(before.min(initial=1.0), after.min(initial=1.0)))
    scatter.set(xlim=(min(low, 0.5) - 0.02, 1.0), ylim=(min(low, 0.5) - 0.02, 1.0),
                aspect="equal", xlabel="IoU of the proposal", ylabel="IoU after the regression",
                title=f"{int(better.sum())} of {len(before)} RoIs move closer (green)")
    draw_iou_histograms({"proposals": iou_before, "regressed boxes": iou_after}, ax=hist,
                        title="the same RoIs", xlabel="IoU with the object")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
