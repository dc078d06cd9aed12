"""Mask AP: mAP^r at mask IoU 0.5 / 0.7 (VOC/SDS protocol, docs/paper_vs_code.md: evaluation).

Predictions travel as a COCO results list: one dict per detection with ``image_id`` (the
dataset's id string), ``category_id`` (1..K), ``segmentation`` (RLE with str counts) and
``score``; :mod:`mnc_teach.evaluation.coco` reads, writes and checks such files. Ground truth
is the list of Target dicts a dataset returns (structures.py).

Shape legend (structures.py): D detections in one image, G ground-truth instances in one
image, H, W image size, K foreground classes; N detections of one class over the whole set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch import Tensor

from mnc_teach.evaluation.coco import check_results, encode_mask, encode_masks, index_images
from mnc_teach.structures import Target

__all__ = [
    "AP_METHODS", "SDS_IOU_THRESHOLDS", "ClassMatches", "SDSResult", "average_precision",
    "class_mask_ious", "evaluate_sds", "json_float", "mask_iou", "match_detections",
    "rle_mask_iou",
]

# docs/paper_vs_code.md: evaluation (paper §5; `_py_evaluate_segmentation`): mAP^r at mask IoU 0.5
# and 0.7.
SDS_IOU_THRESHOLDS = (0.5, 0.7)
# "area": SDS reference code / VOC2010+; "voc07": 11-point, MNC's `voc_ap(rec, prec, True)`.
AP_METHODS = ("area", "voc07")
# Exactly k/10. MNC's `np.arange(0., 1.1, 0.1)` holds 0.30000000000000004 (and 0.6.., 0.7..),
# so a recall of exactly 0.3 would miss its point there; we use the intended definition.
VOC07_RECALL_POINTS = np.arange(11) / 10


def mask_iou(pred_masks: Tensor, gt_masks: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Pairwise mask IoU ``|P n G| / |P u G|`` with void pixels removed from the predictions.

    Args:
        pred_masks (Tensor[D, H, W], nonzero = inside)
        gt_masks (Tensor[G, H, W], nonzero = inside): contain no void pixels by construction.
        ignore (Tensor[H, W], 1 = void) | None

    Returns:
        Tensor[D, G], float64 (so that e.g. 7/10 >= 0.7 holds exactly); 0 where the union is
        empty.
    """
    pred, gt = torch.as_tensor(pred_masks) != 0, torch.as_tensor(gt_masks) != 0
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[1:] != gt.shape[1:]:
        raise ValueError(
            f"mask_iou got pred {tuple(pred.shape)} and gt {tuple(gt.shape)}; "
            "expected [D, H, W] and [G, H, W]"
        )
    if ignore is not None:
        pred = pred & (torch.as_tensor(ignore) == 0)  # (D, H, W) & (H, W)
    pred_flat = pred.flatten(1).float()  # (D, H, W) -> (D, H*W)
    gt_flat = gt.flatten(1).float()  # (G, H, W) -> (G, H*W)
    # float32 sums of 0/1 values are exact below 2**24 pixels; the division is done in float64
    intersection = (pred_flat @ gt_flat.T).double()  # (D, G)
    union = pred_flat.sum(1).double()[:, None] + gt_flat.sum(1).double()[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), 0.0)


def rle_mask_iou(
    pred_rles: list[dict], gt_rles: list[dict], ignore: Tensor | None = None
) -> np.ndarray:
    """:func:`mask_iou` computed on RLEs by pycocotools, without decoding.

    Same numbers as ``mask_iou`` on the decoded masks (float64 [D, G]), but it works on runs
    instead of pixels, which is much faster on large images (``benchmarks/evaluation.py``);
    :func:`evaluate_sds` uses it. Void pixels are cut from each prediction by an RLE
    intersection first.
    """
    if not pred_rles or not gt_rles:
        return np.zeros((len(pred_rles), len(gt_rles)))
    if ignore is not None and bool(torch.as_tensor(ignore).any()):
        keep = encode_mask(torch.as_tensor(ignore) == 0)
        pred_rles = [mask_utils.merge([rle, keep], intersect=True) for rle in pred_rles]
    return mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles))  # iscrowd = 0: plain IoU


def average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "area") -> float:
    """AP of one precision/recall curve (cumulative, in score order).

    "area": area under the monotone precision envelope (VOC2010+ devkit, SDS `VOCap`).
    "voc07": mean over recall points 0, 0.1, ..., 1 of the best precision at recall >= point.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if method == "voc07":
        best = [precision[recall >= point].max(initial=0.0) for point in VOC07_RECALL_POINTS]
        return float(np.mean(best))
    if method != "area":
        raise ValueError(f"unknown AP method {method!r}; choose one of {AP_METHODS}")
    padded_recall = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]  # make precision non-increasing
    steps = np.nonzero(padded_recall[1:] != padded_recall[:-1])[0]
    return float(np.sum((padded_recall[steps + 1] - padded_recall[steps]) * envelope[steps + 1]))


@dataclass
class ClassMatches:
    """SDS matching of one class: ``tp``/``fp`` (bool [N]) in descending score order."""

    tp: np.ndarray
    fp: np.ndarray
    num_gt: int

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative (recall [N], precision [N]); recall is NaN when ``num_gt == 0``."""
        tp_sum, fp_sum = np.cumsum(self.tp), np.cumsum(self.fp)
        recall = tp_sum / self.num_gt if self.num_gt > 0 else np.full(len(tp_sum), np.nan)
        return recall, tp_sum / np.maximum(tp_sum + fp_sum, 1)


def match_detections(
    scores: np.ndarray,
    image_indices: np.ndarray,
    ious: Sequence[np.ndarray],
    *,
    num_gt_per_image: Sequence[int],
    iou_threshold: float,
) -> ClassMatches:
    """Greedy SDS matching for one class over the whole set (MNC `voc_eval_sds`,
    docs/paper_vs_code.md: evaluation).

    Detections go in descending score (stable: ties keep input order). Each takes the GT
    instance of its class in its image with the largest mask IoU (first on ties); it is a TP
    iff that IoU >= ``iou_threshold`` and that GT is still unmatched, else a FP (also when
    that GT is taken and another would qualify, and when the image has no GT of the class).

    Args:
        scores (ndarray[N]): detection scores.
        image_indices (ndarray[N], int): which image each detection belongs to.
        ious: N arrays; ``ious[n]`` holds detection n's IoU with each GT of the class in its
            image (length ``num_gt_per_image[image_indices[n]]``, possibly 0).
        num_gt_per_image: GT instances of the class in each image.
        iou_threshold: the least mask IoU of a match (0.5 or 0.7 for mAP^r).
    """
    matched = [np.zeros(count, dtype=bool) for count in num_gt_per_image]
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.zeros(len(order), dtype=bool)
    for rank, n in enumerate(order):
        image_matched, det_ious = matched[image_indices[n]], np.asarray(ious[n])
        if len(det_ious) != len(image_matched):
            raise ValueError(
                f"detection {n} has {len(det_ious)} IoUs but its image has {len(image_matched)} GT"
            )
        if len(det_ious) == 0:
            continue
        best = int(np.argmax(det_ious))
        if det_ious[best] >= iou_threshold and not image_matched[best]:
            tp[rank] = image_matched[best] = True
    return ClassMatches(tp=tp, fp=~tp, num_gt=int(sum(num_gt_per_image)))


def json_float(value: float) -> float | None:
    """NaN -> None (JSON has no NaN); other values as float."""
    return None if math.isnan(value) else float(value)


