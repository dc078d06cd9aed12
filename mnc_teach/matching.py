"""Matching boxes to ground truth and sampling a training batch (docs/paper_vs_code.md: stage 1,
stages 2-3).

Stage 1 labels every anchor positive, negative or ignored by its IoU with the ground
truth (:func:`label_anchors`), then draws 256 of them, at most half positive
(:func:`sample_pos_neg`). Stages 2-3 draw 64 RoIs per image from the proposals plus the
ground truth (:func:`sample_rois`). :func:`match_boxes` is the building block, with the
same semantics as ``torchvision.models.detection._utils.Matcher``.

Shape legend (structures.py): G ground-truth boxes, B boxes of any kind, T anchors of an
image, R proposals or RoIs, H, W image size. The default thresholds and batch sizes are
defined once, in ``config.RPNConfig`` (stage 1) and ``config.RoIConfig`` (stages 2-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mnc_teach.anchors import anchors_inside_image
from mnc_teach.boxes import box_iou
from mnc_teach.config import RoIConfig, RPNConfig

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "POSITIVE",
    "NEGATIVE",
    "IGNORE",
    "match_boxes",
    "label_anchors",
    "sample_pos_neg",
    "RoISample",
    "match_rois",
    "draw_without_replacement",
    "sample_rois",
]

# Sentinels returned by match_boxes in place of a ground-truth index (torchvision's Matcher).
BELOW_LOW_THRESHOLD = -1  # best IoU < low_threshold: a negative
BETWEEN_THRESHOLDS = -2  # low_threshold <= best IoU < high_threshold: neither, ignored

# Anchor labels returned by label_anchors (the official code's rpn_labels).
POSITIVE = 1
NEGATIVE = 0
IGNORE = -1


def match_boxes(
    iou: Tensor,
    *,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
) -> Tensor:
    """Match every box (column) to its best ground truth (row), or to a sentinel.

    For box b with best IoU ``v`` over the ground truth:

    * ``v >= high_threshold``: the index of that ground truth;
    * ``low_threshold <= v < high_threshold``: ``BETWEEN_THRESHOLDS``;
    * ``v < low_threshold``: ``BELOW_LOW_THRESHOLD``.

    ``allow_low_quality_matches=True`` adds the "best anchor of each ground truth" rule
    of the paper and the official code: every box whose IoU with a ground truth equals
    that ground truth's best IoU (ties included) is matched as well, to *its own*
    best ground truth. So no object is left without a positive box, however badly the
    boxes fit it.

    Same result as ``torchvision.models.detection._utils.Matcher``, with two
    differences: a ground truth whose best IoU is 0 (no box touches it) is skipped by
    the low-quality rule (torchvision, and the official ``np.where(overlaps ==
    gt_max_overlaps)``, would then match every box that misses it, i.e. mark boxes
    with IoU 0 positive), and empty inputs are allowed (G == 0: every box is
    ``BELOW_LOW_THRESHOLD``; B == 0: an empty result) where torchvision raises.

    Args:
        iou (Tensor[G, B], float): IoU of every (ground truth, box) pair, e.g.
            ``box_iou(gt_boxes, anchors)``.
        high_threshold: smallest IoU of a match.
        low_threshold: smallest IoU that is not a negative; ``<= high_threshold``.
        allow_low_quality_matches: also match each ground truth's best boxes.

    Returns:
        matches (Tensor[B], int64): ground-truth index in ``0..G-1``, or
        ``BELOW_LOW_THRESHOLD`` (-1), or ``BETWEEN_THRESHOLDS`` (-2).
    """
    if iou.ndim != 2:
        raise ValueError(f"match_boxes needs an IoU matrix [G, B], got shape {tuple(iou.shape)}")
    if low_threshold > high_threshold:
        raise ValueError(
            f"match_boxes got low_threshold={low_threshold} > high_threshold={high_threshold}; "
            "swap them"
        )
    num_gt, num_boxes = iou.shape
    if num_gt == 0 or num_boxes == 0:
        return torch.full((num_boxes,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)

    best_iou_per_box, best_gt_per_box = iou.max(dim=0)  # each (B,)
    matches = best_gt_per_box.clone()
    matches[best_iou_per_box < low_threshold] = BELOW_LOW_THRESHOLD
    between = (best_iou_per_box >= low_threshold) & (best_iou_per_box < high_threshold)
    matches[between] = BETWEEN_THRESHOLDS

    if allow_low_quality_matches:
        best_iou_per_gt = iou.max(dim=1).values  # (G,)
        # is_best[g, b]: box b is (one of) the best boxes of ground truth g, which some box touches
        is_best = (iou == best_iou_per_gt[:, None]) & (best_iou_per_gt[:, None] > 0)  # (G, B)
        is_best_for_some_gt = is_best.any(dim=0)  # (B,)
        matches[is_best_for_some_gt] = best_gt_per_box[is_best_for_some_gt]
    return matches


def label_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    image_size: tuple[int, int],
    *,
    positive_iou: float = RPNConfig.positive_iou,
    negative_iou: float = RPNConfig.negative_iou,
    allowed_border: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Stage-1 training labels for every anchor (docs/paper_vs_code.md: stage 1,
    ``anchor_target_layer.py``).

    * Anchors not fully inside the image (see ``anchors_inside_image``) are ``IGNORE``
      and take no part in the rest.
    * ``POSITIVE``: IoU >= ``positive_iou`` with some ground truth, or one of the best
      inside anchors of some ground truth (ties included; a ground truth that no inside
      anchor touches is skipped, see :func:`match_boxes`).
    * ``NEGATIVE``: max IoU < ``negative_iou`` and not positive (the code's
      ``RPN_CLOBBER_POSITIVES=False``).
    * ``IGNORE``: everything else.

    An image without ground truth (G == 0) is legal: every inside anchor is negative.

    Args:
        anchors (Tensor[T, 4], float, xyxy pixels): e.g. from ``grid_anchors``.
        gt_boxes (Tensor[G, 4], float, xyxy pixels)
        image_size: ``(height, width)`` of the (resized) image.
        positive_iou: IoU that makes an anchor positive (0.7, ``RPN_POSITIVE_OVERLAP``).
        negative_iou: max IoU below which an anchor is negative (0.3, ``RPN_NEGATIVE_OVERLAP``).
        allowed_border: pixels an anchor may stick out of the image (0, ``allowed_border``).

    Returns:
        labels (Tensor[T], int64): ``POSITIVE`` (1), ``NEGATIVE`` (0) or ``IGNORE`` (-1).
        matched_gt (Tensor[T], int64): for a positive anchor, the index of its max-IoU
            ground truth (the box its deltas regress to); 0 for every other anchor and
            when G == 0, so ``gt_boxes[matched_gt]`` is safe only where labels == 1.
    """
    num_anchors = anchors.shape[0]
    device = anchors.device
    labels = torch.full((num_anchors,), IGNORE, dtype=torch.int64, device=device)
    matched_gt = torch.zeros((num_anchors,), dtype=torch.int64, device=device)

    inside_idx = torch.nonzero(anchors_inside_image(anchors, image_size, allowed_border)).flatten()
    iou = box_iou(gt_boxes.to(anchors.dtype), anchors[inside_idx])  # (G, T_inside)
    matches = match_boxes(
        iou, high_threshold=positive_iou, low_threshold=negative_iou, allow_low_quality_matches=True
    )

    labels_inside = torch.full_like(matches, IGNORE)  # BETWEEN_THRESHOLDS stays ignored
    labels_inside[matches == BELOW_LOW_THRESHOLD] = NEGATIVE
    labels_inside[matches >= 0] = POSITIVE
    labels[inside_idx] = labels_inside
    matched_gt[inside_idx] = matches.clamp(min=0)  # sentinels -> 0
    return labels, matched_gt


