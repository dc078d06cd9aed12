"""Exercise check of notebook 02: the proposal pipeline of stage 1 (``generate_proposals``).

The check runs the learner's ``my_generate_proposals`` on edge cases against the library, first
the boxes and scores, then the gradient that a loss on the boxes sends back to the anchor
deltas: it must reach exactly the deltas of the kept boxes (clamped by ``delta_grad_clip``),
because that is how the later stages of MNC train the RPN's boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mnc_teach.anchors import generate_base_anchors, grid_anchors
from mnc_teach.course.exercise import (
    Case,
    boxes_tensor,
    call_learner,
    exercise_check,
    passed,
    report_failure,
    split_keywords,
)
from mnc_teach.stage1_rpn import generate_proposals

__all__ = ["PROPOSAL_KEYWORDS", "check_generate_proposals", "proposal_cases"]

# the library's keyword-only parameters: the last six arguments of a case, passed by name
PROPOSAL_KEYWORDS = (
    "image_size", "pre_nms_top_n", "post_nms_top_n", "nms_iou", "min_size", "delta_grad_clip",
)
DETACHED_HINT = (
    "no gradient reaches anchor_deltas: decode the boxes from anchor_deltas[top] itself (no "
    ".detach(), no torch.no_grad()); with detached boxes the later stages could not train the "
    "RPN's boxes through the proposals (MNC's end-to-end training)"
)
CLAMP_HINT = (
    "the gradient reaching anchor_deltas must be clamped to [-delta_grad_clip, "
    "delta_grad_clip] (stage1_rpn.clamp_gradient on the selected deltas); None leaves it exact"
)
GRADIENT_HINT = (
    "only the deltas of the kept boxes receive a gradient, each from its own box: index the "
    "boxes you return with the same indices as their scores"
)


def _logits(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


def proposal_cases() -> list[Case]:
    """The visible cases of ``my_generate_proposals``: (anchors, objectness_logits,
    anchor_deltas, image_size, pre_nms_top_n, post_nms_top_n, nms_iou, min_size,
    delta_grad_clip)."""
    gen = torch.Generator().manual_seed(0)
    zeros = lambda n: torch.zeros(n, 4)  # noqa: E731
    far_apart = boxes_tensor(
        [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70], [80, 80, 90, 90]]
    )
    five_logits = _logits([0.1, 2.0, -1.0, 3.0, 0.5])
    base_anchors = generate_base_anchors(8, (0.5, 1.0, 2.0), (2, 4, 8))  # (9, 4)
    shapes_anchors = grid_anchors(base_anchors, (16, 16), 8)  # (2304, 4)
    return [
        Case(
            "one anchor, zero deltas",
            (boxes_tensor([[10, 10, 30, 30]]), _logits([0.0]), zeros(1), (64, 64), 10, 10, 0.7,
             1.0, None),
            "zero deltas leave the anchor as it is; "
            "the score is sigmoid(logit) = 0.5 here, not the logit",
        ),
        Case(
            "pre_nms_top_n = 3 of 5 separate anchors",
            (far_apart, five_logits, zeros(5), (100, 100), 3, 10, 0.7, 1.0, None),
            "keep the pre_nms_top_n highest logits before anything else, "
            "and return them best first",
        ),
        Case(
            "a box pushed out of the image",
            (boxes_tensor([[40, 0, 60, 20], [0, 0, 20, 20]]), _logits([1.0, 0.0]),
             torch.tensor([[0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]), (64, 64), 10, 10, 0.7,
             1.0, None),
            "after decoding, clip x to [0, W] and y to [0, H] (boxes.clip_boxes); "
            "image_size is (H, W)",
        ),
        Case(
            "a box that is small only after clipping",
            (boxes_tensor([[60, 10, 80, 30], [10, 10, 30, 30]]), _logits([2.0, 1.0]), zeros(2),
             (40, 64), 10, 10, 0.7, 8.0, None),
            "remove boxes with width or height < min_size AFTER clipping "
            "(the first box is 4 px wide inside the image)",
        ),
        Case(
            "two identical anchors",
            (boxes_tensor([[10, 10, 30, 30], [10, 10, 30, 30]]), _logits([0.2, 0.9]), zeros(2),
             (64, 64), 10, 10, 0.7, 1.0, None),
            "NMS at nms_iou (boxes.nms) removes the duplicate and keeps the higher score",
        ),
        Case(
            "post_nms_top_n = 2",
            (far_apart, five_logits, zeros(5), (100, 100), 5, 2, 0.7, 1.0, None),
            "after NMS keep only the post_nms_top_n best boxes",
        ),
        Case(
            "every box smaller than min_size",
            (far_apart, five_logits, zeros(5), (100, 100), 5, 5, 0.7, 16.0, None),
            "no box survives: return boxes [0, 4] and scores [0]",
        ),
        Case(
            "delta_grad_clip = 0.5",
            (far_apart, five_logits, 0.2 * torch.randn(5, 4, generator=gen), (100, 100), 5, 5,
             0.7, 1.0, 0.5),
            "the values do not change with delta_grad_clip, only the gradient does",
        ),
        Case(
            "shapes preset: 2304 anchors, random logits and deltas",
            (shapes_anchors, torch.randn(2304, generator=gen),
             0.3 * torch.randn(2304, 4, generator=gen), (128, 128), 600, 100, 0.7, 4.0, 1 / 512),
            "the order is: top-k logits, decode, clip, remove small boxes, NMS, "
            "keep post_nms_top_n",
        ),
    ]


def _loss_weights(num_boxes: int, dtype: torch.dtype) -> Tensor:
    """Fixed weights [num_boxes, 4] of the probe loss sum(boxes * weights): unequal per
    coordinate (``boxes.sum()`` alone does not depend on dw, dh) and per rank."""
    rank = torch.arange(num_boxes, dtype=dtype)[:, None]  # (R, 1)
    return torch.tensor([1.0, -2.0, 3.0, 4.0], dtype=dtype) * (1 + 0.25 * rank)  # (R, 4)


def _delta_gradient(boxes: Tensor, deltas: Tensor) -> Tensor | None:
    """d sum(boxes * weights) / d deltas (Tensor[T, 4]), or None when ``boxes`` does not
    depend on ``deltas`` (detached)."""
    if not boxes.requires_grad or len(boxes) == 0:
        return None if len(boxes) else torch.zeros_like(deltas)
    loss = (boxes * _loss_weights(len(boxes), boxes.dtype)).sum()
    (grad,) = torch.autograd.grad(loss, deltas, allow_unused=True)
    return grad


def _rounded(boxes: Tensor) -> list[list[float]]:
    return [[round(v, 2) for v in box] for box in boxes.tolist()]


def _rows(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()[:5]


def _check_gradient(
    case: Case, expected_grad: Tensor, got_grad: Tensor | None, *, clip: float | None
) -> bool:
    """Compare the learner's gradient on the anchor deltas (Tensor[T, 4]) with the library's;
    report the first difference. ``clip`` is the case's ``delta_grad_clip``."""
    kept = expected_grad.abs().sum(dim=1) > 0  # (T,): the deltas the library's boxes use
    if got_grad is None and not kept.any():
        return True  # no gradient to send (every kept coordinate clipped, say)
    if got_grad is None or (kept.any() and not got_grad.any()):
        return report_failure(case._replace(hint=DETACHED_HINT), [
            "a loss on your boxes sends no gradient to anchor_deltas (the library's reaches "
            f"{int(kept.sum())} of the {len(kept)} rows, e.g. {_rows(kept)})",
        ])
    if torch.allclose(got_grad, expected_grad, rtol=1e-4, atol=1e-4):
        return True
    got_rows = got_grad.abs().sum(dim=1) > 0
    if clip is not None and got_grad.abs().max() > clip * (1 + 1e-4):
        return report_failure(case._replace(hint=CLAMP_HINT), [
            f"delta_grad_clip = {clip:g}, but the largest gradient on anchor_deltas is "
            f"{got_grad.abs().max().item():.4g}",
        ])
    if not torch.equal(got_rows, kept):
        return report_failure(case._replace(hint=GRADIENT_HINT), [
            f"the gradient should reach anchor_deltas rows {_rows(kept)}..., "
            f"yours reaches rows {_rows(got_rows)}...",
        ])
    row = int(((got_grad - expected_grad).abs().sum(dim=1)).argmax())
    return report_failure(case._replace(hint=GRADIENT_HINT + "; decode with boxes.decode_boxes"), [
        f"d loss / d anchor_deltas[{row}]: expected "
        f"{[round(v, 4) for v in expected_grad[row].tolist()]}, "
        f"got {[round(v, 4) for v in got_grad[row].tolist()]}",
    ])


