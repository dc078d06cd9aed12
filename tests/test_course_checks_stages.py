"""The stage 1-3 exercise checkers accept correct solutions and reject typical mistakes with the
right hint. The checkers pass the library's keyword-only parameters by name, so the solutions
here take the library's parameter names."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from mnc_teach.boxes import clip_boxes, decode_boxes, nms, remove_small_boxes
from mnc_teach.course import checks_stages as checks
from mnc_teach.stage1_rpn import generate_proposals
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.stage3_classify import mask_level_labels


def _proposals(
    anchors, objectness_logits, anchor_deltas, image_size, pre_nms_top_n, post_nms_top_n,
    nms_iou, min_size, clip=True, small_after_clip=True,
):
    logits = objectness_logits
    top = logits.topk(min(pre_nms_top_n, logits.numel())).indices
    boxes, scores = decode_boxes(anchor_deltas[top], anchors[top]), torch.sigmoid(logits[top])
    if clip and small_after_clip:
        boxes = clip_boxes(boxes, image_size)
    keep = remove_small_boxes(boxes, min_size)
    boxes, scores = boxes[keep], scores[keep]
    if clip and not small_after_clip:
        boxes = clip_boxes(boxes, image_size)
    keep = nms(boxes, scores, nms_iou)[:post_nms_top_n]
    return boxes[keep], scores[keep]


def test_check_generate_proposals(capsys):
    assert checks.check_generate_proposals(generate_proposals)
    assert checks.check_generate_proposals(_proposals)
    assert not checks.check_generate_proposals(partial(_proposals, clip=False))
    assert "clip" in capsys.readouterr().out
    assert not checks.check_generate_proposals(partial(_proposals, small_after_clip=False))
    assert "AFTER clipping" in capsys.readouterr().out


def _grid_sample_targets(gt_masks, matched_gt, boxes, mask_size, threshold=0.4):
    height, width = gt_masks.shape[-2:]
    cells = (torch.arange(mask_size, dtype=torch.float32) + 0.5) / mask_size
    out = torch.zeros(len(boxes), mask_size, mask_size)
    for r, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        gy, gx = torch.meshgrid(
            2 * (y1 + cells * (y2 - y1)) / height - 1,
            2 * (x1 + cells * (x2 - x1)) / width - 1,
            indexing="ij",
        )
        soft = F.grid_sample(
            gt_masks[matched_gt[r]][None, None].float(),
            torch.stack([gx, gy], -1)[None],
            align_corners=False,
        )
        out[r] = (soft[0, 0] >= threshold).float()
    return out


def test_check_mask_targets(capsys):
    assert checks.check_mask_targets(mask_targets)
    # another resizing method, within the tolerance
    assert checks.check_mask_targets(_grid_sample_targets)

    def clipped(gt_masks, matched_gt, boxes, mask_size, threshold=0.4):
        boxes = clip_boxes(boxes, gt_masks.shape[-2:])
        return _grid_sample_targets(gt_masks, matched_gt, boxes, mask_size, threshold)

    assert not checks.check_mask_targets(clipped)
    assert "do not clip the box" in capsys.readouterr().out

    def fixed_threshold(gt_masks, matched_gt, boxes, mask_size, threshold=0.4):
        return _grid_sample_targets(gt_masks, matched_gt, boxes, mask_size, 0.4)

    assert not checks.check_mask_targets(fixed_threshold)
    assert "threshold" in capsys.readouterr().out


def test_check_mask_level_labels(capsys):
    assert checks.check_mask_level_labels(mask_level_labels)

    def strict(mask_probs, mask_targets, boxes, gt_areas, box_labels, mask_iou_fg=0.5,
               threshold=0.4):
        """IoU > mask_iou_fg instead of >=."""
        return mask_level_labels(
            mask_probs, mask_targets, boxes, gt_areas=gt_areas, box_labels=box_labels,
            mask_iou_fg=mask_iou_fg + 1e-6, threshold=threshold,
        )

    assert not checks.check_mask_level_labels(strict)
    assert "IoU exactly 0.5" in capsys.readouterr().out

    def fixed_threshold(mask_probs, mask_targets, boxes, gt_areas, box_labels, mask_iou_fg=0.5,
                        threshold=0.4):
        return mask_level_labels(
            mask_probs, mask_targets, boxes, gt_areas=gt_areas, box_labels=box_labels,
            mask_iou_fg=mask_iou_fg, threshold=0.5,
        )

    assert not checks.check_mask_level_labels(fixed_threshold)
    assert "binarise" in capsys.readouterr().out


# ---- check_roi_warp (notebook 03): one bilinear sample ----


def _bilinear(
    feature: torch.Tensor,
    x: float,
    y: float,
    transpose: bool = False,
    zero_left: bool = False,
    no_edge_rule: bool = False,
) -> float:
    """One bilinear sample by the rule in the roi_warp docstring; the flags plant the mistakes
    learners make."""
    height, width = feature.shape
    if transpose:
        feature, (height, width) = feature.T, (width, height)
    if y < -1 or y > height or x < -1 or x > width or (zero_left and (x < 0 or y < 0)):
        return 0.0
    x, y = max(x, 0.0), max(y, 0.0)
    x_low, y_low = int(x), int(y)
    if not no_edge_rule:
        x_low, y_low = min(x_low, width - 1), min(y_low, height - 1)
    x_high, y_high = min(x_low + 1, width - 1), min(y_low + 1, height - 1)
    x = float(x_low) if x_low >= width - 1 else x
    y = float(y_low) if y_low >= height - 1 else y
    lx, ly = x - x_low, y - y_low
    return float(
        (1 - ly) * (1 - lx) * feature[y_low, x_low]
        + (1 - ly) * lx * feature[y_low, x_high]
        + ly * (1 - lx) * feature[y_high, x_low]
        + ly * lx * feature[y_high, x_high]
    )


def test_check_roi_warp_passes_a_correct_sample(capsys) -> None:
    assert checks.check_roi_warp(_bilinear)
    assert capsys.readouterr().out.startswith("✓ my_bilinear matches roi_warp")


def _not_implemented(*args):
    raise NotImplementedError


@pytest.mark.parametrize(
    ("wrong", "expected_in_output"),
    [
        (lambda f, x, y: _bilinear(f, x, y, transpose=True), "at a cell centre"),
        (
            lambda f, x, y: _bilinear(f, x, y, zero_left=True),
            "just left of the map: (x, y) = (-0.400, 1.500)",
        ),
        (
            lambda f, x, y: _bilinear(f, x, y, no_edge_rule=True),
            "exactly on the right border x = w: raised IndexError",
        ),
        (lambda f, x, y: torch.tensor([1.0, 2.0]), "expected one number"),
        (_not_implemented, "my_bilinear is not implemented yet"),
    ],
)
def test_check_roi_warp_diagnoses_mistakes(wrong, expected_in_output, capsys) -> None:
    assert checks.check_roi_warp(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and expected_in_output in out, out
