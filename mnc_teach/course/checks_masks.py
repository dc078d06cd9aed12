"""Exercise checks of notebook 04, the training RoIs and the targets of stage 2: RoI sampling
(``my_sample_rois``) and mask targets (``my_mask_targets``).

Each check runs the learner's function on edge cases against the library and prints a
diagnosis of the first failure; :mod:`mnc_teach.course.exercise` says what a failure does
(report interactively, raise under nbgrader).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mnc_teach.config import MaskHeadConfig, RoIConfig
from mnc_teach.course.exercise import (
    Case,
    boxes_tensor,
    call_learner,
    exercise_check,
    passed,
    random_boxes,
    report_failure,
    split_keywords,
)
from mnc_teach.matching import RoISample, sample_rois
from mnc_teach.stage2_masks import mask_targets

__all__ = [
    "MASK_TARGET_TOLERANCE", "banded_proposals", "check_mask_targets", "check_sample_rois",
    "mask_target_case", "mask_targets_cases", "roi_sampling_case", "roi_sampling_cases",
]

ROI_KEYWORDS = (
    "batch_size", "fg_fraction", "fg_iou", "bg_iou_low", "hard_bg_fraction", "append_gt_boxes",
    "generator",
)
ROI_FIELDS = ("boxes", "matched_gt", "labels", "iou")
# IoU ranges of the three bands at the default thresholds 0.5 / 0.1: fg, hard bg, easy bg
BANDS = ((0.55, 0.95), (0.15, 0.45), (0.0, 0.07))
# three objects well apart (labels 1, 3, 2): a box near one of them misses the others
THREE_OBJECTS = boxes_tensor([[10, 10, 50, 40], [100, 20, 130, 70], [40, 110, 90, 150]])


# ---------------------------------------------------------------- RoI sampling
def banded_proposals(
    gt_boxes: Tensor, counts: tuple[int, int, int], generator: torch.Generator
) -> Tensor:
    """Proposals [fg + hard + easy, 4] around ``gt_boxes`` (objects well apart), shuffled:
    ``counts`` of them have IoU with their object in [0.55, 0.95) (foreground at the default
    thresholds), [0.15, 0.45) (hard background) and [0, 0.07) (easy background)."""
    rows = []
    for (low, high), count in zip(BANDS, counts, strict=True):
        gt = gt_boxes[torch.randint(len(gt_boxes), (count,), generator=generator)]  # (count, 4)
        iou = low + (high - low) * torch.rand(count, generator=generator)  # (count,)
        axis = torch.randint(2, (count,), generator=generator)  # shift along x (0) or y (1)
        sign = torch.randint(2, (count,), generator=generator) * 2 - 1
        side = (gt[:, 2:] - gt[:, :2]).gather(1, axis[:, None])[:, 0]  # (count,)
        offset = torch.zeros(count, 2)
        # a box shifted by d along a side s has IoU (s - d) / (s + d) with itself
        offset[torch.arange(count), axis] = sign * side * (1 - iou) / (1 + iou)
        rows.append(gt + offset.repeat(1, 2))
    proposals = torch.cat(rows)  # (fg + hard + easy, 4)
    return proposals[torch.randperm(len(proposals), generator=generator)]


def roi_sampling_case(
    name: str,
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: list[int],
    hint: str,
    *,
    seed: int = 0,
    **settings: float | int | bool,
) -> Case:
    """A case of ``my_sample_rois``: the library's defaults (RoIConfig) unless ``settings`` says
    otherwise; the generator is seeded with ``seed`` (the check gives each call a fresh one)."""
    defaults = RoIConfig()
    values = {key: settings.get(key, getattr(defaults, key)) for key in ROI_KEYWORDS[:-1]}
    unknown = set(settings) - set(values)
    if unknown:
        raise TypeError(f"unknown settings of sample_rois: {sorted(unknown)}")
    labels = torch.tensor(gt_labels, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    return Case(name, (proposals, gt_boxes, labels, *values.values(), generator), hint)


def roi_sampling_cases() -> list[Case]:
    """The visible cases of ``my_sample_rois``: (proposals, gt_boxes, gt_labels, batch_size,
    fg_fraction, fg_iou, bg_iou_low, hard_bg_fraction, append_gt_boxes, generator)."""
    gen = torch.Generator().manual_seed(0)
    objects, labels = THREE_OBJECTS, [1, 3, 2]
    one = boxes_tensor([[0, 0, 10, 10]])
    # IoU with `one`: exactly 0.5 (fg), 0.25, exactly 0.1 (both hard bg), then 6 times 0 (easy)
    on_thresholds = boxes_tensor(
        [[0, 0, 10, 20], [0, 0, 20, 20], [0, 0, 10, 100]]
        + [[50 + 12 * i, 50, 60 + 12 * i, 60] for i in range(6)]
    )
    case = roi_sampling_case
    return [
        case("plenty in every band", banded_proposals(objects, (30, 60, 40), gen), objects, labels,
             "int(batch_size * fg_fraction) fg at most; of the rest, round(85 %) hard bg",
             seed=1),
        case("few foreground: background fills the batch",
             banded_proposals(objects, (2, 80, 40), gen), objects, labels,
             "with fewer fg than the cap, the background gets batch_size - (fg drawn)", seed=2),
        case("few easy background: more hard background",
             banded_proposals(objects, (30, 60, 3), gen), objects, labels,
             "shortfall rule: hard bg = min(hard available, max(round(bg * hard_bg_fraction), "
             "bg - easy available))", seed=3),
        case("few hard background: more easy background",
             banded_proposals(objects, (30, 5, 60), gen), objects, labels,
             "take all the hard bg there is, then easy bg for the rest of the background", seed=4),
        case("too few candidates: a smaller batch", banded_proposals(objects, (4, 6, 5), gen),
             objects, labels, "draw without replacement: the batch may be smaller than batch_size",
             seed=5),
        case("only the ground truth is foreground", banded_proposals(objects, (0, 40, 30), gen),
             objects, labels, "append_gt_boxes=True: the ground-truth boxes join the candidates "
             "(after the proposals), each with IoU 1 with itself", seed=6),
        case("append_gt_boxes=False", banded_proposals(objects, (0, 40, 30), gen), objects,
             labels, "without append_gt_boxes the candidates are the proposals alone", seed=7,
             append_gt_boxes=False),
        case("IoU exactly fg_iou and bg_iou_low", on_thresholds, one, [2],
             "IoU >= fg_iou is fg; bg_iou_low <= IoU < fg_iou is hard bg; IoU < bg_iou_low easy",
             seed=3, batch_size=5, fg_fraction=0.2, hard_bg_fraction=0.5,
             append_gt_boxes=False),
        case("no ground truth (G = 0)", random_boxes(20, gen), boxes_tensor([]), [],
             "G = 0: every candidate is easy background, matched_gt 0, IoU 0 (match_rois does it)",
             seed=9),
        case("other settings", banded_proposals(objects, (40, 40, 40), gen), objects, labels,
             "use the arguments (batch_size, fg_fraction, fg_iou, bg_iou_low, hard_bg_fraction), "
             "not the defaults", seed=10, batch_size=32, fg_fraction=0.5, fg_iou=0.6,
             bg_iou_low=0.2, hard_bg_fraction=0.5),
    ]


def _band_counts(sample: object, bg_iou_low: float) -> tuple[int, int, int] | None:
    """(fg, hard bg, easy bg) counts of a RoISample-like result, or None if it has no labels/iou
    of one length."""
    labels, iou = getattr(sample, "labels", None), getattr(sample, "iou", None)
    if not (torch.is_tensor(labels) and torch.is_tensor(iou)) or labels.shape != iou.shape:
        return None
    background = labels == 0
    hard = int((background & (iou >= bg_iou_low)).sum())
    return int((labels > 0).sum()), hard, int(background.sum()) - hard


def _counts_text(counts: tuple[int, int, int] | None) -> str:
    if counts is None:
        return "no labels / iou of one length"
    return "{} fg / {} hard bg / {} easy bg".format(*counts)


def _fresh_case(case: Case, proposals: Tensor) -> Case:
    """``case`` with these proposals and a fresh generator of the same seed."""
    seed = case.args[-1].initial_seed()
    return case._replace(args=(proposals, *case.args[1:-1], torch.Generator().manual_seed(seed)))


def _grad_to_proposals(sample: RoISample, proposals: Tensor) -> Tensor | None:
    """d(sum of the sampled boxes) / d proposals, or None if the boxes do not depend on them."""
    boxes = sample.boxes
    if not torch.is_tensor(boxes) or not boxes.requires_grad:
        return None
    (grad,) = torch.autograd.grad(boxes.sum(), proposals, allow_unused=True)
    return grad


@exercise_check("roi_sampling", sample_rois=sample_rois)
def check_sample_rois(fn: Callable[..., RoISample], *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_sample_rois(proposals [R, 4], gt_boxes [G, 4], gt_labels [G], *, ...) ->
    RoISample`` against ``mnc_teach.matching.sample_rois`` with the same seeded generator: the
    same boxes, matched_gt, labels and iou, and a gradient from the boxes to the proposals."""
    cases = roi_sampling_cases() if cases is None else cases
    for case in cases:
        library_case = _fresh_case(case, case.args[0].detach().clone().requires_grad_(True))
        positional, by_name = split_keywords(library_case.args, ROI_KEYWORDS)
        expected = sample_rois(*positional, **by_name)
        learner_case = _fresh_case(case, case.args[0].detach().clone().requires_grad_(True))
        ok, got = call_learner(fn, learner_case, fn_name="my_sample_rois", keywords=ROI_KEYWORDS)
        if not ok:
            return False
        bg_iou_low = by_name["bg_iou_low"]
        wanted, counts = _band_counts(expected, bg_iou_low), _band_counts(got, bg_iou_low)
        if counts != wanted:
            return report_failure(case, [
                f"expected {_counts_text(wanted)}",
                f"got      {_counts_text(counts)}",
            ])
        for field in ROI_FIELDS:
            want, have = getattr(expected, field), getattr(got, field, None)
            same = (
                torch.is_tensor(have) and have.shape == want.shape and have.dtype == want.dtype
                and torch.allclose(have.detach(), want.detach(), atol=1e-6)
            )
            if not same:
                return report_failure(case, [
                    f"the band counts are right ({_counts_text(counts)}), but {field} differs:",
                    f"expected {field} = {want.detach().tolist()[:4]} ({want.dtype})",
                    f"got      {field} = {_shown_rows(have)}",
                    "draw each band with draw_without_replacement(band indices in increasing "
                    "order, count, generator): fg, then hard bg, then easy bg, and keep that order",
                ])
        if case.args[0].numel():
            want_grad = _grad_to_proposals(expected, library_case.args[0])
            got_grad = _grad_to_proposals(got, learner_case.args[0])
            if got_grad is None or not torch.equal(got_grad, want_grad):
                return report_failure(case, [
                    "the sampled boxes are right, but no gradient reaches the proposals"
                    if got_grad is None else "the gradient reaching the proposals differs",
                    "index the candidate boxes (torch.cat, then [keep]); do not detach them or "
                    "build them anew",
                ])
    return passed(f"my_sample_rois draws the same RoIs as mnc_teach.matching.sample_rois on all "
                  f"{len(cases)} cases, and the gradient reaches the proposals")


