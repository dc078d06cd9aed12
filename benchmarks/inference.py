"""Inference speed: MNC (VGG-16, 5 stages, mask voting) vs torchvision's Mask R-CNN (ResNet-50-FPN).

    python benchmarks/inference.py [--repeats N] [--device cpu|cuda|all]

Both models get random weights (nothing is downloaded) and the same 600 x 1000 image (the
paper's test scale, MNC_SPEC §8); Mask R-CNN is told to keep that size (min_size 600,
max_size 1000). With random weights the number of detections differs between the models:
MNC always keeps 100 per image (no score threshold, as the code), Mask R-CNN drops boxes
below its default 0.05 score, so its post-processing may do less work; the table prints the
number of detections next to each time. Times are medians in seconds per image; the ratio
is MNC images/s divided by Mask R-CNN images/s, measured in the same run. Nothing is asserted.
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
from mnc_teach.cascade import build_mnc  # noqa: E402
from mnc_teach.config import override, voc_vgg16_paper  # noqa: E402

IMAGE_SIZE = (600, 1000)  # (H, W) [MNC_SPEC §8: short side 600, long side at most 1000]
WARMUP = 1


def time_model(model, image: torch.Tensor, repeats: int, device: torch.device) -> tuple[float, int]:
    """Median seconds per image and the number of detections of the last call."""
    times, detections = [], 0
    with torch.no_grad():
        for i in range(WARMUP + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            output = model([image])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
            # MNC returns (detections, losses)
            per_image = output[0] if isinstance(output, tuple) else output
            detections = per_image[0]["boxes"].shape[0]
    return statistics.median(times), detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed images per model (default 2)")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    args = parser.parse_args()
    devices = [torch.device("cpu")] if args.device != "cuda" else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))

    torch.manual_seed(0)
    cfg = override(voc_vgg16_paper(), "backbone.pretrained", False)
    mnc = build_mnc(cfg).eval()
    maskrcnn = torchvision.models.detection.maskrcnn_resnet50_fpn(
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
        f"after {WARMUP} warm-up"
    )
    print(f"{'device':8s} {'model':34s} {'s/image':>8s} {'images/s':>9s} {'detections':>10s}")
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        results = {}
        models = (
            ("MNC VGG-16 5-stage + voting", mnc),
            ("Mask R-CNN R50-FPN (torchvision)", maskrcnn),
        )
        for label, model in models:
            seconds, detections = time_model(
                model.to(device), image.to(device), args.repeats, device
            )
            results[label] = seconds
            print(
                f"{device.type:8s} {label:34s} {seconds:8.2f} {1 / seconds:9.2f} {detections:10d}"
            )
        mnc_s, mrcnn_s = results.values()
        print(
            f"{device.type:8s} ratio MNC / Mask R-CNN images/s = {mrcnn_s / mnc_s:.2f}  ({name})"
        )


if __name__ == "__main__":
    main()
