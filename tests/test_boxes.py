"""Tests for mnc_teach/boxes.py: each function against its torchvision counterpart,
plus hand-computed cases and the encode/decode invariant."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from mnc_teach.boxes import (
    MAX_LOG_SCALE,
    RPN_BOX_WEIGHTS,
    batched_nms,
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    masks_to_boxes,
    nms,
    nms_reference,
    remove_small_boxes,
    require_finite,
)
from mnc_teach.config import ClassifierConfig


def random_boxes(
    num: int, seed: int, image_side: float = 100.0, dtype=torch.float32
) -> torch.Tensor:
    """Valid xyxy boxes (positive width and height) inside a square image."""
    gen = torch.Generator().manual_seed(seed)
    top_left = torch.rand(num, 2, generator=gen, dtype=torch.float64) * image_side * 0.8
    size = 1.0 + torch.rand(num, 2, generator=gen, dtype=torch.float64) * image_side * 0.4
    return torch.cat([top_left, top_left + size], dim=1).to(dtype)


# --- area, IoU, conversions -------------------------------------------------------------


def test_box_area_hand_and_torchvision():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.5, 1.0, 2.0, 5.0]])
    assert torch.equal(box_area(boxes), torch.tensor([6.0, 2.0]))
    boxes = random_boxes(50, seed=0)
    torch.testing.assert_close(box_area(boxes), torchvision.ops.box_area(boxes))


def test_box_iou_hand_computed():
    # Two 2x2 squares overlapping in one 1x1 pixel: IoU = 1 / (4 + 4 - 1).
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor(
        [
            [1.0, 1.0, 3.0, 3.0],  # overlap 1 pixel
            [0.0, 0.0, 2.0, 2.0],  # identical
            [2.0, 0.0, 4.0, 2.0],  # shares an edge only
            [10.0, 10.0, 11.0, 11.0],  # far away
            [0.0, 0.0, 1.0, 2.0],  # left half of a
        ]
    )
    expected = torch.tensor([[1 / 7, 1.0, 0.0, 0.0, 0.5]])
    torch.testing.assert_close(box_iou(a, b), expected)
    torch.testing.assert_close(box_iou(b, a), expected.T)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_iou_matches_torchvision(seed):
    boxes1, boxes2 = random_boxes(30, seed), random_boxes(40, seed + 100)
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (30, 40)
    assert (iou > 0).any() and (iou == 0).any()  # the test data has overlaps and misses
    torch.testing.assert_close(iou, torchvision.ops.box_iou(boxes1, boxes2))


def test_box_iou_empty_and_degenerate():
    boxes = random_boxes(5, seed=3)
    assert box_iou(boxes[:0], boxes).shape == (0, 5)
    assert box_iou(boxes, boxes[:0]).shape == (5, 0)
    point = torch.tensor([[4.0, 4.0, 4.0, 4.0]])  # zero area: IoU 0 with itself, not NaN
    assert torch.equal(box_iou(point, point), torch.zeros(1, 1))


def test_box_conversions_match_torchvision_and_invert():
    boxes = random_boxes(20, seed=4)
    cxcywh = box_xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(cxcywh, torchvision.ops.box_convert(boxes, "xyxy", "cxcywh"))
    torch.testing.assert_close(
        box_cxcywh_to_xyxy(cxcywh), torchvision.ops.box_convert(cxcywh, "cxcywh", "xyxy")
    )
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), boxes)
    assert torch.equal(
        box_xyxy_to_cxcywh(torch.tensor([0.0, 2.0, 4.0, 8.0])), torch.tensor([2.0, 5.0, 4.0, 6.0])
    )


def test_masks_to_boxes_continuous_convention():
    masks = torch.zeros(2, 6, 7, dtype=torch.uint8)
    masks[0, 1:3, 2:5] = 1  # rows 1-2, cols 2-4
    masks[1, 5, 6] = 1  # a single pixel in the corner
    boxes = masks_to_boxes(masks)
    assert torch.equal(boxes, torch.tensor([[2.0, 1.0, 5.0, 3.0], [6.0, 5.0, 7.0, 6.0]]))
    torch.testing.assert_close(
        boxes, torchvision.ops.masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    )
    with pytest.raises(ValueError, match="empty mask"):
        masks_to_boxes(torch.zeros(1, 3, 3, dtype=torch.uint8))


# --- encode / decode ----------------------------------------------------------------------


@pytest.mark.parametrize("weights", [RPN_BOX_WEIGHTS, ClassifierConfig.box_weights])
def test_encode_matches_torchvision_box_coder(weights):
    gt_boxes, ref_boxes = random_boxes(64, seed=5), random_boxes(64, seed=6)
    deltas = encode_boxes(gt_boxes, ref_boxes, weights=weights)
    # torchvision calls the ground truth "reference_boxes" and the anchors "proposals".
    expected = BoxCoder(weights).encode_single(gt_boxes, ref_boxes)
    torch.testing.assert_close(deltas, expected)


def test_encode_hand_computed():
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    gt = torch.tensor([[5.0, 0.0, 25.0, 20.0]])  # centre (15, 10), size 20 x 20
    expected = torch.tensor([[1.0, 0.0, torch.log(torch.tensor(2.0)), 0.0]])
    torch.testing.assert_close(encode_boxes(gt, ref), expected)
    torch.testing.assert_close(
        encode_boxes(gt, ref, weights=ClassifierConfig.box_weights),
        expected * torch.tensor([10.0, 10.0, 5.0, 5.0]),
    )


def test_encode_equals_caffe_inclusive_formula():
    """The Caffe code's "+1" widths on inclusive corners give the same deltas as ours on
    the same boxes written with continuous corners (x2 + 1)."""
    gt_incl = torch.tensor([[3.0, 4.0, 20.0, 11.0], [0.0, 0.0, 0.0, 5.0]], dtype=torch.float64)
    ref_incl = torch.tensor([[1.0, 2.0, 16.0, 17.0], [-2.0, 1.0, 7.0, 3.0]], dtype=torch.float64)

    # The formula of bbox_transform in MNC/lib/transform/bbox_transform.py.
    def caffe_bbox_transform(ex, gt):
        ex_w, ex_h = ex[:, 2] - ex[:, 0] + 1, ex[:, 3] - ex[:, 1] + 1
        gt_w, gt_h = gt[:, 2] - gt[:, 0] + 1, gt[:, 3] - gt[:, 1] + 1
        ex_x, ex_y = ex[:, 0] + 0.5 * ex_w, ex[:, 1] + 0.5 * ex_h
        gt_x, gt_y = gt[:, 0] + 0.5 * gt_w, gt[:, 1] + 0.5 * gt_h
        return torch.stack(
            [(gt_x - ex_x) / ex_w, (gt_y - ex_y) / ex_h, (gt_w / ex_w).log(), (gt_h / ex_h).log()],
            1,
        )

    to_continuous = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    ours = encode_boxes(gt_incl + to_continuous, ref_incl + to_continuous)
    torch.testing.assert_close(ours, caffe_bbox_transform(ref_incl, gt_incl))


@pytest.mark.parametrize("weights", [RPN_BOX_WEIGHTS, ClassifierConfig.box_weights])
def test_decode_inverts_encode(weights):
    gt_boxes, ref_boxes = random_boxes(64, seed=7), random_boxes(64, seed=8)
    deltas = encode_boxes(gt_boxes, ref_boxes, weights=weights)
    decoded = decode_boxes(deltas, ref_boxes, weights=weights)
    torch.testing.assert_close(decoded, gt_boxes, rtol=1e-5, atol=1e-4)
    assert torch.allclose(encode_boxes(ref_boxes, ref_boxes, weights=weights), torch.zeros(64, 4))


@pytest.mark.parametrize("weights", [RPN_BOX_WEIGHTS, ClassifierConfig.box_weights])
def test_decode_class_specific_matches_torchvision(weights):
    num_classes = 3
    ref_boxes = random_boxes(32, seed=9)
    gen = torch.Generator().manual_seed(10)
    deltas = torch.randn(32, 4 * num_classes, generator=gen)
    deltas[0, 2] = 50.0  # far beyond the clamp: exp() must not overflow
    decoded = decode_boxes(deltas, ref_boxes, weights=weights)
    assert decoded.shape == (32, 4 * num_classes)
    assert torch.isfinite(decoded).all()
    expected = BoxCoder(weights, bbox_xform_clip=MAX_LOG_SCALE).decode_single(deltas, ref_boxes)
    torch.testing.assert_close(decoded, expected)
    # Each class group c decodes like a single-class call on deltas[:, 4c:4c+4].
    for c in range(num_classes):
        torch.testing.assert_close(
            decoded[:, 4 * c : 4 * c + 4],
            decode_boxes(deltas[:, 4 * c : 4 * c + 4], ref_boxes, weights=weights),
        )


def test_decode_clamps_log_scale():
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    decoded = decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 1.0]]), ref, max_log_scale=1.0)
    width, height = decoded[0, 2] - decoded[0, 0], decoded[0, 3] - decoded[0, 1]
    torch.testing.assert_close(width, 16.0 * torch.exp(torch.tensor(1.0)))  # clamped
    torch.testing.assert_close(height, 16.0 * torch.exp(torch.tensor(1.0)))  # exactly at the limit


def test_decode_empty_and_bad_shapes():
    assert decode_boxes(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)
    assert encode_boxes(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match="deltas"):
        decode_boxes(torch.zeros(3, 6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same shape"):
        encode_boxes(torch.zeros(3, 4), torch.zeros(2, 4))


def test_decode_is_differentiable_in_deltas_and_boxes():
    ref_boxes = random_boxes(4, seed=11, dtype=torch.float64).requires_grad_()
    deltas = (
        0.1 * torch.randn(4, 8, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    ).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda d, r: decode_boxes(d, r, weights=ClassifierConfig.box_weights), (deltas, ref_boxes)
    )


# --- clip, small boxes --------------------------------------------------------------------


def test_clip_boxes_matches_torchvision():
    boxes = random_boxes(40, seed=13, image_side=200.0) - 50.0  # many stick out on every side
    image_size = (60, 90)  # (height, width)
    clipped = clip_boxes(boxes, image_size)
    torch.testing.assert_close(clipped, torchvision.ops.clip_boxes_to_image(boxes, image_size))
    assert clipped[:, 0::2].min() >= 0 and clipped[:, 0::2].max() <= 90
    assert clipped[:, 1::2].min() >= 0 and clipped[:, 1::2].max() <= 60
    assert torch.equal(
        clip_boxes(torch.tensor([-3.0, 5.0, 95.0, 70.0]), image_size),
        torch.tensor([0.0, 5.0, 90.0, 60.0]),
    )


def test_clip_boxes_class_specific_layout():
    boxes = (random_boxes(10, seed=14, image_side=200.0) - 50.0).repeat(1, 3)  # (10, 4*3)
    boxes = boxes + torch.arange(12.0)  # make the three groups differ
    clipped = clip_boxes(boxes, (60, 90))
    expected = torchvision.ops.clip_boxes_to_image(boxes.reshape(10, 3, 4), (60, 90)).reshape(
        10, 12
    )
    torch.testing.assert_close(clipped, expected)


def test_remove_small_boxes_matches_torchvision():
    boxes = random_boxes(100, seed=15)
    for min_size in (0.0, 5.0, 16.0, 40.0):
        assert torch.equal(
            remove_small_boxes(boxes, min_size), torchvision.ops.remove_small_boxes(boxes, min_size)
        )
    # A side exactly min_size is kept; one a hair shorter is dropped.
    edge = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 15.9, 30.0], [0.0, 0.0, 30.0, 15.9]])
    assert remove_small_boxes(edge, 16.0).tolist() == [0]


# --- NMS ----------------------------------------------------------------------------------


def random_scored_boxes(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A small image so that many boxes overlap and NMS has work to do.
    boxes = random_boxes(num, seed, image_side=50.0)
    scores = torch.rand(num, generator=torch.Generator().manual_seed(seed + 1000))
    return boxes, scores


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_reference_equals_torchvision(seed, iou_threshold):
    boxes, scores = random_scored_boxes(120, seed)
    expected = torchvision.ops.nms(boxes, scores, iou_threshold)
    assert 0 < expected.numel() < 120  # something was suppressed
    assert torch.equal(nms_reference(boxes, scores, iou_threshold), expected)
    assert torch.equal(nms(boxes, scores, iou_threshold), expected)


def test_nms_hand_computed():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.5, 0.9, 0.1])  # IoU(0, 1) = 9/11
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms_reference(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms_reference(boxes, scores, 0.9).tolist() == [1, 0, 2]  # 9/11 < 0.9: nothing suppressed


def test_nms_empty():
    empty_boxes, empty_scores = torch.zeros(0, 4), torch.zeros(0)
    assert nms(empty_boxes, empty_scores, 0.5).shape == (0,)
    result = nms_reference(empty_boxes, empty_scores, 0.5)
    assert result.shape == (0,) and result.dtype == torch.int64


def test_batched_nms_is_nms_per_label():
    boxes, scores = random_scored_boxes(150, seed=16)
    labels = torch.randint(0, 4, (150,), generator=torch.Generator().manual_seed(17))
    keep = batched_nms(boxes, scores, labels, iou_threshold=0.5)
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, labels, 0.5))
    kept_per_label = []
    for label in labels.unique():
        idx = torch.nonzero(labels == label).flatten()
        kept_per_label.append(idx[nms_reference(boxes[idx], scores[idx], 0.5)])
    expected = torch.cat(kept_per_label)
    expected = expected[scores[expected].argsort(descending=True)]  # merge by decreasing score
    assert torch.equal(keep, expected)
    assert keep.numel() > nms(boxes, scores, 0.5).numel()  # labels protect boxes from each other


def test_require_finite_passes_finite_boxes_and_names_non_finite_ones():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0]])
    assert require_finite(boxes, where="here") is boxes
    assert require_finite(boxes[:0], where="here").shape == (0, 4)
    boxes[1, 3] = float("inf")
    with pytest.raises(FloatingPointError, match="here: 1 of 2 boxes are not finite"):
        require_finite(boxes, where="here")
