"""Evaluation (notebook 08): mask IoU, matching, precision/recall curves, failures.

    mask IoU   draw_mask_iou (the pixels of A only, B only, both)
    matching   draw_matching (GT outlines, detections coloured TP / FP, with captions)
    curves     draw_ap_variants (one PR curve: envelope, area AP, VOC07 points), draw_pr_curves
    failures   draw_failure_gallery (rows of crops: GT outline vs predicted mask)

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, G GT instances, D detections, N points of a
curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from mnc_teach.evaluation.sds import VOC07_RECALL_POINTS, average_precision
from mnc_teach.viz.common import as_numpy, image_hwc, mask_overlay, new_axes

__all__ = [
    "GID_IOU_PIXELS", "GID_GT_OUTLINE", "GID_TP_MASK", "GID_FP_MASK", "GID_PRED_MASK",
    "GID_DET_LABEL", "GID_PR_CURVE", "GID_ENVELOPE", "GID_AP_AREA", "GID_VOC07_POINTS",
    "IOU_COLORS", "GalleryItem",
    "mask_outline", "draw_mask_iou", "draw_matching", "draw_ap_variants", "draw_pr_curves",
    "draw_failure_gallery",
]

GID_IOU_PIXELS = "iou-pixels"  # the image of draw_mask_iou (one colour per pixel kind)
GID_GT_OUTLINE = "gt-outline"  # one GT instance, drawn as its boundary pixels
GID_TP_MASK = "tp-mask"  # a detection matched to a GT (filled)
GID_FP_MASK = "fp-mask"  # a detection not matched (filled)
GID_PRED_MASK = "pred-mask"  # a predicted mask in the failure gallery (filled)
GID_DET_LABEL = "detection-label"  # the caption of one detection
GID_PR_CURVE = "pr-curve"  # one precision/recall line (one class, one IoU threshold)
GID_ENVELOPE = "precision-envelope"  # the monotone envelope of a PR curve (step line)
GID_AP_AREA = "ap-area"  # the area under the envelope: area AP
GID_VOC07_POINTS = "voc07-points"  # one Line2D holding the 11 points of VOC07 AP

# pixel kinds of draw_mask_iou: neither, A only, B only, both (RGB in [0, 1])
IOU_COLORS = np.array([[1.0, 1.0, 1.0], [0.55, 0.75, 1.0], [1.0, 0.75, 0.45], [0.45, 0.2, 0.6]])
GT_COLOR = "gold"
TP_COLOR = (0.1, 0.7, 0.2)
FP_COLOR = (0.9, 0.15, 0.1)
PRED_COLOR = (0.2, 0.5, 1.0)
MASK_ALPHA = 0.45
MIN_CROP_SIDE = 24  # gallery crops show at least this many pixels per side
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # RGB -> grey (ITU-R BT.601)


class GalleryItem(NamedTuple):
    """One crop of the failure gallery: a GT instance, a predicted mask, or both, on their image."""

    image: Tensor  # [3, H, W] float in [0, 1]
    gt_mask: np.ndarray | Tensor | None  # [H, W] nonzero = inside
    pred_mask: np.ndarray | Tensor | None  # [H, W] nonzero = inside (binarised prediction)
    caption: str


def mask_outline(mask: np.ndarray | Tensor) -> np.ndarray:
    """Boundary pixels of a binary mask [H, W]: inside pixels with a 4-neighbour outside (or on
    the border)."""
    inside = as_numpy(mask) != 0
    padded = np.pad(inside, 1, constant_values=False)  # (H+2, W+2)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~interior


def _add_outline(ax: Axes, mask, color, gid: str) -> None:
    outline = mask_overlay(mask_outline(mask), to_rgb(color), 1.0)
    ax.imshow(outline, interpolation="nearest").set_gid(gid)


def _add_fill(ax: Axes, mask, color, gid: str) -> None:
    """The mask filled (MASK_ALPHA) with its boundary opaque, in one image artist."""
    inside = as_numpy(mask) != 0
    rgba = mask_overlay(inside, to_rgb(color), MASK_ALPHA)  # (H, W, 4)
    rgba[mask_outline(inside), 3] = 1.0
    ax.imshow(rgba, interpolation="nearest").set_gid(gid)


def _show_grey(ax: Axes, image: Tensor) -> tuple[int, int]:
    """The image in grey levels, so that the coloured masks over it stand out; returns (H, W)."""
    grey = image_hwc(image) @ LUMA_WEIGHTS  # (H, W, 3) -> (H, W)
    ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    return grey.shape


def draw_mask_iou(
    mask_a: np.ndarray | Tensor, mask_b: np.ndarray | Tensor, names: tuple[str, str] = ("A", "B"),
    ax: Axes | None = None, title: str | None = None,
) -> Figure:
    """Two binary masks [H, W] pixel by pixel: A only, B only, both; IoU = |A n B| / |A u B|.

    Returns:
        The figure: one image (gid GID_IOU_PIXELS) coloured with IOU_COLORS[kind], kind = A + 2 B
        (0 neither, 1 A only, 2 B only, 3 both), a legend with each kind's pixel count, and pixel
        grid lines when the masks are at most 32 pixels wide.
    """
    a, b = as_numpy(mask_a) != 0, as_numpy(mask_b) != 0
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"draw_mask_iou: masks {a.shape} and {b.shape}; expected two masks "
                         "[H, W] of one size")
    fig, ax = new_axes(ax, (4.0, 4.0))
    kind = a.astype(np.int64) + 2 * b.astype(np.int64)  # (H, W) in 0..3
    ax.imshow(IOU_COLORS[kind], interpolation="nearest").set_gid(GID_IOU_PIXELS)
    height, width = a.shape
    if width <= 32:
        ax.set_xticks(np.arange(-0.5, width, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, height, 1), minor=True)
        ax.grid(which="minor", color="0.8", linewidth=0.5)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    else:
        ax.set_axis_off()
    intersection, union = int((a & b).sum()), int((a | b).sum())
    counts = [int((kind == k).sum()) for k in (1, 2, 3)]
    labels = [f"{names[0]} only ({counts[0]})", f"{names[1]} only ({counts[1]})",
              f"both ({counts[2]})"]
    handles = [Patch(facecolor=IOU_COLORS[k], edgecolor="0.4", label=label)
               for k, label in zip((1, 2, 3), labels, strict=True)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    iou = intersection / union if union else 0.0
    if title is None:
        title = f"IoU = {intersection} / {union} = {iou:.3f}"
    ax.set_title(title, fontsize=9)
    return fig


def draw_matching(
    image: Tensor, gt_masks: np.ndarray | Tensor, det_masks: np.ndarray | Tensor,
    det_is_tp: Sequence[bool], det_captions: Sequence[str], *, ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """GT instances (gold outlines) and detections (filled, green TP, red FP) on an image in grey.

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        gt_masks ([G, H, W]) and det_masks ([D, H, W]): binary, nonzero = inside.
        det_is_tp ([D] bool): the matching's verdict for each detection.
        det_captions: D short strings (e.g. the rank) written inside each mask's top-left corner.

    Returns:
        The figure; G outlines (GID_GT_OUTLINE), the D detections as GID_TP_MASK or GID_FP_MASK
        overlays, D captions (GID_DET_LABEL).
    """
    gts = as_numpy(gt_masks).reshape(-1, *image.shape[-2:])
    dets = as_numpy(det_masks).reshape(-1, *image.shape[-2:])
    if not len(dets) == len(det_is_tp) == len(det_captions):
        raise ValueError(f"draw_matching: {len(dets)} detection masks, {len(det_is_tp)} TP flags "
                         f"and {len(det_captions)} captions; pass one of each per detection")
    fig, ax = new_axes(ax, (4.5, 4.5))
    _show_grey(ax, image)
    for mask, is_tp, caption in zip(dets, det_is_tp, det_captions, strict=True):
        color = TP_COLOR if is_tp else FP_COLOR
        _add_fill(ax, mask, color, GID_TP_MASK if is_tp else GID_FP_MASK)
        rows, cols = np.nonzero(mask)
        x, y = (cols.min(), rows.min()) if len(rows) else (0, 0)
        text = ax.text(x, y, caption, fontsize=7, color="white", va="top",
                       bbox={"facecolor": color, "alpha": 0.85, "pad": 1, "edgecolor": "none"})
        text.set_gid(GID_DET_LABEL)
    for mask in gts:
        _add_outline(ax, mask, GT_COLOR, GID_GT_OUTLINE)
    handles = [Patch(facecolor="none", edgecolor=GT_COLOR, label="ground truth"),
               Patch(facecolor=TP_COLOR, alpha=0.6, label="TP"),
               Patch(facecolor=FP_COLOR, alpha=0.6, label="FP")]
    ax.legend(handles=handles, fontsize=7, loc="lower left", framealpha=0.8)
    ax.set_axis_off()
    if title is None:
        title = f"{len(gts)} GT, {len(dets)} detections"
    ax.set_title(title, fontsize=9)
    return fig


def draw_ap_variants(
    recall: np.ndarray, precision: np.ndarray, ax: Axes | None = None, title: str | None = None
) -> Figure:
    """One PR curve and the two AP definitions of ``evaluate.average_precision`` on it.

    "area" is the area under the monotone envelope (shaded); "voc07" the mean of the envelope's
    value at recall 0, 0.1, ..., 1 (the 11 markers). The title gives both numbers.

    Returns:
        The figure: the raw curve (GID_PR_CURVE), the envelope (GID_ENVELOPE), the shaded area
        (GID_AP_AREA) and one line of 11 markers (GID_VOC07_POINTS).
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    fig, ax = new_axes(ax, (4.5, 3.6))
    padded_recall = np.concatenate([[0.0], recall, [1.0]])  # as average_precision(method="area")
    envelope = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    ax.fill_between(padded_recall, envelope, step="pre", color="tab:blue", alpha=0.2,
                    gid=GID_AP_AREA)
    ax.plot(padded_recall, envelope, drawstyle="steps-pre", color="tab:blue", lw=1.5,
            gid=GID_ENVELOPE, label="envelope (area = AP)")
    ax.plot(recall, precision, color="0.4", lw=0.8, marker=".", ms=3, gid=GID_PR_CURVE,
            label="precision")
    points = [precision[recall >= point].max(initial=0.0) for point in VOC07_RECALL_POINTS]
    ax.plot(VOC07_RECALL_POINTS, points, ls="none", marker="o", ms=5, mfc="none", color="tab:red",
            gid=GID_VOC07_POINTS, label="VOC07 points")
    area = average_precision(recall, precision, "area")
    voc07 = average_precision(recall, precision, "voc07")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall", fontsize=8)
    ax.set_ylabel("precision", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    suffix = f"area AP {area:.3f}, VOC07 AP {voc07:.3f}"
    ax.set_title(f"{title}: {suffix}" if title else suffix, fontsize=9)
    return fig


def draw_pr_curves(
    curves: Mapping[float, Sequence[tuple[np.ndarray, np.ndarray]]], class_names: Sequence[str],
    *, ap: Mapping[float, np.ndarray] | None = None, ncols: int = 3, title: str | None = None,
) -> Figure:
    """Precision/recall curves per class (one panel each), one line per IoU threshold.

    Args:
        curves: ``threshold -> [(recall [N], precision [N]) per class]``, e.g. ``SDSResult.curves``.
        class_names: the K foreground names, in the order of the curves.
        ap: ``threshold -> [K]`` AP to print in the legend (e.g. ``SDSResult.ap["area"]``).

    Returns:
        The figure: one axes per class titled with its name; one GID_PR_CURVE line per
        (class, threshold) that has detections and GT; a note instead for "no GT" / "no detections".
    """
    num_classes = len(class_names)
    for threshold, per_class in curves.items():
        if len(per_class) != num_classes:
            raise ValueError(f"draw_pr_curves: {len(per_class)} curves at IoU {threshold} for "
                             f"{num_classes} classes; pass the K foreground names")
    nrows = max(1, math.ceil(num_classes / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for k, (ax, name) in enumerate(zip(axes.flat, class_names, strict=False)):
        notes = []
        for j, (threshold, per_class) in enumerate(curves.items()):
            recall, precision = (np.asarray(v, np.float64) for v in per_class[k])
            if len(recall) == 0 or np.isnan(recall).all():
                notes.append("no detections" if len(recall) == 0 else "no GT")
                continue
            label = f"IoU {threshold:g}"
            if ap is not None:
                label += f": AP {ap[threshold][k]:.3f}"
            ax.plot(recall, precision, color=colors(j % 10), lw=1.3, gid=GID_PR_CURVE, label=label)
        if notes:
            ax.text(0.5, 0.5, ", ".join(sorted(set(notes))), ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
        if ax.lines:
            ax.legend(fontsize=7, loc="lower left")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[num_classes:]:
        ax.set_axis_off()
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _crop(ax: Axes, masks: Sequence[np.ndarray], height: int, width: int, margin: float) -> None:
    """Zoom on the union of the masks' extents plus ``margin`` of the larger side (at least
    MIN_CROP_SIDE)."""
    inside = np.zeros((height, width), dtype=bool)
    for mask in masks:
        inside |= mask
    rows, cols = np.nonzero(inside)
    if len(rows) == 0:
        rows, cols = np.array([0, height - 1]), np.array([0, width - 1])
    y1, y2, x1, x2 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(MIN_CROP_SIDE, (1 + 2 * margin) * max(y2 - y1, x2 - x1))
    cy, cx = (y1 + y2) / 2, (x1 + x2) / 2
    ax.set_xlim(max(cx - side / 2, 0) - 0.5, min(cx + side / 2, width) - 0.5)
    ax.set_ylim(min(cy + side / 2, height) - 0.5, max(cy - side / 2, 0) - 0.5)


def draw_failure_gallery(
    rows: Mapping[str, Sequence[GalleryItem]], *, ncols: int = 4, margin: float = 0.25,
    title: str | None = None,
) -> Figure:
    """Rows of image crops (in grey), one per kind of failure: GT outlined gold, prediction filled.

    Args:
        rows: ``row name -> items`` (e.g. "false positives", "missed instances", "poor masks");
            each row shows its first ``ncols`` items, a row without items says "none".
        margin: the crop around an item's masks, as a fraction of their larger side.

    Returns:
        The figure with ``len(rows) * ncols`` axes; one GID_GT_OUTLINE per item with a GT mask,
        one GID_PRED_MASK per item with a predicted mask; each axes titled with its caption.
    """
    figsize = (2.4 * ncols, 2.6 * len(rows))
    fig, axes = plt.subplots(len(rows), ncols, figsize=figsize, squeeze=False)
    for ax_row, (row_name, items) in zip(axes, rows.items(), strict=True):
        for ax, item in zip(ax_row, list(items)[:ncols], strict=False):
            height, width = _show_grey(ax, item.image)
            shown = []
            if item.pred_mask is not None:
                shown.append(as_numpy(item.pred_mask) != 0)
                _add_fill(ax, shown[-1], PRED_COLOR, GID_PRED_MASK)
            if item.gt_mask is not None:
                shown.append(as_numpy(item.gt_mask) != 0)
                _add_outline(ax, shown[-1], GT_COLOR, GID_GT_OUTLINE)
            _crop(ax, shown, height, width, margin)
            ax.set_title(item.caption, fontsize=7)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            if not ax.images:
                ax.set_axis_off()
        ax_row[0].text(-0.12, 0.5, row_name, rotation=90, ha="right", va="center", fontsize=9,
                       transform=ax_row[0].transAxes)
        if not items:
            ax_row[0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=9,
                           transform=ax_row[0].transAxes)
    fig.legend(handles=[Patch(facecolor="none", edgecolor=GT_COLOR, label="ground truth"),
                        Patch(facecolor=PRED_COLOR, alpha=0.6, label="prediction")],
               fontsize=8, loc="lower center", ncol=2)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.03, 0.05, 1, 1))
    return fig
