"""Exercise checkers for the notebooks and classroom assignments (COURSE.md, "Assignments"):
the machinery every checker shares, and the checkers of the box geometry (IoU, NMS).

Each ``check_*`` runs a learner's function on small edge cases against the library (and
torchvision) and prints a diagnosis of the first failure: which case, the input, expected
vs got, and a hint. It returns True/False instead of raising, so a notebook keeps running;
graders assert on the returned value in the hidden-test part of the cell.

The checkers of the stages (RoI warping, proposals, mask targets, mask-level labels) are in
:mod:`mnc_teach.course.checks_stages`. The model never imports either (DESIGN.md §2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torchvision
from torch import Tensor

from mnc_teach.boxes import box_iou

__all__ = [
    "FAIL", "PASS", "Case", "boxes_tensor", "call_learner", "check_box_iou", "check_nms",
    "random_boxes", "report_failure", "split_keywords",
]

PASS, FAIL = "✓", "✗"


def random_boxes(num: int, generator: torch.Generator, size: float = 128.0) -> Tensor:
    """``num`` random boxes [num, 4] xyxy: the top-left corner in [0, 0.75 size), the sides in
    [1, size / 2)."""
    top_left = torch.rand(num, 2, generator=generator) * size * 0.75  # (num, 2)
    sides = 1 + torch.rand(num, 2, generator=generator) * (size / 2 - 1)  # (num, 2)
    return torch.cat([top_left, top_left + sides], dim=1)  # (num, 4)


def boxes_tensor(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


class Case(NamedTuple):
    name: str
    args: tuple  # the arguments, in the order of the function's parameters
    hint: str  # printed when this case fails


def split_keywords(args: tuple, keywords: tuple[str, ...]) -> tuple[tuple, dict]:
    """``args`` split as the library takes them: the last ``len(keywords)`` by these names."""
    cut = len(args) - len(keywords)
    return args[:cut], dict(zip(keywords, args[cut:], strict=True))


def report_failure(case: Case, lines: list[str]) -> bool:
    """Print the diagnosis of a failed case: its name, ``lines`` (indented) and its hint."""
    details = "".join(f"  {line}\n" for line in lines)
    print(f"{FAIL} {case.name}\n{details}  hint: {case.hint}")
    return False


def call_learner(
    fn: Callable, case: Case, *, fn_name: str, keywords: tuple[str, ...] = ()
) -> tuple[bool, object]:
    """Run the learner's function on fresh copies of the inputs, passing the parameters named in
    ``keywords`` by name (as the library's keyword-only ones); print why it crashed if it did."""
    args = tuple(arg.clone() if torch.is_tensor(arg) else arg for arg in case.args)
    positional, by_name = split_keywords(args, keywords)
    try:
        return True, fn(*positional, **by_name)
    except NotImplementedError:
        print(f"{FAIL} {fn_name} is not implemented yet")
    except Exception as error:  # show the learner what went wrong; do not stop the notebook
        shown = ", ".join(str(a.tolist()[:3]) if torch.is_tensor(a) else repr(a) for a in case.args)
        print(f"{FAIL} {case.name}: raised {type(error).__name__}: {error}\n  inputs: {shown}")
    return False, None


def check_box_iou(fn: Callable[[Tensor, Tensor], Tensor]) -> bool:
    """Check ``fn(boxes1 [N, 4], boxes2 [M, 4]) -> [N, M]`` against ``mnc_teach.boxes.box_iou``."""
    gen = torch.Generator().manual_seed(0)
    cases = [
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
    for case in cases:
        expected = box_iou(*case.args)
        ok, got = call_learner(fn, case, fn_name="my_box_iou")
        if not ok:
            return False
        if not torch.is_tensor(got) or got.shape != expected.shape:
            print(f"{FAIL} {case.name}: expected a tensor of shape {tuple(expected.shape)}, "
                  f"got {getattr(got, 'shape', type(got).__name__)}\n  hint: {case.hint}")
            return False
        if not torch.allclose(got.float(), expected, atol=1e-5):
            boxes1, boxes2 = case.args
            return report_failure(case, [
                f"boxes1   = {boxes1.tolist()[:3]}",
                f"boxes2   = {boxes2.tolist()[:3]}",
                f"expected = {expected[:3, :3].tolist()}",
                f"got      = {got[:3, :3].tolist()}",
            ])
    print(f"{PASS} my_box_iou matches mnc_teach.boxes.box_iou on all {len(cases)} cases")
    return True


def check_nms(fn: Callable[[Tensor, Tensor, float], Tensor]) -> bool:
    """Check ``fn(boxes [R, 4], scores [R], iou_threshold) -> kept indices`` against
    ``torchvision.ops.nms``."""
    gen = torch.Generator().manual_seed(0)
    scores = lambda values: torch.tensor(values, dtype=torch.float32)  # noqa: E731
    cases = [
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
    for case in cases:
        expected = torchvision.ops.nms(*case.args)
        ok, got = call_learner(fn, case, fn_name="my_nms")
        if not ok:
            return False
        got = torch.as_tensor(got)
        if got.dtype != torch.int64 or not torch.equal(got, expected):
            boxes, box_scores, threshold = case.args
            print(
                f"{FAIL} {case.name} (threshold {threshold})\n"
                f"  boxes    = {boxes.tolist()[:4]}\n"
                f"  scores   = {[round(v, 3) for v in box_scores.tolist()[:4]]}\n"
                f"  expected = {expected.tolist()[:10]} (int64)\n"
                f"  got      = {got.tolist()[:10]} ({got.dtype})\n"
                f"  hint: {case.hint}"
            )
            return False
    print(f"{PASS} my_nms matches torchvision.ops.nms on all {len(cases)} cases")
    return True
