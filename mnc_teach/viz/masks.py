"""Stage 2's masks (notebooks 04-05): per RoI, its target, its prediction, and the pasted mask.

    draw_mask_grid        one row per RoI: the RoI on its image | m x m target | m x m
                          prediction | the mask pasted into the image (zoomed on the RoI)
    stand_in_proposals    boxes that look like stage 1's: jittered ground truth + random boxes
    draw_roi_bands        the training RoIs of stages 2-3 in their three IoU bands
    draw_pasted_targets   one object's target at several mask sizes m, pasted back

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, R RoIs, M mask side.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from mnc_teach.postprocess import paste_masks
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.viz.common import (
    add_box,
    add_gt_boxes,
    as_numpy,
    image_hwc,
    instance_colors,
    mask_overlay,
    zoom_to_box,
)

__all__ = [
    "BAND_COLORS", "GID_APPENDED_GT", "GID_MASK_PRED", "GID_MASK_TARGET", "GID_PASTED",
    "GID_ROI_BOX", "MASK_CMAP", "PASTE_THRESHOLD",
    "draw_mask_grid", "draw_pasted_targets", "draw_roi_bands", "stand_in_proposals",
]

GID_ROI_BOX = "roi-box"  # the RoI on its image, one per row of draw_mask_grid
GID_MASK_TARGET = "mask-target"  # an m x m target image
GID_MASK_PRED = "mask-pred"  # an m x m predicted (soft) mask image
GID_PASTED = "pasted-mask"  # a mask pasted into the image, as an overlay
GID_APPENDED_GT = "appended-gt-roi"  # a drawn RoI that is an appended ground-truth box
# the three IoU bands of the training RoIs: colour, and the gid of each RoI drawn in the band
BAND_COLORS = {"foreground": "lime", "hard background": "darkorange",
               "easy background": "magenta"}
BAND_GIDS = {"foreground": "fg-roi", "hard background": "hard-bg-roi",
             "easy background": "easy-bg-roi"}

MASK_CMAP = "gray"  # m x m masks: black 0, white 1
PASTE_THRESHOLD = 0.4  # pasted masks are binarised at the code's BINARIZE_THRESH
ZOOM_MARGIN = 0.25  # the pasted column shows the RoI plus this fraction of its larger side
PANEL_SIDE = 2.3  # inches per panel


def _mask_image(ax: Axes, mask: Tensor, gid: str, title: str) -> None:
    """An m x m mask in grey, 0 black and 1 white."""
    ax.imshow(as_numpy(mask), cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest").set_gid(gid)
    ax.set_title(title, fontsize=8)


def draw_mask_grid(
    image: Tensor, boxes: Tensor, target_masks: Tensor, pred_masks: Tensor | None = None, *,
    titles: Sequence[str] | None = None, threshold: float = PASTE_THRESHOLD,
) -> Figure:
    """Stage 2, one row per RoI: the RoI on its image | m x m target | m x m prediction | pasted.

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
    if target_masks.shape[0] != len(boxes) or (pred_masks is not None
                                               and pred_masks.shape[0] != len(boxes)):
        predictions = "" if pred_masks is None else f" and {pred_masks.shape[0]} predictions"
        raise ValueError(f"draw_mask_grid: {len(boxes)} boxes but {target_masks.shape[0]} targets"
                         f"{predictions}")
    pixels = image_hwc(image)
    height, width = pixels.shape[:2]
    to_paste = (pred_masks if pred_masks is not None else target_masks).detach().float()
    pasted = paste_masks(to_paste, boxes, (0, 0, width, height)).numpy()  # (R, H, W)
    pasted_name = "prediction" if pred_masks is not None else "target"
    columns = 3 if pred_masks is None else 4
    figsize = (PANEL_SIDE * columns, PANEL_SIDE * len(boxes))
    fig, axes = plt.subplots(len(boxes), columns, figsize=figsize, squeeze=False)
    colors = instance_colors(len(boxes))
    side = target_masks.shape[-1]
    for r, row in enumerate(axes):
        row[0].imshow(pixels, interpolation="nearest")
        add_box(row[0], boxes[r].tolist(), colors[r], GID_ROI_BOX, linewidth=2)
        row[0].set_title(titles[r] if titles is not None else f"RoI {r}", fontsize=8)
        _mask_image(row[1], target_masks[r], GID_MASK_TARGET, f"target {side}x{side}")
        if pred_masks is not None:
            _mask_image(row[2], pred_masks[r], GID_MASK_PRED, "prediction (sigmoid)")
        row[-1].imshow(pixels, interpolation="nearest")
        overlay = mask_overlay(pasted[r] >= threshold, colors[r], 0.6)
        row[-1].imshow(overlay, interpolation="nearest").set_gid(GID_PASTED)
        zoom_to_box(row[-1], boxes[r].numpy(), (height, width), ZOOM_MARGIN)
        row[-1].set_title(f"{pasted_name} pasted (>= {threshold:g})", fontsize=8)
        for ax in row:
            ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def stand_in_proposals(
    gt_boxes: Tensor, image_size: tuple[int, int], generator: torch.Generator, *,
    per_object: int = 20, jitters: Sequence[float] = (0.05, 0.2, 0.6), num_random: int = 100,
) -> Tensor:
    """Boxes that look like stage 1's proposals, for pictures without a trained RPN: each
    ground-truth box jittered ``per_object`` times at each noise level of ``jitters`` (a fraction
    of its width / height), and ``num_random`` boxes anywhere in the image of ``image_size``
    (H, W). gt_boxes (G, 4) -> (G * per_object * len(jitters) + num_random, 4), x1 <= x2."""
    gt_boxes = gt_boxes.detach().float().cpu().reshape(-1, 4)
    sides = (gt_boxes[:, 2:] - gt_boxes[:, :2]).repeat(1, 2)  # (G, 4): w, h, w, h
    jittered = [
        (gt_boxes[:, None] + s * sides[:, None] * torch.randn(len(gt_boxes), per_object, 4,
                                                               generator=generator)).reshape(-1, 4)
        for s in jitters
    ]
    height, width = image_size
    scale = torch.tensor([float(width), float(height)])
    corners = torch.rand(num_random, 2, generator=generator) * scale * 0.8
    extents = (0.05 + 0.3 * torch.rand(num_random, 2, generator=generator)) * scale
    boxes = torch.cat([*jittered, torch.cat([corners, corners + extents], dim=1)])
    return torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]),
                      torch.maximum(boxes[:, :2], boxes[:, 2:])], dim=1)