def _shown_rows(value: object) -> str:
    if not torch.is_tensor(value):
        return type(value).__name__
    return f"{value.detach().tolist()[:4]} ({value.dtype}, shape {tuple(value.shape)})"


# ---------------------------------------------------------------- mask targets
# share of the M x M cells that may differ (resizing methods sample at different points)
MASK_TARGET_TOLERANCE = 0.03
MASK_TARGET_KEYWORDS = ("mask_size", "threshold")


def _disc_masks(size: int, centres: list[tuple[float, float]], radius: float) -> Tensor:
    """uint8 [len(centres), size, size]: one disc of ``radius`` around each (x, y) centre."""
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    discs = [(cols - cx) ** 2 + (rows - cy) ** 2 <= radius**2 for cx, cy in centres]
    return torch.stack(discs).to(torch.uint8)


def mask_target_case(
    name: str,
    gt_masks: Tensor,
    matched_gt: list[int],
    boxes: Tensor,
    hint: str,
    *,
    mask_size: int,
    threshold: float = MaskHeadConfig.target_threshold,
) -> Case:
    """A case of ``my_mask_targets``: (gt_masks, matched_gt, boxes, mask_size, threshold)."""
    index = torch.tensor(matched_gt, dtype=torch.int64)
    return Case(name, (gt_masks, index, boxes, mask_size, threshold), hint)


