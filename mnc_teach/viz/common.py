"""What every drawing of the course shares: artist ids, colours, axes, images, boxes, PNG bytes.

Conventions of every module of :mod:`mnc_teach.viz`: a drawing keeps no state between calls;
a single-axes drawing takes an optional ``ax`` (given: it draws there and returns that axes'
figure; else it makes a figure with ``plt.subplots``, which the caller closes with
``plt.close(fig)``, as the widgets do); and every artist that stands for one object gets a
``gid``, so a test or a widget counts what was drawn with :func:`count_artists` instead of
guessing from the figure's internals:

    >>> fig = draw_instances(image, target, class_names)   # mnc_teach.viz.instances
    >>> count_artists(fig, GID_BOX)                         # number of instance boxes drawn

The helpers here are the pieces those drawings are made of; a notebook may use them too.

Shape legend (structures.py): H, W image size, R boxes.
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

__all__ = [
    "GID_BOX", "GID_GT", "GID_IOU_HIST", "PNG_DPI",
    "add_box", "add_gt_boxes", "as_numpy", "count_artists", "draw_iou_histograms", "figure_png",
    "find_artists", "fit_view", "image_hwc", "instance_colors", "mask_overlay", "new_axes",
    "zoom_to_box",
]

GID_BOX = "instance-box"  # one Rectangle per instance (or per box of a box drawing)
GID_GT = "gt-box"  # one Rectangle per ground-truth box, drawn dashed gold
GID_IOU_HIST = "iou-histogram"  # one step histogram per series of draw_iou_histograms
PNG_DPI = 80  # resolution of the PNG bytes the widgets send to the page
HIST_LINESTYLES = ("-", "--", ":", "-.")  # histograms that coincide stay visible


def find_artists(fig: Figure, gid: str) -> list[Artist]:
    """The artists drawn in the axes of ``fig`` with this ``gid`` (a collection is one artist)."""
    return [artist for ax in fig.axes for artist in ax.get_children() if artist.get_gid() == gid]


def count_artists(fig: Figure, gid: str) -> int:
    """Number of objects with this ``gid`` drawn in ``fig`` (a collection counts its paths)."""
    return sum(
        len(artist.get_paths()) if isinstance(artist, PatchCollection) else 1
        for artist in find_artists(fig, gid)
    )


def instance_colors(n: int) -> np.ndarray:
    """``n`` distinct colours, the same for the same index in every figure.

    Returns:
        colors (ndarray[n, 3], float64 in [0, 1]): colour of instance i is ``colors[i]``,
        cycling through matplotlib's 20 "tab20" colours (strong shade first).
    """
    palette = plt.get_cmap("tab20").colors
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # 10 strong colours, then their twins
    return np.array([palette[order[i % 20]] for i in range(n)], dtype=np.float64).reshape(n, 3)


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``(ax.figure, ax)`` when ``ax`` is given, else a new figure of ``figsize`` and its axes."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def image_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """Tensor[3, H, W] float in [0, 1] (or an ndarray [H, W, 3]) -> ndarray[H, W, 3] for imshow."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image Tensor[3, H, W], got shape {tuple(image.shape)}")
        return image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()  # (3, H, W) -> (H, W, 3)
    return np.asarray(image)


def as_numpy(x: Tensor | np.ndarray | list) -> np.ndarray:
    """A tensor (detached, on the CPU), an array or a list, as an ndarray."""
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def mask_overlay(mask: np.ndarray, color: tuple[float, ...] | np.ndarray,
                 alpha: float) -> np.ndarray:
    """Binary mask [H, W] -> RGBA [H, W, 4] float32 image: ``color`` where set, clear elsewhere."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    rgba[mask] = (*np.asarray(color, dtype=np.float32)[:3], alpha)
    return rgba


def add_box(ax: Axes, box, color, gid: str, *, linewidth: float = 1.5,
            linestyle: str = "-") -> None:
    """One unfilled Rectangle for ``box`` (4 numbers, xyxy pixels), with ``gid``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth,
                     linestyle=linestyle)
    rect.set_gid(gid)
    ax.add_patch(rect)


def add_gt_boxes(ax: Axes, gt_boxes: Tensor | np.ndarray | None, *, linewidth: float = 1.5) -> None:
    """The ground-truth boxes (Tensor[G, 4] xyxy pixels, or None for none) the way every picture
    draws them: dashed gold, gid ``GID_GT``."""
    if gt_boxes is None:
        return
    for box in as_numpy(gt_boxes).reshape(-1, 4):
        add_box(ax, box, "gold", GID_GT, linewidth=linewidth, linestyle="--")


def fit_view(ax: Axes, boxes: np.ndarray, margin: float) -> None:
    """Show all ``boxes`` [R, 4] plus ``margin`` (a fraction of the larger side), y downwards."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        boxes = np.array([[0.0, 0.0, 1.0, 1.0]])
    (x_min, y_min), (x_max, y_max) = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)
    pad = margin * max(x_max - x_min, y_max - y_min)
    ax.set_xlim(x_min - pad, x_max + pad)
    ax.set_ylim(y_max + pad, y_min - pad)  # image convention: row 0 at the top
    ax.set_aspect("equal")


def zoom_to_box(ax: Axes, box: np.ndarray, image_size: tuple[int, int], margin: float) -> None:
    """Show ``box`` (xyxy) plus ``margin`` of its larger side (at least 1 px), inside the image
    of ``image_size`` (H, W), y growing downwards."""
    x1, y1, x2, y2 = (float(v) for v in box)
    height, width = image_size
    pad = margin * max(x2 - x1, y2 - y1, 1.0)
    ax.set_xlim(max(x1 - pad, 0), min(x2 + pad, width))
    ax.set_ylim(min(y2 + pad, height), max(y1 - pad, 0))


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at PNG_DPI (what an ``ipywidgets.Image`` shows)."""
    buffer = io.BytesIO()
    # compress_level 1: encodes faster, the file is a little larger
    fig.savefig(buffer, format="png", dpi=PNG_DPI, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def draw_iou_histograms(
    ious: dict[str, Tensor], *, bins: int = 20, mark: float | None = 0.5, title: str = "",
    xlabel: str = "IoU", ax: Axes | None = None,
) -> Figure:
    """Histograms of IoUs in [0, 1], one outlined histogram per named series (its own colour and
    line style, so identical histograms stay visible), on one axes.

    Args:
        ious: ``{name: Tensor[n]}``; the legend gives each name with its n and mean.
        bins: equal bins over [0, 1].
        mark: a dotted vertical line there (e.g. the 0.5 of "good enough"); None: none.

    Returns:
        The figure; ``count_artists(fig, GID_IOU_HIST) == len(ious)``.
    """
    fig, ax = new_axes(ax, (5.0, 3.0))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for i, (name, values) in enumerate(ious.items()):
        values = as_numpy(values).reshape(-1).astype(np.float64)
        mean = f"mean {values.mean():.2f}" if len(values) else "empty"
        *_, patches = ax.hist(values, bins=edges, histtype="step", linewidth=1.8,
                              linestyle=HIST_LINESTYLES[i % len(HIST_LINESTYLES)],
                              label=f"{name} (n={len(values)}, {mean})")
        for patch in patches:
            patch.set_gid(GID_IOU_HIST)
    if mark is not None:
        ax.axvline(mark, color="0.4", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), xlabel=xlabel, ylabel="count", title=title)
    ax.legend(fontsize=8, loc="upper left")
    return fig
