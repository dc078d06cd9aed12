"""viz.inference: box refinement and mask voting draw what they were given, counted by gid and
read back from the artists."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

from mnc_teach.viz.common import GID_GT, count_artists, find_artists
from mnc_teach.viz.inference import (
    GID_KEPT_BOX,
    GID_OWN_MASK,
    GID_REFINED_BOX,
    GID_SHIFT,
    GID_STAGE1_BOX,
    GID_VOTED_BOX,
    GID_VOTED_MASK,
    GID_VOTER_BOX,
    draw_box_refinement,
    draw_mask_voting,
)


def _rects(fig, gid: str) -> list[Rectangle]:
    return [a for a in find_artists(fig, gid) if isinstance(a, Rectangle)]


def _xyxy(rect: Rectangle) -> list[float]:
    x, y = rect.get_xy()
    return [x, y, x + rect.get_width(), y + rect.get_height()]


# ----------------------------------------------------------------------------- draw_box_refinement


def test_box_refinement_draws_pairs_and_arrows_between_centres() -> None:
    image = torch.rand(3, 40, 50)
    before = torch.tensor([[2.0, 4.0, 12.0, 20.0], [20.0, 10.0, 40.0, 30.0]])
    after = torch.tensor([[4.0, 4.0, 16.0, 24.0], [18.0, 12.0, 38.0, 36.0]])
    gt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])
    fig = draw_box_refinement(image, before, after, gt_boxes=gt)
    assert count_artists(fig, GID_STAGE1_BOX) == 2
    assert count_artists(fig, GID_REFINED_BOX) == 2
    assert count_artists(fig, GID_SHIFT) == 2
    assert count_artists(fig, GID_GT) == 1
    assert [_xyxy(r) for r in _rects(fig, GID_STAGE1_BOX)] == before.tolist()
    assert [_xyxy(r) for r in _rects(fig, GID_REFINED_BOX)] == after.tolist()
    arrows = [a for a in fig.axes[0].texts if a.get_gid() == GID_SHIFT]
    for arrow, b, a in zip(arrows, before.tolist(), after.tolist(), strict=True):
        # from the stage-1 centre to the refined centre
        assert arrow.xyann == pytest.approx(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
        assert arrow.xy == pytest.approx(((a[0] + a[2]) / 2, (a[1] + a[3]) / 2))
    # a refined box keeps the colour of its stage-1 box
    for r1, r2 in zip(_rects(fig, GID_STAGE1_BOX), _rects(fig, GID_REFINED_BOX), strict=True):
        assert r1.get_edgecolor() == r2.get_edgecolor()


def test_box_refinement_rejects_unpaired_boxes() -> None:
    with pytest.raises(ValueError, match="refined"):
        draw_box_refinement(torch.rand(3, 8, 8), torch.zeros(2, 4), torch.zeros(3, 4))


def test_box_refinement_into_given_axes() -> None:
    fig, axes = plt.subplots(1, 2)
    before, after = torch.tensor([[1.0, 1, 4, 4]]), torch.tensor([[2.0, 2, 5, 5]])
    out = draw_box_refinement(torch.rand(3, 8, 8), before, after, ax=axes[1])
    assert out is fig
    assert count_artists(fig, GID_REFINED_BOX) == 1 and not axes[0].patches


# ----------------------------------------------------------------------------- draw_mask_voting


def _voting_inputs():
    height, width = 30, 40
    own = torch.zeros(height, width)
    own[5:15, 10:20] = 0.9
    voted = torch.zeros(height, width)
    voted[6:16, 9:21] = 0.7
    voter_boxes = torch.tensor([[10.0, 5.0, 20.0, 15.0], [9.0, 6.0, 21.0, 16.0],
                                [11.0, 5.0, 19.0, 14.0]])
    weights = torch.tensor([0.5, 0.3, 0.2])
    return torch.rand(3, height, width), own, voter_boxes, weights, voted


def test_mask_voting_three_panels_with_every_voter() -> None:
    image, own, voter_boxes, weights, voted = _voting_inputs()
    voted_box = torch.tensor([9.0, 6, 21, 16])
    fig = draw_mask_voting(image, kept_box=voter_boxes[0], own_mask=own, voter_boxes=voter_boxes,
                           voter_weights=weights, voted_mask=voted, voted_box=voted_box)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 3
    assert count_artists(fig, GID_KEPT_BOX) == 1
    assert count_artists(fig, GID_OWN_MASK) == 1
    assert count_artists(fig, GID_VOTER_BOX) == 3
    assert count_artists(fig, GID_VOTED_MASK) == 1
    assert count_artists(fig, GID_VOTED_BOX) == 1
    rects = _rects(fig, GID_VOTER_BOX)
    # heaviest drawn last (on top) and widest; every voter box is drawn where it is
    assert [r.get_linewidth() for r in rects] == sorted(r.get_linewidth() for r in rects)
    assert _xyxy(rects[-1]) == voter_boxes[0].tolist()
    assert sorted(map(tuple, (_xyxy(r) for r in rects))) == sorted(map(tuple, voter_boxes.tolist()))
    # the own mask is shown binarised at 0.4, the voted mask as its soft values
    own_overlay = next(a for a in fig.axes[0].get_children() if a.get_gid() == GID_OWN_MASK)
    np.testing.assert_array_equal(own_overlay.get_array()[..., 3] > 0, own.numpy() >= 0.4)
    heat = next(a for ax in fig.axes for a in ax.get_children() if a.get_gid() == GID_VOTED_MASK)
    np.testing.assert_allclose(heat.get_array().filled(0.0), voted.numpy())
    fig.canvas.draw()  # renders (colorbar, contour) without error


def test_mask_voting_rejects_mismatched_weights() -> None:
    image, own, voter_boxes, weights, voted = _voting_inputs()
    with pytest.raises(ValueError, match="weights"):
        draw_mask_voting(image, kept_box=voter_boxes[0], own_mask=own, voter_boxes=voter_boxes,
                         voter_weights=weights[:2], voted_mask=voted)
