"""Exercise checks of notebook 07 (``07_five_stages_and_inference``): the stage bridge
(``my_refine_boxes``), per-class NMS (``my_batched_nms``) and mask voting's weights
(``my_mask_voting_weights``).

Each check runs the learner's function on small cases against the library (torchvision for
per-class NMS); the stage bridge's check follows the gradient to the deltas and the boxes too,
since stages 4-5 train through it. Notebook 06's check lives in
:mod:`mnc_teach.course.checks_cascade`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision

from mnc_teach.boxes import batched_nms
from mnc_teach.cascade import refine_boxes
from mnc_teach.course.exercise import (
    Case,
    call_learner,
    exercise_check,
    passed,
    report_failure,
    rows_tensor,
    split_keywords,
    tensor_mismatch,
)
from mnc_teach.postprocess import mask_voting_weights

__all__ = [
    "BRIDGE_KEYWORDS", "NMS_KEYWORDS", "VOTING_KEYWORDS", "bridge_case", "bridge_cases",
    "check_batched_nms", "check_mask_voting_weights", "check_refine_boxes", "mask_voting_cases",
    "per_class_nms_cases",
]

BRIDGE_KEYWORDS = ("image_size", "weights", "delta_grad_clip")
NMS_KEYWORDS = ("iou_threshold",)
VOTING_KEYWORDS = ("vote_iou",)
STAGE3_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # config.ClassifierConfig.box_weights
GRAD_ATOL = 1e-5


# ---------------------------------------------------------------- the stage bridge
def bridge_case(name: str, logits, deltas, boxes, size, weights, clip, hint, grad=False) -> Case:
    """A refine_boxes case; with ``grad`` the deltas and boxes require grad."""
    logits = rows_tensor(logits, len(logits[0]) if logits else 3)
    boxes = rows_tensor(boxes, 4, grad=grad)
    deltas = rows_tensor(deltas, logits.shape[1] * 4, grad=grad)
    return Case(name, (logits, deltas, boxes, size, weights, clip), hint)


def bridge_cases() -> list[Case]:
    """Visible cases: (mask_cls_logits [R, K+1], box_deltas [R, 4(K+1)], boxes [R, 4],
    image_size, weights, delta_grad_clip)."""
    gen = torch.Generator().manual_seed(0)
    one = (1.0, 1.0, 1.0, 1.0)
    moves = [[0, 0, 0, 0, 0.25, 0, 0, 0, 0, 0.25, 0, 0]] * 2  # class 1: right 5 px, 2: down 5
    r_boxes = torch.rand(40, 2, generator=gen) * 60
    r_boxes = torch.cat([r_boxes, r_boxes + 5 + torch.rand(40, 2, generator=gen) * 40], 1)
    r_logits, r_deltas = torch.randn(40, 6, generator=gen), torch.randn(40, 24, generator=gen)
    g_boxes = [[20, 10, 50, 40], [5, 30, 35, 55], [40, 5, 70, 25]]
    g_logits, g_deltas = torch.randn(3, 4, generator=gen), torch.randn(3, 16, generator=gen)
    return [
        bridge_case("the most likely class moves each box", [[0, 3, 1], [0, 1, 4]], moves,
                [[10, 10, 30, 30], [10, 10, 30, 30]], (100, 100), one, None,
                "box r takes the 4 deltas of its best class c: box_deltas[r, 4c:4c+4]"),
        bridge_case("background is the most likely class", [[6, 1, 2]], [[0.5, 0.5, 0, 0, 0.25, 0,
                0, 0, 0, 0.25, 0, 0]], [[10, 10, 30, 30]], (100, 100), one, None,
                "the most likely FOREGROUND class: argmax over columns 1..K, plus 1"),
        bridge_case("a box pushed out of the image", [[0, 2, 1]], [[0, 0, 0, 0, 0.1, 0.3, 0.2, 0.2,
                0, 0, 0, 0]], [[5, 30, 90, 55]], (60, 100), one, None,
                "clip the decoded boxes to the image (clip_boxes); image_size is (H, W)"),
        bridge_case("stage-3 weights (10, 10, 5, 5)", [[0, 1, 2]], [[0, 0, 0, 0, 1, 1, 1, 1,
                2, -1, 0.5, -0.5]], [[20, 20, 60, 50]], (100, 100), STAGE3_WEIGHTS, None,
                "decode with the given weights: decode_boxes(deltas, boxes, weights=weights)"),
        bridge_case("no boxes", [], [], [], (100, 100), one, None,
                "R = 0 gives a [0, 4] result (view(0, -1, 4) cannot infer -1)"),
        Case("40 random boxes, 5 classes",
             (r_logits, r_deltas, r_boxes, (80, 90), STAGE3_WEIGHTS, None),
             "compare one row by hand: best foreground class, its deltas, decode, clip"),
        bridge_case("the gradient reaches the deltas and the boxes", g_logits.tolist(),
                g_deltas.tolist(), g_boxes, (80, 90), STAGE3_WEIGHTS, None,
                "keep the graph: index box_deltas (no .detach(), no torch.no_grad()); only "
                "the argmax needs no gradient", grad=True),
        bridge_case("delta_grad_clip clamps the gradient of the deltas", g_logits.tolist(),
                g_deltas.tolist(), g_boxes, (80, 90), STAGE3_WEIGHTS, 1 / 512,
                "clamp the gradient of the chosen deltas: "
                "stage1_rpn.clamp_gradient(deltas, delta_grad_clip)", grad=True),
    ]


@exercise_check("stage_bridge", refine_boxes=refine_boxes)
def check_refine_boxes(fn: Callable, *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_refine_boxes(mask_cls_logits, box_deltas, boxes, *, image_size, weights,
    delta_grad_clip=None) -> [R, 4]`` against ``cascade.refine_boxes``, gradients included."""
    cases = bridge_cases() if cases is None else cases
    for case in cases:
        args, kwargs = split_keywords(case.args, BRIDGE_KEYWORDS)
        expected = refine_boxes(*args, **kwargs)
        ok, got = call_learner(fn, case, fn_name="my_refine_boxes", keywords=BRIDGE_KEYWORDS)
        if not ok:
            return False
        if lines := tensor_mismatch(got, expected, atol=1e-4):
            return report_failure(case, [f"boxes    = {args[2].detach().tolist()[:4]}", *lines])
        leaves = [args[1], args[2]]  # box_deltas, boxes
        if not all(t.requires_grad for t in leaves) or not len(expected):
            continue
        upstream = torch.linspace(-2, 3, expected.numel()).reshape(expected.shape)  # (R, 4)
        want = torch.autograd.grad(expected, leaves, upstream)
        have = (torch.autograd.grad(got, leaves, upstream, allow_unused=True)
                if got.requires_grad else (None, None))
        for name, w, h in zip(("box_deltas", "boxes"), want, have, strict=True):
            if h is None or not torch.allclose(h, w, atol=GRAD_ATOL):
                shown = "no gradient" if h is None else h[:2].tolist()
                return report_failure(case, [f"gradient w.r.t. {name}: expected "
                                             f"{w[:2].tolist()}", f"got {shown}"])
    return passed(f"my_refine_boxes matches cascade.refine_boxes on all {len(cases)} cases, "
                  "gradients included")


