"""Tests for mnc_teach/matching.py: against torchvision's Matcher and
BalancedPositiveNegativeSampler, plus hand-built anchor-labelling cases."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher

from mnc_teach.anchors import anchors_inside_image, generate_base_anchors, grid_anchors
from mnc_teach.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    IGNORE,
    NEGATIVE,
    POSITIVE,
    label_anchors,
    match_boxes,
    match_rois,
    sample_pos_neg,
    sample_rois,
)

# --- match_boxes --------------------------------------------------------------------------


RPN_THRESHOLDS = {"high_threshold": 0.7, "low_threshold": 0.3}
WITH_LOW_QUALITY = {**RPN_THRESHOLDS, "allow_low_quality_matches": True}
SMALL_BATCH = {"batch_size": 64, "positive_fraction": 0.25}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_iou(num_gt: int, num_boxes: int, seed: int, quantised: bool) -> torch.Tensor:
    """A random IoU-like matrix whose every row has a positive maximum."""
    gen = torch.Generator().manual_seed(seed)
    iou = torch.rand(num_gt, num_boxes, generator=gen)
    if quantised:  # values in {0, 0.1, ..., 1.0}: many ties and many zeros
        iou = (iou * 10).floor() / 10
        iou[:, 0] = iou[:, 0].clamp(min=0.1)
    return iou


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_match_boxes_equals_torchvision_matcher(seed, quantised, allow_low_quality):
    iou = random_iou(5, 200, seed, quantised)
    for high, low in [(0.7, 0.3), (0.5, 0.5), (0.9, 0.1)]:
        expected = Matcher(high, low, allow_low_quality)(iou)
        matches = match_boxes(
            iou, high_threshold=high, low_threshold=low, allow_low_quality_matches=allow_low_quality
        )
        assert matches.dtype == torch.int64
        assert torch.equal(matches, expected)


def test_match_boxes_hand_computed():
    iou = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.2, 0.0],
            [0.8, 0.6, 0.0, 0.1, 0.2],
        ]
    )
    assert match_boxes(iou, **RPN_THRESHOLDS).tolist() == [
        0,
        BETWEEN_THRESHOLDS,
        BELOW_LOW_THRESHOLD,
        BELOW_LOW_THRESHOLD,
        BELOW_LOW_THRESHOLD,
    ]
    # Both ground truths have their best box at column 0 (0.9 and 0.8): nothing new.
    assert (
        match_boxes(iou, **WITH_LOW_QUALITY).tolist()
        == match_boxes(iou, **RPN_THRESHOLDS).tolist()
    )
    low_fit = torch.tensor([[0.2, 0.25, 0.25, 0.0]])  # the object's best boxes are poor, and tied
    assert match_boxes(low_fit, **WITH_LOW_QUALITY).tolist() == [-1, 0, 0, -1]


def test_low_quality_rule_skips_ground_truth_no_box_touches():
    iou = torch.tensor(
        [
            [0.8, 0.0, 0.0, 0.1],  # ground truth 0: well covered
            [0.0, 0.0, 0.0, 0.0],  # ground truth 1: no box overlaps it at all
        ]
    )
    ours = match_boxes(iou, **WITH_LOW_QUALITY)
    assert ours.tolist() == [0, BELOW_LOW_THRESHOLD, BELOW_LOW_THRESHOLD, BELOW_LOW_THRESHOLD]
    # torchvision matches every zero-IoU box instead (each to its argmax, ground truth 0 here).
    theirs = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert theirs.tolist() == [0, 0, 0, 0]
    # When every ground truth is touched, the two agree again.
    touched = iou.clone()
    touched[1, 2] = 0.05
    theirs = Matcher(0.7, 0.3, allow_low_quality_matches=True)(touched)
    assert torch.equal(match_boxes(touched, **WITH_LOW_QUALITY), theirs)


def test_match_boxes_empty_inputs():
    no_gt = match_boxes(torch.zeros(0, 7), **WITH_LOW_QUALITY)
    assert no_gt.dtype == torch.int64 and no_gt.tolist() == [BELOW_LOW_THRESHOLD] * 7
    no_boxes = match_boxes(torch.zeros(3, 0), **WITH_LOW_QUALITY)
    assert no_boxes.shape == (0,) and no_boxes.dtype == torch.int64
    with pytest.raises(ValueError, match="low_threshold"):
        match_boxes(torch.zeros(1, 1), high_threshold=0.3, low_threshold=0.7)


# --- label_anchors ------------------------------------------------------------------------


def test_label_anchors_hand_computed():
    image_size = (100, 100)
    gt_boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 70.0, 70.0]])
    anchors = torch.tensor(
        [
            [10.0, 10.0, 50.0, 50.0],  # 0: IoU 1 with gt 0 -> positive
            [10.0, 10.0, 50.0, 40.0],  # 1: IoU 0.75 with gt 0 -> positive
            [10.0, 10.0, 50.0, 30.0],  # 2: IoU 0.5 -> ignored
            [80.0, 0.0, 100.0, 20.0],  # 3: touches nothing -> negative
            [55.0, 55.0, 75.0, 75.0],  # 4: IoU 0.25 with gt 1, its best inside anchor -> positive
            [58.0, 58.0, 102.0, 80.0],  # 5: IoU ~0.1 with gt 1 but outside the image -> ignored
            [-5.0, -5.0, 50.0, 50.0],  # 6: IoU 0.53 with gt 0 but outside -> ignored
        ]
    )
    labels, matched_gt = label_anchors(anchors, gt_boxes, image_size)
    assert labels.tolist() == [POSITIVE, POSITIVE, IGNORE, NEGATIVE, POSITIVE, IGNORE, IGNORE]
    assert matched_gt.tolist() == [0, 0, 0, 0, 1, 0, 0]
    assert labels.dtype == torch.int64 and matched_gt.dtype == torch.int64
    # With a generous border, anchor 6 comes inside: it is no longer ignored, but 0.53 is
    # neither >= 0.7 nor < 0.3.
    labels, _ = label_anchors(anchors, gt_boxes, image_size, allowed_border=10.0)
    assert labels[6] == IGNORE and labels[5] == NEGATIVE


def test_label_anchors_without_ground_truth():
    anchors = grid_anchors(generate_base_anchors(scales=(2, 4)), (6, 6), stride=16)
    inside = anchors_inside_image(anchors, (96, 96))
    labels, matched_gt = label_anchors(anchors, torch.zeros(0, 4), (96, 96))
    assert torch.equal(labels, torch.where(inside, NEGATIVE, IGNORE))
    assert inside.any() and (~inside).any()
    assert torch.equal(matched_gt, torch.zeros_like(matched_gt))
    empty_labels, empty_matched = label_anchors(torch.zeros(0, 4), torch.zeros(2, 4), (96, 96))
    assert empty_labels.shape == (0,) and empty_matched.shape == (0,)


def test_label_anchors_ground_truth_no_inside_anchor_touches():
    # Only one inside anchor; the second object sits where no inside anchor reaches.
    anchors = torch.tensor(
        [[0.0, 0.0, 20.0, 20.0], [0.0, 30.0, 20.0, 50.0], [40.0, 40.0, 70.0, 70.0]]
    )
    gt_boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [50.0, 50.0, 60.0, 60.0]])
    labels, _ = label_anchors(anchors, gt_boxes, image_size=(64, 64))
    assert labels.tolist() == [POSITIVE, NEGATIVE, IGNORE]
    # torchvision's (and the Caffe code's) tie rule would mark anchor 1 positive: IoU 0 with gt 1.
    torchvision_matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(
        torchvision.ops.box_iou(gt_boxes, anchors[:2])
    )
    assert torchvision_matches.tolist() == [0, 0]


@pytest.mark.parametrize("seed", range(3))
def test_label_anchors_equals_torchvision_matcher_on_inside_anchors(seed):
    image_size = (160, 224)
    gen = torch.Generator().manual_seed(seed)
    anchors = grid_anchors(generate_base_anchors(scales=(2, 4, 8)), (10, 14), stride=16)
    top_left = torch.rand(4, 2, generator=gen) * torch.tensor([150.0, 100.0])
    gt_boxes = torch.cat([top_left, top_left + 20 + torch.rand(4, 2, generator=gen) * 60], dim=1)

    labels, matched_gt = label_anchors(anchors, gt_boxes, image_size)

    inside = anchors_inside_image(anchors, image_size)
    iou = torchvision.ops.box_iou(gt_boxes, anchors[inside])
    # Every object is touched by some inside anchor, so torchvision's rule applies as is.
    assert (iou.max(dim=1).values > 0).all()
    expected_matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    expected_labels = torch.full((anchors.shape[0],), IGNORE)
    expected_labels[inside] = torch.where(
        expected_matches >= 0,
        POSITIVE,
        torch.where(expected_matches == BELOW_LOW_THRESHOLD, NEGATIVE, IGNORE),
    )
    assert torch.equal(labels, expected_labels)
    positive = labels == POSITIVE
    iou_positive = torchvision.ops.box_iou(gt_boxes, anchors[positive])  # (G, P)
    assert (iou_positive.max(dim=0).values < 0.7).any()  # the best-anchor rule is exercised
    assert torch.equal(matched_gt[positive], iou_positive.argmax(dim=0))
    assert (matched_gt[~positive] == 0).all()


# --- sample_pos_neg -----------------------------------------------------------------------


def make_labels(num_pos: int, num_neg: int, num_ignore: int, seed: int = 0) -> torch.Tensor:
    labels = torch.tensor([POSITIVE] * num_pos + [NEGATIVE] * num_neg + [IGNORE] * num_ignore)
    return labels[torch.randperm(labels.numel(), generator=seeded(seed))]


@pytest.mark.parametrize(
    "counts, expected",
    [
        ((500, 5000, 300), (128, 128)),  # plenty of both: the 50% cap holds
        ((20, 5000, 300), (20, 236)),  # few positives: negatives fill the batch
        ((20, 40, 300), (20, 40)),  # few of both: a smaller batch
        ((0, 0, 10), (0, 0)),  # nothing to sample
    ],
)
def test_sample_pos_neg_matches_torchvision(counts, expected):
    labels = make_labels(*counts)
    torch.manual_seed(123)
    pos_idx, neg_idx = sample_pos_neg(labels, batch_size=256, positive_fraction=0.5)
    assert (pos_idx.numel(), neg_idx.numel()) == expected
    assert (labels[pos_idx] == POSITIVE).all() and (labels[neg_idx] == NEGATIVE).all()
    assert (
        pos_idx.unique().numel() == pos_idx.numel() and neg_idx.unique().numel() == neg_idx.numel()
    )
    # With the global RNG in the same state, torchvision draws the very same elements.
    torch.manual_seed(123)
    pos_mask, neg_mask = BalancedPositiveNegativeSampler(256, 0.5)([labels])
    assert torch.equal(pos_idx, torch.nonzero(pos_mask[0]).flatten())
    assert torch.equal(neg_idx, torch.nonzero(neg_mask[0]).flatten())


def test_sample_pos_neg_generator_is_reproducible():
    labels = make_labels(300, 3000, 100, seed=1)
    first = sample_pos_neg(labels, **SMALL_BATCH, generator=seeded(7))
    again = sample_pos_neg(labels, **SMALL_BATCH, generator=seeded(7))
    other = sample_pos_neg(labels, **SMALL_BATCH, generator=seeded(8))
    assert (first[0].numel(), first[1].numel()) == (16, 48)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not (torch.equal(first[0], other[0]) and torch.equal(first[1], other[1]))


# --- match_rois / sample_rois (stages 2-3) ----------------------------------------------------

ROI_GT_BOXES = torch.tensor(
    [[10.0, 10.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0], [20.0, 60.0, 70.0, 95.0]]
)
ROI_GT_LABELS = torch.tensor([3, 1, 2])


def random_proposals(num: int, seed: int) -> torch.Tensor:
    """Boxes scattered around the ground truth and the whole 100 x 100 image (all IoU ranges)."""
    gen = torch.Generator().manual_seed(seed)
    picked = ROI_GT_BOXES[torch.randint(0, 3, (num // 2,), generator=gen)]
    near = picked + 8 * torch.randn(num // 2, 4, generator=gen)
    corner = 100 * torch.rand(num - num // 2, 2, generator=gen)
    size = 5 + 30 * torch.rand(num - num // 2, 2, generator=gen)
    anywhere = torch.cat([corner, corner + size], dim=1)
    boxes = torch.cat([near, anywhere])
    # x1 < x2, y1 < y2
    return torch.cat([boxes[:, :2].minimum(boxes[:, 2:] - 2), boxes[:, 2:]], dim=1)


def test_match_rois_equals_brute_force():
    boxes = random_proposals(80, seed=0)
    sample = match_rois(boxes, ROI_GT_BOXES, ROI_GT_LABELS, fg_iou=0.5)
    iou = torchvision.ops.box_iou(ROI_GT_BOXES, boxes)  # (G, R)
    assert torch.allclose(sample.iou, iou.max(dim=0).values)
    assert torch.equal(sample.matched_gt, iou.argmax(dim=0))
    best_iou, best_gt = iou.max(dim=0)
    expected_labels = [
        ROI_GT_LABELS[g].item() if v >= 0.5 else 0 for v, g in zip(best_iou, best_gt, strict=True)
    ]
    assert sample.labels.tolist() == expected_labels
    assert 0 < sum(v > 0 for v in expected_labels) < 80
    assert sample.boxes is boxes

    no_gt = match_rois(boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), fg_iou=0.5)
    assert no_gt.labels.tolist() == [0] * 80 and no_gt.matched_gt.tolist() == [0] * 80
    assert no_gt.iou.tolist() == [0.0] * 80


def expected_counts(iou, labels, batch_size, fg_fraction, fg_iou, bg_low, hard_fraction):
    """The per-pool counts of proposal_target_layer's sampling, from the pool sizes."""
    num_fg = int((labels > 0).sum())
    num_hard = int(((labels == 0) & (iou >= bg_low)).sum())
    num_easy = int(((labels == 0) & (iou < bg_low)).sum())
    fg = min(num_fg, int(batch_size * fg_fraction))
    num_bg = batch_size - fg
    hard = min(num_hard, max(round(num_bg * hard_fraction), num_bg - num_easy))
    return fg, hard, min(num_easy, num_bg - hard)


