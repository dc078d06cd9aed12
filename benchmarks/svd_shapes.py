"""The mAP^r change caused by the truncated SVD of fc6/fc7, on the shapes val split.

    python benchmarks/svd_shapes.py [--checkpoint PATH | --steps N] [--fc6-rank T6]
                                    [--fc7-rank T7] [--data-root DIR] [--out DIR]

    # a check with tiny settings (the figures need the full schedule, or a trained checkpoint):
    python benchmarks/svd_shapes.py --steps 2 --num-train 16 --num-val 4 \\
        --data-root /tmp/svd_shapes_data --out /tmp/svd_shapes_run

The model is a given checkpoint (``--checkpoint``, read with
``mnc_teach.engine.checkpoint.load_model``; its val split from ``--data-root`` or the
checkpoint's config), or the shapes-cpu preset trained here as ``benchmarks/train_shapes.py``
trains it (``mnc_teach.engine.loop.train``; ``--steps N`` compresses the schedule with
``config.shortened``). Its val split is predicted (``mnc_teach.engine.inference.predict``) and
scored (``evaluate_predictions``) once as it is and once after
``stage3_classify.compress_fc_layers``. The preset's fcs are 256-d (fc6: 64 x 7 x 7 = 3,136
-> 256, fc7: 256 -> 256), so the ranks default to compress_fc_layers' own: 64 and 16, the
fc width / 4 and / 16, as Fast R-CNN's 1024 and 256 are of VGG-16's 4096; the classifier's
parameter count is printed for both. Prints mAP^r at 0.5 / 0.7 (area under the PR curve and
VOC07 11-point) of both, the change in points, and each prediction's wall time (after one
untimed image). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_shapes import NUM_TRAIN, NUM_VAL, PRESET, REPO, percent, shapes_config  # noqa: E402

from mnc_teach.config import override  # noqa: E402
from mnc_teach.engine.batches import build_datasets  # noqa: E402
from mnc_teach.engine.checkpoint import load_model  # noqa: E402
from mnc_teach.engine.inference import predict, predict_images  # noqa: E402
from mnc_teach.engine.loop import train  # noqa: E402
from mnc_teach.evaluation.report import evaluate_predictions  # noqa: E402
from mnc_teach.stage3_classify import compress_fc_layers  # noqa: E402


def _change(before: float | None, after: float | None) -> str:
    return "n/a" if before is None or after is None else f"{100 * (after - before):+.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a trained model (skips training)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: preset)")
    parser.add_argument("--fc6-rank", type=int, default=None, help="SVD rank of fc6 (width / 4)")
    parser.add_argument("--fc7-rank", type=int, default=None, help="SVD rank of fc7 (width / 16)")
    parser.add_argument(
        "--data-root", default=None,
        help="the dataset folder (default: data/shapes; with --checkpoint: its config's)",
    )
    parser.add_argument(
        "--num-train", type=int, default=NUM_TRAIN, help="train images when generating"
    )
    parser.add_argument("--num-val", type=int, default=NUM_VAL, help="val images when generating")
    parser.add_argument(
        "--out", default=str(REPO / "runs" / "svd_shapes"), help="run folder (replaced)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    if args.checkpoint is not None:
        model, cfg = load_model(args.checkpoint, device=args.device)
        if args.data_root is not None:
            cfg = override(cfg, "data.root", args.data_root)
        _, val_set = build_datasets(cfg)
        print(f"checkpoint {args.checkpoint} ({cfg.preset}), {len(val_set)} val images")
    else:
        data_root = args.data_root or str(REPO / "data" / "shapes")
        cfg = shapes_config(
            data_root, num_train=args.num_train, num_val=args.num_val, steps=args.steps
        )
        train_set, val_set = build_datasets(cfg)
        print(f"{PRESET}: training {cfg.train.max_steps} steps on {len(train_set)} images")
        start = time.perf_counter()
        train(cfg, args.out, datasets=(train_set, None), device=args.device, overwrite=True)
        print(f"trained in {time.perf_counter() - start:.1f} s -> {args.out}")
        model, cfg = load_model(Path(args.out) / "checkpoint.pt", device=args.device)

    ground_truth = [val_set.load_target(i) for i in range(len(val_set))]
    rows = {}
    for compressed in (False, True):
        label = "as trained"
        if compressed:
            compress_fc_layers(model, fc6_rank=args.fc6_rank, fc7_rank=args.fc7_rank)
            pathway = model.classifier.mask_pathway
            label = f"SVD fc6 {pathway[0][0].out_features} / fc7 {pathway[2][0].out_features}"
        parameters = sum(p.numel() for p in model.classifier.parameters())
        predict_images(model, [val_set[0][0]])  # warm-up, untimed
        start = time.perf_counter()
        results = predict(model, val_set, progress=False)
        seconds = time.perf_counter() - start
        report = evaluate_predictions(results, ground_truth, val_set.class_names)
        rows[label] = (report, seconds, parameters)

    print(
        f"\n{'model':24s} {'classifier params':>17s} {'predict s':>9s} {'mAP^r@0.5':>10s} "
        f"{'@0.7':>6s} {'VOC07 @0.5':>10s} {'@0.7':>6s}"
    )
    for label, (report, seconds, parameters) in rows.items():
        aps = [report[f"mAP_r@{t}"][kind] for kind in ("area", "voc07") for t in ("0.5", "0.7")]
        print(
            f"{label:24s} {parameters:17,d} {seconds:9.1f} {percent(aps[0]):>10s} "
            f"{percent(aps[1]):>6s} {percent(aps[2]):>10s} {percent(aps[3]):>6s}"
        )
    (before, *_), (after, *_) = rows.values()
    changes = [
        _change(before[f"mAP_r@{t}"][kind], after[f"mAP_r@{t}"][kind])
        for kind in ("area", "voc07")
        for t in ("0.5", "0.7")
    ]
    print(
        f"{'change (points)':24s} {'':17s} {'':9s} {changes[0]:>10s} {changes[1]:>6s} "
        f"{changes[2]:>10s} {changes[3]:>6s}"
    )


if __name__ == "__main__":
    main()
