"""Exercise checks of notebook 05, stage 3: mask pooling (``my_mask_pool``) and mask-level labels
(``my_mask_level_labels``).

Each check runs the learner's function on edge cases against the library and prints a
diagnosis of the first failure; :mod:`mnc_teach.course.exercise` says what a failure does
(report interactively, raise under nbgrader).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mnc_teach.config import ClassifierConfig, MaskHeadConfig
from mnc_teach.course.exercise import (
    Case,
    boxes_tensor,
    call_learner,
    exercise_check,
    passed,
    report_failure,
    split_keywords,
)
from mnc_teach.stage3_classify import mask_level_labels, mask_pool

__all__ = [
    "check_mask_level_labels", "check_mask_pool", "mask_labels_case", "mask_labels_cases",
    "mask_pool_case", "mask_pool_cases",
]


# ---------------------------------------------------------------- mask pooling
def mask_pool_case(
    name: str, num_rois: int, channels: int, roi_size: int, mask_size: int, hint: str, *,
    seed: int = 0,
) -> Case:
    """A case of ``my_mask_pool``: random features [R, C, P, P] and soft masks [R, M, M]."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(num_rois, channels, roi_size, roi_size, generator=gen)
    masks = torch.rand(num_rois, mask_size, mask_size, generator=gen)
    return Case(name, (features, masks), hint)


def mask_pool_cases() -> list[Case]:
    """The visible cases of ``my_mask_pool``: (roi_features, mask_probs)."""
    features_2x2 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    left_half = torch.zeros(1, 4, 4)  # the object fills the left half of the box
    left_half[:, :, :2] = 1
    case = mask_pool_case
    return [
        case("M = P: a plain product", 2, 3, 4, 4, "with M = P the resize changes nothing; "
             "multiply every channel by its RoI's mask", seed=1),
        Case("2 x 2 features, 4 x 4 mask of the left half", (features_2x2, left_half),
             "resize the mask to P x P first: the left column stays, the right one becomes 0"),
        case("M = 21 to P = 7, a mask per RoI", 3, 2, 7, 21, "resize with F.interpolate(mode="
             "'bilinear', align_corners=False) to the features' P x P; RoI r takes mask r",
             seed=2),
        case("M = 3 to P = 7: the mask grows", 2, 2, 7, 3, "bilinear with align_corners=False "
             "(the cells' centres line up, not the corners)", seed=3),
        case("M = 28 to P = 14 (the paper's sizes)", 2, 4, 14, 28, "the mask broadcasts over the "
             "channels: (R, 1, P, P) times (R, C, P, P)", seed=4),
        case("no RoIs (R = 0)", 0, 3, 7, 21, "R = 0 must give a [0, C, P, P] result", seed=5),
    ]


def _grads(pooled: Tensor, inputs: tuple[Tensor, Tensor]) -> tuple[Tensor | None, ...]:
    """d(weighted sum of ``pooled``) / d each input; None where no gradient reaches it."""
    if not pooled.requires_grad:
        return (None, None)
    weights = torch.linspace(-1, 1, pooled.numel()).reshape(pooled.shape)
    return torch.autograd.grad((pooled * weights).sum(), inputs, allow_unused=True)


@exercise_check("mask_pooling", mask_pool=mask_pool)
def check_mask_pool(
    fn: Callable[[Tensor, Tensor], Tensor], *, cases: Sequence[Case] | None = None
) -> bool:
    """Check ``my_mask_pool(roi_features [R, C, P, P], mask_probs [R, M, M]) -> [R, C, P, P]``
    against ``stage3_classify.mask_pool``: the values, and the gradient with respect to both
    inputs (stage 3's loss trains the mask head through the mask)."""
    cases = mask_pool_cases() if cases is None else cases
    for case in cases:
        inputs = tuple(arg.detach().clone().requires_grad_(True) for arg in case.args)
        expected = mask_pool(*inputs)
        learner_inputs = tuple(arg.detach().clone().requires_grad_(True) for arg in case.args)
        ok, got = call_learner(fn, case._replace(args=learner_inputs), fn_name="my_mask_pool")
        if not ok:
            return False
        if not torch.is_tensor(got) or got.shape != expected.shape:
            got_shape = getattr(got, "shape", type(got).__name__)
            return report_failure(
                case, [f"expected a tensor of shape {tuple(expected.shape)}, got {got_shape}"]
            )
        if not torch.allclose(got.detach(), expected.detach(), atol=1e-5):
            worst = (got.detach() - expected.detach()).abs().flatten(1).amax(1)  # (R,)
            r = int(worst.argmax())
            return report_failure(case, [
                f"features {tuple(case.args[0].shape)}, masks {tuple(case.args[1].shape)}",
                f"RoI {r}, channel 0, row 0: expected {_first_row(expected[r, 0])}",
                f"                           got      {_first_row(got[r, 0])}",
            ])
        if not expected.numel():
            continue
        for name, want, have in zip(
            ("roi_features", "mask_probs"), _grads(expected, inputs), _grads(got, learner_inputs),
            strict=True,
        ):
            if have is None:
                return report_failure(case, [
                    f"the values are right, but no gradient reaches {name}",
                    "stage 3's loss trains the mask head through mask_probs: keep the product "
                    "differentiable in both (no detach, no rounding, no torch.no_grad)",
                ])
            if not torch.allclose(have, want, atol=1e-5):
                return report_failure(case, [
                    f"the values are right here, but the gradient with respect to {name} "
                    "differs from the library's",
                    "each output cell must read the mask bilinearly (align_corners=False), so "
                    "its gradient goes to the 2 x 2 mask cells around its centre",
                ])
    return passed(f"my_mask_pool matches stage3_classify.mask_pool on all {len(cases)} cases, "
                  "values and gradients")


