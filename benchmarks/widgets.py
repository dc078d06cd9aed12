"""How long the widgets take to update on shapes images (CPU), against the course's 1 s budget.

    python benchmarks/widgets.py                          # an untrained shapes-cpu model
    python benchmarks/widgets.py --checkpoint runs/06_cascade/main/checkpoint.pt

Each update is what a slider move or a click does in JupyterLab: recompute, draw, and encode
the figure as the PNG the page receives (the explorers' ``show_figure`` displays only inside a
kernel, so their PNG is encoded here; the dashboard and the run viewer encode theirs
themselves). The dashboard's gallery and the run viewer use a run of ``--run-steps`` steps
trained here first. Prints the median and worst of ``--repeats`` updates per control, and
their ratio to the budget (below 1 is within it).

Then the choices the widgets make for speed, each as a ratio (below 1: the choice is faster):
the gallery's images of one size predicted in one batch (``engine.inference.predict_images``)
against one at a time; the stage explorer's fixed margins against ``tight_layout``; and its
figure's PNG at the widgets' 80 dpi against 100 dpi.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnc_teach.cascade import build_mnc  # noqa: E402
from mnc_teach.config import get_preset, override, shortened  # noqa: E402
from mnc_teach.data import generate_shapes  # noqa: E402
from mnc_teach.engine.batches import build_datasets  # noqa: E402
from mnc_teach.engine.checkpoint import load_model  # noqa: E402
from mnc_teach.engine.inference import predict_images  # noqa: E402
from mnc_teach.engine.loop import train
from mnc_teach.engine.state import CHECKPOINT_NAME, HISTORY_NAME, TrainHistory  # noqa: E402
from mnc_teach.viz.explorer import draw_stage_view  # noqa: E402
from mnc_teach.widgets.dashboard import TrainingDashboard  # noqa: E402
from mnc_teach.widgets.explorers import ProposalViewer, StageExplorer  # noqa: E402
from mnc_teach.widgets.run_viewer import RunViewer  # noqa: E402

BUDGET_S = 1.0


def timed(action, prepare=lambda: None) -> float:
    """Seconds ``action()`` takes, after ``prepare()``."""
    prepare()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run_cases(run_dir: Path, val_set, repeats: int) -> dict[str, list[float]]:
    """Times of the dashboard's gallery refresh and of the run viewer's Reload and score slider."""
    model, _ = load_model(run_dir / CHECKPOINT_NAME, "cpu")
    dashboard = TrainingDashboard(gallery=val_set, gallery_indices=(0, 1, 2, 3), frontend=True)
    state = type("State", (), {"model": model, "device": torch.device("cpu"), "step": 0})()
    viewer = RunViewer(run_dir, gallery=val_set, gallery_indices=(0, 1, 2, 3), frontend=True)
    history = TrainHistory.load(run_dir / HISTORY_NAME)

    def grow_history() -> None:  # what a running training does between two reloads
        history.steps.append(dict(history.steps[-1], step=history.steps[-1]["step"] + 1))
        history.save(run_dir / HISTORY_NAME)

    def new_checkpoint() -> None:  # the same weights, a new file (as train's atomic replace)
        shutil.copy(run_dir / CHECKPOINT_NAME, run_dir / "copy.tmp")
        os.replace(run_dir / "copy.tmp", run_dir / CHECKPOINT_NAME)

    def set_threshold(value: float) -> None:
        viewer.score_slider.value = value

    thresholds = [0.3 + 0.1 * (k % 4) for k in range(repeats)]
    gallery_refresh = lambda: dashboard.refresh_gallery(state)  # noqa: E731
    return {
        "dashboard: gallery refresh (4 images)": [timed(gallery_refresh) for _ in range(repeats)],
        "run viewer: Reload, history grew": [timed(viewer.reload, grow_history)
                                             for _ in range(repeats)],
        "run viewer: Reload, new checkpoint (4 images)": [timed(viewer.reload, new_checkpoint)
                                                          for _ in range(repeats)],
        "run viewer: score slider": [timed(lambda t=t: set_threshold(t)) for t in thresholds],
    }


def choice_ratios(model, val_set, explorer: StageExplorer, repeats: int) -> dict[str, float]:
    """Median time of each speed choice the widgets make, over the median of its alternative."""
    images = [val_set[i][0] for i in range(min(4, len(val_set)))]

    def one_at_a_time() -> None:
        for image in images:
            predict_images(model, [image])

    def stage_view(tight: bool) -> None:
        fig = draw_stage_view(explorer.last_view, explorer._run(explorer.index.value).detections,
                              explorer.class_names)
        if tight:
            fig.tight_layout()
        plt.close(fig)

    def png(dpi: int) -> None:
        explorer.figure.savefig(io.BytesIO(), format="png", dpi=dpi)

    def median(action) -> float:
        action()  # warm-up: caches, first-use allocations
        return statistics.median(timed(action) for _ in range(repeats))

    return {
        "gallery: one batch / one image at a time": (
            median(lambda: predict_images(model, images)) / median(one_at_a_time)),
        "stage view: fixed margins / tight_layout": (
            median(lambda: stage_view(False)) / median(lambda: stage_view(True))),
        "stage view PNG: 80 dpi / 100 dpi": median(lambda: png(80)) / median(lambda: png(100)),
    }


def timed_update(widget, control, value) -> float:
    """Seconds from setting ``control.value`` to the figure's PNG bytes."""
    start = time.perf_counter()
    control.value = value
    if widget.figure is not None:
        widget.figure.savefig(io.BytesIO(), format="png")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint.pt of a trained model (default: untrained)")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the notebooks use 1)")
    parser.add_argument("--run-steps", type=int, default=30,
                        help="steps of the run the dashboard timings use")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.stdout = open(sys.stdout.fileno(), "w", buffering=1, closefd=False)  # line-buffered
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            model, cfg = load_model(args.checkpoint, "cpu")
            what = args.checkpoint
        else:
            cfg = override(get_preset("shapes-cpu"), "data.root", str(Path(tmp) / "shapes"))
            torch.manual_seed(0)
            model, what = build_mnc(cfg).eval(), "an untrained shapes-cpu model"
        if not Path(cfg.data.root).is_dir():  # the model's own data if still there, else new images
            cfg = override(cfg, "data.root", str(Path(tmp) / "shapes"))
            generate_shapes(cfg.data.root, seed=0, num_train=8, num_val=2 * args.repeats,
                            progress=False)
        val_set = build_datasets(cfg)[1]
        print(f"{what}, {len(val_set)} validation images of {tuple(val_set[0][0].shape[-2:])}, "
              f"{torch.get_num_threads()} thread(s)")
        explorer = StageExplorer(model, val_set)
        viewer = ProposalViewer(model, val_set, recall_images=10)
        r = args.repeats
        cases = {
            "stage explorer: image (runs the model)": (explorer, explorer.index,
                                                       list(range(1, r + 1))),
            "stage explorer: RoI": (explorer, explorer.roi, [(k % 20) + 1 for k in range(r)]),
            "stage explorer: mask threshold": (explorer, explorer.mask_threshold,
                                               [0.3 + 0.05 * (k % 6) for k in range(r)]),
            "proposal viewer: image (runs the RPN)": (viewer, viewer.index,
                                                      list(range(1, r + 1))),
            "proposal viewer: NMS IoU": (viewer, viewer.nms_iou,
                                         [0.5 + 0.05 * (k % 8) for k in range(r)]),
            "proposal viewer: post-NMS top-k": (viewer, viewer.post_nms_top_n,
                                                [10 + 10 * k for k in range(r)]),
        }
        times = {name: [timed_update(widget, control, v) for v in values]
                 for name, (widget, control, values) in cases.items()}
        run_cfg = override(shortened(cfg, args.run_steps), "train.images_per_batch", 2)
        print(f"training a {args.run_steps}-step run for the dashboard and the run viewer ...")
        train(run_cfg, Path(tmp) / "run", callbacks=[], datasets=(build_datasets(run_cfg)[0], None))
        times |= run_cases(Path(tmp) / "run", val_set, r)
        print(f"{'update':<48}{'median s':>10}{'worst s':>10}{'median / 1 s budget':>22}")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:<48}{median:>10.3f}{max(values):>10.3f}{median / BUDGET_S:>22.2f}")
        print(f"\n{'speed choice':<48}{'ratio':>10}")
        for name, ratio in choice_ratios(model, val_set, explorer, r).items():
            print(f"{name:<48}{ratio:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
