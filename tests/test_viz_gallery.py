"""viz.gallery: per image, its ground truth above and its best detections above the threshold
below (capped, counted in the title), "no detections" said, and the axes reused on a redraw."""

from __future__ import annotations

import torch
from fakes import FakeInstances

from mnc_teach.viz.common import GID_BOX
from mnc_teach.viz.gallery import (
    GID_NO_DETECTIONS,
    draw_prediction_gallery,
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
