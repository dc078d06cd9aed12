"""Pure matplotlib drawing functions for the course; each returns a ``Figure``.

Nothing here keeps state between calls. Every function takes an optional ``ax``: when it
is given, the drawing goes into that axes and its figure is returned; otherwise a new
figure is created with ``plt.subplots`` (close it with ``plt.close(fig)`` when done, the
widgets do). ``widgets.py`` calls these functions; nothing here imports widgets.

Every artist that stands for one object gets a ``gid`` from the constants below, so a
test or a widget can count what was drawn with :func:`count_artists` instead of
guessing from the figure's internals:

    >>> fig = draw_instances(image, target, class_names)
    >>> count_artists(fig, GID_BOX)  # number of instance boxes drawn

Shape legend (structures.py): H, W image size, G instances, D detections, R anchors/boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import Tensor

from mnc_teach.boxes import box_area, box_iou
from mnc_teach.data.voc import voc_colormap

__all__ = [
    "moving_average",
    "GID_BOX", "GID_MASK", "GID_LABEL", "GID_IGNORE", "GID_ANCHORS", "GID_GT",
    "instance_colors", "best_detections", "count_artists", "label_map_to_rgb", "draw_instances",
    "draw_label_maps", "draw_anchors", "draw_boxes_and_iou", "draw_box_coding", "draw_nms",
]

# Artist ids (matplotlib ``gid``) used to count what a figure shows.
GID_BOX = "instance-box"
GID_MASK = "instance-mask"
GID_LABEL = "instance-label"
GID_IGNORE = "ignore-pixels"
GID_ANCHORS = "anchors"  # one PatchCollection per anchor kind; gid "anchors-<kind>"
GID_GT = "gt-box"

MASK_DISPLAY_THRESHOLD = 0.5  # soft masks [D, 1, H, W] are shown binarised at 0.5 (as when pasting masks)
MASK_ALPHA = 0.45
VOID_COLOR = (224, 224, 192)  # VOC's colour for index 255 ("void"), cream
ANCHOR_STYLE = {  # kind -> (colour, line alpha, line width); positives stand out, negatives stay faint
    "positive": ("tab:green", 0.9, 1.5),
    "negative": ("tab:red", 0.3, 0.6),
    "ignored": ("0.5", 0.3, 0.6),
    "all": ("tab:purple", 0.9, 1.2),
}
DEFAULT_MAX_PER_KIND = 100  # draw at most this many anchors of each kind (a 128x128 image has ~2k anchors)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points; the first points average the fewer points there are.

    Returns:
        ndarray[len(values)], float64: entry i is ``mean(values[max(0, i - window + 1) : i + 1])``.
    """
    if window < 1:
        raise ValueError(f"viz.moving_average: window must be >= 1, got {window}")
    values = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    stop = np.arange(1, len(values) + 1)
    start = np.maximum(stop - window, 0)
    return (cumulative[stop] - cumulative[start]) / (stop - start)


def instance_colors(n: int) -> np.ndarray:
    """``n`` distinct colours, the same for the same index in every figure.

    Returns:
        colors (ndarray[n, 3], float64 in [0, 1]): colour of instance i is ``colors[i]``,
        cycling through matplotlib's 20 "tab20" colours (strong shade first).
    """
    palette = plt.get_cmap("tab20").colors
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # 10 strong colours, then their light twins
    return np.array([palette[order[i % 20]] for i in range(n)], dtype=np.float64).reshape(n, 3)


def best_detections(detections: dict, score_threshold: float = 0.0,
                    max_count: int | None = None) -> tuple[dict, np.ndarray, int]:  # fmt: skip
    """The (at most ``max_count``) highest-scoring detections with ``score >= score_threshold``, best first.

    Returns:
        ``(subset, colors, num_above)``: the detection dict restricted to them (tensors indexed,
        other values kept), the colour each has among all detections (``instance_colors``, so a
        detection keeps its colour whatever the threshold), and how many scored >= the threshold.
    """
    scores = torch.as_tensor(detections["scores"])
    above = torch.nonzero(scores >= score_threshold).flatten()  # (A,)
    keep = above[scores[above].argsort(descending=True, stable=True)[:max_count]]  # (<= max_count,)
    subset = {key: value[keep] if isinstance(value, Tensor) else value for key, value in detections.items()}
    return subset, instance_colors(len(scores))[keep.numpy()], len(above)


