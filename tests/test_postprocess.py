"""Tests for mnc_teach/postprocess.py: mask pasting against torchvision's paste_masks_in_image,
per-class NMS against torchvision.ops.batched_nms, mask voting against hand-computed
averages, and the voted masks' tight boxes against torchvision.ops.masks_to_boxes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection.roi_heads import paste_masks_in_image

import mnc_teach.postprocess as postprocess_module
from mnc_teach.postprocess import paste_masks, postprocess_detections

# continuous -> inclusive integer corners (torchvision's paste)
INCLUSIVE = torch.tensor([0.0, 0.0, 1.0, 1.0])


# --- paste_masks ------------------------------------------------------------------------------


def test_paste_equals_torchvision_without_padding_for_integer_boxes():
    """torchvision pastes into inclusive integer boxes, resizing with bilinear
    align_corners=False; with ``padding=0`` and the box written inclusively that is exactly our
    resampling.
    (Its default ``padding=1`` adds a zero border to the mask and grows the box by one cell,
    so edges fade out there: a different, not a wrong, convention.)"""
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 7, 7, generator=gen)
    boxes = torch.tensor(
        [
            [3.0, 4.0, 20.0, 15.0],
            [0.0, 0.0, 32.0, 30.0],
            [10.0, 2.0, 13.0, 29.0],
            [25.0, 20.0, 40.0, 36.0],
        ]
    )
    ours = paste_masks(masks, boxes, (0, 0, 32, 30))  # the last box sticks out of the image
    expected = paste_masks_in_image(masks[:, None], boxes - INCLUSIVE, (30, 32), padding=0)[:, 0]
    assert ours.shape == (4, 30, 32)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_paste_constant_mask_fills_pixels_whose_centre_is_in_the_box():
    box = torch.tensor([[3.2, 4.7, 10.5, 12.0]])
    pasted = paste_masks(torch.full((1, 5, 5), 0.7), box, (0, 0, 16, 16))[0]
    centres = torch.arange(16) + 0.5
    inside_x = (centres >= 3.2) & (centres <= 10.5)  # columns 3..9
    inside_y = (centres >= 4.7) & (centres <= 12.0)  # rows 5..11
    expected = 0.7 * (inside_y[:, None] & inside_x[None, :]).float()
    assert torch.allclose(pasted, expected)


def test_paste_box_of_mask_size_reproduces_the_mask():
    mask = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(1))
    pasted = paste_masks(mask, torch.tensor([[5.0, 7.0, 11.0, 13.0]]), (0, 0, 20, 20))[0]
    assert torch.allclose(pasted[7:13, 5:11], mask[0])
    pasted[7:13, 5:11] = 0
    assert pasted.abs().sum() == 0


def test_paste_into_a_region_is_a_crop_of_the_full_image_paste():
    gen = torch.Generator().manual_seed(2)
    masks = torch.rand(3, 5, 5, generator=gen)
    boxes = torch.tensor([[2.5, 3.0, 17.2, 11.9], [8.0, 1.0, 12.0, 20.0], [0.0, 0.0, 4.0, 4.0]])
    full = paste_masks(masks, boxes, (0, 0, 24, 22))
    assert torch.allclose(paste_masks(masks, boxes, (2, 1, 18, 21)), full[:, 1:21, 2:18], atol=1e-6)
    assert paste_masks(masks, boxes, (5, 5, 5, 9)).shape == (3, 4, 0)
    assert paste_masks(masks[:0], boxes[:0], (0, 0, 24, 22)).shape == (0, 22, 24)


# --- postprocess_detections -------------------------------------------------------------------


def random_candidates(seed: int, num: int = 14, num_classes: int = 3, size=(48, 64)):
    """Candidates in clusters (so NMS has work to do), masks and softmax class probabilities."""
    gen = torch.Generator().manual_seed(seed)
    height, width = size
    clusters = torch.tensor([[16.0, 14.0], [40.0, 30.0], [50.0, 12.0]])
    centres = clusters[torch.randint(0, 3, (num,), generator=gen)]
    centres = centres + 3 * torch.randn(num, 2, generator=gen)
    half = 6 + 6 * torch.rand(num, 2, generator=gen)
    boxes = torch.cat([centres - half, centres + half], dim=1).round()
    boxes = torchvision.ops.clip_boxes_to_image(boxes, size)
    masks = torch.rand(num, 7, 7, generator=gen)
    class_probs = torch.softmax(2 * torch.randn(num, num_classes + 1, generator=gen), dim=1)
    return boxes, masks, class_probs


def reference_nms(boxes, class_probs, nms_iou, cap, score_threshold=0.0):
    """(candidate, class, score) of the kept pairs, by torchvision.ops.batched_nms."""
    num, num_fg = class_probs.shape[0], class_probs.shape[1] - 1
    pairs = [
        (q, k)
        for q in range(num)
        for k in range(1, num_fg + 1)
        if class_probs[q, k] >= score_threshold
    ]
    candidate = torch.tensor([q for q, _ in pairs], dtype=torch.int64)
    label = torch.tensor([k for _, k in pairs], dtype=torch.int64)
    score = class_probs[candidate, label]
    keep = torchvision.ops.batched_nms(boxes[candidate], score, label, nms_iou)[:cap]
    return candidate[keep], label[keep], score[keep]


@pytest.mark.parametrize("seed", range(3))
def test_without_voting_equals_batched_nms_and_own_masks(seed):
    boxes, masks, class_probs = random_candidates(seed)
    out = postprocess_detections(
        boxes,
        masks,
        class_probs,
        image_size=(48, 64),
        nms_iou=0.3,
        detections_per_image=100,
        mask_voting=False,
    )
    candidate, label, score = reference_nms(boxes, class_probs, 0.3, 100)
    assert out["labels"].dtype == torch.int64
    assert torch.equal(out["labels"], label) and torch.equal(out["scores"], score)
    assert torch.equal(out["boxes"], boxes[candidate])
    assert out["masks"].shape == (len(candidate), 1, 48, 64)
    own = paste_masks(masks[candidate], boxes[candidate], (0, 0, 64, 48))
    assert torch.allclose(out["masks"][:, 0], own, atol=1e-6)
    suppressed = len(candidate) < class_probs.shape[0] * (class_probs.shape[1] - 1)
    assert suppressed  # the clusters make NMS remove some pairs


def test_detections_per_image_and_score_threshold():
    boxes, masks, class_probs = random_candidates(7, num=20)
    candidates = (boxes, masks, class_probs)
    full = postprocess_detections(*candidates, image_size=(48, 64), detections_per_image=100)
    capped = postprocess_detections(*candidates, image_size=(48, 64), detections_per_image=5)
    assert full["scores"].numel() > 5 and capped["scores"].numel() == 5
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.allclose(capped[key].float(), full[key][:5].float())  # the 5 best
    thresholded = postprocess_detections(
        *candidates, image_size=(48, 64), score_threshold=0.3, mask_voting=False
    )
    _, label, score = reference_nms(boxes, class_probs, 0.3, 100, score_threshold=0.3)
    assert torch.equal(thresholded["labels"], label) and torch.equal(thresholded["scores"], score)
    assert (thresholded["scores"] >= 0.3).all()


def inside(box, height, width):
    """Pixels whose centre is inside the box (H, W), float."""
    x1, y1, x2, y2 = box
    cx, cy = torch.arange(width) + 0.5, torch.arange(height) + 0.5
    return (((cy >= y1) & (cy <= y2))[:, None] & ((cx >= x1) & (cx <= x2))[None, :]).float()


def test_mask_voting_hand_computed():
    """A and B overlap (IoU 0.78), C is alone. Class 1: A suppresses B, and its mask is the
    class-1-score-weighted mean of A's and B's; class 2: B wins, voted with class-2 scores."""
    height, width = 32, 40
    boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0], [6.0, 4.0, 22.0, 20.0], [28.0, 10.0, 38.0, 30.0]])
    masks = torch.stack([torch.full((4, 4), 0.3), torch.full((4, 4), 0.9), torch.full((4, 4), 0.6)])
    class_probs = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.35, 0.6, 0.05]])
    out = postprocess_detections(
        boxes,
        masks,
        class_probs,
        image_size=(height, width),
        nms_iou=0.3,
        vote_iou=0.5,
        mask_threshold=0.4,
    )
    assert out["labels"].tolist() == [1, 1, 2, 2]  # A-1 (0.8), C-1 (0.6), B-2 (0.5), C-2 (0.05)
    assert torch.allclose(out["scores"], torch.tensor([0.8, 0.6, 0.5, 0.05]))
    in_a, in_b, in_c = (inside(b, height, width) for b in boxes.tolist())

    # voters A, B with their class-1 scores, then with their class-2 scores
    a1 = (0.8 * 0.3 * in_a + 0.3 * 0.9 * in_b) / (0.8 + 0.3)
    b2 = (0.1 * 0.3 * in_a + 0.5 * 0.9 * in_b) / (0.1 + 0.5)
    expected_masks = [a1, 0.6 * in_c, b2, 0.6 * in_c]  # C votes alone: its own mask
    for d, expected in enumerate(expected_masks):
        assert torch.allclose(out["masks"][d, 0], expected, atol=1e-6), d

    # boxes: tight boxes of the voted masks >= 0.4
    # a1 is 0.218 on A-only columns 4-5, 0.464 on A and B (6..19), 0.245 on B-only 20-21
    assert out["boxes"][0].tolist() == [6.0, 4.0, 20.0, 20.0]
    assert out["boxes"][1].tolist() == boxes[2].tolist()  # C's pasted box: 0.6 everywhere inside
    # b2 is 0.05 on A-only, 0.8 on A and B, 0.75 on B-only columns: B's box exactly
    assert out["boxes"][2].tolist() == [6.0, 4.0, 22.0, 20.0]


def test_mask_voting_weighted_average_of_pasted_masks():
    """Random masks: each voted mask is the score-weighted mean of the voters' pasted masks
    (torchvision's paste as reference), voters = candidates with box IoU >= 0.5."""
    boxes, masks, class_probs = random_candidates(3, num=10)
    out = postprocess_detections(boxes, masks, class_probs, image_size=(48, 64), vote_iou=0.5)
    candidate, label, _ = reference_nms(boxes, class_probs, 0.3, 100)
    pasted = paste_masks_in_image(masks[:, None], boxes - INCLUSIVE, (48, 64), padding=0)
    pasted = pasted[:, 0]  # (Q, 1, H, W) -> (Q, H, W)
    iou = torchvision.ops.box_iou(boxes[candidate], boxes)
    num_voted = 0
    for d in range(len(candidate)):
        weights = class_probs[:, label[d]] * (iou[d] >= 0.5)
        expected = (weights[:, None, None] * pasted).sum(0) / weights.sum()
        assert torch.allclose(out["masks"][d, 0], expected, atol=1e-5)
        num_voted += int((iou[d] >= 0.5).sum() > 1)
        binary = expected >= 0.4
        if binary.any():
            tight_box = torchvision.ops.masks_to_boxes(binary[None])[0] + INCLUSIVE
            assert torch.equal(out["boxes"][d], tight_box)
    assert num_voted > 0


def test_zero_area_candidate_votes_for_itself():
    """A stage-5 box pushed out of the image is clipped to zero width; it must not crash voting."""
    boxes = torch.tensor([[40.0, 5.0, 40.0, 20.0], [2.0, 2.0, 10.0, 10.0]])
    masks = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    class_probs = torch.tensor([[0.1, 0.9], [0.5, 0.5]])
    out = postprocess_detections(boxes, masks, class_probs, image_size=(32, 40))
    assert out["scores"].tolist() == pytest.approx([0.9, 0.5])
    # nothing to paste
    assert torch.equal(out["boxes"][0], boxes[0]) and out["masks"][0].sum() == 0
    own = paste_masks(masks[1:], boxes[1:], (0, 0, 40, 32))[0]
    assert torch.allclose(out["masks"][1, 0], own, atol=1e-6)


def test_no_candidates_gives_empty_outputs():
    out = postprocess_detections(
        torch.zeros(0, 4), torch.zeros(0, 7, 7), torch.zeros(0, 4), image_size=(30, 40)
    )
    assert out["boxes"].shape == (0, 4)
    assert out["labels"].shape == (0,) and out["scores"].shape == (0,)
    assert out["masks"].shape == (0, 1, 30, 40)
    assert out["labels"].dtype == torch.int64


@pytest.mark.parametrize("voting", [True, False])
def test_large_image_path_equals_small_image_path(voting, monkeypatch):
    """Above MAX_PASTED_ELEMENTS the masks are pasted one detection at a time, over the voters'
    region; the result must not depend on which path ran."""
    candidates = random_candidates(5)
    small = postprocess_detections(*candidates, image_size=(48, 64), mask_voting=voting)
    monkeypatch.setattr(postprocess_module, "MAX_PASTED_ELEMENTS", 0)
    large = postprocess_detections(*candidates, image_size=(48, 64), mask_voting=voting)
    assert large["masks"].shape[0] > 0
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.allclose(small[key].float(), large[key].float(), atol=1e-5), key


def test_tight_boxes_of_voted_masks_equal_torchvision_and_keep_the_box_of_an_empty_one():
    gen = torch.Generator().manual_seed(3)
    masks = torch.rand(4, 20, 30, generator=gen) * 0.5  # a fifth of the pixels >= 0.4
    masks[2] = 0.1  # nothing >= 0.4: keeps its candidate box
    fallback = torch.arange(16, dtype=torch.float32).view(4, 4)
    boxes = postprocess_module._tight_boxes(masks, 0.4, fallback=fallback)
    binary = masks >= 0.4
    for d in (0, 1, 3):
        expected = torchvision.ops.masks_to_boxes(binary[d][None])[0] + INCLUSIVE
        assert torch.equal(boxes[d], expected)
    assert torch.equal(boxes[2], fallback[2])
