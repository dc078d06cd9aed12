"""Pictures of the two cascade explorers (widgets_cascade.py); pure matplotlib, each returns a ``Figure``.

    draw_stage_view      one RoI through every stage, colour-linked, plus the final detections
    draw_proposal_view   stage-1 proposals of one image and the recall they reach

Conventions of ``viz.py``: nothing is kept between calls and every artist that stands for
one object has a ``gid`` (``viz.count_artists(fig, gid)`` counts them). The inputs are plain
tensors gathered by the widgets (:class:`StageView`), so this module never runs a model.

Shape legend (structures.py): H, W image size, G instances, D detections, R proposals,
C channels, P RoI-feature side, M mask side, K foreground classes.
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
from mnc_teach.viz import common as viz
from mnc_teach.viz.stages import draw_proposals, draw_recall_curve

__all__ = ["GID_ROI_BOX", "GID_REFINED_BOX", "GID_ROI_PANEL", "GID_STAGE_MASK", "GID_CLASS_BAR", "StageView",
           "draw_stage_view", "draw_proposal_view"]  # fmt: skip

GID_ROI_BOX = "explorer-roi-box"  # the chosen RoI's stage-1 box
GID_REFINED_BOX = "explorer-refined-box"  # its stage-3 regressed box (the stage-4 input)
GID_ROI_PANEL = "explorer-roi-panel"  # an image of one of the RoI's stage outputs (features, masks, pasted)
GID_STAGE_MASK = "explorer-stage-mask"  # an m x m mask image (stage 2, its target, stage 4)
GID_CLASS_BAR = "explorer-class-bar"  # one bar per (pathway, class) of the stage-3 scores
ROI_COLOR = "tab:orange"  # the chosen RoI's colour in every panel: the link between the stages
MASK_CMAP = "gray"
FEATURE_CMAP = "magma"
ZOOM_MARGIN = 0.3  # the pasted-mask panel shows the RoI plus this fraction of its larger side
EXPLORER_FIGSIZE = (12.0, 6.4)
PROPOSAL_FIGSIZE = (10.5, 4.2)
DPI = 80  # 960 x 512 px: sharp enough, and the PNG a widget sends takes half the time of dpi 100


@dataclass
class StageView:
    """What the cascade did with one RoI of one image (gathered from ``CascadeIntermediates``).

    Attributes:
        image (Tensor[3, H, W]); gt_boxes (Tensor[G, 4]).
        roi_rank, num_rois: the RoI's place when the R RoIs are sorted by stage-3 foreground score.
        proposal_index: its row in the stage-1 proposals (sorted by objectness); objectness in [0, 1].
        box (Tensor[4]): the stage-1 box. features (Tensor[C, P, P]): its warped, pooled features.
        mask (Tensor[M, M] in [0, 1]): stage-2 soft mask; target (Tensor[M, M] | None): its training
            target (None: no ground truth overlaps the box enough, so it is background).
        matched_iou: box IoU with the best ground truth; true_label: the box-level label (0 = background).
        cls_probs, box_cls_probs (Tensor[K+1]): stage-3 mask-level and box-level probabilities.
        refined_box (Tensor[4] | None), mask_s4 (Tensor[M, M] | None), cls_probs_s5 (Tensor[K+1] | None):
            stages 4-5 (None for a 3-stage model).
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
        ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
        return
    values = viz._as_numpy(mask).astype(np.float32)
    ax.imshow(values, cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest").set_gid(GID_STAGE_MASK)
    if threshold is not None and values.min() < threshold < values.max():
        ax.contour(values, levels=[threshold], colors=[ROI_COLOR], linewidths=1.2)
    ax.set_title(title, fontsize=8)
    _frame(ax)


def _class_bars(ax: Axes, view: StageView, class_names: Sequence[str]) -> None:
    """Grouped bars: mask-level (stage 3), box-level (stage 3) and, 5-stage, mask-level (stage 5)."""
    groups = [("mask-level", view.cls_probs, ROI_COLOR), ("box-level", view.box_cls_probs, "0.55")]
    if view.cls_probs_s5 is not None:
        groups.append(("stage 5", view.cls_probs_s5, "tab:purple"))
    width = 0.8 / len(groups)
    x = np.arange(len(class_names))
    for g, (name, probs, color) in enumerate(groups):
        bars = ax.bar(x + (g - (len(groups) - 1) / 2) * width, viz._as_numpy(probs), width, color=color, label=name)
        for bar in bars:
            bar.set_gid(GID_CLASS_BAR)
    ax.set_xticks(x, [("bg" if k == 0 else name[:7]) for k, name in enumerate(class_names)],
                  rotation=60 if len(class_names) > 6 else 0, fontsize=7)  # fmt: skip
    ticks = ax.get_xticklabels()
    ticks[view.true_label].set_color("tab:green")  # the RoI's training label
    ticks[view.true_label].set_fontweight("bold")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6, loc="upper right", frameon=False)
    best = int(viz._as_numpy(view.cls_probs).argmax())
    ax.set_title(f"stage 3: {class_names[best]} {float(view.cls_probs[best]):.2f}\n(training label in green)", fontsize=8)


