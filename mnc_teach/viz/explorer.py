"""The stage explorer's picture: one RoI through every stage, colour-linked, and the detections.

    StageView          what the cascade did with one RoI (plain tensors the widget gathers)
    draw_stage_view    stage 1 | RoI warp | stage-2 mask | its target | pasted mask |
                       stage-3 scores | stage-4 mask | the image's final detections

The inputs are plain tensors gathered by ``widgets.explorers.StageExplorer``, so this module
never runs a model. Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, G instances, D detections, C channels,
P RoI-feature side, M mask side, K foreground classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from torch import Tensor

from mnc_teach.postprocess import paste_masks
from mnc_teach.viz.common import (
    add_box,
    add_gt_boxes,
    as_numpy,
    image_hwc,
    mask_overlay,
    zoom_to_box,
)
from mnc_teach.viz.instances import best_detections, draw_instances

__all__ = [
    "GID_CLASS_BAR", "GID_REFINED_BOX", "GID_ROI_BOX", "GID_ROI_PANEL", "GID_STAGE_MASK",
    "StageView", "draw_stage_view",
]

GID_ROI_BOX = "explorer-roi-box"  # the chosen RoI's stage-1 box
GID_REFINED_BOX = "explorer-refined-box"  # its stage-3 regressed box (the stage-4 input)
GID_ROI_PANEL = "explorer-roi-panel"  # an image of one of the RoI's outputs (features, pasted)
GID_STAGE_MASK = "explorer-stage-mask"  # an m x m mask image (stage 2, its target, stage 4)
GID_CLASS_BAR = "explorer-class-bar"  # one bar per (pathway, class) of the stage-3 scores
ROI_COLOR = "tab:orange"  # the chosen RoI's colour in every panel: the link between the stages
MASK_CMAP = "gray"
FEATURE_CMAP = "magma"
ZOOM_MARGIN = 0.3  # the pasted-mask panel shows the RoI plus this fraction of its larger side
EXPLORER_FIGSIZE = (12.0, 6.4)
DPI = 80  # 960 x 512 px


@dataclass
class StageView:
    """What the cascade did with one RoI of one image (gathered from ``CascadeIntermediates``).

    Attributes:
        image (Tensor[3, H, W]); gt_boxes (Tensor[G, 4]).
        roi_rank, num_rois: the RoI's place when the R RoIs are sorted by stage-3 foreground
            score.
        proposal_index: its row in the stage-1 proposals (sorted by objectness); objectness in
            [0, 1].
        box (Tensor[4]): the stage-1 box. features (Tensor[C, P, P]): its warped, pooled features.
        mask (Tensor[M, M] in [0, 1]): stage-2 soft mask; target (Tensor[M, M] | None): its
            training target (None: no ground truth overlaps the box enough: a background RoI).
        matched_iou: box IoU with the best ground truth; true_label: the box-level label
            (0 = background).
        cls_probs, box_cls_probs (Tensor[K+1]): stage-3 mask-level and box-level probabilities.
        refined_box (Tensor[4] | None), mask_s4 (Tensor[M, M] | None),
            cls_probs_s5 (Tensor[K+1] | None): stages 4-5 (None for a 3-stage model).
    """

    image: Tensor
    gt_boxes: Tensor
    roi_rank: int
    num_rois: int
    proposal_index: int
    objectness: float
    box: Tensor
    features: Tensor
    mask: Tensor
    target: Tensor | None
    matched_iou: float
    true_label: int
    cls_probs: Tensor
    box_cls_probs: Tensor
    refined_box: Tensor | None = None
    mask_s4: Tensor | None = None
    cls_probs_s5: Tensor | None = None


def _frame(ax: Axes, color=ROI_COLOR) -> None:
    """Colour the axes' frame: every panel about the chosen RoI wears the RoI's colour."""
    ax.set(xticks=[], yticks=[])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(2.5)


def _mask_panel(ax: Axes, mask: Tensor | None, title: str, threshold: float | None = None) -> None:
    """An m x m mask in grey, with the binarisation threshold as a contour."""
    if mask is None:
        ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=8, wrap=True,
                transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
        return
    values = as_numpy(mask).astype(np.float32)
    shown = ax.imshow(values, cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
    shown.set_gid(GID_STAGE_MASK)
    if threshold is not None and values.min() < threshold < values.max():
        ax.contour(values, levels=[threshold], colors=[ROI_COLOR], linewidths=1.2)
    ax.set_title(title, fontsize=8)
    _frame(ax)


def _class_bars(ax: Axes, view: StageView, class_names: Sequence[str]) -> None:
    """Grouped bars: mask-level (stage 3), box-level (stage 3) and, 5-stage, stage 5's."""
    groups = [("mask-level", view.cls_probs, ROI_COLOR), ("box-level", view.box_cls_probs, "0.55")]
    if view.cls_probs_s5 is not None:
        groups.append(("stage 5", view.cls_probs_s5, "tab:purple"))
    width = 0.8 / len(groups)
    x = np.arange(len(class_names))
    for g, (name, probs, color) in enumerate(groups):
        offset = (g - (len(groups) - 1) / 2) * width
        for bar in ax.bar(x + offset, as_numpy(probs), width, color=color, label=name):
            bar.set_gid(GID_CLASS_BAR)
    ax.set_xticks(x, [("bg" if k == 0 else name[:7]) for k, name in enumerate(class_names)],
                  rotation=60 if len(class_names) > 6 else 0, fontsize=7)
    ticks = ax.get_xticklabels()
    ticks[view.true_label].set_color("tab:green")  # the RoI's training label
    ticks[view.true_label].set_fontweight("bold")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6, loc="upper right", frameon=False)
    best = int(as_numpy(view.cls_probs).argmax())
    ax.set_title(f"stage 3: {class_names[best]} {float(view.cls_probs[best]):.2f}\n"
                 "(training label in green)", fontsize=8)


