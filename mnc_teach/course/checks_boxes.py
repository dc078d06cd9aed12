"""Exercise checks of notebook 01: IoU, box coding (encode / decode), NMS (anchor labels are in
:mod:`mnc_teach.course.checks_anchors`).

Each check runs the learner's ``my_<name>`` on edge cases against the library (and
torchvision) and prints a diagnosis of the first failure; :mod:`mnc_teach.course.exercise`
says what a failure does (report interactively, raise under nbgrader). The ``*_case``
builders make cases in the order of the library's parameters (hidden tests use them too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
)
from mnc_teach.course.exercise import (
    Case,
    boxes_tensor,
    call_learner,
    exercise_check,
    passed,
    random_boxes,
    report_failure,
)

__all__ = [
    "box_coding_cases", "check_box_coding", "check_box_iou", "check_nms", "decode_case",
    "encode_case", "iou_cases", "nms_cases", "round_trip_case",
]

def iou_cases() -> list[Case]:
    """The visible cases of ``my_box_iou``: (boxes1, boxes2)."""
    gen = torch.Generator().manual_seed(0)
    return [
        Case(
            "identical boxes",
            (boxes_tensor([[0, 0, 10, 10]]), boxes_tensor([[0, 0, 10, 10]])),
            "IoU of a box with itself is 1",
        ),
        Case(
            "partial overlap",
            (boxes_tensor([[10, 10, 50, 40]]), boxes_tensor([[30, 20, 70, 60]])),
            "intersection = max of the top-left corners, min of the bottom-right corners",
        ),
        Case(
            "one inside the other",
            (boxes_tensor([[0, 0, 10, 10]]), boxes_tensor([[2, 2, 4, 4]])),
            "the intersection is the small box",
        ),
        Case(
            "disjoint",
            (boxes_tensor([[0, 0, 10, 10]]), boxes_tensor([[20, 20, 30, 30]])),
            "clamp negative widths and heights to 0",
        ),
        Case(
            "disjoint in x only",
            (boxes_tensor([[0, 0, 10, 10]]), boxes_tensor([[20, 0, 30, 10]])),
            "clamp the width and the height separately",
        ),
        Case(
            "touching edges",
            (boxes_tensor([[0, 0, 10, 10]]), boxes_tensor([[10, 0, 20, 10]])),
            "boxes that share an edge have no common area",
        ),
        Case(
            "two zero-area boxes",
            (boxes_tensor([[5, 5, 5, 5]]), boxes_tensor([[5, 5, 5, 5]])),
            "the union is 0 here: return 0, not NaN",
        ),
        Case(
            "3 x 2 pairs",
            (
                boxes_tensor([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 20, 20]]),
                boxes_tensor([[0, 0, 10, 10], [10, 10, 20, 20]]),
            ),
            "result[n, m] pairs boxes1[n] with boxes2[m]: check the broadcasting",
        ),
        Case(
            "empty boxes1",
            (boxes_tensor([]), boxes_tensor([[0, 0, 1, 1], [0, 0, 2, 2]])),
            "N = 0 must give a [0, M] result",
        ),
        Case(
            "40 x 30 random pairs",
            (random_boxes(40, gen), random_boxes(30, gen)),
            "compare with the formula on one pair by hand",
        ),
    ]


@exercise_check("box_iou", box_iou=box_iou)
def check_box_iou(
    fn: Callable[[Tensor, Tensor], Tensor], *, cases: Sequence[Case] | None = None
) -> bool:
    """Check ``my_box_iou(boxes1 [N, 4], boxes2 [M, 4]) -> [N, M]`` against
    ``mnc_teach.boxes.box_iou``."""
    cases = iou_cases() if cases is None else cases
    for case in cases:
        expected = box_iou(*case.args)
        ok, got = call_learner(fn, case, fn_name="my_box_iou")
        if not ok:
            return False
        if not torch.is_tensor(got) or got.shape != expected.shape:
            return report_failure(case, [
                f"expected a tensor of shape {tuple(expected.shape)}, "
                f"got {getattr(got, 'shape', type(got).__name__)}"
            ])
        if not torch.allclose(got.float(), expected, atol=1e-5):
            boxes1, boxes2 = case.args
            return report_failure(case, [
                f"boxes1   = {boxes1.tolist()[:3]}",
                f"boxes2   = {boxes2.tolist()[:3]}",
                f"expected = {expected[:3, :3].tolist()}",
                f"got      = {got[:3, :3].tolist()}",
            ])
    return passed(f"my_box_iou matches mnc_teach.boxes.box_iou on all {len(cases)} cases")


# ---------------------------------------------------------------- box coding
NO_GRADIENT_HINT = (
    "no gradient reaches {name}: compute the boxes from it with torch operations only (no "
    ".item(), .tolist(), torch.tensor(...), .detach() or torch.no_grad()); the cascade trains "
    "through decode_boxes"
)


def encode_case(
    name: str, gt_boxes: Tensor, ref_boxes: Tensor, hint: str, *,
    weights: tuple[float, ...] = RPN_BOX_WEIGHTS,
) -> Case:
    """A case of ``my_encode_boxes(gt_boxes, ref_boxes, *, weights)``."""
    return Case(name, ("encode", gt_boxes, ref_boxes, weights), hint)


def decode_case(
    name: str, deltas: Tensor, ref_boxes: Tensor, hint: str, *,
    weights: tuple[float, ...] = RPN_BOX_WEIGHTS, max_log_scale: float = MAX_LOG_SCALE,
) -> Case:
    """A case of ``my_decode_boxes(deltas, ref_boxes, *, weights, max_log_scale)``: the values,
    then the gradient of a loss on the boxes with respect to ``deltas`` and ``ref_boxes``."""
    return Case(name, ("decode", deltas, ref_boxes, weights, max_log_scale), hint)


def round_trip_case(
    name: str, gt_boxes: Tensor, ref_boxes: Tensor, hint: str, *,
    weights: tuple[float, ...] = RPN_BOX_WEIGHTS,
) -> Case:
    """A case of ``my_decode_boxes(my_encode_boxes(gt, ref), ref) == gt``."""
    return Case(name, ("round trip", gt_boxes, ref_boxes, weights), hint)


def box_coding_cases() -> list[Case]:
    """The visible cases of ``my_encode_boxes`` and ``my_decode_boxes``."""
    gen = torch.Generator().manual_seed(0)
    ref = boxes_tensor([[10, 10, 30, 30]])  # 20 x 20, centre (20, 20)
    gt20, ref20 = random_boxes(20, gen), random_boxes(20, gen)
    stage3 = (10.0, 10.0, 5.0, 5.0)
    return [
        encode_case("encode: identical boxes", ref, ref.clone(),
                    "a box relative to itself has deltas (0, 0, 0, 0)"),
        encode_case("encode: shifted right by half a width", boxes_tensor([[10, 0, 30, 10]]),
                    boxes_tensor([[0, 0, 20, 10]]),
                    "dx = (gx - rx) / rw with centres x = (x1 + x2) / 2 and widths x2 - x1 "
                    "(no +1)"),
        encode_case("encode: twice as wide, half as tall", boxes_tensor([[0, 15, 40, 25]]), ref,
                    "dw = log(gw / rw), the natural log of ground truth over reference"),
        encode_case("encode: weights (10, 10, 5, 5)", gt20[:5], ref20[:5],
                    "multiply (dx, dy, dw, dh) by (wx, wy, ww, wh)", weights=stage3),
        encode_case("encode: no boxes", boxes_tensor([]), boxes_tensor([]),
                    "B = 0 must give deltas [0, 4]"),
        encode_case("encode: 20 random pairs", gt20, ref20,
                    "compare with the formulas on one pair by hand"),
        decode_case("decode: zero deltas", torch.zeros(1, 4), ref,
                    "zero deltas give the reference box back"),
        decode_case("decode: dx = 0.5, dw = log 2", torch.tensor([[0.5, 0.0, math.log(2), 0.0]]),
                    ref, "centre x = rx + dx * rw, width w = rw * exp(dw); "
                    "then back to corners: x1 = x - w / 2, x2 = x + w / 2"),
        decode_case("decode: weights (10, 10, 5, 5)", 0.5 * torch.randn(5, 4, generator=gen),
                    ref20[:5], "divide the deltas by the weights before applying them",
                    weights=stage3),
        decode_case("decode: dw = dh = 50 is clamped", torch.tensor([[0.0, 0.0, 50.0, 50.0]]), ref,
                    "clamp dw and dh at max_log_scale (clamp(max=...)) before exp(): a wild "
                    "prediction must not blow a box up"),
        decode_case("decode: clamp after the weights (1, 1, 2, 2)",
                    torch.tensor([[0.0, 0.0, 6.0, 1.0]]), ref,
                    "divide by the weights first, then clamp: dw = 6 / 2 = 3 < max_log_scale "
                    "is not clamped", weights=(1.0, 1.0, 2.0, 2.0)),
        decode_case("decode: max_log_scale = 1", torch.tensor([[0.0, 0.0, 2.0, -2.0]]), ref,
                    "use the max_log_scale argument; only large positive dw, dh are clamped",
                    max_log_scale=1.0),
        decode_case("decode: 2 groups of 4 (class-specific deltas)",
                    0.3 * torch.randn(3, 8, generator=gen), ref20[:3],
                    "deltas [B, 4 * C] hold one (dx, dy, dw, dh) per class: take deltas[:, 0::4] "
                    "(dx), deltas[:, 1::4] (dy)... and return boxes [B, 4 * C] in the same layout"),
        decode_case("decode: no boxes", torch.zeros(0, 4), boxes_tensor([]),
                    "B = 0 must give boxes [0, 4]"),
        decode_case("decode: 20 random deltas", 0.3 * torch.randn(20, 4, generator=gen), ref20,
                    "compare with the formulas on one box by hand"),
        round_trip_case("round trip: decode(encode(gt)) == gt, weights (10, 10, 5, 5)", gt20, ref20,
                        "decode must undo encode exactly, with the same weights", weights=stage3),
    ]


def _first_row(got: Tensor, expected: Tensor, atol: float) -> int | None:
    """The first row where ``got`` differs from ``expected`` (None: all close)."""
    close = torch.isclose(got.detach().to(expected.dtype), expected.detach(), rtol=1e-4, atol=atol)
    bad = (~close).any(dim=1).nonzero().flatten()
    return int(bad[0]) if len(bad) else None


def _row(values: Tensor, row: int) -> list[float]:
    return [round(v, 4) for v in values[row].tolist()]


def _compare_rows(
    case: Case, got: object, expected: Tensor, inputs: dict[str, Tensor], what: str
) -> bool:
    """``got`` has ``expected``'s shape and values (rows reported with the ``inputs`` rows)."""
    if not torch.is_tensor(got) or got.shape != expected.shape:
        return report_failure(case, [
            f"expected {what} of shape {tuple(expected.shape)}, "
            f"got {tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}"
        ])
    row = _first_row(got, expected, atol=1e-3)
    if row is None:
        return True
    return report_failure(case, [
        *(f"{name}[{row}] = {_row(value, row)}" for name, value in inputs.items()),
        f"expected {what}[{row}] = {_row(expected, row)}",
        f"got      {what}[{row}] = {_row(got, row)}",
    ])


