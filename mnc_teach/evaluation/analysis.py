"""Per-detection outcome of SDS matching: which predictions are TP or FP (and why), which GT
are missed.

:func:`~mnc_teach.evaluation.sds.evaluate_sds` reduces the matching to precision/recall curves
and AP. :func:`analyze_matches` runs the same matching (``match_detections`` on the same IoUs,
``class_mask_ious``) and keeps, for every prediction and every GT instance, what happened to
it, so that a notebook can count and show the failures: false positives (by cause), missed
instances, and matches whose mask is poor. :func:`false_positive_cause` adds the one cause the
matcher cannot see, a detection on an object of another class (``FP_WRONG_CLASS``).

Shape legend (structures.py): P predictions over the whole set, G ground-truth instances of
one image, K foreground classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mnc_teach.evaluation.coco import check_results, index_images
from mnc_teach.evaluation.sds import class_mask_ious, mask_iou, match_detections
from mnc_teach.structures import Target

__all__ = [
    "FP_DUPLICATE", "FP_LOW_IOU", "FP_NO_GT", "FP_WRONG_CLASS", "OUTCOMES", "TP", "UNMATCHED",
    "FalsePositiveCause", "MatchAnalysis", "analyze_matches", "false_positive_cause",
    "nearest_instance",
]

# The outcome of one prediction at one IoU threshold (docs/paper_vs_code.md, section "Evaluation").
TP = "TP"
# its best GT of the class overlaps less than the threshold (poor mask, wrong place)
FP_LOW_IOU = "FP: low IoU"
# its best GT qualifies but a higher-scoring prediction matched it first
FP_DUPLICATE = "FP: duplicate"
# its image has no instance of the predicted class (wrong class, or background)
FP_NO_GT = "FP: no GT of its class"
OUTCOMES = (TP, FP_LOW_IOU, FP_DUPLICATE, FP_NO_GT)
# not an outcome of the matcher: an FP that covers an object of another class (false_positive_cause)
FP_WRONG_CLASS = "FP: wrong class"
# gt_matched_by value of a missed GT; best_gt value of a prediction with no GT of its class
UNMATCHED = -1


@dataclass
class MatchAnalysis:
    """SDS matching at one IoU threshold, per prediction (input order) and per GT instance.

    ``best_gt[p]`` indexes the instances of prediction p's image (``target["masks"][best_gt[p]]``);
    a TP is matched to its ``best_gt`` (the matcher takes the GT of largest IoU, first on ties).
    """

    iou_threshold: float
    image: np.ndarray  # [P] int: position of the prediction's image in ground_truth
    category: np.ndarray  # [P] int in 1..K
    score: np.ndarray  # [P] float64
    outcome: np.ndarray  # [P] str, one of OUTCOMES
    best_gt: np.ndarray  # [P] int: the GT of its class with the largest mask IoU, UNMATCHED if none
    best_iou: np.ndarray  # [P] float64: that IoU (0 when there is no GT of its class)
    # per image, [G] int: the prediction that matched GT g, or UNMATCHED
    gt_matched_by: list[np.ndarray]
    # per image, [G] float64: the best IoU any prediction of its class reached
    gt_best_iou: list[np.ndarray]
    # per image, [G] int: that prediction (the first in input order), or UNMATCHED
    gt_best_pred: list[np.ndarray]

    @property
    def is_tp(self) -> np.ndarray:
        """[P] bool."""
        return self.outcome == TP

    def counts(self) -> dict[str, int]:
        """Number of predictions of each outcome, plus ``"missed GT"`` and ``"GT"``."""
        num_gt = sum(len(m) for m in self.gt_matched_by)
        num_missed = sum(int((m == UNMATCHED).sum()) for m in self.gt_matched_by)
        return {name: int((self.outcome == name).sum()) for name in OUTCOMES} | {
            "missed GT": num_missed,
            "GT": num_gt,
        }

    def false_positives(self) -> np.ndarray:
        """Indices of the FP predictions, highest score first (ties: input order)."""
        fp = np.flatnonzero(~self.is_tp)
        return fp[np.argsort(-self.score[fp], kind="stable")]

    def missed(self) -> list[tuple[int, int]]:
        """``(image, gt)`` of every GT instance no prediction matched, nearest misses first
        (descending ``gt_best_iou``; ties in image, then instance order)."""
        pairs = [
            (i, g)
            for i, matched_by in enumerate(self.gt_matched_by)
            for g in np.flatnonzero(matched_by == UNMATCHED).tolist()
        ]
        return sorted(pairs, key=lambda pair: -self.gt_best_iou[pair[0]][pair[1]])

    def matched_below(self, iou: float) -> np.ndarray:
        """Indices of the TPs whose mask IoU is below ``iou`` (e.g. matched at 0.5 but not 0.7),
        highest score first (ties: input order)."""
        poor = np.flatnonzero(self.is_tp & (self.best_iou < iou))
        return poor[np.argsort(-self.score[poor], kind="stable")]


def analyze_matches(
    predictions: list[dict],
    ground_truth: list[Target],
    class_names: Sequence[str],
    *,
    iou_threshold: float,
    check: bool = True,
) -> MatchAnalysis:
    """SDS matching of COCO-format ``predictions`` against Targets, kept per prediction and GT.

    The same matching as :func:`~mnc_teach.evaluation.sds.evaluate_sds` (per class,
    ``match_detections`` on the detections of that class in input order), so the TPs here give
    exactly its precision / recall curves. ``class_names`` starts with "background"; ``check``
    as in ``evaluate_sds``.
    """
    num_classes = len(class_names) - 1
    image_index = index_images(ground_truth, num_classes)
    if check:
        check_results(predictions, image_ids=image_index, num_classes=num_classes)
    pred_ious = class_mask_ious(predictions, ground_truth, image_index)  # P arrays [G_c]
    gt_labels = [target["labels"].cpu().numpy() for target in ground_truth]
    category = np.array([entry["category_id"] for entry in predictions], dtype=np.int64)  # [P]
    score = np.array([entry["score"] for entry in predictions], dtype=np.float64)  # [P]
    image = np.array([image_index[e["image_id"]] for e in predictions], dtype=np.int64)  # [P]

    best_gt, best_iou, gt_best_iou, gt_best_pred = _best_overlaps(
        pred_ious, gt_labels, category=category, image=image
    )
    is_tp = np.zeros(len(predictions), dtype=bool)
    for k in range(1, num_classes + 1):
        dets = np.flatnonzero(category == k)  # input order, as evaluate_sds
        matches = match_detections(
            score[dets],
            image[dets],
            [pred_ious[d] for d in dets],
            num_gt_per_image=[int((labels == k).sum()) for labels in gt_labels],
            iou_threshold=iou_threshold,
        )
        order = np.argsort(-score[dets], kind="stable")  # match_detections' rank order
        is_tp[dets[order]] = matches.tp

    why_fp = np.where(best_iou < iou_threshold, FP_LOW_IOU, FP_DUPLICATE)
    outcome = np.where(is_tp, TP, np.where(best_gt == UNMATCHED, FP_NO_GT, why_fp))
    gt_matched_by = [np.full(len(labels), UNMATCHED, dtype=np.int64) for labels in gt_labels]
    for p in np.flatnonzero(is_tp):
        gt_matched_by[image[p]][best_gt[p]] = p
    return MatchAnalysis(
        iou_threshold=float(iou_threshold), image=image, category=category, score=score,
        outcome=outcome, best_gt=best_gt, best_iou=best_iou, gt_matched_by=gt_matched_by,
        gt_best_iou=gt_best_iou, gt_best_pred=gt_best_pred,
    )


def _best_overlaps(
    pred_ious: list[np.ndarray],
    gt_labels: list[np.ndarray],
    *,
    category: np.ndarray,
    image: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Each prediction's best GT of its class (and that IoU), and each GT's best prediction.

    Returns:
        best_gt [P], best_iou [P], gt_best_iou (per image [G]), gt_best_pred (per image [G]),
        as the fields of :class:`MatchAnalysis` of the same names.
    """
    best_gt = np.full(len(pred_ious), UNMATCHED, dtype=np.int64)
    best_iou = np.zeros(len(pred_ious))
    gt_best_iou = [np.zeros(len(labels)) for labels in gt_labels]
    gt_best_pred = [np.full(len(labels), UNMATCHED, dtype=np.int64) for labels in gt_labels]
    for p, ious in enumerate(pred_ious):
        if len(ious):
            class_gt = np.flatnonzero(gt_labels[image[p]] == category[p])  # [G_c] instance indices
            best = int(np.argmax(ious))
            best_gt[p], best_iou[p] = class_gt[best], ious[best]
            better = ious > gt_best_iou[image[p]][class_gt]  # [G_c]; IoU 0 never counts
            gt_best_iou[image[p]][class_gt[better]] = ious[better]
            gt_best_pred[image[p]][class_gt[better]] = p
    return best_gt, best_iou, gt_best_iou, gt_best_pred


