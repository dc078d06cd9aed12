"""viz.explorer: the stage explorer's picture of a hand-made StageView: one RoI in every panel,
its masks and scores as given, the detections above the threshold, and the 3-stage case."""

from __future__ import annotations

import numpy as np
import torch

from mnc_teach.viz.common import GID_BOX, GID_GT, count_artists, find_artists
from mnc_teach.viz.explorer import (
    GID_CLASS_BAR,
    GID_REFINED_BOX,
    GID_ROI_BOX,
    GID_ROI_PANEL,
    GID_STAGE_MASK,
    StageView,
    draw_stage_view,
)

CLASS_NAMES = ("background", "circle", "square", "triangle")
SIZE, M = 48, 8


def make_view(five_stages: bool = True, with_target: bool = True) -> StageView:
    mask = torch.zeros(M, M)
    mask[2:6, 2:6] = 0.9
    later = {}
    if five_stages:
        later = {"refined_box": torch.tensor([9.0, 9, 31, 33]), "mask_s4": mask.flip(0),
                 "cls_probs_s5": torch.tensor([0.1, 0.1, 0.7, 0.1])}
    return StageView(
        image=torch.rand(3, SIZE, SIZE), gt_boxes=torch.tensor([[10.0, 10, 30, 30], [2, 2, 8, 8]]),
        roi_rank=0, num_rois=12, proposal_index=4, objectness=0.83,
        box=torch.tensor([8.0, 8, 32, 32]), features=torch.rand(5, 7, 7), mask=mask,
        target=(mask > 0.5).float() if with_target else None, matched_iou=0.69, true_label=2,
        cls_probs=torch.tensor([0.1, 0.2, 0.6, 0.1]),
        box_cls_probs=torch.tensor([0.3, 0.1, 0.5, 0.1]), **later,
    )


def detections(scores: list[float]) -> dict:
    count = len(scores)
    masks = torch.zeros(count, 1, SIZE, SIZE)
    masks[:, :, 10:20, 10:20] = 0.8
    return {"boxes": torch.tensor([[10.0, 10, 20, 20]] * count).reshape(-1, 4),
            "labels": torch.full((count,), 2), "scores": torch.tensor(scores), "masks": masks}


def test_a_five_stage_view_draws_every_panel_of_the_roi() -> None:
    view = make_view()
    fig = draw_stage_view(view, detections([0.9, 0.7, 0.6, 0.2]), CLASS_NAMES, mask_threshold=0.4,
                          score_threshold=0.5, top_n=2)
    assert len(fig.axes) == 8
    assert count_artists(fig, GID_ROI_BOX) == 1 and count_artists(fig, GID_REFINED_BOX) == 1
    assert count_artists(fig, GID_GT) == 2
    assert count_artists(fig, GID_STAGE_MASK) == 3  # stage 2, its target, stage 4
    assert count_artists(fig, GID_CLASS_BAR) == 3 * len(CLASS_NAMES)  # mask, box, stage 5
    assert count_artists(fig, GID_ROI_PANEL) == 2  # the features and the pasted mask
    assert count_artists(fig, GID_BOX) == 2  # the best 2 of the 3 scoring >= 0.5
    (roi,) = find_artists(fig, GID_ROI_BOX)
    assert (roi.get_xy(), roi.get_width(), roi.get_height()) == ((8.0, 8.0), 24.0, 24.0)
    features = find_artists(fig, GID_ROI_PANEL)[0]
    np.testing.assert_allclose(features.get_array(), view.features.mean(dim=0).numpy(), rtol=1e-6)
    stage2 = find_artists(fig, GID_STAGE_MASK)[0]
    np.testing.assert_array_equal(stage2.get_array(), view.mask.numpy())
    bars = find_artists(fig, GID_CLASS_BAR)
    np.testing.assert_allclose([b.get_height() for b in bars[:4]], view.cls_probs.numpy())
    assert fig.axes[5].get_xticklabels()[2].get_color() == "tab:green"  # the training label
    assert fig.axes[5].get_title().startswith("stage 3: square 0.60")
    assert fig.axes[7].get_title() == "detections: best 2 of 4\nscoring >= 0.5"
    assert fig.axes[0].get_title().startswith("stage 1: proposal #4\nobjectness 0.83")


def test_a_three_stage_background_roi_and_no_detections() -> None:
    view = make_view(five_stages=False, with_target=False)
    fig = draw_stage_view(view, detections([0.3]), CLASS_NAMES, score_threshold=0.5)
    assert count_artists(fig, GID_REFINED_BOX) == 0
    assert count_artists(fig, GID_STAGE_MASK) == 1  # stage 2 only: no target, no stage 4
    assert count_artists(fig, GID_CLASS_BAR) == 2 * len(CLASS_NAMES)
    assert count_artists(fig, GID_BOX) == 0
    assert "a background RoI" in fig.axes[3].texts[0].get_text()
    assert "no stages 4-5" in fig.axes[6].texts[0].get_text()
    assert fig.axes[7].get_title() == "no detections scoring >= 0.5\n(1 in all)"
