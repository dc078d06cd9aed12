"""The checks of notebook 01 (IoU, box coding, NMS) pass the library's functions
and diagnose planted mistakes: which case failed, and a hint; hidden tests print no inputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor

from mnc_teach.boxes import (
    MAX_LOG_SCALE,
    RPN_BOX_WEIGHTS,
    box_iou,
    decode_boxes,
    encode_boxes,
    nms,
    nms_reference,
)
from mnc_teach.course.checks_boxes import (
    box_coding_cases,
    check_box_coding,
    check_box_iou,
    check_nms,
    decode_case,
    encode_case,
)
from mnc_teach.course.exercise import Case, ExerciseFailed, boxes_tensor, random_boxes


def _fails_naming(result, out: str, case_name: str) -> bool:
    """The check failed (status "wrong") and its first ✗ line names ``case_name``."""
    return result.status == "wrong" and not result and out.startswith(f"✗ {case_name}")


# ---------------------------------------------------------------- IoU
def _iou_without_clamp(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:]) - torch.maximum(
        boxes1[:, None, :2], boxes2[None, :, :2]
    )
    inter = wh[..., 0] * wh[..., 1]  # forgets to clamp: two negative sides give a positive "area"
    return inter / (area1[:, None] + area2[None, :] - inter)


@pytest.mark.parametrize(
    ("wrong", "case_name", "detail"),
    [
        (_iou_without_clamp, "disjoint", "expected = [[0.0]]"),
        (lambda a, b: box_iou(a, b).T, "3 x 2 pairs", "expected a tensor of shape (3, 2)"),
        (torchvision.ops.box_iou, "two zero-area boxes", "return 0, not NaN"),  # NaN there
    ],
)
def test_box_iou_check_diagnoses_wrong_solutions(wrong, case_name, detail, capsys) -> None:
    assert check_box_iou(box_iou).status == "passed"
    capsys.readouterr()
    result = check_box_iou(wrong)
    out = capsys.readouterr().out
    assert _fails_naming(result, out, case_name) and detail in out, out


# ---------------------------------------------------------------- box coding
def _cxcywh(boxes: Tensor, plus: float = 0.0) -> tuple[Tensor, ...]:
    widths = boxes[:, 2] - boxes[:, 0] + plus
    heights = boxes[:, 3] - boxes[:, 1] + plus
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


def _encode(gt_boxes, ref_boxes, *, weights=RPN_BOX_WEIGHTS, mistake: str = "") -> Tensor:
    """A learner's encode_boxes; ``mistake`` plants one of the usual errors."""
    plus = 1.0 if mistake == "plus one" else 0.0  # the Caffe widths, with continuous corners
    gx, gy, gw, gh = _cxcywh(gt_boxes, plus)
    rx, ry, rw, rh = _cxcywh(ref_boxes, plus)
    wx, wy, ww, wh = (1.0, 1.0, 1.0, 1.0) if mistake == "no weights" else weights
    return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh,
                        ww * torch.log(gw / rw), wh * torch.log(gh / rh)], dim=1)


def _decode(deltas, ref_boxes, *, weights=RPN_BOX_WEIGHTS, max_log_scale=MAX_LOG_SCALE,
            mistake: str = "") -> Tensor:
    """A learner's decode_boxes; ``mistake`` plants one of the usual errors."""
    if mistake == "detach":
        deltas = deltas.detach()
    if mistake == "one group":
        deltas = deltas[:, :4]
    rx, ry, rw, rh = (v[:, None] for v in _cxcywh(ref_boxes))  # each (B, 1)
    d = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)  # (B, C, 4)
    wx, wy, ww, wh = weights
    if mistake == "clamp first":
        dw, dh = d[..., 2].clamp(max=max_log_scale) / ww, d[..., 3].clamp(max=max_log_scale) / wh
    else:
        dw, dh = (d[..., 2] / ww).clamp(max=max_log_scale), (d[..., 3] / wh).clamp(
            max=max_log_scale
        )
    x, y = rx + d[..., 0] / wx * rw, ry + d[..., 1] / wy * rh  # (B, C)
    w, h = rw * torch.exp(dw), rh * torch.exp(dh)
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=2).flatten(1)


def _decode_without_clamp(deltas, ref_boxes, *, weights=RPN_BOX_WEIGHTS,
                          max_log_scale=MAX_LOG_SCALE) -> Tensor:
    return decode_boxes(deltas, ref_boxes, weights=weights, max_log_scale=float("inf"))


def _planted_encode(mistake: str):
    return lambda *args, **kwargs: _encode(*args, **kwargs, mistake=mistake)


def _planted_decode(mistake: str):
    return lambda *args, **kwargs: _decode(*args, **kwargs, mistake=mistake)


def test_box_coding_check_passes_the_library_and_a_learners_solution(capsys) -> None:
    assert check_box_coding(encode_boxes, decode_boxes).status == "passed"
    assert check_box_coding(_encode, _decode).status == "passed"
    assert capsys.readouterr().out.count("✓ my_encode_boxes and my_decode_boxes match") == 2


