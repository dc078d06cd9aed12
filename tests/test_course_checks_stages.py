"""The stage 1-3 exercise checkers accept correct solutions and reject typical mistakes with the right hint."""

import torch
import torch.nn.functional as F

from mnc_teach.boxes import clip_boxes, decode_boxes, nms, remove_small_boxes
from mnc_teach.course import checks
from mnc_teach.stage1_rpn import generate_proposals
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.stage3_classify import mask_level_labels


def _proposals(anchors, logits, deltas, size, pre, post, nms_iou, min_size, clip=True, small_after_clip=True):
    top = logits.topk(min(pre, logits.numel())).indices
    boxes, scores = decode_boxes(deltas[top], anchors[top]), torch.sigmoid(logits[top])
    if clip and small_after_clip:
        boxes = clip_boxes(boxes, size)
    keep = remove_small_boxes(boxes, min_size)
    boxes, scores = boxes[keep], scores[keep]
    if clip and not small_after_clip:
        boxes = clip_boxes(boxes, size)
    keep = nms(boxes, scores, nms_iou)[:post]
    return boxes[keep], scores[keep]


def test_check_generate_proposals(capsys):
    assert checks.check_generate_proposals(generate_proposals)
    assert checks.check_generate_proposals(_proposals)
    assert not checks.check_generate_proposals(lambda *a: _proposals(*a, clip=False))
    assert "clip" in capsys.readouterr().out
    assert not checks.check_generate_proposals(lambda *a: _proposals(*a, small_after_clip=False))
    assert "AFTER clipping" in capsys.readouterr().out


def _grid_sample_targets(gt_masks, matched_gt, boxes, mask_size, threshold=0.4):
    height, width = gt_masks.shape[-2:]
    cells = (torch.arange(mask_size, dtype=torch.float32) + 0.5) / mask_size
    out = torch.zeros(len(boxes), mask_size, mask_size)
    for r, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        gy, gx = torch.meshgrid(2 * (y1 + cells * (y2 - y1)) / height - 1, 2 * (x1 + cells * (x2 - x1)) / width - 1, indexing="ij")
        soft = F.grid_sample(gt_masks[matched_gt[r]][None, None].float(), torch.stack([gx, gy], -1)[None], align_corners=False)
        out[r] = (soft[0, 0] >= threshold).float()
    return out


def test_check_mask_targets(capsys):
    assert checks.check_mask_targets(mask_targets)
    assert checks.check_mask_targets(_grid_sample_targets)  # another resizing method, within the tolerance
    assert not checks.check_mask_targets(lambda m, g, b, s, t=0.4: _grid_sample_targets(m, g, clip_boxes(b, m.shape[-2:]), s, t))
    assert "do not clip the box" in capsys.readouterr().out
    assert not checks.check_mask_targets(lambda m, g, b, s, t=0.4: _grid_sample_targets(m, g, b, s, 0.4))
    assert "threshold" in capsys.readouterr().out


def test_check_mask_level_labels(capsys):
    assert checks.check_mask_level_labels(mask_level_labels)

    def strict(probs, targets, boxes, areas, labels, fg=0.5, threshold=0.4):  # IoU > fg instead of >=
        iou_ok = mask_level_labels(probs, targets, boxes, areas, labels, fg + 1e-6, threshold)
        return iou_ok

    assert not checks.check_mask_level_labels(strict)
    assert "IoU exactly 0.5" in capsys.readouterr().out
    assert not checks.check_mask_level_labels(lambda p, t, b, a, lab, fg=0.5, th=0.4: mask_level_labels(p, t, b, a, lab, fg, 0.5))
    assert "binarise" in capsys.readouterr().out