@pytest.mark.parametrize("num_proposals, seed", [(300, 0), (300, 1), (40, 2), (12, 3)])
def test_sample_rois_pools_counts_and_order(num_proposals, seed):
    proposals = random_proposals(num_proposals, seed)
    sample = sample_rois(proposals, ROI_GT_BOXES, ROI_GT_LABELS, generator=seeded(seed))
    all_boxes = torch.cat([proposals, ROI_GT_BOXES])
    candidates = match_rois(all_boxes, ROI_GT_BOXES, ROI_GT_LABELS, fg_iou=0.5)
    fg, hard, easy = expected_counts(candidates.iou, candidates.labels, 64, 0.3, 0.5, 0.1, 0.85)
    assert sample.boxes.shape[0] == fg + hard + easy <= 64
    # foreground first, then hard background [0.1, 0.5), then easy background [0, 0.1)
    assert (sample.labels[:fg] > 0).all() and (sample.iou[:fg] >= 0.5).all()
    assert (sample.labels[fg:] == 0).all()
    assert ((sample.iou[fg : fg + hard] >= 0.1) & (sample.iou[fg : fg + hard] < 0.5)).all()
    assert (sample.iou[fg + hard :] < 0.1).all()
    # without replacement
    assert torch.unique(sample.boxes, dim=0).shape[0] == sample.boxes.shape[0]
    # every RoI carries its own match
    rematched = match_rois(sample.boxes, ROI_GT_BOXES, ROI_GT_LABELS, fg_iou=0.5)
    assert torch.equal(rematched.matched_gt, sample.matched_gt)
    assert torch.equal(rematched.labels, sample.labels)
    if num_proposals == 300:
        assert (fg, hard + easy) == (19, 45) and hard == round(45 * 0.85)