@pytest.mark.parametrize(
    ("encode", "decode", "case_name", "detail"),
    [
        (_planted_encode("plus one"), _decode, "encode: shifted right by half a width",
         "expected deltas[0] = [0.5, 0.0, 0.0, 0.0]"),
        (_planted_encode("no weights"), _decode, "encode: weights (10, 10, 5, 5)",
         "expected deltas[0] = "),
        (_encode, _planted_decode("clamp first"), "decode: clamp after the weights",
         "divide by the weights first"),
        (_encode, _planted_decode("one group"), "decode: 2 groups of 4",
         "expected boxes of shape (3, 8), got (3, 4)"),
        (_encode, _planted_decode("detach"), "decode: zero deltas",
         "no gradient reaches deltas"),
        (_encode, _decode_without_clamp, "decode: dw = dh = 50 is clamped",
         "clamp dw and dh at max_log_scale"),
    ],
)
def test_box_coding_check_diagnoses_wrong_solutions(encode, decode, case_name, detail,
                                                    capsys) -> None:
    result = check_box_coding(encode, decode)
    out = capsys.readouterr().out
    assert _fails_naming(result, out, case_name) and detail in out, out


def test_box_coding_round_trip_catches_an_inverse_that_is_not_one(capsys) -> None:
    cases = [decode_case("decode: zero deltas", torch.zeros(1, 4), boxes_tensor([[0, 0, 4, 4]]),
                         "zero deltas give the reference box back")]
    round_trip = [c for c in box_coding_cases() if c.name.startswith("round trip")]
    result = check_box_coding(_planted_encode("plus one"), _decode, cases=cases + round_trip)
    out = capsys.readouterr().out
    assert _fails_naming(result, out, "round trip: decode(encode(gt)) == gt"), out


# ---------------------------------------------------------------- NMS
def _nms_suppressed_boxes_still_suppress(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True)
    iou = box_iou(boxes, boxes)
    order_list = order.tolist()
    keep = [i for n, i in enumerate(order_list) if not (iou[i, order[:n]] > iou_threshold).any()]
    return torch.tensor(keep, dtype=torch.int64)


def test_nms_check_passes_the_library_and_the_readable_loop(capsys) -> None:
    assert check_nms(nms) and check_nms(nms_reference) and check_nms(torchvision.ops.nms)
    assert capsys.readouterr().out.count("✓ my_nms matches") == 3


@pytest.mark.parametrize(
    ("wrong", "case_name", "detail"),
    [
        (_nms_suppressed_boxes_still_suppress, "chain A > B > C", "expected = [0, 2]"),
        (lambda b, s, t: torchvision.ops.nms(b, s, t).int(), "no boxes", "(torch.int32)"),
        (lambda b, s, t: torchvision.ops.nms(b, s, t - 1e-3), "IoU exactly at the threshold",
         "IoU > threshold"),
        (lambda b, s, t: 1 / 0, "no boxes", "raised ZeroDivisionError"),
    ],
)
def test_nms_check_diagnoses_wrong_solutions(wrong, case_name, detail, capsys) -> None:
    result = check_nms(wrong)
    out = capsys.readouterr().out
    assert _fails_naming(result, out, case_name) and detail in out, out


# ---------------------------------------------------------------- every check
HIDDEN = [
    (check_box_iou, (_iou_without_clamp,),
     Case("far apart", (boxes_tensor([[0, 0, 1, 1]]), boxes_tensor([[5, 5, 6, 6]])), "clamp")),
    (check_box_coding, (_planted_encode("plus one"), _decode),
     encode_case("shift", boxes_tensor([[4, 0, 8, 4]]), boxes_tensor([[0, 0, 4, 4]]), "no +1")),
    (check_box_coding, (_encode, _planted_decode("detach")),
     decode_case("grad", torch.ones(2, 4), random_boxes(2, torch.Generator()), "gradient")),
    (check_nms, (_nms_suppressed_boxes_still_suppress,),
     Case("chain", (boxes_tensor([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]),
                    torch.tensor([0.9, 0.8, 0.7]), 0.3), "gone boxes")),
]


@pytest.mark.parametrize(("check", "wrong", "case"), HIDDEN)
def test_a_hidden_test_raises_and_prints_no_inputs(check, wrong, case, capsys) -> None:
    with pytest.raises(ExerciseFailed, match=f"fails a hidden test: {case.name}"):
        check(*wrong, cases=[case], hidden=True)
    out = capsys.readouterr().out
    hint = out.removeprefix(f"✗ {case.name}\n  hint: ")
    assert hint != out and "\n" not in hint.rstrip("\n"), out  # the name and one hint line
    assert "inputs" not in out and "expected" not in out and "[" not in out, out


def test_random_boxes_are_valid_and_seeded() -> None:
    boxes = random_boxes(100, torch.Generator().manual_seed(3))
    assert boxes.shape == (100, 4)
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (sides >= 1).all() and (sides <= 64).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] <= 96).all()
    assert torch.equal(boxes, random_boxes(100, torch.Generator().manual_seed(3)))