def _first_row(values: Tensor) -> list[float]:
    return [round(v, 4) for v in values[0, :4].detach().tolist()]


# ---------------------------------------------------------------- mask-level labels
MASK_LABEL_KEYWORDS = ("gt_areas", "box_labels", "mask_iou_fg", "threshold")


def mask_labels_case(
    name: str,
    mask_probs: Tensor,
    mask_targets: Tensor,
    boxes: Tensor,
    hint: str,
    *,
    gt_areas: Tensor,
    box_labels: list[int] | Tensor,
    mask_iou_fg: float = ClassifierConfig.mask_iou_fg,
    threshold: float = MaskHeadConfig.target_threshold,
) -> Case:
    """A case of ``my_mask_level_labels``: (mask_probs, mask_targets, boxes, gt_areas,
    box_labels, mask_iou_fg, threshold)."""
    labels = torch.as_tensor(box_labels, dtype=torch.int64)
    args = (mask_probs, mask_targets, boxes, gt_areas, labels, mask_iou_fg, threshold)
    return Case(name, args, hint)


def mask_labels_cases() -> list[Case]:
    """The visible cases of ``my_mask_level_labels``."""
    gen = torch.Generator().manual_seed(0)
    size = 8  # M
    box = boxes_tensor([[0, 0, 16, 16]])  # 2 x 2 pixels per mask cell
    target = torch.zeros(1, size, size)
    target[0, 2:6, 1:7] = 1  # 24 cells = 96 pixels
    half = target.clone()
    half[0, :, 4:] = 0  # 12 of the 24 cells: IoU exactly 0.5
    area = torch.tensor([96.0])
    # binarised at 0.4 this is the target; at 0.5 it is empty
    soft = torch.where(target > 0, 0.45, 0.35)
    probs = torch.rand(20, size, size, generator=gen)
    targets = (torch.rand(20, size, size, generator=gen) > 0.5).float()
    corners = torch.rand(20, 2, generator=gen) * 40
    boxes = torch.cat([corners, corners + 10 + torch.rand(20, 2, generator=gen) * 40], dim=1)
    cell_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / size**2
    areas = targets.flatten(1).sum(1) * cell_areas
    random_labels = torch.randint(0, 4, (20,), generator=gen)
    case = mask_labels_case
    return [
        case("perfect mask", target.clone(), target, box, "mask IoU 1: keep the box-level label "
             "(each cell counts box area / M^2 pixels)", gt_areas=area, box_labels=[2]),
        case("empty predicted mask", torch.zeros(1, size, size), target, box,
             "mask IoU 0: background (0)", gt_areas=area, box_labels=[2]),
        case("background RoI with a good mask", target.clone(), target, box,
             "a box-level background RoI stays background", gt_areas=area, box_labels=[0]),
        case("soft probabilities 0.45 / 0.35", soft, target, box,
             "binarise mask_probs at the threshold argument (0.4), >= is foreground",
             gt_areas=area, box_labels=[2]),
        case("the instance sticks out of the RoI", target.clone(), target, box,
             "the union uses the instance's full area (gt_areas, pixels), "
             "not only its part inside the RoI", gt_areas=3 * area, box_labels=[2]),
        case("IoU exactly 0.5", half, target, box, "IoU >= mask_iou_fg is foreground; count "
             "cells as box area / M^2 pixels each", gt_areas=area, box_labels=[2]),
        case("mask_iou_fg is a parameter (0.7)", half, target, box,
             "compare with the mask_iou_fg argument", gt_areas=area, box_labels=[2],
             mask_iou_fg=0.7),
        case("20 random RoIs of different sizes", probs, targets, boxes,
             "each RoI has its own cell area: box area / M^2", gt_areas=areas,
             box_labels=random_labels),
    ]


@exercise_check("mask_labels", mask_level_labels=mask_level_labels)
def check_mask_level_labels(
    fn: Callable[..., Tensor], *, cases: Sequence[Case] | None = None
) -> bool:
    """Check ``my_mask_level_labels(mask_probs [R, M, M], mask_targets [R, M, M], boxes [R, 4],
    *, gt_areas [R], box_labels [R], mask_iou_fg, threshold) -> labels [R] int64`` against
    ``stage3_classify.mask_level_labels``."""
    cases = mask_labels_cases() if cases is None else cases
    for case in cases:
        positional, by_name = split_keywords(case.args, MASK_LABEL_KEYWORDS)
        expected = mask_level_labels(*positional, **by_name)
        ok, got = call_learner(
            fn, case, fn_name="my_mask_level_labels", keywords=MASK_LABEL_KEYWORDS
        )
        if not ok:
            return False
        if not torch.is_tensor(got) or got.dtype != torch.int64 or not torch.equal(got, expected):
            shown = got.tolist() if torch.is_tensor(got) else got
            return report_failure(case, [
                f"expected {expected.tolist()} (int64)",
                f"got      {shown} ({getattr(got, 'dtype', type(got).__name__)})",
            ])
    return passed(f"my_mask_level_labels matches stage3_classify.mask_level_labels on all "
                  f"{len(cases)} cases")
