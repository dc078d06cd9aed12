"""Tests for mnc_teach/stage2_masks.py: mask targets against hand-built and resized masks,
and the loss against a hand-written binary cross-entropy on the positive RoIs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mnc_teach.stage2_masks import MaskHead, mask_loss, mask_targets


def rectangle_mask(height, width, x1, y1, x2, y2) -> torch.Tensor:
    """uint8 mask with ones on the pixels of the continuous box (x1, y1, x2, y2) (integers)."""
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def disc_mask(height, width, cx, cy, radius) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return (((xs - cx) ** 2 + (ys - cy) ** 2) <= radius**2).to(torch.uint8)


def test_mask_head_shapes():
    head = MaskHead(in_channels=3, roi_size=5, mask_size=7, hidden_dim=16)
    assert head(torch.randn(4, 3, 5, 5)).shape == (4, 7, 7)
    assert head(torch.randn(0, 3, 5, 5)).shape == (0, 7, 7)
    assert head.mask_logits.bias.abs().sum() == 0  # every mask starts near 0.5
    assert head.mask_logits.weight.std() < 0.01


def test_target_of_the_tight_box_is_the_mask_resized():
    """A disc inside its own tight box: the target is the disc, resized to M x M. Reference:
    the crop resized with antialiased bilinear interpolation, binarised at 0.4."""
    gt_mask = disc_mask(64, 64, cx=30.0, cy=34.0, radius=14.0)
    ys, xs = torch.nonzero(gt_mask, as_tuple=True)
    x1, y1, x2, y2 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
    box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)
    size = 14  # 28 px box -> 2 px per cell
    targets = mask_targets(gt_mask[None], torch.tensor([0]), box, mask_size=size)
    assert targets.shape == (1, size, size) and targets.dtype == torch.float32
    crop = gt_mask[y1:y2, x1:x2].float()[None, None]
    resized = F.interpolate(
        crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0, 0]
    expected = (resized >= 0.4).float()
    assert (targets[0] != expected).float().mean() <= 0.03  # differ only at a few edge cells
    assert targets[0, 0, 0] == 0 and targets[0, size // 2, size // 2] == 1


def test_rectangle_targets_are_exact():
    """Cell boundaries on pixel boundaries: the target is exact, including a box that covers
    only the left half of the object's extent, and the part of a box outside the object."""
    gt_mask = rectangle_mask(64, 64, 20, 20, 40, 40)
    boxes = torch.tensor(
        [
            [20.0, 20.0, 40.0, 40.0],  # the tight box: all ones
            [30.0, 20.0, 50.0, 40.0],  # left half on the object, right half beyond it
            [20.0, 10.0, 40.0, 30.0],  # bottom half on the object
            [0.0, 0.0, 10.0, 10.0],  # misses it: all zeros
        ]
    )
    targets = mask_targets(gt_mask[None], torch.zeros(4, dtype=torch.int64), boxes, mask_size=10)
    assert torch.equal(targets[0], torch.ones(10, 10))
    left_half, bottom_half = torch.zeros(10, 10), torch.zeros(10, 10)
    left_half[:, :5] = 1
    bottom_half[5:, :] = 1
    assert torch.equal(targets[1], left_half)
    assert torch.equal(targets[2], bottom_half)
    assert torch.equal(targets[3], torch.zeros(10, 10))


def test_the_part_of_a_roi_outside_the_image_is_background():
    gt_mask = rectangle_mask(20, 20, 0, 0, 10, 10)  # touches the left and top image borders
    boxes = torch.tensor(
        [[-10.0, 0.0, 10.0, 10.0], [0.0, -10.0, 10.0, 10.0], [10.0, 0.0, 30.0, 10.0]]
    )
    matched = torch.zeros(3, dtype=torch.int64)
    targets = mask_targets(gt_mask[None], matched, boxes, mask_size=10)  # 2 px per cell
    right_half, bottom_half = torch.zeros(10, 10), torch.zeros(10, 10)
    right_half[:, 5:] = 1
    bottom_half[5:, :] = 1
    assert torch.equal(targets[0], right_half)  # x < 0 is outside the image, not object
    assert torch.equal(targets[1], bottom_half)
    # beyond the object and the image's right edge
    assert torch.equal(targets[2], torch.zeros(10, 10))


def test_each_roi_reads_its_own_instance():
    masks = torch.stack(
        [rectangle_mask(48, 48, 0, 0, 30, 30), rectangle_mask(48, 48, 10, 10, 40, 40)]
    )
    box = torch.tensor([[10.0, 10.0, 40.0, 40.0]] * 2)
    targets = mask_targets(masks, torch.tensor([1, 0]), box, mask_size=6)  # 5 px per cell
    assert torch.equal(targets[0], torch.ones(6, 6))
    expected_0 = torch.zeros(6, 6)
    expected_0[:4, :4] = 1  # instance 0 covers [10, 30) of the box's [10, 40): 4 of 6 cells
    assert torch.equal(targets[1], expected_0)


def test_targets_without_ground_truth_or_rois_are_empty_zeros():
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 9.0, 9.0]])
    no_masks = torch.zeros(0, 16, 16, dtype=torch.uint8)
    no_gt = mask_targets(no_masks, torch.zeros(2, dtype=torch.int64), boxes, mask_size=5)
    assert torch.equal(no_gt, torch.zeros(2, 5, 5))
    one_mask = rectangle_mask(16, 16, 0, 0, 4, 4)[None]
    no_rois = mask_targets(
        one_mask, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), mask_size=5
    )
    assert no_rois.shape == (0, 5, 5)


def test_targets_carry_no_gradient_to_the_boxes():
    boxes = torch.tensor([[20.0, 20.0, 40.0, 40.0]], requires_grad=True)
    gt_mask = rectangle_mask(64, 64, 20, 20, 40, 40)[None]
    targets = mask_targets(gt_mask, torch.tensor([0]), boxes, mask_size=4)
    assert not targets.requires_grad


def hand_bce(logit: float, label: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_mask_loss_is_mean_bce_over_the_pixels_of_positive_rois():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 3, generator=gen).requires_grad_(True)
    targets = (torch.rand(4, 3, 3, generator=gen) > 0.5).float()
    positive = torch.tensor([True, False, True, False])
    loss = mask_loss(logits, targets, positive)
    values = [
        hand_bce(logits[r, i, j].item(), targets[r, i, j].item())
        for r in (0, 2)
        for i in range(3)
        for j in range(3)
    ]
    assert loss.item() == pytest.approx(sum(values) / len(values), rel=1e-5)
    loss.backward()
    assert logits.grad[[1, 3]].abs().sum() == 0  # negatives get no mask gradient
    assert logits.grad[[0, 2]].abs().sum() > 0
    changed = logits.detach().clone()
    changed[[1, 3]] += 10.0
    assert mask_loss(changed, targets, positive).item() == pytest.approx(loss.item())


def test_mask_loss_without_positives_is_a_differentiable_zero():
    logits = torch.randn(3, 4, 4, requires_grad=True)
    loss = mask_loss(logits, torch.ones(3, 4, 4), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 4, 4))
    empty = mask_loss(
        torch.zeros(0, 4, 4, requires_grad=True),
        torch.zeros(0, 4, 4),
        torch.zeros(0, dtype=torch.bool),
    )
    assert empty.item() == 0.0
