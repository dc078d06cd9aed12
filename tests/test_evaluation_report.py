"""Tests for mnc_teach.evaluation.report: both protocols in one JSON-ready dict, checked once."""

from __future__ import annotations

import json
import math

import pytest
from fakes import CLASSES, synthetic_set

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
