"""viz.masks: the stage-2 grid shows each RoI, its target, its prediction and the pasted mask
exactly (pixels compared with postprocess.paste_masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

from mnc_teach.postprocess import paste_masks
from mnc_teach.viz.common import count_artists, find_artists
from mnc_teach.viz.masks import (
    GID_MASK_PRED,
    GID_MASK_TARGET,
    GID_PASTED,
    GID_ROI_BOX,
    PASTE_THRESHOLD,
    draw_mask_grid,
)


def _grid_inputs():
    boxes = torch.tensor([[8, 8, 40, 32], [20, 30, 60, 60]], dtype=torch.float32)
    targets = torch.zeros(2, 7, 7)
    targets[0, 2:5, 1:6] = 1
    targets[1] = 1
    return torch.rand(3, 64, 64), boxes, targets


def test_draw_mask_grid_with_predictions_has_four_columns_and_exact_pixels():
    image, boxes, targets = _grid_inputs()
    preds = torch.rand(2, 7, 7)
    fig = draw_mask_grid(image, boxes, targets, preds, titles=["a", "b"])
    assert len(fig.axes) == 8
    for gid in (GID_ROI_BOX, GID_MASK_TARGET, GID_MASK_PRED, GID_PASTED):
        assert count_artists(fig, gid) == 2, gid
    rects = [a for a in find_artists(fig, GID_ROI_BOX) if isinstance(a, Rectangle)]
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rects] == [
        (8, 8, 32, 24), (20, 30, 40, 30)]
    shown_targets = [np.asarray(a.get_array()) for a in find_artists(fig, GID_MASK_TARGET)]
    np.testing.assert_array_equal(shown_targets[1], targets[1].numpy())
    shown_pred = np.asarray(find_artists(fig, GID_MASK_PRED)[0].get_array())
    np.testing.assert_array_equal(shown_pred, preds[0].numpy())
    # the pasted overlay is postprocess.paste_masks of the prediction, binarised at the threshold
    expected = paste_masks(preds, boxes, (0, 0, 64, 64)) >= PASTE_THRESHOLD
    for overlay, mask in zip(find_artists(fig, GID_PASTED), expected, strict=True):
        np.testing.assert_array_equal(np.asarray(overlay.get_array())[..., 3] > 0, mask.numpy())
    assert fig.axes[0].get_title() == "a"
    # the pasted column is zoomed on its RoI: RoI 0 plus a quarter of its larger side (8 px)
    assert fig.axes[3].get_xlim() == (0.0, 48.0) and fig.axes[3].get_ylim() == (40.0, 0.0)


def test_draw_mask_grid_without_predictions_pastes_the_target():
    image, boxes, targets = _grid_inputs()
    fig = draw_mask_grid(image, boxes[:1], targets[:1])
    assert len(fig.axes) == 3 and count_artists(fig, GID_MASK_PRED) == 0
    (overlay,) = find_artists(fig, GID_PASTED)
    expected = paste_masks(targets[:1], boxes[:1], (0, 0, 64, 64))[0] >= PASTE_THRESHOLD
    np.testing.assert_array_equal(np.asarray(overlay.get_array())[..., 3] > 0, expected.numpy())
    assert expected.sum() > 0  # the test would be empty otherwise
    assert fig.axes[-1].get_title() == "target pasted (>= 0.4)"
    with pytest.raises(ValueError, match="at least one RoI"):
        draw_mask_grid(image, torch.zeros(0, 4), torch.zeros(0, 7, 7))
    with pytest.raises(ValueError, match="2 boxes but 1 targets"):
        draw_mask_grid(image, boxes, targets[:1])
