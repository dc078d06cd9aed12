"""Instances on their image (a target or the model's detections), and VOC's label maps as stored.

    draw_instances     boxes, masks, class names (and scores) of a Target or a Detection
    best_detections    the best detections above a score threshold, each keeping its colour
    draw_label_maps    a SegmentationClass and a SegmentationObject PNG side by side

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, G instances, D detections.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from mnc_teach.data.voc import voc_colormap
from mnc_teach.viz.common import (
    GID_BOX,
    add_box,
    as_numpy,
    image_hwc,
    instance_colors,
    mask_overlay,
    new_axes,
)

__all__ = [
    "GID_IGNORE", "GID_LABEL", "GID_MASK", "MASK_DISPLAY_THRESHOLD",
    "best_detections", "draw_instances", "draw_label_maps", "label_map_to_rgb",
]

GID_MASK = "instance-mask"  # one RGBA image per instance mask
GID_LABEL = "instance-label"  # one text per instance: its class name (and score)
GID_IGNORE = "ignore-pixels"  # the void pixels, one RGBA image

MASK_DISPLAY_THRESHOLD = 0.5  # soft masks [D, 1, H, W] are shown binarised at 0.5
MASK_ALPHA = 0.45
VOID_COLOR = (224, 224, 192)  # VOC's colour for index 255 ("void"), cream


def best_detections(detections: dict, score_threshold: float = 0.0,
                    max_count: int | None = None) -> tuple[dict, np.ndarray, int]:
    """The (at most ``max_count``) highest-scoring detections scoring >= ``score_threshold``.

    Returns:
        ``(subset, colors, num_above)``: the detection dict restricted to them, best first
        (tensors indexed, other values kept), the colour each has among all detections
        (``instance_colors``, so a detection keeps its colour whatever the threshold), and how
        many scored >= the threshold.
    """
    scores = torch.as_tensor(detections["scores"])
    above = torch.nonzero(scores >= score_threshold).flatten()  # (A,)
    keep = above[scores[above].argsort(descending=True, stable=True)[:max_count]]  # (<= max_count,)
    subset = {key: value[keep] if isinstance(value, Tensor) else value
              for key, value in detections.items()}
    return subset, instance_colors(len(scores))[keep.numpy()], len(above)


def _binary_masks(masks: Tensor | np.ndarray | None) -> np.ndarray | None:
    """Target masks [G, H, W] or soft detection masks [D, 1, H, W] -> bool [n, H, W]."""
    if masks is None:
        return None
    masks = as_numpy(masks)
    if masks.ndim == 4:  # soft detection masks (D, 1, H, W) -> (D, H, W) binary
        masks = masks[:, 0] >= MASK_DISPLAY_THRESHOLD
    return masks.astype(bool)


def _label_text(label: int, score: float | None, class_names) -> str:
    """The class name (its number when unnamed), and the score when there is one."""
    name = class_names[label] if label < len(class_names) else str(label)
    return name if score is None else f"{name} {score:.2f}"


def draw_instances(
    image: Tensor, instances: dict, class_names: list[str] | tuple[str, ...],
    ax: Axes | None = None,
    *, show_boxes: bool = True, show_masks: bool = True, show_labels: bool = True,
    show_ignore: bool = False, score_threshold: float = 0.0, title: str | None = None,
    colors: np.ndarray | None = None,
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
        The figure. Instance ``i`` gets colour ``colors[i]``; count what was drawn with
        ``count_artists(fig, GID_BOX)`` (also GID_MASK, GID_LABEL, GID_IGNORE).
    """
    fig, ax = new_axes(ax, (4.5, 4.5))
    pixels = image_hwc(image)
    ax.imshow(pixels, interpolation="nearest")
    boxes = as_numpy(instances.get("boxes", np.zeros((0, 4)))).reshape(-1, 4)
    labels = as_numpy(instances.get("labels", np.zeros((0,), dtype=np.int64))).reshape(-1)
    scores = instances.get("scores")
    scores = None if scores is None else as_numpy(scores).reshape(-1)
    masks = _binary_masks(instances.get("masks"))

    keep = np.arange(len(boxes)) if scores is None else np.flatnonzero(scores >= score_threshold)
    colors = instance_colors(len(boxes)) if colors is None else np.asarray(colors)
    for i in keep:
        color = colors[i]
        if show_masks and masks is not None:
            overlay = mask_overlay(masks[i], color, MASK_ALPHA)
            ax.imshow(overlay, interpolation="nearest").set_gid(GID_MASK)
        if show_boxes:
            add_box(ax, boxes[i], color, GID_BOX)
        if show_labels:
            text = _label_text(int(labels[i]), None if scores is None else scores[i], class_names)
            ax.text(boxes[i, 0], boxes[i, 1], text, fontsize=8, color="white", va="bottom",
                    bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"},
                    gid=GID_LABEL)
    if show_ignore and instances.get("ignore") is not None:
        void = as_numpy(instances["ignore"]).astype(bool)
        overlay = mask_overlay(void, np.array(VOID_COLOR) / 255, 0.9)
        ax.imshow(overlay, interpolation="nearest").set_gid(GID_IGNORE)

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
    """Colour an index map [H, W] (uint8 0..255) with a palette [256, 3] uint8: [H, W, 3] uint8.
    """
    return np.asarray(palette, dtype=np.uint8)[as_numpy(index_map).astype(np.int64)]


def _legend_name(value: int, kind: str, class_names) -> str:
    """The legend entry of one pixel value of a class map or an object map."""
    if value == 255:
        return "255 void"
    if value == 0:
        return "0 background"
    if kind == "class" and class_names is not None and value < len(class_names):
        return f"{value} {class_names[value]}"
    return f"{value} {'instance ' + str(value) if kind == 'object' else ''}".strip()


def draw_label_maps(
    class_map: np.ndarray | Tensor, object_map: np.ndarray | Tensor,
    palette: np.ndarray | None = None, class_names: list[str] | tuple[str, ...] | None = None,
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
        index_map = as_numpy(index_map)
        ax.imshow(label_map_to_rgb(index_map, palette), interpolation="nearest")
        handles = [Patch(facecolor=np.asarray(palette[value]) / 255, edgecolor="k",
                         label=_legend_name(value, kind, class_names))
                   for value in np.unique(index_map)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
                  frameon=False)
        ax.set_title(f"Segmentation{kind.capitalize()} (pixel values)", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig
