"""The fault suite: every bad input and fault a careless user can cause, and what it must give.

Each kind has one of two outcomes:
    error     the command exits 1 with one line ``error: ...`` that names the file or argument
              and says what to do (or the API raises one such message), before doing any work;
    handled   the right thing happens (the run stops cleanly, the data is used as it is, ...).
And in every kind no input file changes: the files of the shared world and of the case's own
folder are hashed before and after (:func:`snapshot`), and an error writes no file at all.

The world (module scope): a 64 x 64 shapes dataset (6 train, 4 val images), a real MNC trained
2 steps on it, perfect predictions of its val split, and the VOC and SBD test fixtures.
``python tests/test_faults.py`` prints the number of kinds by outcome.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import DATASETS, FakeMNC, fake_model, small_config
from PIL import Image
from scipy.io import loadmat, savemat
from voc_fixtures import build_sbd, build_voc

from mnc_teach.boxes import batched_nms, nms
from mnc_teach.cli import main
from mnc_teach.config import shapes_cpu
from mnc_teach.data.voc import VOCInstanceSegmentation
from mnc_teach.engine import loop as loop_module
from mnc_teach.engine.checkpoint import load_checkpoint, load_model
from mnc_teach.engine.inference import predict
from mnc_teach.engine.loop import train
from mnc_teach.evaluation.coco import encode_mask, save_predictions
from mnc_teach.roi_warp import roi_warp_pool
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.structures import check_targets

REPO = Path(__file__).resolve().parents[1]
ERROR, HANDLED = "error", "handled"


# ----------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class World:
    root: Path  # everything below is under it
    shapes: Path  # a shapes dataset root (holds VOCdevkit/VOC2012)
    checkpoint: Path  # a real MNC trained 2 steps on it
    predictions: Path  # perfect predictions of its val split (COCO results JSON)
    voc: Path  # the VOC fixture's root (20 classes)
    sbd: Path  # the SBD fixture's benchmark_RELEASE folder


def _perfect_predictions(dataset: VOCInstanceSegmentation) -> list[dict]:
    results = []
    for index in range(len(dataset)):
        target = dataset.load_target(index)
        for label, mask in zip(target["labels"], target["masks"], strict=True):
            results.append({"image_id": target["image_id"], "category_id": int(label),
                            "segmentation": encode_mask(mask), "score": 1.0})
    return results


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    shapes, run = root / "shapes", root / "run"
    assert main(["shapes", "--root", str(shapes), "--train", "6", "--val", "4",
                 "--image-size", "64"]) == 0
    assert main(["train", "--out", str(run), "--data-root", str(shapes), "--device", "cpu",
                 "--steps", "2", "--set", "train.images_per_batch=2",
                 "--set", "train.accumulate=1"]) == 0
    predictions = root / "predictions.json"
    save_predictions(_perfect_predictions(VOCInstanceSegmentation(shapes, split="val")),
                     predictions)
    voc, sbd = build_voc(root / "fixtures"), build_sbd(root / "fixtures")
    return World(root=root, shapes=shapes, checkpoint=run / "checkpoint.pt",
                 predictions=predictions, voc=voc.root, sbd=sbd.root)


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders``, by path."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def copy_shapes(world: World, tmp: Path) -> Path:
    """A private copy of the shapes dataset to corrupt."""
    return Path(shutil.copytree(world.shapes, tmp / "shapes"))


def shapes_with(world: World, tmp: Path, folder: str, change: Callable[[Path], object]) -> Path:
    """A private copy of the shapes dataset whose first val image's file in ``folder``
    (JPEGImages, SegmentationObject, SegmentationClass) is passed to ``change``."""
    root = copy_shapes(world, tmp)
    suffix = ".jpg" if folder == "JPEGImages" else ".png"
    change(voc_dir(root) / folder / f"{first_val_id(root)}{suffix}")
    return root


def voc_dir(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


def first_val_id(root: Path) -> str:
    return (voc_dir(root) / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]


def edited_checkpoint(world: World, tmp: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of the world's checkpoint with ``edit(checkpoint)`` saved in its place (the
    returned object, or the edited dict when ``edit`` returns None)."""
    checkpoint = torch.load(world.checkpoint, weights_only=True)
    edited = edit(checkpoint)
    path = tmp / "edited.pt"
    torch.save(checkpoint if edited is None else edited, path)
    return path


def edited_predictions(world: World, tmp: Path, edit: Callable[[list[dict]], object]) -> Path:
    results = json.loads(world.predictions.read_text())
    edited = edit(results)
    path = tmp / "edited.json"
    path.write_text(json.dumps(results if edited is None else edited))
    return path


