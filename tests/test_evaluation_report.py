"""Tests for mnc_teach.evaluation.report: both protocols in one JSON-ready dict, checked once."""

from __future__ import annotations

import json
import math

import pytest
from fakes import CLASSES, pred, rect, synthetic_set, target

from mnc_teach.evaluation.coco import coco_evaluate
from mnc_teach.evaluation.report import evaluate_predictions
from mnc_teach.evaluation.sds import evaluate_sds


def test_evaluate_predictions_combines_both_and_is_json_ready():
    predictions, ground_truth = synthetic_set()
    summary = evaluate_predictions(predictions, ground_truth, CLASSES)
    sds = evaluate_sds(predictions, ground_truth, CLASSES)
    assert summary["mAP_r@0.5"]["area"] == sds.mean_ap["area"][0.5]
    assert summary["mAP_r@0.7"]["voc07"] == sds.mean_ap["voc07"][0.7]
    assert set(summary["per_class"]) == set(CLASSES[1:])
    assert summary["coco"]["AP"] == coco_evaluate(predictions, ground_truth, CLASSES)["AP"]
    assert summary["table"] == sds.table()
    assert math.isnan(coco_evaluate(predictions, ground_truth, CLASSES)["APl"])
    assert summary["coco"]["APl"] is None  # NaN -> None: strict JSON
    json.dumps(summary, allow_nan=False)


def test_predictions_are_checked_once_and_check_false_changes_no_number():
    predictions, ground_truth = synthetic_set()
    checked = evaluate_predictions(predictions, ground_truth, CLASSES)
    assert evaluate_predictions(predictions, ground_truth, CLASSES, check=False) == checked
    bad = [*predictions, {**predictions[0], "category_id": len(CLASSES)}]
    with pytest.raises(ValueError, match=f"prediction {len(predictions)}: .*category"):
        evaluate_predictions(bad, ground_truth, CLASSES)


def test_ground_truth_without_instances_or_images_is_refused():
    predictions, ground_truth = synthetic_set()
    empty = [target(t["image_id"], [], []) for t in ground_truth]
    no_instances = f"no ground-truth instances in the {len(empty)} images"
    with pytest.raises(ValueError, match=no_instances) as e:
        evaluate_predictions(predictions, empty, CLASSES)
    message = str(e.value)
    assert repr(ground_truth[0]["image_id"]) in message and "\n" not in message
    assert message.endswith("mAP^r is undefined; evaluate on a split with annotated objects")
    with pytest.raises(ValueError, match="no ground-truth images: mAP\\^r is undefined") as e:
        evaluate_predictions([], [], CLASSES)
    assert "pass one target per image of the split" in str(e.value)


def test_ground_truth_with_some_instances_gives_numbers_for_the_means():
    """Classes and images without ground truth are skipped: every mean the CLI prints is a
    number, only the classes without GT are None."""
    ground_truth = [target("a", [rect(2, 12, 2, 12)], [2]), target("b", [], [])]
    predictions = [pred("a", 2, rect(2, 12, 2, 13), 0.9), pred("b", 1, rect(0, 5, 0, 5), 0.5)]
    summary = evaluate_predictions(predictions, ground_truth, CLASSES)
    for threshold in ("0.5", "0.7"):
        assert summary[f"mAP_r@{threshold}"] == {"area": 1.0, "voc07": 1.0}
    assert all(isinstance(summary["coco"][key], float) for key in ("AP", "AP50", "AP75"))
    assert summary["per_class"]["circle"]["AP_r@0.5"] == {"area": None, "voc07": None}
