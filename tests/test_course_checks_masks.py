"""The checks of notebook 04 (RoI sampling, mask targets) pass the library's functions and
diagnose planted mistakes: which case failed, and a hint; hidden tests print no inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mnc_teach.boxes import box_iou, clip_boxes
from mnc_teach.course.checks_masks import (
    banded_proposals,
    check_mask_targets,
    check_sample_rois,
    mask_target_case,
    roi_sampling_case,
)
from mnc_teach.course.exercise import ExerciseFailed, boxes_tensor
from mnc_teach.matching import (
    RoISample,
    draw_without_replacement,
    match_boxes,
    match_rois,
    sample_rois,
)
from mnc_teach.stage2_masks import mask_targets


def _not_implemented(*args, **kwargs):
    raise NotImplementedError


# ---------------------------------------------------------------- RoI sampling
def _sample(
    proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, batch_size: int = 64,
    fg_fraction: float = 0.3, fg_iou: float = 0.5, bg_iou_low: float = 0.1,
    hard_bg_fraction: float = 0.85, append_gt_boxes: bool = True,
    generator: torch.Generator | None = None, mistake: str = "",
) -> RoISample:
    """A learner's sample_rois; ``mistake`` plants one of the usual errors."""
    candidates = proposals
    if (append_gt_boxes or mistake == "always append") and gt_boxes.numel():
        candidates = torch.cat([proposals, gt_boxes])
    if mistake == "detach":
        candidates = candidates.detach()
    matched = match_rois(candidates, gt_boxes, gt_labels, fg_iou=fg_iou)
    background = matched.labels == 0
    hard_rule = matched.iou > bg_iou_low if mistake == "strict hard" else matched.iou >= bg_iou_low
    is_fg = matched.labels > 0
    if mistake == "strict fg":
        is_fg &= matched.iou > fg_iou
    fg = torch.nonzero(is_fg).flatten()
    hard = torch.nonzero(background & hard_rule).flatten()
    easy = torch.nonzero(background & ~hard_rule).flatten()
    fg = draw_without_replacement(fg, int(batch_size * fg_fraction), generator)
    num_bg = batch_size - len(fg)
    wanted_hard = round(num_bg * hard_bg_fraction)
    if mistake != "no shortfall":
        wanted_hard = max(wanted_hard, num_bg - len(easy))
    num_hard = min(len(hard), wanted_hard)
    if mistake == "easy first":
        easy = draw_without_replacement(easy, num_bg - num_hard, generator)
        hard = draw_without_replacement(hard, num_hard, generator)
    else:
        hard = draw_without_replacement(hard, num_hard, generator)
        easy = draw_without_replacement(easy, num_bg - num_hard, generator)
    keep = torch.cat([fg, hard, easy])
    return RoISample(
        matched.boxes[keep], matched.matched_gt[keep], matched.labels[keep], matched.iou[keep]
    )


def _planted(mistake: str):
    return lambda *args, **kwargs: _sample(*args, **kwargs, mistake=mistake)


def test_roi_sampling_passes_the_library_and_a_learners_solution(capsys) -> None:
    assert check_sample_rois(sample_rois).status == "passed"
    assert check_sample_rois(_sample).status == "passed"
    assert capsys.readouterr().out.count("✓ my_sample_rois draws the same RoIs") == 2


@pytest.mark.parametrize(
    ("mistake", "failing_case", "diagnosis"),
    [
        ("no shortfall", "few easy background: more hard background",
         "expected 19 fg / 42 hard bg / 3 easy bg\n  got      19 fg / 38 hard bg / 3 easy bg"),
        ("strict hard", "IoU exactly fg_iou and bg_iou_low",
         "expected 1 fg / 2 hard bg / 2 easy bg\n  got      1 fg / 1 hard bg / 3 easy bg"),
        ("strict fg", "IoU exactly fg_iou and bg_iou_low", "got      0 fg / 2 hard bg / 3 easy bg"),
        ("always append", "append_gt_boxes=False", "expected 0 fg / 40 hard bg / 24 easy bg"),
        ("easy first", "plenty in every band",
         "the band counts are right (19 fg / 38 hard bg / 7 easy bg), but boxes differs"),
        ("detach", "plenty in every band", "no gradient reaches the proposals"),
    ],
)
def test_roi_sampling_diagnoses_planted_mistakes(mistake, failing_case, diagnosis, capsys) -> None:
    result = check_sample_rois(_planted(mistake))
    out = capsys.readouterr().out
    assert result.status == "wrong"
    assert out.startswith(f"✗ {failing_case}\n") and diagnosis in out, out


def test_roi_sampling_needs_the_generator(capsys) -> None:
    """Drawing with the global RNG instead of the seeded generator gives other RoIs."""
    assert not check_sample_rois(lambda *args, generator, **kwargs: _sample(*args, **kwargs))
    assert "but boxes differs" in capsys.readouterr().out


def test_roi_sampling_stub_is_missing_in_one_line(capsys) -> None:
    result = check_sample_rois(_not_implemented)
    assert result.status == "missing"
    assert capsys.readouterr().out == "✗ my_sample_rois is not implemented yet\n"


