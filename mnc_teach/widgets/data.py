"""Explorers of the data (notebooks 00-01): a dataset browser and an anchor explorer.

    browser = DatasetBrowser(dataset)                # image, what to draw, class filter
    explorer = AnchorExplorer(dataset)               # anchors and their labels, live counts

Conventions of every explorer: :class:`mnc_teach.widgets.common.Explorer`.

Shape legend (structures.py): H, W image size, G instances, R anchors, A anchors per location.
"""

from __future__ import annotations

import math

import ipywidgets as widgets
import torch

from mnc_teach.anchors import anchors_inside_image, generate_base_anchors, grid_anchors
from mnc_teach.backbone import TinyBackbone
from mnc_teach.config import RPNConfig, shapes_cpu
from mnc_teach.matching import IGNORE, NEGATIVE, POSITIVE, label_anchors, sample_pos_neg
from mnc_teach.viz.boxes import DEFAULT_MAX_PER_KIND, draw_anchors
from mnc_teach.viz.common import instance_colors
from mnc_teach.viz.instances import draw_instances
from mnc_teach.widgets.common import Explorer

__all__ = ["AnchorExplorer", "DatasetBrowser"]

ALL_CLASSES = 0  # class-filter value meaning "no filter" (0 is background, never a filter target)
# The anchors of the shapes track (128 x 128 images): the shapes-cpu preset's anchors on the tiny
# backbone's stride-8 feature map; the paper's 128-512 px anchors would not fit in such an image.
SHAPES_RPN = shapes_cpu().rpn
SCALE_OPTIONS = (1, 2, 4, 8, 16, 32)
RATIO_OPTIONS = (0.33, 0.5, 1.0, 2.0, 3.0)
SAMPLE_SEED = 0  # seed of the training sample shown by AnchorExplorer
SAMPLE_SIZE = RPNConfig.batch_size  # anchors sampled per image: the paper's 256


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


class DatasetBrowser(Explorer):
    """Browse a detection/segmentation dataset: image index, what to draw, class filter.

    Args:
        dataset: returns ``(image Tensor[3, H, W], target)`` by index and has
            ``class_names`` (index 0 background), e.g. ``VOCInstanceSegmentation``.
        index: first image shown.

    Attributes:
        index, show_boxes, show_masks, show_labels, show_void, class_filter: the controls.
        widget: the box to display. figure: the last figure drawn.
        last_num_drawn: number of instances in the last figure (after the class filter).
    """

    def __init__(self, dataset, index: int = 0):
        super().__init__(dataset, index)
        self.class_names = list(dataset.class_names)
        self.show_boxes = widgets.Checkbox(value=True, description="boxes", indent=False)
        self.show_masks = widgets.Checkbox(value=True, description="masks", indent=False)
        self.show_labels = widgets.Checkbox(value=True, description="labels", indent=False)
        self.show_void = widgets.Checkbox(value=False, description="void pixels", indent=False)
        class_options = [("all classes", ALL_CLASSES)] + [
            (name, k) for k, name in enumerate(self.class_names) if k > 0]
        self.class_filter = widgets.Dropdown(options=class_options, value=ALL_CLASSES,
                                             description="class")
        self.status = widgets.Label()
        toggles = widgets.HBox([self.show_boxes, self.show_masks, self.show_labels, self.show_void])
        self.widget = widgets.VBox([widgets.HBox([self.index, self.class_filter]), toggles,
                                    self.status, self.output])
        self.last_num_drawn = 0
        self.watch(self.show_boxes, self.show_masks, self.show_labels, self.show_void,
                   self.class_filter)

    def update(self, change: dict | None = None) -> None:
        """Redraw for the current control values (``change`` is the ipywidgets event, unused)."""
        image, target = self.cached(self.index.value, self.dataset.__getitem__)
        shown = dict(target)
        colors = instance_colors(len(target["labels"]))  # (G, 3): colours kept when filtered
        if self.class_filter.value != ALL_CLASSES:
            keep = target["labels"] == self.class_filter.value  # (G,) bool
            for key in ("boxes", "labels", "masks"):
                shown[key] = target[key][keep]
            colors = colors[keep.numpy()]
        num_shown = len(shown["labels"])
        fig = draw_instances(
            image, shown, self.class_names,
            show_boxes=self.show_boxes.value, show_masks=self.show_masks.value,
            show_labels=self.show_labels.value, show_ignore=self.show_void.value, colors=colors,
        )
        self.last_num_drawn = num_shown
        image_id = target.get("image_id", "")
        self.status.value = (f"image {self.index.value} of {len(self.dataset)} ({image_id}): "
                             f"{_plural(len(target['labels']), 'instance')}, {num_shown} shown")
        self.show(fig)