def nearest_instance(pred_mask: Tensor | np.ndarray, target: Target) -> tuple[int, float]:
    """The GT instance of *any* class that a predicted mask overlaps most, and that mask IoU
    (void removed, as :func:`~mnc_teach.evaluation.sds.mask_iou`); ``(UNMATCHED, 0.0)`` when it
    overlaps none.

    Args:
        pred_mask (Tensor[H, W] or np.ndarray[H, W], nonzero = inside), at the size of ``target``.
    """
    mask = torch.as_tensor(np.asarray(pred_mask))[None]  # (1, H, W)
    ious = mask_iou(mask, target["masks"], target.get("ignore"))[0]  # (G,)
    if len(ious) == 0 or ious.max() <= 0:
        return UNMATCHED, 0.0
    g = int(ious.argmax())
    return g, float(ious[g])


class FalsePositiveCause(NamedTuple):
    """Why one prediction is a false positive, and the object it overlaps most."""

    cause: str  # FP_WRONG_CLASS, or the matcher's outcome (FP_LOW_IOU, FP_DUPLICATE, FP_NO_GT)
    iou: float  # wrong class: the IoU with that object; otherwise best_iou (with its own class)
    nearest_gt: int  # the instance of any class it overlaps most (index in its image), or UNMATCHED
    nearest_label: int  # that instance's class, 0 when there is none


def false_positive_cause(
    analysis: MatchAnalysis, p: int, pred_mask: Tensor | np.ndarray, target: Target,
    *, class_iou: float = 0.5,
) -> FalsePositiveCause:
    """The cause of false positive ``p`` of ``analysis``: right place, wrong class when its mask
    covers an instance of another class with IoU >= ``class_iou``; else the matcher's reason.

    Args:
        pred_mask (Tensor[H, W] or np.ndarray[H, W]): prediction p's mask, decoded.
        target: the ground truth of p's image (``ground_truth[analysis.image[p]]``).
    """
    if analysis.outcome[p] == TP:
        raise ValueError(f"prediction {p} is a true positive; false_positive_cause needs an FP")
    g, iou = nearest_instance(pred_mask, target)
    label = int(target["labels"][g]) if g != UNMATCHED else 0
    if iou >= class_iou and label != analysis.category[p]:
        return FalsePositiveCause(FP_WRONG_CLASS, iou, g, label)
    return FalsePositiveCause(str(analysis.outcome[p]), float(analysis.best_iou[p]), g, label)
