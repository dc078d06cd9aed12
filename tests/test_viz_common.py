"""viz.common: the shared pieces of every drawing (counting by gid, colours, axes, images,
boxes, views, PNG bytes) do exactly what they say."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from mnc_teach.viz.common import (
    GID_IOU_HIST,
    PNG_DPI,
    add_box,
    as_numpy,
    count_artists,
    draw_iou_histograms,
    figure_png,
    find_artists,
    fit_view,
    image_hwc,
    instance_colors,
    mask_overlay,
    new_axes,
    zoom_to_box,
)


def test_count_artists_counts_single_artists_and_the_paths_of_a_collection():
    fig, (left, right) = plt.subplots(1, 2)
    add_box(left, [0, 0, 1, 1], "red", "mine")
    add_box(right, [0, 0, 2, 2], "red", "mine")
    add_box(right, [0, 0, 3, 3], "red", "other")
    rects = [Rectangle((0, 0), 1, 1) for _ in range(5)]
    collection = PatchCollection(rects)
    collection.set_gid("many")
    right.add_collection(collection)
    assert count_artists(fig, "mine") == 2 and count_artists(fig, "other") == 1
    assert count_artists(fig, "many") == 5 and count_artists(fig, "absent") == 0
    assert find_artists(fig, "many") == [collection]  # find: the collection is one artist
    assert [a.axes for a in find_artists(fig, "mine")] == [left, right]


def test_instance_colors_are_stable_and_distinct():
    colors = instance_colors(25)
    assert colors.shape == (25, 3) and (colors >= 0).all() and (colors <= 1).all()
    np.testing.assert_array_equal(colors, instance_colors(25))
    np.testing.assert_array_equal(colors[:5], instance_colors(5))  # prefix-consistent
    assert len({tuple(c) for c in colors[:20]}) == 20
    np.testing.assert_array_equal(colors[20], colors[0])  # cycles after 20
    assert instance_colors(0).shape == (0, 3)


def test_new_axes_reuses_a_given_axes_or_makes_a_figure_of_the_size():
    fig, ax = plt.subplots()
    assert new_axes(ax, (1.0, 1.0)) == (fig, ax)
    made, made_ax = new_axes(None, (3.0, 2.0))
    assert made is not fig and made_ax.figure is made
    assert tuple(made.get_size_inches()) == (3.0, 2.0)


def test_image_hwc_permutes_and_clamps_and_names_a_wrong_shape():
    image = torch.tensor([[[0.0, 2.0]], [[0.5, 0.5]], [[-1.0, 1.0]]])  # (3, 1, 2)
    pixels = image_hwc(image)
    assert pixels.shape == (1, 2, 3)
    np.testing.assert_array_equal(pixels[0, 1], [1.0, 0.5, 1.0])  # clamped to [0, 1]
    np.testing.assert_array_equal(pixels[0, 0], [0.0, 0.5, 0.0])
    array = np.zeros((4, 5, 3))
    assert image_hwc(array) is array  # an ndarray passes through
    with pytest.raises(ValueError, match=r"Tensor\[3, H, W\], got shape \(1, 4, 4\)"):
        image_hwc(torch.zeros(1, 4, 4))


def test_as_numpy_of_a_tensor_that_needs_grad_a_list_and_an_array():
    tensor = torch.ones(2, requires_grad=True) * 3
    np.testing.assert_array_equal(as_numpy(tensor), [3.0, 3.0])
    np.testing.assert_array_equal(as_numpy([1, 2]), [1, 2])


def test_mask_overlay_is_the_colour_where_set_and_clear_elsewhere():
    mask = np.array([[True, False], [False, True]])
    rgba = mask_overlay(mask, (0.2, 0.4, 0.6, 1.0), 0.5)  # a 4th channel of the colour is ignored
    assert rgba.shape == (2, 2, 4) and rgba.dtype == np.float32
    np.testing.assert_allclose(rgba[0, 0], [0.2, 0.4, 0.6, 0.5])
    np.testing.assert_array_equal(rgba[0, 1], [0, 0, 0, 0])
    assert int((rgba[..., 3] > 0).sum()) == 2


def test_add_box_draws_one_rectangle_with_its_style_and_gid():
    fig, ax = plt.subplots()
    add_box(ax, torch.tensor([2.0, 3.0, 7.0, 11.0]), "tab:green", "g", linewidth=2.5,
            linestyle="--")
    (rect,) = ax.patches
    assert (rect.get_xy(), rect.get_width(), rect.get_height()) == ((2.0, 3.0), 5.0, 8.0)
    assert rect.get_gid() == "g" and rect.get_linewidth() == 2.5 and not rect.get_fill()
    assert rect.get_linestyle() == "--"


def test_fit_view_shows_the_boxes_plus_a_margin_with_y_downwards():
    fig, ax = plt.subplots()
    fit_view(ax, np.array([[0, 0, 10, 20], [5, 5, 30, 10]]), margin=0.1)  # span 30 x 20 -> pad 3
    assert ax.get_xlim() == (-3.0, 33.0) and ax.get_ylim() == (23.0, -3.0)
    fit_view(ax, np.zeros((0, 4)), margin=0.0)  # nothing to fit: the unit square
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_ylim() == (1.0, 0.0)


def test_zoom_to_box_pads_by_the_larger_side_and_stays_inside_the_image():
    fig, ax = plt.subplots()
    zoom_to_box(ax, np.array([10.0, 20.0, 30.0, 30.0]), (100, 50), margin=0.25)  # pad 5
    assert ax.get_xlim() == (5.0, 35.0) and ax.get_ylim() == (35.0, 15.0)
    zoom_to_box(ax, np.array([0.0, 0.0, 48.0, 96.0]), (100, 50), margin=0.25)  # pad 24: clipped
    assert ax.get_xlim() == (0.0, 50.0) and ax.get_ylim() == (100.0, 0.0)


def test_figure_png_is_a_png_at_png_dpi():
    fig = Figure(figsize=(2.0, 1.5))
    fig.subplots().plot([0, 1], [1, 0])
    data = figure_png(fig)
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as png:
        assert png.size == (2 * PNG_DPI, int(1.5 * PNG_DPI))


def test_draw_iou_histograms_one_histogram_per_series_with_counts_and_means():
    fig = draw_iou_histograms({"a": torch.tensor([0.1, 0.3, 0.35]), "b": torch.tensor([0.9])},
                              bins=10, title="t")
    ax = fig.axes[0]
    assert count_artists(fig, GID_IOU_HIST) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "a (n=3, mean 0.25)", "b (n=1, mean 0.90)"]
    assert ax.get_xlim() == (0, 1) and ax.get_title() == "t"
    plt.close(fig)


def test_add_gt_boxes_draws_each_ground_truth_box_dashed_gold() -> None:
    from matplotlib.colors import to_rgba

    from mnc_teach.viz.common import GID_GT, add_gt_boxes, find_artists

    fig, ax = plt.subplots()
    add_gt_boxes(ax, None)  # no ground truth: nothing drawn
    assert find_artists(fig, GID_GT) == []
    boxes = torch.tensor([[1.0, 2.0, 5.0, 9.0], [0.0, 0.0, 3.0, 3.0]], requires_grad=True)
    add_gt_boxes(ax, boxes, linewidth=2.5)
    drawn = find_artists(fig, GID_GT)
    assert [tuple(r.get_xy()) + (r.get_width(), r.get_height()) for r in drawn] == [
        (1.0, 2.0, 4.0, 7.0), (0.0, 0.0, 3.0, 3.0)]
    assert all(r.get_linestyle() == "--" and r.get_linewidth() == 2.5 for r in drawn)
    assert all(r.get_edgecolor() == to_rgba("gold") for r in drawn)
