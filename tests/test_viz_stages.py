"""viz_cascade.py: the stage pictures show exactly what they are given (counts, order, pixels, numbers)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from mnc_teach.postprocess import paste_masks  # noqa: E402
from mnc_teach.viz import common as viz  # noqa: E402
from mnc_teach.viz import stages as viz_cascade

CLASS_NAMES = ("background", "circle", "square", "triangle")


def artists(fig, gid):
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def test_draw_proposals_draws_the_best_boxes_best_on_top_and_the_ground_truth():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 30, 20], [40, 40, 60, 70], [1, 2, 3, 4]], dtype=torch.float32)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.1])
    gt = torch.tensor([[4, 4, 31, 21]], dtype=torch.float32)
    fig = viz_cascade.draw_proposals(torch.rand(3, 80, 90), boxes, scores, gt_boxes=gt, max_boxes=3)
    assert viz.count_artists(fig, viz_cascade.GID_PROPOSAL) == 3
    assert viz.count_artists(fig, viz.GID_GT) == 1
    drawn = [(r.get_x(), r.get_y(), r.get_x() + r.get_width(), r.get_y() + r.get_height())
             for r in artists(fig, viz_cascade.GID_PROPOSAL)]  # fmt: skip
    # drawn worst first so the best ends on top: scores 0.2, 0.5, 0.9 -> boxes 0, 2, 1; box 3 (0.1) left out
    assert drawn == [tuple(boxes[i].tolist()) for i in (0, 2, 1)]
    assert fig.axes[0].get_title() == "3 of 4 proposals"


def test_draw_proposals_without_scores_draws_all_in_given_order():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 30, 20]], dtype=torch.float32)
    fig = viz_cascade.draw_proposals(torch.rand(3, 40, 40), boxes)
    assert viz.count_artists(fig, viz_cascade.GID_PROPOSAL) == 2 and viz.count_artists(fig, viz.GID_GT) == 0
    assert [r.get_x() for r in artists(fig, viz_cascade.GID_PROPOSAL)] == [0, 5]
    fig = viz_cascade.draw_proposals(torch.rand(3, 40, 40), boxes, max_boxes=1)
    assert [r.get_x() for r in artists(fig, viz_cascade.GID_PROPOSAL)] == [0]


def test_draw_recall_curve_one_line_per_curve_with_the_given_points():
    xs = [1, 10, 100]
    fig = viz_cascade.draw_recall_curve(xs, {"IoU 0.5": [0.2, 0.6, 0.9], "IoU 0.7": [0.1, 0.3, 0.5]})
    lines = artists(fig, viz_cascade.GID_RECALL)
    assert len(lines) == viz.count_artists(fig, viz_cascade.GID_RECALL) == 2
    np.testing.assert_array_equal(lines[1].get_xdata(), xs)
    np.testing.assert_array_equal(lines[1].get_ydata(), [0.1, 0.3, 0.5])
    assert fig.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="2 values for 3"):
        viz_cascade.draw_recall_curve(xs, {"bad": [0.1, 0.2]})


def test_draw_loss_curves_moving_average():
    values = [4.0, 2.0, 0.0, 2.0]
    fig = viz_cascade.draw_loss_curves({"loss_rpn_obj": values, "loss_rpn_box": [1.0] * 4}, smooth=2)
    lines = artists(fig, viz_cascade.GID_LOSS)
    assert len(lines) == 2 and lines[0].get_label() == "rpn_obj"
    np.testing.assert_allclose(lines[0].get_ydata(), [4.0, 3.0, 1.0, 1.0])  # trailing mean of 2 (1 at the start)
    np.testing.assert_allclose(lines[1].get_ydata(), [1.0] * 4)


def _grid_inputs():
    boxes = torch.tensor([[8, 8, 40, 32], [20, 30, 60, 60]], dtype=torch.float32)
    targets = torch.zeros(2, 7, 7)
    targets[0, 2:5, 1:6] = 1
    targets[1] = 1
    return torch.rand(3, 64, 64), boxes, targets


def test_draw_mask_grid_with_predictions_has_four_columns_and_exact_pixels():
    image, boxes, targets = _grid_inputs()
    preds = torch.rand(2, 7, 7)
    fig = viz_cascade.draw_mask_grid(image, boxes, targets, preds, titles=["a", "b"])
    assert len(fig.axes) == 8
    for gid in (viz_cascade.GID_ROI_BOX, viz_cascade.GID_MASK_TARGET, viz_cascade.GID_MASK_PRED, viz_cascade.GID_PASTED):
        assert viz.count_artists(fig, gid) == 2, gid
    rects = [a for a in artists(fig, viz_cascade.GID_ROI_BOX) if isinstance(a, Rectangle)]
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rects] == [(8, 8, 32, 24), (20, 30, 40, 30)]
    shown_targets = [np.asarray(a.get_array()) for a in artists(fig, viz_cascade.GID_MASK_TARGET)]
    np.testing.assert_array_equal(shown_targets[1], targets[1].numpy())
    np.testing.assert_array_equal(np.asarray(artists(fig, viz_cascade.GID_MASK_PRED)[0].get_array()), preds[0].numpy())
    # the pasted overlay is postprocess.paste_masks of the prediction, binarised at the threshold
    expected = paste_masks(preds, boxes, (0, 0, 64, 64)) >= viz_cascade.PASTE_THRESHOLD
    for overlay, mask in zip(artists(fig, viz_cascade.GID_PASTED), expected, strict=True):
        np.testing.assert_array_equal(np.asarray(overlay.get_array())[..., 3] > 0, mask.numpy())
    assert fig.axes[0].get_title() == "a"


def test_draw_mask_grid_without_predictions_pastes_the_target():
    image, boxes, targets = _grid_inputs()
    fig = viz_cascade.draw_mask_grid(image, boxes[:1], targets[:1])
    assert len(fig.axes) == 3 and viz.count_artists(fig, viz_cascade.GID_MASK_PRED) == 0
    (overlay,) = artists(fig, viz_cascade.GID_PASTED)
    expected = paste_masks(targets[:1], boxes[:1], (0, 0, 64, 64))[0] >= viz_cascade.PASTE_THRESHOLD
    np.testing.assert_array_equal(np.asarray(overlay.get_array())[..., 3] > 0, expected.numpy())
    assert expected.sum() > 0  # the test would be empty otherwise
    with pytest.raises(ValueError, match="at least one RoI"):
        viz_cascade.draw_mask_grid(image, torch.zeros(0, 4), torch.zeros(0, 7, 7))
    with pytest.raises(ValueError, match="2 boxes but 1 targets"):
        viz_cascade.draw_mask_grid(image, boxes, targets[:1])


def test_draw_mask_pooling_product_is_feature_times_bilinearly_resized_mask():
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(7, 7, generator=gen)
    mask = torch.zeros(14, 14)
    mask[3:10, 4:12] = 1
    fig = viz_cascade.draw_mask_pooling(feature, mask, image=torch.rand(3, 32, 32), box=torch.tensor([4.0, 4, 20, 20]), channel=5)
    assert len(fig.axes) == 4 and viz.count_artists(fig, viz_cascade.GID_ROI_BOX) == 1
    (shown_feature,) = artists(fig, viz_cascade.GID_FEATURE)
    (shown_mask,) = artists(fig, viz_cascade.GID_POOL_MASK)
    (shown_product,) = artists(fig, viz_cascade.GID_POOLED)
    resized = F.interpolate(mask[None, None], size=(7, 7), mode="bilinear", align_corners=False)[0, 0]  # reference
    np.testing.assert_allclose(np.asarray(shown_feature.get_array()), feature.numpy())
    np.testing.assert_allclose(np.asarray(shown_mask.get_array()), resized.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(shown_product.get_array()), (feature * resized).numpy(), atol=1e-6)
    assert shown_feature.get_clim() == shown_product.get_clim()  # one colour scale for before and after
    assert "channel 5" in fig.axes[1].get_title()
    assert len(viz_cascade.draw_mask_pooling(feature, mask).axes) == 3  # no image panel without image and box


def test_draw_class_scores_bar_heights_colours_and_argmax_outline():
    probs = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.6, 0.1, 0.2, 0.1], [0.25, 0.25, 0.4, 0.1]])
    fig = viz_cascade.draw_class_scores(probs, CLASS_NAMES, true_labels=torch.tensor([1, 2, 0]))
    assert len(fig.axes) == 3
    assert viz.count_artists(fig, viz_cascade.GID_SCORE_BAR) == 12
    for ax, row, label in zip(fig.axes, probs, (1, 2, 0), strict=True):
        bars = [a for a in ax.get_children() if a.get_gid() == viz_cascade.GID_SCORE_BAR]
        np.testing.assert_allclose([b.get_height() for b in bars], row.numpy(), atol=1e-7)
        green = [k for k, b in enumerate(bars) if matplotlib.colors.same_color(b.get_facecolor(), "tab:green")]
        assert green == [label]
        outlined = [k for k, b in enumerate(bars) if b.get_linewidth() == 1.5]
        assert outlined == [int(row.argmax())]
    with pytest.raises(ValueError, match="4 scores per RoI but 3 class names"):
        viz_cascade.draw_class_scores(probs, CLASS_NAMES[:3])
