"""viz.instances: targets and detections drawn exactly as given (boxes, masks, labels, colours),
the best detections kept with their colours, and VOC label maps shown with their palette."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from mnc_teach.viz.common import GID_BOX, count_artists, find_artists, instance_colors
from mnc_teach.viz.instances import (
    GID_IGNORE,
    GID_LABEL,
    GID_MASK,
    MASK_DISPLAY_THRESHOLD,
    best_detections,
    draw_instances,
    draw_label_maps,
    label_map_to_rgb,
)

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
        "boxes": torch.tensor([[10, 5, 20, 15], [2, 20, 12, 35], [30, 22, 48, 30]],
                              dtype=torch.float32),
        "labels": torch.tensor([1, 2, 1]),
        "masks": masks,
        "ignore": ignore,
        "image_id": "img0",
    }


def artists(fig, gid, kind=None):
    return [a for a in find_artists(fig, gid) if kind is None or isinstance(a, kind)]


def opaque_pixels(image_artist: AxesImage) -> int:
    return int((np.asarray(image_artist.get_array())[..., 3] > 0).sum())


def test_draw_instances_target_draws_each_box_mask_and_label():
    target = make_target()
    fig = draw_instances(torch.rand(3, 40, 50), target, CLASS_NAMES, show_ignore=True)
    rects = artists(fig, GID_BOX, Rectangle)
    assert len(rects) == count_artists(fig, GID_BOX) == 3
    for rect, box in zip(rects, target["boxes"].tolist(), strict=True):
        x1, y1, x2, y2 = box
        assert rect.get_xy() == (x1, y1)
        assert (rect.get_width(), rect.get_height()) == (x2 - x1, y2 - y1)
    mask_images = artists(fig, GID_MASK)
    assert [opaque_pixels(im) for im in mask_images] == target["masks"].flatten(1).sum(1).tolist()
    assert [t.get_text() for t in artists(fig, GID_LABEL)] == ["circle", "square", "circle"]
    (void,) = artists(fig, GID_IGNORE)
    assert opaque_pixels(void) == int(target["ignore"].sum())
    assert len(fig.axes[0].images) == 1 + 3 + 1  # the image, 3 masks, the void overlay
    assert fig.axes[0].get_title() == "img0  (3 instances)"


@pytest.mark.parametrize(("boxes", "masks", "labels"),
                         [(True, False, False), (False, True, True)])
def test_draw_instances_toggles(boxes, masks, labels):
    fig = draw_instances(torch.rand(3, 40, 50), make_target(), CLASS_NAMES, show_boxes=boxes,
                         show_masks=masks, show_labels=labels, show_ignore=False)
    assert count_artists(fig, GID_BOX) == 3 * boxes
    assert count_artists(fig, GID_MASK) == 3 * masks
    assert count_artists(fig, GID_LABEL) == 3 * labels
    assert count_artists(fig, GID_IGNORE) == 0


def test_draw_instances_detection_threshold_scores_and_soft_masks():
    target = make_target()
    soft = torch.rand(3, 1, 40, 50)
    detection = {"boxes": target["boxes"], "labels": torch.tensor([3, 1, 2]),
                 "scores": torch.tensor([0.9, 0.2, 0.55]), "masks": soft}
    fig = draw_instances(torch.rand(3, 40, 50), detection, CLASS_NAMES, score_threshold=0.5)
    assert count_artists(fig, GID_BOX) == 2
    assert [t.get_text() for t in artists(fig, GID_LABEL)] == ["triangle 0.90", "square 0.55"]
    expected = [int((soft[i, 0] >= MASK_DISPLAY_THRESHOLD).sum()) for i in (0, 2)]
    assert [opaque_pixels(im) for im in artists(fig, GID_MASK)] == expected


def test_draw_instances_given_colours_are_used_per_instance():
    colors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    fig = draw_instances(torch.rand(3, 40, 50), make_target(), CLASS_NAMES, colors=colors)
    edges = [tuple(r.get_edgecolor()[:3]) for r in artists(fig, GID_BOX, Rectangle)]
    assert edges == [tuple(c) for c in colors]


def test_draw_instances_into_given_axes_and_empty_target():
    fig, axes = plt.subplots(1, 2)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
             "masks": torch.zeros((0, 40, 50), dtype=torch.uint8)}
    assert draw_instances(torch.rand(3, 40, 50), empty, CLASS_NAMES, ax=axes[1]) is fig
    assert count_artists(fig, GID_BOX) == 0 and len(axes[1].images) == 1
    assert len(axes[0].images) == 0


def test_draw_label_maps_shows_palette_colours_and_legend():
    class_map = np.zeros((20, 30), dtype=np.uint8)
    class_map[5:10, 5:10] = 2
    class_map[4, 4:11] = 255
    object_map = np.where(class_map == 2, 1, class_map).astype(np.uint8)
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    fig = draw_label_maps(class_map, object_map, palette, class_names=CLASS_NAMES)
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
    rgb = label_map_to_rgb(index_map, palette)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 0], palette[255])


def test_best_detections_keeps_the_best_above_the_threshold_with_their_colours() -> None:
    detections = {"boxes": torch.arange(20.0).view(5, 4), "labels": torch.tensor([1, 2, 1, 3, 2]),
                  "scores": torch.tensor([0.2, 0.9, 0.6, 0.95, 0.4]), "image_id": "x"}
    subset, colors, num_above = best_detections(detections, score_threshold=0.5, max_count=2)
    assert num_above == 3  # 0.9, 0.6, 0.95
    assert subset["scores"].tolist() == pytest.approx([0.95, 0.9])
    assert subset["labels"].tolist() == [3, 2]
    assert torch.equal(subset["boxes"], detections["boxes"][[3, 1]]) and subset["image_id"] == "x"
    assert np.array_equal(colors, instance_colors(5)[[3, 1]])
    none, no_colors, zero = best_detections(detections, score_threshold=0.99)
    assert len(none["scores"]) == 0 and no_colors.shape == (0, 3) and zero == 0
