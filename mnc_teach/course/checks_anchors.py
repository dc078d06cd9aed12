"""Exercise check of notebook 01's anchor labelling: the 0.7 / 0.3 rule, the best anchor of
each object (ties included), border anchors ignored (``matching.label_anchors``).

A failure names the anchor and why it has its label, e.g. "anchor 0 [...]: expected POSITIVE
(it is the best anchor of ground truth 0, IoU 0.25), got NEGATIVE"."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mnc_teach.anchors import anchors_inside_image, generate_base_anchors, grid_anchors
from mnc_teach.boxes import box_iou
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
from mnc_teach.matching import IGNORE, NEGATIVE, POSITIVE, label_anchors

__all__ = ["anchor_case", "anchor_label_cases", "check_label_anchors"]

LABEL_KEYWORDS = ("positive_iou", "negative_iou", "allowed_border")
LABEL_NAMES = {POSITIVE: "POSITIVE", NEGATIVE: "NEGATIVE", IGNORE: "IGNORE"}


def anchor_case(
    name: str, anchors: Tensor, gt_boxes: Tensor, image_size: tuple[int, int], hint: str, *,
    positive_iou: float = 0.7, negative_iou: float = 0.3, allowed_border: float = 0.0,
) -> Case:
    """A case of ``my_label_anchors(anchors, gt_boxes, image_size, *, positive_iou,
    negative_iou, allowed_border)``."""
    return Case(name, (anchors, gt_boxes, image_size, positive_iou, negative_iou,
                       allowed_border), hint)


def anchor_label_cases() -> list[Case]:
    """The visible cases of ``my_label_anchors``."""
    gen = torch.Generator().manual_seed(0)
    border = boxes_tensor([[-5, 0, 25, 30], [0, 0, 20, 30], [80, 40, 110, 70], [60, 10, 90, 40]])
    grid = grid_anchors(generate_base_anchors(8, (0.5, 1.0, 2.0), (2, 4, 8)), (16, 16), 8)
    objects = random_boxes(4, gen, size=100.0)  # inside the 128 x 128 image
    return [
        anchor_case("one object, anchors at IoU 1, 0.5, 0.2 and 0",
                    boxes_tensor([[20, 20, 60, 60], [20, 20, 60, 40], [20, 20, 60, 28],
                                  [70, 70, 90, 90]]), boxes_tensor([[20, 20, 60, 60]]), (100, 100),
                    "POSITIVE when IoU >= positive_iou, NEGATIVE when the largest IoU < "
                    "negative_iou, IGNORE in between"),
        anchor_case("IoU exactly 0.7 and exactly 0.3",
                    boxes_tensor([[0, 0, 10, 10], [0, 0, 7, 10], [0, 0, 3, 10], [50, 50, 60, 60]]),
                    boxes_tensor([[0, 0, 10, 10]]), (100, 100),
                    "IoU >= 0.7 is positive, IoU < 0.3 negative: exactly 0.3 is ignored"),
        anchor_case("best-anchor rule: no anchor reaches 0.7",
                    boxes_tensor([[34, 10, 74, 50], [40, 40, 80, 80]]),
                    boxes_tensor([[10, 10, 50, 50]]), (100, 100),
                    "the best anchor of every object is POSITIVE, whatever its IoU"),
        anchor_case("two anchors tie as the best of an object",
                    boxes_tensor([[30, 40, 50, 60], [50, 40, 70, 60], [0, 0, 10, 10]]),
                    boxes_tensor([[40, 40, 60, 60]]), (100, 100),
                    "ties included: every anchor whose IoU equals the object's best IoU is "
                    "positive (compare with iou.max(dim=1).values, do not take one argmax)"),
        anchor_case("two objects: matched_gt is the max-IoU object",
                    boxes_tensor([[32, 0, 72, 40], [0, 0, 40, 40], [18, 0, 58, 40]]),
                    boxes_tensor([[0, 0, 40, 40], [30, 0, 70, 40]]), (100, 100),
                    "matched_gt[k] is the index of the ground truth with the largest IoU with "
                    "anchor k"),
        anchor_case("the best anchor of one object overlaps another more",
                    boxes_tensor([[0, 0, 40, 40], [10, 0, 50, 40], [70, 70, 95, 95]]),
                    boxes_tensor([[0, 0, 40, 40], [30, 30, 60, 60]]), (100, 100),
                    "anchor 1 is positive as the best anchor of object 1, but it regresses to "
                    "ITS max-IoU object: matched_gt is always the argmax over the objects"),
        anchor_case("anchors crossing the border", border, boxes_tensor([[0, 0, 30, 30]]),
                    (60, 100), "anchors not fully inside the image (anchors_inside_image) are "
                    "IGNORE and take no part in the rest, not even as an object's best anchor; "
                    "image_size is (height, width)"),
        anchor_case("allowed_border = 10", border, boxes_tensor([[0, 0, 30, 30]]), (60, 100),
                    "pass allowed_border to anchors_inside_image", allowed_border=10.0),
        anchor_case("an image without ground truth", border, boxes_tensor([]), (60, 100),
                    "G = 0 is legal: every anchor inside the image is NEGATIVE, matched_gt 0 "
                    "(a max over zero objects raises: treat G == 0 first)"),
        anchor_case("an object that no inside anchor touches",
                    boxes_tensor([[-10, -10, 10, 10], [50, 50, 70, 70], [80, 0, 100, 20]]),
                    boxes_tensor([[0, 0, 10, 10], [50, 50, 70, 70]]), (100, 100),
                    "an object whose best IoU is 0 has no best anchor: skip it (else every "
                    "anchor that misses it would become positive)"),
        anchor_case("thresholds 0.5 / 0.4 by keyword", grid, objects, (128, 128),
                    "use positive_iou and negative_iou, not 0.7 and 0.3 written in the code",
                    positive_iou=0.5, negative_iou=0.4),
        anchor_case("the shapes grid: 2304 anchors, 4 objects", grid, objects, (128, 128),
                    "compare with matching.label_anchors on one object at a time"),
    ]


def _why(k: int, anchors: Tensor, gt_boxes: Tensor, image_size: tuple[int, int],
         settings: dict) -> str:
    """Why anchor ``k`` gets the library's label (for the diagnosis)."""
    inside = anchors_inside_image(anchors, image_size, settings["allowed_border"])
    if not inside[k]:
        return (f"it sticks out of the {image_size[0]} x {image_size[1]} (H x W) image by more "
                f"than allowed_border = {settings['allowed_border']:g}")
    if len(gt_boxes) == 0:
        return "the image has no ground truth"
    iou = box_iou(gt_boxes, anchors[inside])  # (G, T_inside)
    column = int(inside[:k].sum())
    best_iou, best_gt = iou[:, column].max(dim=0)
    best_per_gt = iou.max(dim=1).values  # (G,)
    best_of = ((iou[:, column] == best_per_gt) & (best_per_gt > 0)).nonzero().flatten().tolist()
    if best_iou >= settings["positive_iou"]:
        return f"its IoU with ground truth {int(best_gt)} is {best_iou:.2f} >= positive_iou"
    if best_of:
        g = best_of[0]
        return f"it is the best anchor of ground truth {g}, IoU {best_per_gt[g]:.2f}"
    untouched = (best_per_gt == 0).nonzero().flatten().tolist()
    rule = "no object's best anchor" + (
        f" (ground truth {untouched[0]} touches no inside anchor: it has none)" if untouched else ""
    )
    if best_iou < settings["negative_iou"]:
        return f"its largest IoU is {best_iou:.2f} < negative_iou and it is {rule}"
    return f"its largest IoU {best_iou:.2f} lies between the thresholds and it is {rule}"


