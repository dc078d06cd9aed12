"""Exercise checkers of the cascade's stages: RoI warping (notebook 03), proposals (02), mask
targets (04) and mask-level labels (05). Same contract as :mod:`mnc_teach.course.checks`: each
``check_*`` prints a diagnosis of the first failing case and returns True/False.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mnc_teach.anchors import generate_base_anchors, grid_anchors
from mnc_teach.course.checks import (
    FAIL,
    PASS,
    Case,
    boxes_tensor,
    call_learner,
    report_failure,
    split_keywords,
)
from mnc_teach.roi_warp import roi_warp
from mnc_teach.stage1_rpn import generate_proposals
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.stage3_classify import mask_level_labels

__all__ = [
    "check_generate_proposals", "check_mask_level_labels", "check_mask_targets", "check_roi_warp",
]

# share of the M x M cells that may differ (resizing methods sample at different points)
MASK_TARGET_TOLERANCE = 0.03


def check_roi_warp(fn: Callable[[Tensor, float, float], Tensor | float]) -> bool:
    """Check ``fn(feature [h, w], x, y) -> value``, one bilinear sample with torchvision's border
    rule.

    (x, y) are feature coordinates where cell (row i, column j) sits at (j, i). The reference is
    ``mnc_teach.roi_warp.roi_warp`` on a 1 x 1 output whose single sample lands on (x, y): the
    box (x, y, x + 1, y + 1) at spatial scale 1, i.e. torchvision's
    ``roi_align(aligned=True, sampling_ratio=1)``.
    """
    gen = torch.Generator().manual_seed(0)
    # h = 4 rows, w = 5 columns
    feature = torch.randint(1, 10, (4, 5), generator=gen).to(torch.float64)
    # points beyond both borders
    xs = (torch.rand(40, generator=gen, dtype=torch.float64) * 8 - 2).tolist()
    ys = (torch.rand(40, generator=gen, dtype=torch.float64) * 7 - 2).tolist()
    cases = [
        Case(
            "at a cell centre",
            (feature, 2.0, 1.0),
            "at (x, y) = (j, i) the value is feature[i, j]: rows are y, columns x",
        ),
        Case(
            "half-way between two columns",
            (feature, 1.5, 2.0),
            "the right neighbour's weight is x - floor(x), the left one's 1 - (x - floor(x))",
        ),
        Case(
            "inside, between four cells",
            (feature, 0.25, 2.75),
            "weights (1-lx)(1-ly), lx(1-ly), (1-lx)ly, lx*ly "
            "with lx = x - floor(x), ly = y - floor(y)",
        ),
        Case(
            "far right on a non-square map",
            (feature, 3.5, 0.5),
            "the map is [h, w] = [4, 5]: index feature[y, x], not [x, y]",
        ),
        Case(
            "just left of the map",
            (feature, -0.4, 1.5),
            "-1 <= x <= 0: move x to 0 (the first column), do not return 0",
        ),
        Case(
            "more than a cell left of the map",
            (feature, -1.3, 1.5),
            "x < -1 (or y < -1): the sample is 0",
        ),
        Case(
            "past the last column centre",
            (feature, 4.4, 2.25),
            "floor(x) >= w - 1: both neighbours are the last column (w - 1), do not index column w",
        ),
        Case(
            "exactly on the right border x = w",
            (feature, 5.0, 1.0),
            "x == w is still inside (only x > w gives 0)",
        ),
        Case("more than a cell below the map", (feature, 2.0, 4.2), "y > h: the sample is 0"),
        Case(
            "bottom-right corner region",
            (feature, 4.7, 3.6),
            "apply the last-row and last-column rules together",
        ),
        *[
            Case(
                f"random point {k}",
                (feature, x, y),
                "compare with the rule for the region the point lies in",
            )
            for k, (x, y) in enumerate(zip(xs, ys, strict=True))
        ],
    ]
    for case in cases:
        feature_map, x, y = case.args
        # a box whose centre minus 0.5 is (x, y)
        box = torch.tensor([[0.0, x, y, x + 1, y + 1]], dtype=torch.float64)
        expected = roi_warp(feature_map[None, None], box, output_size=1, spatial_scale=1.0).item()
        ok, got = call_learner(fn, case, fn_name="my_bilinear")
        if not ok:
            return False
        try:
            got_value = float(got)
        except (TypeError, ValueError, RuntimeError):
            print(f"{FAIL} {case.name}: expected one number (a float or a 0-d tensor), got {got!r}")
            return False
        if not abs(got_value - expected) <= 1e-6 * max(1.0, abs(expected)):
            print(
                f"{FAIL} {case.name}: (x, y) = ({x:.3f}, {y:.3f}) on the [4, 5] map\n"
                f"  feature  = {feature_map.int().tolist()}\n"
                f"  expected = {expected:.6f}\n"
                f"  got      = {got_value:.6f}\n"
                f"  hint: {case.hint}"
            )
            return False
    print(
        f"{PASS} my_bilinear matches roi_warp (= torchvision roi_align, aligned=True) "
        f"on all {len(cases)} points"
    )
    return True


# ----------------------------------------------------------------------------- stages 1-3
# The exercises of notebooks 02, 04 and 05. Their functions are called as the library's are:
# the first three arguments by position, the others by these names.
PROPOSAL_KEYWORDS = ("image_size", "pre_nms_top_n", "post_nms_top_n", "nms_iou", "min_size")
MASK_TARGET_KEYWORDS = ("mask_size", "threshold")
MASK_LABEL_KEYWORDS = ("gt_areas", "box_labels", "mask_iou_fg", "threshold")

def check_generate_proposals(fn: Callable) -> bool:
    """Check ``fn(anchors, objectness_logits, anchor_deltas, image_size, pre_nms_top_n,
    post_nms_top_n, nms_iou, min_size) -> (boxes [R, 4], scores [R])`` against
    ``stage1_rpn.generate_proposals``."""
    gen = torch.Generator().manual_seed(0)
    logits = lambda values: torch.tensor(values, dtype=torch.float32)  # noqa: E731
    zeros = lambda n: torch.zeros(n, 4)  # noqa: E731
    far_apart = boxes_tensor(
        [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70], [80, 80, 90, 90]]
    )
    base_anchors = generate_base_anchors(8, (0.5, 1.0, 2.0), (2, 4, 8))  # (9, 4)
    shapes_anchors = grid_anchors(base_anchors, (16, 16), 8)  # (2304, 4)
    # the first box moves half a width right
    out_of_image = torch.tensor([[0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    cases = [
        Case(
            "one anchor, zero deltas",
            (boxes_tensor([[10, 10, 30, 30]]), logits([0.0]), zeros(1), (64, 64), 10, 10, 0.7, 1.0),
            "zero deltas leave the anchor as it is; "
            "the score is sigmoid(logit) = 0.5 here, not the logit",
        ),
        Case(
            "pre_nms_top_n = 3 of 5 separate anchors",
            (far_apart, logits([0.1, 2.0, -1.0, 3.0, 0.5]), zeros(5), (100, 100), 3, 10, 0.7, 1.0),
            "keep the pre_nms_top_n highest logits before anything else, "
            "and return them best first",
        ),
        Case(
            "a box pushed out of the image",
            (
                boxes_tensor([[40, 0, 60, 20], [0, 0, 20, 20]]),
                logits([1.0, 0.0]),
                out_of_image,
                (64, 64),
                10,
                10,
                0.7,
                1.0,
            ),
            "after decoding, clip x to [0, W] and y to [0, H] (boxes.clip_boxes)",
        ),
        Case(
            "a box that is small only after clipping",
            (
                boxes_tensor([[60, 10, 80, 30], [10, 10, 30, 30]]),
                logits([2.0, 1.0]),
                zeros(2),
                (40, 64),
                10,
                10,
                0.7,
                8.0,
            ),
            "remove boxes with width or height < min_size AFTER clipping "
            "(the first box is 4 px wide inside the image)",
        ),
        Case(
            "two identical anchors",
            (
                boxes_tensor([[10, 10, 30, 30], [10, 10, 30, 30]]),
                logits([0.2, 0.9]),
                zeros(2),
                (64, 64),
                10,
                10,
                0.7,
                1.0,
            ),
            "NMS at nms_iou removes the duplicate and keeps the higher score",
        ),
        Case(
            "post_nms_top_n = 2",
            (far_apart, logits([0.1, 2.0, -1.0, 3.0, 0.5]), zeros(5), (100, 100), 5, 2, 0.7, 1.0),
            "after NMS keep only the post_nms_top_n best boxes",
        ),
        Case(
            "shapes preset: 2304 anchors, random logits and deltas",
            (
                shapes_anchors,
                torch.randn(2304, generator=gen),
                0.3 * torch.randn(2304, 4, generator=gen),
                (128, 128),
                600,
                100,
                0.7,
                4.0,
            ),
            "the order is: top-k logits, decode, clip, remove small boxes, NMS, "
            "keep post_nms_top_n",
        ),
    ]
    for case in cases:
        args, kwargs = split_keywords(case.args, PROPOSAL_KEYWORDS)
        expected_boxes, expected_scores = generate_proposals(*args, **kwargs)
        ok, got = call_learner(
            fn, case, fn_name="my_generate_proposals", keywords=PROPOSAL_KEYWORDS
        )
        if not ok:
            return False
        is_pair = isinstance(got, (tuple, list)) and len(got) == 2
        if not (is_pair and all(torch.is_tensor(g) for g in got)):
            got_type = type(got).__name__
            return report_failure(
                case, [f"expected a pair (boxes, scores) of tensors, got {got_type}"]
            )
        got_boxes, got_scores = (g.detach() for g in got)
        if got_boxes.shape != expected_boxes.shape or got_scores.shape != expected_scores.shape:
            return report_failure(
                case,
                [
                    f"expected {len(expected_boxes)} proposals, got boxes {tuple(got_boxes.shape)} "
                    f"and scores {tuple(got_scores.shape)}"
                ],
            )
        if not (
            torch.allclose(got_boxes, expected_boxes, atol=1e-3)
            and torch.allclose(got_scores, expected_scores, atol=1e-5)
        ):
            return report_failure(
                case,
                [
                    f"expected boxes {expected_boxes[:3].tolist()}",
                    f"got      boxes {got_boxes[:3].tolist()}",
                    f"expected scores {[round(v, 4) for v in expected_scores[:3].tolist()]}",
                    f"got      scores {[round(v, 4) for v in got_scores[:3].tolist()]}",
                ],
            )
    print(
        f"{PASS} my_generate_proposals matches stage1_rpn.generate_proposals "
        f"on all {len(cases)} cases"
    )
    return True


def _disc_masks(size: int, centres: list[tuple[float, float]], radius: float) -> Tensor:
    """uint8 [len(centres), size, size]: one disc of ``radius`` around each (x, y) centre."""
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    discs = [(cols - cx) ** 2 + (rows - cy) ** 2 <= radius**2 for cx, cy in centres]
    return torch.stack(discs).to(torch.uint8)


def check_mask_targets(fn: Callable) -> bool:
    """Check ``fn(gt_masks [G, H, W] uint8, matched_gt [R], boxes [R, 4], mask_size, threshold)
    -> [R, M, M]`` against ``stage2_masks.mask_targets``: binary, the right shape, and at most
    ``MASK_TARGET_TOLERANCE`` of the cells different (resizing methods sample the mask at
    slightly different points)."""
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
    disc_boxes = torch.tensor([[8, 12, 32, 36], [32, 28, 56, 52]], dtype=torch.float32)
    jittered = disc_boxes.repeat(3, 1) + 4 * torch.randn(6, 4, generator=gen)
    index = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
    cases = [
        Case(
            "box = the object's tight box",
            (square, index([0]), boxes_tensor([[4, 8, 20, 24]]), 8, 0.4),
            "crop the mask to the box before resizing: "
            "a rectangle fills its own box, so the target is all 1",
        ),
        Case(
            "box twice as wide as the object",
            (square, index([0]), boxes_tensor([[4, 8, 36, 24]]), 8, 0.4),
            "the target is relative to the RoI: the object fills its left half",
        ),
        Case(
            "matched_gt picks the instance",
            (two, index([1, 0]), boxes_tensor([[10, 16, 30, 30], [2, 2, 12, 12]]), 7, 0.4),
            "RoI r takes the mask gt_masks[matched_gt[r]]",
        ),
        Case(
            "a box that misses the object",
            (square, index([0]), boxes_tensor([[24, 0, 32, 6]]), 6, 0.4),
            "no overlap gives an all-zero target",
        ),
        Case(
            "a box partly outside the image",
            (corner, index([0]), boxes_tensor([[-10, -10, 10, 10]]), 8, 0.4),
            "do not clip the box: pixels outside the image count as 0, "
            "so the object fills the bottom-right quarter",
        ),
        Case(
            "threshold is a parameter (0.6)",
            (stripes, index([0]), boxes_tensor([[0, 0, 16, 16]]), 8, 0.6),
            "each cell here is half covered (0.5): use the threshold argument, >= threshold is 1",
        ),
        Case(
            "two discs, six jittered boxes, m = 28",
            (discs, index([0, 1] * 3), jittered, 28, 0.4),
            "sample the instance's mask bilinearly at the M x M cell centres inside the box, "
            "then binarise",
        ),
        Case(
            "no RoIs",
            (square, index([]), boxes_tensor([]), 5, 0.4),
            "R = 0 must give a [0, M, M] result",
        ),
    ]
    for case in cases:
        args, kwargs = split_keywords(case.args, MASK_TARGET_KEYWORDS)
        expected = mask_targets(*args, **kwargs)
        ok, got = call_learner(fn, case, fn_name="my_mask_targets", keywords=MASK_TARGET_KEYWORDS)
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
            print(
                f"{FAIL} {case.name}\n  expected 0/1 values, got values like {values}\n"
                "  hint: binarise the resized mask: (resized >= threshold).float()"
            )
            return False
        for r in range(len(expected)):
            differing = (got[r] != expected[r]).float().mean().item()
            if differing > MASK_TARGET_TOLERANCE:
                return report_failure(
                    case,
                    [
                        f"RoI {r} (box {[round(v, 1) for v in case.args[2][r].tolist()]}): "
                        f"{100 * differing:.0f} % of the cells differ",
                        f"expected\n{expected[r].int()}",
                        f"got\n{got[r].int()}",
                    ],
                )
    print(f"{PASS} my_mask_targets matches stage2_masks.mask_targets on all {len(cases)} cases")
    return True


def check_mask_level_labels(fn: Callable) -> bool:
    """Check ``fn(mask_probs, mask_targets, boxes, gt_areas, box_labels, mask_iou_fg, threshold)
    -> labels [R]``
    against ``stage3_classify.mask_level_labels``."""
    gen = torch.Generator().manual_seed(0)
    size = 8  # M
    box = boxes_tensor([[0, 0, 16, 16]])  # 2 x 2 pixels per mask cell
    target = torch.zeros(1, size, size)
    target[0, 2:6, 1:7] = 1  # 24 cells = 96 pixels
    half = target.clone()
    half[0, :, 4:] = 0  # 12 of the 24 cells: IoU exactly 0.5
    area = torch.tensor([96.0])
    label = torch.tensor([2])
    # binarised at 0.4 this is the target; at 0.5 it is empty
    soft = torch.where(target > 0, 0.45, 0.35)
    probs = torch.rand(20, size, size, generator=gen)
    targets = (torch.rand(20, size, size, generator=gen) > 0.5).float()
    boxes = torch.cat(
        [torch.rand(20, 2, generator=gen) * 40, 10 + torch.rand(20, 2, generator=gen) * 40], dim=1
    )
    boxes[:, 2:] += boxes[:, :2]
    areas = targets.flatten(1).sum(1) * (
        (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / size**2
    )
    cases = [
        Case(
            "perfect mask",
            (target.clone(), target, box, area, label, 0.5, 0.4),
            "mask IoU 1: keep the box-level label (each cell counts box area / M^2 pixels)",
        ),
        Case(
            "empty predicted mask",
            (torch.zeros(1, size, size), target, box, area, label, 0.5, 0.4),
            "mask IoU 0: background (0)",
        ),
        Case(
            "background RoI with a good mask",
            (target.clone(), target, box, area, torch.tensor([0]), 0.5, 0.4),
            "a box-level background RoI stays background",
        ),
        Case(
            "soft probabilities 0.45 / 0.35",
            (soft, target, box, area, label, 0.5, 0.4),
            "binarise mask_probs at the threshold argument (0.4), >= is foreground",
        ),
        Case(
            "the instance sticks out of the RoI",
            (target.clone(), target, box, 3 * area, label, 0.5, 0.4),
            "the union uses the instance's full area (gt_areas, pixels), "
            "not only its part inside the RoI",
        ),
        Case(
            "IoU exactly 0.5",
            (half, target, box, area, label, 0.5, 0.4),
            "IoU >= mask_iou_fg is foreground; count cells as box area / M^2 pixels each",
        ),
        Case(
            "mask_iou_fg is a parameter (0.7)",
            (half, target, box, area, label, 0.7, 0.4),
            "compare with the mask_iou_fg argument",
        ),
        Case(
            "20 random RoIs of different sizes",
            (probs, targets, boxes, areas, torch.randint(0, 4, (20,), generator=gen), 0.5, 0.4),
            "each RoI has its own cell area: box area / M^2",
        ),
    ]
    for case in cases:
        args, kwargs = split_keywords(case.args, MASK_LABEL_KEYWORDS)
        expected = mask_level_labels(*args, **kwargs)
        ok, got = call_learner(
            fn, case, fn_name="my_mask_level_labels", keywords=MASK_LABEL_KEYWORDS
        )
        if not ok:
            return False
        if not torch.is_tensor(got) or got.dtype != torch.int64 or not torch.equal(got, expected):
            shown = got.tolist() if torch.is_tensor(got) else got
            return report_failure(
                case,
                [
                    f"expected {expected.tolist()} (int64)",
                    f"got      {shown} ({getattr(got, 'dtype', type(got).__name__)})",
                ],
            )
    print(
        f"{PASS} my_mask_level_labels matches stage3_classify.mask_level_labels "
        f"on all {len(cases)} cases"
    )
    return True