# ---------------------------------------------------------------- per-class NMS
def per_class_nms_cases() -> list[Case]:
    """Visible cases: (boxes [B, 4], scores [B], labels [B], iou_threshold)."""
    gen = torch.Generator().manual_seed(0)
    scores, labels = torch.tensor, lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    r_boxes = torch.rand(300, 2, generator=gen) * 100
    r_boxes = torch.cat([r_boxes, r_boxes + 4 + torch.rand(300, 2, generator=gen) * 40], 1)
    return [
        Case("no boxes", (rows_tensor([], 4), scores([]), labels([]), 0.3),
             "return an empty int64 tensor"),
        Case("the same box in two classes: both kept",
             (rows_tensor([[0, 0, 10, 10]] * 2, 4), scores([0.9, 0.8]), labels([1, 2]), 0.3),
             "boxes of different labels never suppress each other: NMS within each label"),
        Case("two overlapping boxes of one class",
             (rows_tensor([[0, 0, 10, 10], [1, 1, 11, 11]], 4), scores([0.6, 0.7]), labels([3, 3]),
              0.3),
             "within a label, the higher score suppresses the other"),
        Case("kept indices by decreasing score over all labels",
             (rows_tensor([[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9], [60, 0, 69, 9]], 4),
              scores([0.9, 0.8, 0.7, 0.95]), labels([1, 2, 1, 2]), 0.3),
             "merge the kept indices of all labels, then sort them by decreasing score"),
        Case("IoU exactly at the threshold: both kept",
             (rows_tensor([[0, 0, 10, 10], [0, 0, 10, 20]], 4), scores([0.9, 0.8]), labels([1, 1]),
              0.5),
             "suppress only when IoU > iou_threshold"),
        Case("boxes beyond 1000 px",
             (rows_tensor([[1000, 1000, 1100, 1100], [0, 0, 100, 100], [2000, 50, 2300, 90]], 4),
              scores([0.9, 0.8, 0.7]), labels([0, 1, 2]), 0.3),
             "with the offset trick the offset must exceed every coordinate: "
             "labels * (boxes.max() + 1), so boxes of two labels never overlap"),
        Case("300 random boxes, labels 0, 3, 7", (r_boxes, torch.rand(300, generator=gen),
             labels([0, 3, 7])[torch.randint(3, (300,), generator=gen)], 0.4),
             "compare with NMS run on each label's boxes separately"),
    ]