def mask_targets_cases() -> list[Case]:
    """The visible cases of ``my_mask_targets``."""
    gen = torch.Generator().manual_seed(0)
    square = torch.zeros(1, 32, 48, dtype=torch.uint8)
    square[0, 8:24, 4:20] = 1  # box (4, 8, 20, 24)
    two = torch.zeros(2, 32, 32, dtype=torch.uint8)
    two[0, 2:12, 2:12] = 1
    two[1, 16:30, 10:30] = 1
    stripes = torch.zeros(1, 16, 16, dtype=torch.uint8)
    stripes[0, :, ::2] = 1  # every other column: each 2-pixel cell is half covered
    corner = torch.zeros(1, 32, 32, dtype=torch.uint8)
    corner[0, 0:10, 0:10] = 1
    discs = _disc_masks(64, [(20, 24), (44, 40)], 12.0)
    disc_boxes = boxes_tensor([[8, 12, 32, 36], [32, 28, 56, 52]])
    jittered = disc_boxes.repeat(3, 1) + 4 * torch.randn(6, 4, generator=gen)
    case = mask_target_case
    return [
        case("box = the object's tight box", square, [0], boxes_tensor([[4, 8, 20, 24]]),
             "crop the mask to the box before resizing: "
             "a rectangle fills its own box, so the target is all 1", mask_size=8),
        case("box twice as wide as the object", square, [0], boxes_tensor([[4, 8, 36, 24]]),
             "the target is relative to the RoI: the object fills its left half", mask_size=8),
        case("matched_gt picks the instance", two, [1, 0],
             boxes_tensor([[10, 16, 30, 30], [2, 2, 12, 12]]),
             "RoI r takes the mask gt_masks[matched_gt[r]]", mask_size=7),
        case("a box that misses the object", square, [0], boxes_tensor([[24, 0, 32, 6]]),
             "no overlap gives an all-zero target", mask_size=6),
        case("a box partly outside the image", corner, [0], boxes_tensor([[-10, -10, 10, 10]]),
             "do not clip the box: pixels outside the image count as 0, "
             "so the object fills the bottom-right quarter", mask_size=8),
        case("threshold is a parameter (0.6)", stripes, [0], boxes_tensor([[0, 0, 16, 16]]),
             "each cell here is half covered (0.5): use the threshold argument, "
             ">= threshold is 1", mask_size=8, threshold=0.6),
        case("two discs, six jittered boxes, m = 28", discs, [0, 1] * 3, jittered,
             "sample the instance's mask bilinearly at the M x M cell centres inside the box, "
             "then binarise", mask_size=28),
        case("no RoIs", square, [], boxes_tensor([]), "R = 0 must give a [0, M, M] result",
             mask_size=5),
        case("an image without instances (G = 0)", torch.zeros(0, 32, 32, dtype=torch.uint8),
             [0, 0], boxes_tensor([[0, 0, 10, 10], [5, 5, 30, 20]]),
             "G = 0 (matched_gt is 0 then, as match_rois gives it): every target is all 0",
             mask_size=6),
    ]


