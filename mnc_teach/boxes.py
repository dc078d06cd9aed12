"""Box geometry as pure functions (xyxy, float32, absolute pixels; see structures.py).

Shape legend (structures.py): B boxes (B1, B2 in two sets), K+1 classes, H, W image size.
Every function here has a torchvision counterpart it is tested against (tests/test_boxes.py).
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

__all__ = [
    "RPN_BOX_WEIGHTS",
    "MAX_LOG_SCALE",
    "masks_to_boxes",
    "box_area",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "box_cxcywh_to_xyxy",
    "encode_boxes",
    "decode_boxes",
    "clip_boxes",
    "remove_small_boxes",
    "nms",
    "batched_nms",
    "nms_reference",
    "require_finite",
]

# Box-delta weights of stage 1 (the RPN): raw deltas, no normalisation
# [code: MNC/lib/transform/bbox_transform.py, bbox_transform]. Stage 3's weights
# (10, 10, 5, 5) are config.ClassifierConfig.box_weights.
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# Largest log-scale change decode_boxes allows, so exp() cannot overflow: a box may grow at
# most 1000/16 = 62.5 times in one step (torchvision BoxCoder / detectron2 Box2BoxTransform).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks in continuous coordinates.

    Args:
        masks (Tensor[G, H, W], any dtype; nonzero = inside): every mask must be non-empty.

    Returns:
        boxes (Tensor[G, 4], float32): ``(min col, min row, max col + 1, max row + 1)``.
        This is ``torchvision.ops.masks_to_boxes(masks) + [0, 0, 1, 1]``.
    """
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), dtype=torch.float32, device=masks.device)
    inside = masks != 0
    rows_any = inside.any(dim=2)  # (G, H)
    cols_any = inside.any(dim=1)  # (G, W)
    if not rows_any.any(dim=1).all():
        raise ValueError("masks_to_boxes got an empty mask; drop empty instances first")
    height, width = masks.shape[-2:]
    row_idx = torch.arange(height, device=masks.device)
    col_idx = torch.arange(width, device=masks.device)
    y1 = torch.where(rows_any, row_idx, height).amin(dim=1)
    y2 = torch.where(rows_any, row_idx, -1).amax(dim=1) + 1
    x1 = torch.where(cols_any, col_idx, width).amin(dim=1)
    x2 = torch.where(cols_any, col_idx, -1).amax(dim=1) + 1
    return torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box.

    Args:
        boxes (Tensor[B, 4], float, xyxy pixels)

    Returns:
        areas (Tensor[B]): ``(x2 - x1) * (y2 - y1)``; no "+1" (continuous coordinates).
    """
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes.

    Args:
        boxes1 (Tensor[B1, 4], float, xyxy pixels)
        boxes2 (Tensor[B2, 4], float, xyxy pixels)

    Returns:
        iou (Tensor[B1, B2]): ``iou[i, j] = |b1_i ∩ b2_j| / |b1_i ∪ b2_j|``, in [0, 1].
        Equals ``torchvision.ops.box_iou``, except that a pair whose union is empty (two
        zero-area boxes) gets IoU 0 instead of NaN.
    """
    area1 = box_area(boxes1)  # (B1,)
    area2 = box_area(boxes2)  # (B2,)
    # The intersection of two boxes is the box between the larger top-left corner and the
    # smaller bottom-right corner; broadcasting (B1, 1, 2) against (1, B2, 2) pairs them all.
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (B1, B2, 2)
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (B1, B2, 2)
    # Boxes that do not overlap give a negative width or height: clamp it to 0.
    inter_wh = (bottom_right - top_left).clamp(min=0)  # (B1, B2, 2)
    intersection = inter_wh[..., 0] * inter_wh[..., 1]  # (B1, B2)
    union = area1[:, None] + area2[None, :] - intersection  # (B1, B2)
    # union == 0 only when intersection == 0 too; clamping turns 0 / 0 into 0.
    return intersection / union.clamp(min=torch.finfo(union.dtype).tiny)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(centre x, centre y, width, height)``; ``Tensor[..., 4]``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(centre x, centre y, width, height)`` -> ``(x1, y1, x2, y2)``; ``Tensor[..., 4]``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def encode_boxes(
    gt_boxes: Tensor,
    ref_boxes: Tensor,
    *,
    weights: tuple[float, float, float, float] = RPN_BOX_WEIGHTS,
) -> Tensor:
    """Regression targets (deltas) that move each reference box onto its ground-truth box.

    The Fast R-CNN parameterisation, with ``(x, y, w, h)`` the centre and size of a box,
    ``g`` the ground truth and ``r`` the reference (an anchor or a proposal)::

        dx = wx * (gx - rx) / rw        dw = ww * log(gw / rw)
        dy = wy * (gy - ry) / rh        dh = wh * log(gh / rh)

    Widths are ``x2 - x1`` (continuous coordinates, see structures.py). The Caffe code
    (``MNC/lib/transform/bbox_transform.py``) uses inclusive integer corners, so its width
    is ``x2 - x1 + 1`` and its centre ``x1 + 0.5 * width``; for a box written both ways
    (``x2_continuous = x2_inclusive + 1``) the two conventions give identical deltas, so
    no "+1" is needed here.

    Stage 1 (RPN) uses ``weights = RPN_BOX_WEIGHTS = (1, 1, 1, 1)``. Stage 3 uses
    ``config.ClassifierConfig.box_weights = (10, 10, 5, 5)``: the official code divides its
    targets by the stds (0.1, 0.1, 0.2, 0.2) (docs/paper_vs_code.md: stages 2-3), which is the same
    as these weights.

    Same result as ``torchvision.models.detection._utils.BoxCoder(weights).encode_single(
    gt_boxes, ref_boxes)`` (torchvision calls the ground truth "reference_boxes" there).

    Args:
        gt_boxes (Tensor[B, 4], float, xyxy pixels): the target box of each reference box.
        ref_boxes (Tensor[B, 4], float, xyxy pixels): anchors or proposals; widths and
            heights must be positive.
        weights: ``(wx, wy, ww, wh)`` multiplying ``(dx, dy, dw, dh)``.

    Returns:
        deltas (Tensor[B, 4]): ``(dx, dy, dw, dh)``; ``decode_boxes(deltas, ref_boxes,
        weights=weights)`` gives ``gt_boxes`` back.
    """
    if gt_boxes.shape != ref_boxes.shape or gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(
            f"encode_boxes needs gt_boxes and ref_boxes of the same shape [B, 4], got "
            f"{tuple(gt_boxes.shape)} and {tuple(ref_boxes.shape)}; pair each reference box "
            "with its matched ground truth first (e.g. gt_boxes[matched_gt])"
        )
    wx, wy, ww, wh = weights
    gx, gy, gw, gh = box_xyxy_to_cxcywh(gt_boxes).unbind(dim=1)  # each (B,)
    rx, ry, rw, rh = box_xyxy_to_cxcywh(ref_boxes).unbind(dim=1)  # each (B,)
    dx = wx * (gx - rx) / rw
    dy = wy * (gy - ry) / rh
    dw = ww * torch.log(gw / rw)
    dh = wh * torch.log(gh / rh)
    return torch.stack([dx, dy, dw, dh], dim=1)  # (B, 4)