def test_banded_proposals_fall_into_their_bands() -> None:
    objects = boxes_tensor([[10, 10, 50, 40], [100, 20, 130, 70]])
    proposals = banded_proposals(objects, (5, 7, 9), torch.Generator().manual_seed(0))
    best = match_boxes(box_iou(objects, proposals), high_threshold=0.5, low_threshold=0.1)
    assert proposals.shape == (21, 4)
    assert [(best >= 0).sum(), (best == -2).sum(), (best == -1).sum()] == [5, 7, 9]


def test_roi_sampling_hidden_failure_raises_and_shows_no_inputs(capsys) -> None:
    objects = boxes_tensor([[0, 0, 40, 40], [80, 80, 120, 120]])
    proposals = banded_proposals(objects, (20, 60, 2), torch.Generator().manual_seed(3))
    hidden = roi_sampling_case(
        "a hidden case", proposals, objects, [4, 1], "the shortfall rule", seed=11
    )
    with pytest.raises(ExerciseFailed, match="a hidden test: a hidden case"):
        check_sample_rois(_planted("no shortfall"), cases=[hidden], hidden=True)
    assert capsys.readouterr().out == "✗ a hidden case\n  hint: the shortfall rule\n"


# ---------------------------------------------------------------- mask targets
def _grid_sample_targets(
    gt_masks: Tensor, matched_gt: Tensor, boxes: Tensor, *, mask_size: int,
    threshold: float = 0.4,
) -> Tensor:
    """Another resizing method than the library's (one bilinear sample per cell)."""
    height, width = gt_masks.shape[-2:]
    cells = (torch.arange(mask_size, dtype=torch.float32) + 0.5) / mask_size
    out = torch.zeros(len(boxes), mask_size, mask_size)
    if not len(gt_masks):  # an image without instances
        return out
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


def _clipped(gt_masks, matched_gt, boxes, *, mask_size, threshold=0.4):
    boxes = clip_boxes(boxes, gt_masks.shape[-2:])
    return _grid_sample_targets(gt_masks, matched_gt, boxes, mask_size=mask_size,
                                threshold=threshold)


def _fixed_threshold(gt_masks, matched_gt, boxes, *, mask_size, threshold=0.4):
    return _grid_sample_targets(gt_masks, matched_gt, boxes, mask_size=mask_size)


def _soft(gt_masks, matched_gt, boxes, *, mask_size, threshold=0.4):
    """Forgets to binarise (the library's soft resize)."""
    hard = mask_targets(gt_masks, matched_gt, boxes, mask_size=mask_size, threshold=threshold)
    return hard * 0.9


def test_mask_targets_pass_the_library_and_another_resize(capsys) -> None:
    assert check_mask_targets(mask_targets).status == "passed"
    assert check_mask_targets(_grid_sample_targets).status == "passed"
    assert capsys.readouterr().out.count("✓ my_mask_targets matches") == 2


@pytest.mark.parametrize(
    ("wrong", "failing_case", "diagnosis"),
    [
        (_clipped, "a box partly outside the image", "% of the cells differ"),
        (_fixed_threshold, "threshold is a parameter (0.6)", "% of the cells differ"),
        (_soft, "box = the object's tight box", "expected 0/1 values"),
        (lambda *args, mask_size, threshold: mask_targets(
            *args, mask_size=mask_size, threshold=threshold).flatten(1),
         "box = the object's tight box", "expected a tensor of shape (1, 8, 8), got torch.Size"),
    ],
)
def test_mask_targets_diagnose_planted_mistakes(wrong, failing_case, diagnosis, capsys) -> None:
    assert check_mask_targets(wrong).status == "wrong"
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {failing_case}\n") and diagnosis in out, out


def test_mask_targets_stub_and_positional_settings(capsys) -> None:
    assert check_mask_targets(_not_implemented).status == "missing"
    assert capsys.readouterr().out == "✗ my_mask_targets is not implemented yet\n"
    # the library's settings are keyword-only: a learner's function must take them by name
    assert check_mask_targets(lambda masks, matched, boxes, m, t: mask_targets(
        masks, matched, boxes, mask_size=m, threshold=t)).status == "wrong"
    assert "raised TypeError" in capsys.readouterr().out


def test_mask_targets_hidden_failure_raises_and_shows_no_inputs(capsys) -> None:
    ring = torch.zeros(1, 24, 24, dtype=torch.uint8)
    ring[0, 4:20, 4:20] = 1
    ring[0, 8:16, 8:16] = 0
    hidden = mask_target_case("a hidden ring", ring, [0], boxes_tensor([[1, 1, 21, 21]]),
                              "the hint", mask_size=10, threshold=0.7)
    with pytest.raises(ExerciseFailed, match="a hidden ring"):
        check_mask_targets(_fixed_threshold, cases=[hidden], hidden=True)
    assert capsys.readouterr().out == "✗ a hidden ring\n  hint: the hint\n"
