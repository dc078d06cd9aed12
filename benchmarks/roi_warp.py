"""Forward + backward time of MNC's RoI warping against torchvision's compiled roi_align.

    python benchmarks/roi_warp.py [--repeats N] [--rois R] [--channels C] [--threads 1 2]
                                  [--device cpu|cuda]

Setting (docs/paper_vs_code.md: stages 2-3): a 600 x 800 image at stride 16 gives a 1 x C x 38 x 50
feature map;
R RoIs; 14 x 14 output. Compared, in the same run and on the same device:
    ours pool=1        roi_warp_pool(..., output_size=14, pool=1): one bilinear sample per output
                       cell (the fast version: sparse G(B), one autograd node)
    ours pool=2        roi_warp_pool(..., output_size=14, pool=2): warp 28 x 28, 2 x 2 max pool
                       (the official code)
    reference pool=1/2 roi_warp_pool_reference: the same function, the readable gather version
                       differentiated by autograd (notebook 03)
    roi_align          torchvision.ops.roi_align(..., 14, sampling_ratio=2, aligned=True): 2 x 2
                       samples averaged
Ours also computes the gradient with respect to the boxes; roi_align's kernel does not (it has
none). On the CPU every method runs at each ``--threads`` count (torch.set_num_threads;
torchvision's CPU roi_align kernel is single-threaded, ours uses the threads); on CUDA the
thread counts do not apply and one table is printed. The methods take turns in every repeat;
times are medians, in ms per call, and the ratio is (this row) / roi_align. Nothing is
asserted: this prints figures, it does not test them (DESIGN.md §2, benchmarks/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnc_teach.config import RoIConfig  # noqa: E402
from mnc_teach.roi_warp import (  # noqa: E402
    VGG16_SPATIAL_SCALE,
    roi_warp_pool,
    roi_warp_pool_reference,
)

IMAGE_SIZE = (600, 800)  # (H, W): the paper's short side 600 [docs/paper_vs_code.md: training]
STRIDE = 16  # VGG-16 conv5_3 [docs/paper_vs_code.md]
WARMUP = 2  # untimed calls first (allocator, kernel selection)


def make_inputs(
    num_rois: int, channels: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 x C x 38 x 50 feature map and R random boxes inside the 600 x 800 image, as RoIs
    [R, 5]."""
    gen = torch.Generator().manual_seed(seed)
    # ceil(600 / 16) x ceil(800 / 16) = 38 x 50
    height, width = (-(-side // STRIDE) for side in IMAGE_SIZE)
    features = torch.randn(1, channels, height, width, generator=gen)
    image_wh = torch.tensor([IMAGE_SIZE[1], IMAGE_SIZE[0]])
    top_left = torch.rand(num_rois, 2, generator=gen) * image_wh * 0.7  # (R, 2) x, y
    sides = 16 + torch.rand(num_rois, 2, generator=gen) * 300  # (R, 2)
    rois = torch.cat([torch.zeros(num_rois, 1), top_left, top_left + sides], dim=1)  # (R, 5)
    return features.to(device), rois.to(device)


def forward_backward_ms(fn, features: torch.Tensor, rois: torch.Tensor) -> float:
    """Milliseconds of one ``fn(features, rois).backward(ones)``, with fresh leaves requiring
    grad."""
    feats = features.detach().requires_grad_(True)
    boxes = rois.detach().requires_grad_(True)
    if features.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(feats, boxes)
    out.backward(torch.ones_like(out))
    if features.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def time_methods(
    methods: dict, features: torch.Tensor, rois: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Median ms per method; the methods take turns within each repeat, so load changes hit all
    of them."""
    times: dict[str, list[float]] = {label: [] for label in methods}
    for step in range(WARMUP + repeats):
        for label, fn in methods.items():
            elapsed = forward_backward_ms(fn, features, rois)
            if step >= WARMUP:
                times[label].append(elapsed)
    return {label: statistics.median(values) for label, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed calls per method (median reported)"
    )
    parser.add_argument("--rois", type=int, default=256, help="R, RoIs per call")
    parser.add_argument("--channels", type=int, default=256, help="C, feature channels")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2],
        help="CPU thread counts to run at, one table each (default: 1 2)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch; run with --device cpu")
    if min(args.threads) < 1 or args.repeats < 1 or args.rois < 1 or args.channels < 1:
        parser.error("--threads, --repeats, --rois and --channels must be >= 1")

    size, scale = RoIConfig.output_size, VGG16_SPATIAL_SCALE  # 14 x 14 on conv5_3

    def warp(function, pool: int):
        return lambda f, r: function(f, r, output_size=size, spatial_scale=scale, pool=pool)

    def roi_align(f, r):
        return torchvision.ops.roi_align(f, r, size, scale, sampling_ratio=2, aligned=True)

    methods = {
        "ours pool=1 (14x14)": warp(roi_warp_pool, 1),
        "ours pool=2 (28->14)": warp(roi_warp_pool, 2),
        "reference pool=1": warp(roi_warp_pool_reference, 1),
        "reference pool=2": warp(roi_warp_pool_reference, 2),
        "roi_align sr=2": roi_align,
    }
    device = torch.device(args.device)
    features, rois = make_inputs(args.rois, args.channels, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {name}")
    print(
        f"features {tuple(features.shape)}, R = {args.rois}, forward + backward, "
        f"median of {args.repeats}"
    )
    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    initial_threads = torch.get_num_threads()
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            timings = time_methods(methods, features, rois, args.repeats)
            reference = timings["roi_align sr=2"]
            where = f"{threads} CPU thread(s)" if device.type == "cpu" else name
            print(f"\n{where}:")
            print(f"  {'method':<22} {'ms / call':>10} {'/ roi_align':>12}")
            for label, ms in timings.items():
                print(f"  {label:<22} {ms:10.2f} {ms / reference:12.2f}")
    finally:
        torch.set_num_threads(initial_threads)


if __name__ == "__main__":
    main()