def decode_boxes(
    deltas: Tensor,
    ref_boxes: Tensor,
    *,
    weights: tuple[float, float, float, float] = RPN_BOX_WEIGHTS,
    max_log_scale: float = MAX_LOG_SCALE,
) -> Tensor:
    """Apply deltas to reference boxes: the inverse of :func:`encode_boxes`.

    ``deltas`` may hold one group of 4 per class (stage 3 predicts class-specific
    deltas, ``Tensor[B, 4 * (K+1)]``); every group is applied to the same reference box.
    ``dw`` and ``dh`` (after dividing by the weights) are clamped at ``max_log_scale``
    so that ``exp`` cannot overflow, as torchvision and detectron2 do.

    Invariant: ``decode_boxes(encode_boxes(gt, ref, weights=w), ref, weights=w) == gt`` (up to float
    rounding). Same result as ``torchvision.models.detection._utils.BoxCoder(weights,
    max_log_scale).decode_single(deltas, ref_boxes)``, which also uses ``x2 - x1``
    widths. Differentiable in both ``deltas`` and ``ref_boxes``: this is how MNC sends
    gradients from later stages back to the box coordinates.

    Args:
        deltas (Tensor[B, 4 * (K+1)], float): ``(dx, dy, dw, dh)`` for each class (any
            number of groups of 4 works, e.g. one).
        ref_boxes (Tensor[B, 4], float, xyxy pixels): anchors or proposals.
        weights: the ``(wx, wy, ww, wh)`` the deltas were encoded with.
        max_log_scale: upper bound for ``dw`` and ``dh``.

    Returns:
        boxes (Tensor[B, 4 * (K+1)], xyxy pixels): decoded boxes, same layout as ``deltas``.
    """
    if deltas.ndim != 2 or deltas.shape[1] % 4 != 0 or deltas.shape[0] != ref_boxes.shape[0]:
        raise ValueError(
            f"decode_boxes needs deltas [B, 4 * (K+1)] and ref_boxes [B, 4], got "
            f"{tuple(deltas.shape)} and {tuple(ref_boxes.shape)}; flatten per-image or "
            "per-anchor deltas to one row per reference box first"
        )
    wx, wy, ww, wh = weights
    ref_boxes = ref_boxes.to(deltas.dtype)
    rx, ry, rw, rh = box_xyxy_to_cxcywh(ref_boxes).unbind(dim=1)  # each (B,)
    dx = deltas[:, 0::4] / wx  # (B, K+1)
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=max_log_scale)
    dh = (deltas[:, 3::4] / wh).clamp(max=max_log_scale)

    pred_x = rx[:, None] + dx * rw[:, None]  # (B, K+1)
    pred_y = ry[:, None] + dy * rh[:, None]
    pred_w = rw[:, None] * torch.exp(dw)
    pred_h = rh[:, None] * torch.exp(dh)
    pred_cxcywh = torch.stack([pred_x, pred_y, pred_w, pred_h], dim=2)  # (B, K+1, 4)
    return box_cxcywh_to_xyxy(pred_cxcywh).flatten(1)  # (B, K+1, 4) -> (B, 4 * (K+1))


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp boxes to the image: x into [0, width], y into [0, height].

    In continuous coordinates the image covers [0, W] x [0, H], so ``x2 = W`` is legal
    (the Caffe code clips to ``W - 1`` because its corners are inclusive). Same result as
    ``torchvision.ops.clip_boxes_to_image``.

    Args:
        boxes (Tensor[..., 4 * (K+1)], xyxy pixels): plain boxes (``[..., 4]``) or the
            class-specific groups returned by :func:`decode_boxes`.
        image_size: ``(height, width)`` of the image.

    Returns:
        clipped boxes, same shape and dtype. Differentiable (zero gradient where clamped).
    """
    height, width = image_size
    clipped = boxes.clone()
    clipped[..., 0::2] = boxes[..., 0::2].clamp(min=0, max=width)  # x1, x2 of every group
    clipped[..., 1::2] = boxes[..., 1::2].clamp(min=0, max=height)  # y1, y2 of every group
    return clipped


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    Stage 1 drops proposals smaller than 16 px at the original image scale
    (``RPN_MIN_SIZE``, docs/paper_vs_code.md: stage 1); pass ``16 * image_scale``. Same result as
    ``torchvision.ops.remove_small_boxes``.

    Args:
        boxes (Tensor[B, 4], xyxy pixels)
        min_size: smallest allowed side, in pixels.

    Returns:
        keep (Tensor[num_kept], int64): indices into ``boxes``, increasing.
    """
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((widths >= min_size) & (heights >= min_size)).flatten()