@exercise_check("mask_targets", mask_targets=mask_targets)
def check_mask_targets(fn: Callable[..., Tensor], *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_mask_targets(gt_masks [G, H, W] uint8, matched_gt [R], boxes [R, 4], *,
    mask_size, threshold) -> [R, M, M]`` against ``stage2_masks.mask_targets``: binary, the right
    shape, and at most ``MASK_TARGET_TOLERANCE`` of the cells different (resizing methods sample
    the mask at slightly different points)."""
    cases = mask_targets_cases() if cases is None else cases
    for case in cases:
        positional, by_name = split_keywords(case.args, MASK_TARGET_KEYWORDS)
        expected = mask_targets(*positional, **by_name)
        ok, got = call_learner(
            fn, case, fn_name="my_mask_targets", keywords=MASK_TARGET_KEYWORDS
        )
        if not ok:
            return False
        if not torch.is_tensor(got) or got.shape != expected.shape:
            got_shape = getattr(got, "shape", type(got).__name__)
            return report_failure(
                case, [f"expected a tensor of shape {tuple(expected.shape)}, got {got_shape}"]
            )
        got = got.detach().float()
        if not ((got == 0) | (got == 1)).all():
            values = sorted(set(got.flatten().tolist()))[:5]
            return report_failure(case, [
                f"expected 0/1 values, got values like {values}",
                "binarise the resized mask: (resized >= threshold).float()",
            ])
        for r in range(len(expected)):
            differing = (got[r] != expected[r]).float().mean().item()
            if differing > MASK_TARGET_TOLERANCE:
                box = [round(v, 1) for v in case.args[2][r].tolist()]
                return report_failure(case, [
                    f"RoI {r} (box {box}): {100 * differing:.0f} % of the cells differ",
                    f"expected\n{expected[r].int()}",
                    f"got\n{got[r].int()}",
                ])
    return passed(
        f"my_mask_targets matches stage2_masks.mask_targets on all {len(cases)} cases"
    )
