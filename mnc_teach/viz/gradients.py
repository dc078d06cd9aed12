"""Box-gradient pictures (notebook 06): which way the later stages' losses push the boxes.

    draw_box_gradients   boxes on the image, an arrow at the middle of each edge: the direction
                         in which gradient descent moves that edge, one panel per loss group
    edge_arrows          where those arrows start and how long they are (what is drawn)

The gradient of a loss L with respect to a box (x1, y1, x2, y2) is four numbers; gradient
descent moves each coordinate by -dL/dcoordinate. So the arrow at the left edge is horizontal,
from (x1, y_centre) by -dL/dx1 (scaled), the one at the top edge vertical from (x_centre, y1)
by -dL/dy1, and so on: an arrow pointing out of the box says "this loss wants the box larger on
that side". By default each panel has its own scale (its longest arrow has the same length in
every panel, and the title gives the largest gradient), so the direction of a small loss's push
stays visible; ``shared_scale=True`` draws every panel on one scale, to compare sizes.

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, B boxes.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from mnc_teach.viz.common import add_box, add_gt_boxes, as_numpy, image_hwc, instance_colors

__all__ = ["ARROW_FRACTION", "GID_EDGE_ARROW", "GID_GRAD_BOX", "draw_box_gradients", "edge_arrows"]

GID_GRAD_BOX = "grad-box"  # one Rectangle per box, in every panel
GID_EDGE_ARROW = "edge-arrow"  # one arrow per (box, edge) whose gradient is not 0
ARROW_FRACTION = 0.2  # the longest arrow of a figure is this fraction of the image's shorter side


def edge_arrows(boxes: np.ndarray, gradients: np.ndarray, scale: float) -> np.ndarray:
    """Start points and displacements of the four edge arrows of every box.

    Args:
        boxes (ndarray[B, 4], xyxy pixels); gradients (ndarray[B, 4]): dL/d(x1, y1, x2, y2).
        scale: pixels of arrow per unit of gradient.

    Returns:
        ndarray[B, 4, 4]: for box b and edge e (x1, y1, x2, y2), ``(x, y, dx, dy)``: the middle
        of the edge and ``-scale * gradient`` along the edge's normal (x edges move in x, y
        edges in y).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    move = -scale * np.asarray(gradients, dtype=np.float64).reshape(-1, 4)  # (B, 4)
    x1, y1, x2, y2 = boxes.T
    xc, yc = (x1 + x2) / 2, (y1 + y2) / 2
    zero = np.zeros_like(x1)
    arrows = np.stack([
        np.stack([x1, yc, move[:, 0], zero], axis=1),  # left edge, moves in x
        np.stack([xc, y1, zero, move[:, 1]], axis=1),  # top edge, moves in y
        np.stack([x2, yc, move[:, 2], zero], axis=1),  # right edge
        np.stack([xc, y2, zero, move[:, 3]], axis=1),  # bottom edge
    ], axis=1)  # (B, 4 edges, 4)
    return arrows


def draw_box_gradients(
    image: Tensor, boxes: Tensor, gradients: Mapping[str, Tensor], gt_boxes: Tensor | None = None,
    *, arrow_fraction: float = ARROW_FRACTION, shared_scale: bool = False,
    title: str | None = None,
) -> Figure:
    """The same boxes in one panel per loss, with the direction gradient descent moves each edge.

    Args:
        image (Tensor[3, H, W], float in [0, 1]); boxes (Tensor[B, 4], xyxy pixels).
        gradients: ``panel title -> Tensor[B, 4]``, each loss's dL/d(x1, y1, x2, y2) of the
            boxes, e.g. ``{"L2 (mask)": ..., "L3 (classes)": ...}``.
        gt_boxes (Tensor[G, 4] | None): drawn dashed gold (gid ``GID_GT``).
        arrow_fraction: the longest arrow of a panel (``shared_scale``: of the figure), as a
            fraction of min(H, W).
        shared_scale: one scale (pixels per unit of gradient) for every panel; else each panel
            is scaled to its own largest gradient.

    Returns:
        The figure: per panel, B boxes (GID_GRAD_BOX, box b in colour b in every panel) and an
        arrow (GID_EDGE_ARROW, an annotation from the edge's middle to its moved position) per
        edge with a nonzero gradient. Each panel's x label gives its scale (pixels of arrow per
        unit of gradient).
    """
    box_array = as_numpy(boxes).reshape(-1, 4)
    grads = {name: as_numpy(g).reshape(-1, 4) for name, g in gradients.items()}
    if not grads:
        raise ValueError("draw_box_gradients: no gradients; pass {panel title: Tensor[B, 4]}")
    for name, g in grads.items():
        if g.shape != box_array.shape:
            raise ValueError(f"draw_box_gradients: {name!r} has {len(g)} gradients for "
                             f"{len(box_array)} boxes; pass one (dx1, dy1, dx2, dy2) per box")
    pixels = image_hwc(image)
    height, width = pixels.shape[:2]
    largest = {name: float(np.abs(g).max()) if g.size else 0.0 for name, g in grads.items()}
    if shared_scale:
        largest = dict.fromkeys(largest, max(largest.values()))
    colors = instance_colors(len(box_array))
    fig, axes = plt.subplots(1, len(grads), figsize=(3.6 * len(grads), 3.9), squeeze=False)
    for ax, (name, g) in zip(axes[0], grads.items(), strict=True):
        scale = arrow_fraction * min(height, width) / largest[name] if largest[name] > 0 else 0.0
        ax.imshow(pixels, interpolation="nearest")
        add_gt_boxes(ax, gt_boxes)
        for b, (box, color) in enumerate(zip(box_array, colors, strict=True)):
            add_box(ax, box, color, GID_GRAD_BOX, linewidth=1.2)
            for x, y, dx, dy in edge_arrows(box[None], g[b : b + 1], scale)[0]:
                if dx == 0 and dy == 0:
                    continue
                arrow = ax.annotate("", xy=(x + dx, y + dy), xytext=(x, y),
                                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.8,
                                                "shrinkA": 0, "shrinkB": 0})
                arrow.set_gid(GID_EDGE_ARROW)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}\nlargest |dL/d(edge)| {np.abs(g).max() if g.size else 0.0:.2e}",
                     fontsize=9)
        ax.set_xlabel(f"arrow = -dL/d(edge) x {scale:.3g} px", fontsize=8)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94) if title is not None else None)
    return fig