def draw_stage_view(
    view: StageView, detections: dict, class_names: Sequence[str], *, mask_threshold: float = 0.4,
    score_threshold: float = 0.5, top_n: int = 10,
) -> Figure:
    """One RoI through the cascade (top row, then the first three panels of the bottom row) and the
    image's final detections (bottom right).

    Panels: stage 1 (the proposal, its regressed box dashed, the ground truth gold) | the warped RoI
    features (mean over channels) | the stage-2 mask with the ``mask_threshold`` contour | its target |
    the pasted mask | stage-3 class scores | the stage-4 mask on the regressed box | the best ``top_n``
    detections scoring >= ``score_threshold``, masks binarised at ``mask_threshold``.

    Args:
        view: the RoI's outputs (:class:`StageView`).
        detections: the model's detections of the image (boxes, labels, scores, masks [D, 1, H, W]).

    Returns:
        The figure. Counts: one GID_ROI_BOX; one GID_REFINED_BOX with stages 4-5; ``viz.GID_BOX``
        = detections drawn = ``min(top_n, #(scores >= score_threshold))``; ``viz.GID_GT`` = G.
    """
    fig, axes = plt.subplots(2, 4, figsize=EXPLORER_FIGSIZE, dpi=DPI)
    pixels = viz._image_hwc(view.image)
    height, width = pixels.shape[:2]
    box = viz._as_numpy(view.box).reshape(4)

    ax = axes[0, 0]  # stage 1
    ax.imshow(pixels, interpolation="nearest")
    for gt in viz._as_numpy(view.gt_boxes).reshape(-1, 4):
        viz._add_box(ax, gt, "gold", viz.GID_GT, linewidth=1.5, linestyle="--")
    viz._add_box(ax, box, ROI_COLOR, GID_ROI_BOX, linewidth=2.5)
    if view.refined_box is not None:
        viz._add_box(ax, viz._as_numpy(view.refined_box).reshape(4), ROI_COLOR, GID_REFINED_BOX, linewidth=1.5,
                     linestyle=":")  # fmt: skip
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    refined = ", dotted: stage-3 regressed" if view.refined_box is not None else ""
    ax.set_title(f"stage 1: proposal #{view.proposal_index}\nobjectness {view.objectness:.2f}{refined}", fontsize=8)
    _frame(ax)

    ax = axes[0, 1]  # RoI warping
    features = viz._as_numpy(view.features)  # (C, P, P)
    ax.imshow(features.mean(axis=0), cmap=FEATURE_CMAP, interpolation="nearest").set_gid(GID_ROI_PANEL)
    ax.set_title(f"RoI warp: {features.shape[0]}x{features.shape[1]}x{features.shape[2]}\n(mean over channels)", fontsize=8)
    _frame(ax)

    size = view.mask.shape[-1]
    _mask_panel(axes[0, 2], view.mask, f"stage 2: {size}x{size} mask\n(contour at {mask_threshold:g})", mask_threshold)
    target_title = (f"stage-2 target\n(box IoU {view.matched_iou:.2f} with its object)" if view.target is not None
                    else f"no stage-2 target:\nbox IoU {view.matched_iou:.2f} with the\nnearest object is below the\nforeground threshold\n(a background RoI)")  # fmt: skip
    _mask_panel(axes[0, 3], view.target, target_title)

    ax = axes[1, 0]  # the stage-2 mask pasted into the image
    pasted = paste_masks(view.mask.float()[None], torch.as_tensor(box, dtype=torch.float32)[None],
                         (0, 0, width, height))[0].numpy()  # (H, W)  # fmt: skip
    ax.imshow(pixels, interpolation="nearest")
    ax.imshow(viz._overlay(pasted >= mask_threshold, to_rgb(ROI_COLOR), 0.55),
              interpolation="nearest").set_gid(GID_ROI_PANEL)  # fmt: skip
    viz._add_box(ax, box, ROI_COLOR, GID_ROI_BOX + "-zoom", linewidth=1.0)
    pad = ZOOM_MARGIN * max(box[2] - box[0], box[3] - box[1], 1.0)
    ax.set_xlim(max(box[0] - pad, 0), min(box[2] + pad, width))
    ax.set_ylim(min(box[3] + pad, height), max(box[1] - pad, 0))
    ax.set_title(f"stage 2 pasted (>= {mask_threshold:g})\n{int((pasted >= mask_threshold).sum())} pixels", fontsize=8)
    _frame(ax)

    _class_bars(axes[1, 1], view, class_names)
    s4_title = ("3-stage model:\nno stages 4-5" if view.mask_s4 is None
                else f"stage 4: mask on the\nregressed box (contour {mask_threshold:g})")  # fmt: skip
    _mask_panel(axes[1, 2], view.mask_s4, s4_title, mask_threshold)

    ax = axes[1, 3]  # final detections
    subset, colors, _ = viz.best_detections(detections, score_threshold, top_n)
    subset["masks"] = (subset["masks"][:, 0] >= mask_threshold).to(torch.uint8)  # (D', H, W) at the mask threshold
    num_shown, num_all = len(subset["scores"]), len(detections["scores"])
    title = (f"detections: best {num_shown} of {num_all}\nscoring >= {score_threshold:g}" if num_shown
             else f"no detections scoring >= {score_threshold:g}\n({num_all} in all)")  # fmt: skip
    viz.draw_instances(view.image, subset, class_names, ax=ax, title=title, colors=colors)
    fig.suptitle(f"RoI {view.roi_rank + 1} of {view.num_rois} (by stage-3 foreground score), orange in every panel",
                 fontsize=10)  # fmt: skip
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.06, wspace=0.12, hspace=0.42)  # not tight_layout: 0.2 s
    return fig