def _stage1_panel(ax: Axes, view: StageView, pixels: np.ndarray) -> None:
    """The proposal on its image (and its regressed box dotted), the ground truth dashed gold."""
    height, width = pixels.shape[:2]
    ax.imshow(pixels, interpolation="nearest")
    add_gt_boxes(ax, view.gt_boxes)
    add_box(ax, as_numpy(view.box).reshape(4), ROI_COLOR, GID_ROI_BOX, linewidth=2.5)
    if view.refined_box is not None:
        add_box(ax, as_numpy(view.refined_box).reshape(4), ROI_COLOR, GID_REFINED_BOX,
                linewidth=1.5, linestyle=":")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    refined = ", dotted: stage-3 regressed" if view.refined_box is not None else ""
    ax.set_title(f"stage 1: proposal #{view.proposal_index}\n"
                 f"objectness {view.objectness:.2f}{refined}", fontsize=8)
    _frame(ax)


def _features_panel(ax: Axes, features: np.ndarray) -> None:
    """The RoI's warped features (C, P, P), as their mean over the channels."""
    shown = ax.imshow(features.mean(axis=0), cmap=FEATURE_CMAP, interpolation="nearest")
    shown.set_gid(GID_ROI_PANEL)
    channels, side_h, side_w = features.shape
    ax.set_title(f"RoI warp: {channels}x{side_h}x{side_w}\n(mean over channels)", fontsize=8)
    _frame(ax)


def _pasted_panel(ax: Axes, view: StageView, pixels: np.ndarray, mask_threshold: float) -> None:
    """The stage-2 mask pasted into the image at ``mask_threshold``, zoomed on the RoI."""
    height, width = pixels.shape[:2]
    box = as_numpy(view.box).reshape(4)
    pasted = paste_masks(view.mask.float()[None], torch.as_tensor(box, dtype=torch.float32)[None],
                         (0, 0, width, height))[0].numpy()  # (H, W)
    ax.imshow(pixels, interpolation="nearest")
    ax.imshow(mask_overlay(pasted >= mask_threshold, to_rgb(ROI_COLOR), 0.55),
              interpolation="nearest").set_gid(GID_ROI_PANEL)
    add_box(ax, box, ROI_COLOR, GID_ROI_BOX + "-zoom", linewidth=1.0)
    zoom_to_box(ax, box, (height, width), ZOOM_MARGIN)
    ax.set_title(f"stage 2 pasted (>= {mask_threshold:g})\n"
                 f"{int((pasted >= mask_threshold).sum())} pixels", fontsize=8)
    _frame(ax)


