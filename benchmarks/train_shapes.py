"""Train the shapes-cpu preset, predict on val, evaluate: wall times, images/s and mAP^r.

    python benchmarks/train_shapes.py [--out DIR] [--steps N] [--data-root DIR] [--threads T]

The shapes dataset is generated in ``--data-root`` when it is missing (1000 train / 200 val
images by default, as the course). Training uses ``mnc_teach.engine.loop.train`` with the preset
as it is, except: ``--steps N`` shortens the schedule, scaling the learning-rate drops and the
warm-up by ``N / max_steps`` so that a short run is a compressed version of the full one;
validation losses are skipped (they do not change the weights) so that the training time is
the training alone. The run is written to ``--out`` (replacing an earlier one there). Then
``mnc_teach.engine.inference.predict`` runs the model on every val image and
``evaluate_predictions`` scores the results. Prints wall times, images/s and mAP^r at
0.5 / 0.7 (area under the PR curve and VOC07 11-point). Nothing is asserted. At full length
it takes a long time on a CPU (the preset's steps x images per step); the CPU is best left
otherwise idle.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnc_teach.config import get_preset, override, shortened  # noqa: E402
from mnc_teach.data import generate_shapes  # noqa: E402
from mnc_teach.engine.batches import build_datasets  # noqa: E402
from mnc_teach.engine.checkpoint import load_model  # noqa: E402
from mnc_teach.engine.inference import predict  # noqa: E402
from mnc_teach.engine.loop import train
from mnc_teach.evaluation.report import evaluate_predictions  # noqa: E402

PRESET = "shapes-cpu"
REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL = 1000, 200  # the course's shapes dataset (notebook 00)


def percent(value: float | None) -> str:
    """AP in percent; evaluate_predictions gives None when no class has ground truth."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def shapes_config(
    data_root: str, *, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL, steps: int | None = None
):
    """The preset on ``data_root`` (the dataset is generated there when missing), its schedule
    shortened to ``steps`` when given (``config.shortened``). benchmarks/svd_shapes.py uses it
    too."""
    generate_shapes(data_root, seed=0, num_train=num_train, num_val=num_val, progress=False)
    cfg = override(get_preset(PRESET), "data.root", data_root)
    return cfg if steps is None else shortened(cfg, steps)


def train_and_score(cfg, out: str | Path, *, device: str | None = None) -> dict:
    """Train ``cfg`` into ``out`` (replacing a run there), predict its val split, score it.

    Returns wall times (``train_s``, ``predict_s``), ``steps``, ``train_images``,
    ``detections`` and ``report`` (:func:`evaluate_predictions`' dict: ``mAP_r@0.5`` ...).
    benchmarks/detach_ablation.py uses it too."""
    train_set, val_set = build_datasets(cfg)
    start = time.perf_counter()
    history = train(cfg, out, datasets=(train_set, None), device=device, overwrite=True)
    train_s = time.perf_counter() - start
    steps = history.steps[-1]["step"] if history.steps else 0
    t = cfg.train
    model, _ = load_model(Path(out) / "checkpoint.pt", device=device)
    start = time.perf_counter()
    results = predict(model, val_set, progress=False)
    predict_s = time.perf_counter() - start
    ground_truth = [val_set.load_target(i) for i in range(len(val_set))]
    report = evaluate_predictions(results, ground_truth, val_set.class_names)
    return {
        "train_s": train_s, "predict_s": predict_s, "steps": steps,
        "train_images": steps * t.images_per_batch * t.accumulate,
        "detections": len(results), "report": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=str(REPO / "runs" / "benchmark_shapes"), help="run folder (replaced)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="optimiser steps (default: the preset's)"
    )
    parser.add_argument(
        "--data-root", default=str(REPO / "data" / "shapes"), help="shapes dataset folder"
    )
    parser.add_argument(
        "--num-train", type=int, default=NUM_TRAIN, help="train images when generating"
    )
    parser.add_argument("--num-val", type=int, default=NUM_VAL, help="val images when generating")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    cfg = shapes_config(
        args.data_root, num_train=args.num_train, num_val=args.num_val, steps=args.steps
    )
    t = cfg.train
    train_set, val_set = build_datasets(cfg)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"device {args.device or 'default'}"
    )
    print(
        f"{PRESET}: {len(train_set)} train / {len(val_set)} val images; {t.max_steps} steps of "
        f"{t.images_per_batch} x {t.accumulate} images, lr {t.lr:g} x {t.gamma:g} at {t.lr_steps}, "
        f"warm-up {t.warmup_steps}"
    )

    scores = train_and_score(cfg, args.out, device=args.device)
    print(
        f"\ntrain   {scores['train_s']:8.1f} s  {scores['steps']} steps, "
        f"{scores['train_images']} images, "
        f"{scores['train_images'] / scores['train_s']:.2f} images/s"
    )
    print(
        f"predict {scores['predict_s']:8.1f} s  {len(val_set)} images, "
        f"{len(val_set) / scores['predict_s']:.2f} images/s, {scores['detections']} detections"
    )
    report = scores["report"]
    for threshold in ("0.5", "0.7"):
        aps = report[f"mAP_r@{threshold}"]
        print(
            f"mAP^r@{threshold}: {percent(aps['area'])} (area)  "
            f"{percent(aps['voc07'])} (VOC07 11-point)"
        )
    print(report["table"])


if __name__ == "__main__":
    main()
