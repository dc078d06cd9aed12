"""Tests for mnc_teach.evaluation.analysis: hand-built outcomes, and agreement with evaluate_sds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import CLASSES, pred, rect, synthetic_set, target

from mnc_teach.evaluation.analysis import (
    FP_DUPLICATE,
    FP_LOW_IOU,
    FP_NO_GT,
    FP_WRONG_CLASS,
    OUTCOMES,
    TP,
    UNMATCHED,
    FalsePositiveCause,
    analyze_matches,
    false_positive_cause,
    nearest_instance,
)
from mnc_teach.evaluation.coco import decode_mask
from mnc_teach.evaluation.sds import evaluate_sds, mask_iou


def hand_case() -> tuple[list[dict], list[dict]]:
    """Image a: circles A (rows 0-9) and B (rows 20-29), square C; image b: nothing."""
    gt_a = rect(0, 10, 0, 10)
    gt_b = rect(20, 30, 0, 10)
    gt_c = rect(0, 10, 20, 30)
    ground_truth = [target("a", [gt_a, gt_b, gt_c], [1, 1, 2]), target("b", [], [])]
    predictions = [
        pred("a", 1, gt_a, 0.9),  # 0: TP on A
        pred("a", 1, rect(0, 9, 0, 10), 0.8),  # 1: A again, IoU 0.9: duplicate
        pred("a", 1, rect(24, 30, 0, 10), 0.7),  # 2: IoU 60/100 with B: low IoU at 0.7, TP at 0.5
        pred("a", 3, gt_c, 0.6),  # 3: right place, wrong class (no triangle in a)
        pred("b", 1, gt_a, 0.95),  # 4: image without GT
    ]
    return predictions, ground_truth


def test_outcomes_by_hand_at_0_7() -> None:
    predictions, ground_truth = hand_case()
    analysis = analyze_matches(predictions, ground_truth, CLASSES, iou_threshold=0.7)
    assert analysis.outcome.tolist() == [TP, FP_DUPLICATE, FP_LOW_IOU, FP_NO_GT, FP_NO_GT]
    assert analysis.best_gt.tolist() == [0, 0, 1, UNMATCHED, UNMATCHED]
    np.testing.assert_allclose(analysis.best_iou, [1.0, 0.9, 0.6, 0.0, 0.0])
    assert [m.tolist() for m in analysis.gt_matched_by] == [[0, UNMATCHED, UNMATCHED], []]
    np.testing.assert_allclose(analysis.gt_best_iou[0], [1.0, 0.6, 0.0])  # C: no square predicted
    assert [m.tolist() for m in analysis.gt_best_pred] == [[0, 2, UNMATCHED], []]
    assert analysis.counts() == {
        TP: 1,
        FP_LOW_IOU: 1,
        FP_DUPLICATE: 1,
        FP_NO_GT: 2,
        "missed GT": 2,
        "GT": 3,
    }
    assert analysis.false_positives().tolist() == [4, 1, 2, 3]  # by score
    assert analysis.missed() == [(0, 1), (0, 2)]  # B (a near miss, 0.6) before C (0.0)
    assert analysis.matched_below(1.01).tolist() == [0]


def test_outcomes_by_hand_at_0_5() -> None:
    predictions, ground_truth = hand_case()
    analysis = analyze_matches(predictions, ground_truth, CLASSES, iou_threshold=0.5)
    assert analysis.outcome.tolist() == [TP, FP_DUPLICATE, TP, FP_NO_GT, FP_NO_GT]
    assert [m.tolist() for m in analysis.gt_matched_by] == [[0, 2, UNMATCHED], []]
    assert analysis.matched_below(0.7).tolist() == [2]  # matched at 0.5 with IoU 0.6
    assert analysis.matched_below(1.01).tolist() == [0, 2]  # by score
    assert analysis.missed() == [(0, 2)]


def test_no_predictions() -> None:
    _, ground_truth = hand_case()
    analysis = analyze_matches([], ground_truth, CLASSES, iou_threshold=0.5)
    assert len(analysis.outcome) == 0 and analysis.false_positives().tolist() == []
    assert analysis.counts()["missed GT"] == 3


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_agrees_with_evaluate_sds_curves(threshold: float) -> None:
    predictions, ground_truth = synthetic_set()
    analysis = analyze_matches(predictions, ground_truth, CLASSES, iou_threshold=threshold)
    sds = evaluate_sds(predictions, ground_truth, CLASSES, iou_thresholds=(threshold,))
    for k in range(1, len(CLASSES)):
        dets = np.flatnonzero(analysis.category == k)
        ranked = dets[np.argsort(-analysis.score[dets], kind="stable")]
        tp = analysis.is_tp[ranked]
        recall, precision = sds.curves[threshold][k - 1]
        num_gt = int(sds.num_gt[k - 1])
        ranks = np.arange(1, len(tp) + 1)
        np.testing.assert_array_equal(np.cumsum(tp) / ranks, precision)
        if num_gt:
            np.testing.assert_array_equal(np.cumsum(tp) / num_gt, recall)
    counts = analysis.counts()
    assert sum(counts[o] for o in OUTCOMES) == len(predictions)
    assert counts[TP] + counts["missed GT"] == counts["GT"] == int(sds.num_gt.sum())
    matched = [p for m in analysis.gt_matched_by for p in m.tolist() if p != UNMATCHED]
    # each TP matches one GT, once
    assert sorted(matched) == np.flatnonzero(analysis.is_tp).tolist()


def test_best_ious_equal_mask_iou_on_decoded_masks() -> None:
    predictions, ground_truth = synthetic_set()
    analysis = analyze_matches(predictions, ground_truth, CLASSES, iou_threshold=0.5)
    best_per_gt = [np.zeros(len(t["labels"])) for t in ground_truth]
    for p, entry in enumerate(predictions):
        i = int(analysis.image[p])
        gt = ground_truth[i]
        mask = torch.from_numpy(decode_mask(entry["segmentation"]))
        ious = mask_iou(mask[None], gt["masks"])[0].numpy()
        same_class = (gt["labels"] == entry["category_id"]).numpy()
        if same_class.any():
            assert analysis.best_iou[p] == ious[same_class].max()
            best_gt = analysis.best_gt[p]
            assert ious[best_gt] == analysis.best_iou[p] and same_class[best_gt]
            best_per_gt[i][same_class] = np.maximum(best_per_gt[i][same_class], ious[same_class])
        else:
            assert analysis.best_gt[p] == UNMATCHED and analysis.outcome[p] == FP_NO_GT
    for ours, reference in zip(analysis.gt_best_iou, best_per_gt, strict=True):
        np.testing.assert_array_equal(ours, reference)
    best_of_gt = zip(analysis.gt_best_pred, analysis.gt_best_iou, strict=True)
    for i, (preds, best) in enumerate(best_of_gt):
        for g, p in enumerate(preds.tolist()):  # the recorded prediction reaches the recorded IoU
            if p == UNMATCHED:
                assert best[g] == 0
            else:
                mask = torch.from_numpy(decode_mask(predictions[p]["segmentation"]))[None]
                assert mask_iou(mask, ground_truth[i]["masks"][g][None]).item() == best[g]


def test_rejects_unknown_image() -> None:
    predictions, ground_truth = hand_case()
    with pytest.raises(ValueError, match="'zzz' is not in the ground truth"):
        unknown = [pred("zzz", 1, rect(0, 5, 0, 5), 0.9)]
        analyze_matches(unknown, ground_truth, CLASSES, iou_threshold=0.5)


def test_false_positive_causes_by_hand() -> None:
    predictions, ground_truth = hand_case()
    analysis = analyze_matches(predictions, ground_truth, CLASSES, iou_threshold=0.7)
    causes = {p: false_positive_cause(analysis, p, decode_mask(predictions[p]["segmentation"]),
                                      ground_truth[analysis.image[p]]) for p in (1, 2, 3, 4)}
    assert causes[1] == FalsePositiveCause(FP_DUPLICATE, pytest.approx(0.9), 0, 1)
    assert causes[2] == FalsePositiveCause(FP_LOW_IOU, pytest.approx(0.6), 1, 1)
    # a triangle on the square C: the matcher says "no GT of its class", the cause is the class
    assert causes[3] == FalsePositiveCause(FP_WRONG_CLASS, 1.0, 2, 2)
    assert causes[4] == FalsePositiveCause(FP_NO_GT, 0.0, UNMATCHED, 0)  # an image without GT
    with pytest.raises(ValueError, match="true positive"):
        false_positive_cause(analysis, 0, decode_mask(predictions[0]["segmentation"]),
                             ground_truth[0])


def test_wrong_class_needs_class_iou() -> None:
    gt_c = rect(0, 10, 20, 30)
    ground_truth = [target("a", [gt_c], [2])]
    predictions = [pred("a", 3, rect(0, 10, 24, 30), 0.9)]  # a triangle on 60 % of a square
    analysis = analyze_matches(predictions, ground_truth, CLASSES, iou_threshold=0.5)
    mask = decode_mask(predictions[0]["segmentation"])
    assert false_positive_cause(analysis, 0, mask, ground_truth[0]).cause == FP_WRONG_CLASS
    strict = false_positive_cause(analysis, 0, mask, ground_truth[0], class_iou=0.7)
    assert strict == FalsePositiveCause(FP_NO_GT, 0.0, 0, 2)  # the object is kept for the outline


def test_nearest_instance_any_class_with_void() -> None:
    square, circle = rect(0, 10, 0, 10), rect(0, 10, 12, 22)
    void = torch.zeros_like(square)
    void[:, 10:12] = 1  # the band between the two objects
    truth = target("a", [square, circle], [2, 1], ignore=void)
    assert nearest_instance(rect(0, 10, 10, 22), truth) == (1, 1.0)  # its void columns removed
    assert nearest_instance(rect(0, 10, 0, 10).numpy(), truth) == (0, 1.0)
    assert nearest_instance(rect(20, 30, 20, 30), truth) == (UNMATCHED, 0.0)  # overlaps nothing
    assert nearest_instance(square, target("b", [], [])) == (UNMATCHED, 0.0)