def require_finite(boxes: Tensor, *, where: str) -> Tensor:
    """``boxes``, after checking that every coordinate is finite: a compiled op (``nms``,
    ``roi_align``) given NaN boxes may crash the process without a message.

    Raises:
        FloatingPointError: naming ``where``; NaN boxes come from non-finite weights or inputs.
    """
    finite = torch.isfinite(boxes).all(dim=-1) if boxes.ndim > 1 else torch.isfinite(boxes)
    if not finite.all():
        raise FloatingPointError(
            f"{where}: {int((~finite).sum())} of {len(finite)} boxes are not finite (NaN or inf): "
            "the model's input or weights are not finite, or so large that they overflow"
        )
    return boxes


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression (``torchvision.ops.nms``, compiled and fast).

    Walk the boxes from the highest score down; keep a box, then discard every
    remaining box whose IoU with it is *greater than* ``iou_threshold``.
    :func:`nms_reference` is the same algorithm written as a readable loop.

    Args:
        boxes (Tensor[B, 4], float, xyxy pixels)
        scores (Tensor[B], float): higher is better.
        iou_threshold: e.g. 0.7 for RPN proposals, 0.3 per class at test time
        (docs/paper_vs_code.md: stage 1, inference).

    Returns:
        keep (Tensor[num_kept], int64): indices of the kept boxes, by decreasing score.
    """
    return torchvision.ops.nms(require_finite(boxes, where="nms"), scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, *, iou_threshold: float) -> Tensor:
    """NMS run independently within each label (``torchvision.ops.batched_nms``).

    Boxes with different labels never suppress each other. This is the per-class NMS of
    MNC's post-processing (docs/paper_vs_code.md: inference). Equal to running :func:`nms` on
    each label's boxes and merging the kept indices by decreasing score.

    Args:
        boxes (Tensor[B, 4], float, xyxy pixels)
        scores (Tensor[B], float)
        labels (Tensor[B], int64): the class (or image) of each box.
        iou_threshold: boxes of one label with IoU above it are suppressed.

    Returns:
        keep (Tensor[num_kept], int64): indices of the kept boxes, by decreasing score.
    """
    boxes = require_finite(boxes, where="batched_nms")
    return torchvision.ops.batched_nms(boxes, scores, labels, iou_threshold)


def nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS as a plain loop, for teaching; gives the same result as :func:`nms`.

    Use :func:`nms` in real code: this loop runs one Python step per kept box.
    """
    order = torch.argsort(scores, descending=True)  # (B,) best first
    keep = []
    while order.numel() > 0:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        ious = box_iou(boxes[best].unsqueeze(0), boxes[rest])[0]  # (1, len(rest)) -> (len(rest),)
        order = rest[ious <= iou_threshold]  # survivors are those not overlapping "best" too much
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.int64, device=boxes.device)