def draw_roi_bands(
    image: Tensor, rois: Tensor, labels: Tensor, iou: Tensor, gt_boxes: Tensor, *,
    bg_iou_low: float, appended: Tensor | None = None, title: str = "",
) -> Figure:
    """The training RoIs of stages 2-3 by IoU band: all of them, then each band alone.

    Args:
        image (Tensor[3, H, W]); rois (Tensor[N, 4], xyxy pixels): e.g. ``sample_rois(...).boxes``.
        labels (Tensor[N]): box-level labels (> 0: foreground); iou (Tensor[N]): IoU with the
            matched object. Background with ``iou >= bg_iou_low`` is hard, the rest easy.
        gt_boxes (Tensor[G, 4]): the objects, drawn dashed gold (``GID_GT``).
        appended (Tensor[N], bool | None): which RoIs are appended ground-truth boxes; they are
            drawn thicker, with ``GID_APPENDED_GT`` (foreground RoIs of IoU 1).
        title: above the panels.

    Returns:
        The figure with 4 axes; each RoI is drawn twice (in the first axes and in its band's)
        with its band's gid (``BAND_GIDS``) and colour (``BAND_COLORS``).
    """
    rois = rois.detach().float().cpu().reshape(-1, 4)
    labels, iou = labels.detach().cpu().reshape(-1), iou.detach().cpu().reshape(-1)
    appended = (torch.zeros(len(rois), dtype=torch.bool) if appended is None
                else appended.detach().cpu().reshape(-1))
    in_band = {"foreground": labels > 0, "hard background": (labels == 0) & (iou >= bg_iou_low),
               "easy background": (labels == 0) & (iou < bg_iou_low)}
    pixels = image_hwc(image)
    height, width = pixels.shape[:2]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.9))
    panels = [("all", list(in_band))] + [(name, [name]) for name in in_band]
    for ax, (panel, names) in zip(axes, panels, strict=True):
        ax.imshow(pixels, interpolation="nearest")
        for name in names:
            for box, is_gt in zip(rois[in_band[name]], appended[in_band[name]], strict=True):
                add_box(ax, box.tolist(), BAND_COLORS[name],
                        GID_APPENDED_GT if is_gt else BAND_GIDS[name],
                        linewidth=3.0 if is_gt else 1.2)
        add_gt_boxes(ax, gt_boxes)
        ax.set(xlim=(0, width), ylim=(height, 0), xticks=[], yticks=[])
        count = sum(int(in_band[name].sum()) for name in names)
        ax.set_title(f"{panel}: {count} RoIs", fontsize=9)
    handles = [Line2D([], [], color=c, label=n) for n, c in BAND_COLORS.items()]
    handles += [Line2D([], [], color=BAND_COLORS["foreground"], linewidth=3,
                       label="appended ground-truth box (a fg RoI)"),
                Line2D([], [], color="gold", linestyle="--", label="object (ground truth)")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def draw_pasted_targets(
    gt_mask: Tensor, box: Tensor, mask_sizes: Sequence[int], *,
    threshold: float = PASTE_THRESHOLD, notes: dict[int, str] | None = None,
    ignore: Tensor | None = None,
) -> Figure:
    """One object's mask target at each mask size m, pasted back into the image through its
    box: what an m x m grid keeps of the object's shape.

    Args:
        gt_mask (Tensor[H, W], 0/1): the object; box (Tensor[4]): its box.
        mask_sizes: the m of each panel; the target is ``stage2_masks.mask_targets`` binarised at
            ``threshold``, pasted with ``postprocess.paste_masks`` and binarised again.
        notes: a word per m for its title (e.g. ``{28: "paper", 21: "code"}``).
        ignore (Tensor[H, W] | None): void pixels, left out of the titles' mask IoU.

    Returns:
        The figure, one axes per m: the pasted target (white on black, ``GID_PASTED``) and the
        object's outline (red contour), zoomed on the box; the title gives the mask IoU.
    """
    gt_mask = gt_mask.detach().cpu()
    box = box.detach().float().cpu().reshape(1, 4)
    height, width = gt_mask.shape[-2:]
    obj = as_numpy(gt_mask).astype(bool)
    counted = ~as_numpy(ignore).astype(bool) if ignore is not None else np.ones_like(obj)
    fig, axes = plt.subplots(1, len(mask_sizes), figsize=(2.3 * len(mask_sizes), 2.6),
                             squeeze=False)
    for ax, m in zip(axes[0], mask_sizes, strict=True):
        target = mask_targets(gt_mask[None], torch.zeros(1, dtype=torch.long), box,
                              mask_size=m, threshold=threshold)  # (1, m, m)
        pasted = paste_masks(target, box, (0, 0, width, height))[0].numpy() >= threshold
        union = ((pasted | obj) & counted).sum()
        iou = ((pasted & obj) & counted).sum() / max(union, 1)
        shown = ax.imshow(pasted, cmap=MASK_CMAP, vmin=0, vmax=1, interpolation="nearest")
        shown.set_gid(GID_PASTED)
        ax.contour(obj.astype(float), levels=[0.5], colors="red", linewidths=1)
        zoom_to_box(ax, box[0].numpy(), (height, width), 0.1)
        note = f" ({notes[m]})" if notes and m in notes else ""
        ax.set_title(f"m = {m}{note}: mask IoU {iou:.3f}", fontsize=8)
        ax.set(xticks=[], yticks=[])
    fig.suptitle("the target pasted back (white) vs the object (red outline)", fontsize=9)
    fig.tight_layout()
    return fig
