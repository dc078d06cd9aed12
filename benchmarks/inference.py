"""Inference speed: MNC (VGG-16, 5 stages, mask voting), with and without the truncated SVD of
fc6/fc7, vs torchvision's Mask R-CNN (ResNet-50-FPN).

    python benchmarks/inference.py [--repeats N] [--device cpu|cuda|all]
                                   [--fc6-rank T6] [--fc7-rank T7] [--no-svd] [--amp] [--profile]

Every model gets random weights (nothing is downloaded) and the same 600 x 1000 image (the
paper's test scale, docs/paper_vs_code.md: inference); Mask R-CNN is told to keep that size
(min_size 600,
max_size 1000). "MNC + SVD" is MNC with ``stage3_classify.compress_fc_layers`` applied to
both classifier pathways (Fast R-CNN §3.1; default ranks 1024 for fc6 and 256 for fc7, Fast
R-CNN's on VGG-16); the time the compression takes is printed (once, on the first device). With
random weights the number of detections differs between the models: MNC always keeps 100 per
image (no score threshold, as the code), Mask R-CNN drops boxes below its default 0.05
score, so its post-processing may do less work; the table prints the number of detections
next to each time. Times are medians per image after a warm-up; on CUDA the table adds the
peak GPU memory of each model's calls (``torch.cuda.max_memory_allocated``, its weights
included). The ratios are images/s divided by Mask R-CNN's images/s, measured in the same
run. ``--amp`` runs every model under ``torch.autocast`` (bfloat16) on CUDA. ``--profile``
prints where MNC's time goes (backbone, RPN, RoI warp, mask head, classifier, post-processing)
with and without SVD. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import traceback
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
import torchvision

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mnc_teach.cascade as cascade  # noqa: E402
from mnc_teach.config import override, voc_vgg16_paper  # noqa: E402
from mnc_teach.stage3_classify import compress_fc_layers  # noqa: E402

# (H, W) [docs/paper_vs_code.md: inference: short side 600, long side at most 1000]
IMAGE_SIZE = (600, 1000)
WARMUP = 1
MASKRCNN = "Mask R-CNN R50-FPN (torchvision)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: bool):
    """bfloat16 autocast on CUDA when ``amp``; otherwise nothing."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def time_model(
    model, image: torch.Tensor, *, repeats: int, device: torch.device, amp: bool
) -> tuple[float, int, float | None]:
    """Median seconds per image, the number of detections of the last call and the peak GPU
    memory in GiB (None on the CPU)."""
    times, detections = [], 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), autocast(device, amp):
        for i in range(WARMUP + repeats):
            synchronize(device)
            start = time.perf_counter()
            output = model([image])
            synchronize(device)
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
            # MNC returns (detections, losses)
            per_image = output[0] if isinstance(output, tuple) else output
            detections = per_image[0]["boxes"].shape[0]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), detections, peak


