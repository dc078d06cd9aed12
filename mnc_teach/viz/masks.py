"""Stage 2's masks (notebooks 04-05): per RoI, its target, its prediction, and the pasted mask.

    draw_mask_grid   one row per RoI: the RoI on its image | m x m target | m x m prediction |
                     the mask pasted into the image (zoomed on the RoI)

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, R RoIs, M mask side.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mnc_teach.postprocess import paste_masks
from mnc_teach.viz.common import (
    add_box,
    as_numpy,
    image_hwc,
    instance_colors,
    mask_overlay,
    zoom_to_box,
)

__all__ = [
    "GID_MASK_PRED", "GID_MASK_TARGET", "GID_PASTED", "GID_ROI_BOX", "MASK_CMAP", "PASTE_THRESHOLD",
    "draw_mask_grid",
]

GID_ROI_BOX = "roi-box"  # the RoI on its image, one per row of draw_mask_grid
GID_MASK_TARGET = "mask-target"  # an m x m target image
GID_MASK_PRED = "mask-pred"  # an m x m predicted (soft) mask image
GID_PASTED = "pasted-mask"  # a mask pasted into the image, as an overlay

MASK_CMAP = "gray"  # m x m masks: black 0, white 1
PASTE_THRESHOLD = 0.4  # pasted masks are binarised at the code's BINARIZE_THRESH (MNC_SPEC §3)
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
