"""The proposal viewer and the stage explorer driven from Python: set a control, check what was
drawn; and a model still in training is left as it was."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from mnc_teach.boxes import box_iou
from mnc_teach.cascade import build_mnc
from mnc_teach.config import get_preset, override, shortened
from mnc_teach.data import generate_shapes
from mnc_teach.engine.batches import build_datasets
from mnc_teach.engine.loop import train
from mnc_teach.stage1_rpn import generate_proposals
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.viz.common import GID_BOX, GID_GT, count_artists
from mnc_teach.viz.explorer import (
    GID_CLASS_BAR,
    GID_REFINED_BOX,
    GID_ROI_BOX,
    GID_STAGE_MASK,
)
from mnc_teach.viz.proposals import GID_PROPOSAL, GID_RECALL
from mnc_teach.widgets.explorers import ProposalViewer, StageExplorer


@pytest.fixture(scope="module")
def shapes_cfg(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, seed=0, num_train=8, num_val=6, progress=False)
    cfg = override(get_preset("shapes-cpu"), "data.root", str(root))
    return override(cfg, "train.images_per_batch", 2)


@pytest.fixture(scope="module")
def val_set(shapes_cfg):
    return build_datasets(shapes_cfg)[1]


@pytest.fixture(scope="module")
def model(shapes_cfg):
    # an untrained model: its scores sit near 1 / (K + 1), which the thresholds below use
    torch.manual_seed(0)
    return build_mnc(shapes_cfg).eval()


def rpn_proposals(model, image, pre: int, post: int, nms_iou: float):
    """``generate_proposals`` on the model's stage-1 output for ``image``, for reference."""
    size = tuple(image.shape[-2:])
    with torch.no_grad():
        out, _ = model.rpn(model.backbone(image[None]), [size])
    return generate_proposals(out.anchors, out.objectness_logits[0], out.anchor_deltas[0],
                              image_size=size, pre_nms_top_n=pre, post_nms_top_n=post,
                              nms_iou=nms_iou, min_size=model.rpn.min_size)


def detections_drawn(explorer: StageExplorer) -> int:
    return count_artists(explorer.figure, GID_BOX)


# ---------------------------------------------------------------- proposal viewer
def test_proposals_follow_the_sliders_and_equal_generate_proposals(model, val_set) -> None:
    viewer = ProposalViewer(model, val_set, recall_images=3, max_boxes=40)
    image, target = val_set[0]
    for pre, post, nms_iou in ((500, 100, 0.7), (50, 20, 0.5), (2000, 5, 0.9)):
        viewer.pre_nms_top_n.value, viewer.post_nms_top_n.value = pre, post
        viewer.nms_iou.value = nms_iou
        boxes, scores = rpn_proposals(model, image, pre, post, nms_iou)
        assert torch.allclose(viewer.boxes, boxes) and torch.allclose(viewer.scores, scores)
        assert len(viewer.boxes) <= post
        assert count_artists(viewer.figure, GID_PROPOSAL) == min(len(boxes), 40)
        assert count_artists(viewer.figure, GID_GT) == len(target["boxes"])
        assert count_artists(viewer.figure, GID_RECALL) == 2  # IoU 0.5 and 0.7
        best = box_iou(target["boxes"], boxes).max(dim=1).values
        for iou in (0.5, 0.7):
            expected = float((best >= iou).float().mean())
            assert viewer.last_recall["image"][iou] == pytest.approx(expected)
        assert f"{len(boxes)} proposals" in viewer.status.value


def test_stricter_nms_keeps_fewer_proposals_and_recall_is_over_the_first_images(
        model, val_set) -> None:
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
        boxes, _ = rpn_proposals(model, image, viewer.pre_nms_top_n.value,
                                 viewer.post_nms_top_n.value, 0.3)
        covered += int((box_iou(target["boxes"], boxes).max(dim=1).values >= 0.5).sum())
        total += len(target["boxes"])
    assert viewer.last_recall["dataset"][0.5] == pytest.approx(covered / total)


