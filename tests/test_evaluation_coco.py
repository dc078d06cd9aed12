"""Tests for mnc_teach.evaluation.coco: RLE masks, the predictions JSON (checked entry by entry,
saved and loaded), and COCO mask AP against pycocotools and hand-computed cases."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from fakes import CLASSES, SIDE, pred, rect, synthetic_set, target
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mnc_teach.evaluation.coco import (
    COCO_STAT_NAMES,
    MASK_BINARIZE_THRESHOLD,
    _rle_run_lengths,
    check_result,
    check_results,
    coco_evaluate,
    decode_mask,
    detections_to_coco_results,
    encode_mask,
    index_images,
    load_predictions,
    save_predictions,
)


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

def test_decode_accepts_bytes_and_uncompressed_counts_and_encode_wants_one_mask():
    mask = rect(3, 9, 2, 30)
    rle = encode_mask(mask)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    assert np.array_equal(decode_mask(as_bytes), mask.numpy())
    # uncompressed: column-major runs of 0s and 1s, starting with 0s
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}  # 0, 1, 1, 0, 0, 0 down the columns
    assert decode_mask(uncompressed).tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match=r"one mask \[H, W\], got shape \(2, 32, 32\)"):
        encode_mask(torch.stack([mask, mask]))


def test_run_lengths_of_a_compressed_rle_match_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(20):
        runs = rng.integers(0, 200, size=int(rng.integers(1, 30))).tolist()
        runs[1:] = [max(run, 1) for run in runs[1:]]  # only the first run may be empty
        height = int(rng.integers(1, 9))
        width = -(-sum(runs) // height)  # enough pixels; the last run fills the rest
        runs[-1] += height * width - sum(runs)
        uncompressed = {"size": [height, width], "counts": runs}
        compressed = mask_utils.frPyObjects(uncompressed, height, width)
        assert _rle_run_lengths(compressed["counts"].decode("ascii")).tolist() == runs
    assert _rle_run_lengths("").tolist() == []
    with pytest.raises(ValueError, match="alphabet"):
        _rle_run_lengths("0~")
    with pytest.raises(ValueError, match="ends in the middle of a value"):
        _rle_run_lengths("0P")  # 0x20 set on the last chunk: another chunk should follow



# ----------------------------------------------------------------------------- checking entries
GOOD = {"image_id": "a", "category_id": 1, "segmentation": encode_mask(rect(0, 4, 0, 4)),
        "score": 0.5}


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"image_id": 7}, "image_id 7 is not a str"),
        ({"image_id": "zzz"}, "image_id 'zzz' is not in the ground truth"),
        ({"category_id": True}, "category_id True is not an int >= 1"),
        ({"category_id": 2.0}, "category_id 2.0 is not an int >= 1"),
        ({"category_id": 4}, "category_id 4 is above the number of classes K = 3"),
        ({"score": math.nan}, "score nan is not a finite number"),
        ({"score": "0.5"}, "score '0.5' is not a finite number"),
        ({"segmentation": [[0, 0, 4, 0, 4, 4]]}, "segmentation is not an RLE dict"),
        ({"segmentation": {"size": [SIDE, SIDE], "counts": "0", "area": 1}},
         "exactly the keys 'size' and 'counts'"),
        ({"segmentation": {"size": [SIDE, 0], "counts": "0"}}, "is not [H, W] with positive ints"),
        ({"segmentation": {"size": [SIDE, SIDE], "counts": b"0"}}, "counts is bytes"),
        ({"segmentation": {"size": [SIDE, SIDE], "counts": "é"}}, "non-ASCII"),
        ({"segmentation": {"size": [2, 2], "counts": "3"}}, "do not add up to H * W = 4"),
    ],
)
def test_check_result_names_the_entry_and_the_problem(change, problem):
    check_result(GOOD, "entry 0", image_ids={"a"}, num_classes=3)  # the unchanged entry is fine
    with pytest.raises(ValueError) as error:
        check_result(GOOD | change, "preds.json: entry 5", image_ids={"a"}, num_classes=3)
    message = str(error.value)
    assert message.startswith("preds.json: entry 5: ") and problem in message
    assert "save_predictions" in message  # says how to write a valid file


def test_check_result_names_missing_keys_and_a_non_dict():
    with pytest.raises(ValueError, match=r"^entry 2: missing key\(s\) \['score'\]"):
        check_result({k: v for k, v in GOOD.items() if k != "score"}, "entry 2")
    with pytest.raises(ValueError, match="^entry 3: expected a dict, got list"):
        check_result([GOOD], "entry 3")
    check_result(GOOD | {"image_id": "any", "category_id": 99}, "entry 4")  # no ids, no K given


def test_check_results_names_the_first_bad_prediction_by_its_index():
    check_results([GOOD, GOOD], image_ids={"a"}, num_classes=3)
    with pytest.raises(ValueError, match=r"^prediction 1: .*category_id"):
        check_results([GOOD, GOOD | {"category_id": 7}], image_ids={"a"}, num_classes=3)


def test_image_sizes_check_each_masks_size():
    size = tuple(GOOD["segmentation"]["size"])
    check_result(GOOD, "entry 0", image_sizes={"a": size, "b": (5, 7)})
    with pytest.raises(ValueError, match=r"^entry 0: the mask is \[\d+, \d+\] \(H, W\) but image "
                       r"'a' is \[5, 7\]; encode masks at the original image size"):
        check_result(GOOD, "entry 0", image_sizes={"a": (5, 7)})


def test_index_images_needs_unique_ids_and_labels_in_range():
    square = rect(0, 4, 0, 4)
    assert index_images([target("a", [square], [1]), target("b", [], [])], 3) == {"a": 0, "b": 1}
    with pytest.raises(ValueError, match="ground truth 1 has a missing or duplicate image_id 'a'"):
        index_images([target("a", [square], [1]), target("a", [square], [2])], 3)
    with pytest.raises(ValueError, match=r"ground truth 'a': labels \[4\] outside 1..3"):
        index_images([target("a", [square], [4])], 3)



# ----------------------------------------------------------------------------- COCO by hand
@pytest.mark.parametrize(
    "predictions, expected",
    [
        # the instance exactly: AP 1 at every IoU threshold 0.5, 0.55, ..., 0.95
        ([pred("a", 1, rect(0, 10, 0, 10), 0.9)], {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}),
        # IoU 64 / 100: a match at 0.5, 0.55, 0.6 only, so AP = 3 of 10 thresholds
        ([pred("a", 1, rect(0, 8, 0, 8), 0.9)], {"AP": 0.3, "AP50": 1.0, "AP75": 0.0}),
        # a better-scored false positive first: precision 1/2 at recall 1
        ([pred("a", 1, rect(20, 30, 20, 30), 0.9), pred("a", 1, rect(0, 10, 0, 10), 0.8)],
         {"AP": 0.5, "AP50": 0.5, "AP75": 0.5}),
        # the right mask under the wrong class finds nothing of class 1
        ([pred("a", 2, rect(0, 10, 0, 10), 0.9)], {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}),
    ],
)
def test_coco_evaluate_hand_cases(predictions, expected):
    ground_truth = [target("a", [rect(0, 10, 0, 10)], [1])]  # one 100-pixel instance: "small"
    stats = coco_evaluate(predictions, ground_truth, CLASSES)
    assert list(stats) == list(COCO_STAT_NAMES)
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value), name
    assert stats["APs"] == pytest.approx(expected["AP"])
    assert math.isnan(stats["APm"]) and math.isnan(stats["APl"])  # no medium or large instance


def test_coco_evaluate_names_a_bad_prediction():
    ground_truth = [target("a", [rect(0, 10, 0, 10)], [1])]
    bad = [pred("a", 1, rect(0, 10, 0, 10), 0.9), pred("b", 1, rect(0, 10, 0, 10), 0.8)]
    with pytest.raises(ValueError, match="^prediction 1: image_id 'b' is not in the ground truth"):
        coco_evaluate(bad, ground_truth, CLASSES)


# ----------------------------------------------------------------------------- COCO numbers
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