@exercise_check("per_class_nms", batched_nms=batched_nms)
def check_batched_nms(fn: Callable, *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_batched_nms(boxes, scores, labels, *, iou_threshold) -> kept indices`` against
    ``torchvision.ops.batched_nms`` (= ``mnc_teach.boxes.batched_nms``)."""
    cases = per_class_nms_cases() if cases is None else cases
    for case in cases:
        expected = torchvision.ops.batched_nms(*case.args)
        ok, got = call_learner(fn, case, fn_name="my_batched_nms", keywords=NMS_KEYWORDS)
        if not ok:
            return False
        got = torch.as_tensor(got)
        if got.dtype != torch.int64 or not torch.equal(got, expected):
            boxes, box_scores, box_labels, threshold = case.args
            return report_failure(case, [
                f"threshold = {threshold}", f"boxes    = {boxes.tolist()[:4]}",
                f"scores   = {[round(v, 3) for v in box_scores.tolist()[:4]]}",
                f"labels   = {box_labels.tolist()[:4]}",
                f"expected = {expected.tolist()[:10]} (int64)",
                f"got      = {got.tolist()[:10]} ({got.dtype})",
            ])
    return passed(f"my_batched_nms matches torchvision.ops.batched_nms on all {len(cases)} cases")


# ---------------------------------------------------------------- mask voting
def mask_voting_cases() -> list[Case]:
    """Visible cases: (kept [D], labels [D] in 1..K, boxes [Q, 4], fg_scores [Q, K], vote_iou)."""
    gen = torch.Generator().manual_seed(0)
    index = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    pair = rows_tensor([[0, 0, 20, 20], [1, 1, 21, 21], [50, 50, 70, 70]], 4)
    r_boxes = torch.rand(30, 2, generator=gen) * 60
    r_boxes = torch.cat([r_boxes, r_boxes + 8 + torch.rand(30, 2, generator=gen) * 30], 1)
    r_scores = torch.softmax(torch.randn(30, 4, generator=gen), 1)[:, 1:]  # (Q, K=3)
    r_labels = torch.randint(1, 4, (30,), generator=gen)
    r_kept = torchvision.ops.batched_nms(r_boxes, r_scores[torch.arange(30), r_labels - 1],
                                         r_labels, 0.3)[:8]
    return [
        Case("a row sums to 1", (index([0]), index([1]), pair,
             rows_tensor([[0.8, 0.8], [0.4, 0.4], [0.9, 0.9]], 2), 0.5),
             "divide each row by its sum (clamp the sum away from 0)"),
        Case("voters weighted by their score for the detection's class",
             (index([0]), index([2]), pair,
              rows_tensor([[0.1, 0.6, 0.2], [0.3, 0.2, 0.4], [0.5, 0.1, 0.1]], 3), 0.5),
             "labels are 1..K but fg_scores has no background column: class c is column c - 1"),
        Case("a zero-area box votes for itself",
             (index([1]), index([1]), rows_tensor([[0, 0, 20, 20], [30, 30, 30, 40]], 4),
              rows_tensor([[0.5], [0.7]], 1), 0.5),
             "box_iou of a zero-area box with itself is 0: set weights[d, kept[d]] "
             "as a voter anyway (each detection votes for itself)"),
        Case("IoU exactly vote_iou counts",
             (index([0]), index([1]), rows_tensor([[0, 0, 10, 10], [0, 0, 10, 20]], 4),
              rows_tensor([[0.6], [0.2]], 1), 0.5), "a voter has IoU >= vote_iou"),
        Case("two detections of one candidate, two classes",
             (index([0, 0]), index([1, 2]), pair,
              rows_tensor([[0.5, 0.2], [0.1, 0.6], [0.3, 0.3]], 2), 0.5),
             "row d uses the scores of detection d's own class"),
        Case("no detections", (index([]), index([]), pair, rows_tensor([[0.5]] * 3, 1), 0.5),
             "D = 0 gives a [0, Q] result"),
        Case("30 candidates after per-class NMS",
             (r_kept, r_labels[r_kept], r_boxes, r_scores, 0.5),
             "weights[d, q] = [IoU(box of d, box q) >= vote_iou or q is d's] * fg_scores[q, "
             "label_d - 1], each row divided by its sum"),
    ]


@exercise_check("mask_voting", mask_voting_weights=mask_voting_weights)
def check_mask_voting_weights(fn: Callable, *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_mask_voting_weights(kept, labels, boxes, fg_scores, *, vote_iou) -> [D, Q]``
    against ``postprocess.mask_voting_weights``."""
    cases = mask_voting_cases() if cases is None else cases
    for case in cases:
        args, kwargs = split_keywords(case.args, VOTING_KEYWORDS)
        expected = mask_voting_weights(*args, **kwargs)
        ok, got = call_learner(fn, case, fn_name="my_mask_voting_weights",
                               keywords=VOTING_KEYWORDS)
        if not ok:
            return False
        if lines := tensor_mismatch(got, expected, atol=1e-6):
            if torch.is_tensor(got) and got.shape == expected.shape and got.numel():
                lines.append(f"your rows sum to {got.detach().sum(dim=1).tolist()[:4]}")
            return report_failure(case, [f"kept = {args[0].tolist()[:4]}, labels = "
                                         f"{args[1].tolist()[:4]}", *lines])
    return passed(f"my_mask_voting_weights matches postprocess.mask_voting_weights on all "
                  f"{len(cases)} cases")
