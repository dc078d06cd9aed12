"""viz.py: the figures show exactly what they are given (counts, positions, pixels, numbers)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from mnc_teach.viz import common as viz  # noqa: E402

CLASS_NAMES = ("background", "circle", "square", "triangle")


def make_target(height: int = 40, width: int = 50) -> dict:
    """Three rectangular instances with hand-known boxes, and a void band around the first."""
    masks = torch.zeros((3, height, width), dtype=torch.uint8)
    masks[0, 5:15, 10:20] = 1  # box (10, 5, 20, 15)
    masks[1, 20:35, 2:12] = 1  # box (2, 20, 12, 35)
    masks[2, 22:30, 30:48] = 1  # box (30, 22, 48, 30)
    ignore = torch.zeros((height, width), dtype=torch.uint8)
    ignore[4, 9:21] = 1
    return {
        "boxes": torch.tensor([[10, 5, 20, 15], [2, 20, 12, 35], [30, 22, 48, 30]], dtype=torch.float32),
        "labels": torch.tensor([1, 2, 1]),
        "masks": masks,
        "ignore": ignore,
        "image_id": "img0",
    }


def artists(fig, gid, kind=None):
    found = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]
    return [a for a in found if kind is None or isinstance(a, kind)]


def opaque_pixels(image_artist: AxesImage) -> int:
    return int((np.asarray(image_artist.get_array())[..., 3] > 0).sum())


def test_instance_colors_are_stable_and_distinct():
    colors = viz.instance_colors(25)
    assert colors.shape == (25, 3) and (colors >= 0).all() and (colors <= 1).all()
    np.testing.assert_array_equal(colors, viz.instance_colors(25))
    np.testing.assert_array_equal(colors[:5], viz.instance_colors(5))  # prefix-consistent
    assert len({tuple(c) for c in colors[:20]}) == 20
    np.testing.assert_array_equal(colors[20], colors[0])  # cycles after 20


def test_draw_instances_target_draws_each_box_mask_and_label():
    target = make_target()
    fig = viz.draw_instances(torch.rand(3, 40, 50), target, CLASS_NAMES, show_ignore=True)
    rects = artists(fig, viz.GID_BOX, Rectangle)
    assert len(rects) == viz.count_artists(fig, viz.GID_BOX) == 3
    for rect, box in zip(rects, target["boxes"].tolist(), strict=True):
        x1, y1, x2, y2 = box
        assert rect.get_xy() == (x1, y1) and rect.get_width() == x2 - x1 and rect.get_height() == y2 - y1
    mask_images = artists(fig, viz.GID_MASK)
    assert [opaque_pixels(im) for im in mask_images] == target["masks"].flatten(1).sum(1).tolist()
    assert [t.get_text() for t in artists(fig, viz.GID_LABEL)] == ["circle", "square", "circle"]
    (void,) = artists(fig, viz.GID_IGNORE)
    assert opaque_pixels(void) == int(target["ignore"].sum())
    assert len(fig.axes[0].images) == 1 + 3 + 1  # the image, 3 masks, the void overlay


@pytest.mark.parametrize(("boxes", "masks", "labels", "ignore"), [(True, False, False, False), (False, True, True, False)])
def test_draw_instances_toggles(boxes, masks, labels, ignore):
    fig = viz.draw_instances(torch.rand(3, 40, 50), make_target(), CLASS_NAMES, show_boxes=boxes,
                             show_masks=masks, show_labels=labels, show_ignore=ignore)
    assert viz.count_artists(fig, viz.GID_BOX) == 3 * boxes
    assert viz.count_artists(fig, viz.GID_MASK) == 3 * masks
    assert viz.count_artists(fig, viz.GID_LABEL) == 3 * labels
    assert viz.count_artists(fig, viz.GID_IGNORE) == 0


def test_draw_instances_detection_threshold_scores_and_soft_masks():
    target = make_target()
    soft = torch.rand(3, 1, 40, 50)
    detection = {"boxes": target["boxes"], "labels": torch.tensor([3, 1, 2]),
                 "scores": torch.tensor([0.9, 0.2, 0.55]), "masks": soft}
    fig = viz.draw_instances(torch.rand(3, 40, 50), detection, CLASS_NAMES, score_threshold=0.5)
    assert viz.count_artists(fig, viz.GID_BOX) == 2
    assert [t.get_text() for t in artists(fig, viz.GID_LABEL)] == ["triangle 0.90", "square 0.55"]
    expected = [int((soft[i, 0] >= viz.MASK_DISPLAY_THRESHOLD).sum()) for i in (0, 2)]
    assert [opaque_pixels(im) for im in artists(fig, viz.GID_MASK)] == expected


def test_draw_instances_into_given_axes_and_empty_target():
    fig, axes = plt.subplots(1, 2)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
             "masks": torch.zeros((0, 40, 50), dtype=torch.uint8)}
    assert viz.draw_instances(torch.rand(3, 40, 50), empty, CLASS_NAMES, ax=axes[1]) is fig
    assert viz.count_artists(fig, viz.GID_BOX) == 0 and len(axes[1].images) == 1 and len(axes[0].images) == 0


def test_draw_label_maps_shows_palette_colours_and_legend():
    class_map = np.zeros((20, 30), dtype=np.uint8)
    class_map[5:10, 5:10] = 2
    class_map[4, 4:11] = 255
    object_map = np.where(class_map == 2, 1, class_map).astype(np.uint8)
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    fig = viz.draw_label_maps(class_map, object_map, palette, class_names=CLASS_NAMES)
    assert len(fig.axes) == 2
    for ax, index_map in zip(fig.axes, (class_map, object_map), strict=True):
        (image,) = ax.images
        np.testing.assert_array_equal(np.asarray(image.get_array()), palette[index_map])
    class_legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    object_legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert class_legend == ["0 background", "2 square", "255 void"]
    assert object_legend == ["0 background", "1 instance 1", "255 void"]


def test_label_map_to_rgb_indexes_the_palette():
    palette = np.arange(256 * 3, dtype=np.int64).reshape(256, 3).astype(np.uint8)
    index_map = np.array([[0, 1], [255, 7]], dtype=np.uint8)
    rgb = viz.label_map_to_rgb(index_map, palette)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 0], palette[255])


def test_draw_anchors_counts_kinds_and_subsamples():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=generator) * 100
    anchors = torch.cat([xy, xy + 10], dim=1)
    labels = torch.full((500,), -1, dtype=torch.int64)
    labels[:7] = 1
    labels[7:407] = 0  # 400 negatives, more than max_per_kind
    fig = viz.draw_anchors(torch.rand(3, 120, 120), anchors, labels, gt_boxes=anchors[:2], max_per_kind=50)
    assert viz.count_artists(fig, "anchors-positive") == 7
    assert viz.count_artists(fig, "anchors-negative") == 50
    assert viz.count_artists(fig, "anchors-ignored") == 50
    assert viz.count_artists(fig, viz.GID_GT) == 2
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "positive: 7" in legend and "negative: 400 (50 drawn)" in legend and "ignored: 93 (50 drawn)" in legend
    # the positives' rectangles are exactly the first 7 anchors
    (positives,) = artists(fig, "anchors-positive")
    corners = np.array([path.get_extents().get_points().ravel() for path in positives.get_paths()])
    np.testing.assert_allclose(corners, anchors[:7].numpy(), atol=1e-4)
    # the subset is reproducible
    again = viz.draw_anchors(None, anchors, labels, max_per_kind=50, image_size=(120, 120))
    (negatives_a,), (negatives_b,) = artists(fig, "anchors-negative"), artists(again, "anchors-negative")
    assert [p.get_extents().bounds for p in negatives_a.get_paths()] == [p.get_extents().bounds for p in negatives_b.get_paths()]


def test_draw_anchors_without_labels_draws_all():
    anchors = torch.tensor([[-8.0, -8, 8, 8], [-16, -4, 16, 4], [-4, -16, 4, 16]])
    fig = viz.draw_anchors(None, anchors)
    assert viz.count_artists(fig, "anchors-all") == 3
    ax = fig.axes[0]
    # fitted to the anchors plus a 5 % margin (32 px span -> 1.6 px), y growing downwards
    np.testing.assert_allclose([*ax.get_xlim(), *ax.get_ylim()], [-17.6, 17.6, 17.6, -17.6], rtol=1e-6)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["anchors: 3"]


@pytest.mark.parametrize(("box_a", "box_b"), [([0, 0, 10, 10], [5, 5, 15, 20]), ([0, 0, 4, 4], [6, 6, 9, 9])])
def test_draw_boxes_and_iou_title_matches_torchvision(box_a, box_b):
    fig = viz.draw_boxes_and_iou(box_a, box_b)
    expected = torchvision.ops.box_iou(torch.tensor([box_a], dtype=torch.float32),
                                       torch.tensor([box_b], dtype=torch.float32))[0, 0].item()
    assert fig.axes[0].get_title().endswith(f"= {expected:.3f}")
    assert viz.count_artists(fig, viz.GID_BOX) == 2
    shaded = artists(fig, "intersection")
    if expected > 0:
        (rect,) = shaded
        assert (*rect.get_xy(), rect.get_width(), rect.get_height()) == (5, 5, 5, 5)
    else:
        assert shaded == []


def test_draw_box_coding_shows_both_boxes_and_deltas():
    fig = viz.draw_box_coding([0, 0, 10, 10], [5, 5, 15, 20], deltas=torch.tensor([0.5, 0.75, 0.0, 0.405]))
    assert viz.count_artists(fig, viz.GID_BOX) == 2
    assert fig.axes[0].get_title() == "dx=0.50 dy=0.75 dw=0.00 dh=0.41"


def test_draw_nms_before_and_after():
    generator = torch.Generator().manual_seed(1)
    xy = torch.rand(12, 2, generator=generator) * 40
    boxes = torch.cat([xy, xy + 20], dim=1)
    scores = torch.rand(12, generator=generator)
    keep = torchvision.ops.nms(boxes, scores, 0.3)
    assert 0 < len(keep) < 12
    fig = viz.draw_nms(boxes, scores, keep, iou_threshold=0.3)
    before, after = fig.axes
    assert len([p for p in before.patches if p.get_gid() == viz.GID_BOX]) == 12
    kept_rects = [p for p in after.patches if p.get_gid() == viz.GID_BOX]
    assert len(kept_rects) == len(keep)
    np.testing.assert_allclose([r.get_xy() for r in kept_rects], boxes[keep, :2].numpy(), rtol=1e-6)
    assert [t.get_text() for t in after.texts] == [f"{s:.2f}" for s in scores[keep].tolist()]
    assert after.get_title() == f"after NMS: {len(keep)} kept (IoU threshold 0.3)"


def test_best_detections_keeps_the_best_above_the_threshold_with_their_colours() -> None:
    from mnc_teach.viz.common import best_detections, instance_colors

    detections = {"boxes": torch.arange(20.0).view(5, 4), "labels": torch.tensor([1, 2, 1, 3, 2]),
                  "scores": torch.tensor([0.2, 0.9, 0.6, 0.95, 0.4]), "image_id": "x"}  # fmt: skip
    subset, colors, num_above = best_detections(detections, score_threshold=0.5, max_count=2)
    assert num_above == 3  # 0.9, 0.6, 0.95
    assert subset["scores"].tolist() == pytest.approx([0.95, 0.9]) and subset["labels"].tolist() == [3, 2]
    assert torch.equal(subset["boxes"], detections["boxes"][[3, 1]]) and subset["image_id"] == "x"
    assert np.array_equal(colors, instance_colors(5)[[3, 1]])
    none, no_colors, zero = best_detections(detections, score_threshold=0.99)
    assert len(none["scores"]) == 0 and no_colors.shape == (0, 3) and zero == 0
