"""viz.roi_warp: values printed where they are, bilinear samples drawn where roi_warp reads them
(checked against the RoI's bins by hand), and a box's path from start to end."""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import pytest
import torch

from mnc_teach.viz.common import count_artists, find_artists
from mnc_teach.viz.roi_warp import (
    GID_CELL_VALUE,
    GID_PATH_BOX,
    GID_ROI,
    GID_SAMPLE,
    GID_TARGET_BOX,
    draw_box_path,
    draw_roi_samples,
    draw_values,
)


def test_draw_values_prints_each_value_at_its_cell_in_a_readable_colour():
    values = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    fig = draw_values(values, title="grid", fmt="{:.1f}")
    texts = find_artists(fig, GID_CELL_VALUE)
    assert count_artists(fig, GID_CELL_VALUE) == 6
    assert [(t.get_position(), t.get_text()) for t in texts] == [
        ((j, i), f"{float(values[i, j]):.1f}") for i in range(2) for j in range(3)]
    # dark text on bright cells (above the middle of the colour range), white on dark ones
    colours = ["black" if matplotlib.colors.same_color(t.get_color(), "black") else "white"
               for t in texts]
    assert colours == ["white", "white", "white", "black", "black", "black"]
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), values.numpy())
    assert fig.axes[0].get_title() == "grid"
    with pytest.raises(ValueError, match="draw_values: expected a 2-D array"):
        draw_values(torch.zeros(2, 2, 2))


def test_draw_roi_samples_puts_one_sample_at_the_centre_of_each_bin():
    feature = torch.arange(16.0).reshape(4, 4)
    box = (0.5, 0.5, 3.5, 2.5)  # image pixels, spatial scale 1: feature coordinates minus 0.5
    fig = draw_roi_samples(feature, box, (2, 3), 1.0, show_values=True)
    (roi,) = find_artists(fig, GID_ROI)
    assert (roi.get_xy(), roi.get_width(), roi.get_height()) == ((0.0, 0.0), 3.0, 2.0)
    samples = find_artists(fig, GID_SAMPLE)
    assert len(samples) == 6 and count_artists(fig, GID_CELL_VALUE) == 16
    # bins of 1 x 1 feature cells: centres at x 0.5, 1.5, 2.5 and y 0.5, 1.5
    positions = [(float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in samples]
    assert positions == [(x + 0.5, y + 0.5) for y in range(2) for x in range(3)]
    assert all(m.get_marker() == "o" for m in samples)  # all inside the map


def test_draw_roi_samples_marks_samples_outside_the_map_with_crosses():
    fig = draw_roi_samples(torch.zeros(4, 4), (-8.0, 0.0, 4.0, 4.0), 2, 1.0, title="outside")
    markers = [m.get_marker() for m in find_artists(fig, GID_SAMPLE)]
    assert markers == ["x", "o", "x", "o"]  # x = -5.5 is more than a cell left of the map
    assert fig.axes[0].get_title() == "outside"


def test_draw_box_path_draws_the_chosen_steps_start_to_end_and_the_target():
    path = torch.tensor([[10.0, 10, 30, 30], [11, 10, 31, 30], [12, 11, 31, 31], [14, 12, 34, 32]])
    target = torch.tensor([15.0, 12, 35, 32])
    fig = draw_box_path(torch.rand(3, 40, 40), path, target, max_boxes=3)
    boxes = find_artists(fig, GID_PATH_BOX)
    assert count_artists(fig, GID_PATH_BOX) == 3
    drawn = [[b.get_x(), b.get_y(), b.get_x() + b.get_width(), b.get_y() + b.get_height()]
             for b in boxes]
    assert drawn == [path[0].tolist(), path[2].tolist(), path[3].tolist()]  # steps 0, 1.5->2, 3
    assert [b.get_linewidth() for b in boxes] == [2, 0.8, 2]  # start and end thick
    assert matplotlib.colors.same_color(boxes[-1].get_edgecolor(), "tab:green")
    (target_box,) = find_artists(fig, GID_TARGET_BOX)
    assert target_box.get_linestyle() == "--"
    (centres,) = [line for line in fig.axes[0].lines]
    np.testing.assert_allclose(centres.get_xdata(), [20.0, 21.0, 21.5, 24.0])
    assert fig.axes[0].get_title() == (
        "3 steps: start (thick red) to end (green); target dashed")


def test_draw_box_path_on_a_feature_map():
    fig = draw_box_path(torch.rand(5, 5), torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]]))
    assert count_artists(fig, GID_PATH_BOX) == 2 and count_artists(fig, GID_TARGET_BOX) == 0
    assert fig.axes[0].images[0].get_array().shape == (5, 5)


# ---- one artist per object, and a clear error for a 3-d grid ----


def test_drawings_show_one_artist_per_object() -> None:
    grid = torch.arange(16, dtype=torch.float32).reshape(4, 4) + 1
    fig = draw_values(grid)
    assert count_artists(fig, GID_CELL_VALUE) == 16
    fig2 = draw_roi_samples(grid, (0.5, 0.5, 3.5, 3.5), (2, 3), 1.0)
    assert count_artists(fig2, GID_ROI) == 1 and count_artists(fig2, GID_SAMPLE) == 6
    path = torch.tensor([[10.0, 10, 30, 30], [11, 10, 31, 30], [12, 11, 31, 31]])
    target_box = torch.tensor([12.0, 12, 32, 32])
    fig3 = draw_box_path(torch.rand(3, 40, 40), path, target_box=target_box, max_boxes=2)
    assert count_artists(fig3, GID_PATH_BOX) == 2 and count_artists(fig3, GID_TARGET_BOX) == 1
    with pytest.raises(ValueError, match="draw_values"):
        draw_values(torch.zeros(2, 2, 2))