def draw_proposal_view(
    image: Tensor, boxes: Tensor, scores: Tensor, gt_boxes: Tensor, counts: Sequence[int],
    recalls: dict[str, Sequence[float]], chosen: int, title: str, max_boxes: int = 100,
) -> Figure:
    """Proposals on the image (left) and recall against the number kept (right), the current top-k marked.

    Args:
        image (Tensor[3, H, W]); boxes (Tensor[R, 4]), scores (Tensor[R]): the proposals after NMS.
        gt_boxes (Tensor[G, 4]): drawn dashed gold.
        counts, recalls: the curve's x values and ``label -> recall at each count`` (see ``draw_recall_curve``).
        chosen: the current post-NMS top-k, drawn as a vertical line.
        max_boxes: at most this many proposals are drawn (the best by score).

    Returns:
        The figure; ``count_artists(fig, GID_PROPOSAL) == min(R, max_boxes)``, one GID_RECALL line per curve.
    """
    fig, (ax_image, ax_recall) = plt.subplots(1, 2, figsize=PROPOSAL_FIGSIZE, dpi=DPI,
                                              gridspec_kw={"width_ratios": [1, 1.4]})  # fmt: skip
    draw_proposals(image, boxes, scores, gt_boxes=gt_boxes, ax=ax_image, max_boxes=max_boxes,
                   title=f"{min(len(boxes), max_boxes)} of {len(boxes)} proposals (colour: objectness)")  # fmt: skip
    draw_recall_curve(counts, recalls, ax=ax_recall, title=title)
    ax_recall.axvline(max(chosen, 1), color="0.3", ls=":", lw=1)
    fig.subplots_adjust(left=0.01, right=0.98, top=0.9, bottom=0.13, wspace=0.12)
    return fig

