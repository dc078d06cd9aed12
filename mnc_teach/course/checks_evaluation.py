"""Exercise checks of notebook 08, the evaluation: mask IoU with void, SDS matching, AP.

Each check runs the learner's ``my_<name>`` on small edge cases against
:mod:`mnc_teach.evaluation.sds` (mask IoU also against pycocotools where there is no void) and
prints a diagnosis of the first failure; :mod:`mnc_teach.course.exercise` says what a failure
does. Shapes: D predicted and G ground-truth masks of H x W pixels; N detections of one class.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch import Tensor

from mnc_teach.course.exercise import Case, call_learner, exercise_check, passed, report_failure
from mnc_teach.evaluation.coco import encode_masks
from mnc_teach.evaluation.sds import ClassMatches, average_precision, mask_iou, match_detections

__all__ = [
    "MATCH_KEYWORDS", "ap_cases", "check_average_precision", "check_mask_iou",
    "check_match_detections", "coco_mask_iou", "mask_iou_cases", "match_cases", "pr_curve",
    "random_masks", "random_matching", "rectangles",
]

MATCH_KEYWORDS = ("num_gt_per_image", "iou_threshold")  # the library's keyword-only parameters
TOLERANCE = 1e-9  # IoUs and APs are ratios of small integers: float64 gets them (almost) exact


# ---------------------------------------------------------------- building cases
def rectangles(height: int, width: int, boxes: Sequence[Sequence[int]]) -> Tensor:
    """uint8 masks [len(boxes), H, W]: mask n is 1 on rows y1:y2, columns x1:x2 of
    ``boxes[n] = (x1, y1, x2, y2)`` (end excluded)."""
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes, strict=True):
        mask[y1:y2, x1:x2] = 1
    return masks


def random_masks(num: int, height: int, width: int, *, seed: int, fill: float = 0.3) -> Tensor:
    """uint8 masks [num, H, W]: each pixel inside with probability ``fill``."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(num, height, width, generator=gen) < fill).to(torch.uint8)


def pr_curve(tp: Sequence[int], num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall [N], precision [N]) of ranked detections, ``tp[n]`` = 1 for a true positive."""
    hits = np.asarray(tp, dtype=bool)
    return ClassMatches(tp=hits, fp=~hits, num_gt=num_gt).precision_recall()


def _fresh(case: Case) -> Case:
    """The case with copies of its inputs (numpy arrays too), so a learner's in-place edit
    cannot change what the diagnosis shows."""
    return case._replace(args=copy.deepcopy(case.args))


# ---------------------------------------------------------------- mask IoU
def mask_iou_cases() -> list[Case]:
    """The visible cases of ``my_mask_iou``: (pred_masks, gt_masks, ignore)."""
    void_band = torch.zeros(8, 10, dtype=torch.uint8)
    void_band[:, 7] = 1  # column 7 is void
    return [
        Case(
            "two overlapping blocks, no void",
            (rectangles(8, 10, [(1, 1, 7, 6)]), rectangles(8, 10, [(4, 3, 9, 8)]), None),
            "IoU = |P and G| / |P or G|, counted in pixels; |P or G| = |P| + |G| - |P and G|",
        ),
        Case(
            "identical masks",
            (rectangles(6, 6, [(1, 1, 4, 5)]), rectangles(6, 6, [(1, 1, 4, 5)]), None),
            "a mask's IoU with itself is 1",
        ),
        Case(
            "3 x 2 pairs",
            (
                rectangles(8, 8, [(0, 0, 4, 4), (2, 2, 6, 6), (0, 0, 8, 8)]),
                rectangles(8, 8, [(0, 0, 4, 4), (4, 4, 8, 8)]),
                None,
            ),
            "result[d, g] pairs pred_masks[d] with gt_masks[g]: flatten the masks to [D, H*W] "
            "and [G, H*W], the intersections are one matrix product",
        ),
        Case(
            "no predictions",
            (rectangles(4, 4, []), rectangles(4, 4, [(0, 0, 2, 2), (1, 1, 3, 3)]), None),
            "D = 0 must give a [0, G] result",
        ),
        Case(
            "empty masks",
            (rectangles(5, 5, [(0, 0, 0, 0)]), rectangles(5, 5, [(0, 0, 0, 0), (1, 1, 3, 3)]),
             None),
            "an empty union gives IoU 0 (not NaN): divide only where the union is > 0",
        ),
        Case(
            "IoU exactly 0.7",
            (rectangles(1, 10, [(0, 0, 7, 1)]), rectangles(1, 10, [(0, 0, 10, 1)]), None),
            "return float64: in float32, 7/10 is 0.69999999 and fails the test IoU >= 0.7",
        ),
        Case(
            "a prediction spilling into void",
            (rectangles(8, 10, [(2, 1, 9, 6)]), rectangles(8, 10, [(2, 1, 7, 6)]), void_band),
            "remove the void pixels (ignore == 1) from each prediction before counting",
        ),
        Case(
            "ground-truth pixels under void",
            (rectangles(8, 10, [(2, 1, 9, 6)]), rectangles(8, 10, [(5, 2, 9, 7)]), void_band),
            "cut void from the predictions only: the ground truth is counted as it is given "
            "(a dataset's GT has no void pixels, but your function must not change it)",
        ),
        Case(
            "random masks with void",
            (random_masks(4, 12, 12, seed=0), random_masks(3, 12, 12, seed=1),
             random_masks(1, 12, 12, seed=2, fill=0.2)[0]),
            "compare one pair by hand: P' = P and not void; IoU = |P' and G| / |P' or G|",
        ),
    ]


def coco_mask_iou(pred: Tensor, gt: Tensor) -> np.ndarray:
    """pycocotools' mask IoU on the RLEs of the masks (no void): float64 [D, G]."""
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros((len(pred), len(gt)))
    return mask_utils.iou(encode_masks(pred), encode_masks(gt), [0] * len(gt))