def _label_name(value: int) -> str:
    return LABEL_NAMES.get(value, repr(value))


@exercise_check("anchor_labels", label_anchors=label_anchors)
def check_label_anchors(
    fn: Callable[..., tuple[Tensor, Tensor]], *, cases: Sequence[Case] | None = None
) -> bool:
    """Check ``my_label_anchors(anchors [T, 4], gt_boxes [G, 4], image_size, *, positive_iou,
    negative_iou, allowed_border) -> (labels [T], matched_gt [T])`` against
    ``matching.label_anchors``: every label, and matched_gt where the label is POSITIVE."""
    cases = anchor_label_cases() if cases is None else cases
    for case in cases:
        args, settings = split_keywords(case.args, LABEL_KEYWORDS)
        expected_labels, expected_gt = label_anchors(*args, **settings)
        ok, got = call_learner(fn, case, fn_name="my_label_anchors", keywords=LABEL_KEYWORDS)
        if not ok:
            return False
        shape = tuple(expected_labels.shape)
        if not (isinstance(got, (tuple, list)) and len(got) == 2
                and all(torch.is_tensor(g) and g.shape == shape and g.dtype == torch.int64
                        for g in got)):
            shown = [f"{g.dtype} {tuple(g.shape)}" if torch.is_tensor(g) else type(g).__name__
                     for g in (got if isinstance(got, (tuple, list)) else [got])]
            return report_failure(case, [
                f"expected a pair (labels, matched_gt) of int64 tensors of shape {shape}",
                f"got {shown}"])
        labels, matched_gt = got
        anchors, gt_boxes, image_size = args
        wrong = (labels != expected_labels).nonzero().flatten()
        if len(wrong):
            k = int(wrong[0])
            return report_failure(case, [
                f"anchor {k} {anchors[k].tolist()}: expected "
                f"{_label_name(int(expected_labels[k]))} "
                f"({_why(k, anchors, gt_boxes, image_size, settings)}), "
                f"got {_label_name(int(labels[k]))}",
                f"{len(wrong)} of {len(labels)} labels differ; gt_boxes {gt_boxes.tolist()[:4]}",
            ])
        wrong = ((expected_labels == POSITIVE) & (matched_gt != expected_gt)).nonzero().flatten()
        if len(wrong):
            k = int(wrong[0])
            iou = box_iou(gt_boxes, anchors[k : k + 1])[:, 0]  # (G,)
            return report_failure(case, [
                f"positive anchor {k} {anchors[k].tolist()}: expected matched_gt "
                f"{int(expected_gt[k])}, got {int(matched_gt[k])}",
                f"its IoU with each ground truth: {[round(v, 3) for v in iou.tolist()]}",
            ])
    return passed(f"my_label_anchors matches matching.label_anchors on all {len(cases)} cases")
