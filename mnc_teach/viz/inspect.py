"""Inspecting a trained cascade (notebook 07), after matterport's ``inspect_model`` notebook.

    TraceStep, format_trace, draw_trace
                          one image from the anchors to the final detections: the boxes of
                          every step, counted (a table) and drawn (a row of panels)
    nms_trace, format_nms_trace
                          greedy NMS of one class, decision by decision: kept, or suppressed
                          by which kept box at which IoU
    draw_feature_channels the image, the mean of the feature map and a few of its channels
    weight_statistics, format_weight_table, draw_weight_histograms
                          mean, std, min and max of every parameter tensor; histograms of some

Every function takes plain tensors (or any ``nn.Module`` for the weights), so this module never
runs a model. Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, B boxes, C channels, h, w feature-map size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from mnc_teach.boxes import box_iou
from mnc_teach.viz.common import (
    GID_BOX,
    add_box,
    add_gt_boxes,
    as_numpy,
    image_hwc,
    instance_colors,
)

__all__ = [
    "GID_CHANNEL", "GID_HISTOGRAM", "NMSDecision", "TraceStep", "draw_feature_channels",
    "draw_trace", "draw_weight_histograms", "format_nms_trace", "format_trace", "nms_trace",
    "weight_statistics", "format_weight_table",
]

GID_CHANNEL = "feature-channel"  # one image per feature panel (the mean and each channel)
GID_HISTOGRAM = "weight-histogram"  # one bar container's patches per histogram
MAX_DRAWN = 20  # boxes drawn per trace panel (the first ones: the best)


# ----------------------------------------------------------------------------- the trace


@dataclass
class TraceStep:
    """One step of an image's way through the cascade.

    Attributes:
        name: what the step is ("anchors", "after NMS", ...).
        boxes (Tensor[B, 4], xyxy pixels): its boxes, best first (a panel draws the first ones).
        note: how the step made them from the previous step's.
    """

    name: str
    boxes: Tensor
    note: str = ""

    @property
    def count(self) -> int:
        return int(self.boxes.shape[0])


def format_trace(steps: Sequence[TraceStep]) -> str:
    """A table: each step's name, its number of boxes, and how it was made."""
    width = max(len(s.name) for s in steps) + 2
    lines = [f"{'step':<{width}}{'boxes':>7}   how"]
    lines += [f"{s.name:<{width}}{s.count:>7}   {s.note}" for s in steps]
    return "\n".join(lines)


def draw_trace(image: Tensor, steps: Sequence[TraceStep], gt_boxes: Tensor | None = None, *,
               max_drawn: int = MAX_DRAWN, ncols: int = 4, title: str | None = None) -> Figure:
    """Rows of ``ncols`` panels, one per step in order: the image with the first ``max_drawn``
    boxes of the step (its best ones).

    Returns:
        The figure: one axes per step, titled with its name and count, holding
        min(count, max_drawn) boxes (GID_BOX) and the ground truth (GID_GT, dashed gold);
        spare axes of the last row are removed.
    """
    pixels = image_hwc(image)
    ncols = min(ncols, len(steps))
    nrows = -(-len(steps) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 3.0 * nrows), squeeze=False,
                             layout="constrained")  # no title over the images of the row above
    for ax in axes.flat[len(steps) :]:
        ax.remove()
    for ax, step in zip(axes.flat, steps, strict=False):
        ax.imshow(pixels, interpolation="nearest")
        add_gt_boxes(ax, gt_boxes)
        shown = as_numpy(step.boxes).reshape(-1, 4)[:max_drawn]
        for box, color in zip(shown, instance_colors(len(shown)), strict=True):
            add_box(ax, box, color, GID_BOX, linewidth=1.0)
        ax.set_xlim(0, pixels.shape[1])
        ax.set_ylim(pixels.shape[0], 0)
        ax.set_axis_off()
        drawn = f" ({len(shown)} drawn)" if len(shown) < step.count else ""
        ax.set_title(f"{step.name}\n{step.count} boxes{drawn}", fontsize=8)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- NMS of one class


@dataclass(frozen=True)
class NMSDecision:
    """What greedy NMS did with one box: ``index`` into the boxes, its ``score``; kept, or
    suppressed by box ``suppressed_by`` (a kept box with a higher score) at IoU ``iou``."""

    index: int
    score: float
    kept: bool
    suppressed_by: int | None = None
    iou: float = 0.0


