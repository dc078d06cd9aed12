"""Every exercise of the course, in reading order: its name, its notebook and its check.

The points are nbgrader's: they live in each check cell's metadata (``<name>_check``), which
``python -m mnc_teach assignments list`` reads; the solution cell is ``<name>_solution``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mnc_teach.course.checks_anchors import check_label_anchors
from mnc_teach.course.checks_boxes import check_box_coding, check_box_iou, check_nms
from mnc_teach.course.checks_cascade import check_cascade_loss
from mnc_teach.course.checks_classify import check_mask_level_labels, check_mask_pool
from mnc_teach.course.checks_evaluation import (
    check_average_precision,
    check_mask_iou,
    check_match_detections,
)
from mnc_teach.course.checks_inference import (
    check_batched_nms,
    check_mask_voting_weights,
    check_refine_boxes,
)
from mnc_teach.course.checks_masks import check_mask_targets, check_sample_rois
from mnc_teach.course.checks_proposals import check_generate_proposals
from mnc_teach.course.checks_warp import check_roi_warp
from mnc_teach.course.exercise import CheckResult

__all__ = ["EXERCISES", "Exercise", "exercise_named"]


@dataclass(frozen=True)
class Exercise:
    """One exercise: the learner writes ``my_<f>`` for each library function f it names."""

    notebook: str  # the notebook's stem, "01_boxes_anchors_matching"
    check: Callable[..., CheckResult]  # made by exercise.exercise_check

    @property
    def name(self) -> str:
        """The exercise's name ("box_iou"), as its check declares it."""
        return self.check.exercise  # type: ignore[attr-defined]

    @property
    def functions(self) -> tuple[str, ...]:
        """The library functions the learner rewrites (``my_`` + each is theirs)."""
        return tuple(self.check.library)  # type: ignore[attr-defined]

    @property
    def solution_id(self) -> str:
        return f"{self.name}_solution"

    @property
    def check_id(self) -> str:
        return f"{self.name}_check"


_NB01 = "01_boxes_anchors_matching"

EXERCISES: tuple[Exercise, ...] = (
    Exercise(_NB01, check_box_iou),
    Exercise(_NB01, check_box_coding),
    Exercise(_NB01, check_label_anchors),
    Exercise(_NB01, check_nms),
    Exercise("02_stage1_box_proposals", check_generate_proposals),
    Exercise("03_roi_warping", check_roi_warp),
    Exercise("04_stage2_masks", check_mask_targets),
    Exercise("04_stage2_masks", check_sample_rois),
    Exercise("05_stage3_classification", check_mask_pool),
    Exercise("05_stage3_classification", check_mask_level_labels),
    Exercise("06_cascade_end_to_end", check_cascade_loss),
    Exercise("07_five_stages_and_inference", check_refine_boxes),
    Exercise("07_five_stages_and_inference", check_batched_nms),
    Exercise("07_five_stages_and_inference", check_mask_voting_weights),
    Exercise("08_evaluation", check_mask_iou),
    Exercise("08_evaluation", check_match_detections),
    Exercise("08_evaluation", check_average_precision),
)


def exercise_named(name: str) -> Exercise:
    """The exercise called ``name``; ValueError listing the names otherwise."""
    for exercise in EXERCISES:
        if exercise.name == name:
            return exercise
    raise ValueError(f"no exercise {name!r}; the course has {', '.join(e.name for e in EXERCISES)}")