def profile_mnc(
    model: cascade.MNC, image: torch.Tensor, *, device: torch.device, amp: bool
) -> dict[str, float]:
    """Seconds per part of one MNC inference (forward hooks, synchronised on CUDA); the
    classifier's share includes its two pathways (fc6 + fc7 each), also listed alone."""
    parts = {
        "backbone": model.backbone,
        "rpn": model.rpn,
        "roi_warp": model.roi_warp,
        "mask_head": model.mask_head,
        "classifier": model.classifier,
        "  of which pathways (fc6, fc7)": [
            model.classifier.mask_pathway, model.classifier.box_pathway
        ],
    }
    seconds: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []
    for name, modules in parts.items():
        for module in modules if isinstance(modules, list) else [modules]:

            def before(module, inputs):
                synchronize(device)
                starts[id(module)] = time.perf_counter()

            def after(module, inputs, output, name=name):
                synchronize(device)
                seconds[name] += time.perf_counter() - starts[id(module)]

            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    postprocess = cascade.postprocess_detections

    def timed_postprocess(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        result = postprocess(*args, **kwargs)
        synchronize(device)
        seconds["postprocess"] += time.perf_counter() - start
        return result

    cascade.postprocess_detections = timed_postprocess
    try:
        with torch.no_grad(), autocast(device, amp):
            synchronize(device)
            start = time.perf_counter()
            model([image])
            synchronize(device)
            total = time.perf_counter() - start
    finally:
        cascade.postprocess_detections = postprocess
        for handle in handles:
            handle.remove()
    ordered = {name: seconds[name] for name in [*parts, "postprocess"]}  # the order of parts
    top_level = sum(v for k, v in ordered.items() if not k.startswith(" "))
    return {**ordered, "other": total - top_level, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed images per model (default 2)")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--fc6-rank", type=int, default=1024, help="SVD rank of fc6 (1024)")
    parser.add_argument("--fc7-rank", type=int, default=256, help="SVD rank of fc7 (256)")
    parser.add_argument("--no-svd", action="store_true", help="leave out MNC + SVD")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    parser.add_argument("--profile", action="store_true", help="MNC's time per part")
    args = parser.parse_args()
    devices = [torch.device("cpu")] if args.device != "cuda" else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        parser.error("--device cuda: no CUDA device is visible; use --device cpu")

    torch.manual_seed(0)
    cfg = override(voc_vgg16_paper(), "backbone.pretrained", False)
    mnc = cascade.build_mnc(cfg).eval()
    models = {"MNC VGG-16 5-stage + voting": mnc}
    if not args.no_svd:
        svd_label = f"MNC + SVD fc6 {args.fc6_rank} / fc7 {args.fc7_rank}"
        compressed = copy.deepcopy(mnc).to(devices[-1])  # the SVD on the GPU when there is one
        synchronize(devices[-1])
        start = time.perf_counter()
        compress_fc_layers(compressed, fc6_rank=args.fc6_rank, fc7_rank=args.fc7_rank)
        synchronize(devices[-1])
        compress_s = time.perf_counter() - start
        models[svd_label] = compressed.cpu()
    models[MASKRCNN] = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=cfg.num_classes + 1,
        min_size=IMAGE_SIZE[0],
        max_size=IMAGE_SIZE[1],
    ).eval()
    image = torch.rand(3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"image {IMAGE_SIZE[0]} x {IMAGE_SIZE[1]}, random weights, median of {args.repeats} "
        f"after {WARMUP} warm-up{', bfloat16 autocast on CUDA' if args.amp else ''}"
    )
    if not args.no_svd:
        print(f"compress_fc_layers took {compress_s:.1f} s on {devices[-1].type}")
    print(
        f"{'device':7s} {'model':34s} {'ms/image':>9s} {'images/s':>9s} {'peak GiB':>9s} "
        f"{'detections':>10s} {'ratio':>6s}"
    )
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        rows = {}
        for label, model in models.items():
            try:
                rows[label] = time_model(
                    model.to(device), image.to(device), repeats=args.repeats, device=device,
                    amp=args.amp,
                )
            except Exception:  # a one-shot GPU run still reports the other models
                traceback.print_exc()
                print(f"{device.type:7s} {label:34s} failed (traceback above)")
            finally:
                model.cpu()
        maskrcnn_s = rows[MASKRCNN][0] if MASKRCNN in rows else float("nan")
        for label, (seconds, detections, peak) in rows.items():
            peak_text = "-" if peak is None else f"{peak:.2f}"
            print(
                f"{device.type:7s} {label:34s} {1000 * seconds:9.1f} {1 / seconds:9.2f} "
                f"{peak_text:>9s} {detections:10d} {maskrcnn_s / seconds:6.2f}"
            )
        print(f"{device.type:7s} ratio = images/s / Mask R-CNN's images/s  ({name})")
        mnc_label = next(iter(models))
        if not args.no_svd and {mnc_label, svd_label} <= set(rows):
            speedup = rows[mnc_label][0] / rows[svd_label][0]
            print(f"{device.type:7s} SVD: {speedup:.2f} x the images/s of MNC without it")
        if not args.profile:
            continue
        for label, model in models.items():
            if label == MASKRCNN:
                continue
            try:
                seconds = profile_mnc(
                    model.to(device), image.to(device), device=device, amp=args.amp
                )
            except Exception:
                traceback.print_exc()
                continue
            finally:
                model.cpu()
            total = seconds.pop("total")
            shares = ", ".join(f"{k.strip()} {100 * v / total:.0f} %" for k, v in seconds.items())
            print(f"{device.type:7s} {label}: {1000 * total:.0f} ms = {shares}")


if __name__ == "__main__":
    main()