@exercise_check("proposals", generate_proposals=generate_proposals)
def check_generate_proposals(
    fn: Callable[..., tuple[Tensor, Tensor]], *, cases: Sequence[Case] | None = None
) -> bool:
    """Check ``my_generate_proposals(anchors [T, 4], objectness_logits [T], anchor_deltas [T, 4],
    *, image_size, pre_nms_top_n, post_nms_top_n, nms_iou, min_size, delta_grad_clip=None) ->
    (boxes [R, 4], scores [R])`` against ``stage1_rpn.generate_proposals``: the values, then the
    gradient of a loss on the boxes with respect to the anchor deltas."""
    cases = proposal_cases() if cases is None else cases
    for case in cases:
        args, settings = split_keywords(case.args, PROPOSAL_KEYWORDS)
        anchors, logits, deltas = args
        library_deltas = deltas.detach().clone().requires_grad_(True)
        expected_boxes, expected_scores = generate_proposals(
            anchors, logits, library_deltas, **settings
        )
        expected_grad = _delta_gradient(expected_boxes, library_deltas)
        learner_deltas = deltas.detach().clone().requires_grad_(True)  # the learner gets a copy
        ok, got = call_learner(
            fn, case._replace(args=(anchors, logits, learner_deltas, *settings.values())),
            fn_name="my_generate_proposals", keywords=PROPOSAL_KEYWORDS,
        )
        if not ok:
            return False
        if not (isinstance(got, (tuple, list)) and len(got) == 2
                and all(torch.is_tensor(g) for g in got)):
            return report_failure(
                case, [f"expected a pair (boxes, scores) of tensors, got {type(got).__name__}"]
            )
        got_boxes, got_scores = got
        if got_boxes.shape != expected_boxes.shape or got_scores.shape != expected_scores.shape:
            return report_failure(case, [
                f"expected {len(expected_boxes)} proposals: boxes "
                f"{tuple(expected_boxes.shape)} and scores {tuple(expected_scores.shape)}",
                f"got boxes {tuple(got_boxes.shape)} and scores {tuple(got_scores.shape)}",
            ])
        if not (torch.allclose(got_boxes.detach().float(), expected_boxes.detach(), atol=1e-3)
                and torch.allclose(got_scores.detach().float(), expected_scores, atol=1e-5)):
            return report_failure(case, [
                f"expected boxes  {_rounded(expected_boxes[:3])}",
                f"got      boxes  {_rounded(got_boxes[:3])}",
                f"expected scores {[round(v, 4) for v in expected_scores[:3].tolist()]}",
                f"got      scores {[round(v, 4) for v in got_scores[:3].tolist()]}",
            ])
        got_grad = _delta_gradient(got_boxes, learner_deltas)
        if not _check_gradient(case, expected_grad, got_grad, clip=settings["delta_grad_clip"]):
            return False
    return passed(
        "my_generate_proposals matches stage1_rpn.generate_proposals on all "
        f"{len(cases)} cases, boxes, scores and the gradient reaching the anchor deltas"
    )
