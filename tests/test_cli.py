"""`python -m mnc_teach` commands end to end: shapes, download (offline path), evaluate, train,
predict.

train and predict run with FakeMNC (tests/fakes.py) in place of build_mnc, so they take seconds.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import FakeMNC, fake_model

from mnc_teach import course
from mnc_teach.cli import main
from mnc_teach.config import shapes_cpu
from mnc_teach.data.voc import VOCInstanceSegmentation
from mnc_teach.engine import checkpoint as checkpoint_module
from mnc_teach.engine import loop as loop_module
from mnc_teach.engine.checkpoint import load_checkpoint
from mnc_teach.engine.state import TrainHistory
from mnc_teach.evaluation.coco import encode_mask, load_predictions, save_predictions
from mnc_teach.evaluation.report import evaluate_predictions

SMALL = ["--train", "6", "--val", "4", "--image-size", "64"]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    assert main(["shapes", "--root", str(root), "--seed", "3", *SMALL]) == 0
    return root


def _fingerprint(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("fingerprint"))
    return line.split()[-1]


def test_shapes_fingerprint_depends_only_on_the_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fingerprints = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(["shapes", "--root", str(tmp_path / name), "--seed", str(seed), *SMALL]) == 0
        fingerprints.append(_fingerprint(capsys.readouterr().out))
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
    assert len(fingerprints[0]) == 64
    stored = (tmp_path / "a" / "VOCdevkit" / "VOC2012" / "fingerprint.txt").read_text().strip()
    assert stored == fingerprints[0]


def test_module_entry_point_has_help_for_every_command() -> None:
    for command in ("shapes", "download", "evaluate", "train", "predict"):
        result = subprocess.run(
            [sys.executable, "-m", "mnc_teach", command, "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "usage: python -m mnc_teach " + command in result.stdout


def test_download_offline_gives_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # find a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["download", "sbd", "--root", str(tmp_path), "--url", f"http://127.0.0.1:{port}/"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and "benchmark.tgz" in err


def _predictions_from_ground_truth(
    dataset: VOCInstanceSegmentation, drop_first: bool
) -> list[dict]:
    """Perfect predictions (score 1.0), optionally missing the first instance of the first image."""
    results = []
    for index in range(len(dataset)):
        target = dataset.load_target(index)
        for k, (label, mask) in enumerate(zip(target["labels"], target["masks"], strict=True)):
            if drop_first and index == 0 and k == 0:
                continue
            results.append(
                {
                    "image_id": target["image_id"],
                    "category_id": int(label),
                    "segmentation": encode_mask(mask),
                    "score": 1.0,
                }
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
    argv += ["--predictions", str(tmp_path / "preds.json"), "--json", str(out_json)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    written = json.loads(out_json.read_text())

    ground_truth = [dataset.load_target(i) for i in range(len(dataset))]
    expected = evaluate_predictions(predictions, ground_truth, dataset.class_names)
    for threshold in ("0.5", "0.7"):
        for method in ("area", "voc07"):
            assert written[f"mAP_r@{threshold}"][method] == pytest.approx(
                expected[f"mAP_r@{threshold}"][method]
            )
        assert f"mAP^r@{threshold}: {expected[f'mAP_r@{threshold}']['area']:.4f} (area)" in printed
    assert written["coco"]["AP"] == pytest.approx(expected["coco"]["AP"])
    if drop_first:
        assert written["mAP_r@0.5"]["area"] < 1.0
    else:
        assert written["mAP_r@0.5"]["area"] == pytest.approx(1.0)
        assert written["mAP_r@0.7"]["voc07"] == pytest.approx(1.0)


def test_evaluate_names_a_bad_predictions_file(
    shapes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": "nope"}]')
    argv = ["evaluate", "--dataset-root", str(shapes_root), "--split", "val"]
    argv += ["--predictions", str(bad)]
    assert main(argv) == 1
    assert str(bad) in capsys.readouterr().err


def test_evaluate_names_the_file_for_an_unknown_image_id(
    shapes_root: Path, tmp_path: Path, capsys
) -> None:
    dataset = VOCInstanceSegmentation(shapes_root, split="val")
    predictions = _predictions_from_ground_truth(dataset, drop_first=False)
    predictions[0] = {**predictions[0], "image_id": "train_000000"}  # an image of another split
    save_predictions(predictions, tmp_path / "preds.json")
    argv = ["evaluate", "--dataset-root", str(shapes_root), "--split", "val"]
    assert main([*argv, "--predictions", str(tmp_path / "preds.json")]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "preds.json") in err and "entry 0" in err and "train_000000" in err


@pytest.fixture
def fake_build_mnc(monkeypatch: pytest.MonkeyPatch) -> list:
    """build_mnc replaced by FakeMNC; returns the models it built."""
    built = []

    def build(cfg):
        built.append(fake_model())
        return built[-1]

    monkeypatch.setattr(loop_module, "build_mnc", build)  # training
    monkeypatch.setattr(checkpoint_module, "build_mnc", build)  # load_model (predict)
    return built


def _train_argv(out: Path, shapes_root: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--preset",
        "shapes-cpu",
        "--out",
        str(out),
        "--data-root",
        str(shapes_root),
        "--device",
        "cpu",
        "--set",
        "train.images_per_batch=2",
        "--set",
        "train.log_every=1",
        *extra,
    ]


def test_train_resume_predict_evaluate(
    shapes_root: Path, tmp_path: Path, capsys, fake_build_mnc
) -> None:
    out = tmp_path / "run"
    assert (
        main(
            _train_argv(
                out,
                shapes_root,
                "--steps",
                "3",
                "--set",
                "train.val_every=2",
                "--set",
                "data.flip=false",
            )
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "done:" in printed and "step 3/3" in printed and "python -m mnc_teach predict" in printed
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["step"] == 3
    assert (
        checkpoint["config"]["data"]["root"] == str(shapes_root)
        and checkpoint["config"]["data"]["flip"] is False
    )
    assert (
        checkpoint["config"]["train"]["images_per_batch"] == 2
        and checkpoint["config"]["train"]["lr"] == shapes_cpu().train.lr
    )

    # --resume without --preset continues with the checkpoint's settings
    assert main(["train", "--out", str(out), "--resume", "--steps", "5", "--device", "cpu"]) == 0
    history = TrainHistory.load(out / "history.json")
    assert [e["step"] for e in history.steps] == [1, 2, 3, 4, 5] and [
        e["step"] for e in history.val
    ] == [2, 4]

    preds = tmp_path / "preds.json"
    argv = [
        "predict",
        "--checkpoint",
        str(out / "checkpoint.pt"),
        "--dataset-root",
        str(shapes_root),
        "--out",
        str(preds),
    ]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "python -m mnc_teach evaluate" in capsys.readouterr().out
    dataset = VOCInstanceSegmentation(shapes_root, split="val")
    results = load_predictions(preds, set(dataset.image_ids), dataset.num_classes)
    # FakeMNC: one detection per image
    assert sorted(r["image_id"] for r in results) == sorted(dataset.image_ids)
    assert all(r["segmentation"]["size"] == [64, 64] for r in results)
    assert main(["evaluate", "--dataset-root", str(shapes_root), "--predictions", str(preds)]) == 0
    assert "mAP^r@0.5" in capsys.readouterr().out


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(
    shapes_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    class InterruptedMNC(FakeMNC):
        def forward(self, images, targets=None, detect=None):
            if self.training and self.calls == 1:  # during step 2, as if the user pressed Ctrl-C
                signal.raise_signal(signal.SIGINT)
            return super().forward(images, targets, detect)

    monkeypatch.setattr(loop_module, "build_mnc", lambda cfg: InterruptedMNC())
    out = tmp_path / "run"
    # SIG_IGN when the tests run in the background (nohup, &)
    handler_before = signal.getsignal(signal.SIGINT)
    assert main(_train_argv(out, shapes_root, "--steps", "50", "--set", "train.accumulate=1")) == 0
    printed = capsys.readouterr().out
    assert "interrupt: stopping after this step" in printed
    assert f"resume with: python -m mnc_teach train --out {out} --resume" in printed
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler_before  # restored


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--set", "train.lr=fast"],
            "--set train.lr=fast: setting train.lr is 'fast' (str); expected float",
        ),
        (["--steps", "-5"], "setting train.max_steps is -5; expected >= 1"),
        (["--set", "rpn.anchor_scales=()"], "rpn.anchor_scales is (); expected one or more values"),
        (["--set", "train.speed=1"], "--set 'train.speed=1': expected NAME=VALUE"),
        (["--set", "train.lr"], "expected NAME=VALUE"),
        (["--set", "train.images_per_batch=20"], "fewer than one step's 20 x 1"),
    ],
)
def test_train_user_errors_are_one_line(
    shapes_root: Path, tmp_path: Path, capsys, fake_build_mnc, extra, message
) -> None:
    assert main([*_train_argv(tmp_path / "run", shapes_root, "--steps", "1"), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_train_refuses_to_overwrite_a_run_and_names_missing_data(
    shapes_root: Path, tmp_path: Path, capsys, fake_build_mnc
) -> None:
    out = tmp_path / "run"
    assert main(_train_argv(out, shapes_root, "--steps", "1")) == 0
    capsys.readouterr()
    assert main(_train_argv(out, shapes_root, "--steps", "1")) == 1
    assert "--resume" in capsys.readouterr().err
    argv = [
        "train",
        "--preset",
        "voc-vgg16-paper",
        "--out",
        str(tmp_path / "voc"),
        "--data-root",
        str(tmp_path / "none"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no SBD folder" in err and "download sbd" in err and "--data-root" in err
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "missing.pt"),
                "--dataset-root",
                str(shapes_root),
                "--out",
                str(tmp_path / "p.json"),
            ]
        )
        == 1
    )
    assert "missing.pt" in capsys.readouterr().err


def test_predict_with_svd_compresses_the_real_model_and_names_a_bad_rank(
    shapes_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(_train_argv(out, shapes_root, "--steps", "1", "--set", "train.accumulate=1")) == 0
    argv = ["predict", "--checkpoint", str(out / "checkpoint.pt"), "--dataset-root",
            str(shapes_root), "--out", str(tmp_path / "p.json"), "--device", "cpu", "--svd"]
    capsys.readouterr()
    assert main(argv) == 0
    assert "fc6/fc7 compressed by truncated SVD" in capsys.readouterr().out
    assert main([*argv, "--fc6-rank", "256"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fc6" in err and err.count("\n") == 1


def test_assignments_list_prints_the_points(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["assignments", "list"]) == 0
    out = capsys.readouterr().out
    assert "| notebook | exercises (auto-graded) |" in out and "| **all** |" in out


def test_assignments_without_nbgrader_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "mnc_teach.course.assignments", raising=False)
    monkeypatch.delattr(course, "assignments", raising=False)
    monkeypatch.setitem(sys.modules, "nbgrader.api", None)  # as if nbgrader were not installed
    assert main(["assignments", "list"]) == 1
    assert "pip install -e '.[instructor]'" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "expected"), [([], None), (["--cell-timeout", "60"], 60)])
def test_assignments_build_takes_the_courses_cell_limit_unless_given(
    extra: list[str], expected: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mnc_teach.course import assignments

    calls = []
    monkeypatch.setattr(assignments, "build_course",
                        lambda out, **kwargs: calls.append(kwargs) or Path(out))
    assert main(["assignments", "build", "--out", str(tmp_path / "c"), *extra]) == 0
    [kwargs] = calls
    # without --cell-timeout the library's default (assignments.CELL_TIMEOUT_S) applies
    assert kwargs.get("cell_timeout_s") == expected and kwargs["force"] is False