def _detections_panel(ax: Axes, view: StageView, detections: dict, class_names: Sequence[str], *,
                      mask_threshold: float, score_threshold: float, top_n: int) -> None:
    """The best ``top_n`` detections scoring >= ``score_threshold``, masks at the threshold."""
    subset, colors, _ = best_detections(detections, score_threshold, top_n)
    subset["masks"] = (subset["masks"][:, 0] >= mask_threshold).to(torch.uint8)  # (D', H, W)
    num_shown, num_all = len(subset["scores"]), len(detections["scores"])
    if num_shown:
        title = f"detections: best {num_shown} of {num_all}\nscoring >= {score_threshold:g}"
    else:
        title = f"no detections scoring >= {score_threshold:g}\n({num_all} in all)"
    draw_instances(view.image, subset, class_names, ax=ax, title=title, colors=colors)


def draw_stage_view(
    view: StageView, detections: dict, class_names: Sequence[str], *, mask_threshold: float = 0.4,
    score_threshold: float = 0.5, top_n: int = 10,
) -> Figure:
    """One RoI through the cascade (top row, then the bottom row's first three panels) and the
    image's final detections (bottom right).

    Panels: stage 1 (the proposal, its regressed box dotted, the ground truth gold) | the warped
    RoI features (mean over channels) | the stage-2 mask with the ``mask_threshold`` contour |
    its target | the pasted mask | stage-3 class scores | the stage-4 mask on the regressed box |
    the best ``top_n`` detections scoring >= ``score_threshold``, masks binarised at
    ``mask_threshold``.

    Args:
        view: the RoI's outputs (:class:`StageView`).
        detections: the model's detections of the image (boxes, labels, scores,
            masks [D, 1, H, W]).

    Returns:
        The figure. Counts: one GID_ROI_BOX; one GID_REFINED_BOX with stages 4-5;
        ``GID_BOX`` = detections drawn = ``min(top_n, #(scores >= score_threshold))``;
        ``GID_GT`` = G.
    """
    fig, axes = plt.subplots(2, 4, figsize=EXPLORER_FIGSIZE, dpi=DPI)
    pixels = image_hwc(view.image)
    _stage1_panel(axes[0, 0], view, pixels)
    _features_panel(axes[0, 1], as_numpy(view.features))
    size = view.mask.shape[-1]
    _mask_panel(axes[0, 2], view.mask, f"stage 2: {size}x{size} mask\n"
                f"(contour at {mask_threshold:g})", mask_threshold)
    if view.target is not None:
        target_title = f"stage-2 target\n(box IoU {view.matched_iou:.2f} with its object)"
    else:
        target_title = (f"no stage-2 target:\nbox IoU {view.matched_iou:.2f} with the\nnearest "
                        "object is below the\nforeground threshold\n(a background RoI)")
    _mask_panel(axes[0, 3], view.target, target_title)
    _pasted_panel(axes[1, 0], view, pixels, mask_threshold)
    _class_bars(axes[1, 1], view, class_names)
    s4_title = ("3-stage model:\nno stages 4-5" if view.mask_s4 is None
                else f"stage 4: mask on the\nregressed box (contour {mask_threshold:g})")
    _mask_panel(axes[1, 2], view.mask_s4, s4_title, mask_threshold)
    _detections_panel(axes[1, 3], view, detections, class_names, mask_threshold=mask_threshold,
                      score_threshold=score_threshold, top_n=top_n)
    fig.suptitle(f"RoI {view.roi_rank + 1} of {view.num_rois} (by stage-3 foreground score), "
                 "orange in every panel", fontsize=10)
    # fixed margins: tight_layout would cost more than the drawing
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.06, wspace=0.12, hspace=0.42)
    return fig
