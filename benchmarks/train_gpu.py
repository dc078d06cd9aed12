"""Training speed on synthetic VOC-format data: MNC (VOC preset, AMP) vs torchvision's Mask R-CNN.

    python benchmarks/train_gpu.py [--device cuda|cpu] [--steps N] [--warmup N] [--size H [W]]
                                   [--images-per-step B] [--preset NAME] [--no-amp]
                                   [--channels-last] [--skip-torchvision]

    # a check on a CPU with tiny sizes (the figures need a GPU):
    python benchmarks/train_gpu.py --device cpu --steps 2 --warmup 1 --size 128

No dataset is needed: a few batches of random images (``--size``, default 600 x 1000, the
paper's training scale) with 3 random rectangles each (boxes, labels in 1..K, masks: the
VOC-format targets the models take) are built in memory on the device and cycled, so the
figures leave out data loading. Both models train on the same batches with a plain loop
(independent of ``mnc_teach.engine``): ``torch.autocast`` in bfloat16 where the GPU computes
it natively, else float16 with a ``GradScaler`` (the engine's rule); SGD with the preset's
lr, momentum and weight decay; one optimiser step per ``--images-per-step`` images. After
``--warmup`` steps, ``--steps`` steps are timed; images/s, ms/step and (CUDA) the peak GPU
memory (``torch.cuda.max_memory_allocated`` over the timed steps, weights and optimiser state
included) are printed, and the ratio MNC images/s / Mask R-CNN images/s, measured in the same
run. Weights are random (nothing is downloaded): MNC's VGG-16 keeps the preset's frozen
layers; Mask R-CNN is built as ``maskrcnn_resnet50_fpn`` is for fine-tuning from ImageNet
weights (FrozenBatchNorm, layers 2-4 trainable). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnc_teach.boxes import masks_to_boxes  # noqa: E402
from mnc_teach.cascade import build_mnc  # noqa: E402
from mnc_teach.config import get_preset, override  # noqa: E402

NUM_BATCHES = 4  # distinct synthetic batches, cycled
RECTANGLES_PER_IMAGE = 3
MASKRCNN_TRAINABLE_LAYERS = 3  # torchvision's default when fine-tuning from ImageNet weights


def synthetic_batch(
    *, images_per_step: int, size: tuple[int, int], num_classes: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[dict]]:
    """Random images in [0, 1] (3, H, W) and targets of 3 random rectangles each (sides 10-50 %
    of the image's), in the models' format (structures.Target), on the CPU."""
    height, width = size
    images, targets = [], []
    for index in range(images_per_step):
        images.append(torch.rand(3, height, width, generator=generator))
        masks = torch.zeros((RECTANGLES_PER_IMAGE, height, width), dtype=torch.uint8)
        for g in range(RECTANGLES_PER_IMAGE):
            box_h = int(height * (0.1 + 0.4 * torch.rand(1, generator=generator)))
            box_w = int(width * (0.1 + 0.4 * torch.rand(1, generator=generator)))
            y0 = int(torch.randint(0, height - box_h + 1, (1,), generator=generator))
            x0 = int(torch.randint(0, width - box_w + 1, (1,), generator=generator))
            masks[g, y0 : y0 + max(box_h, 1), x0 : x0 + max(box_w, 1)] = 1
        labels = torch.randint(1, num_classes + 1, (RECTANGLES_PER_IMAGE,), generator=generator)
        targets.append({
            "boxes": masks_to_boxes(masks),  # (G, 4) the tight boxes of the rectangles
            "labels": labels,
            "masks": masks,
            "ignore": torch.zeros((height, width), dtype=torch.uint8),
            "image_id": f"synthetic_{index}",
        })
    return images, targets


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    """The batch on ``device`` (strings stay)."""
    moved = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    return [image.to(device) for image in images], moved


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 where the GPU computes it natively, else float16; None: float32 (and on CPU)."""
    if not enabled or device.type != "cuda":
        return None
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


def build_maskrcnn(num_classes: int, size: tuple[int, int]) -> torch.nn.Module:
    """``maskrcnn_resnet50_fpn`` as torchvision builds it for fine-tuning from ImageNet
    weights, with random weights; told to keep the images' size."""
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, MASKRCNN_TRAINABLE_LAYERS)
    return MaskRCNN(backbone, num_classes=num_classes + 1, min_size=min(size), max_size=max(size))


