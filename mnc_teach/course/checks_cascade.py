"""Exercise checks of notebook 06 (``06_cascade_end_to_end``): the cascade loss and the
``detach_boxes`` switch (``my_cascade_loss``, ``my_boxes_for_warp``).

The check runs the learner's functions on small cases against the library and follows the
graph: which tensors the gradient reaches, and with which values, down to a tiny 5-stage MNC
whose RoI warp calls the learner's ``boxes_for_warp``. Notebook 07's checks live in
:mod:`mnc_teach.course.checks_inference`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mnc_teach.cascade import build_mnc, cascade_loss
from mnc_teach.config import override, shapes_cpu
from mnc_teach.course.exercise import (
    Case,
    call_learner,
    exercise_check,
    passed,
    report_failure,
    rows_tensor,
    tensor_mismatch,
)
from mnc_teach.course.seam import use_implementation
from mnc_teach.roi_warp import boxes_for_warp

__all__ = [
    "TinyCascade", "cascade_loss_cases", "check_cascade_loss", "loss_terms", "tiny_scene",
]


def loss_terms(values: dict[str, float]) -> dict[str, Tensor]:
    """A model's ``losses`` dict: each value a 0-dim leaf that requires grad."""
    return {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}


@dataclass(frozen=True)
class TinyCascade:
    """A case run on a real model: one forward pass of a tiny 5-stage MNC (seeded) on
    :func:`tiny_scene`, with the learner's ``boxes_for_warp`` plugged in through the seam."""

    detach_boxes: bool
    seed: int = 0