def sample_pos_neg(
    labels: Tensor,
    *,
    batch_size: int = RPNConfig.batch_size,
    positive_fraction: float = RPNConfig.positive_fraction,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw a training batch: at most ``batch_size * positive_fraction`` positives, then
    negatives up to ``batch_size`` in total, uniformly without replacement.

    As the official code (``anchor_target_layer.py``) and torchvision's
    ``BalancedPositiveNegativeSampler``: with few positives the batch is filled with
    more negatives; with few of both it is smaller than ``batch_size``. Defaults:
    256 anchors, at most half positive (docs/paper_vs_code.md: stage 1).
    With ``generator=None`` the global torch RNG is used, in the same order as
    torchvision (one ``randperm`` for the positives, then one for the negatives).

    Args:
        labels (Tensor[T], int): 1 positive, 0 negative, -1 ignored (from :func:`label_anchors`).
        batch_size: number of elements to draw.
        positive_fraction: largest fraction of positives in the batch.
        generator: a seeded ``torch.Generator`` makes the sample reproducible.

    Returns:
        pos_idx (Tensor[num_pos], int64): indices into ``labels`` of the sampled positives,
            increasing.
        neg_idx (Tensor[num_neg], int64): the sampled negatives, increasing;
            ``num_pos + num_neg <= batch_size``.
    """
    positive = torch.nonzero(labels == POSITIVE).flatten()
    negative = torch.nonzero(labels == NEGATIVE).flatten()
    num_pos = min(positive.numel(), int(batch_size * positive_fraction))
    num_neg = min(negative.numel(), batch_size - num_pos)

    rng_device = generator.device if generator is not None else labels.device
    pos_perm = torch.randperm(positive.numel(), generator=generator, device=rng_device)[:num_pos]
    neg_perm = torch.randperm(negative.numel(), generator=generator, device=rng_device)[:num_neg]
    pos_idx = positive[pos_perm.to(labels.device)].sort().values
    neg_idx = negative[neg_perm.to(labels.device)].sort().values
    return pos_idx, neg_idx


@dataclass
class RoISample:
    """The RoIs of one image for stages 2-3, foreground first.

    Attributes:
        boxes (Tensor[R, 4], xyxy pixels): differentiable in the proposals they came from.
        matched_gt (Tensor[R], int64): index of each RoI's max-IoU ground truth (0 when G == 0).
        labels (Tensor[R], int64): box-level class: the matched class if IoU >= fg_iou, else 0.
        iou (Tensor[R]): IoU with the matched ground truth.
    """

    boxes: Tensor
    matched_gt: Tensor
    labels: Tensor
    iou: Tensor


def match_rois(
    boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, fg_iou: float
) -> RoISample:
    """Match every box (Tensor[R, 4]) to its max-IoU ground truth; box-level label = that
    class if IoU >= fg_iou."""
    iou = box_iou(gt_boxes.to(boxes.dtype), boxes.detach())  # (G, R)
    if iou.shape[0] == 0:
        zeros = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
        return RoISample(boxes, zeros, zeros.clone(), boxes.new_zeros(boxes.shape[0]))
    best_iou, matched_gt = iou.max(dim=0)  # each (R,)
    labels = torch.where(best_iou >= fg_iou, gt_labels[matched_gt], torch.zeros_like(matched_gt))
    return RoISample(boxes, matched_gt, labels, best_iou)


def draw_without_replacement(
    indices: Tensor, count: int, generator: torch.Generator | None = None
) -> Tensor:
    """Up to ``count`` of ``indices`` (Tensor[n], int64) drawn uniformly without replacement, in
    drawing order: one ``torch.randperm(n)`` on the generator's device (None: the global RNG)."""
    device = generator.device if generator is not None else None
    order = torch.randperm(indices.numel(), generator=generator, device=device)
    return indices[order[:count].to(indices.device)]


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    batch_size: int = RoIConfig.batch_size,
    fg_fraction: float = RoIConfig.fg_fraction,
    fg_iou: float = RoIConfig.fg_iou,
    bg_iou_low: float = RoIConfig.bg_iou_low,
    hard_bg_fraction: float = RoIConfig.hard_bg_fraction,
    append_gt_boxes: bool = RoIConfig.append_gt_boxes,
    generator: torch.Generator | None = None,
) -> RoISample:
    """Draw the training RoIs of stages 2-3 (``proposal_target_layer.py``, docs/paper_vs_code.md:
    stages 2-3).

    Candidates are the proposals plus (``append_gt_boxes``) the ground-truth boxes.
    Foreground: IoU >= ``fg_iou``, at most ``batch_size * fg_fraction`` (19 of 64). The rest
    of the batch is background: ``hard_bg_fraction`` (85 %) from IoU in [``bg_iou_low``,
    ``fg_iou``), the others from [0, ``bg_iou_low``); a shortfall in one pool is filled from
    the other. Without replacement, so the batch may be smaller than ``batch_size``.

    Args:
        proposals (Tensor[R, 4], xyxy pixels): stage-1 boxes (gradients flow through them).
        gt_boxes (Tensor[G, 4]), gt_labels (Tensor[G], int64 in 1..K).
        generator: a seeded ``torch.Generator`` for a reproducible sample (None: global RNG).
    """
    candidates = proposals
    if append_gt_boxes and gt_boxes.numel():
        candidates = torch.cat([proposals, gt_boxes.to(proposals)])  # (R + G, 4)
    matched = match_rois(candidates, gt_boxes, gt_labels, fg_iou=fg_iou)
    fg = torch.nonzero(matched.labels > 0).flatten()
    hard_bg = torch.nonzero((matched.labels == 0) & (matched.iou >= bg_iou_low)).flatten()
    easy_bg = torch.nonzero((matched.labels == 0) & (matched.iou < bg_iou_low)).flatten()
    fg = draw_without_replacement(fg, int(batch_size * fg_fraction), generator)
    num_bg = batch_size - fg.numel()
    num_hard = min(
        hard_bg.numel(), max(int(round(num_bg * hard_bg_fraction)), num_bg - easy_bg.numel())
    )
    hard_bg = draw_without_replacement(hard_bg, num_hard, generator)
    easy_bg = draw_without_replacement(easy_bg, num_bg - num_hard, generator)
    keep = torch.cat([fg, hard_bg, easy_bg])
    return RoISample(
        matched.boxes[keep], matched.matched_gt[keep], matched.labels[keep], matched.iou[keep]
    )
