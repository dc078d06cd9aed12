"""viz.boxes: IoU, box coding, anchors and NMS drawn exactly as given (counts, positions, text)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torchvision

from mnc_teach.viz.boxes import (
    GID_BEST_ANCHOR,
    GID_INTERSECTION,
    draw_anchors,
    draw_best_anchor_rule,
    draw_box_coding,
    draw_boxes_and_iou,
    draw_nms,
)
from mnc_teach.viz.common import GID_BOX, GID_GT, count_artists, find_artists


def corners(collection) -> np.ndarray:
    return np.array([path.get_extents().get_points().ravel() for path in collection.get_paths()])


def test_draw_anchors_counts_kinds_and_subsamples():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=generator) * 100
    anchors = torch.cat([xy, xy + 10], dim=1)
    labels = torch.full((500,), -1, dtype=torch.int64)
    labels[:7] = 1
    labels[7:407] = 0  # 400 negatives, more than max_per_kind
    fig = draw_anchors(torch.rand(3, 120, 120), anchors, labels, gt_boxes=anchors[:2],
                       max_per_kind=50)
    assert count_artists(fig, "anchors-positive") == 7
    assert count_artists(fig, "anchors-negative") == 50
    assert count_artists(fig, "anchors-ignored") == 50
    assert count_artists(fig, GID_GT) == 2
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "positive: 7" in legend and "negative: 400 (50 drawn)" in legend
    assert "ignored: 93 (50 drawn)" in legend
    # the positives' rectangles are exactly the first 7 anchors
    (positives,) = find_artists(fig, "anchors-positive")
    np.testing.assert_allclose(corners(positives), anchors[:7].numpy(), atol=1e-4)
    # the subset is reproducible
    again = draw_anchors(None, anchors, labels, max_per_kind=50, image_size=(120, 120))
    (negatives_a,) = find_artists(fig, "anchors-negative")
    (negatives_b,) = find_artists(again, "anchors-negative")
    np.testing.assert_array_equal(corners(negatives_a), corners(negatives_b))


def test_draw_anchors_without_labels_draws_all_fitted_to_them():
    anchors = torch.tensor([[-8.0, -8, 8, 8], [-16, -4, 16, 4], [-4, -16, 4, 16]])
    fig = draw_anchors(None, anchors)
    assert count_artists(fig, "anchors-all") == 3
    ax = fig.axes[0]
    # fitted to the anchors plus a 5 % margin (32 px span -> 1.6 px), y growing downwards
    np.testing.assert_allclose([*ax.get_xlim(), *ax.get_ylim()], [-17.6, 17.6, 17.6, -17.6],
                               rtol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["anchors: 3"]


def test_draw_anchors_into_given_axes_keeps_the_legend_inside():
    fig, axes = plt.subplots(1, 2)
    anchors = torch.tensor([[0.0, 0, 8, 8], [4, 4, 12, 12]])
    assert draw_anchors(None, anchors, ax=axes[1], title="two") is fig
    assert axes[1].get_title() == "two" and axes[1].get_legend().get_frame_on()  # framed, inside
    assert count_artists(fig, "anchors-all") == 2 and axes[0].get_legend() is None
    own = draw_anchors(None, anchors)  # its own figure: the legend goes to the right, unframed
    assert not own.axes[0].get_legend().get_frame_on()


@pytest.mark.parametrize(("box_a", "box_b"),
                         [([0, 0, 10, 10], [5, 5, 15, 20]), ([0, 0, 4, 4], [6, 6, 9, 9])])
def test_draw_boxes_and_iou_title_matches_torchvision(box_a, box_b):
    fig = draw_boxes_and_iou(box_a, box_b)
    expected = torchvision.ops.box_iou(torch.tensor([box_a], dtype=torch.float32),
                                       torch.tensor([box_b], dtype=torch.float32))[0, 0].item()
    assert fig.axes[0].get_title().endswith(f"= {expected:.3f}")
    assert count_artists(fig, GID_BOX) == 2
    shaded = find_artists(fig, GID_INTERSECTION)
    if expected > 0:
        (rect,) = shaded
        assert (*rect.get_xy(), rect.get_width(), rect.get_height()) == (5, 5, 5, 5)
    else:
        assert shaded == []


def test_draw_box_coding_shows_both_boxes_and_deltas():
    deltas = torch.tensor([0.5, 0.75, 0.0, 0.405])
    fig = draw_box_coding([0, 0, 10, 10], [5, 5, 15, 20], deltas=deltas)
    assert count_artists(fig, GID_BOX) == 2
    assert fig.axes[0].get_title() == "dx=0.50 dy=0.75 dw=0.00 dh=0.41"
    (arrow,) = [t for t in fig.axes[0].texts if hasattr(t, "xyann")]
    assert arrow.xyann == (5.0, 5.0) and arrow.xy == (10.0, 12.5)  # centre to centre


def test_draw_nms_before_and_after():
    generator = torch.Generator().manual_seed(1)
    xy = torch.rand(12, 2, generator=generator) * 40
    boxes = torch.cat([xy, xy + 20], dim=1)
    scores = torch.rand(12, generator=generator)
    keep = torchvision.ops.nms(boxes, scores, 0.3)
    assert 0 < len(keep) < 12
    fig = draw_nms(boxes, scores, keep, iou_threshold=0.3)
    before, after = fig.axes
    assert len([p for p in before.patches if p.get_gid() == GID_BOX]) == 12
    kept_rects = [p for p in after.patches if p.get_gid() == GID_BOX]
    assert len(kept_rects) == len(keep)
    np.testing.assert_allclose([r.get_xy() for r in kept_rects], boxes[keep, :2].numpy(), rtol=1e-6)
    assert [t.get_text() for t in after.texts] == [f"{s:.2f}" for s in scores[keep].tolist()]
    assert after.get_title() == f"after NMS: {len(keep)} kept (IoU threshold 0.3)"


def test_draw_best_anchor_rule_marks_rule_1_positives_and_rescued_best_anchors():
    anchors = torch.tensor([
        [0.0, 0, 16, 16],  # IoU 1 with object 0
        [0, 0, 20, 16],  # IoU 256 / 320 = 0.8 with object 0
        [40, 40, 56, 56],  # IoU 256 / 576 = 0.44 with object 1: its best ...
        [36, 40, 56, 56],  # IoU 256 / 640 = 0.4
        [48, 48, 64, 64],  # ... tied with this one: both are positive by the rule
    ])
    objects = torch.tensor([[0.0, 0, 16, 16], [40, 40, 64, 64], [20, 40, 30, 50]])  # 2: no anchor
    fig = draw_best_anchor_rule(torch.rand(3, 64, 64), anchors, objects)
    (positives,) = find_artists(fig, "anchors-positive")
    np.testing.assert_allclose(corners(positives), anchors[:2].numpy(), atol=1e-4)
    rescued = find_artists(fig, GID_BEST_ANCHOR)
    assert sorted(r.get_xy() for r in rescued) == [(40.0, 40.0), (48.0, 48.0)]
    assert count_artists(fig, GID_GT) == 3
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["object 0", "object 1", "object 2", "IoU 0.44",
                                                "IoU 0.44"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["objects: 3", "IoU ≥ 0.7 (positive): 2"]
    assert legend[2].endswith("(positive by the rule): 1")  # one object rescued, two anchors
    assert ax.get_title().startswith("1 of 3 objects have no anchor at IoU ≥ 0.7")


def test_draw_best_anchor_rule_with_no_anchors_and_into_given_axes():
    fig, axes = plt.subplots(1, 2)
    out = draw_best_anchor_rule(torch.rand(3, 32, 32), torch.zeros(0, 4),
                                torch.tensor([[2.0, 2, 9, 9]]), ax=axes[1], title="none")
    assert out is fig and axes[1].get_title() == "none"
    assert count_artists(fig, "anchors-positive") == 0 and find_artists(fig, GID_BEST_ANCHOR) == []
    assert axes[1].get_legend().get_frame_on()  # inside the given axes
