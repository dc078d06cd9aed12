"""viz.proposals: proposals drawn best on top, recall curves with the given points, and the
proposal viewer's picture of both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnc_teach.viz.common import GID_GT, count_artists, find_artists
from mnc_teach.viz.proposals import (
    GID_PROPOSAL,
    GID_RECALL,
    draw_proposal_view,
    draw_proposals,
    draw_recall_curve,
)


def xyxy(rect) -> tuple[float, ...]:
    return (rect.get_x(), rect.get_y(), rect.get_x() + rect.get_width(),
            rect.get_y() + rect.get_height())


BOXES = torch.tensor([[0, 0, 10, 10], [5, 5, 30, 20], [40, 40, 60, 70], [1, 2, 3, 4]],
                     dtype=torch.float32)
SCORES = torch.tensor([0.2, 0.9, 0.5, 0.1])


def test_draw_proposals_draws_the_best_boxes_best_on_top_and_the_ground_truth():
    gt = torch.tensor([[4, 4, 31, 21]], dtype=torch.float32)
    fig = draw_proposals(torch.rand(3, 80, 90), BOXES, SCORES, gt_boxes=gt, max_boxes=3)
    assert count_artists(fig, GID_PROPOSAL) == 3
    assert count_artists(fig, GID_GT) == 1
    # drawn worst first so the best ends on top: scores 0.2, 0.5, 0.9 -> boxes 0, 2, 1;
    # box 3 (0.1) left out
    drawn = [xyxy(r) for r in find_artists(fig, GID_PROPOSAL)]
    assert drawn == [tuple(BOXES[i].tolist()) for i in (0, 2, 1)]
    assert fig.axes[0].get_title() == "3 of 4 proposals"


def test_draw_proposals_without_scores_draws_all_in_given_order():
    boxes = BOXES[:2]
    fig = draw_proposals(torch.rand(3, 40, 40), boxes)
    assert count_artists(fig, GID_PROPOSAL) == 2 and count_artists(fig, GID_GT) == 0
    assert [r.get_x() for r in find_artists(fig, GID_PROPOSAL)] == [0, 5]
    fig = draw_proposals(torch.rand(3, 40, 40), boxes, max_boxes=1)
    assert [r.get_x() for r in find_artists(fig, GID_PROPOSAL)] == [0]


def test_draw_recall_curve_one_line_per_curve_with_the_given_points():
    xs = [1, 10, 100]
    fig = draw_recall_curve(xs, {"IoU 0.5": [0.2, 0.6, 0.9], "IoU 0.7": [0.1, 0.3, 0.5]})
    lines = find_artists(fig, GID_RECALL)
    assert len(lines) == count_artists(fig, GID_RECALL) == 2
    np.testing.assert_array_equal(lines[1].get_xdata(), xs)
    np.testing.assert_array_equal(lines[1].get_ydata(), [0.1, 0.3, 0.5])
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="2 values for 3"):
        draw_recall_curve(xs, {"bad": [0.1, 0.2]})


def test_draw_proposal_view_shows_both_panels_and_marks_the_top_k():
    gt = torch.tensor([[4, 4, 31, 21], [40, 41, 60, 70]], dtype=torch.float32)
    fig = draw_proposal_view(torch.rand(3, 80, 90), BOXES, SCORES, gt, counts=[1, 2, 4],
                             recalls={"IoU 0.5": [0.5, 0.5, 1.0]}, chosen=4, title="recall",
                             max_boxes=2)
    ax_image, ax_recall = fig.axes
    assert count_artists(fig, GID_PROPOSAL) == 2 and count_artists(fig, GID_GT) == 2
    drawn = [xyxy(r) for r in find_artists(fig, GID_PROPOSAL)]
    assert drawn == [tuple(BOXES[i].tolist()) for i in (2, 1)]  # the best two, best on top
    assert ax_image.get_title() == "2 of 4 proposals (colour: objectness)"
    assert count_artists(fig, GID_RECALL) == 1 and ax_recall.get_title() == "recall"
    marker = [line for line in ax_recall.lines if line.get_gid() != GID_RECALL]
    assert len(marker) == 1 and list(marker[0].get_xdata()) == [4, 4]  # the post-NMS top-k