def nms_trace(boxes: Tensor, scores: Tensor, iou_threshold: float) -> list[NMSDecision]:
    """Greedy NMS written out: boxes by decreasing score; each one is suppressed by the first
    (best) kept box it overlaps with IoU > ``iou_threshold``, else kept. The kept indices equal
    ``boxes.nms``'s (up to the order of equal scores).

    boxes (Tensor[B, 4]), scores (Tensor[B]) -> one decision per box, by decreasing score.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes, boxes) if len(boxes) else boxes.new_zeros((0, 0))  # (B, B)
    kept: list[int] = []
    decisions = []
    for i in order.tolist():
        overlaps = [(k, float(iou[i, k])) for k in kept if float(iou[i, k]) > iou_threshold]
        if overlaps:
            by, value = overlaps[0]
            decisions.append(NMSDecision(i, float(scores[i]), False, by, value))
        else:
            kept.append(i)
            decisions.append(NMSDecision(i, float(scores[i]), True))
    return decisions


def format_nms_trace(decisions: Sequence[NMSDecision], *, max_rows: int = 15) -> str:
    """The first ``max_rows`` decisions as a table (and how many rows were left out)."""
    lines = [f"{'rank':>4}{'box':>6}{'score':>8}   decision"]
    for rank, d in enumerate(decisions[:max_rows]):
        what = "kept" if d.kept else f"suppressed by box {d.suppressed_by} (IoU {d.iou:.2f})"
        lines.append(f"{rank:>4}{d.index:>6}{d.score:>8.3f}   {what}")
    if len(decisions) > max_rows:
        rest = decisions[max_rows:]
        lines.append(f"... {len(rest)} more: {sum(d.kept for d in rest)} kept, "
                     f"{sum(not d.kept for d in rest)} suppressed")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- features


def draw_feature_channels(image: Tensor, features: Tensor, channels: Sequence[int], *,
                          title: str | None = None) -> Figure:
    """The image, the feature map's mean over channels, and the given channels, side by side.

    Args:
        image (Tensor[3, H, W]); features (Tensor[C, h, w]): one image's feature map.
        channels: the channel indices to show; each panel has its own colour scale (its range
            is in the title).

    Returns:
        The figure: the image, then 1 + len(channels) feature panels (GID_CHANNEL).
    """
    maps = as_numpy(features).astype(np.float64)
    panels = [("mean of all channels", maps.mean(axis=0))]
    panels += [(f"channel {c}", maps[c]) for c in channels]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(2.3 * (1 + len(panels)), 2.7))
    axes[0].imshow(image_hwc(image), interpolation="nearest")
    axes[0].set_title("image", fontsize=8)
    for ax, (name, values) in zip(axes[1:], panels, strict=True):
        shown = ax.imshow(values, cmap="magma", interpolation="nearest")
        shown.set_gid(GID_CHANNEL)
        ax.set_title(f"{name}\n[{values.min():.2g}, {values.max():.2g}]", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94) if title is not None else None)
    return fig


# ----------------------------------------------------------------------------- weights


def weight_statistics(module: nn.Module) -> list[dict]:
    """One row per parameter tensor: ``name``, ``shape``, ``mean``, ``std`` (population),
    ``min``, ``max``, and ``trainable`` (requires_grad)."""
    rows = []
    for name, p in module.named_parameters():
        values = p.detach().float().flatten()
        rows.append({"name": name, "shape": tuple(p.shape), "mean": float(values.mean()),
                     "std": float(values.std(unbiased=False)), "min": float(values.min()),
                     "max": float(values.max()), "trainable": p.requires_grad})
    return rows


def format_weight_table(rows: Sequence[dict]) -> str:
    """:func:`weight_statistics` as a text table (frozen tensors marked)."""
    width = max(len(r["name"]) for r in rows) + 2
    lines = [f"{'parameter':<{width}}{'shape':<20}{'mean':>10}{'std':>10}{'min':>10}{'max':>10}"]
    for r in rows:
        frozen = "  (frozen)" if not r["trainable"] else ""
        lines.append(f"{r['name']:<{width}}{str(r['shape']):<20}{r['mean']:>10.4f}"
                     f"{r['std']:>10.4f}{r['min']:>10.4f}{r['max']:>10.4f}{frozen}")
    return "\n".join(lines)


def draw_weight_histograms(module: nn.Module, names: Sequence[str], *, bins: int = 60) -> Figure:
    """A histogram of the values of each named parameter tensor (one panel each).

    Returns:
        The figure: one axes per name, titled with it, whose bars (GID_HISTOGRAM) count the
        tensor's values.
    """
    params = dict(module.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"draw_weight_histograms: no parameter {missing}; see named_parameters()")
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = params[name].detach().float().flatten().cpu().numpy()
        _, _, bars = ax.hist(values, bins=bins, color="tab:blue")
        for bar in bars:
            bar.set_gid(GID_HISTOGRAM)
        ax.set_title(f"{name}\n{values.size:,} values", fontsize=8)
        ax.set_xlabel("weight value", fontsize=8)
        ax.set_ylabel("count", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