def tiny_scene(size: int = 64) -> tuple[Tensor, dict]:
    """One image [3, size, size] with a bright square and a disc, and its target."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros((2, size, size), dtype=torch.uint8)
    masks[0, 8:30, 10:34] = 1
    masks[1] = ((yy - 44) ** 2 + (xx - 40) ** 2 <= 12**2) & (masks[0] == 0)
    image = torch.full((3, size, size), 0.2)
    image[:, masks[0].bool()] = torch.tensor([0.9, 0.8, 0.1])[:, None]
    image[:, masks[1].bool()] = torch.tensor([0.1, 0.3, 0.9])[:, None]
    boxes = torch.tensor([[10.0, 8.0, 34.0, 30.0], [28.0, 32.0, 53.0, 57.0]])
    target = {"boxes": boxes, "labels": torch.tensor([2, 1]), "masks": masks,
              "ignore": torch.zeros((size, size), dtype=torch.uint8), "image_id": "tiny"}
    return image, target


def _rpn_box_gradient(warp_boxes: Callable, case: TinyCascade) -> Tensor | None:
    """Gradient of the stage 2-5 losses of a tiny MNC w.r.t. the RPN's box-regression weights
    (None when none reaches them); the global RNG is left as it was."""
    cfg = shapes_cpu()
    for name, value in {"backbone.tiny_channels": (8, 16, 16), "rpn.conv_channels": 16,
                        "mask.hidden_dim": 32, "classifier.fc_dim": 32,
                        "detach_boxes": case.detach_boxes}.items():
        cfg = override(cfg, name, value)
    with torch.random.fork_rng(), use_implementation(boxes_for_warp=warp_boxes):
        torch.manual_seed(case.seed)
        model = build_mnc(cfg).train()
        image, target = tiny_scene()
        _, losses = model([image], [target])
        later = sum(v for k, v in losses.items() if not k.startswith("loss_rpn"))
        (grad,) = torch.autograd.grad(later, model.rpn.head.deltas.weight, allow_unused=True)
    return grad


def cascade_loss_cases() -> list[Case]:
    """Visible cases: ``(losses,)`` for my_cascade_loss, ``(rois, detach_boxes)`` for
    my_boxes_for_warp, ``(TinyCascade,)`` for both in a tiny model."""
    stage123 = {"loss_rpn_obj": 0.69, "loss_rpn_box": 0.12, "loss_mask": 0.55,
                "loss_cls_mask": 1.1, "loss_cls_box": 1.05, "loss_box_reg": 0.3}
    stage45 = {"loss_mask_s4": 0.5, "loss_cls_mask_s5": 1.2, "loss_cls_box_s5": 0.9,
               "loss_box_reg_s5": 0.25}
    rois = [[0, 4.25, 6.5, 30.75, 22.0], [1, 10.0, 0.5, 12.5, 40.0], [0, 0.0, 0.0, 63.0, 63.0]]
    return [
        Case("3-stage cascade: L1 + L2 + L3", (loss_terms(stage123),),
             "L is the sum of every term (not their mean), a tensor that keeps the graph"),
        Case("5-stage cascade: L4 and L5 count too", (loss_terms(stage123 | stage45),),
             "sum every value of the dict, the _s4 / _s5 keys included"),
        Case("one term", (loss_terms({"loss_mask": 0.25}),), "a single term is its own sum"),
        Case("detach_boxes=False: the gradient reaches the boxes (MNC)",
             (rows_tensor(rois, 5, grad=True), False),
             "with detach_boxes=False return rois itself: the later losses train stage 1"),
        Case("detach_boxes=True: no gradient reaches the boxes",
             (rows_tensor(rois, 5, grad=True), True),
             "with detach_boxes=True return rois.detach(): same values, cut from the graph"),
        Case("no RoIs", (rows_tensor([], 5, grad=True), False), "R = 0 gives a [0, 5] tensor"),
        Case("tiny MNC, detach_boxes=True: stages 2-5 leave the RPN's deltas alone",
             (TinyCascade(detach_boxes=True),),
             "the RoI warp calls your boxes_for_warp: detach when detach_boxes is True"),
        Case("tiny MNC, detach_boxes=False: stages 2-5 train the RPN's deltas",
             (TinyCascade(detach_boxes=False),),
             "the RoI warp calls your boxes_for_warp: keep the graph when detach_boxes is False"),
    ]


def _check_loss(fn: Callable, case: Case) -> bool | None:
    """Values and graph of my_cascade_loss on ``case`` (None when it passed)."""
    (terms,) = case.args  # leaves; the learner gets non-leaf copies, as the model's losses are
    expected = cascade_loss(dict(terms))
    copies = Case(case.name, ({k: v.clone() for k, v in terms.items()},), case.hint)
    ok, got = call_learner(fn, copies, fn_name="my_cascade_loss")
    if not ok:
        return False
    if not torch.is_tensor(got) or got.dim() != 0:
        what = f"shape {tuple(got.shape)}" if torch.is_tensor(got) else type(got).__name__
        return report_failure(case, [f"expected a 0-dim tensor, got {what}",
                                     "(not .item(): the training step calls .backward() on it)"])
    if not torch.allclose(got.detach(), expected.detach(), atol=1e-5):
        lines = [f"terms    = {[round(v.item(), 4) for v in terms.values()]}",
                 f"expected = {expected.item():.4f}", f"got      = {got.item():.4f}"]
        if math.isclose(got.item(), expected.item() / len(terms), abs_tol=1e-5):
            lines.append("that is the mean of the terms")
        return report_failure(case, lines)
    if not got.requires_grad:
        return report_failure(case, ["your loss is cut from the graph: no gradient reaches "
                                     "the terms (no .detach(), torch.tensor(...) or .item())"])
    grads = torch.autograd.grad(got, list(terms.values()), allow_unused=True)
    wrong = [k for k, g in zip(terms, grads, strict=True) if g is None or abs(g.item() - 1) > 1e-6]
    if wrong:
        return report_failure(case, [f"dL/d(term) must be 1 for every term; it is not for {wrong}"])
    return None


def _check_warp_boxes(fn: Callable, case: Case) -> bool | None:
    """Values and graph of my_boxes_for_warp on ``case`` (None when it passed)."""
    rois, detach = case.args
    expected = boxes_for_warp(rois, detach_boxes=detach)
    ok, got = call_learner(fn, case, fn_name="my_boxes_for_warp", keywords=("detach_boxes",))
    if not ok:
        return False
    if not torch.is_tensor(got) or got.shape != expected.shape or not torch.equal(
        got.detach(), expected.detach()
    ):
        return report_failure(case, ["the values must not change",
                                     *tensor_mismatch(got, expected, atol=0.0)])
    weights = torch.arange(1.0, rois.numel() + 1).reshape(rois.shape)  # (R, 5)
    grad = None
    if got.requires_grad:
        (grad,) = torch.autograd.grad((got * weights).sum(), rois, allow_unused=True)
    if detach and grad is not None and grad.abs().sum() > 0:
        return report_failure(case, ["a gradient reaches rois although detach_boxes=True"])
    if not detach and (grad is None or not torch.allclose(grad, weights)):
        return report_failure(case, ["the gradient does not reach rois (as the identity) "
                                     "although detach_boxes=False"])
    return None


def _check_tiny_cascade(fn: Callable, case: Case) -> bool | None:
    """my_boxes_for_warp inside a tiny MNC: the RPN's box weights get a gradient from stages
    2-5 exactly when detach_boxes is False (None when it passed)."""
    (tiny,) = case.args
    probe = Case(case.name, (torch.zeros(1, 5, requires_grad=True), tiny.detach_boxes), case.hint)
    if not call_learner(fn, probe, fn_name="my_boxes_for_warp", keywords=("detach_boxes",))[0]:
        return False
    try:
        grad = _rpn_box_gradient(fn, tiny)
    except Exception as error:  # the learner's function inside the model
        return report_failure(case, [f"the tiny MNC raised {type(error).__name__}: {error}"])
    reached = grad is not None and bool(grad.abs().sum() > 0)
    if reached == tiny.detach_boxes:
        size = "none" if not reached else f"|grad| = {grad.norm():.2e}"
        return report_failure(case, [f"gradient of L2..L5 w.r.t. rpn.head.deltas.weight: {size}",
                                     f"expected {'none' if tiny.detach_boxes else 'some'}"])
    return None


@exercise_check("cascade_loss", cascade_loss=cascade_loss, boxes_for_warp=boxes_for_warp)
def check_cascade_loss(
    loss_fn: Callable, warp_boxes_fn: Callable, *, cases: Sequence[Case] | None = None
) -> bool:
    """Check ``my_cascade_loss(losses) -> Tensor[]`` and ``my_boxes_for_warp(rois, *,
    detach_boxes) -> rois``: values, and the gradient they let through."""
    cases = cascade_loss_cases() if cases is None else cases
    for case in cases:
        first = case.args[0]
        if isinstance(first, dict):
            verdict = _check_loss(loss_fn, case)
        elif isinstance(first, TinyCascade):
            verdict = _check_tiny_cascade(warp_boxes_fn, case)
        else:
            verdict = _check_warp_boxes(warp_boxes_fn, case)
        if verdict is not None:
            return verdict
    return passed(f"my_cascade_loss and my_boxes_for_warp match the library on all {len(cases)} "
                  "cases, gradients included")
