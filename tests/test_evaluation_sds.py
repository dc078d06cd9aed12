"""Tests for mnc_teach.evaluation.sds: hand-computed SDS cases, pycocotools references, file errors."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mnc_teach.boxes import masks_to_boxes
from mnc_teach.evaluation.coco import (
    MASK_BINARIZE_THRESHOLD,
    coco_evaluate,
    decode_mask,
    detections_to_coco_results,
    encode_mask,
    load_predictions,
    save_predictions,
)
from mnc_teach.evaluation.report import evaluate_predictions
from mnc_teach.evaluation.sds import (
    average_precision,
    class_mask_ious,
    evaluate_sds,
    mask_iou,
    match_detections,
    rle_mask_iou,
)

SIDE = 32
CLASSES = ("background", "circle", "square", "triangle")


def rect(y1: int, y2: int, x1: int, x2: int, side: int = SIDE) -> torch.Tensor:
    """uint8 [side, side] mask, 1 on rows y1:y2 and columns x1:x2."""
    mask = torch.zeros((side, side), dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def target(image_id: str, masks: list[torch.Tensor], labels: list[int], ignore=None) -> dict:
    stacked = torch.stack(masks) if masks else torch.zeros((0, SIDE, SIDE), dtype=torch.uint8)
    out = {
        "image_id": image_id,
        "boxes": masks_to_boxes(stacked),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": stacked,
    }
    if ignore is not None:
        out["ignore"] = ignore
    return out


def pred(image_id: str, label: int, mask: torch.Tensor, score: float) -> dict:
    return {
        "image_id": image_id,
        "category_id": label,
        "segmentation": encode_mask(mask),
        "score": score,
    }


def sds_ap(result, label: int, threshold: float) -> tuple[float, float]:
    """(area AP, voc07 AP) of class ``label`` (1..K)."""
    return result.ap["area"][threshold][label - 1], result.ap["voc07"][threshold][label - 1]


# ----------------------------------------------------------------------------- RLE and conversion
def test_encode_decode_round_trip_and_json():
    mask = (torch.rand(SIDE, SIDE, generator=torch.Generator().manual_seed(0)) > 0.5).to(
        torch.uint8
    )
    rle = encode_mask(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [SIDE, SIDE]
    decoded = decode_mask(json.loads(json.dumps(rle)))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, mask.numpy())
    assert mask_utils.area(rle) == mask.sum().item()


def test_detections_to_coco_results_binarises_at_threshold():
    soft = torch.zeros((2, 1, SIDE, SIDE))
    soft[0, 0, 2:6, 3:9] = 0.45  # above MNC's 0.4
    soft[0, 0, 10:12, 10:12] = 0.35  # below it
    soft[1, 0, 20:30, 0:4] = 0.9
    detections = {
        "boxes": torch.tensor([[3.0, 2.0, 9.0, 6.0], [0.0, 20.0, 4.0, 30.0]]),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.75, 0.5]),
        "masks": soft,
    }
    assert MASK_BINARIZE_THRESHOLD == 0.4
    results = detections_to_coco_results("img", detections)
    assert [r["category_id"] for r in results] == [2, 1]
    assert [r["score"] for r in results] == [0.75, 0.5]
    assert results[0]["bbox"] == [3.0, 2.0, 6.0, 4.0]
    assert np.array_equal(decode_mask(results[0]["segmentation"]), rect(2, 6, 3, 9).numpy())
    assert np.array_equal(decode_mask(results[1]["segmentation"]), rect(20, 30, 0, 4).numpy())
    strict = detections_to_coco_results("img", detections, mask_threshold=0.5)
    assert decode_mask(strict[0]["segmentation"]).sum() == 0
    assert (
        detections_to_coco_results("img", {key: value[:0] for key, value in detections.items()})
        == []
    )


# ----------------------------------------------------------------------------- AP and IoU
@pytest.mark.parametrize(
    "recall, precision, area, voc07",
    [
        # envelope 1 up to recall 0.5, 2/3 up to 1: 0.5 * 1 + 0.5 * 2/3; 6 points at 1, 5 at 2/3
        ([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], 5 / 6, (6 + 5 * 2 / 3) / 11),
        # 0.25 * 1 + 0.25 * 0.5; points 0..0.2 -> 1, 0.3..0.5 -> 0.5, rest 0
        ([0.25, 0.5], [1.0, 0.5], 0.375, (3 + 3 * 0.5) / 11),
        # recall exactly 0.3 reaches the 0.3 point (np.arange(0, 1.1, 0.1) would miss it)
        ([0.3], [1.0], 0.3, 4 / 11),
        ([], [], 0.0, 0.0),
    ],
)
def test_average_precision_hand_values(recall, precision, area, voc07):
    assert average_precision(np.array(recall), np.array(precision), "area") == pytest.approx(
        area, abs=1e-12
    )
    assert average_precision(np.array(recall), np.array(precision), "voc07") == pytest.approx(
        voc07, abs=1e-12
    )


def test_average_precision_rejects_unknown_method():
    with pytest.raises(ValueError, match="voc07"):
        average_precision(np.array([1.0]), np.array([1.0]), "coco")


def test_mask_iou_matches_numpy_and_pycocotools():
    rng = np.random.default_rng(0)
    pred_masks = (rng.random((5, SIDE, SIDE)) > 0.6).astype(np.uint8)
    gt_masks = (rng.random((4, SIDE, SIDE)) > 0.5).astype(np.uint8)
    ignore = (rng.random((SIDE, SIDE)) > 0.8).astype(np.uint8)
    ious = mask_iou(torch.from_numpy(pred_masks), torch.from_numpy(gt_masks)).numpy()

    reference = mask_utils.iou(
        [encode_mask(m) for m in pred_masks], [encode_mask(m) for m in gt_masks], [0] * 4
    )
    np.testing.assert_allclose(ious, reference, rtol=0, atol=1e-12)

    kept = pred_masks.astype(bool) & ~ignore.astype(bool)
    inter = (kept[:, None] & gt_masks.astype(bool)[None]).sum((2, 3))
    union = (kept[:, None] | gt_masks.astype(bool)[None]).sum((2, 3))
    with_void = mask_iou(
        torch.from_numpy(pred_masks), torch.from_numpy(gt_masks), torch.from_numpy(ignore)
    )
    np.testing.assert_allclose(with_void.numpy(), inter / union, rtol=0, atol=1e-12)
    assert not np.allclose(with_void.numpy(), ious)

    empty = torch.zeros((1, SIDE, SIDE), dtype=torch.uint8)
    assert mask_iou(empty, empty).item() == 0.0

    # the RLE version evaluate_sds uses gives the same numbers, with and without void
    pred_rles, gt_rles = [encode_mask(m) for m in pred_masks], [encode_mask(m) for m in gt_masks]
    np.testing.assert_array_equal(rle_mask_iou(pred_rles, gt_rles), ious)
    np.testing.assert_array_equal(
        rle_mask_iou(pred_rles, gt_rles, torch.from_numpy(ignore)), with_void.numpy()
    )
    assert rle_mask_iou(pred_rles, [], torch.from_numpy(ignore)).shape == (5, 0)


def test_void_pixels_are_ignored_in_iou():
    instance = rect(10, 20, 10, 20)  # 100 pixels
    void_band = rect(9, 21, 9, 21) - instance  # 44 pixels around it
    extra_on_background = rect(0, 4, 0, 11)  # 44 pixels of plain background
    gt = [target("a", [instance], [1], ignore=void_band)]
    covers_void = mask_iou((instance + void_band)[None], instance[None], void_band)
    covers_background = mask_iou((instance + extra_on_background)[None], instance[None], void_band)
    assert covers_void.item() == 1.0
    assert covers_background.item() == pytest.approx(100 / 144)

    result = evaluate_sds([pred("a", 1, instance + void_band, 0.9)], gt, CLASSES[:2])
    assert sds_ap(result, 1, 0.7) == (1.0, 1.0)
    result = evaluate_sds([pred("a", 1, instance + extra_on_background, 0.9)], gt, CLASSES[:2])
    assert sds_ap(result, 1, 0.5) == (1.0, 1.0)
    assert sds_ap(result, 1, 0.7) == (0.0, 0.0)  # 100/144 = 0.69 < 0.7


# ----------------------------------------------------------------------------- SDS matching
def test_perfect_predictions_give_ap_one():
    masks_a, masks_b = [rect(0, 8, 0, 8), rect(10, 20, 12, 30)], [rect(5, 25, 5, 15)]
    gt = [target("a", masks_a, [1, 2]), target("b", masks_b, [1])]
    preds = [
        pred("a", 1, masks_a[0], 0.9),
        pred("a", 2, masks_a[1], 0.8),
        pred("b", 1, masks_b[0], 0.7),
    ]
    result = evaluate_sds(preds, gt, CLASSES[:3])
    for method in ("area", "voc07"):
        for threshold in (0.5, 0.7):
            assert result.mean_ap[method][threshold] == 1.0
            np.testing.assert_array_equal(result.ap[method][threshold], [1.0, 1.0])
    np.testing.assert_array_equal(result.num_gt, [2, 1])


def test_duplicate_of_matched_gt_is_false_positive():
    first, second = rect(0, 10, 0, 10), rect(15, 25, 15, 25)
    gt = [target("a", [first, second], [1, 1])]
    preds = [pred("a", 1, first, 0.9), pred("a", 1, first, 0.8), pred("a", 1, second, 0.7)]
    result = evaluate_sds(preds, gt, CLASSES[:2])
    # TP, FP, TP of 2 GT: recall [.5, .5, 1], precision [1, .5, 2/3]
    area, voc07 = sds_ap(result, 1, 0.5)
    assert area == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc07 == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    recall, precision = result.curves[0.5][0]
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])


def test_correct_detection_after_wrong_one_and_image_without_that_class():
    first, second = rect(0, 10, 0, 10), rect(15, 25, 15, 25)
    gt = [target("a", [first, second], [1, 1]), target("b", [first], [2])]
    # the top detection sits in image "b", which has no GT of class 1; "second" is never found
    preds = [pred("b", 1, first, 0.9), pred("a", 1, first, 0.8)]
    result = evaluate_sds(preds, gt, CLASSES[:3])
    # FP, TP of 2 GT: recall [0, .5], precision [0, .5]
    area, voc07 = sds_ap(result, 1, 0.5)
    assert area == pytest.approx(0.5 * 0.5)
    assert voc07 == pytest.approx(6 * 0.5 / 11)
    assert sds_ap(result, 2, 0.5) == (0.0, 0.0)  # GT but no detections -> AP 0


def test_already_matched_gt_gives_fp_even_if_another_gt_qualifies():
    # unit level: the second detection's best GT (0) is taken; GT 1 would pass 0.5 but is not tried
    matches = match_detections(
        np.array([0.9, 0.8]),
        np.array([0, 0]),
        [np.array([1.0, 0.0]), np.array([0.8, 0.6])],
        [2],
        0.5,
    )
    np.testing.assert_array_equal(matches.tp, [True, False])
    np.testing.assert_array_equal(matches.fp, [False, True])
    assert matches.num_gt == 2
    # end to end: big (120 px) and small (80 px) GT; a detection of both has IoU 0.6 and 0.4
    big, small = rect(0, 10, 0, 12), rect(20, 28, 0, 10)
    gt = [target("a", [big, small], [1, 1])]
    preds = [pred("a", 1, big, 0.9), pred("a", 1, big + small, 0.8)]
    result = evaluate_sds(preds, gt, CLASSES[:2], iou_thresholds=(0.3,))
    area, voc07 = sds_ap(result, 1, 0.3)  # TP, FP: recall [.5, .5], precision [1, .5]
    assert (area, voc07) == (pytest.approx(0.5), pytest.approx(6 / 11))


def test_match_detections_sorts_by_score_with_ties_in_input_order():
    ious = [np.array([0.6, 0.0]), np.array([0.0, 0.9]), np.array([0.9, 0.0])]
    matches = match_detections(np.array([0.5, 0.9, 0.5]), np.array([0, 0, 0]), ious, [2], 0.5)
    np.testing.assert_array_equal(matches.tp, [True, True, False])  # order 1, 0, 2
    # many ties (numpy's default argsort reorders these): detections 2j and 2j+1 both hit GT j
    scores = np.random.default_rng(0).integers(0, 3, size=60) / 4
    ious = [np.eye(30)[n // 2] for n in range(60)]
    matches = match_detections(scores, np.zeros(60, dtype=int), ious, [30], 0.5)
    order = sorted(range(60), key=lambda n: -scores[n])  # Python's sort is stable
    first_of_pair = [order.index(n) < order.index(n ^ 1) for n in order]
    np.testing.assert_array_equal(matches.tp, first_of_pair)


def test_iou_exactly_at_threshold_is_a_match():
    gt = [target("a", [rect(0, 10, 0, 10)], [1])]
    result = evaluate_sds([pred("a", 1, rect(0, 7, 0, 10), 0.9)], gt, CLASSES[:2])  # IoU 70/100
    assert sds_ap(result, 1, 0.7) == (1.0, 1.0)


def test_class_without_gt_left_out_of_mean_and_images_without_detections():
    square = rect(4, 14, 4, 14)
    gt = [
        target("a", [square], [1]),
        target("b", [square], [1]),  # never detected
        target("c", [square], [2]),  # never detected: class 2 has AP 0
        target("d", [], []),  # no instances, no detections
    ]
    preds = [pred("a", 1, square, 0.9), pred("a", 3, square, 0.8)]  # class 3 has no GT
    result = evaluate_sds(preds, gt, CLASSES)
    # class 1: TP of 2 GT -> recall [.5], precision [1]
    assert sds_ap(result, 1, 0.5) == (pytest.approx(0.5), pytest.approx(6 / 11))
    assert sds_ap(result, 2, 0.5) == (0.0, 0.0)
    assert all(math.isnan(v) for v in sds_ap(result, 3, 0.5))
    assert result.mean_ap["area"][0.5] == pytest.approx((0.5 + 0.0) / 2)
    assert result.mean_ap["voc07"][0.7] == pytest.approx((6 / 11 + 0.0) / 2)
    np.testing.assert_array_equal(result.num_gt, [2, 1, 0])
    np.testing.assert_array_equal(result.num_det, [1, 0, 1])
    table = result.table()
    assert all(name in table for name in CLASSES[1:]) and "mean" in table and "25.0" in table
    summary = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert summary["per_class"]["triangle"]["AP_r@0.5"] == {"area": None, "voc07": None}
    assert summary["mAP_r@0.5"]["area"] == pytest.approx(0.25)


def test_class_mask_ious_keep_the_gt_of_the_class_in_target_order():
    circle_1, square, circle_2 = rect(0, 10, 0, 10), rect(0, 10, 20, 30), rect(20, 30, 0, 10)
    gt = [target("a", [circle_1, square, circle_2], [1, 2, 1]), target("b", [square], [2])]
    preds = [pred("b", 2, rect(0, 10, 20, 25), 0.5), pred("a", 1, rect(0, 30, 0, 10), 0.9),
             pred("a", 3, circle_1, 0.8)]  # fmt: skip
    ious = class_mask_ious(preds, gt, {"a": 0, "b": 1})
    np.testing.assert_array_equal(ious[0], [0.5])  # the square of b: 50 of 100 pixels
    expected = mask_iou(rect(0, 30, 0, 10)[None], torch.stack([circle_1, circle_2]))[0].numpy()
    np.testing.assert_array_equal(ious[1], expected)  # circles only, in the target's order
    np.testing.assert_allclose(ious[1], [1 / 3, 1 / 3])
    assert ious[2].shape == (0,)  # no triangle in a


def test_evaluate_sds_rejects_unknown_image_and_wrong_size():
    gt = [target("a", [rect(0, 5, 0, 5)], [1])]
    with pytest.raises(ValueError, match="'zzz' is not in the ground truth"):
        evaluate_sds([pred("zzz", 1, rect(0, 5, 0, 5), 0.9)], gt, CLASSES[:2])
    small = torch.ones((8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="original image size"):
        evaluate_sds([pred("a", 1, small, 0.9)], gt, CLASSES[:2])


# ----------------------------------------------------------------------------- COCO numbers
def synthetic_set() -> tuple[list[dict], list[dict]]:
    """5 images, 3 classes; predictions are shifted GT (some missed) plus random false positives."""
    rng = np.random.default_rng(7)
    ground_truth, predictions = [], []
    for i in range(5):
        masks, labels = [], []
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, 20, size=2)
            h, w = rng.integers(3, 12, size=2)
            masks.append(rect(y, y + h, x, x + w))
            labels.append(int(rng.integers(1, 4)))
            if rng.random() < 0.8:  # detected, shifted by up to 2 pixels
                dy, dx = rng.integers(-2, 3, size=2)
                shifted = torch.roll(masks[-1], shifts=(int(dy), int(dx)), dims=(0, 1))
                predictions.append(pred(f"im{i}", labels[-1], shifted, float(rng.random())))
        for _ in range(rng.integers(0, 3)):  # false positives
            y, x = rng.integers(0, 24, size=2)
            label, score = int(rng.integers(1, 4)), float(rng.random())
            predictions.append(pred(f"im{i}", label, rect(y, y + 8, x, x + 8), score))
        ground_truth.append(target(f"im{i}", masks, labels))
    return predictions, ground_truth


def pycocotools_stats(predictions: list[dict], ground_truth: list[dict]) -> np.ndarray:
    """Straightforward pycocotools usage, written independently of coco_evaluate."""
    images, annotations = [], []
    for image_number, gt in enumerate(ground_truth, start=1):
        images.append({"id": image_number, "height": SIDE, "width": SIDE})
        for mask, label in zip(gt["masks"], gt["labels"].tolist(), strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.numpy()))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_number,
                    "category_id": label,
                    "iscrowd": 0,
                    "segmentation": rle,
                    "area": float(mask.sum()),
                    "bbox": list(mask_utils.toBbox(rle)),
                }
            )
    number_of = {gt["image_id"]: n for n, gt in enumerate(ground_truth, start=1)}
    results = [
        {
            "image_id": number_of[p["image_id"]],
            "category_id": p["category_id"],
            "segmentation": p["segmentation"],
            "score": p["score"],
        }
        for p in predictions
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k, "name": CLASSES[k]} for k in (1, 2, 3)],
        }
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.where(evaluator.stats >= 0, evaluator.stats, np.nan)


def test_coco_evaluate_equals_pycocotools():
    predictions, ground_truth = synthetic_set()
    expected = pycocotools_stats(predictions, ground_truth)
    with_bbox = [
        p | {"bbox": [0.0, 0.0, 40.0, 40.0]} for p in predictions
    ]  # must not change mask areas
    stats = coco_evaluate(with_bbox, ground_truth, CLASSES)
    assert list(stats)[:3] == ["AP", "AP50", "AP75"]
    np.testing.assert_array_equal(np.array(list(stats.values())), expected)
    assert 0.0 < stats["AP50"] < 1.0 and math.isnan(stats["APl"])  # 32x32 images: no large objects
    assert all("area" not in p for p in with_bbox)  # inputs are not mutated


def test_coco_evaluate_is_quiet_unless_verbose(capsys):
    predictions, ground_truth = synthetic_set()
    coco_evaluate(predictions, ground_truth, CLASSES)
    assert capsys.readouterr().out == ""
    coco_evaluate(predictions, ground_truth, CLASSES, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_coco_evaluate_without_predictions():
    _, ground_truth = synthetic_set()
    stats = coco_evaluate([], ground_truth, CLASSES)
    assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["AR100"] == 0.0
    assert math.isnan(stats["APm"]) and math.isnan(stats["APl"])


def test_evaluate_predictions_combines_both_and_is_json_ready():
    predictions, ground_truth = synthetic_set()
    summary = evaluate_predictions(predictions, ground_truth, CLASSES)
    sds = evaluate_sds(predictions, ground_truth, CLASSES)
    assert summary["mAP_r@0.5"]["area"] == sds.mean_ap["area"][0.5]
    assert summary["mAP_r@0.7"]["voc07"] == sds.mean_ap["voc07"][0.7]
    assert set(summary["per_class"]) == set(CLASSES[1:])
    assert summary["coco"]["AP"] == coco_evaluate(predictions, ground_truth, CLASSES)["AP"]
    assert summary["table"] == sds.table()
    json.dumps(summary, allow_nan=False)



def test_predictions_are_checked_once_and_check_false_changes_no_number():
    predictions, ground_truth = synthetic_set()
    checked = evaluate_predictions(predictions, ground_truth, CLASSES)
    assert evaluate_predictions(predictions, ground_truth, CLASSES, check=False) == checked
    bad = [*predictions, {**predictions[0], "category_id": len(CLASSES)}]
    with pytest.raises(ValueError, match=f"prediction {len(predictions)}: .*category"):
        evaluate_predictions(bad, ground_truth, CLASSES)


# ----------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    predictions, _ = synthetic_set()
    path = tmp_path / "out" / "predictions.json"
    save_predictions(predictions, path)
    assert (
        load_predictions(path, image_ids={f"im{i}" for i in range(5)}, num_classes=3) == predictions
    )
    assert [p.name for p in path.parent.iterdir()] == ["predictions.json"]  # no temp file left


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda entries: entries[1].pop("score"), r"entry 1: missing key\(s\) \['score'\]"),
        (lambda entries: entries[2]["segmentation"].update(counts="~~~"), "entry 2: bad RLE"),
        (
            lambda entries: entries[2]["segmentation"].update(size=[SIDE, SIDE + 1]),
            "entry 2: bad RLE",
        ),
        (lambda entries: entries[0].update(category_id=0), "entry 0: category_id 0"),
        (lambda entries: entries[0].update(category_id=4), "entry 0: category_id 4 is above"),
        (
            lambda entries: entries[3].update(image_id="nope"),
            "entry 3: image_id 'nope' is not in the ground truth",
        ),
    ],
)
def test_load_predictions_names_file_entry_and_problem(tmp_path, corrupt, message):
    predictions, _ = synthetic_set()
    corrupt(predictions)
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(predictions))
    with pytest.raises(ValueError, match=message) as error:
        load_predictions(path, image_ids={f"im{i}" for i in range(5)}, num_classes=3)
    assert str(path) in str(error.value) and "save_predictions" in str(error.value)


def test_load_predictions_bad_json_and_missing_file(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text('[{"image_id": "a",')
    with pytest.raises(ValueError, match="is not valid JSON") as error:
        load_predictions(path)
    assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="no such predictions file"):
        load_predictions(tmp_path / "missing.json")
