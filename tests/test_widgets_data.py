"""widgets.data: driving the controls from Python redraws exactly what the library computes."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
import torch

from mnc_teach.anchors import generate_base_anchors, grid_anchors
from mnc_teach.backbone import TinyBackbone
from mnc_teach.config import shapes_cpu
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.data.voc import VOCInstanceSegmentation
from mnc_teach.matching import label_anchors, sample_pos_neg
from mnc_teach.viz.common import GID_BOX, count_artists
from mnc_teach.viz.instances import GID_IGNORE, GID_LABEL, GID_MASK
from mnc_teach.widgets.data import AnchorExplorer, DatasetBrowser

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=6, num_val=2, progress=False)
    return VOCInstanceSegmentation(root, split="train")


@pytest.fixture(autouse=True)
def no_figure_leak():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "a widget left a figure open in pyplot"


def test_dataset_browser_draws_every_instance_of_every_image(dataset):
    browser = DatasetBrowser(dataset)
    assert WIDGET_MIME in browser._repr_mimebundle_()
    for index in reversed(range(len(dataset))):
        browser.index.value = index  # the observer redraws
        target = dataset.load_target(index)
        num_instances = len(target["labels"])
        assert browser.last_num_drawn == num_instances
        assert count_artists(browser.figure, GID_BOX) == num_instances
        assert count_artists(browser.figure, GID_MASK) == num_instances
        assert target["image_id"] in browser.figure.axes[0].get_title()
        assert f"{num_instances} instance" in browser.status.value


def test_dataset_browser_class_filter_and_toggles(dataset):
    browser = DatasetBrowser(dataset)
    assert [value for _, value in browser.class_filter.options] == [0, 1, 2, 3]
    for index in range(3):
        browser.index.value = index
        labels = dataset.load_target(index)["labels"]
        for class_id in (1, 2, 3):
            browser.class_filter.value = class_id
            expected = int((labels == class_id).sum())
            assert browser.last_num_drawn == expected
            assert count_artists(browser.figure, GID_BOX) == expected
            names = [t.get_text() for t in browser.figure.axes[0].texts
                     if t.get_gid() == GID_LABEL]
            assert names == [dataset.class_names[class_id]] * expected
        browser.class_filter.value = 0
        assert browser.last_num_drawn == len(labels)

    browser.index.value = 0
    num_instances = len(dataset.load_target(0)["labels"])
    browser.show_boxes.value = False
    assert count_artists(browser.figure, GID_BOX) == 0
    assert count_artists(browser.figure, GID_MASK) == num_instances
    browser.show_masks.value = False
    browser.show_labels.value = False
    assert count_artists(browser.figure, GID_MASK) == count_artists(browser.figure, GID_LABEL) == 0
    assert count_artists(browser.figure, GID_IGNORE) == 0
    browser.show_void.value = True  # the shapes data has a VOC-like void band
    assert count_artists(browser.figure, GID_IGNORE) == 1


def _box_edge_colors(figure) -> list[tuple[float, ...]]:
    return [tuple(patch.get_edgecolor()[:3]) for patch in figure.axes[0].patches
            if patch.get_gid() == GID_BOX]


def test_dataset_browser_keeps_instance_colours_when_filtering(dataset):
    browser = DatasetBrowser(dataset)
    index = next(i for i in range(len(dataset)) if len(dataset.load_target(i)["labels"]) >= 2)
    browser.index.value = index
    labels = dataset.load_target(index)["labels"]
    all_colors = _box_edge_colors(browser.figure)
    assert len(all_colors) == len(labels)
    last_label = int(labels[-1])
    browser.class_filter.value = last_label
    expected = [color for color, label in zip(all_colors, labels.tolist(), strict=True)
                if label == last_label]
    assert _box_edge_colors(browser.figure) == expected


def expected_labels(dataset, index, stride, scales, ratios, positive_iou, negative_iou):
    """What the explorer should compute, rebuilt independently from the library functions."""
    image, target = dataset[index]
    height, width = image.shape[-2:]
    anchors = grid_anchors(generate_base_anchors(stride, ratios, scales),
                           (math.ceil(height / stride), math.ceil(width / stride)), stride)
    labels, _ = label_anchors(anchors, target["boxes"], (height, width),
                              positive_iou=positive_iou, negative_iou=negative_iou)
    return anchors, labels


def assert_counts_match(explorer, labels):
    counts = explorer.last_counts
    assert counts["positive"] == int((labels == 1).sum())
    assert counts["negative"] == int((labels == 0).sum())
    assert counts["ignored"] == int((labels == -1).sum())
    total = counts["positive"] + counts["negative"] + counts["ignored"]
    assert total == counts["anchors"] == len(labels)
    for kind in ("positive", "negative", "ignored"):
        drawn = count_artists(explorer.figure, f"anchors-{kind}")
        assert drawn == min(counts[kind], explorer.max_per_kind)
        assert f"{counts[kind]} {kind}" in explorer.status.value


def test_anchor_explorer_counts_equal_label_anchors(dataset):
    explorer = AnchorExplorer(dataset, stride=8, scales=(2, 4, 8), ratios=(0.5, 1.0, 2.0))
    assert WIDGET_MIME in explorer._repr_mimebundle_()
    anchors, labels = expected_labels(dataset, 0, 8, (2, 4, 8), (0.5, 1.0, 2.0), 0.7, 0.3)
    assert torch.equal(explorer.anchors, anchors) and torch.equal(explorer.labels, labels)
    assert explorer.last_counts["anchors"] == 16 * 16 * 9
    # the best-anchor rule: every object has a positive anchor
    assert explorer.last_counts["positive"] >= len(dataset.load_target(0)["labels"])
    assert_counts_match(explorer, labels)

    positives = []
    for positive_iou in (0.5, 0.6, 0.8):
        explorer.positive_iou.value = positive_iou
        _, labels = expected_labels(dataset, 0, 8, (2, 4, 8), (0.5, 1.0, 2.0), positive_iou, 0.3)
        assert_counts_match(explorer, labels)
        positives.append(explorer.last_counts["positive"])
    assert positives == sorted(positives, reverse=True)  # a stricter threshold never adds positives

    explorer.index.value = 3
    explorer.scales.value = (4,)
    explorer.ratios.value = (1.0, 2.0)
    explorer.negative_iou.value = 0.1
    anchors, labels = expected_labels(dataset, 3, 8, (4,), (1.0, 2.0), 0.8, 0.1)
    assert explorer.last_counts["anchors"] == 16 * 16 * 2
    assert torch.equal(explorer.anchors, anchors)
    assert_counts_match(explorer, labels)


def test_anchor_explorer_sample_and_invalid_thresholds(dataset):
    explorer = AnchorExplorer(dataset, index=1)
    labels = explorer.labels
    pos_idx, neg_idx = sample_pos_neg(labels, batch_size=256, positive_fraction=0.5,
                                      generator=torch.Generator().manual_seed(0))
    counts = explorer.last_counts
    assert (counts["sampled_positive"], counts["sampled_negative"]) == (len(pos_idx), len(neg_idx))
    # plenty of negatives here
    assert counts["sampled_positive"] + counts["sampled_negative"] == 256
    explorer.sampled_only.value = True
    assert count_artists(explorer.figure, "anchors-positive") == len(pos_idx)
    drawn_negatives = count_artists(explorer.figure, "anchors-negative")
    assert drawn_negatives == min(len(neg_idx), explorer.max_per_kind)
    assert explorer.last_counts == counts  # the full-image counts do not change

    figure = explorer.figure
    explorer.negative_iou.value = 0.9  # above the positive threshold: refused, no redraw
    assert "must not exceed" in explorer.status.value and explorer.figure is figure
    explorer.positive_iou.value = 0.95  # valid again: redraws
    assert explorer.figure is not figure and "must not exceed" not in explorer.status.value
    explorer.scales.value = ()
    assert "at least one scale" in explorer.status.value


def test_anchor_explorer_defaults_are_the_shapes_preset_anchors(dataset):
    rpn = shapes_cpu().rpn
    explorer = AnchorExplorer(dataset)
    assert explorer.stride == TinyBackbone.stride == 8
    assert explorer.scales.value == tuple(rpn.anchor_scales)
    assert explorer.ratios.value == tuple(rpn.anchor_ratios)
    assert explorer.base_size == rpn.anchor_base_size  # = the stride, as in the paper
    assert explorer.positive_iou.value == rpn.positive_iou
    assert explorer.negative_iou.value == rpn.negative_iou
