"""viz.gradients: an arrow at the middle of each box edge, pointing where gradient descent moves
that edge (-dL/dcoordinate), on one scale shared by every panel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnc_teach.viz.common import GID_GT, count_artists, find_artists
from mnc_teach.viz.gradients import (
    GID_EDGE_ARROW,
    GID_GRAD_BOX,
    draw_box_gradients,
    edge_arrows,
)


def test_edge_arrows_start_at_edge_middles_and_move_against_the_gradient() -> None:
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    grads = np.array([[1.0, -2.0, 0.5, 0.0]])
    arrows = edge_arrows(boxes, grads, scale=4.0)[0]  # (4 edges, (x, y, dx, dy))
    np.testing.assert_allclose(arrows, [
        [10.0, 40.0, -4.0, 0.0],  # left edge: dL/dx1 > 0, so it moves left (the box grows)
        [20.0, 20.0, 0.0, 8.0],  # top edge: dL/dy1 < 0, so it moves down (the box shrinks)
        [30.0, 40.0, -2.0, 0.0],  # right edge moves left
        [20.0, 60.0, 0.0, 0.0],  # bottom edge: no gradient, no move
    ])


def _arrows(fig, panel: int) -> list[tuple[tuple, tuple]]:
    return [(a.xyann, a.xy) for a in fig.axes[panel].texts if a.get_gid() == GID_EDGE_ARROW]


def _longest(fig, panel: int) -> float:
    return max(abs(end[0] - start[0]) + abs(end[1] - start[1])
               for start, end in _arrows(fig, panel))


def test_one_panel_per_loss_with_a_shared_scale() -> None:
    image = torch.rand(3, 50, 100)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0], [50.0, 5.0, 90.0, 45.0]])
    small = torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -0.1]])
    large = torch.tensor([[1.0, 1.0, -1.0, -1.0], [0.0, 0.5, 0.0, 0.0]])
    fig = draw_box_gradients(image, boxes, {"L2": small, "L3": large},
                             gt_boxes=torch.tensor([[12.0, 12.0, 28.0, 38.0]]), arrow_fraction=0.2,
                             shared_scale=True)
    assert [ax.get_title().splitlines()[0] for ax in fig.axes] == ["L2", "L3"]
    assert count_artists(fig, GID_GRAD_BOX) == 4 and count_artists(fig, GID_GT) == 2
    assert count_artists(fig, GID_EDGE_ARROW) == 2 + 5  # zero components get no arrow
    scale = 0.2 * 50 / 1.0  # the largest |gradient| of the figure is 1.0
    assert _arrows(fig, 0) == [((10.0, 25.0), pytest.approx((10.0 - 0.1 * scale, 25.0))),
                               ((70.0, 45.0), pytest.approx((70.0, 45.0 + 0.1 * scale)))]
    assert _longest(fig, 1) == pytest.approx(0.2 * 50)
    assert fig.axes[0].get_xlabel() == fig.axes[1].get_xlabel() == "arrow = -dL/d(edge) x 10 px"
    # box b has the same colour in every panel
    rects = find_artists(fig, GID_GRAD_BOX)
    assert rects[0].get_edgecolor() == rects[2].get_edgecolor()


def test_each_panel_scaled_to_its_own_largest_gradient_by_default() -> None:
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    grads = {"small": torch.tensor([[0.01, 0.0, -0.02, 0.0]]),
             "large": torch.tensor([[3.0, 0.0, 0.0, 0.0]])}
    fig = draw_box_gradients(torch.rand(3, 50, 100), boxes, grads, arrow_fraction=0.2)
    assert _longest(fig, 0) == pytest.approx(10.0) and _longest(fig, 1) == pytest.approx(10.0)
    assert [start for start, _ in _arrows(fig, 0)] == [(10.0, 25.0), (30.0, 25.0)]
    assert fig.axes[0].get_title() == "small\nlargest |dL/d(edge)| 2.00e-02"


def test_rejects_unpaired_gradients_and_no_panels() -> None:
    with pytest.raises(ValueError, match="gradients for"):
        draw_box_gradients(torch.rand(3, 8, 8), torch.zeros(2, 4), {"L2": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="no gradients"):
        draw_box_gradients(torch.rand(3, 8, 8), torch.zeros(2, 4), {})


def test_all_zero_gradients_draw_boxes_only() -> None:
    fig = draw_box_gradients(torch.rand(3, 8, 8), torch.tensor([[1.0, 1, 5, 5]]),
                             {"detached": torch.zeros(1, 4)})
    assert count_artists(fig, GID_GRAD_BOX) == 1 and count_artists(fig, GID_EDGE_ARROW) == 0
