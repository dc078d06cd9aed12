"""The proposal viewer and the stage explorer driven from Python: set a control, check what was drawn."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mnc_teach.boxes import box_iou
from mnc_teach.cascade import build_mnc
from mnc_teach.config import get_preset, override, shortened
from mnc_teach.data import generate_shapes
from mnc_teach.engine.loop import build_datasets, train
from mnc_teach.stage1_rpn import generate_proposals
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.viz import common as viz
from mnc_teach.viz.explorer import (
    GID_CLASS_BAR,
    GID_REFINED_BOX,
    GID_ROI_BOX,
    GID_STAGE_MASK,
)
from mnc_teach.viz.stages import GID_PROPOSAL, GID_RECALL
from mnc_teach.widgets.explorers import ProposalViewer, StageExplorer


@pytest.fixture(scope="module")
def shapes_cfg(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, seed=0, num_train=8, num_val=6, progress=False)
    return override(override(get_preset("shapes-cpu"), "data.root", str(root)), "train.images_per_batch", 2)


@pytest.fixture(scope="module")
def val_set(shapes_cfg):
    return build_datasets(shapes_cfg)[1]


@pytest.fixture(scope="module")
def model(shapes_cfg):
    torch.manual_seed(0)  # an untrained model: its scores sit near 1 / (K + 1), which the thresholds below use
    return build_mnc(shapes_cfg).eval()


# ---------------------------------------------------------------- proposal viewer
def test_proposals_follow_the_sliders_and_equal_generate_proposals(model, val_set) -> None:
    viewer = ProposalViewer(model, val_set, recall_images=3, max_boxes=40)
    image, target = val_set[0]
    with torch.no_grad():
        out, _ = model.rpn(model.backbone(image[None]), [tuple(image.shape[-2:])])
    for pre, post, nms_iou in ((500, 100, 0.7), (50, 20, 0.5), (2000, 5, 0.9)):
        viewer.pre_nms_top_n.value, viewer.post_nms_top_n.value, viewer.nms_iou.value = pre, post, nms_iou
        boxes, scores = generate_proposals(out.anchors, out.objectness_logits[0], out.anchor_deltas[0],
                                           tuple(image.shape[-2:]), pre, post, nms_iou, model.rpn.min_size)  # fmt: skip
        assert torch.allclose(viewer.boxes, boxes) and torch.allclose(viewer.scores, scores)
        assert len(viewer.boxes) <= post
        assert viz.count_artists(viewer.figure, GID_PROPOSAL) == min(len(boxes), 40)
        assert viz.count_artists(viewer.figure, viz.GID_GT) == len(target["boxes"])
        assert viz.count_artists(viewer.figure, GID_RECALL) == 2  # IoU 0.5 and 0.7
        best = box_iou(target["boxes"], boxes).max(dim=1).values
        for iou in (0.5, 0.7):
            assert viewer.last_recall["image"][iou] == pytest.approx(float((best >= iou).float().mean()))
        assert f"{len(boxes)} proposals" in viewer.status.value


def test_stricter_nms_keeps_fewer_proposals_and_recall_is_over_the_first_images(model, val_set) -> None:
    viewer = ProposalViewer(model, val_set, recall_images=4)
    viewer.post_nms_top_n.value = viewer.post_nms_top_n.max
    counts = []
    for nms_iou in (1.0, 0.7, 0.3):
        viewer.nms_iou.value = nms_iou
        counts.append(len(viewer.boxes))
    assert counts[0] > counts[1] > counts[2]
    covered, total = 0, 0
    for i in range(4):
        image, target = val_set[i]
        with torch.no_grad():
            out, _ = model.rpn(model.backbone(image[None]), [tuple(image.shape[-2:])])
        boxes, _ = generate_proposals(out.anchors, out.objectness_logits[0], out.anchor_deltas[0], tuple(image.shape[-2:]),
                                      viewer.pre_nms_top_n.value, viewer.post_nms_top_n.value, 0.3, model.rpn.min_size)  # fmt: skip
        covered += int((box_iou(target["boxes"], boxes).max(dim=1).values >= 0.5).sum())
        total += len(target["boxes"])
    assert viewer.last_recall["dataset"][0.5] == pytest.approx(covered / total)


# ---------------------------------------------------------------- stage explorer
def test_stage_explorer_draws_one_roi_through_five_stages(model, val_set) -> None:
    explorer = StageExplorer(model, val_set, score_threshold=0.2, top_n=7)
    view = explorer.last_view
    fig = explorer.figure
    assert view.num_rois == len(explorer._run(0).view_rows["boxes"]) > 0
    assert viz.count_artists(fig, GID_ROI_BOX) == 1 and viz.count_artists(fig, GID_REFINED_BOX) == 1
    assert viz.count_artists(fig, viz.GID_GT) == len(val_set[0][1]["boxes"])
    num_classes = len(val_set.class_names)
    assert viz.count_artists(fig, GID_CLASS_BAR) == 3 * num_classes  # mask-level, box-level, stage 5
    assert viz.count_artists(fig, GID_STAGE_MASK) == 2 + (view.target is not None)  # stage 2, (target), stage 4
    scores = explorer._run(0).detections["scores"]
    assert viz.count_artists(fig, viz.GID_BOX) == explorer.last_num_detections == min(7, int((scores >= 0.2).sum()))

    # RoI ranks follow the stage-3 foreground score, and every panel is the chosen RoI's
    fg = torch.stack([explorer._view(explorer._run(0), rank).cls_probs[1:].max() for rank in range(5)])
    assert torch.all(fg[:-1] >= fg[1:])
    explorer.roi.value = 3
    assert explorer.last_view.roi_rank == 3 and explorer.last_view.proposal_index == int(explorer._run(0).order[3])

    for threshold, top_n in ((0.0, 100), (0.25, 3), (1.0, 10)):
        explorer.score_threshold.value, explorer.top_n.value = threshold, top_n
        expected = min(top_n, int((scores >= threshold).sum()))
        assert viz.count_artists(explorer.figure, viz.GID_BOX) == explorer.last_num_detections == expected
    assert "no detections" in explorer.figure.axes[-1].get_title()


def test_mask_threshold_changes_the_pasted_mask_and_image_change_reruns_the_model(model, val_set) -> None:
    explorer = StageExplorer(model, val_set)
    pasted = {}
    for threshold in (0.3, 0.6):
        explorer.mask_threshold.value = threshold
        pasted[threshold] = int(explorer.figure.axes[4].get_title().split("\n")[1].split()[0])
    mask = explorer.last_view.mask
    assert pasted[0.3] >= pasted[0.6]
    assert (mask.min() < 0.3 < mask.max()) <= (pasted[0.3] > 0)  # some pixels where the mask passes 0.3
    explorer.roi.value = 5
    explorer.index.value = 2
    image, target = val_set[2]
    assert torch.equal(explorer.last_view.image, image)
    assert explorer.roi.max == explorer.last_view.num_rois - 1
    assert f"image 2 of {len(val_set)}" in explorer.status.value


def test_stage_target_and_label_come_from_the_matched_object(model, val_set) -> None:
    explorer = StageExplorer(model, val_set)
    run = explorer._run(0)
    gt = run.target["boxes"]
    for rank in range(len(run.order)):
        view = explorer._view(run, rank)
        iou = box_iou(view.box[None], gt).max()
        assert view.matched_iou == pytest.approx(float(iou), abs=1e-6)
        assert (view.target is not None) == (view.true_label > 0) == bool(iou >= model.cfg.roi.fg_iou)
    # a RoI that is exactly object 0's box: its label is object 0's class, its target object 0's mask in the box
    rank = 0
    run.view_rows["boxes"][int(run.order[rank])] = gt[0]
    view = explorer._view(run, rank)
    expected = mask_targets(run.target["masks"], torch.tensor([0]), gt[:1], view.mask.shape[-1],
                            model.cfg.mask.target_threshold)[0]  # fmt: skip
    assert view.matched_iou == pytest.approx(1.0) and view.true_label == int(run.target["labels"][0])
    assert torch.equal(view.target, expected) and view.target.sum() > 0
    explorer.roi.value = 1  # redraw with the target panel
    explorer.roi.value = rank
    assert viz.count_artists(explorer.figure, GID_STAGE_MASK) == 3


def test_three_stage_model_and_no_detections(model, val_set) -> None:
    three = copy.deepcopy(model)
    three.cfg = override(three.cfg, "inference.num_stages", 3)
    three.cfg = override(three.cfg, "inference.score_threshold", 0.999)  # nothing scores that high
    explorer = StageExplorer(three, val_set)
    assert explorer.last_view.refined_box is None and explorer.last_view.mask_s4 is None
    assert viz.count_artists(explorer.figure, GID_REFINED_BOX) == 0
    assert viz.count_artists(explorer.figure, GID_CLASS_BAR) == 2 * len(val_set.class_names)
    assert viz.count_artists(explorer.figure, viz.GID_BOX) == 0
    assert "no detections" in explorer.figure.axes[-1].get_title()
    assert "0 detections" in explorer.status.value


def test_an_image_without_proposals_says_so(model, val_set) -> None:
    blind = copy.deepcopy(model)
    blind.rpn.min_size = 1e6  # every proposal is too small
    explorer = StageExplorer(blind, val_set)
    assert explorer.last_view is None and explorer.roi.disabled
    assert "no box" in explorer.status.value


def test_explorers_from_a_checkpoint(shapes_cfg, val_set, tmp_path: Path) -> None:
    train(shortened(shapes_cfg, 1), tmp_path / "run")
    explorer = StageExplorer.from_checkpoint(tmp_path / "run" / "checkpoint.pt", val_set, score_threshold=0.0)
    assert explorer.last_view is not None and not explorer.model.training
    assert viz.count_artists(explorer.figure, viz.GID_BOX) == explorer.last_num_detections > 0
    viewer = ProposalViewer.from_checkpoint(tmp_path / "run" / "checkpoint.pt", val_set, recall_images=2)
    assert len(viewer.boxes) > 0


def test_explorers_refuse_an_empty_dataset(model, val_set) -> None:
    empty = torch.utils.data.Subset(val_set, [])
    for explorer in (StageExplorer, ProposalViewer):
        with pytest.raises(ValueError, match="empty dataset"):
            explorer(model, empty)
