"""Boxes and anchors (notebook 01): IoU, box coding, anchors and their labels, NMS.

    draw_boxes_and_iou   two boxes, their intersection, IoU in the title
    draw_box_coding      an anchor, a ground-truth box and the deltas between them
    draw_anchors         anchors coloured by their matching label, ground truth dashed gold
    draw_best_anchor_rule  per object: its IoU >= 0.7 anchors, or its best anchor (positive by
                         the best-anchor rule) with that IoU written
    draw_nms             boxes before and after non-maximum suppression

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, R anchors or boxes, G ground-truth boxes.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import Tensor

from mnc_teach.boxes import box_area, box_iou
from mnc_teach.viz.common import (
    GID_BOX,
    GID_GT,
    add_box,
    add_gt_boxes,
    as_numpy,
    fit_view,
    image_hwc,
    instance_colors,
    new_axes,
)

__all__ = [
    "DEFAULT_MAX_PER_KIND", "GID_ANCHORS", "GID_BEST_ANCHOR", "GID_INTERSECTION",
    "draw_anchors", "draw_best_anchor_rule", "draw_box_coding", "draw_boxes_and_iou", "draw_nms",
]

GID_ANCHORS = "anchors"  # one PatchCollection per anchor kind; gid "anchors-<kind>"
GID_INTERSECTION = "intersection"  # the shaded intersection of draw_boxes_and_iou
GID_BEST_ANCHOR = "best-anchor"  # draw_best_anchor_rule: one Rectangle per rescued best anchor
BEST_ANCHOR_COLOR = "magenta"
ANCHOR_STYLE = {  # kind -> (colour, line alpha, line width); positives stand out, negatives faint
    "positive": ("tab:green", 0.9, 1.5),
    "negative": ("tab:red", 0.3, 0.6),
    "ignored": ("0.5", 0.3, 0.6),
    "all": ("tab:purple", 0.9, 1.2),
}
DEFAULT_MAX_PER_KIND = 100  # at most this many anchors of each kind (128x128 px: ~2k anchors)


def _as_box(box) -> Tensor:
    return torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)


def draw_boxes_and_iou(box_a, box_b, ax: Axes | None = None) -> Figure:
    """Two boxes, their intersection shaded, and IoU = intersection / union in the title.

    Args:
        box_a, box_b (sequence of 4 floats or Tensor[4], xyxy pixels).

    Returns:
        The figure: the two boxes (gid GID_BOX) and the intersection (gid GID_INTERSECTION,
        drawn only when the boxes overlap).
    """
    fig, ax = new_axes(ax, (4, 4))
    a, b = _as_box(box_a)[0], _as_box(box_b)[0]
    iou = box_iou(a[None], b[None])[0, 0].item()
    ix1, iy1 = torch.maximum(a[:2], b[:2]).tolist()
    ix2, iy2 = torch.minimum(a[2:], b[2:]).tolist()
    inter = max(ix2 - ix1, 0.0) * max(iy2 - iy1, 0.0)
    union = float(box_area(torch.stack([a, b])).sum()) - inter
    if inter > 0:
        shaded = Rectangle((ix1, iy1), ix2 - ix1, iy2 - iy1, facecolor="tab:purple", alpha=0.35)
        shaded.set_gid(GID_INTERSECTION)
        ax.add_patch(shaded)
    add_box(ax, a, "tab:blue", GID_BOX, linewidth=2)
    add_box(ax, b, "tab:orange", GID_BOX, linewidth=2)
    ax.text(a[0], a[1], " A", color="tab:blue", va="top", fontsize=10)
    ax.text(b[0], b[1], " B", color="tab:orange", va="top", fontsize=10)
    fit_view(ax, torch.stack([a, b]).numpy(), margin=0.05)
    ax.set_title(f"IoU = {inter:.1f} / {union:.1f} = {iou:.3f}", fontsize=9)
    return fig


def draw_box_coding(ref_box, gt_box, deltas=None, ax: Axes | None = None) -> Figure:
    """An anchor (reference box), a ground-truth box, and the deltas that move one onto the other.

    Args:
        ref_box, gt_box (sequence of 4 floats or Tensor[4], xyxy pixels).
        deltas (Tensor[4] | None): ``(dx, dy, dw, dh)`` to print in the title (e.g. from
            ``boxes.encode_boxes``); not drawn when ``None``.

    Returns:
        The figure: both boxes (gid GID_BOX), their centres and an arrow between them.
    """
    fig, ax = new_axes(ax, (4, 4))
    ref, gt = _as_box(ref_box)[0], _as_box(gt_box)[0]
    add_box(ax, ref, "tab:blue", GID_BOX, linewidth=2, linestyle="--")
    add_box(ax, gt, "tab:green", GID_BOX, linewidth=2)
    (rx, ry), (gx, gy) = ((ref[:2] + ref[2:]) / 2).tolist(), ((gt[:2] + gt[2:]) / 2).tolist()
    ax.plot([rx], [ry], "o", color="tab:blue", label="anchor (reference)")
    ax.plot([gx], [gy], "o", color="tab:green", label="ground truth")
    ax.annotate("", xy=(gx, gy), xytext=(rx, ry), arrowprops={"arrowstyle": "->", "color": "k"})
    fit_view(ax, torch.stack([ref, gt]).numpy(), margin=0.1)
    ax.legend(loc="best", fontsize=8)
    if deltas is not None:
        dx, dy, dw, dh = (float(v) for v in as_numpy(deltas).reshape(-1)[:4])
        ax.set_title(f"dx={dx:.2f} dy={dy:.2f} dw={dw:.2f} dh={dh:.2f}", fontsize=9)
    return fig


def _pick(indices: np.ndarray, max_count: int, seed: int) -> np.ndarray:
    """At most ``max_count`` of ``indices``, drawn with a fixed seed (the same picture each time).
    """
    if len(indices) <= max_count:
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, size=max_count, replace=False))


def _anchor_kinds(labels: Tensor | None, num_anchors: int) -> dict[str, np.ndarray]:
    """Anchor indices of each kind, in drawing order (positives last, on top)."""
    if labels is None:
        return {"all": np.arange(num_anchors)}
    labels_np = as_numpy(labels).reshape(-1)
    return {"ignored": np.flatnonzero(labels_np == -1), "negative": np.flatnonzero(labels_np == 0),
            "positive": np.flatnonzero(labels_np == 1)}


def _add_anchor_kind(ax: Axes, anchors: np.ndarray, kind: str, shown: np.ndarray,
                     total: int) -> Patch:
    """One PatchCollection of the ``shown`` anchors of ``kind``; returns its legend handle."""
    color, alpha, linewidth = ANCHOR_STYLE[kind]
    rects = [Rectangle((a[0], a[1]), a[2] - a[0], a[3] - a[1]) for a in anchors[shown]]
    collection = PatchCollection(rects, facecolor="none", edgecolor=color, alpha=alpha,
                                 linewidth=linewidth)
    collection.set_gid(f"{GID_ANCHORS}-{kind}")
    ax.add_collection(collection)
    drawn = f" ({len(shown)} drawn)" if len(shown) < total else ""
    name = "anchors" if kind == "all" else kind
    return Patch(facecolor="none", edgecolor=color, label=f"{name}: {total}{drawn}")


def _legend_beside(fig: Figure, ax: Axes, handles: list, owns_figure: bool) -> None:
    """The legend right of the picture in a figure of its own, else inside the given axes."""
    if owns_figure:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
                  frameon=False)
        fig.subplots_adjust(left=0.02, right=0.64, bottom=0.02, top=0.92)
    else:  # inside the given axes, so it cannot spill over a neighbouring panel
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.8)


def draw_anchors(
    image: Tensor | None, anchors: Tensor, labels: Tensor | None = None,
    gt_boxes: Tensor | None = None, *, ax: Axes | None = None,
    max_per_kind: int = DEFAULT_MAX_PER_KIND, image_size: tuple[int, int] | None = None,
    seed: int = 0, title: str | None = None,
) -> Figure:
    """Draw anchors, coloured by their matching label when given.

    Args:
        image (Tensor[3, H, W] | None): background image; ``None`` draws on a white canvas
            of ``image_size`` (H, W), or fitted to the anchors when that is ``None`` too.
        anchors (Tensor[R, 4], float32, xyxy pixels).
        labels (Tensor[R], int64 in {1, 0, -1} | None): from ``matching.label_anchors``:
            positives green, negatives faint red, ignored grey. ``None``: all in purple.
        gt_boxes (Tensor[G, 4] | None): ground-truth boxes, drawn as thick dashed gold.
        max_per_kind: at most this many anchors of each kind are drawn (a fixed-seed random
            subset), so a picture of 20k anchors stays readable; the legend gives full counts.
        seed: seed of that subset.

    Returns:
        The figure; anchors of kind k are one PatchCollection with gid ``"anchors-<k>"``
        (``count_artists(fig, "anchors-positive")``), GT boxes have gid GID_GT.
    """
    owns_figure = ax is None
    fig, ax = new_axes(ax, (6.4, 4.2))
    anchors_np = as_numpy(anchors).reshape(-1, 4)
    if image is not None:
        pixels = image_hwc(image)
        ax.imshow(pixels, interpolation="nearest")
        image_size = pixels.shape[:2]
    if image_size is not None:
        fit_view(ax, [[0, 0, image_size[1], image_size[0]]], margin=0.0)
    else:  # fitted to the anchors, with a margin so the outermost edges are not on the frame
        fit_view(ax, anchors_np, margin=0.05)
    kinds = _anchor_kinds(labels, len(anchors_np))
    handles = [_add_anchor_kind(ax, anchors_np, kind, _pick(indices, max_per_kind, seed),
                                len(indices)) for kind, indices in kinds.items()]
    add_gt_boxes(ax, gt_boxes, linewidth=2.5)
    if gt_boxes is not None:
        handles.append(Patch(facecolor="none", edgecolor="gold", linestyle="--",
                             label="ground truth"))
    _legend_beside(fig, ax, handles[::-1], owns_figure)
    if image is not None:
        ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=9)
    return fig


def draw_best_anchor_rule(
    image: Tensor, anchors: Tensor, gt_boxes: Tensor, *, positive_iou: float = 0.7,
    ax: Axes | None = None, title: str | None = None,
) -> Figure:
    """Faster R-CNN's two positive rules on one image, object by object.

    An object with anchors at IoU >= ``positive_iou`` gets those as positives (rule 1, green).
    An object with none gets its best anchor(s) (the largest IoU, ties included) as positives
    anyway (rule 2, the best-anchor rule): drawn thick magenta with that IoU written on it.

    Args:
        image (Tensor[3, H, W], float in [0, 1]): background.
        anchors (Tensor[T, 4], xyxy pixels): the anchors that take part (those inside the image).
        gt_boxes (Tensor[G, 4], xyxy pixels): the objects, drawn dashed gold (gid GID_GT).
        positive_iou: the IoU of rule 1 (the paper's 0.7).

    Returns:
        The figure: rule-1 positives as one PatchCollection with gid ``"anchors-positive"``,
        one Rectangle (gid GID_BEST_ANCHOR) and one text ``"IoU 0.52"`` per rescued anchor.
    """
    owns_figure = ax is None
    fig, ax = new_axes(ax, (6.4, 4.2))
    pixels = image_hwc(image)
    ax.imshow(pixels, interpolation="nearest")
    anchors = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 4)
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
    iou = box_iou(gt_boxes, anchors)  # (G, T)
    best = iou.max(dim=1).values if anchors.numel() else iou.new_zeros(len(gt_boxes))  # (G,)
    by_rule_1 = (iou >= positive_iou).any(dim=0)  # (T,)
    rescued = (iou == best[:, None]) & (best < positive_iou)[:, None] & (best > 0)[:, None]
    positives = np.flatnonzero(as_numpy(by_rule_1))
    rule_1 = _add_anchor_kind(ax, as_numpy(anchors), "positive", positives, len(positives))
    rule_1.set_label(f"IoU ≥ {positive_iou:g} (positive): {len(positives)}")
    for g, box in enumerate(as_numpy(gt_boxes)):  # dashed over the positives: both stay visible
        add_box(ax, box, "gold", GID_GT, linewidth=2.5, linestyle="--")
        ax.text(box[0] + 1, box[3] - 1, f"object {g}", color="black", fontsize=7, va="bottom",
                bbox={"facecolor": "gold", "alpha": 0.8, "pad": 1, "linewidth": 0})
    for g, t in torch.nonzero(rescued).tolist():
        add_box(ax, anchors[t], BEST_ANCHOR_COLOR, GID_BEST_ANCHOR, linewidth=2.5)
        x1, y1 = anchors[t, :2].tolist()
        ax.text(x1 + 1, y1 + 1, f"IoU {iou[g, t].item():.2f}", color=BEST_ANCHOR_COLOR, fontsize=8,
                va="top", bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "linewidth": 0})
    num_rescued = int(rescued.any(dim=1).sum())
    handles = [
        Patch(facecolor="none", edgecolor="gold", linestyle="--",
              label=f"objects: {len(gt_boxes)}"),
        rule_1,
        Patch(facecolor="none", edgecolor=BEST_ANCHOR_COLOR,
              label=f"best anchor, IoU < {positive_iou:g}\n(positive by the rule): {num_rescued}"),
    ]
    _legend_beside(fig, ax, handles, owns_figure)
    if owns_figure:
        fig.subplots_adjust(top=0.88)  # room for a title of two lines
    fit_view(ax, [[0, 0, pixels.shape[1], pixels.shape[0]]], margin=0.0)
    ax.set_axis_off()
    if title is None:
        title = (f"{num_rescued} of {len(gt_boxes)} objects have no anchor at IoU ≥ "
                 f"{positive_iou:g}:\ntheir best anchor is positive anyway")
    ax.set_title(title, fontsize=9)
    return fig


def draw_nms(
    boxes: Tensor, scores: Tensor, keep: Tensor, *, image: Tensor | None = None,
    iou_threshold: float | None = None,
) -> Figure:
    """Boxes before and after non-maximum suppression, side by side.

    Args:
        boxes (Tensor[R, 4], float32, xyxy pixels); scores (Tensor[R], float32).
        keep (Tensor[K], int64): indices kept by NMS (e.g. ``boxes.nms(boxes, scores, thr)``).
        image (Tensor[3, H, W] | None): drawn under the boxes when given.
        iou_threshold: printed in the right title when given.

    Returns:
        A figure with two axes: left has R boxes, right has K boxes (gid GID_BOX); a box
        keeps its colour in both panels and its score is printed at its corner.
    """
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    boxes_np, scores_np = as_numpy(boxes).reshape(-1, 4), as_numpy(scores).reshape(-1)
    keep_np = as_numpy(keep).reshape(-1).astype(np.int64)
    colors = instance_colors(len(boxes_np))
    suffix = "" if iou_threshold is None else f" (IoU threshold {iou_threshold:g})"
    panels = ((axes[0], np.arange(len(boxes_np)), f"before NMS: {len(boxes_np)} boxes"),
              (axes[1], keep_np, f"after NMS: {len(keep_np)} kept{suffix}"))
    for ax, indices, title in panels:
        if image is not None:
            ax.imshow(image_hwc(image), interpolation="nearest")
        for i in indices:
            add_box(ax, boxes_np[i], colors[i], GID_BOX, linewidth=1.5)
            ax.text(boxes_np[i, 0], boxes_np[i, 1], f"{scores_np[i]:.2f}", fontsize=7,
                    color=colors[i], va="bottom")
        if image is None:
            fit_view(ax, boxes_np, margin=0.05)  # both panels show the same region
        else:
            ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
