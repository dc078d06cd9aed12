"""The ``detach_boxes`` ablation on shapes: mAP^r of MNC trained end to end (the gradient of
stages 2-5 reaches the boxes, ``detach_boxes=False``, the paper) and with the boxes detached
(``True``, as torchvision and detectron2 do), over several seeds.

    python benchmarks/detach_ablation.py [--seeds 0 1 2] [--steps N] [--jobs 2]
                                         [--data-root DIR] [--out-dir DIR] [--results FILE]

    # a check with tiny settings (the figures need the full schedule):
    python benchmarks/detach_ablation.py --steps 2 --num-train 16 --num-val 4 --seeds 0 \\
        --data-root /tmp/ablation_data --out-dir /tmp/ablation_runs --results /tmp/ablation.json

Each (setting, seed) pair trains the shapes-cpu preset as ``benchmarks/train_shapes.py`` does
(``train.seed`` = the seed: the weights' initialisation, the images' order and every sampled
anchor and RoI; the dataset is the same), predicts the val split and scores it. ``--jobs``
runs that many pairs at once, each in its own process on one CPU thread (the preset's
``train.cpu_threads``). Every finished pair is added to ``--results`` (JSON, written atomically),
and pairs already there with the same preset and steps are not run again, so an interrupted
ablation continues where it stopped. Prints each pair, then per setting the mean, the sample
standard deviation and the range over the seeds. Nothing is asserted. Notebook 06 reads the
JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import platform
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_shapes import NUM_TRAIN, NUM_VAL, PRESET, REPO, shapes_config, train_and_score  # noqa: E402

from mnc_teach.config import override  # noqa: E402
from mnc_teach.fileio import write_text_atomically  # noqa: E402

SETTINGS = (False, True)  # detach_boxes: the paper's end to end first
METRICS = ("mAP_r@0.5", "mAP_r@0.7")  # area AP, as the course reports them


def run_pair(
    data_root: str, out_dir: str, detach: bool, seed: int, steps: int | None,
    num_train: int, num_val: int,
) -> dict:
    """Train and score one (detach_boxes, seed) pair; its record for the results file."""
    cfg = shapes_config(data_root, num_train=num_train, num_val=num_val, steps=steps)
    cfg = override(cfg, "detach_boxes", detach)
    cfg = override(cfg, "train.seed", seed)
    run_dir = Path(out_dir) / f"detach_{str(detach).lower()}_seed{seed}"
    scores = train_and_score(cfg, run_dir, device="cpu")
    record = {"detach_boxes": detach, "seed": seed, "steps": scores["steps"]}
    for metric in METRICS:
        record[metric] = scores["report"][metric]["area"]
        record[metric + " voc07"] = scores["report"][metric]["voc07"]
    record["train_s"] = round(scores["train_s"], 1)
    return record


def summary_lines(runs: list[dict]) -> list[str]:
    """Per setting: each metric's mean ± sample std and [min, max] over the seeds, in points."""
    lines = []
    for detach in SETTINGS:
        chosen = sorted((r for r in runs if r["detach_boxes"] is detach), key=lambda r: r["seed"])
        if not chosen:
            continue
        parts = []
        for metric in METRICS:
            values = [100 * r[metric] for r in chosen]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            parts.append(
                f"{metric} {statistics.mean(values):5.1f} ± {spread:.1f} "
                f"[{min(values):.1f}, {max(values):.1f}]"
            )
        seeds = ",".join(str(r["seed"]) for r in chosen)
        lines.append(f"detach_boxes={str(detach):<5}  seeds {seeds}:  " + "   ".join(parts))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--jobs", type=int, default=2, help="pairs trained at once")
    parser.add_argument("--data-root", default=str(REPO / "data" / "shapes"))
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=NUM_VAL)
    parser.add_argument("--out-dir", default=str(REPO / "runs" / "detach_ablation"))
    parser.add_argument(
        "--results", default=str(REPO / "benchmarks" / "results" / "detach_ablation.json")
    )
    args = parser.parse_args()

    cfg = shapes_config(
        args.data_root, num_train=args.num_train, num_val=args.num_val, steps=args.steps
    )  # generates the dataset once, before the workers start
    steps = cfg.train.max_steps
    results_path = Path(args.results)
    done: list[dict] = []
    if results_path.exists():
        previous = json.loads(results_path.read_text())
        if previous.get("preset") == PRESET and previous.get("steps") == steps:
            done = previous["runs"]
    todo = [
        (detach, seed) for detach in SETTINGS for seed in args.seeds
        if not any(r["detach_boxes"] is detach and r["seed"] == seed for r in done)
    ]
    command = "python benchmarks/detach_ablation.py " + " ".join(sys.argv[1:])
    print(f"{PRESET}, {steps} steps; {len(done)} pairs done before, {len(todo)} to run")

    def save() -> None:
        payload = {
            "command": command.strip(), "preset": PRESET, "steps": steps,
            "num_train": args.num_train, "num_val": args.num_val,
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs, no GPU",
            "torch": torch.__version__,
            "runs": sorted(done, key=lambda r: (r["detach_boxes"], r["seed"])),
        }
        write_text_atomically(results_path, json.dumps(payload, indent=1) + "\n")

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = {
            pool.submit(
                run_pair, args.data_root, args.out_dir, detach, seed, args.steps,
                args.num_train, args.num_val,
            ): (detach, seed)
            for detach, seed in todo
        }
        for future in as_completed(futures):
            record = future.result()
            done.append(record)
            save()
            print(
                f"detach_boxes={record['detach_boxes']!s:<5} seed {record['seed']}: "
                + "  ".join(f"{m} {100 * record[m]:.1f}" for m in METRICS)
                + f"  ({record['train_s']:.0f} s training)",
                flush=True,
            )
    if not todo:
        save()
    print("\nmean ± sample std [min, max] over the seeds, mAP^r in points (area AP):")
    print("\n".join(summary_lines(done)))
    print(f"results: {results_path}")


if __name__ == "__main__":
    main()
