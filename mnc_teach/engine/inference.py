"""Running a trained model: on which device, with how many CPU threads, over a whole dataset.

    model, cfg = load_model("runs/first/checkpoint.pt")   # mnc_teach.engine.checkpoint
    results = predict(model, val_set)                     # COCO results, masks at each file's size
    detections = predict_images(model, images)            # detection dicts of a few images
    with eval_mode(model):                                # any other look at a model in training
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mnc_teach.evaluation.coco import detections_to_coco_results

__all__ = [
    "cpu_threads", "eval_mode", "model_device", "predict", "predict_images", "resolve_device",
]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available; a clear error when CUDA is asked for but absent."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but torch.cuda.is_available() is False; "
                           "use device 'cpu'")
    return device


def model_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """Where to run ``model``: ``device`` (checked by :func:`resolve_device`), by default where
    its parameters are."""
    return next(model.parameters()).device if device is None else resolve_device(device)


@contextmanager
def cpu_threads(num_threads: int | None):
    """Use ``num_threads`` torch intra-op threads inside the block (None: leave them), then
    restore."""
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode and the RNG forked; restore both afterwards.

    On exit, also on an error, every submodule gets back the train/eval mode it had, and the
    global CPU RNG (and that of each CUDA device holding a parameter) its state: looking at a
    model during training (validation losses, a gallery of predictions, an explorer) changes
    nothing of the run. Gradients are not switched off: wrap the block in ``torch.no_grad()``.

    Yields:
        ``model``, in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    cuda_devices = sorted({parameter.device.index or 0 for parameter in model.parameters()
                           if parameter.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda_devices):
        model.eval()
        try:
            yield model
        finally:
            for module, training in modes:
                module.training = training


def _original_size(dataset: Dataset, index: int, image: Tensor) -> tuple[int, int]:
    """(H, W) of the image file (read from its header) when the dataset names it, else of
    ``image``."""
    image_path: Callable[[int], Path] | None = getattr(dataset, "image_path", None)
    if image_path is None:
        return tuple(image.shape[-2:])
    from PIL import Image

    with Image.open(image_path(index)) as file:
        width, height = file.size
    return height, width


def _on_cpu(detections: dict) -> dict:
    """The detection dict with its tensors detached and on the CPU."""
    return {key: value.detach().cpu() if isinstance(value, Tensor) else value
            for key, value in detections.items()}


def _rescale_detections(detections: dict, size: tuple[int, int],
                        original_size: tuple[int, int]) -> dict:
    """Boxes and soft masks [D, 1, h, w] of an image resized to ``size``, at ``original_size``."""
    detections = _on_cpu(detections)
    if tuple(size) == tuple(original_size):
        return detections
    (h, w), (height, width) = size, original_size
    masks = detections["masks"].float()
    masks = (F.interpolate(masks, size=original_size, mode="bilinear", align_corners=False)
             if len(masks) else masks.new_zeros((0, 1, height, width)))  # (D, 1, H, W)
    scale = torch.tensor([width / w, height / h, width / w, height / h])
    return {**detections, "boxes": detections["boxes"] * scale, "masks": masks}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, device: str | torch.device | None = None,
            progress: bool = True) -> list[dict]:
    """COCO results (``detections_to_coco_results``) for every image of ``dataset``.

    The model sees the dataset's images as they come (resized by its transforms, if any);
    boxes and masks are mapped back to the size of the image file, which is the size of the
    ground truth ``evaluate`` compares them with.
    """
    device = model_device(model, device)
    results = []
    with eval_mode(model.to(device)):
        for index in tqdm(range(len(dataset)), desc="predict", unit="img", disable=not progress):
            image, target = dataset[index]
            detections, _ = model([image.to(device)])
            original_size = _original_size(dataset, index, image)
            detections = _rescale_detections(detections[0], image.shape[-2:], original_size)
            results += detections_to_coco_results(target["image_id"], detections)
    return results


@torch.no_grad()
def predict_images(model: nn.Module, images: Sequence[Tensor],
                   device: str | torch.device | None = None) -> list[dict]:
    """The model's detections of each image, on the CPU, in :func:`eval_mode` without gradients.

    Images of one size go through in one batch (no padding, so the detections equal those of
    one image at a time up to float rounding). The model's mode and the RNG are left as they
    were, so a training run that calls this goes on unchanged.

    Args:
        images (Tensor[3, H, W] each, float in [0, 1]); device: where the model runs (default:
            where its parameters are).

    Returns:
        One detection dict per image, in the order of ``images``, tensors on the CPU.
    """
    device = model_device(model, device)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(index)
    detections: list[dict] = [{} for _ in images]
    with eval_mode(model):
        for indices in by_size.values():
            found, _ = model([images[i].to(device) for i in indices])
            for index, one in zip(indices, found, strict=True):
                detections[index] = _on_cpu(one)
    return detections
