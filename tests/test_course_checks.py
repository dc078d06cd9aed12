"""The exercise checkers pass correct code and diagnose wrong code (which case, and a hint)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from mnc_teach.boxes import box_iou, nms_reference
from mnc_teach.course.checks import check_box_iou, check_nms, random_boxes


def test_correct_solutions_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_box_iou(box_iou)
    # NaN for two zero-area boxes: a real edge case
    assert check_box_iou(torchvision.ops.box_iou) is False
    assert "two zero-area boxes" in capsys.readouterr().out
    assert check_nms(nms_reference)
    assert check_nms(torchvision.ops.nms)
    assert capsys.readouterr().out.count("✓") == 2


def _iou_without_clamp(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.maximum(
        boxes1[:, None, :2], boxes2[None, :, :2]
    )
    inter = wh[..., 0] * wh[..., 1]  # forgets to clamp: two negative sides give a positive "area"
    return inter / (area1[:, None] + area2[None, :] - inter)


def _nms_suppressed_boxes_still_suppress(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True)
    iou = box_iou(boxes, boxes)
    order_list = order.tolist()
    keep = [i for n, i in enumerate(order_list) if not (iou[i, order[:n]] > iou_threshold).any()]
    return torch.tensor(keep, dtype=torch.int64)


def _not_implemented(*args):
    raise NotImplementedError


@pytest.mark.parametrize(
    ("checker", "wrong", "expected_in_output"),
    [
        (check_box_iou, _iou_without_clamp, "disjoint\n"),
        (
            check_box_iou,
            lambda a, b: box_iou(a, b).T,
            "3 x 2 pairs: expected a tensor of shape (3, 2)",
        ),
        (check_box_iou, _not_implemented, "my_box_iou is not implemented yet"),
        (check_nms, _nms_suppressed_boxes_still_suppress, "chain A > B > C"),
        (
            check_nms,
            lambda b, s, t: torchvision.ops.nms(b, s, t).int(),
            "got      = [] (torch.int32)",
        ),
        (check_nms, lambda b, s, t: 1 / 0, "raised ZeroDivisionError"),
    ],
)
def test_wrong_solutions_fail_with_a_diagnosis(checker, wrong, expected_in_output, capsys) -> None:
    assert checker(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and expected_in_output in out


def test_random_boxes_are_valid_and_seeded() -> None:
    boxes = random_boxes(100, torch.Generator().manual_seed(3))
    assert boxes.shape == (100, 4)
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (sides >= 1).all() and (sides <= 64).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] <= 96).all()
    assert torch.equal(boxes, random_boxes(100, torch.Generator().manual_seed(3)))
