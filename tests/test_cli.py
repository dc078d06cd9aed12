"""`python -m mnc_teach` commands end to end: shapes, download (offline path), evaluate."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mnc_teach.cli import main
from mnc_teach.data.voc import VOCInstanceSegmentation
from mnc_teach.evaluate import evaluate_predictions
from mnc_teach.predictions import encode_mask, save_predictions

SMALL = ["--train", "6", "--val", "4", "--image-size", "64"]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    assert main(["shapes", "--root", str(root), "--seed", "3", *SMALL]) == 0
    return root


def _fingerprint(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("fingerprint"))
    return line.split()[-1]


def test_shapes_fingerprint_depends_only_on_the_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fingerprints = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(["shapes", "--root", str(tmp_path / name), "--seed", str(seed), *SMALL]) == 0
        fingerprints.append(_fingerprint(capsys.readouterr().out))
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
    assert len(fingerprints[0]) == 64
    stored = (tmp_path / "a" / "VOCdevkit" / "VOC2012" / "fingerprint.txt").read_text().strip()
    assert stored == fingerprints[0]


def test_module_entry_point_has_help_for_every_command() -> None:
    for command in ("shapes", "download", "evaluate"):
        result = subprocess.run(
            [sys.executable, "-m", "mnc_teach", command, "--help"], capture_output=True, text=True, check=True
        )
        assert "usage: python -m mnc_teach " + command in result.stdout


def test_download_offline_gives_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # find a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["download", "sbd", "--root", str(tmp_path), "--url", f"http://127.0.0.1:{port}/"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and "benchmark.tgz" in err


def _predictions_from_ground_truth(dataset: VOCInstanceSegmentation, drop_first: bool) -> list[dict]:
    """Perfect predictions (score 1.0), optionally missing the first instance of the first image."""
    results = []
    for index in range(len(dataset)):
        target = dataset.load_target(index)
        for k, (label, mask) in enumerate(zip(target["labels"], target["masks"], strict=True)):
            if drop_first and index == 0 and k == 0:
                continue
            results.append(
                {"image_id": target["image_id"], "category_id": int(label), "segmentation": encode_mask(mask), "score": 1.0}
            )
    return results


@pytest.mark.parametrize("drop_first", [False, True])
def test_evaluate_prints_and_writes_the_library_numbers(
    shapes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], drop_first: bool
) -> None:
    dataset = VOCInstanceSegmentation(shapes_root, split="val")
    predictions = _predictions_from_ground_truth(dataset, drop_first)
    save_predictions(predictions, tmp_path / "preds.json")
    out_json = tmp_path / "scores" / "eval.json"
    argv = ["evaluate", "--dataset-root", str(shapes_root), "--split", "val"]
    assert main([*argv, "--predictions", str(tmp_path / "preds.json"), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    written = json.loads(out_json.read_text())

    ground_truth = [dataset.load_target(i) for i in range(len(dataset))]
    expected = evaluate_predictions(predictions, ground_truth, dataset.class_names)
    for threshold in ("0.5", "0.7"):
        for method in ("area", "voc07"):
            assert written[f"mAP_r@{threshold}"][method] == pytest.approx(expected[f"mAP_r@{threshold}"][method])
        assert f"mAP^r@{threshold}: {expected[f'mAP_r@{threshold}']['area']:.4f} (area)" in printed
    assert written["coco"]["AP"] == pytest.approx(expected["coco"]["AP"])
    if drop_first:
        assert written["mAP_r@0.5"]["area"] < 1.0
    else:
        assert written["mAP_r@0.5"]["area"] == pytest.approx(1.0)
        assert written["mAP_r@0.7"]["voc07"] == pytest.approx(1.0)


def test_evaluate_names_a_bad_predictions_file(shapes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": "nope"}]')
    argv = ["evaluate", "--dataset-root", str(shapes_root), "--split", "val", "--predictions", str(bad)]
    assert main(argv) == 1
    assert str(bad) in capsys.readouterr().err


def test_evaluate_names_the_file_for_an_unknown_image_id(shapes_root: Path, tmp_path: Path, capsys) -> None:
    dataset = VOCInstanceSegmentation(shapes_root, split="val")
    predictions = _predictions_from_ground_truth(dataset, drop_first=False)
    predictions[0] = {**predictions[0], "image_id": "train_000000"}  # an image of another split
    save_predictions(predictions, tmp_path / "preds.json")
    argv = ["evaluate", "--dataset-root", str(shapes_root), "--split", "val"]
    assert main([*argv, "--predictions", str(tmp_path / "preds.json")]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "preds.json") in err and "entry 0" in err and "train_000000" in err
