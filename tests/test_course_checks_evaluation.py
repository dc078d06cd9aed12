"""The checks of notebook 08 (mask IoU, SDS matching, AP) pass the library's functions and
diagnose planted wrong ones: which case, and a hint; hidden tests show no inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnc_teach.course.checks_evaluation import (
    check_average_precision,
    check_mask_iou,
    check_match_detections,
    coco_mask_iou,
    mask_iou_cases,
    pr_curve,
    random_masks,
    rectangles,
)
from mnc_teach.course.exercise import Case, ExerciseFailed
from mnc_teach.evaluation.sds import (
    VOC07_RECALL_POINTS,
    ClassMatches,
    average_precision,
    mask_iou,
    match_detections,
)


# ---------------------------------------------------------------- planted wrong mask IoUs
def _iou_counting(pred, gt, ignore=None, *, cut_pred=True, cut_gt=False, cut_union=False,
                  guard=True):
    """Dense mask IoU with the void handled as the flags say (the library: cut_pred only)."""
    pred, gt = (pred != 0).double().flatten(1), (gt != 0).double().flatten(1)  # (D, HW), (G, HW)
    keep = torch.ones(pred.shape[1], dtype=torch.float64) if ignore is None else (
        (ignore == 0).double().flatten())  # (HW,)
    pred_c = pred * keep if cut_pred else pred
    gt_c = gt * keep if cut_gt else gt
    inter = pred_c @ gt_c.T  # (D, G)
    union = pred_c.sum(1)[:, None] + gt_c.sum(1)[None, :] - inter
    if cut_union:  # the pixels of P or G that are void, subtracted from the union only
        union = union - (1 - (1 - pred[:, None]) * (1 - gt[None])) @ (1 - keep)
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0) if guard else inter / union


def _iou_void_kept(pred, gt, ignore=None):
    return _iou_counting(pred, gt, ignore, cut_pred=False)


def _iou_void_cut_from_gt_too(pred, gt, ignore=None):
    return _iou_counting(pred, gt, ignore, cut_gt=True)


def _iou_void_cut_from_union_only(pred, gt, ignore=None):
    return _iou_counting(pred, gt, ignore, cut_pred=False, cut_union=True)


def _iou_nan_on_empty_union(pred, gt, ignore=None):
    return _iou_counting(pred, gt, ignore, guard=False)


def _iou_float32(pred, gt, ignore=None):
    return mask_iou(pred, gt, ignore).float()


# ---------------------------------------------------------------- planted wrong matchings
def _matching(scores, image_indices, ious, *, num_gt_per_image, iou_threshold,
              fall_back=False, sort=True, strict=False, shared=False, reverse_ties=False):
    """Greedy matching with one planted mistake per flag (all False: the library's)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not sort:
        order = np.arange(len(scores))
    elif reverse_ties:
        order = np.argsort(scores, kind="stable")[::-1]
    else:
        order = np.argsort(-scores, kind="stable")
    shared_flags = np.zeros(max(num_gt_per_image, default=0), dtype=bool)
    matched = [shared_flags if shared else np.zeros(n, dtype=bool) for n in num_gt_per_image]
    tp = np.zeros(len(order), dtype=bool)
    for rank, n in enumerate(order):
        taken, det_ious = matched[image_indices[n]], np.asarray(ious[n])
        candidates = np.argsort(-det_ious, kind="stable")
        for g in candidates if fall_back else candidates[:1]:
            good = det_ious[g] > iou_threshold if strict else det_ious[g] >= iou_threshold
            if good and not taken[g]:
                tp[rank] = taken[g] = True
                break
    return ClassMatches(tp=tp, fp=~tp, num_gt=int(sum(num_gt_per_image)))


def _planted_matching(**mistake):
    def wrong(scores, image_indices, ious, *, num_gt_per_image, iou_threshold):
        return _matching(scores, image_indices, ious, num_gt_per_image=num_gt_per_image,
                         iou_threshold=iou_threshold, **mistake)

    return wrong


# ---------------------------------------------------------------- planted wrong APs
def _ap_no_envelope(recall, precision, method="area"):
    if method == "voc07":
        return average_precision(recall, precision, method)
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))


def _ap_voc07_strict(recall, precision, method="area"):
    if method == "area":
        return average_precision(recall, precision, method)
    recall, precision = np.asarray(recall), np.asarray(precision)
    return float(np.mean([precision[recall > p].max(initial=0.0) for p in VOC07_RECALL_POINTS]))


def _ap_area_unpadded(recall, precision, method="area"):
    if method == "voc07":
        return average_precision(recall, precision, method)
    envelope = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


def _ap_max_of_empty(recall, precision, method="area"):
    if method == "voc07":
        return float(np.mean([precision[recall >= p].max() for p in VOC07_RECALL_POINTS]))
    return average_precision(recall, precision, method)


def _not_implemented(*args, **kwargs):
    raise NotImplementedError


# ---------------------------------------------------------------- tests
def test_the_library_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_mask_iou(mask_iou).status == "passed"
    assert check_match_detections(match_detections).status == "passed"
    assert check_average_precision(average_precision).status == "passed"
    assert capsys.readouterr().out.count("✓") == 3
    assert check_match_detections(_planted_matching()).status == "passed"  # the planting base