def predict_argv(checkpoint: Path | str, dataset_root: Path, out: Path | str, *extra: str):
    return ["predict", "--checkpoint", str(checkpoint), "--dataset-root", str(dataset_root),
            "--out", str(out), "--device", "cpu", *extra]


def evaluate_argv(dataset_root: Path, predictions: Path | str, *extra: str) -> list[str]:
    return ["evaluate", "--dataset-root", str(dataset_root), "--predictions", str(predictions),
            *extra]


def train_argv(out: Path | str, data_root: Path | str, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--data-root", str(data_root), "--device", "cpu",
            "--steps", "1", "--set", "train.images_per_batch=2", "--set", "train.accumulate=1",
            *extra]


# ----------------------------------------------------------------------------- the corruptions

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _RunsCode:
    """A pickle that would create a file when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def _code_pickle(world: World, tmp: Path) -> Path:
    path = tmp / "evil.pt"
    with open(path, "wb") as file:
        pickle.dump({"step": 1, "config": {}, "model": _RunsCode()}, file, protocol=2)
    return path


def _nan_weights(checkpoint: dict) -> None:
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = checkpoint["model"][name] * float("nan")


def _drop_tensor(checkpoint: dict) -> None:
    checkpoint["model"].pop(next(iter(checkpoint["model"])))


def _bad_lr(checkpoint: dict) -> None:
    checkpoint["config"]["train"]["lr"] = "fast"


def _edit_png(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    """A function that rewrites a palette PNG with ``change`` applied to its indices."""

    def edit(png: Path) -> None:
        image = Image.open(png)
        changed = Image.fromarray(change(np.array(image)).astype(np.uint8))
        changed.putpalette(image.getpalette())
        changed.save(png)

    return edit


def _paint_a_class_9(array: np.ndarray) -> np.ndarray:
    """The pixels of the first class shown (not void) become class 9 (the shapes have 3)."""
    shown = next(value for value in np.unique(array) if 0 < value < 255)
    return np.where(array == shown, 9, array)


def _shapes_without_objects(world: World, tmp: Path) -> Path:
    """A shapes copy whose val images hold no object (all-background PNGs)."""
    root = copy_shapes(world, tmp)
    ids = (voc_dir(root) / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for folder in ("SegmentationObject", "SegmentationClass"):
        for image_id in ids:
            _edit_png(np.zeros_like)(voc_dir(root) / folder / f"{image_id}.png")
    return root


def _shapes_with_empty_split(world: World, tmp: Path) -> Path:
    root = copy_shapes(world, tmp)
    (voc_dir(root) / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    return root


def _sbd_mat_without(world: World, tmp: Path, field: str) -> Path:
    """A copy of the SBD fixture whose first val image's GTinst lacks ``field``."""
    root = Path(shutil.copytree(world.sbd, tmp / "benchmark_RELEASE"))
    image_id = (root / "dataset" / "val.txt").read_text().split()[0]
    mat_path = root / "dataset" / "inst" / f"{image_id}.mat"
    gt = loadmat(mat_path, squeeze_me=True, struct_as_record=False)["GTinst"]
    fields = {name: getattr(gt, name) for name in gt._fieldnames if name != field}
    savemat(mat_path, {"GTinst": fields})
    return root


def _sbd_mat_garbage(world: World, tmp: Path) -> Path:
    root = Path(shutil.copytree(world.sbd, tmp / "benchmark_RELEASE"))
    image_id = (root / "dataset" / "val.txt").read_text().split()[0]
    (root / "dataset" / "inst" / f"{image_id}.mat").write_bytes(b"not a mat file")
    return root


def _folder_with(tmp: Path, name: str, text: str = "mine") -> Path:
    folder = tmp / "folder"
    folder.mkdir()
    (folder / name).write_text(text)
    return folder