def count_artists(fig: Figure, gid: str) -> int:
    """Number of objects with this ``gid`` drawn in ``fig`` (a collection counts its paths)."""
    total = 0
    for ax in fig.axes:
        for artist in ax.get_children():
            if artist.get_gid() != gid:
                continue
            total += len(artist.get_paths()) if isinstance(artist, PatchCollection) else 1
    return total


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _image_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """Tensor[3, H, W] float in [0, 1] (or an ndarray [H, W, 3]) -> ndarray[H, W, 3] for imshow."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an image Tensor[3, H, W], got shape {tuple(image.shape)}")
        return image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()  # (3, H, W) -> (H, W, 3)
    return np.asarray(image)


def _as_numpy(x: Tensor | np.ndarray | list) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _overlay(mask: np.ndarray, color: tuple[float, ...] | np.ndarray, alpha: float) -> np.ndarray:
    """Binary mask [H, W] -> RGBA [H, W, 4] float image, ``color`` where the mask is set, clear elsewhere."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
    rgba[mask] = (*np.asarray(color, dtype=np.float32)[:3], alpha)
    return rgba


def _add_box(ax: Axes, box, color, gid: str, linewidth: float = 1.5, linestyle: str = "-") -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=linewidth, linestyle=linestyle)
    rect.set_gid(gid)
    ax.add_patch(rect)


