"""Interactive explorers for the notebooks (ipywidgets + the figures of viz.py).

Each explorer is a small class: its controls are attributes (``browser.index``,
``explorer.positive_iou``...), ``.widget`` is the box to display (or display the object
itself), ``update()`` redraws, and what was drawn last is kept for inspection
(``.figure``, ``.last_counts``). Setting a control's ``.value`` from Python redraws too,
which is how the tests drive them. Without a widget frontend (headless ``nbclient``,
plain ``python``) everything still runs; only the interactivity is missing.

Shape legend (structures.py): H, W image size, G instances, R anchors, A anchors per location.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython import get_ipython
from IPython.display import clear_output, display
from matplotlib.figure import Figure

from mnc_teach.anchors import anchors_inside_image, generate_base_anchors, grid_anchors
from mnc_teach.matching import (
    IGNORE,
    NEGATIVE,
    POSITIVE,
    RPN_BATCH_SIZE,
    RPN_NEGATIVE_IOU,
    RPN_POSITIVE_FRACTION,
    RPN_POSITIVE_IOU,
    label_anchors,
    sample_pos_neg,
)
from mnc_teach.viz import common as viz

__all__ = ["DatasetBrowser", "AnchorExplorer"]

ALL_CLASSES = 0  # class-filter value meaning "no filter" (0 is background, never a filter target)
# Anchors for the 128 x 128 shapes images: a stride-8 feature map (16 x 16 cells) and
# anchor sides 16, 32, 64 px (base 8 x scales 2, 4, 8); the paper's 128-512 px anchors
# (MNC_SPEC §2) would not fit inside such an image.
SHAPES_STRIDE = 8
SHAPES_SCALES = (2, 4, 8)
SCALE_OPTIONS = (1, 2, 4, 8, 16, 32)
RATIO_OPTIONS = (0.33, 0.5, 1.0, 2.0, 3.0)
SAMPLE_SEED = 0  # seed of the 256-anchor training sample shown by AnchorExplorer


def show_figure(output: widgets.Output, fig: Figure) -> None:
    """Replace what ``output`` shows by ``fig``, then release the figure from pyplot (no leak,
    and the inline backend does not draw it a second time below the cell)."""
    if get_ipython() is not None:  # outside IPython (scripts, benchmarks) display would print the figure's repr
        with output:
            clear_output(wait=True)
            display(fig)
    plt.close(fig)


def cached_item(explorer):
    """``explorer.dataset[explorer.index.value]``, read once per index (other controls reuse it)."""
    if explorer._cached_index != explorer.index.value:
        explorer._cached_item = explorer.dataset[explorer.index.value]
        explorer._cached_index = explorer.index.value
    return explorer._cached_item


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


class DatasetBrowser:
    """Browse a detection/segmentation dataset: image index, what to draw, class filter.

    Args:
        dataset: returns ``(image Tensor[3, H, W], target)`` by index and has
            ``class_names`` (index 0 background), e.g. ``VOCInstanceSegmentation``.
        index: first image shown.

    Attributes:
        index, show_boxes, show_masks, show_labels, show_void, class_filter: the controls.
        widget: the box to display.
        figure: the last figure drawn (closed in pyplot, still inspectable).
        last_num_drawn: number of instances in the last figure (after the class filter).
    """

    def __init__(self, dataset, index: int = 0):
        if len(dataset) == 0:
            raise ValueError("DatasetBrowser got an empty dataset; check the split and the data folder")
        self.dataset = dataset
        self.class_names = list(dataset.class_names)
        self.index = widgets.IntSlider(value=index, min=0, max=len(dataset) - 1, description="image",
                                       continuous_update=False)
        self.show_boxes = widgets.Checkbox(value=True, description="boxes", indent=False)
        self.show_masks = widgets.Checkbox(value=True, description="masks", indent=False)
        self.show_labels = widgets.Checkbox(value=True, description="labels", indent=False)
        self.show_void = widgets.Checkbox(value=False, description="void pixels", indent=False)
        class_options = [("all classes", ALL_CLASSES)] + [(name, k) for k, name in enumerate(self.class_names) if k > 0]
        self.class_filter = widgets.Dropdown(options=class_options, value=ALL_CLASSES, description="class")
        self.status = widgets.Label()
        self.output = widgets.Output()
        toggles = widgets.HBox([self.show_boxes, self.show_masks, self.show_labels, self.show_void])
        self.widget = widgets.VBox([widgets.HBox([self.index, self.class_filter]), toggles, self.status, self.output])
        self.figure: Figure | None = None
        self.last_num_drawn = 0
        self._cached_index: int | None = None
        self._cached_item = None
        for control in (self.index, self.show_boxes, self.show_masks, self.show_labels, self.show_void,
                        self.class_filter):
            control.observe(self.update, names="value")
        self.update()

    def update(self, change: dict | None = None) -> None:
        """Redraw for the current control values (``change`` is the ipywidgets event, unused)."""
        image, target = cached_item(self)
        shown = dict(target)
        colors = viz.instance_colors(len(target["labels"]))  # (G, 3): an instance keeps its colour when filtered
        if self.class_filter.value != ALL_CLASSES:
            keep = target["labels"] == self.class_filter.value  # (G,) bool
            for key in ("boxes", "labels", "masks"):
                shown[key] = target[key][keep]
            colors = colors[keep.numpy()]
        num_shown = len(shown["labels"])
        self.figure = viz.draw_instances(
            image, shown, self.class_names,
            show_boxes=self.show_boxes.value, show_masks=self.show_masks.value,
            show_labels=self.show_labels.value, show_ignore=self.show_void.value, colors=colors,
        )
        self.last_num_drawn = num_shown
        image_id = target.get("image_id", "")
        self.status.value = (f"image {self.index.value} of {len(self.dataset)} ({image_id}): "
                             f"{_plural(len(target['labels']), 'instance')}, {num_shown} shown")
        show_figure(self.output, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class AnchorExplorer:
    """Anchors and their stage-1 labels on one image, with live positive / negative / ignored counts.

    The anchors are ``grid_anchors(generate_base_anchors(base_size, ratios, scales),
    (ceil(H / stride), ceil(W / stride)), stride)`` and the labels come from
    ``matching.label_anchors`` (IoU thresholds, best-anchor rule, border anchors ignored).

    Args:
        dataset: returns ``(image Tensor[3, H, W], target)`` by index.
        stride: feature stride in pixels (8 for the shapes images; the paper's VGG-16 has 16).
        base_size: side of the reference anchor; default ``stride``, as in the paper (16).
        scales, ratios: the initially selected anchor scales and ratios (height / width).
        scale_options, ratio_options: what the selectors offer (selected values are added).
        positive_iou, negative_iou: initial thresholds (paper: 0.7 / 0.3).
        allowed_border: pixels an anchor may stick out of the image and still be labelled.
        max_per_kind: at most this many anchors of each kind are drawn.

    Attributes:
        index, scales, ratios, positive_iou, negative_iou, sampled_only: the controls.
        widget, figure: as in :class:`DatasetBrowser`.
        anchors (Tensor[R, 4]), labels (Tensor[R] in {1, 0, -1}): the last computed ones.
        last_counts: ``{"anchors", "inside", "positive", "negative", "ignored"}`` of all anchors,
            plus ``"sampled_positive"`` and ``"sampled_negative"`` (the 256-anchor training sample).
    """

    def __init__(
        self,
        dataset,
        stride: int = SHAPES_STRIDE,
        base_size: float | None = None,
        scales: tuple[float, ...] = SHAPES_SCALES,
        ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        scale_options: tuple[float, ...] = SCALE_OPTIONS,
        ratio_options: tuple[float, ...] = RATIO_OPTIONS,
        positive_iou: float = RPN_POSITIVE_IOU,
        negative_iou: float = RPN_NEGATIVE_IOU,
        allowed_border: float = 0.0,
        max_per_kind: int = viz.DEFAULT_MAX_PER_KIND,
        index: int = 0,
    ):
        if len(dataset) == 0:
            raise ValueError("AnchorExplorer got an empty dataset; check the split and the data folder")
        self.dataset = dataset
        self.stride = stride
        self.base_size = stride if base_size is None else base_size
        self.allowed_border = allowed_border
        self.max_per_kind = max_per_kind
        self.index = widgets.IntSlider(value=index, min=0, max=len(dataset) - 1, description="image",
                                       continuous_update=False)
        self.scales = widgets.SelectMultiple(options=sorted(set(scale_options) | set(scales)), value=tuple(scales),
                                             description="scales", rows=4)
        self.ratios = widgets.SelectMultiple(options=sorted(set(ratio_options) | set(ratios)), value=tuple(ratios),
                                             description="ratios (h/w)", rows=4)
        slider = {"min": 0.0, "max": 1.0, "step": 0.05, "continuous_update": False}
        self.positive_iou = widgets.FloatSlider(value=positive_iou, description="positive IoU ≥", **slider)
        self.negative_iou = widgets.FloatSlider(value=negative_iou, description="negative IoU <", **slider)
        self.sampled_only = widgets.Checkbox(value=False, indent=False,
                                             description=f"only the {RPN_BATCH_SIZE} sampled for training")
        self.status = widgets.HTML()
        self.output = widgets.Output()
        controls = widgets.HBox([
            widgets.VBox([self.index, self.positive_iou, self.negative_iou, self.sampled_only]),
            self.scales, self.ratios,
        ])
        self.widget = widgets.VBox([controls, self.status, self.output])
        self.figure: Figure | None = None
        self.anchors = torch.zeros((0, 4))
        self.labels = torch.zeros((0,), dtype=torch.int64)
        self.last_counts: dict[str, int] = {}
        self._cached_index: int | None = None
        self._cached_item = None
        for control in (self.index, self.scales, self.ratios, self.positive_iou, self.negative_iou,
                        self.sampled_only):
            control.observe(self.update, names="value")
        self.update()

    def update(self, change: dict | None = None) -> None:
        """Recompute anchors and labels for the current controls and redraw."""
        if not self.scales.value or not self.ratios.value:
            self.status.value = "<b style='color:#b00'>select at least one scale and one ratio</b>"
            return
        if self.negative_iou.value > self.positive_iou.value:
            self.status.value = ("<b style='color:#b00'>the negative threshold must not exceed the positive one: "
                                 "lower 'negative IoU' or raise 'positive IoU'</b>")
            return
        image, target = cached_item(self)
        height, width = image.shape[-2:]
        feature_size = (math.ceil(height / self.stride), math.ceil(width / self.stride))
        base_anchors = generate_base_anchors(self.base_size, tuple(self.ratios.value), tuple(self.scales.value))
        self.anchors = grid_anchors(base_anchors, feature_size, self.stride)  # (h*w*A, 4)
        self.labels, _ = label_anchors(self.anchors, target["boxes"], (height, width),
                                       positive_iou=self.positive_iou.value, negative_iou=self.negative_iou.value,
                                       allowed_border=self.allowed_border)
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        pos_idx, neg_idx = sample_pos_neg(self.labels, RPN_BATCH_SIZE, RPN_POSITIVE_FRACTION, generator=generator)
        self.last_counts = {
            "anchors": len(self.anchors),
            "inside": int(anchors_inside_image(self.anchors, (height, width), self.allowed_border).sum()),
            "positive": int((self.labels == POSITIVE).sum()),
            "negative": int((self.labels == NEGATIVE).sum()),
            "ignored": int((self.labels == IGNORE).sum()),
            "sampled_positive": len(pos_idx),
            "sampled_negative": len(neg_idx),
        }
        shown_labels = self.labels
        if self.sampled_only.value:  # everything outside the training sample shows as ignored
            shown_labels = torch.full_like(self.labels, IGNORE)
            shown_labels[pos_idx] = POSITIVE
            shown_labels[neg_idx] = NEGATIVE
        counts = self.last_counts
        self.figure = viz.draw_anchors(
            image, self.anchors, shown_labels, target["boxes"], max_per_kind=self.max_per_kind,
            title=f"{len(base_anchors)} anchors per cell, {feature_size[0]}x{feature_size[1]} cells, "
                  f"stride {self.stride}",
        )
        self.status.value = (
            f"{counts['anchors']} anchors ({counts['inside']} inside the image): "
            f"<b style='color:green'>{counts['positive']} positive</b>, "
            f"<b style='color:#c00'>{counts['negative']} negative</b>, {counts['ignored']} ignored; "
            f"training sample: {counts['sampled_positive']} positive + {counts['sampled_negative']} negative"
        )
        show_figure(self.output, self.figure)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