def _first_difference(got: Tensor, expected: Tensor) -> tuple[int, int]:
    wrong = ~torch.isclose(got.double(), expected, rtol=0.0, atol=TOLERANCE)  # NaN is wrong too
    d, g = (int(i) for i in wrong.nonzero()[0])
    return d, g


@exercise_check("mask_iou", mask_iou=mask_iou)
def check_mask_iou(fn: Callable, *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_mask_iou(pred_masks [D, H, W], gt_masks [G, H, W], ignore [H, W] | None)
    -> [D, G] float64`` against ``sds.mask_iou`` (and pycocotools where there is no void)."""
    cases = mask_iou_cases() if cases is None else cases
    for case in cases:
        pred, gt, ignore = case.args
        expected = mask_iou(pred, gt, ignore)  # (D, G) float64
        ok, got = call_learner(fn, case, fn_name="my_mask_iou")
        if not ok:
            return False
        if not torch.is_tensor(got) or got.shape != expected.shape:
            return report_failure(case, [
                f"pred_masks {tuple(pred.shape)}, gt_masks {tuple(gt.shape)}",
                f"expected a tensor of shape {tuple(expected.shape)}, "
                f"got {getattr(got, 'shape', type(got).__name__)}",
            ])
        if not torch.allclose(got.double(), expected, rtol=0.0, atol=1e-6):
            d, g = _first_difference(got, expected)
            lines = [
                f"pair (prediction {d}, ground truth {g}) of {tuple(expected.shape)}: "
                f"|P| = {int((pred[d] != 0).sum())}, |G| = {int((gt[g] != 0).sum())}, "
                f"|P and G| = {int(((pred[d] != 0) & (gt[g] != 0)).sum())}",
                f"expected = {expected[d, g].item():.6f}",
                f"got      = {got[d, g].item():.6f}",
            ]
            if ignore is None:
                lines.append(f"pycocotools on RLEs: {coco_mask_iou(pred, gt)[d, g]:.6f}")
            else:
                void = ignore != 0
                lines.insert(1, f"void pixels: {int(void.sum())}, of them in P: "
                                f"{int((void & (pred[d] != 0)).sum())}, in G: "
                                f"{int((void & (gt[g] != 0)).sum())}")
            return report_failure(case, lines)
        if got.dtype != torch.float64 or not torch.allclose(got, expected, rtol=0, atol=TOLERANCE):
            return report_failure(case, [
                f"expected float64 values {expected.flatten()[:4].tolist()} (float64, so that "
                "an IoU of 7/10 passes IoU >= 0.7: in float32 it is 0.69999999)",
                f"got {got.dtype} values {got.flatten()[:4].tolist()}",
            ])
    return passed(f"my_mask_iou matches sds.mask_iou (and pycocotools where there is no void) "
                  f"on all {len(cases)} cases")


# ---------------------------------------------------------------- SDS matching
def _ious(*rows: Sequence[float]) -> list[np.ndarray]:
    return [np.asarray(row, dtype=np.float64) for row in rows]


def random_matching(num: int, num_images: int, *, seed: int, threshold: float) -> tuple:
    """The arguments of a random matching: (scores [N], image_indices [N], ious, num_gt_per_image,
    iou_threshold), with 0-3 instances per image and IoUs skewed towards 1."""
    rng = np.random.default_rng(seed)
    num_gt = rng.integers(0, 4, size=num_images).tolist()
    images = rng.integers(0, num_images, size=num)
    ious = [rng.uniform(0, 1, size=num_gt[i]) ** 0.5 for i in images]
    return rng.uniform(0, 1, size=num), images, ious, num_gt, threshold


def match_cases() -> list[Case]:
    """The visible cases of ``my_match_detections``: (scores, image_indices, ious,
    num_gt_per_image, iou_threshold)."""
    one = np.zeros(1, dtype=np.int64)
    return [
        Case("one good detection", (np.array([0.9]), one, _ious([0.8]), [1], 0.5),
             "IoU 0.8 >= 0.5 with a free instance: a TP"),
        Case("IoU below the threshold", (np.array([0.9]), one, _ious([0.6]), [1], 0.7),
             "IoU 0.6 < 0.7: an FP"),
        Case("IoU exactly at the threshold", (np.array([0.9]), one, _ious([0.5]), [1], 0.5),
             "a match needs IoU >= threshold (not >): IoU 0.5 at threshold 0.5 is a TP"),
        Case("an image without an instance of the class",
             (np.array([0.9, 0.8]), np.array([0, 1]), _ious([0.9], []), [1, 0], 0.5),
             "a detection in an image with no GT of its class (ious[n] is empty) is an FP"),
        Case("duplicate: the best instance is taken",
             (np.array([0.9, 0.8]), np.zeros(2, dtype=np.int64), _ious([0.8, 0.3], [0.7, 0.6]),
              [2], 0.5),
             "each detection takes its max-IoU instance; when that one is already matched it is "
             "an FP, even if another instance (here IoU 0.6) would qualify: no fall-back"),
        Case("scores not in order",
             (np.array([0.2, 0.9, 0.5]), np.zeros(3, dtype=np.int64),
              _ious([0.3], [0.8], [0.6]), [1], 0.5),
             "go down the detections by descending score, and return tp/fp in that order"),
        Case("equal scores keep the input order",
             (np.array([0.5, 0.5]), np.zeros(2, dtype=np.int64), _ious([0.3], [0.8]), [1], 0.5),
             "sort stably (np.argsort(-scores, kind='stable')): np.argsort(scores)[::-1] "
             "reverses ties"),
        Case("each image has its own instances",
             (np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1]), _ious([0.9], [0.8], [0.7]),
              [1, 1], 0.5),
             "instance g of image 0 and instance g of image 1 are different: keep one "
             "'matched' array per image"),
        Case("no detections",
             (np.zeros(0), np.zeros(0, dtype=np.int64), [], [2, 1], 0.5),
             "empty tp and fp; num_gt still counts every instance of every image"),
        Case("30 random detections in 4 images", random_matching(30, 4, seed=0, threshold=0.5),
             "compare with the rules, detection by detection in score order"),
    ]


def _describe_matching(case: Case) -> list[str]:
    scores, images, ious, num_gt, threshold = case.args
    shown = min(len(scores), 6)
    return [
        f"iou_threshold = {threshold}, num_gt_per_image = {list(num_gt)[:6]}",
        f"scores        = {np.round(scores[:shown], 3).tolist()}",
        f"image_indices = {np.asarray(images[:shown]).tolist()}",
        f"ious          = {[np.round(row, 3).tolist() for row in ious[:shown]]}",
    ]


@exercise_check("sds_matching", match_detections=match_detections)
def check_match_detections(fn: Callable, *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_match_detections(scores [N], image_indices [N], ious, *, num_gt_per_image,
    iou_threshold) -> ClassMatches`` against ``sds.match_detections``."""
    cases = match_cases() if cases is None else cases
    for case in cases:
        positional, by_name = case.args[:3], dict(zip(MATCH_KEYWORDS, case.args[3:], strict=True))
        expected = match_detections(*copy.deepcopy(positional), **copy.deepcopy(by_name))
        ok, got = call_learner(fn, _fresh(case), fn_name="my_match_detections",
                               keywords=MATCH_KEYWORDS)
        if not ok:
            return False
        if not all(hasattr(got, name) for name in ("tp", "fp", "num_gt")):
            return report_failure(case, [
                f"expected a ClassMatches(tp=..., fp=..., num_gt=...), got {type(got).__name__}"
            ])
        tp, fp = np.asarray(got.tp), np.asarray(got.fp)
        if tp.dtype != bool or fp.dtype != bool or tp.shape != expected.tp.shape:
            return report_failure(case, [
                f"expected tp and fp: bool arrays of shape {expected.tp.shape}",
                f"got tp {tp.dtype} {tp.shape}, fp {fp.dtype} {fp.shape}",
            ])
        if not (np.array_equal(tp, expected.tp) and np.array_equal(fp, expected.fp)):
            rank = int(np.flatnonzero((tp != expected.tp) | (fp != expected.fp))[0])
            return report_failure(case, _describe_matching(case) + [
                f"expected tp = {expected.tp.astype(int).tolist()} (in descending score order)",
                f"got      tp = {tp.astype(int).tolist()}, fp = {fp.astype(int).tolist()}",
                f"first difference at rank {rank}",
            ])
        if int(got.num_gt) != expected.num_gt:
            return report_failure(case, [
                f"num_gt_per_image = {list(case.args[3])}",
                f"expected num_gt = {expected.num_gt}, got {got.num_gt}",
            ])
    return passed(f"my_match_detections matches sds.match_detections on all {len(cases)} cases")


# ---------------------------------------------------------------- average precision
def ap_cases() -> list[Case]:
    """The visible cases of ``my_average_precision``: (recall, precision, method)."""
    dip = pr_curve([1, 0, 0, 1, 1], 3)  # precision 1, 0.5, 0.33, 0.5, 0.6: not monotone
    first = pr_curve([1, 0, 1], 2)  # recall 0.5 at the first rank
    half = pr_curve([1, 0], 2)  # recall 0.5 exactly, never more
    return [
        Case("one detection, a TP of one instance", (*pr_curve([1], 1), "area"),
             "recall goes from 0 to 1 at precision 1: AP 1 (the area from recall 0 to the "
             "first recall counts: pad recall with 0 in front)"),
        Case("area: precision goes down and up again", (*dip, "area"),
             "make the precision monotone first: at each rank, the best precision at that "
             "recall or more (np.maximum.accumulate on the reversed array)"),
        Case("area: the first detection is a TP", (*first, "area"),
             "pad recall with 0 in front (and 1 at the end, precision 0 at both ends): the "
             "area from recall 0 up to the first recall counts too"),
        Case("area: recall never reaches 1", (*half, "area"), "no area beyond the last recall"),
        Case("voc07: a curve that stops at recall 0.5", (*half, "voc07"),
             "the mean over the 11 points 0, 0.1, ..., 1 of the best precision at recall >= "
             "point (0 where there is none): recall 0.5 counts for the point 0.5"),
        Case("voc07: precision goes down and up again", (*dip, "voc07"),
             "at each point take the MAX precision over all ranks with recall >= point"),
        Case("no true positive", (*pr_curve([0, 0, 0], 3), "area"),
             "recall stays 0: AP 0"),
        Case("no detections", (np.zeros(0), np.zeros(0), "voc07"),
             "an empty curve has AP 0 (max over nothing: use initial=0.0)"),
        Case("40 ranked detections, area",
             (*pr_curve(np.random.default_rng(0).random(40) < 0.4, 25), "area"),
             "area = sum over recall steps of (step in recall) x (envelope precision there)"),
    ]


@exercise_check("average_precision", average_precision=average_precision)
def check_average_precision(fn: Callable, *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_average_precision(recall [N], precision [N], method) -> float`` against
    ``sds.average_precision`` ("area" and "voc07")."""
    cases = ap_cases() if cases is None else cases
    for case in cases:
        recall, precision, method = case.args
        expected = average_precision(recall, precision, method)
        ok, got = call_learner(fn, _fresh(case), fn_name="my_average_precision")
        if not ok:
            return False
        try:
            value = float(got)
        except (TypeError, ValueError):
            return report_failure(case, [f"expected a float, got {type(got).__name__}"])
        if not math.isclose(value, expected, rel_tol=0.0, abs_tol=TOLERANCE):
            return report_failure(case, [
                f"method    = {method!r}",
                f"recall    = {np.round(recall[:8], 3).tolist()}",
                f"precision = {np.round(precision[:8], 3).tolist()}",
                f"expected  = {expected:.6f}",
                f"got       = {value:.6f}",
            ])
    return passed(f"my_average_precision matches sds.average_precision on all {len(cases)} cases")
