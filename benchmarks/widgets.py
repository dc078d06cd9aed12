"""How long the explorers take to update on shapes images (CPU), against the course's 1-second budget.

    python benchmarks/widgets.py                                   # an untrained shapes-cpu model
    python benchmarks/widgets.py --checkpoint runs/06_cascade/main/checkpoint.pt

Each update is what a slider move does in JupyterLab: recompute, draw, and encode the figure
as the PNG the page receives (``show_figure`` only prints outside a kernel, so the PNG is
encoded here). Prints the median and worst of ``--repeats`` updates per control, and their
ratio to the budget (below 1 is within it).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

from mnc_teach.cascade import build_mnc  # noqa: E402
from mnc_teach.config import get_preset, override  # noqa: E402
from mnc_teach.data import generate_shapes  # noqa: E402
from mnc_teach.train import build_datasets, load_model  # noqa: E402
from mnc_teach.widgets_cascade import ProposalViewer, StageExplorer  # noqa: E402

BUDGET_S = 1.0


def timed_update(widget, control, value) -> float:
    """Seconds from setting ``control.value`` to the figure's PNG bytes."""
    start = time.perf_counter()
    control.value = value
    if widget.figure is not None:
        widget.figure.savefig(io.BytesIO(), format="png")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint.pt of a trained model (default: untrained)")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the notebooks use 1)")
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
        if not Path(cfg.data.root).is_dir():  # the model's own data when it is still there, else fresh images
            cfg = override(cfg, "data.root", str(Path(tmp) / "shapes"))
            generate_shapes(cfg.data.root, seed=0, num_train=8, num_val=2 * args.repeats, progress=False)
        val_set = build_datasets(cfg)[1]
        print(f"{what}, {len(val_set)} validation images of {tuple(val_set[0][0].shape[-2:])}, "
              f"{torch.get_num_threads()} thread(s)")  # fmt: skip
        explorer = StageExplorer(model, val_set)
        viewer = ProposalViewer(model, val_set, recall_images=10)
        r = args.repeats
        cases = {
            "stage explorer: image (runs the model)": (explorer, explorer.index, list(range(1, r + 1))),
            "stage explorer: RoI": (explorer, explorer.roi, [(k % 20) + 1 for k in range(r)]),
            "stage explorer: mask threshold": (explorer, explorer.mask_threshold, [0.3 + 0.05 * (k % 6) for k in range(r)]),
            "proposal viewer: image (runs the RPN)": (viewer, viewer.index, list(range(1, r + 1))),
            "proposal viewer: NMS IoU": (viewer, viewer.nms_iou, [0.5 + 0.05 * (k % 8) for k in range(r)]),
            "proposal viewer: post-NMS top-k": (viewer, viewer.post_nms_top_n, [10 + 10 * k for k in range(r)]),
        }  # fmt: skip
        print(f"{'update':<42}{'median s':>10}{'worst s':>10}{'median / 1 s budget':>22}")
        for name, (widget, control, values) in cases.items():
            times = [timed_update(widget, control, v) for v in values]
            median = statistics.median(times)
            print(f"{name:<42}{median:>10.3f}{max(times):>10.3f}{median / BUDGET_S:>22.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
