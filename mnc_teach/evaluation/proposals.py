"""Recall of stage-1 proposals against the number of proposals kept (notebook 02).

Stage 2 can only segment an object that some proposal covers. **Recall at N** is the fraction
of all ground-truth objects whose best IoU with the N best proposals of their image is at least
a threshold. Faster R-CNN and MNC judge the RPN by this curve at IoU 0.5 and 0.7.

Shape legend (structures.py): G ground-truth boxes of one image, R proposals of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mnc_teach.boxes import box_iou

__all__ = ["best_overlaps", "proposal_recall"]


def best_overlaps(gt_boxes: Tensor, proposals: Tensor, counts: Sequence[int]) -> Tensor:
    """Best IoU of every object with the top-n proposals, for each n of ``counts``.

    Args:
        gt_boxes (Tensor[G, 4], xyxy): the objects of one image.
        proposals (Tensor[R, 4], xyxy): its proposals, best first (as the RPN returns them).
        counts: the numbers n of proposals kept; n > R keeps all R.

    Returns:
        Tensor[len(counts), G]: row k holds each object's largest IoU with proposals[:counts[k]]
        (0 when that is no proposal at all).
    """
    iou = box_iou(gt_boxes, proposals)  # (G, R)
    rows = [iou[:, :n].max(dim=1).values if min(n, iou.shape[1]) > 0 else iou.new_zeros(len(iou))
            for n in counts]  # each (G,)
    return torch.stack(rows) if rows else iou.new_zeros(0, len(iou))


def proposal_recall(
    gt_boxes: Sequence[Tensor],
    proposals: Sequence[Tensor],
    counts: Sequence[int],
    thresholds: Sequence[float] = (0.5, 0.7),
) -> dict[float, list[float]]:
    """Recall at each number of proposals in ``counts``, over a set of images.

    Args:
        gt_boxes: per image, Tensor[G_i, 4] (xyxy): its objects.
        proposals: per image, Tensor[R_i, 4] (xyxy): its proposals, best first.
        counts: the numbers n of best proposals kept per image.
        thresholds: the IoUs at which an object counts as covered.

    Returns:
        ``{threshold: [recall at counts[0], recall at counts[1], ...]}``: the fraction of all
        objects (of every image together) whose best IoU with the top-n proposals of their
        image is >= threshold; NaN when there are no objects at all.
    """
    if len(gt_boxes) != len(proposals):
        raise ValueError(
            f"proposal_recall: {len(gt_boxes)} images of ground truth but {len(proposals)} of "
            "proposals; give one of each per image"
        )
    per_image = [best_overlaps(gt.detach().cpu(), boxes.detach().cpu(), counts)
                 for gt, boxes in zip(gt_boxes, proposals, strict=True)]  # each (n, G_i)
    if sum(best.shape[1] for best in per_image) == 0:  # no object at all
        return {t: [float("nan")] * len(counts) for t in thresholds}
    best = torch.cat(per_image, dim=1)  # (n, objects of every image)
    return {t: (best >= t).float().mean(dim=1).tolist() for t in thresholds}
