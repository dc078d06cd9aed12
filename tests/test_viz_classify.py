"""viz.classify: mask pooling drawn as the model computes it (stage3_classify.mask_pool, checked
against bilinear resizing), and class-score bars with their heights, colours and argmax."""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnc_teach.viz.classify import (
    GID_DIAGONAL,
    GID_FEATURE,
    GID_IOU_POINTS,
    GID_POOL_MASK,
    GID_POOLED,
    GID_SCORE_BAR,
    draw_class_scores,
    draw_mask_pooling,
    draw_regression_iou,
)
from mnc_teach.viz.common import GID_IOU_HIST, count_artists, find_artists
from mnc_teach.viz.masks import GID_ROI_BOX

CLASS_NAMES = ("background", "circle", "square", "triangle")


def test_draw_mask_pooling_product_is_feature_times_bilinearly_resized_mask():
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(7, 7, generator=gen)
    mask = torch.zeros(14, 14)
    mask[3:10, 4:12] = 1
    fig = draw_mask_pooling(feature, mask, torch.rand(3, 32, 32), torch.tensor([4.0, 4, 20, 20]),
                            channel=5)
    assert len(fig.axes) == 4 and count_artists(fig, GID_ROI_BOX) == 1
    (shown_feature,) = find_artists(fig, GID_FEATURE)
    (shown_mask,) = find_artists(fig, GID_POOL_MASK)
    (shown_product,) = find_artists(fig, GID_POOLED)
    resized = F.interpolate(mask[None, None], size=(7, 7), mode="bilinear",
                            align_corners=False)[0, 0]  # the reference
    np.testing.assert_allclose(np.asarray(shown_feature.get_array()), feature.numpy())
    np.testing.assert_allclose(np.asarray(shown_mask.get_array()), resized.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(shown_product.get_array()), (feature * resized).numpy(),
                               atol=1e-6)
    assert shown_feature.get_clim() == shown_product.get_clim()  # one scale, before and after
    assert "channel 5" in fig.axes[1].get_title()
    assert len(draw_mask_pooling(feature, mask).axes) == 3  # no image panel without image and box


def test_draw_class_scores_bar_heights_colours_and_argmax_outline():
    probs = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.6, 0.1, 0.2, 0.1], [0.25, 0.25, 0.4, 0.1]])
    fig = draw_class_scores(probs, CLASS_NAMES, torch.tensor([1, 2, 0]), titles=["a", "b", "c"])
    assert len(fig.axes) == 3
    assert count_artists(fig, GID_SCORE_BAR) == 12
    for ax, row, label in zip(fig.axes, probs, (1, 2, 0), strict=True):
        bars = [a for a in ax.get_children() if a.get_gid() == GID_SCORE_BAR]
        np.testing.assert_allclose([b.get_height() for b in bars], row.numpy(), atol=1e-7)
        green = [k for k, b in enumerate(bars)
                 if matplotlib.colors.same_color(b.get_facecolor(), "tab:green")]
        assert green == [label]
        outlined = [k for k, b in enumerate(bars) if b.get_linewidth() == 1.5]
        assert outlined == [int(row.argmax())]
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="4 scores per RoI but 3 class names"):
        draw_class_scores(probs, CLASS_NAMES[:3])


def test_draw_regression_iou_points_diagonal_and_histograms():
    before = torch.tensor([0.5, 0.6, 0.8])
    after = torch.tensor([0.7, 0.55, 0.9])
    fig = draw_regression_iou(before, after)
    (points,) = find_artists(fig, GID_IOU_POINTS)
    assert np.allclose(points.get_offsets(), np.stack([before.numpy(), after.numpy()], axis=1))
    greens = [tuple(c[:3]) for c in points.get_facecolors()]
    green = matplotlib.colors.to_rgb("tab:green")
    assert [np.allclose(c, green) for c in greens] == [True, False, True]  # moved closer
    (diagonal,) = find_artists(fig, GID_DIAGONAL)
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [0, 1]
    assert count_artists(fig, GID_IOU_HIST) == 2
    assert fig.axes[0].get_title() == "2 of 3 RoIs move closer (green)"
    with pytest.raises(ValueError, match="3 IoUs before but 2 after"):
        draw_regression_iou(before, after[:2])