def test_sample_rois_appends_ground_truth_and_passes_gradients_to_proposals():
    only_gt = sample_rois(torch.zeros(0, 4), ROI_GT_BOXES, ROI_GT_LABELS)
    assert sorted(only_gt.labels.tolist()) == [1, 2, 3] and (only_gt.iou == 1).all()
    without_gt = sample_rois(torch.zeros(0, 4), ROI_GT_BOXES, ROI_GT_LABELS, append_gt_boxes=False)
    assert without_gt.boxes.shape == (0, 4)

    proposals = random_proposals(100, seed=4).requires_grad_(True)
    sample = sample_rois(proposals, ROI_GT_BOXES, ROI_GT_LABELS, generator=seeded(0))
    sample.boxes.sum().backward()
    rows = proposals.grad.sum(dim=1)  # 4 for each sampled proposal, 0 otherwise
    assert set(rows.tolist()) <= {0.0, 4.0}
    from_proposals = sum(
        any(torch.equal(b, p) for p in proposals.detach()) for b in sample.boxes.detach()
    )
    assert int((rows == 4).sum()) == from_proposals > 0


def test_sample_rois_without_ground_truth_and_reproducibility():
    proposals = random_proposals(100, seed=5)
    no_gt = sample_rois(
        proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), generator=seeded(0)
    )
    assert no_gt.boxes.shape[0] == 64 and (no_gt.labels == 0).all()
    first = sample_rois(proposals, ROI_GT_BOXES, ROI_GT_LABELS, generator=seeded(1))
    again = sample_rois(proposals, ROI_GT_BOXES, ROI_GT_LABELS, generator=seeded(1))
    other = sample_rois(proposals, ROI_GT_BOXES, ROI_GT_LABELS, generator=seeded(2))
    assert torch.equal(first.boxes, again.boxes)
    assert not torch.equal(first.boxes, other.boxes)
