"""Running a trained model: on which device, with how many CPU threads, over a whole dataset.

    model, cfg = load_model("runs/first/checkpoint.pt")      # mnc_teach.engine.checkpoint
    results = predict(model, val_set)                        # COCO results, masks at each file's size
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mnc_teach.evaluation.coco import detections_to_coco_results

__all__ = ["cpu_threads", "predict", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available; a clear error when CUDA is asked for but absent."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but torch.cuda.is_available() is False; use device 'cpu'")
    return device


@contextmanager
def cpu_threads(num_threads: int | None):
    """Use ``num_threads`` torch intra-op threads inside the block (None: leave them), then restore."""
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _original_size(dataset: Dataset, index: int, image: Tensor) -> tuple[int, int]:
    """(H, W) of the image file (read from its header) when the dataset names it, else of ``image``."""
    image_path: Callable[[int], Path] | None = getattr(dataset, "image_path", None)
    if image_path is None:
        return tuple(image.shape[-2:])
    from PIL import Image

    with Image.open(image_path(index)) as file:
        width, height = file.size
    return height, width


def _rescale_detections(detections: dict, size: tuple[int, int], original_size: tuple[int, int]) -> dict:
    """Boxes and soft masks [D, 1, h, w] of an image resized to ``size``, back at ``original_size``."""
    detections = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in detections.items()}
    if tuple(size) == tuple(original_size):
        return detections
    (h, w), (height, width) = size, original_size
    masks = detections["masks"].float()
    masks = (F.interpolate(masks, size=original_size, mode="bilinear", align_corners=False)
             if len(masks) else masks.new_zeros((0, 1, height, width)))  # (D, 1, h, w) -> (D, 1, H, W)  # fmt: skip
    scale = torch.tensor([width / w, height / h, width / w, height / h])
    return {**detections, "boxes": detections["boxes"] * scale, "masks": masks}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, device: str | torch.device | None = None,
            progress: bool = True) -> list[dict]:  # fmt: skip
    """COCO results (``detections_to_coco_results``) for every image of ``dataset``.

    The model sees the dataset's images as they come (resized by its transforms, if any);
    boxes and masks are mapped back to the size of the image file, which is the size of the
    ground truth ``evaluate`` compares them with.
    """
    device = next(model.parameters()).device if device is None else resolve_device(device)
    was_training = model.to(device).training
    model.eval()
    results = []
    for index in tqdm(range(len(dataset)), desc="predict", unit="img", disable=not progress):
        image, target = dataset[index]
        detections, _ = model([image.to(device)])
        detections = _rescale_detections(detections[0], image.shape[-2:], _original_size(dataset, index, image))
        results += detections_to_coco_results(target["image_id"], detections)
    model.train(was_training)
    return results