def _decode_gradients(boxes: Tensor, deltas: Tensor, ref: Tensor) -> list[Tensor | None]:
    """d sum(boxes * w) / d (deltas, ref) with fixed unequal weights w; None where no gradient
    flows."""
    if not boxes.requires_grad:
        return [None, None]
    weights = torch.tensor([1.0, -2.0, 3.0, 4.0]).repeat(boxes.shape[1] // 4)  # (4 C,)
    return list(torch.autograd.grad((boxes * weights).sum(), [deltas, ref], allow_unused=True))


def _check_decode(fn: Callable, case: Case) -> bool:
    """One decode case: the learner's boxes, then their gradient in deltas and ref_boxes."""
    deltas, ref, weights, max_log_scale = case.args
    lib_in = [deltas.clone().requires_grad_(True), ref.clone().requires_grad_(True)]
    expected = decode_boxes(*lib_in, weights=weights, max_log_scale=max_log_scale)
    my_in = [deltas.clone().requires_grad_(True), ref.clone().requires_grad_(True)]
    ok, got = call_learner(fn, case._replace(args=(*my_in, weights, max_log_scale)),
                           fn_name="my_decode_boxes", keywords=("weights", "max_log_scale"))
    if not ok or not _compare_rows(case, got, expected, {"deltas": deltas, "ref_boxes": ref},
                                   "boxes"):
        return False
    if len(deltas) == 0:
        return True
    expected_grads = _decode_gradients(expected, *lib_in)
    for name, mine, grad in zip(("deltas", "ref_boxes"), _decode_gradients(got, *my_in),
                                expected_grads, strict=True):
        if mine is None:
            return report_failure(case._replace(hint=NO_GRADIENT_HINT.format(name=name)), [
                f"a loss on your boxes sends no gradient to {name}"])
        row = _first_row(mine, grad, atol=1e-4)
        if row is not None:
            return report_failure(case._replace(
                hint="the values are right but not the gradient: use torch operations on the "
                     "inputs themselves (clamp(max=...) zeroes the gradient where it clamps)"), [
                f"d loss / d {name}[{row}]: expected {_row(grad, row)}, got {_row(mine, row)}"])
    return True


@exercise_check("box_coding", encode_boxes=encode_boxes, decode_boxes=decode_boxes)
def check_box_coding(
    encode_fn: Callable[..., Tensor], decode_fn: Callable[..., Tensor], *,
    cases: Sequence[Case] | None = None,
) -> bool:
    """Check ``my_encode_boxes(gt_boxes [B, 4], ref_boxes [B, 4], *, weights) -> deltas [B, 4]``
    and ``my_decode_boxes(deltas [B, 4 C], ref_boxes [B, 4], *, weights, max_log_scale) ->
    boxes [B, 4 C]`` against ``mnc_teach.boxes``: values, gradients of decode, round trip."""
    cases = box_coding_cases() if cases is None else cases
    for case in cases:
        kind, *args = case.args
        case = case._replace(args=tuple(args))
        if kind == "decode":
            if not _check_decode(decode_fn, case):
                return False
            continue
        gt, ref, weights = case.args
        ok, deltas = call_learner(encode_fn, case, fn_name="my_encode_boxes", keywords=("weights",))
        if not ok:
            return False
        expected = encode_boxes(gt, ref, weights=weights)
        inputs = {"gt_boxes": gt, "ref_boxes": ref}
        if kind == "encode":
            if not _compare_rows(case, deltas, expected, inputs, "deltas"):
                return False
            continue
        ok, boxes = call_learner(decode_fn, case._replace(args=(deltas, ref, weights)),
                                 fn_name="my_decode_boxes", keywords=("weights",))
        if not ok or not _compare_rows(case, boxes, gt, {"ref_boxes": ref}, "decode(encode(gt))"):
            return False
    return passed(f"my_encode_boxes and my_decode_boxes match mnc_teach.boxes on all "
                  f"{len(cases)} cases (values, gradients, round trip)")


def _scores(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


def nms_cases() -> list[Case]:
    """The visible cases of ``my_nms``: (boxes, scores, iou_threshold)."""
    gen = torch.Generator().manual_seed(0)
    scores = _scores
    return [
        Case("no boxes", (boxes_tensor([]), scores([]), 0.5), "return an empty int64 tensor"),
        Case(
            "one box",
            (boxes_tensor([[0, 0, 10, 10]]), scores([0.3]), 0.5),
            "a single box is always kept",
        ),
        Case(
            "no overlaps: all kept, best first",
            (
                boxes_tensor([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]]),
                scores([0.2, 0.9, 0.5]),
                0.5,
            ),
            "return the kept indices sorted by decreasing score",
        ),
        Case(
            "duplicate box",
            (boxes_tensor([[0, 0, 10, 10], [0, 0, 10, 10]]), scores([0.4, 0.8]), 0.5),
            "keep the higher score, not the first index",
        ),
        Case(
            "IoU exactly at the threshold",
            (boxes_tensor([[0, 0, 10, 10], [0, 0, 10, 20]]), scores([0.9, 0.8]), 0.5),
            "suppress only when IoU > threshold (here IoU == 0.5: keep both)",
        ),
        Case(
            "chain A > B > C",
            (
                boxes_tensor([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]),
                scores([0.9, 0.8, 0.7]),
                0.3,
            ),
            "a suppressed box must not suppress others: C only overlaps B, which is gone",
        ),
        Case(
            "300 random boxes",
            (random_boxes(300, gen), torch.rand(300, generator=gen), 0.4),
            "compare step by step with mnc_teach.boxes.nms_reference",
        ),
    ]


@exercise_check("nms", nms=nms)
def check_nms(
    fn: Callable[[Tensor, Tensor, float], Tensor], *, cases: Sequence[Case] | None = None
) -> bool:
    """Check ``my_nms(boxes [R, 4], scores [R], iou_threshold) -> kept indices`` against
    ``torchvision.ops.nms``."""
    cases = nms_cases() if cases is None else cases
    for case in cases:
        expected = torchvision.ops.nms(*case.args)
        ok, got = call_learner(fn, case, fn_name="my_nms")
        if not ok:
            return False
        got = torch.as_tensor(got)
        if got.dtype != torch.int64 or not torch.equal(got, expected):
            boxes, box_scores, threshold = case.args
            return report_failure(case, [
                f"threshold = {threshold}",
                f"boxes    = {boxes.tolist()[:4]}",
                f"scores   = {[round(v, 3) for v in box_scores.tolist()[:4]]}",
                f"expected = {expected.tolist()[:10]} (int64)",
                f"got      = {got.tolist()[:10]} ({got.dtype})",
            ])
    return passed(f"my_nms matches torchvision.ops.nms on all {len(cases)} cases")
