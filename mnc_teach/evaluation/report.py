"""The numbers ``python -m mnc_teach evaluate`` prints: mAP^r (SDS) and COCO AP of one
predictions list."""

from __future__ import annotations

from collections.abc import Sequence

from mnc_teach.evaluation.coco import check_results, coco_evaluate
from mnc_teach.evaluation.sds import evaluate_sds, json_float
from mnc_teach.structures import Target

__all__ = ["evaluate_predictions"]


def evaluate_predictions(
    predictions: list[dict],
    ground_truth: list[Target],
    class_names: Sequence[str],
    *,
    check: bool = True,
) -> dict:
    """Both protocols in one JSON-ready dict (NaN -> None), for the CLI.

    The predictions are validated once here (``check=True``), or not at all when the caller
    already did (``check=False``), rather than once by each protocol.

    Returns:
        ``{"mAP_r@0.5": {"area": .., "voc07": ..}, "mAP_r@0.7": {..}, "per_class": {..},
        "coco": {"AP": .., "AP50": .., ...}, "table": str}``; "table" is
        :meth:`SDSResult.table`, for printing. The means (mAP^r, COCO AP, AP50, AP75) are
        numbers; per-class APs and COCO's area-range values are None where a class or area
        range has no ground truth.

    Raises:
        ValueError: the ground truth holds no image or no instance (mAP^r is undefined), or a
            prediction is invalid (``check=True``).
    """
    if not ground_truth:
        raise ValueError(
            "evaluate_predictions got no ground-truth images: mAP^r is undefined; pass one "
            "target per image of the split the predictions were made on"
        )
    if sum(len(target["labels"]) for target in ground_truth) == 0:
        examples = ", ".join(repr(target.get("image_id")) for target in ground_truth[:3])
        more = ", ..." if len(ground_truth) > 3 else ""
        raise ValueError(
            f"no ground-truth instances in the {len(ground_truth)} images (image_id {examples}"
            f"{more}): mAP^r is undefined; evaluate on a split with annotated objects"
        )
    if check:
        image_ids = {target.get("image_id") for target in ground_truth}
        check_results(predictions, image_ids=image_ids, num_classes=len(class_names) - 1)
    sds = evaluate_sds(predictions, ground_truth, class_names, check=False)
    coco = coco_evaluate(predictions, ground_truth, class_names, check=False)
    coco_json = {name: json_float(value) for name, value in coco.items()}
    return sds.to_dict() | {"coco": coco_json, "table": sds.table()}