def test_the_library_iou_equals_pycocotools_where_there_is_no_void() -> None:
    no_void = [case for case in mask_iou_cases() if case.args[2] is None]
    assert len(no_void) >= 5
    for case in no_void:
        pred, gt, _ = case.args
        np.testing.assert_array_equal(mask_iou(pred, gt).numpy(), coco_mask_iou(pred, gt))


@pytest.mark.parametrize(
    ("check", "wrong", "failing_case"),
    [
        (check_mask_iou, _iou_void_kept, "a prediction spilling into void"),
        (check_mask_iou, _iou_void_cut_from_gt_too, "ground-truth pixels under void"),
        (check_mask_iou, _iou_void_cut_from_union_only, "ground-truth pixels under void"),
        (check_mask_iou, _iou_nan_on_empty_union, "empty masks"),
        (check_mask_iou, _iou_float32, "two overlapping blocks, no void"),
        (check_match_detections, _planted_matching(fall_back=True),
         "duplicate: the best instance is taken"),
        (check_match_detections, _planted_matching(sort=False), "scores not in order"),
        (check_match_detections, _planted_matching(strict=True), "IoU exactly at the threshold"),
        (check_match_detections, _planted_matching(reverse_ties=True),
         "equal scores keep the input order"),
        (check_match_detections, _planted_matching(shared=True),
         "each image has its own instances"),
        (check_average_precision, _ap_no_envelope, "area: precision goes down and up again"),
        (check_average_precision, _ap_voc07_strict, "voc07: a curve that stops at recall 0.5"),
        (check_average_precision, _ap_area_unpadded, "one detection, a TP of one instance"),
        (check_average_precision, _ap_max_of_empty, "voc07: a curve that stops at recall 0.5"),
    ],
)
def test_a_planted_wrong_solution_fails_naming_its_case(check, wrong, failing_case, capsys):
    result = check(wrong)
    out = capsys.readouterr().out
    assert result.status == "wrong" and not result
    assert out.startswith(f"✗ {failing_case}"), out
    assert "hint:" in out and result.first_failure.startswith(failing_case)


def test_the_float32_diagnosis_says_why_float64(capsys: pytest.CaptureFixture[str]) -> None:
    assert not check_mask_iou(_iou_float32)
    out = capsys.readouterr().out
    assert "expected float64" in out and "got torch.float32" in out and "0.69999999" in out


def test_a_wrong_matching_shows_its_inputs_and_both_answers(capsys) -> None:
    assert not check_match_detections(_planted_matching(sort=False))
    out = capsys.readouterr().out
    assert "scores        = [0.2, 0.9, 0.5]" in out
    assert "expected tp = [1, 0, 0]" in out and "got      tp = [0, 1, 0]" in out


@pytest.mark.parametrize(
    ("check", "name"),
    [
        (check_mask_iou, "my_mask_iou"),
        (check_match_detections, "my_match_detections"),
        (check_average_precision, "my_average_precision"),
    ],
)
def test_a_stub_is_missing_in_one_line(check, name, capsys) -> None:
    result = check(_not_implemented)
    out = capsys.readouterr().out
    assert result.status == "missing"
    assert out == f"✗ {name} is not implemented yet\n"


def test_a_hidden_test_raises_and_shows_no_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    void = torch.zeros(6, 6, dtype=torch.uint8)
    void[:, 0] = 1
    hidden_iou = [Case("secret void case", (rectangles(6, 6, [(0, 0, 4, 4)]),
                                            rectangles(6, 6, [(1, 0, 4, 4)]), void), "cut void")]
    with pytest.raises(ExerciseFailed, match="secret void case"):
        check_mask_iou(_iou_void_kept, cases=hidden_iou, hidden=True)
    hidden_ap = [Case("secret curve", (*pr_curve([1, 1, 0], 4), "area"), "pad it")]
    with pytest.raises(ExerciseFailed, match="secret curve"):
        check_average_precision(_ap_area_unpadded, cases=hidden_ap, hidden=True)
    out = capsys.readouterr().out
    assert "secret void case" in out and "secret curve" in out and "hint:" in out
    assert "expected" not in out and "recall" not in out and "[" not in out
    # a right answer passes a hidden test silently
    assert check_mask_iou(mask_iou, cases=hidden_iou, hidden=True)
    assert capsys.readouterr().out == ""


def test_case_builders() -> None:
    masks = rectangles(4, 5, [(1, 0, 3, 2), (0, 0, 0, 0)])
    assert masks.shape == (2, 4, 5) and masks.dtype == torch.uint8
    assert masks[0].sum() == 4 and masks[1].sum() == 0 and masks[0, 1, 2] == 1
    random = random_masks(3, 8, 8, seed=1)
    assert torch.equal(random, random_masks(3, 8, 8, seed=1))
    assert set(random.unique().tolist()) <= {0, 1}
    recall, precision = pr_curve([1, 0, 1], 4)
    np.testing.assert_allclose(recall, [0.25, 0.25, 0.5])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])