def time_training(
    model: torch.nn.Module,
    batches: list,
    *,
    steps: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype | None,
    optimizer: torch.optim.Optimizer,
) -> dict[str, float]:
    """Seconds of ``steps`` optimiser steps after ``warmup`` ones; peak GPU memory; the last
    loss and how many timed steps had a non-finite loss."""
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model.train()
    non_finite, loss = 0, torch.zeros(())
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
        images, targets = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model(images, targets)
        losses = output[1] if isinstance(output, tuple) else output  # MNC: (detections, losses)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step >= warmup and not torch.isfinite(loss.detach()):  # a sync: cheap next to a step
            non_finite += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    last_loss = float(loss.detach())
    return {"seconds": seconds, "peak_gib": peak, "loss": last_loss, "non_finite": non_finite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=100, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument(
        "--size", type=int, nargs="+", default=[600, 1000], help="image H [W] (default 600 1000)"
    )
    parser.add_argument("--images-per-step", type=int, default=2, help="images per forward/step")
    parser.add_argument("--preset", default="voc-vgg16-paper", help="an MNC preset (a VOC one)")
    parser.add_argument("--no-amp", action="store_true", help="float32 throughout")
    parser.add_argument(
        "--channels-last", action="store_true", help="both models' conv weights channels_last"
    )
    parser.add_argument("--skip-torchvision", action="store_true", help="time MNC only")
    args = parser.parse_args()
    if len(args.size) not in (1, 2) or min(args.size) < 32:
        parser.error("--size takes H or H W, each at least 32 pixels")
    size = (args.size[0], args.size[-1])
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible; use --device cpu")
    dtype = amp_dtype(device, enabled=not args.no_amp)

    torch.manual_seed(0)
    cfg = override(get_preset(args.preset), "backbone.pretrained", False)
    t = cfg.train
    generator = torch.Generator().manual_seed(0)
    batches = [
        to_device(
            *synthetic_batch(
                images_per_step=args.images_per_step, size=size,
                num_classes=cfg.num_classes, generator=generator,
            ),
            device,
        )
        for _ in range(min(NUM_BATCHES, args.warmup + args.steps))
    ]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {card}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"{size[0]} x {size[1]} synthetic images, {args.images_per_step} per step, "
        f"{RECTANGLES_PER_IMAGE} rectangles each; {args.steps} steps after {args.warmup} warm-up; "
        f"autocast {dtype if dtype is not None else 'off (float32)'}"
        f"{', channels_last' if args.channels_last else ''}"
    )
    models = [(f"MNC {args.preset} ({cfg.num_stages}-stage)", build_mnc(cfg))]
    if not args.skip_torchvision:
        models.append(("Mask R-CNN R50-FPN (torchvision)", build_maskrcnn(cfg.num_classes, size)))
    print(
        f"{'model':40s} {'images/s':>9s} {'ms/step':>9s} {'peak GiB':>9s} {'last loss':>10s} "
        f"{'non-finite':>10s}"
    )
    speeds = {}
    for label, model in models:
        model = model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
        )
        try:
            result = time_training(
                model, batches, steps=args.steps, warmup=args.warmup, device=device,
                dtype=dtype, optimizer=optimizer,
            )
        except Exception:  # a one-shot GPU run still reports the other model
            traceback.print_exc()
            print(f"{label:40s} failed (traceback above)")
            continue
        finally:
            model.cpu()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        speeds[label] = args.steps * args.images_per_step / result["seconds"]
        peak = "-" if result["peak_gib"] is None else f"{result['peak_gib']:.2f}"
        print(
            f"{label:40s} {speeds[label]:9.2f} {1000 * result['seconds'] / args.steps:9.1f} "
            f"{peak:>9s} {result['loss']:10.3f} {result['non_finite']:10d}"
        )
    if len(speeds) == 2:
        mnc, maskrcnn = speeds.values()
        print(f"ratio MNC / Mask R-CNN images/s = {mnc / maskrcnn:.2f}  ({card})")


if __name__ == "__main__":
    main()
