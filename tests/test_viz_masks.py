"""viz.masks: the stage-2 grid shows each RoI, its target, its prediction and the pasted mask
exactly (pixels compared with postprocess.paste_masks)."""

from __future__ import annotations

import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

from mnc_teach.postprocess import paste_masks
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.viz.common import GID_GT, count_artists, find_artists
from mnc_teach.viz.masks import (
    BAND_COLORS,
    BAND_GIDS,
    GID_APPENDED_GT,
    GID_MASK_PRED,
    GID_MASK_TARGET,
    GID_PASTED,
    GID_ROI_BOX,
    PASTE_THRESHOLD,
    draw_mask_grid,
    draw_pasted_targets,
    draw_roi_bands,
    stand_in_proposals,
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


def test_stand_in_proposals_count_order_and_spread():
    gt = torch.tensor([[10.0, 10.0, 40.0, 30.0], [50.0, 50.0, 60.0, 70.0]])
    boxes = stand_in_proposals(gt, (80, 100), torch.Generator().manual_seed(0), per_object=4,
                               jitters=(0.0, 0.5), num_random=7)
    assert boxes.shape == (2 * 4 * 2 + 7, 4)
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    assert torch.equal(boxes[:8].reshape(2, 4, 4), gt[:, None].expand(2, 4, 4))  # jitter 0
    random = boxes[-7:]
    assert (random[:, :2] >= 0).all() and (random[:, 0] <= 80).all() and (random[:, 1] <= 64).all()
    extents = random[:, 2:] - random[:, :2]  # 5 % to 35 % of the image's width / height
    assert (extents >= torch.tensor([5.0, 4.0]) - 1e-4).all()
    assert (extents <= torch.tensor([35.0, 28.0]) + 1e-4).all()


def test_draw_roi_bands_draws_each_roi_in_its_band_and_marks_appended_ground_truth():
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    rois = torch.tensor([[10, 10, 30, 30], [11, 10, 30, 31], [20, 20, 40, 40], [50, 50, 60, 60]],
                        dtype=torch.float32)
    labels = torch.tensor([2, 2, 0, 0])
    iou = torch.tensor([1.0, 0.9, 0.14, 0.0])
    appended = torch.tensor([True, False, False, False])
    fig = draw_roi_bands(torch.rand(3, 64, 64), rois, labels, iou, gt, bg_iou_low=0.1,
                         appended=appended)
    assert len(fig.axes) == 4
    # every RoI twice: in the "all" panel and in its band's panel
    assert count_artists(fig, GID_APPENDED_GT) == 2
    assert count_artists(fig, BAND_GIDS["foreground"]) == 2
    assert count_artists(fig, BAND_GIDS["hard background"]) == 2
    assert count_artists(fig, BAND_GIDS["easy background"]) == 2
    assert count_artists(fig, GID_GT) == 4
    hard = find_artists(fig, BAND_GIDS["hard background"])[0]
    assert hard.get_edgecolor()[:3] == matplotlib.colors.to_rgb(BAND_COLORS["hard background"])
    assert [ax.get_title() for ax in fig.axes] == [
        "all: 4 RoIs", "foreground: 2 RoIs", "hard background: 1 RoIs", "easy background: 1 RoIs"]
    plt.close(fig)


def test_draw_pasted_targets_shows_the_pasted_target_of_each_mask_size():
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    mask[((yy - 30) ** 2 + (xx - 30) ** 2) <= 15**2] = 1
    box = torch.tensor([15.0, 15.0, 46.0, 46.0])
    fig = draw_pasted_targets(mask, box, [4, 28], notes={28: "paper"})
    assert count_artists(fig, GID_PASTED) == 2
    for artist, m in zip(find_artists(fig, GID_PASTED), [4, 28], strict=True):
        target = mask_targets(mask[None], torch.zeros(1, dtype=torch.long), box[None],
                              mask_size=m, threshold=PASTE_THRESHOLD)
        expected = paste_masks(target, box[None], (0, 0, 64, 64))[0].numpy() >= PASTE_THRESHOLD
        assert np.array_equal(np.asarray(artist.get_array()), expected)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("m = 4: mask IoU") and titles[1].startswith("m = 28 (paper)")
    coarse, fine = (float(t.rsplit(" ", 1)[1]) for t in titles)
    assert coarse < fine <= 1.0
    plt.close(fig)
