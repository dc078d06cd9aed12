"""The anchor-labelling check of notebook 01 passes the library's function and a learner's, and
diagnoses planted mistakes by anchor; a stub is missing in one line; a hidden test prints no
inputs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mnc_teach.anchors import anchors_inside_image
from mnc_teach.boxes import box_iou
from mnc_teach.course.checks_anchors import anchor_case, check_label_anchors
from mnc_teach.course.exercise import ExerciseFailed, boxes_tensor
from mnc_teach.matching import IGNORE, NEGATIVE, POSITIVE, label_anchors


def _fails_naming(result, out: str, case_name: str) -> bool:
    """The check failed (status "wrong") and its first ✗ line names ``case_name``."""
    return result.status == "wrong" and not result and out.startswith(f"✗ {case_name}")


def _label(anchors, gt_boxes, image_size, *, positive_iou=0.7, negative_iou=0.3,
           allowed_border=0.0, mistake: str = "") -> tuple[Tensor, Tensor]:
    """A learner's label_anchors; ``mistake`` plants one of the usual errors."""
    labels = torch.full((len(anchors),), IGNORE, dtype=torch.int64)
    matched_gt = torch.zeros(len(anchors), dtype=torch.int64)
    inside = anchors_inside_image(anchors, image_size, allowed_border)
    if mistake == "no border":
        inside = torch.ones_like(inside)
    if len(gt_boxes) == 0:
        labels[inside] = NEGATIVE
        return labels, matched_gt
    iou = box_iou(gt_boxes, anchors[inside])  # (G, T_inside)
    best_iou, best_gt = iou.max(dim=0)  # (T_inside,)
    inside_labels = torch.full_like(best_gt, IGNORE)
    negative = best_iou <= negative_iou if mistake == "<= 0.3" else best_iou < negative_iou
    inside_labels[negative] = NEGATIVE
    inside_labels[best_iou >= positive_iou] = POSITIVE
    if iou.shape[1] and mistake != "no best anchor":
        best_per_gt = iou.max(dim=1, keepdim=True).values  # (G, 1)
        is_best = iou == best_per_gt  # (G, T_inside)
        if mistake == "argmax":
            is_best = torch.zeros_like(is_best).scatter_(1, iou.argmax(dim=1, keepdim=True), True)
        if mistake != "zero best":
            is_best &= best_per_gt > 0
        inside_labels[is_best.any(dim=0)] = POSITIVE
        if mistake == "best gt":  # the best anchor of g regresses to g (not to its own max)
            for g in range(len(gt_boxes)):
                best_gt[is_best[g]] = g
    labels[inside] = inside_labels
    matched_gt[inside] = best_gt
    return labels, matched_gt


def _planted_label(mistake: str):
    return lambda *args, **kwargs: _label(*args, **kwargs, mistake=mistake)


def test_anchor_labels_check_passes_the_library_and_a_learners_solution(capsys) -> None:
    assert check_label_anchors(label_anchors).status == "passed"
    assert check_label_anchors(_label).status == "passed"
    assert capsys.readouterr().out.count("✓ my_label_anchors matches") == 2


@pytest.mark.parametrize(
    ("mistake", "case_name", "detail"),
    [
        ("no best anchor", "best-anchor rule: no anchor reaches 0.7",
         "anchor 0 [34.0, 10.0, 74.0, 50.0]: expected POSITIVE (it is the best anchor of ground "
         "truth 0, IoU 0.25), got NEGATIVE"),
        ("argmax", "two anchors tie as the best of an object", "anchor 1"),
        ("<= 0.3", "IoU exactly 0.7 and exactly 0.3", "anchor 2 [0.0, 0.0, 3.0, 10.0]: "
         "expected IGNORE (its largest IoU 0.30 lies between the thresholds"),
        ("best gt", "the best anchor of one object overlaps another more",
         "positive anchor 1 [10.0, 0.0, 50.0, 40.0]: expected matched_gt 0, got 1"),
        ("no border", "anchors crossing the border",
         "anchor 0 [-5.0, 0.0, 25.0, 30.0]: expected IGNORE (it sticks out of the 60 x 100"),
        ("zero best", "an object that no inside anchor touches", "expected NEGATIVE"),
    ],
)
def test_anchor_labels_check_diagnoses_wrong_solutions(mistake, case_name, detail,
                                                       capsys) -> None:
    result = check_label_anchors(_planted_label(mistake))
    out = capsys.readouterr().out
    assert _fails_naming(result, out, case_name) and detail in out, out


def test_anchor_labels_check_reports_a_crash_and_a_wrong_type(capsys) -> None:
    def crashes_without_objects(anchors, gt_boxes, image_size, **settings):
        iou = box_iou(gt_boxes, anchors)
        iou.max(dim=0)  # raises when there is no ground truth
        return label_anchors(anchors, gt_boxes, image_size, **settings)

    result = check_label_anchors(crashes_without_objects)
    out = capsys.readouterr().out
    assert _fails_naming(result, out, "an image without ground truth") and "raised" in out, out
    result = check_label_anchors(lambda *a, **kw: label_anchors(*a, **kw)[0].int())
    out = capsys.readouterr().out
    assert _fails_naming(result, out, "one object, anchors at IoU 1") and "int64" in out, out


def test_a_stub_is_missing_in_one_line(capsys) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError

    result = check_label_anchors(stub)
    assert result.status == "missing"
    assert capsys.readouterr().out == "✗ my_label_anchors is not implemented yet\n"
    assert result.choose() is label_anchors


def test_a_hidden_test_raises_and_prints_no_inputs(capsys) -> None:
    case = anchor_case("small object", boxes_tensor([[0, 0, 40, 40]]),
                       boxes_tensor([[0, 0, 8, 8]]), (64, 64), "best anchor")
    with pytest.raises(ExerciseFailed, match="fails a hidden test: small object"):
        check_label_anchors(_planted_label("no best anchor"), cases=[case], hidden=True)
    out = capsys.readouterr().out
    assert out == "✗ small object\n  hint: best anchor\n"
