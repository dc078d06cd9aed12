"""The checks of notebook 05 (mask pooling, mask-level labels) pass the library's functions and
diagnose planted mistakes: which case failed, and a hint; hidden tests print no inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mnc_teach.course.checks_classify import (
    check_mask_level_labels,
    check_mask_pool,
    mask_labels_case,
    mask_pool_case,
)
from mnc_teach.course.exercise import ExerciseFailed, boxes_tensor
from mnc_teach.stage3_classify import mask_level_labels, mask_pool


def _not_implemented(*args, **kwargs):
    raise NotImplementedError


# ---------------------------------------------------------------- mask pooling
def _pool(roi_features: Tensor, mask_probs: Tensor, *, mode: str = "bilinear",
          align_corners: bool | None = False, detach: bool = False) -> Tensor:
    """A learner's mask_pool; the keywords plant the usual mistakes."""
    masks = mask_probs.detach() if detach else mask_probs
    size = roi_features.shape[-2:]
    resized = F.interpolate(masks[:, None], size=size, mode=mode, align_corners=align_corners)
    return roi_features * resized  # (R, C, P, P) * (R, 1, P, P)


def test_mask_pool_passes_the_library_and_a_learners_solution(capsys) -> None:
    assert check_mask_pool(mask_pool).status == "passed"
    assert check_mask_pool(_pool).status == "passed"
    assert capsys.readouterr().out.count("✓ my_mask_pool matches") == 2


@pytest.mark.parametrize(
    ("wrong", "failing_case", "diagnosis"),
    [
        (lambda f, m: _pool(f, m, align_corners=True),
         "2 x 2 features, 4 x 4 mask of the left half",
         "the gradient with respect to mask_probs differs"),
        (lambda f, m: _pool(f, m, mode="nearest", align_corners=None),
         "2 x 2 features, 4 x 4 mask of the left half",
         "the gradient with respect to mask_probs differs"),
        (lambda f, m: f * F.adaptive_avg_pool2d(m[:, None], f.shape[-2:]),
         "M = 21 to P = 7, a mask per RoI", "RoI 2, channel 0, row 0: expected"),
        (lambda f, m: _pool(f, m, detach=True), "M = P: a plain product",
         "no gradient reaches mask_probs"),
        (lambda f, m: f * m[:, None], "2 x 2 features, 4 x 4 mask of the left half",
         "raised RuntimeError"),
        (lambda f, m: _pool(f, m)[:, :1], "M = P: a plain product",
         "expected a tensor of shape (2, 3, 4, 4)"),
    ],
)
def test_mask_pool_diagnoses_planted_mistakes(wrong, failing_case, diagnosis, capsys) -> None:
    assert check_mask_pool(wrong).status == "wrong"
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {failing_case}") and diagnosis in out, out


def test_mask_pool_stub_is_missing_in_one_line(capsys) -> None:
    assert check_mask_pool(_not_implemented).status == "missing"
    assert capsys.readouterr().out == "✗ my_mask_pool is not implemented yet\n"


def test_mask_pool_hidden_failure_raises_and_shows_no_inputs(capsys) -> None:
    hidden = mask_pool_case("a hidden pooling", 2, 3, 6, 13, "the hint", seed=9)
    with pytest.raises(ExerciseFailed, match="a hidden test: a hidden pooling"):
        check_mask_pool(lambda f, m: _pool(f, m, align_corners=True), cases=[hidden], hidden=True)
    assert capsys.readouterr().out == "✗ a hidden pooling\n  hint: the hint\n"


# ---------------------------------------------------------------- mask-level labels
def _labels(mask_probs: Tensor, mask_targets: Tensor, boxes: Tensor, *, gt_areas: Tensor,
            box_labels: Tensor, mask_iou_fg: float = 0.5, threshold: float = 0.4,
            mistake: str = "") -> Tensor:
    """A learner's mask_level_labels; ``mistake`` plants one of the usual errors."""
    pred = (mask_probs >= (0.5 if mistake == "fixed threshold" else threshold)).float()
    cell = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / mask_probs.shape[-1] ** 2
    if mistake == "cells, not pixels":
        cell = torch.ones_like(cell)
    inter = (pred * mask_targets).sum(dim=(1, 2)) * cell
    target_area = mask_targets.sum(dim=(1, 2)) * cell
    union = pred.sum(dim=(1, 2)) * cell + (
        target_area if mistake == "area inside the RoI" else gt_areas
    ) - inter
    iou = inter / union.clamp(min=1e-6)
    fg = iou > mask_iou_fg if mistake == "strict" else iou >= mask_iou_fg
    return torch.where(fg, box_labels, torch.zeros_like(box_labels))


def test_mask_labels_pass_the_library_and_a_learners_solution(capsys) -> None:
    assert check_mask_level_labels(mask_level_labels).status == "passed"
    assert check_mask_level_labels(_labels).status == "passed"
    assert capsys.readouterr().out.count("✓ my_mask_level_labels matches") == 2


@pytest.mark.parametrize(
    ("mistake", "failing_case"),
    [
        ("strict", "IoU exactly 0.5"),
        ("fixed threshold", "soft probabilities 0.45 / 0.35"),
        ("area inside the RoI", "the instance sticks out of the RoI"),
        ("cells, not pixels", "perfect mask"),
    ],
)
def test_mask_labels_diagnose_planted_mistakes(mistake, failing_case, capsys) -> None:
    wrong = lambda *args, **kwargs: _labels(*args, **kwargs, mistake=mistake)  # noqa: E731
    assert check_mask_level_labels(wrong).status == "wrong"
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {failing_case}\n  expected [") and "(int64)" in out, out


def test_mask_labels_stub_and_dtype(capsys) -> None:
    assert check_mask_level_labels(_not_implemented).status == "missing"
    assert capsys.readouterr().out == "✗ my_mask_level_labels is not implemented yet\n"
    as_float = lambda *args, **kwargs: _labels(*args, **kwargs).float()  # noqa: E731
    assert not check_mask_level_labels(as_float)
    assert "got      [2.0] (torch.float32)" in capsys.readouterr().out


def test_mask_labels_hidden_failure_raises_and_shows_no_inputs(capsys) -> None:
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1  # 8 of the 16 cells
    hidden = mask_labels_case(
        "a hidden label", target.clone(), target, boxes_tensor([[0, 0, 8, 8]]), "the hint",
        gt_areas=torch.tensor([64.0]), box_labels=[5],
    )  # IoU 0.5 exactly: the instance is twice the mask's area
    strict = lambda *args, **kwargs: _labels(*args, **kwargs, mistake="strict")  # noqa: E731
    with pytest.raises(ExerciseFailed, match="a hidden label"):
        check_mask_level_labels(strict, cases=[hidden], hidden=True)
    assert capsys.readouterr().out == "✗ a hidden label\n  hint: the hint\n"