class _Server:
    """Serves ``folder`` on 127.0.0.1 (404 for anything else)."""

    def __init__(self, folder: Path) -> None:
        handler = lambda *a, **k: _QuietHandler(*a, directory=str(folder), **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output quiet
        pass


def _served(tmp: Path) -> str:
    served = tmp / "served"
    served.mkdir()
    (served / "VOCtrainval_11-May-2012.tar").write_bytes(b"these bytes are not VOC" * 100)
    return _Server(served).url


# ----------------------------------------------------------------------------- error cases

# kind -> (world, case folder) -> (argv, fragments the one error line must contain)
Case = Callable[[World, Path], tuple[list[str], tuple[str, ...]]]


def with_setting(setting: str, fragments: tuple[str, ...]) -> Case:
    """The case of a one-step training run with ``--set setting``."""
    return lambda w, t: (train_argv(t / "run", w.shapes, "--set", setting), fragments)


CLI_ERRORS: dict[str, Case] = {
    # checkpoints given to predict
    "checkpoint-missing": lambda w, t: (
        predict_argv(t / "none.pt", w.shapes, t / "p.json"),
        ("none.pt", "python -m mnc_teach train")),
    "checkpoint-truncated": lambda w, t: (
        predict_argv(_copy_and(w.checkpoint, t, _truncate), w.shapes, t / "p.json"),
        ("cannot read checkpoint", "copy.pt", "corrupt")),
    "checkpoint-random-bytes": lambda w, t: (
        predict_argv(_write(t / "random.pt", os.urandom(4096)), w.shapes, t / "p.json"),
        ("cannot read checkpoint", "random.pt")),
    "checkpoint-empty-file": lambda w, t: (
        predict_argv(_write(t / "empty.pt", b""), w.shapes, t / "p.json"),
        ("cannot read checkpoint", "empty.pt")),
    "checkpoint-pickle-that-runs-code": lambda w, t: (
        predict_argv(_code_pickle(w, t), w.shapes, t / "p.json"),
        ("cannot read checkpoint", "evil.pt")),
    "checkpoint-bare-state-dict": lambda w, t: (
        predict_argv(edited_checkpoint(w, t, lambda c: c["model"]), w.shapes, t / "p.json"),
        ("edited.pt", "only model weights", "load_state_dict")),
    "checkpoint-a-list": lambda w, t: (
        predict_argv(edited_checkpoint(w, t, lambda c: [1, 2]), w.shapes, t / "p.json"),
        ("edited.pt", "holds a list", "python -m mnc_teach train")),
    "checkpoint-without-config": lambda w, t: (
        predict_argv(edited_checkpoint(w, t, lambda c: c.pop("config") and None), w.shapes,
                     t / "p.json"),
        ("edited.pt", "without config")),
    "checkpoint-config-not-a-dict": lambda w, t: (
        predict_argv(edited_checkpoint(w, t, lambda c: c.update(config="shapes-cpu")), w.shapes,
                     t / "p.json"),
        ("edited.pt", "invalid config", "expected a dict")),
    "checkpoint-config-wrong-type": lambda w, t: (
        predict_argv(edited_checkpoint(w, t, _bad_lr), w.shapes, t / "p.json"),
        ("edited.pt", "train.lr is 'fast'")),
    "checkpoint-nan-weights": lambda w, t: (
        predict_argv(edited_checkpoint(w, t, _nan_weights), w.shapes, t / "p.json"),
        ("edited.pt", "not finite", "lower train.lr")),
    "checkpoint-other-architecture": lambda w, t: (
        predict_argv(edited_checkpoint(w, t, _drop_tensor), w.shapes, t / "p.json"),
        ("edited.pt", "do not fit the model")),
    "checkpoint-is-a-folder": lambda w, t: (
        predict_argv(w.checkpoint.parent, w.shapes, t / "p.json"),
        ("is a folder", "checkpoint.pt")),
    # predict's other arguments
    "predict-out-is-the-checkpoint": lambda w, t: (
        predict_argv(_copy_and(w.checkpoint, t), w.shapes, t / "copy.pt"),
        ("--out", "is the --checkpoint input")),
    "predict-out-is-the-checkpoint-by-another-path": lambda w, t: (
        predict_argv(_copy_and(w.checkpoint, t), w.shapes, t / "sub" / ".." / "copy.pt"),
        ("is the --checkpoint input",)),
    "predict-out-is-a-folder": lambda w, t: (
        predict_argv(w.checkpoint, w.shapes, t), ("--out", "is a folder", "predictions.json")),
    "predict-out-inside-a-file": lambda w, t: (
        predict_argv(w.checkpoint, w.shapes, _write(t / "f", b"x") / "p.json"),
        ("is a file, not a folder",)),
    "predict-dataset-of-other-classes": lambda w, t: (
        predict_argv(w.checkpoint, w.voc, t / "p.json"),
        ("predicts 3 classes", "has 20", "right dataset")),
    "predict-dataset-missing": lambda w, t: (
        predict_argv(w.checkpoint, t / "nowhere", t / "p.json"),
        ("no PASCAL VOC 2012 folder", "nowhere", "download voc2012")),
    "predict-split-missing": lambda w, t: (
        predict_argv(w.checkpoint, w.shapes, t / "p.json", "--split", "nosuch"),
        ("nosuch",)),
    "predict-image-missing": lambda w, t: (
        predict_argv(w.checkpoint, shapes_with(w, t, "JPEGImages", Path.unlink), t / "p.json"),
        (".jpg",)),
    "predict-image-truncated": lambda w, t: (
        predict_argv(w.checkpoint, shapes_with(w, t, "JPEGImages", _truncate), t / "p.json"),
        (".jpg",)),
    # predictions given to evaluate
    "predictions-missing": lambda w, t: (
        evaluate_argv(w.shapes, t / "none.json"), ("none.json",)),
    "predictions-not-json": lambda w, t: (
        evaluate_argv(w.shapes, _write(t / "p.json", b"{not json")), ("p.json",)),
    "predictions-not-a-list": lambda w, t: (
        evaluate_argv(w.shapes, _write(t / "p.json", b'{"a": 1}')), ("p.json",)),
    "predictions-unknown-image": lambda w, t: (
        evaluate_argv(w.shapes, edited_predictions(w, t, lambda r: r[0].update(image_id="x9"))),
        ("edited.json", "x9")),
    "predictions-category-out-of-range": lambda w, t: (
        evaluate_argv(w.shapes, edited_predictions(w, t, lambda r: r[0].update(category_id=7))),
        ("edited.json", "entry 0")),
    "predictions-score-not-a-number": lambda w, t: (
        evaluate_argv(w.shapes, edited_predictions(w, t, lambda r: r[0].update(score="high"))),
        ("edited.json", "entry 0")),
    "predictions-without-segmentation": lambda w, t: (
        evaluate_argv(w.shapes, edited_predictions(w, t, lambda r: r[0].pop("segmentation")
                                                   and None)),
        ("edited.json", "entry 0")),
    "predictions-mask-of-another-size": lambda w, t: (
        evaluate_argv(w.shapes, edited_predictions(w, t, lambda r: r[0].update(
            segmentation=encode_mask(torch.ones(8, 8, dtype=torch.uint8))))),
        ("edited.json", "entry 0")),
    # evaluate's other arguments and data
    "evaluate-json-is-the-predictions": lambda w, t: (
        evaluate_argv(w.shapes, p := _copy_and(w.predictions, t), "--json", str(p)),
        ("--json", "is the --predictions input")),
    "evaluate-json-is-a-folder": lambda w, t: (
        evaluate_argv(w.shapes, w.predictions, "--json", str(t)), ("--json", "is a folder")),
    "evaluate-split-without-objects": lambda w, t: (
        evaluate_argv(_shapes_without_objects(w, t), w.predictions), ("no ground-truth",)),
    "evaluate-empty-split": lambda w, t: (
        evaluate_argv(_shapes_with_empty_split(w, t), w.predictions), ("val.txt",)),
    "evaluate-sbd-format-on-voc-data": lambda w, t: (
        evaluate_argv(w.shapes, w.predictions, "--format", "sbd"),
        ("no SBD folder", "download sbd")),
    "annotation-png-missing": lambda w, t: (
        evaluate_argv(shapes_with(w, t, "SegmentationObject", Path.unlink), w.predictions),
        (".png",)),
    "annotation-png-of-another-size": lambda w, t: (
        evaluate_argv(shapes_with(w, t, "SegmentationObject", _edit_png(lambda a: a[:32])),
                      w.predictions), (".png",)),
    "annotation-png-unknown-class": lambda w, t: (
        evaluate_argv(shapes_with(w, t, "SegmentationClass", _edit_png(_paint_a_class_9)),
                      w.predictions), (".png",)),
    "sbd-mat-without-segmentation": lambda w, t: (
        evaluate_argv(_sbd_mat_without(w, t, "Segmentation"), _none(t), "--format", "sbd"),
        (".mat", "Segmentation", "download sbd")),
    "sbd-mat-without-categories": lambda w, t: (
        evaluate_argv(_sbd_mat_without(w, t, "Categories"), _none(t), "--format", "sbd"),
        (".mat", "Categories", "download sbd")),
    "sbd-mat-garbage": lambda w, t: (
        evaluate_argv(_sbd_mat_garbage(w, t), _none(t), "--format", "sbd"),
        (".mat",)),
    # train
    "train-steps-negative": lambda w, t: (
        train_argv(t / "run", w.shapes, "--steps", "-5"), ("--steps -5", "train.max_steps")),
    "train-steps-zero": lambda w, t: (
        train_argv(t / "run", w.shapes, "--steps", "0"), ("--steps 0", ">= 1")),
    "train-no-anchor-scales": with_setting(
        "rpn.anchor_scales=()", ("rpn.anchor_scales", "one or more values > 0")),
    "train-unknown-setting": with_setting(
        "train.speed=1", ("train.speed=1", "mnc_teach/config.py")),
    "train-setting-of-wrong-type": with_setting("train.lr=fast", ("train.lr", "float")),
    "train-unknown-optimizer": with_setting(
        "train.optimizer=adam", ("train.optimizer", "sgd or adamw")),
    "train-negative-lr": with_setting("train.lr=-0.1", ("train.lr", "> 0")),
    "train-iou-bands-crossed": with_setting(
        "rpn.negative_iou=0.8", ("rpn.negative_iou", "rpn.positive_iou")),
    "train-batch-larger-than-the-data": with_setting(
        "train.images_per_batch=20", ("fewer than one step's",)),
    "train-out-holds-a-history-json": lambda w, t: (
        train_argv(_folder_with(t, "history.json"), w.shapes),
        ("history.json exists", "--overwrite")),
    "train-out-holds-a-checkpoint": lambda w, t: (
        train_argv(_folder_with(t, "checkpoint.pt"), w.shapes), ("checkpoint.pt exists",)),
    "train-out-is-a-file": lambda w, t: (
        train_argv(_write(t / "out", b"mine"), w.shapes), ("is a file", "--out")),
    "train-resume-without-checkpoint": lambda w, t: (
        ["train", "--out", str(t / "run"), "--resume"], ("no checkpoint", "checkpoint.pt")),
    "train-resume-with-other-settings": lambda w, t: (
        ["train", "--out", str(_copy_run(w, t)), "--resume", "--set", "train.lr=0.5"],
        ("other settings (train.lr)", "new folder")),
    "train-resume-nan-checkpoint": lambda w, t: (
        ["train", "--out", str(_nan_run(w, t)), "--resume", "--device", "cpu"],
        ("not finite",)),
    "train-data-root-is-a-file": lambda w, t: (
        train_argv(t / "run", _write(t / "data", b"x")), ("is a file", "--data-root")),
    "train-data-root-holds-other-files": lambda w, t: (
        train_argv(t / "run", _folder_with(t, "notes.txt")),
        ("holds files but no shapes dataset", "--data-root")),
    "train-shapes-preset-on-voc": lambda w, t: (
        train_argv(t / "run", voc_dir(w.voc)), ("20 classes", "--preset")),
    "train-voc-preset-without-data": lambda w, t: (
        train_argv(t / "run", t / "nowhere", "--preset", "voc-vgg16-paper"),
        ("nowhere", "download sbd")),
    # backbone weights (a VGG-16 preset on the shapes data: the model is built, then it fails)
    "backbone-weights-file-missing": lambda w, t: (
        vgg16_argv(t, w, t / "nope.pth"), ("nope.pth", "does not exist", "weights_path=None")),
    "backbone-weights-file-corrupt": lambda w, t: (
        vgg16_argv(t, w, _write(t / "vgg16.pth", b"junk")),
        ("cannot read backbone weights file", "vgg16.pth")),
    "backbone-weights-of-another-network": lambda w, t: (
        vgg16_argv(t, w, _resnet18_weights(t)), ("resnet18.pth", "do not fit", "vgg16")),
    "train-on-cuda-without-a-gpu": lambda w, t: (
        [*train_argv(t / "run", w.shapes), "--device", "cuda"], ("CUDA", "use device 'cpu'")),
    # shapes and download
    "shapes-root-is-a-file": lambda w, t: (
        ["shapes", "--root", str(_write(t / "f", b"x"))], ("is a file",)),
    "shapes-other-settings-without-overwrite": lambda w, t: (
        ["shapes", "--root", str(copy_shapes(w, t)), "--train", "5", "--val", "4",
         "--image-size", "64"], ("--overwrite",)),
    "download-root-is-a-file": lambda w, t: (
        ["download", "voc2012", "--root", str(_write(t / "f", b"x"))], ("is a file", "--root")),
    "download-offline": lambda w, t: (
        ["download", "voc2012", "--root", str(t / "data"), "--url", "http://127.0.0.1:9/v.tar"],
        ("127.0.0.1:9",)),
    "download-not-on-the-mirror": lambda w, t: (
        ["download", "sbd", "--root", str(t / "data"), "--url", _served(t)], ("404",)),
    "download-wrong-bytes": lambda w, t: (
        ["download", "voc2012", "--root", str(t / "data"), "--url", _served(t)], ("md5",)),
    # the instructor's assignments
    "assignments-build-into-a-folder-with-files": lambda w, t: (
        ["assignments", "build", "--out", str(_folder_with(t, "notes.txt"))],
        ("already holds files", "--force")),
    "assignments-build-out-is-a-file": lambda w, t: (
        ["assignments", "build", "--out", str(_write(t / "course", b"x"))], ("is a file",)),
    "assignments-grade-a-folder-that-is-no-course": lambda w, t: (
        ["assignments", "grade", str(_folder_with(t, "notes.txt"))],
        ("no nbgrader_config.py", "assignments build --out")),
    "assignments-grade-without-submissions": lambda w, t: (
        ["assignments", "grade", str(_folder_with(t, "nbgrader_config.py", "c = 1"))],
        ("no submissions", "nbgrader collect mnc")),
    "write-fails-with-an-os-error": lambda w, t: (
        evaluate_argv(w.shapes, w.predictions, "--json", "/proc/mnc_teach.json"),
        ("/proc",)),
}


def vgg16_argv(tmp: Path, world: World, weights: Path) -> list[str]:
    """train the VGG-16 paper preset on the shapes data with backbone weights from a file."""
    settings = ["data.dataset=shapes", "data.format=voc", "num_classes=3",
                "data.train_split=train", "data.val_split=val", f"backbone.weights_path={weights}"]
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return [*train_argv(tmp / "run", world.shapes, "--preset", "voc-vgg16-paper"), *sets]


def _resnet18_weights(tmp: Path) -> Path:
    import torchvision

    path = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def _none(tmp: Path) -> Path:
    """An empty predictions file: evaluate then reads the ground truth without complaint."""
    return _write(tmp / "none.json", b"[]")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _copy_and(path: Path, tmp: Path, change: Callable[[Path], None] | None = None) -> Path:
    copy = Path(shutil.copy(path, tmp / f"copy{path.suffix}"))
    if change is not None:
        change(copy)
    return copy


def _copy_run(world: World, tmp: Path) -> Path:
    return Path(shutil.copytree(world.checkpoint.parent, tmp / "run"))


def _nan_run(world: World, tmp: Path) -> Path:
    run = _copy_run(world, tmp)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    _nan_weights(checkpoint)
    torch.save(checkpoint, run / "checkpoint.pt")
    return run


# The kinds whose error keeps a file on purpose (in this folder of the case's own).
KEEPS_FILES = {"download-wrong-bytes": "data"}  # the bad archive, renamed *.corrupt, to inspect


@pytest.mark.parametrize("kind", list(CLI_ERRORS))
def test_a_bad_input_gives_one_clear_line_and_changes_nothing(
    kind: str, world: World, tmp_path: Path, capsys, monkeypatch
) -> None:
    if kind == "train-on-cuda-without-a-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    argv, fragments = CLI_ERRORS[kind](world, case_dir)
    monkeypatch.chdir(case_dir)  # where a code-running pickle would write
    before = snapshot(world.root, case_dir)
    capsys.readouterr()
    assert main(argv) == 1, kind
    err = capsys.readouterr().err
    assert err.count("error: ") == 1, err
    line = err[err.index("error: "):]
    assert line.endswith("\n") and line.count("\n") == 1, f"not one line: {line!r}"
    for fragment in fragments:
        assert fragment in line, f"{kind}: {fragment!r} not in {line!r}"
    after = snapshot(world.root, case_dir)
    assert {path: after.get(path) for path in before} == before, "an input changed"
    new = sorted(set(after) - set(before))
    allowed = case_dir / KEEPS_FILES.get(kind, "nothing")
    assert all(Path(path).is_relative_to(allowed) for path in new), f"wrote {new}"


# ----------------------------------------------------------------------------- handled cases

HANDLED_KINDS: list[str] = []


def handled(test: Callable) -> Callable:
    """Register a test of a fault whose outcome is correct handling."""
    HANDLED_KINDS.append(test.__name__.removeprefix("test_"))
    return test


@handled
def test_a_diverging_run_stops_before_it_poisons_a_checkpoint(world: World, tmp_path) -> None:
    """lr 1e6: the process used to segfault after writing NaN weights. In a subprocess, so a
    crash cannot take the test run with it."""
    out = tmp_path / "run"
    before = snapshot(world.shapes)
    argv = [sys.executable, "-m", "mnc_teach", *train_argv(out, world.shapes)]
    argv[argv.index("--steps") + 1] = "8"
    argv += ["--set", "train.lr=1e6", "--set", "train.checkpoint_every=1"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    line = done.stderr[done.stderr.index("error: "):].strip()
    assert "not finite" in line or "is inf" in line or "is nan" in line, line
    assert "the last checkpoint written" in line and "Lower train.lr" in line
    kept = load_checkpoint(out / "checkpoint.pt")  # checks every weight is finite
    assert f"(step {kept['step']}, finite weights), is kept" in line and kept["step"] >= 1
    model, cfg = load_model(out / "checkpoint.pt", device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    results = predict(model, VOCInstanceSegmentation(world.shapes, split="val"), progress=False)
    assert isinstance(results, list)
    assert snapshot(world.shapes) == before


@handled
def test_a_diverging_run_whose_boxes_overflow_first_says_its_checkpoint_diverged(
    world: World, tmp_path
) -> None:
    """SGD at lr 1e6 without clipping: the weights stay finite but so large that the next
    step's boxes overflow. The guard before roi_align stops it; the message says the kept
    checkpoint's loss had diverged already."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "mnc_teach", *train_argv(out, world.shapes)]
    argv[argv.index("--steps") + 1] = "8"
    argv += ["--set", "train.lr=1e6", "--set", "train.optimizer=sgd",
             "--set", "train.grad_clip_norm=None", "--set", "train.checkpoint_every=1"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    line = done.stderr[done.stderr.index("error: "):].strip()
    assert "boxes are not finite" in line and "had already diverged" in line, line
    assert "warning: step" in done.stdout and "the loss diverged" in done.stdout
    assert load_checkpoint(out / "checkpoint.pt")["step"] >= 1  # finite weights


class _GrowingLoss(FakeMNC):
    """A loss that grows 100 times per step while staying finite."""

    def forward(self, images, targets=None, detect=None):
        detections, losses = super().forward(images, targets, detect)
        if self.training:
            losses = {name: value * 100.0 ** self.calls for name, value in losses.items()}
        return detections, losses


@handled
def test_a_loss_that_explodes_but_stays_finite_is_called_diverged(
    world: World, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(loop_module, "build_mnc", lambda cfg: _GrowingLoss(noise=False))
    argv = train_argv(tmp_path / "run", world.shapes)
    argv[argv.index("--steps") + 1] = "6"
    assert main([*argv, "--set", "train.log_every=1"]) == 1
    captured = capsys.readouterr()
    warning = re.search(r"warning: step (\d+): the loss diverged", captured.out)
    assert warning is not None and int(warning[1]) < 6, captured.out
    line = captured.err[captured.err.index("error: "):]
    assert "the loss diverged" in line and "lower train.lr" in line and "done" not in line
    assert line.count("\n") == 1


@handled
def test_a_non_finite_gradient_with_a_finite_loss_stops_training(tmp_path) -> None:
    model = fake_model(noise=False)
    model.scale.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(FloatingPointError, match=r"step 1: the gradient norm is (inf|nan)"):
        train(small_config(), tmp_path, callbacks=(), model=model, datasets=DATASETS,
              device="cpu")
    assert not (tmp_path / "checkpoint.pt").exists()


@handled
def test_an_update_that_makes_weights_nan_stops_training_and_keeps_the_checkpoint(
    tmp_path, monkeypatch
) -> None:
    steps = []
    real_step = torch.optim.AdamW.step

    def poisoning_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 5:  # after the step-4 checkpoint
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    with pytest.raises(FloatingPointError, match=r"step 5: the update made 1 parameter tensors "
                       r"non-finite \(first: features.weight\).*\(step 4, finite weights\)"):
        train(small_config(), tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS,
              device="cpu")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


@handled
def test_nan_boxes_never_reach_a_compiled_op() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [float("nan"), 0.0, 5.0, 5.0]])
    scores = torch.tensor([0.9, 0.8])
    with pytest.raises(FloatingPointError, match="nms: 1 of 2 boxes are not finite"):
        nms(boxes, scores, 0.5)
    with pytest.raises(FloatingPointError, match="batched_nms: 1 of 2 boxes"):
        batched_nms(boxes, scores, torch.tensor([1, 1]), iou_threshold=0.5)
    masks = torch.zeros(1, 16, 16, dtype=torch.uint8)
    with pytest.raises(FloatingPointError, match="mask targets: 1 of 2 boxes"):
        mask_targets(masks, torch.tensor([0, 0]), boxes, mask_size=7)


@handled
def test_non_finite_boxes_to_the_sparse_roi_warp_do_not_crash_it() -> None:
    """The warp builds sparse indices from the boxes: NaN, inf or huge boxes must stay in range
    (an out-of-range sparse index can crash the process) and leave the other RoIs intact."""
    features = torch.randn(1, 8, 10, 12, requires_grad=True)
    for bad in (float("nan"), float("inf"), -float("inf"), 1e30):
        rois = torch.tensor([[0, 1.0, 2.0, 30.0, 40.0], [0, bad, 2.0, 5.0, bad]],
                            requires_grad=True)
        for pool in (1, 2):
            reference = roi_warp_pool(features, rois[:1], output_size=3, spatial_scale=0.25,
                                      pool=pool)
            out = roi_warp_pool(features, rois, output_size=3, spatial_scale=0.25, pool=pool)
            out.sum().backward()
            assert torch.equal(out[:1], reference) and rois.grad is not None


@handled
def test_an_image_with_nan_pixels_is_refused_at_inference(world: World) -> None:
    model, _ = load_model(world.checkpoint, device="cpu")
    image = torch.full((3, 64, 64), float("nan"))
    with torch.no_grad(), pytest.raises(ValueError, match=r"image 0 contains NaN"):
        model([image])


@handled
def test_the_data_root_may_be_the_voc2012_folder_itself(world, tmp_path, capsys) -> None:
    """--data-root at shapes/VOCdevkit/VOC2012 trains on that dataset; nothing is generated."""
    before = snapshot(world.shapes)
    assert main(train_argv(tmp_path / "run", voc_dir(world.shapes))) == 0
    assert "generating" not in capsys.readouterr().out
    assert snapshot(world.shapes) == before


@handled
def test_an_empty_data_root_gets_the_shapes_dataset(tmp_path, capsys, monkeypatch) -> None:
    made = []
    monkeypatch.setattr("mnc_teach.engine.batches.generate_shapes",
                        lambda root, seed: made.append(root))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):  # the stub generated nothing
        loop_module.build_datasets(_with_root(tmp_path / "empty"))
    assert made == [tmp_path / "empty"] and "generating it" in capsys.readouterr().out


def _with_root(root: Path):
    from mnc_teach.config import override

    return override(shapes_cpu(), "data.root", str(root))


@handled
def test_overwrite_replaces_a_users_history_when_asked(world, tmp_path) -> None:
    out = _folder_with(tmp_path, "history.json", "old")
    assert main([*train_argv(out, world.shapes), "--overwrite"]) == 0
    assert json.loads((out / "history.json").read_text())["steps"][0]["step"] == 1


@handled
def test_a_checkpoint_path_with_a_tilde_is_expanded(world, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(world.checkpoint.parent))
    assert load_checkpoint("~/checkpoint.pt")["step"] == 2


@handled
def test_a_typo_in_a_command_gets_the_usage_and_the_choices(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["trian", "--out", "x"])
    assert exit_.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


@handled
def test_a_grayscale_jpeg_and_a_split_list_with_windows_line_ends_are_read(world, tmp_path):
    root = copy_shapes(world, tmp_path)
    image_id = first_val_id(root)
    jpeg = voc_dir(root) / "JPEGImages" / f"{image_id}.jpg"
    Image.open(jpeg).convert("L").save(jpeg)
    split = voc_dir(root) / "ImageSets" / "Segmentation" / "val.txt"
    split.write_bytes(split.read_bytes().replace(b"\n", b"\r\n"))
    dataset = VOCInstanceSegmentation(root, split="val")
    image, _ = dataset[0]
    assert dataset.image_ids[0] == image_id and image.shape == (3, 64, 64)
    assert torch.equal(image[0], image[1])  # gray: the three channels are equal


# ----------------------------------------------------------------------------- bad targets (API)

def _target(**change) -> dict:
    masks = torch.zeros(1, 32, 32, dtype=torch.uint8)
    masks[0, 8:16, 4:12] = 1
    target = {"boxes": torch.tensor([[4.0, 8.0, 12.0, 16.0]]), "labels": torch.tensor([1]),
              "masks": masks, "image_id": "img7"}
    return target | change


API_ERRORS: dict[str, tuple[Callable[[], None], tuple[str, ...]]] = {
    "target-box-outside-the-image": (
        lambda: check_targets([torch.rand(3, 32, 32)],
                              [_target(boxes=torch.tensor([[4.0, 8.0, 40.0, 16.0]]))], 3),
        ("img7", "outside")),
    "target-box-not-its-mask": (
        lambda: check_targets([torch.rand(3, 32, 32)],
                              [_target(boxes=torch.tensor([[20.0, 20.0, 30.0, 30.0]]))], 3),
        ("img7", "mask")),
    "image-in-0-255": (
        lambda: check_targets([torch.rand(3, 32, 32) * 255], [_target()], 3),
        ("255",)),
    "target-box-nan": (
        lambda: check_targets([torch.rand(3, 32, 32)],
                              [_target(boxes=torch.tensor([[float("nan"), 8.0, 12.0, 16.0]]))],
                              3),
        ("img7", "NaN")),
    "target-label-out-of-range": (
        lambda: check_targets([torch.rand(3, 32, 32)], [_target(labels=torch.tensor([4]))], 3),
        ("img7", "labels must be in 1..3")),
}


@pytest.mark.parametrize("kind", list(API_ERRORS))
def test_a_bad_target_is_refused_with_a_clear_message(kind: str) -> None:
    call, fragments = API_ERRORS[kind]
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{kind}: {fragment!r} not in {message!r}"


def test_the_suite_has_at_least_50_kinds() -> None:
    kinds = [*CLI_ERRORS, *API_ERRORS, *HANDLED_KINDS]
    assert len(kinds) == len(set(kinds)) >= 50


if __name__ == "__main__":
    print(f"error (CLI, one line): {len(CLI_ERRORS)}")
    print(f"error (API, one message): {len(API_ERRORS)}")
    print(f"handled: {len(HANDLED_KINDS)}")
    print(f"total: {len(CLI_ERRORS) + len(API_ERRORS) + len(HANDLED_KINDS)}")