# ---------------------------------------------------------------- stage explorer
def test_stage_explorer_draws_one_roi_through_five_stages(model, val_set) -> None:
    explorer = StageExplorer(model, val_set, score_threshold=0.2, top_n=7)
    view = explorer.last_view
    fig = explorer.figure
    assert view.num_rois == len(explorer._run(0).view_rows["boxes"]) > 0
    assert count_artists(fig, GID_ROI_BOX) == 1 and count_artists(fig, GID_REFINED_BOX) == 1
    assert count_artists(fig, GID_GT) == len(val_set[0][1]["boxes"])
    num_classes = len(val_set.class_names)
    assert count_artists(fig, GID_CLASS_BAR) == 3 * num_classes  # mask-level, box-level, stage 5
    # stage 2, (its target), stage 4
    assert count_artists(fig, GID_STAGE_MASK) == 2 + (view.target is not None)
    scores = explorer._run(0).detections["scores"]
    expected = min(7, int((scores >= 0.2).sum()))
    assert detections_drawn(explorer) == explorer.last_num_detections == expected

    # RoI ranks follow the stage-3 foreground score, and every panel is the chosen RoI's
    fg = torch.stack([explorer._view(explorer._run(0), rank).cls_probs[1:].max()
                      for rank in range(5)])
    assert torch.all(fg[:-1] >= fg[1:])
    explorer.roi.value = 3
    assert explorer.last_view.roi_rank == 3
    assert explorer.last_view.proposal_index == int(explorer._run(0).order[3])

    for threshold, top_n in ((0.0, 100), (0.25, 3), (1.0, 10)):
        explorer.score_threshold.value, explorer.top_n.value = threshold, top_n
        expected = min(top_n, int((scores >= threshold).sum()))
        assert detections_drawn(explorer) == explorer.last_num_detections == expected
    assert "no detections" in explorer.figure.axes[-1].get_title()


def test_mask_threshold_changes_the_pasted_mask_and_image_change_reruns_the_model(
        model, val_set) -> None:
    explorer = StageExplorer(model, val_set)
    pasted = {}
    for threshold in (0.3, 0.6):
        explorer.mask_threshold.value = threshold
        pasted[threshold] = int(explorer.figure.axes[4].get_title().split("\n")[1].split()[0])
    mask = explorer.last_view.mask
    assert pasted[0.3] >= pasted[0.6]
    # some pixels where the mask passes 0.3
    assert (mask.min() < 0.3 < mask.max()) <= (pasted[0.3] > 0)
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
        assert (view.target is not None) == (view.true_label > 0)
        assert (view.true_label > 0) == bool(iou >= model.roi_sampling.fg_iou)
    # a RoI that is exactly object 0's box: its label is object 0's class, its target object 0's
    # mask in the box
    rank = 0
    run.view_rows["boxes"][int(run.order[rank])] = gt[0]
    view = explorer._view(run, rank)
    expected = mask_targets(run.target["masks"], torch.tensor([0]), gt[:1],
                            mask_size=view.mask.shape[-1],
                            threshold=model.loss_settings.mask_target_threshold)[0]
    assert view.matched_iou == pytest.approx(1.0)
    assert view.true_label == int(run.target["labels"][0])
    assert torch.equal(view.target, expected) and view.target.sum() > 0
    explorer.roi.value = 1  # redraw with the target panel
    explorer.roi.value = rank
    assert count_artists(explorer.figure, GID_STAGE_MASK) == 3


def test_three_stage_model_and_no_detections(model, val_set) -> None:
    three = copy.deepcopy(model)
    # 3 stages at inference, and nothing scores so high
    three.inference = dataclasses.replace(three.inference, num_stages=3, score_threshold=0.999)
    explorer = StageExplorer(three, val_set)
    assert explorer.last_view.refined_box is None and explorer.last_view.mask_s4 is None
    assert count_artists(explorer.figure, GID_REFINED_BOX) == 0
    assert count_artists(explorer.figure, GID_CLASS_BAR) == 2 * len(val_set.class_names)
    assert detections_drawn(explorer) == 0
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
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    explorer = StageExplorer.from_checkpoint(checkpoint, val_set, score_threshold=0.0)
    assert explorer.last_view is not None and not explorer.model.training
    assert detections_drawn(explorer) == explorer.last_num_detections > 0
    viewer = ProposalViewer.from_checkpoint(checkpoint, val_set, recall_images=2)
    assert len(viewer.boxes) > 0


def test_explorers_refuse_an_empty_dataset(model, val_set) -> None:
    empty = torch.utils.data.Subset(val_set, [])
    for explorer in (StageExplorer, ProposalViewer):
        with pytest.raises(ValueError, match="empty dataset"):
            explorer(model, empty)


def test_explorers_leave_a_training_model_in_training_and_the_rng_untouched(
        model, val_set) -> None:
    """Looking at a model that is still training (notebook 02 shows stage 1 between runs)
    changes nothing of it: every submodule keeps its mode, the global RNG its state."""
    training = copy.deepcopy(model).train()
    training.backbone.eval()  # a mixed state (e.g. a frozen backbone) comes back as it was
    modes = {name: module.training for name, module in training.named_modules()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    viewer = ProposalViewer(training, val_set, recall_images=2)
    viewer.index.value = 3  # runs the RPN on a new image
    explorer = StageExplorer(training, val_set)
    explorer.index.value = 1  # runs the cascade on a new image
    assert {name: module.training for name, module in training.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)
