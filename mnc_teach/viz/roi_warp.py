"""RoI warping (notebook 03): feature values, where the bilinear samples fall, a box's path.

    draw_values        a small array as a heat map, its value printed in every cell
    draw_roi_samples   a feature map, one RoI, its bins and the sample at each bin centre
    draw_box_path      how gradient descent moved a box towards a target

Conventions: :mod:`mnc_teach.viz.common`.

Feature maps are drawn with ``imshow``'s default placement: cell (row i, column j) is the
unit square centred at (j, i). That is exactly the feature coordinate system of
``roi_warp``: a box (x1, y1, x2, y2) in image pixels covers [x1*s - 0.5, x2*s - 0.5] there.

Shape legend (structures.py): h, w feature-map size, H, W image size, T steps of a path.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mnc_teach.roi_warp import ALIGNED_OFFSET, sample_positions
from mnc_teach.viz.common import add_box, as_numpy, image_hwc, new_axes

__all__ = [
    "GID_CELL_VALUE", "GID_PATH_BOX", "GID_ROI", "GID_SAMPLE", "GID_TARGET_BOX",
    "draw_box_path", "draw_roi_samples", "draw_values",
]

GID_CELL_VALUE = "cell-value"  # one text per cell of draw_values
GID_ROI = "roi-box"  # the RoI drawn by draw_roi_samples
GID_SAMPLE = "warp-sample"  # one marker per bilinear sample
GID_PATH_BOX = "path-box"  # one rectangle per drawn step of draw_box_path
GID_TARGET_BOX = "target-box"  # the target box of draw_box_path


def _feature_box(box, spatial_scale: float) -> np.ndarray:
    """Box [4] in image pixels -> the same box in feature-cell-centre coordinates (imshow's)."""
    return np.asarray([float(v) for v in box]) * spatial_scale - ALIGNED_OFFSET


def draw_values(values: Tensor | np.ndarray, ax: Axes | None = None, *, title: str | None = None,
                fmt: str = "{:.2f}", cmap: str = "viridis", vmin: float | None = None,
                vmax: float | None = None) -> Figure:
    """A small 2-D array as a heat map with its value printed in every cell.

    Args:
        values (Tensor[h, w] | ndarray[h, w]): e.g. a 4 x 4 feature map or a 2 x 2 RoI output.
        fmt: format of the printed numbers.
        vmin, vmax: colour range (pass the same range to compare several panels).

    Returns:
        The figure; every printed number has gid GID_CELL_VALUE.
    """
    array = as_numpy(values).astype(np.float64)
    if array.ndim != 2:
        raise ValueError(f"draw_values: expected a 2-D array [h, w], got shape {array.shape}")
    fig, ax = new_axes(ax, (0.6 * array.shape[1] + 1.2, 0.6 * array.shape[0] + 0.8))
    image = ax.imshow(array, cmap=cmap, vmin=vmin, vmax=vmax)
    middle = (image.norm.vmin + image.norm.vmax) / 2
    for (i, j), value in np.ndenumerate(array):
        text = ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                       color="black" if value > middle else "white")
        text.set_gid(GID_CELL_VALUE)
    ax.set_xticks(range(array.shape[1]))
    ax.set_yticks(range(array.shape[0]))
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def draw_roi_samples(feature: Tensor, box, output_size: int | tuple[int, int], spatial_scale: float,
                     *, ax: Axes | None = None, title: str | None = None,
                     show_values: bool = False) -> Figure:
    """A feature map, one RoI, its output bins and the bilinear sample at the centre of each bin.

    Args:
        feature (Tensor[h, w]): one channel of a feature map.
        box (sequence of 4 floats or Tensor[4]): (x1, y1, x2, y2) in image pixels.
        output_size: S or (S_h, S_w) of the warp (the grid before any max pooling).
        spatial_scale: feature cells per image pixel.
        show_values: print the value of every feature cell.

    Returns:
        The figure: the box (gid GID_ROI), dashed bin lines, and one marker per sample (gid
        GID_SAMPLE); samples further than one cell outside the map (which read 0) are crosses.
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    fmap = as_numpy(feature).astype(np.float64)
    height, width = fmap.shape
    fig, ax = new_axes(ax, (4, 4))
    if show_values:
        draw_values(fmap, ax=ax, fmt="{:g}")
    else:
        ax.imshow(fmap, cmap="viridis")
    x1, y1, x2, y2 = _feature_box(box, spatial_scale)
    add_box(ax, (x1, y1, x2, y2), "tab:red", GID_ROI, linewidth=2)
    for k in range(1, out_w):
        ax.plot([x1 + k * (x2 - x1) / out_w] * 2, [y1, y2], "--", color="tab:red", linewidth=0.7)
    for k in range(1, out_h):
        ax.plot([x1, x2], [y1 + k * (y2 - y1) / out_h] * 2, "--", color="tab:red", linewidth=0.7)
    box_t = torch.as_tensor([float(v) for v in box], dtype=torch.float64)
    xs = sample_positions(box_t[0:1], box_t[2:3], num_cells=out_w,
                          spatial_scale=spatial_scale)[0].numpy()  # (S_w,)
    ys = sample_positions(box_t[1:2], box_t[3:4], num_cells=out_h,
                          spatial_scale=spatial_scale)[0].numpy()  # (S_h,)
    for y in ys:
        for x in xs:
            outside = x < -1 or x > width or y < -1 or y > height
            ax.plot([x], [y], "x" if outside else "o", color="white", markeredgecolor="black",
                    markersize=6, gid=GID_SAMPLE)
    pad = 1.0
    ax.set_xlim(min(-0.5, x1) - pad, max(width - 0.5, x2) + pad)
    ax.set_ylim(max(height - 0.5, y2) + pad, min(-0.5, y1) - pad)
    ax.set_title(title or f"{out_h} x {out_w} samples, one per bin centre", fontsize=9)
    return fig


def draw_box_path(image: Tensor, path: Tensor, target_box: Tensor | None = None, *,
                  ax: Axes | None = None, title: str | None = None, max_boxes: int = 12) -> Figure:
    """How gradient descent moved a box: start (red), some steps, end (green), target (dashed).

    Args:
        image (Tensor[3, H, W], float in [0, 1]) or a feature map (Tensor[h, w]) to draw under
            the boxes.
        path (Tensor[T, 4], xyxy in the pixels of ``image``): the box after each step,
            path[0] = start.
        target_box (Tensor[4] | None): where the box should go.
        max_boxes: at most this many boxes drawn along the path (always the first and the last).

    Returns:
        The figure: drawn boxes have gid GID_PATH_BOX, the target GID_TARGET_BOX; the trajectory
        of the box centre is a line.
    """
    fig, ax = new_axes(ax, (4.5, 4.5))
    if image.ndim == 3:
        ax.imshow(image_hwc(image), interpolation="nearest")
    else:
        ax.imshow(as_numpy(image), cmap="viridis")
    boxes = as_numpy(path).reshape(-1, 4)
    drawn = min(max_boxes, len(boxes))
    steps = np.unique(np.linspace(0, len(boxes) - 1, drawn).round().astype(int))
    colors = plt.get_cmap("autumn")(np.linspace(0, 1, len(steps)))
    for n, (step, color) in enumerate(zip(steps, colors, strict=True)):
        last = n == len(steps) - 1
        add_box(ax, boxes[step], "tab:green" if last else color, GID_PATH_BOX,
                linewidth=2 if n == 0 or last else 0.8)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (T, 2)
    ax.plot(centres[:, 0], centres[:, 1], "-", color="white", linewidth=1)
    if target_box is not None:
        add_box(ax, as_numpy(target_box).reshape(4), "white", GID_TARGET_BOX, linewidth=1.5,
                linestyle="--")
    ax.set_axis_off()
    if not title:
        title = f"{len(boxes) - 1} steps: start (thick red) to end (green); target dashed"
    ax.set_title(title, fontsize=9)
    return fig