@dataclass
class SDSResult:
    """mAP^r results. ``ap[method][threshold]`` is ndarray [K] (NaN for classes with no GT);
    ``curves[threshold][k]`` is (recall, precision) of class k+1, for plotting."""

    class_names: tuple[str, ...]  # the K foreground names
    iou_thresholds: tuple[float, ...]
    num_gt: np.ndarray  # [K] int
    num_det: np.ndarray  # [K] int
    ap: dict[str, dict[float, np.ndarray]]
    curves: dict[float, list[tuple[np.ndarray, np.ndarray]]]

    @property
    def mean_ap(self) -> dict[str, dict[float, float]]:
        """Mean AP over classes with at least one GT instance (NaN if there are none)."""
        has_gt = self.num_gt > 0
        return {
            method: {
                t: float(per_class[has_gt].mean()) if has_gt.any() else math.nan
                for t, per_class in by_t.items()
            }
            for method, by_t in self.ap.items()
        }

    def table(self) -> str:
        """Per-class text table, AP in percent ("-" for classes with no GT)."""
        columns = [(m, t) for t in self.iou_thresholds for m in AP_METHODS]
        width = max(len(name) for name in (*self.class_names, "mean"))
        lines = [
            f"{'class':<{width}} {'#gt':>5} {'#det':>6} "
            + " ".join(f"{f'{m}@{t:g}':>10}" for m, t in columns)
        ]
        rows = [
            (name, self.num_gt[k], self.num_det[k], [self.ap[m][t][k] for m, t in columns])
            for k, name in enumerate(self.class_names)
        ]
        mean = self.mean_ap
        rows.append(
            ("mean", self.num_gt.sum(), self.num_det.sum(), [mean[m][t] for m, t in columns])
        )
        for name, num_gt, num_det, values in rows:
            cells = " ".join(f"{'-' if math.isnan(v) else f'{100 * v:.1f}':>10}" for v in values)
            lines.append(f"{name:<{width}} {num_gt:>5} {num_det:>6} {cells}")
        lines.append("(AP_r in %; mean over classes with GT; '-' = class has no GT)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (NaN -> None; curves left out)."""
        mean = self.mean_ap
        per_class = {
            name: {"num_gt": int(self.num_gt[k]), "num_det": int(self.num_det[k])}
            | {
                f"AP_r@{t:g}": {m: json_float(self.ap[m][t][k]) for m in AP_METHODS}
                for t in self.iou_thresholds
            }
            for k, name in enumerate(self.class_names)
        }
        return {
            f"mAP_r@{t:g}": {m: json_float(mean[m][t]) for m in AP_METHODS}
            for t in self.iou_thresholds
        } | {"per_class": per_class}


def class_mask_ious(
    predictions: list[dict], ground_truth: list[Target], image_index: dict[str, int]
) -> list[np.ndarray]:
    """Each prediction's mask IoU with the GT instances of its class in its image (the input of
    SDS matching).

    ``image_index`` maps image_id -> position in ``ground_truth``; the predictions are valid
    (``check_result``). IoUs come from one :func:`rle_mask_iou` call per image (void removed).

    Returns:
        one float64 array per prediction, in input order: ``[G_c]`` over the GT of image
        ``image_id`` whose label is the prediction's ``category_id``, in the target's order.

    Raises:
        ValueError naming the image when a prediction's mask size differs from its image size.
    """
    preds_per_image: dict[int, list[int]] = {}
    for p, entry in enumerate(predictions):
        preds_per_image.setdefault(image_index[entry["image_id"]], []).append(p)
    pred_ious: list[np.ndarray] = [np.zeros(0)] * len(predictions)
    for i, pred_ids in sorted(preds_per_image.items()):  # in ground-truth order
        target = ground_truth[i]
        image_size = tuple(target["masks"].shape[-2:])
        sizes = {tuple(predictions[p]["segmentation"]["size"]) for p in pred_ids}
        if sizes != {image_size}:
            raise ValueError(
                f"image {target['image_id']!r}: prediction mask sizes {sizes} != image size "
                f"{image_size}; encode masks at the original image size"
            )
        pred_rles = [predictions[p]["segmentation"] for p in pred_ids]
        ious = rle_mask_iou(
            pred_rles, encode_masks(target["masks"]), target.get("ignore")
        )  # (D, G)
        gt_labels = target["labels"].cpu().numpy()
        for p, det_ious in zip(pred_ids, ious, strict=True):  # the GT of the detection's class
            pred_ious[p] = det_ious[gt_labels == predictions[p]["category_id"]]
    return pred_ious


def evaluate_sds(
    predictions: list[dict],
    ground_truth: list[Target],
    class_names: Sequence[str],
    *,
    iou_thresholds: Sequence[float] = SDS_IOU_THRESHOLDS,
    check: bool = True,
) -> SDSResult:
    """mAP^r of COCO-format ``predictions`` against Targets (docs/paper_vs_code.md: evaluation),
    both AP methods.

    ``class_names`` starts with "background"; K = len(class_names) - 1. IoUs are computed per
    image, all detections against all GT in one :func:`rle_mask_iou` call (no decoding).

    ``check=False`` skips validating each prediction, for callers that already did
    (``load_predictions`` with ``image_ids`` and ``num_classes``): the check decodes every
    RLE string in Python, which adds up on large lists (``benchmarks/evaluation.py``).

    Raises:
        ValueError naming the prediction (index) or image that is wrong: unknown image_id,
        category outside 1..K, bad RLE, mask size different from the image size.
    """
    num_classes = len(class_names) - 1
    image_index = index_images(ground_truth, num_classes)
    if check:
        check_results(predictions, image_ids=image_index, num_classes=num_classes)
    pred_ious = class_mask_ious(predictions, ground_truth, image_index)
    num_gt_per_image = np.zeros((len(ground_truth), num_classes), dtype=np.int64)  # [images, K]
    for i, target in enumerate(ground_truth):
        labels = target["labels"].cpu().numpy()
        num_gt_per_image[i] = np.bincount(labels - 1, minlength=num_classes)

    categories = np.array([entry["category_id"] for entry in predictions], dtype=np.int64)
    scores = np.array([entry["score"] for entry in predictions], dtype=np.float64)
    images = np.array([image_index[entry["image_id"]] for entry in predictions], dtype=np.int64)
    thresholds = tuple(float(t) for t in iou_thresholds)
    ap = {m: {t: np.full(num_classes, np.nan) for t in thresholds} for m in AP_METHODS}
    curves: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {t: [] for t in thresholds}
    for k in range(num_classes):
        dets = np.nonzero(categories == k + 1)[0]  # input order, so ties keep it
        for t in thresholds:
            matches = match_detections(
                scores[dets],
                images[dets],
                [pred_ious[d] for d in dets],
                num_gt_per_image=num_gt_per_image[:, k],
                iou_threshold=t,
            )
            recall, precision = matches.precision_recall()
            curves[t].append((recall, precision))
            if matches.num_gt > 0:
                for method in AP_METHODS:
                    ap[method][t][k] = average_precision(recall, precision, method)
    return SDSResult(
        class_names=tuple(class_names[1:]),
        iou_thresholds=thresholds,
        num_gt=num_gt_per_image.sum(0),
        num_det=np.bincount(categories - 1, minlength=num_classes),
        ap=ap,
        curves=curves,
    )


