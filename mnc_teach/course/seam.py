"""The seam: the real model calls the learner's functions (COURSE.md, "Assignments").

``with use_implementation(roi_warp=my_roi_warp, mask_pool=my_mask_pool): train(...)`` makes
every part of ``mnc_teach`` that calls the library's ``roi_warp`` or ``mask_pool`` call the
learner's instead, until the block ends. It is one mechanism for every exercise: the package
looks its functions up by module-level name, so the seam rebinds those names (in every module
of ``mnc_teach`` that holds the library function, course excepted) and restores them after.
The model has no special case for it; ``tests/test_course_seam.py`` checks that each name
below is called by a training step, inference or evaluation, so a rebinding cannot go
unnoticed.

Two exercises reach the model through an adapter, because the model calls a wider function:
the learner's ``roi_warp`` (one sample per cell) becomes ``roi_warp_pool`` (warp to P * pool,
then max pool), and the learner's ``mask_iou`` (on dense masks) becomes ``rle_mask_iou``
(the evaluator's, on RLEs).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from mnc_teach import (
    boxes,
    cascade,
    matching,
    postprocess,
    roi_warp,
    stage1_rpn,
    stage2_masks,
    stage3_classify,
)
from mnc_teach.evaluation import sds
from mnc_teach.evaluation.coco import decode_mask

__all__ = ["LIBRARY", "use_implementation"]

# every function a learner can replace, by name (the learner writes my_<name>)
LIBRARY: dict[str, Callable] = {
    "box_iou": boxes.box_iou,
    "encode_boxes": boxes.encode_boxes,
    "decode_boxes": boxes.decode_boxes,
    "label_anchors": matching.label_anchors,
    "nms": boxes.nms,
    "generate_proposals": stage1_rpn.generate_proposals,
    "roi_warp": roi_warp.roi_warp,
    "sample_rois": matching.sample_rois,
    "mask_targets": stage2_masks.mask_targets,
    "mask_pool": stage3_classify.mask_pool,
    "mask_level_labels": stage3_classify.mask_level_labels,
    "cascade_loss": cascade.cascade_loss,
    "boxes_for_warp": roi_warp.boxes_for_warp,
    "refine_boxes": cascade.refine_boxes,
    "batched_nms": boxes.batched_nms,
    "mask_voting_weights": postprocess.mask_voting_weights,
    "mask_iou": sds.mask_iou,
    "match_detections": sds.match_detections,
    "average_precision": sds.average_precision,
}


def _warp_then_pool(warp: Callable) -> Callable:
    """``roi_warp_pool`` built on a learner's ``roi_warp``: the readable
    :func:`mnc_teach.roi_warp.roi_warp_pool_reference` (warp to P * pool, then max pool), warping
    with theirs; its detach switch is looked up at call time, so a plugged one is used too."""
    return functools.partial(roi_warp.roi_warp_pool_reference, warp=warp)


def _iou_on_rles(dense_iou: Callable) -> Callable:
    """``rle_mask_iou`` built on a learner's ``mask_iou``: decode the RLEs, call it."""

    def rle_mask_iou(
        pred_rles: list[dict], gt_rles: list[dict], ignore: Tensor | None = None
    ) -> np.ndarray:
        if not pred_rles or not gt_rles:
            return np.zeros((len(pred_rles), len(gt_rles)))
        pred = torch.stack([torch.from_numpy(decode_mask(r)) for r in pred_rles])  # (D, H, W)
        gt = torch.stack([torch.from_numpy(decode_mask(r)) for r in gt_rles])  # (G, H, W)
        return np.asarray(torch.as_tensor(dense_iou(pred, gt, ignore)), dtype=np.float64)

    return rle_mask_iou


# the wider functions the model calls, built from a learner's function
ADAPTERS: dict[str, tuple[Callable, Callable[[Callable], Callable]]] = {
    "roi_warp": (roi_warp.roi_warp_pool, _warp_then_pool),
    "mask_iou": (sds.rle_mask_iou, _iou_on_rles),
}


def _package_modules() -> list[ModuleType]:
    """Every loaded module of mnc_teach except the course's own (checks keep the library)."""
    return [
        module
        for name, module in list(sys.modules.items())
        if (name == "mnc_teach" or name.startswith("mnc_teach."))
        and not name.startswith("mnc_teach.course")
        and module is not None
    ]


@contextlib.contextmanager
def use_implementation(**functions: Callable | None) -> Iterator[dict[str, Callable]]:
    """Within the block, the package calls ``functions[name]`` wherever it calls the library's
    ``name`` (one of :data:`LIBRARY`; None keeps the library's). Yields the replacements made.

    Raises:
        ValueError naming an unknown name and the known ones.
    """
    unknown = sorted(set(functions) - set(LIBRARY))
    if unknown:
        raise ValueError(
            f"use_implementation: unknown name(s) {', '.join(unknown)}; "
            f"the seam knows {', '.join(LIBRARY)}"
        )
    chosen = {name: fn for name, fn in functions.items() if fn is not None}
    replacement: dict[int, tuple[Callable, Callable]] = {}  # id -> (library function, new one)
    for name, fn in chosen.items():
        if not callable(fn):
            raise TypeError(f"use_implementation: {name} must be a function, got {fn!r}")
        replacement[id(LIBRARY[name])] = (LIBRARY[name], fn)
        if name in ADAPTERS:
            wider, adapt = ADAPTERS[name]
            replacement[id(wider)] = (wider, adapt(fn))
    undo: list[tuple[ModuleType, str, object]] = []
    try:
        for module in _package_modules():
            for attr, value in list(vars(module).items()):
                library, new = replacement.get(id(value), (None, None))
                if library is not None and value is library:
                    undo.append((module, attr, value))
                    setattr(module, attr, new)
        yield chosen
    finally:
        for module, attr, value in reversed(undo):
            setattr(module, attr, value)