class AnchorExplorer(Explorer):
    """Anchors and their stage-1 labels on one image, live positive / negative / ignored counts.

    The anchors are ``grid_anchors(generate_base_anchors(base_size, ratios, scales),
    (ceil(H / stride), ceil(W / stride)), stride)`` and the labels come from
    ``matching.label_anchors`` (IoU thresholds, best-anchor rule, border anchors ignored).

    Args:
        dataset: returns ``(image Tensor[3, H, W], target)`` by index.
        stride: feature stride in pixels (default: the shapes track's tiny backbone, 8; the
            paper's VGG-16 has 16).
        base_size: side of the reference anchor; default ``stride``, as in the paper (16).
        scales, ratios: the initially selected anchor scales and ratios (height / width);
            default: the shapes-cpu preset's (``config.shapes_cpu().rpn``).
        scale_options, ratio_options: what the selectors offer (selected values are added).
        positive_iou, negative_iou: initial thresholds (paper: 0.7 / 0.3).
        allowed_border: pixels an anchor may stick out of the image and still be labelled.
        max_per_kind: at most this many anchors of each kind are drawn.
        index: first image shown.

    Attributes:
        index, scales, ratios, positive_iou, negative_iou, sampled_only: the controls.
        widget, figure: as in :class:`DatasetBrowser`.
        anchors (Tensor[R, 4]), labels (Tensor[R] in {1, 0, -1}): the last computed ones.
        last_counts: ``{"anchors", "inside", "positive", "negative", "ignored"}`` of all anchors,
            plus ``"sampled_positive"`` and ``"sampled_negative"`` (the 256-anchor training
            sample).
    """

    def __init__(
        self,
        dataset,
        *,
        stride: int = TinyBackbone.stride,
        base_size: float | None = None,
        scales: tuple[float, ...] = SHAPES_RPN.anchor_scales,
        ratios: tuple[float, ...] = SHAPES_RPN.anchor_ratios,
        scale_options: tuple[float, ...] = SCALE_OPTIONS,
        ratio_options: tuple[float, ...] = RATIO_OPTIONS,
        positive_iou: float = RPNConfig.positive_iou,
        negative_iou: float = RPNConfig.negative_iou,
        allowed_border: float = 0.0,
        max_per_kind: int = DEFAULT_MAX_PER_KIND,
        index: int = 0,
    ):
        super().__init__(dataset, index)
        self.stride = stride
        self.base_size = stride if base_size is None else base_size
        self.allowed_border = allowed_border
        self.max_per_kind = max_per_kind
        self.scales = widgets.SelectMultiple(options=sorted(set(scale_options) | set(scales)),
                                             value=tuple(scales), description="scales", rows=4)
        self.ratios = widgets.SelectMultiple(options=sorted(set(ratio_options) | set(ratios)),
                                             value=tuple(ratios), description="ratios (h/w)",
                                             rows=4)
        slider = {"min": 0.0, "max": 1.0, "step": 0.05, "continuous_update": False}
        self.positive_iou = widgets.FloatSlider(value=positive_iou, description="positive IoU ≥",
                                                **slider)
        self.negative_iou = widgets.FloatSlider(value=negative_iou, description="negative IoU <",
                                                **slider)
        sampled = f"only the {SAMPLE_SIZE} sampled for training"
        self.sampled_only = widgets.Checkbox(value=False, indent=False, description=sampled)
        self.status = widgets.HTML()
        controls = widgets.HBox([
            widgets.VBox([self.index, self.positive_iou, self.negative_iou, self.sampled_only]),
            self.scales, self.ratios,
        ])
        self.widget = widgets.VBox([controls, self.status, self.output])
        self.anchors = torch.zeros((0, 4))
        self.labels = torch.zeros((0,), dtype=torch.int64)
        self.last_counts: dict[str, int] = {}
        self.watch(self.scales, self.ratios, self.positive_iou, self.negative_iou,
                   self.sampled_only)

    def _label(self, image_size: tuple[int, int], gt_boxes) -> tuple[int, tuple[int, int], tuple]:
        """Anchors, labels and counts for the current controls (kept as attributes); returns
        ``(anchors per cell, feature size, (sampled positive indices, sampled negative))``."""
        height, width = image_size
        feature_size = (math.ceil(height / self.stride), math.ceil(width / self.stride))
        base_anchors = generate_base_anchors(self.base_size, tuple(self.ratios.value),
                                             tuple(self.scales.value))
        self.anchors = grid_anchors(base_anchors, feature_size, self.stride)  # (h*w*A, 4)
        self.labels, _ = label_anchors(self.anchors, gt_boxes, (height, width),
                                       positive_iou=self.positive_iou.value,
                                       negative_iou=self.negative_iou.value,
                                       allowed_border=self.allowed_border)
        generator = torch.Generator().manual_seed(SAMPLE_SEED)
        pos_idx, neg_idx = sample_pos_neg(self.labels, batch_size=SAMPLE_SIZE,
                                          positive_fraction=RPNConfig.positive_fraction,
                                          generator=generator)
        inside = anchors_inside_image(self.anchors, (height, width), self.allowed_border)
        self.last_counts = {
            "anchors": len(self.anchors),
            "inside": int(inside.sum()),
            "positive": int((self.labels == POSITIVE).sum()),
            "negative": int((self.labels == NEGATIVE).sum()),
            "ignored": int((self.labels == IGNORE).sum()),
            "sampled_positive": len(pos_idx),
            "sampled_negative": len(neg_idx),
        }
        return len(base_anchors), feature_size, (pos_idx, neg_idx)

    def update(self, change: dict | None = None) -> None:
        """Recompute anchors and labels for the current controls and redraw."""
        if not self.scales.value or not self.ratios.value:
            self.status.value = "<b style='color:#b00'>select at least one scale and one ratio</b>"
            return
        if self.negative_iou.value > self.positive_iou.value:
            self.status.value = ("<b style='color:#b00'>the negative threshold must not exceed the "
                                 "positive one: lower 'negative IoU' or raise 'positive IoU'</b>")
            return
        image, target = self.cached(self.index.value, self.dataset.__getitem__)
        per_cell, feature_size, (pos_idx, neg_idx) = self._label(image.shape[-2:], target["boxes"])
        shown_labels = self.labels
        if self.sampled_only.value:  # everything outside the training sample shows as ignored
            shown_labels = torch.full_like(self.labels, IGNORE)
            shown_labels[pos_idx] = POSITIVE
            shown_labels[neg_idx] = NEGATIVE
        counts = self.last_counts
        fig = draw_anchors(
            image, self.anchors, shown_labels, target["boxes"], max_per_kind=self.max_per_kind,
            title=f"{per_cell} anchors per cell, {feature_size[0]}x{feature_size[1]} cells, "
                  f"stride {self.stride}",
        )
        self.status.value = (
            f"{counts['anchors']} anchors ({counts['inside']} inside the image): "
            f"<b style='color:green'>{counts['positive']} positive</b>, "
            f"<b style='color:#c00'>{counts['negative']} negative</b>, "
            f"{counts['ignored']} ignored; training sample: {counts['sampled_positive']} positive "
            f"+ {counts['sampled_negative']} negative"
        )
        self.show(fig)
