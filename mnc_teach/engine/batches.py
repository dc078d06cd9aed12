"""Which images each training step sees: the datasets of a config, a seeded epoch order with
flips, and the loader that serves one epoch from any step on.

The images of step ``s`` are a pure function of ``(seed, s)``: epoch ``e`` visits the training
set in the order (and with the flips) drawn by ``numpy.random.default_rng([seed, e])``, so a
resumed run skips to step ``s`` by index and sees what the uninterrupted run saw.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mnc_teach.config import MNCConfig
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.data.transforms import RandomHorizontalFlip, ResizeShortestSide, collate
from mnc_teach.data.voc import VOCInstanceSegmentation, find_voc_dir

__all__ = [
    "FLIP_PROBABILITY", "FlipByKey", "build_datasets", "epoch_loader", "epoch_order", "to_device",
]

FLIP_PROBABILITY = 0.5  # MNC trains on every image and its mirror (TRAIN.USE_FLIPPED, MNC_SPEC §7)


def build_datasets(cfg: MNCConfig) -> tuple[VOCInstanceSegmentation, VOCInstanceSegmentation]:
    """The train and val datasets of ``cfg.data``, resized to its ``min_size`` / ``max_size``.

    Flips are not a dataset transform: the loop draws them with the data order
    (:func:`epoch_order`). The shapes dataset is generated (``generate_shapes(root, seed=0)``)
    when its folder is missing or empty, never into a folder that holds something else.

    Raises:
        FileNotFoundError: the data is missing (the message says how to get it).
        ValueError: ``data.root`` holds other files but no dataset, or a dataset whose number of
            classes is not ``cfg.num_classes`` (e.g. VOC under the shapes preset).
    """
    data, root = cfg.data, Path(cfg.data.root).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"data.root {root} is a file; set --data-root to a dataset folder")
    if data.dataset == "shapes" and not _holds_voc_layout(root):
        if root.is_dir() and any(root.iterdir()):
            raise ValueError(
                f"data.root {root} holds files but no shapes dataset (VOCdevkit/VOC2012); "
                "point --data-root at the folder holding VOCdevkit, or at a new or empty "
                "folder to generate the shapes dataset in"
            )
        print(f"no shapes dataset in {root}: generating it "
              f"(python -m mnc_teach shapes --root {root})")
        generate_shapes(root, seed=0)
    fmt = "voc" if data.dataset == "shapes" else data.format
    resize = ResizeShortestSide(data.min_size, data.max_size)
    try:
        datasets = tuple(
            VOCInstanceSegmentation(root, split=split, format=fmt, transforms=resize)
            for split in (data.train_split, data.val_split)
        )
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error} (the config's data.root is {root}; set it with --data-root DIR)"
        ) from None
    found = datasets[0]
    if found.num_classes != cfg.num_classes:
        raise ValueError(
            f"data.root {root} holds a dataset of {found.num_classes} classes "
            f"({', '.join(found.class_names[1:4])}, ...) in {found.root}, but the config "
            f"({cfg.preset}) trains {cfg.num_classes}; choose the preset of that dataset "
            "(--preset) or another --data-root"
        )
    return datasets


def _holds_voc_layout(root: Path) -> bool:
    """Whether ``root`` is, or holds, a folder in VOC 2012's layout (see ``find_voc_dir``)."""
    try:
        find_voc_dir(root)
    except FileNotFoundError:
        return False
    return True


def epoch_order(num_images: int, *, seed: int, epoch: int, flip: bool) -> list[tuple[int, bool]]:
    """``(dataset index, flip?)`` for every image of epoch ``epoch``; a function of ``seed`` and
    ``epoch`` only."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_images)
    flips = rng.random(num_images) < FLIP_PROBABILITY if flip else np.zeros(num_images, dtype=bool)
    return list(zip(order.tolist(), flips.tolist(), strict=True))


class FlipByKey(Dataset):
    """``dataset[(index, flip)]``: item ``index``, mirrored when ``flip`` (the sampler decides)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.mirror = dataset, RandomHorizontalFlip(p=1.0)

    def __getitem__(self, key: tuple[int, bool]):
        index, flip = key
        image, target = self.dataset[index]
        return self.mirror(image, target) if flip else (image, target)


def epoch_loader(
    dataset: Dataset, cfg: MNCConfig, *, epoch: int, first_step: int, steps_per_epoch: int
) -> DataLoader:
    """Micro-batches of epoch ``epoch`` from its step ``first_step`` on (earlier ones skipped by
    index). The loader has its own seeded generator: the global RNG stays untouched."""
    per_step = cfg.train.images_per_batch * cfg.train.accumulate
    order = epoch_order(len(dataset), seed=cfg.train.seed, epoch=epoch, flip=cfg.data.flip)
    keys = order[first_step * per_step : steps_per_epoch * per_step]
    return DataLoader(
        FlipByKey(dataset),
        batch_size=cfg.train.images_per_batch,
        sampler=keys,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        worker_init_fn=_ignore_interrupts,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def _ignore_interrupts(worker_id: int) -> None:
    """Workers ignore Ctrl-C: the main process decides (stop after the step); workers load on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def to_device(
    images: list[Tensor], targets: list[dict] | None, device: torch.device
) -> tuple[list[Tensor], list[dict] | None]:
    """The images and the tensors of the targets on ``device`` (other target values as they are)."""
    images = [image.to(device, non_blocking=True) for image in images]
    if targets is not None:
        targets = [
            {k: v.to(device) if isinstance(v, Tensor) else v for k, v in target.items()}
            for target in targets
        ]
    return images, targets
