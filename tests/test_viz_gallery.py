"""viz.gallery: per image, its ground truth above and its best detections above the threshold
below (capped, counted in the title), "no detections" said, and the axes reused on a redraw;
the failure gallery's rows, captions and outlines on a hand-built evaluation."""

from __future__ import annotations

import torch
from fakes import CLASSES, SIDE, FakeInstances, pred, rect, target

from mnc_teach.evaluation.analysis import analyze_matches
from mnc_teach.viz.common import GID_BOX, count_artists
from mnc_teach.viz.evaluation import GID_GT_OUTLINE, GID_PRED_MASK
from mnc_teach.viz.gallery import (
    GID_NO_DETECTIONS,
    draw_failures,
    draw_prediction_gallery,
    failure_gallery_rows,
    new_gallery_figure,
)
from mnc_teach.viz.instances import GID_MASK


def gallery_drawing(fig) -> list[dict]:
    """Per gallery image (column k: axes k above, n + k below): boxes drawn in each row, the
    "no detections" text, the titles."""

    def count(ax, gid: str) -> int:
        return sum(artist.get_gid() == gid for artist in ax.get_children())

    n = len(fig.axes) // 2
    return [{"truth": count(fig.axes[k], GID_BOX), "found": count(fig.axes[n + k], GID_BOX),
             "masks": count(fig.axes[n + k], GID_MASK),
             "none": count(fig.axes[n + k], GID_NO_DETECTIONS),
             "title": fig.axes[n + k].get_title()} for k in range(n)]


def _detections(scores: list[float], size: int) -> dict:
    count = len(scores)
    masks = torch.zeros(count, 1, size, size)
    masks[:, :, 2:8, 2:8] = 1.0
    return {"boxes": torch.tensor([[2.0, 2.0, 8.0, 8.0]] * count).reshape(-1, 4), "masks": masks,
            "labels": torch.ones(count, dtype=torch.int64),
            "scores": torch.tensor(scores).reshape(-1)}


def test_gallery_drawing_counts_thresholds_caps_and_images_without_detections() -> None:
    (image, target), (other, other_target) = FakeInstances(2)[0], FakeInstances(2)[1]
    size = image.shape[-1]
    fig = new_gallery_figure(3)
    found = [_detections([0.9, 0.2, 0.6], size), _detections([], size),
             _detections([0.95] * 12, size)]
    images, targets = [image, other, image], [target, other_target, target]
    draw_prediction_gallery(fig, images, targets, found, FakeInstances.class_names,
                            score_threshold=0.5, step=40, max_drawn=10)
    drawn = gallery_drawing(fig)
    assert [(e["truth"], e["found"], e["masks"], e["none"]) for e in drawn] == [
        (1, 2, 2, 0), (1, 0, 0, 1), (1, 10, 10, 0)]
    assert [e["title"] for e in drawn] == ["step 40: 2 with score >= 0.5",
                                          "step 40: 0 with score >= 0.5",
                                          "step 40: 10 of 12 with score >= 0.5"]
    assert fig.axes[0].get_title() == f"{target['image_id']}: ground truth"
    texts = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == GID_NO_DETECTIONS]
    assert texts == ["no detections >= 0.5"]

    axes_before = list(fig.axes)  # drawing again reuses the axes, leaves nothing of the last one
    draw_prediction_gallery(fig, images, targets, found, FakeInstances.class_names,
                            score_threshold=0.1)
    assert fig.axes == axes_before
    assert [(e["found"], e["none"]) for e in gallery_drawing(fig)] == [(3, 0), (0, 1), (10, 0)]
    assert gallery_drawing(fig)[0]["title"] == "3 with score >= 0.1"

    draw_prediction_gallery(fig, images[:1], targets[:1], found[:1], FakeInstances.class_names)
    assert len(fig.axes) == 2  # another number of images: new axes


def test_new_gallery_figure_is_sized_for_its_images() -> None:
    small, large = new_gallery_figure(1), new_gallery_figure(5)
    assert small.get_size_inches()[0] == 4.0  # at least 4 inches wide
    assert large.get_size_inches()[0] > small.get_size_inches()[0]
    assert small.get_size_inches()[1] == large.get_size_inches()[1]


def _failure_case():
    """Image a: circles A and B, square C; image b: nothing. A found, then found again (a
    duplicate); B covered at IoU 0.6; a triangle on C; a circle in b."""
    gt_a, gt_b, gt_c = rect(0, 10, 0, 10), rect(20, 30, 0, 10), rect(0, 10, 20, 30)
    ground_truth = [target("a", [gt_a, gt_b, gt_c], [1, 1, 2]), target("b", [], [])]
    predictions = [pred("a", 1, gt_a, 0.9), pred("a", 1, rect(0, 9, 0, 10), 0.8),
                   pred("a", 1, rect(24, 30, 0, 10), 0.7), pred("a", 3, gt_c, 0.6),
                   pred("b", 1, gt_a, 0.95)]
    return predictions, ground_truth


def test_failure_gallery_rows_captions_and_outlines() -> None:
    predictions, ground_truth = _failure_case()
    analysis = analyze_matches(predictions, ground_truth, CLASSES, iou_threshold=0.5)
    loaded = []

    def load_image(i: int) -> torch.Tensor:
        loaded.append(i)
        return torch.rand(3, SIDE, SIDE)

    rows = failure_gallery_rows(analysis, predictions, ground_truth, CLASSES, load_image,
                                per_row=3, strict_iou=0.7)
    assert list(rows) == ["false positives", "missed instances", "poor masks (IoU < 0.7)"]
    fps = rows["false positives"]
    assert [item.caption for item in fps] == [
        "circle 0.95\nno GT of its class, IoU 0.00",  # image b
        "circle 0.80\nduplicate, IoU 0.90",
        "triangle 0.60\nwrong class: a square, IoU 1.00",
    ]
    assert fps[0].gt_mask is None  # nothing to outline in image b
    assert torch.equal(fps[2].gt_mask, ground_truth[0]["masks"][2])  # the square it covers
    missed = rows["missed instances"]  # C: no square was predicted
    assert [item.caption for item in missed] == ["square in a\nnearest IoU 0.000"]
    assert missed[0].pred_mask is None
    poor = rows["poor masks (IoU < 0.7)"]  # B, matched at 0.5 with IoU 0.6
    assert [item.caption for item in poor] == ["circle 0.70\nIoU 0.600"]
    assert sorted(loaded) == [0, 1]  # each image shown is loaded once


def test_draw_failures_draws_the_rows() -> None:
    predictions, ground_truth = _failure_case()
    analysis = analyze_matches(predictions, ground_truth, CLASSES, iou_threshold=0.5)
    fig = draw_failures(analysis, predictions, ground_truth, CLASSES,
                        lambda i: torch.rand(3, SIDE, SIDE), per_row=4, title="failures")
    assert len(fig.axes) == 3 * 4
    # outlines: 2 of the 3 FPs shown (image b has none), the missed C, B under its poor mask
    assert count_artists(fig, GID_GT_OUTLINE) == 2 + 1 + 1
    assert count_artists(fig, GID_PRED_MASK) == 3 + 0 + 1
    assert fig.axes[4].get_title() == "square in a\nnearest IoU 0.000"