def _fit_view(ax: Axes, boxes: np.ndarray, margin: float) -> None:
    """Show all ``boxes`` [R, 4] plus ``margin`` (a fraction of the larger side), y growing downwards."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        boxes = np.array([[0.0, 0.0, 1.0, 1.0]])
    (x_min, y_min), (x_max, y_max) = boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)
    pad = margin * max(x_max - x_min, y_max - y_min)
    ax.set_xlim(x_min - pad, x_max + pad)
    ax.set_ylim(y_max + pad, y_min - pad)  # image convention: row 0 at the top
    ax.set_aspect("equal")


def draw_instances(
    image: Tensor, instances: dict, class_names: list[str] | tuple[str, ...], ax: Axes | None = None,
    show_boxes: bool = True, show_masks: bool = True, show_labels: bool = True, show_ignore: bool = False,
    score_threshold: float = 0.0, title: str | None = None, colors: np.ndarray | None = None,
) -> Figure:
    """Draw a target or a detection on its image.

    Args:
        image (Tensor[3, H, W], float in [0, 1]).
        instances: a Target (boxes, labels, masks uint8 [G, H, W], optional ignore [H, W])
            or a Detection (boxes, labels, scores, soft masks float [D, 1, H, W]).
        class_names: ``class_names[label]`` names a label; index 0 is background.
        ax: draw into this axes instead of a new figure.
        show_boxes, show_masks, show_labels: what to draw for each instance.
        show_ignore: shade the void pixels (``instances["ignore"] == 1``) in VOC's cream.
        score_threshold: when ``scores`` are present, draw only instances with
            ``score >= score_threshold``; scores are printed next to the class name.
        title: axes title (default: the image id and the number of instances drawn).
        colors (ndarray[n, 3] | None): colour of each instance; default ``instance_colors(n)``.
            Pass a subset of a larger palette to keep colours stable when filtering.

    Returns:
        The figure. Instance ``i`` gets colour ``colors[i]``; count what was
        drawn with ``count_artists(fig, GID_BOX)`` (also GID_MASK, GID_LABEL, GID_IGNORE).
    """
    fig, ax = _new_axes(ax, (4.5, 4.5))
    pixels = _image_hwc(image)
    ax.imshow(pixels, interpolation="nearest")
    boxes = _as_numpy(instances.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
    labels = _as_numpy(instances.get("labels", np.zeros((0,), dtype=np.int64))).reshape(-1)
    scores = instances.get("scores")
    scores = None if scores is None else _as_numpy(scores).reshape(-1)
    masks = instances.get("masks")
    if masks is not None:
        masks = _as_numpy(masks)
        if masks.ndim == 4:  # soft detection masks (D, 1, H, W) -> (D, H, W) binary
            masks = masks[:, 0] >= MASK_DISPLAY_THRESHOLD
        masks = masks.astype(bool)

    keep = np.arange(len(boxes)) if scores is None else np.flatnonzero(scores >= score_threshold)
    colors = instance_colors(len(boxes)) if colors is None else np.asarray(colors)
    for i in keep:
        color = colors[i]
        if show_masks and masks is not None:
            overlay = ax.imshow(_overlay(masks[i], color, MASK_ALPHA), interpolation="nearest")
            overlay.set_gid(GID_MASK)
        if show_boxes:
            _add_box(ax, boxes[i], color, GID_BOX)
        if show_labels:
            name = class_names[int(labels[i])] if int(labels[i]) < len(class_names) else str(int(labels[i]))
            text = name if scores is None else f"{name} {scores[i]:.2f}"
            label = ax.text(boxes[i, 0], boxes[i, 1], text, fontsize=8, color="white", va="bottom",
                            bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
            label.set_gid(GID_LABEL)
    if show_ignore and instances.get("ignore") is not None:
        void = _as_numpy(instances["ignore"]).astype(bool)
        overlay = ax.imshow(_overlay(void, np.array(VOID_COLOR) / 255, 0.9), interpolation="nearest")
        overlay.set_gid(GID_IGNORE)

    height, width = pixels.shape[:2]
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    if title is None:
        image_id = instances.get("image_id", "")
        title = f"{image_id}  ({len(keep)} instance{'' if len(keep) == 1 else 's'})".strip()
    ax.set_title(title, fontsize=9)
    return fig


def label_map_to_rgb(index_map: np.ndarray | Tensor, palette: np.ndarray) -> np.ndarray:
    """Colour an index map [H, W] (uint8 values 0..255) with a palette [256, 3] uint8 -> [H, W, 3] uint8."""
    return np.asarray(palette, dtype=np.uint8)[_as_numpy(index_map).astype(np.int64)]


def draw_label_maps(
    class_map: np.ndarray | Tensor, object_map: np.ndarray | Tensor, palette: np.ndarray | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> Figure:
    """Show a VOC ``SegmentationClass`` and ``SegmentationObject`` PNG side by side, as stored.

    The pixel *value* is the label (class id, or instance number), and the PNG's palette
    gives each value its colour; 255 is "void" (VOC's cream border band).

    Args:
        class_map (ndarray[H, W], uint8): ``np.array(Image.open(class_png))``.
        object_map (ndarray[H, W], uint8): ``np.array(Image.open(object_png))``.
        palette (ndarray[256, 3], uint8): default ``voc_colormap()``.
        class_names: names for the class-map legend (``class_names[k]``; 255 is "void").

    Returns:
        A figure with two image axes; each legend has one entry per value present.
    """
    if palette is None:
        palette = voc_colormap(256)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax, index_map, kind in zip(axes, (class_map, object_map), ("class", "object"), strict=True):
        index_map = _as_numpy(index_map)
        ax.imshow(label_map_to_rgb(index_map, palette), interpolation="nearest")
        handles = []
        for value in np.unique(index_map):
            if value == 255:
                name = "255 void"
            elif value == 0:
                name = "0 background"
            elif kind == "class" and class_names is not None and value < len(class_names):
                name = f"{value} {class_names[value]}"
            else:
                name = f"{value} {'instance ' + str(value) if kind == 'object' else ''}".strip()
            handles.append(Patch(facecolor=np.asarray(palette[value]) / 255, edgecolor="k", label=name))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        ax.set_title(f"Segmentation{kind.capitalize()} (pixel values)", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def _pick(indices: np.ndarray, max_count: int, seed: int) -> np.ndarray:
    """At most ``max_count`` of ``indices``, chosen at random with a fixed seed (same picture every time)."""
    if len(indices) <= max_count:
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, size=max_count, replace=False))


def draw_anchors(
    image: Tensor | None, anchors: Tensor, labels: Tensor | None = None, gt_boxes: Tensor | None = None,
    ax: Axes | None = None, max_per_kind: int = DEFAULT_MAX_PER_KIND, image_size: tuple[int, int] | None = None,
    seed: int = 0, title: str | None = None,
) -> Figure:
    """Draw anchors, coloured by their matching label when given.

    Args:
        image (Tensor[3, H, W] | None): background image; ``None`` draws on a white canvas
            of ``image_size`` (H, W), or fitted to the anchors when that is ``None`` too.
        anchors (Tensor[R, 4], float32, xyxy pixels).
        labels (Tensor[R], int64 in {1, 0, -1} | None): from ``matching.label_anchors``:
            positives green, negatives faint red, ignored grey. ``None``: all in blue.
        gt_boxes (Tensor[G, 4] | None): ground-truth boxes, drawn as thick dashed yellow.
        max_per_kind: at most this many anchors of each kind are drawn (a fixed-seed random
            subset), so a picture of 20k anchors stays readable; the legend gives full counts.
        seed: seed of that subset.

    Returns:
        The figure; anchors of kind k are one PatchCollection with gid ``"anchors-<k>"``
        (``count_artists(fig, "anchors-positive")``), GT boxes have gid GID_GT.
    """
    owns_figure = ax is None
    fig, ax = _new_axes(ax, (6.4, 4.2))
    anchors_np = _as_numpy(anchors).reshape(-1, 4)
    if image is not None:
        pixels = _image_hwc(image)
        ax.imshow(pixels, interpolation="nearest")
        image_size = pixels.shape[:2]
    if image_size is not None:
        _fit_view(ax, [[0, 0, image_size[1], image_size[0]]], margin=0.0)
    else:  # fitted to the anchors, with a margin so the outermost edges do not sit on the frame
        _fit_view(ax, anchors_np, margin=0.05)

    if labels is None:
        kinds = {"all": np.arange(len(anchors_np))}
    else:
        labels_np = _as_numpy(labels).reshape(-1)
        kinds = {"ignored": np.flatnonzero(labels_np == -1), "negative": np.flatnonzero(labels_np == 0),
                 "positive": np.flatnonzero(labels_np == 1)}  # drawn in this order: positives on top
    handles = []
    for kind, indices in kinds.items():
        color, alpha, linewidth = ANCHOR_STYLE[kind]
        shown = _pick(indices, max_per_kind, seed)
        rects = [Rectangle((a[0], a[1]), a[2] - a[0], a[3] - a[1]) for a in anchors_np[shown]]
        collection = PatchCollection(rects, facecolor="none", edgecolor=color, alpha=alpha, linewidth=linewidth)
        collection.set_gid(f"{GID_ANCHORS}-{kind}")
        ax.add_collection(collection)
        drawn = f" ({len(shown)} drawn)" if len(shown) < len(indices) else ""
        name = "anchors" if kind == "all" else kind
        handles.append(Patch(facecolor="none", edgecolor=color, label=f"{name}: {len(indices)}{drawn}"))
    if gt_boxes is not None:
        for box in _as_numpy(gt_boxes).reshape(-1, 4):
            _add_box(ax, box, "gold", GID_GT, linewidth=2.5, linestyle="--")
        handles.append(Patch(facecolor="none", edgecolor="gold", linestyle="--", label="ground truth"))
    if owns_figure:  # legend to the right of the picture
        ax.legend(handles=handles[::-1], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    else:  # inside the given axes, so it cannot spill over a neighbouring panel
        ax.legend(handles=handles[::-1], loc="upper right", fontsize=7, framealpha=0.8)
    if image is not None:
        ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=9)
    if owns_figure:
        fig.subplots_adjust(left=0.02, right=0.64, bottom=0.02, top=0.92)  # room for the legend on the right
    return fig


def _as_box(box) -> Tensor:
    return torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)


def draw_boxes_and_iou(box_a, box_b, ax: Axes | None = None) -> Figure:
    """Two boxes, their intersection shaded, and IoU = intersection / union in the title.

    Args:
        box_a, box_b (sequence of 4 floats or Tensor[4], xyxy pixels).

    Returns:
        The figure: the two boxes (gid GID_BOX) and the intersection (gid "intersection",
        drawn only when the boxes overlap).
    """
    fig, ax = _new_axes(ax, (4, 4))
    a, b = _as_box(box_a)[0], _as_box(box_b)[0]
    iou = box_iou(a[None], b[None])[0, 0].item()
    ix1, iy1 = torch.maximum(a[:2], b[:2]).tolist()
    ix2, iy2 = torch.minimum(a[2:], b[2:]).tolist()
    inter = max(ix2 - ix1, 0.0) * max(iy2 - iy1, 0.0)
    union = float(box_area(torch.stack([a, b])).sum()) - inter
    if inter > 0:
        shaded = Rectangle((ix1, iy1), ix2 - ix1, iy2 - iy1, facecolor="tab:purple", alpha=0.35)
        shaded.set_gid("intersection")
        ax.add_patch(shaded)
    _add_box(ax, a, "tab:blue", GID_BOX, linewidth=2)
    _add_box(ax, b, "tab:orange", GID_BOX, linewidth=2)
    ax.text(a[0], a[1], " A", color="tab:blue", va="top", fontsize=10)
    ax.text(b[0], b[1], " B", color="tab:orange", va="top", fontsize=10)
    _fit_view(ax, torch.stack([a, b]).numpy(), margin=0.05)
    ax.set_title(f"IoU = {inter:.1f} / {union:.1f} = {iou:.3f}", fontsize=9)
    return fig


def draw_box_coding(ref_box, gt_box, deltas=None, ax: Axes | None = None) -> Figure:
    """An anchor (reference box), a ground-truth box, and the deltas that move one onto the other.

    Args:
        ref_box, gt_box (sequence of 4 floats or Tensor[4], xyxy pixels).
        deltas (Tensor[4] | None): ``(dx, dy, dw, dh)`` to print in the title (e.g. from
            ``boxes.encode_boxes``); not drawn when ``None``.

    Returns:
        The figure: both boxes (gid GID_BOX), their centres and an arrow between them.
    """
    fig, ax = _new_axes(ax, (4, 4))
    ref, gt = _as_box(ref_box)[0], _as_box(gt_box)[0]
    _add_box(ax, ref, "tab:blue", GID_BOX, linewidth=2, linestyle="--")
    _add_box(ax, gt, "tab:green", GID_BOX, linewidth=2)
    (rx, ry), (gx, gy) = ((ref[:2] + ref[2:]) / 2).tolist(), ((gt[:2] + gt[2:]) / 2).tolist()
    ax.plot([rx], [ry], "o", color="tab:blue", label="anchor (reference)")
    ax.plot([gx], [gy], "o", color="tab:green", label="ground truth")
    ax.annotate("", xy=(gx, gy), xytext=(rx, ry), arrowprops={"arrowstyle": "->", "color": "k"})
    _fit_view(ax, torch.stack([ref, gt]).numpy(), margin=0.1)
    ax.legend(loc="best", fontsize=8)
    if deltas is not None:
        dx, dy, dw, dh = (float(v) for v in _as_numpy(deltas).reshape(-1)[:4])
        ax.set_title(f"dx={dx:.2f} dy={dy:.2f} dw={dw:.2f} dh={dh:.2f}", fontsize=9)
    return fig


def draw_nms(
    boxes: Tensor, scores: Tensor, keep: Tensor, image: Tensor | None = None, iou_threshold: float | None = None,
) -> Figure:
    """Boxes before and after non-maximum suppression, side by side.

    Args:
        boxes (Tensor[R, 4], float32, xyxy pixels); scores (Tensor[R], float32).
        keep (Tensor[K], int64): indices kept by NMS (e.g. ``boxes.nms(boxes, scores, thr)``).
        image (Tensor[3, H, W] | None): drawn under the boxes when given.
        iou_threshold: printed in the right title when given.

    Returns:
        A figure with two axes: left has R boxes, right has K boxes (gid GID_BOX); a box
        keeps its colour in both panels and its score is printed at its corner.
    """
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    boxes_np, scores_np = _as_numpy(boxes).reshape(-1, 4), _as_numpy(scores).reshape(-1)
    keep_np = _as_numpy(keep).reshape(-1).astype(np.int64)
    colors = instance_colors(len(boxes_np))
    suffix = "" if iou_threshold is None else f" (IoU threshold {iou_threshold:g})"
    panels = ((axes[0], np.arange(len(boxes_np)), f"before NMS: {len(boxes_np)} boxes"),
              (axes[1], keep_np, f"after NMS: {len(keep_np)} kept{suffix}"))
    for ax, indices, title in panels:
        if image is not None:
            ax.imshow(_image_hwc(image), interpolation="nearest")
        for i in indices:
            _add_box(ax, boxes_np[i], colors[i], GID_BOX, linewidth=1.5)
            ax.text(boxes_np[i, 0], boxes_np[i, 1], f"{scores_np[i]:.2f}", fontsize=7, color=colors[i], va="bottom")
        if image is None:
            _fit_view(ax, boxes_np, margin=0.05)  # both panels show the same region
        else:
            ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
