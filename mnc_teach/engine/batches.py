"""Which images each training step sees: the datasets of a config, a seeded epoch order with
flips (optionally grouped by orientation), how the processes of a torchrun share a step, and the
loader that serves the epochs from any step on.

The images of step ``s`` are a pure function of ``(seed, s)``: epoch ``e`` visits the training
set in the order (and with the flips) drawn by ``numpy.random.default_rng([seed, e])``, so a
resumed run skips to step ``s`` by index and sees what the uninterrupted run saw. With N
processes (:mod:`mnc_teach.engine.distributed`) process ``r`` takes the ``r``-th of N equal
slices of each step's images: together they see the images one process would.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mnc_teach.config import MNCConfig
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.data.transforms import RandomHorizontalFlip, ResizeShortestSide, collate
from mnc_teach.data.voc import VOCInstanceSegmentation, find_voc_dir
from mnc_teach.engine.distributed import SINGLE_PROCESS, World

__all__ = [
    "FLIP_PROBABILITY", "FlipByKey", "StepSampler", "build_datasets", "epoch_loader", "epoch_order",
    "image_orientations", "split_step", "to_device", "train_loader",
]

# MNC trains on every image and its mirror (TRAIN.USE_FLIPPED, docs/paper_vs_code.md: training)
FLIP_PROBABILITY = 0.5


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


def epoch_order(
    num_images: int,
    *,
    seed: int,
    epoch: int,
    flip: bool,
    landscape: Sequence[bool] | None = None,
    batch_size: int = 1,
) -> list[tuple[int, bool]]:
    """``(dataset index, flip?)`` for every image of epoch ``epoch``; a function of ``seed`` and
    ``epoch`` only.

    With ``landscape`` (one flag per image: width >= height) the order is grouped by orientation
    as the official code groups it: runs of ``batch_size`` images of one orientation, in a seeded
    order, so that a micro-batch pads no portrait image to a landscape one's width. The leftovers
    of both orientations (fewer than ``batch_size`` each) end the epoch. Nothing changes when
    all images share an orientation or ``batch_size`` is 1.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_images)
    flips = rng.random(num_images) < FLIP_PROBABILITY if flip else np.zeros(num_images, dtype=bool)
    keys = list(zip(order.tolist(), flips.tolist(), strict=True))
    if landscape is None or batch_size == 1 or len(set(landscape)) < 2:
        return keys
    runs, leftovers = [], []
    for wide in (True, False):
        group = [key for key in keys if bool(landscape[key[0]]) == wide]  # in the seeded order
        cut = len(group) - len(group) % batch_size
        runs += [group[start : start + batch_size] for start in range(0, cut, batch_size)]
        leftovers += group[cut:]
    return [key for i in rng.permutation(len(runs)).tolist() for key in runs[i]] + leftovers


def image_orientations(dataset: Dataset) -> list[bool]:
    """Whether each image of ``dataset`` is landscape (width >= height): read from the file
    headers when the dataset names its files (``image_path``), else from the loaded images.
    Resizing and flipping keep an image's orientation."""
    image_path = getattr(dataset, "image_path", None)
    landscape = []
    for index in range(len(dataset)):
        if image_path is not None:
            with Image.open(image_path(index)) as file:
                width, height = file.size
        else:
            height, width = dataset[index][0].shape[-2:]
        landscape.append(width >= height)
    return landscape


def split_step(images_per_batch: int, accumulate: int, world_size: int) -> tuple[int, int]:
    """``(images per micro-batch, micro-batches per step)`` of each of ``world_size`` processes
    sharing a step of ``images_per_batch x accumulate`` images.

    Micro-batches keep their size and fewer are accumulated where that divides (8 processes
    x 1 image make the paper's 1 image x 8 accumulated); otherwise they get smaller (a divisor of
    ``images_per_batch``, so that a grouped micro-batch stays of one orientation).

    Raises:
        ValueError: the step's images cannot be shared equally among the processes.
    """
    per_step = images_per_batch * accumulate
    if per_step % world_size:
        multiple = world_size // math.gcd(images_per_batch, world_size)
        raise ValueError(
            f"a step of train.images_per_batch x train.accumulate = {images_per_batch} x "
            f"{accumulate} images cannot be shared equally by {world_size} processes; make it a "
            f"multiple of {world_size}, e.g. --set "
            f"train.accumulate={-(-accumulate // multiple) * multiple}"
        )
    shared = math.gcd(accumulate, world_size)  # processes that split the micro-batches
    return images_per_batch * shared // world_size, accumulate // shared


class StepSampler(Sampler[tuple[int, bool]]):
    """The ``(index, flip)`` keys one process feeds, one epoch at a time from a given step on.

    Step ``s`` of epoch ``e`` is ``epoch_order(...)[s * P : (s + 1) * P]`` (P images per step);
    process ``rank`` of ``world_size`` takes the ``rank``-th of its ``world_size`` equal
    consecutive slices. So which images a step sees depends on ``(seed, s)`` only, however many
    processes share it. Choose the epoch with :meth:`set_epoch` before each pass: one
    ``DataLoader`` then serves every epoch and keeps its worker processes.
    """

    def __init__(
        self,
        num_images: int,
        cfg: MNCConfig,
        *,
        steps_per_epoch: int,
        world: World = SINGLE_PROCESS,
        landscape: Sequence[bool] | None = None,
    ) -> None:
        self.num_images, self.cfg, self.world, self.landscape = num_images, cfg, world, landscape
        self.steps_per_epoch, self.epoch, self.first_step = steps_per_epoch, 0, 0
        self.images_per_step = cfg.train.images_per_batch * cfg.train.accumulate
        self.per_process = self.images_per_step // world.size

    def set_epoch(self, epoch: int, *, first_step: int = 0) -> None:
        """The next pass serves epoch ``epoch`` from its step ``first_step`` on."""
        self.epoch, self.first_step = epoch, first_step

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        order = epoch_order(
            self.num_images, seed=self.cfg.train.seed, epoch=self.epoch, flip=self.cfg.data.flip,
            landscape=self.landscape, batch_size=self.cfg.train.images_per_batch,
        )
        for step in range(self.first_step, self.steps_per_epoch):
            start = step * self.images_per_step + self.world.rank * self.per_process
            yield from order[start : start + self.per_process]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.first_step) * self.per_process


class FlipByKey(Dataset):
    """``dataset[(index, flip)]``: item ``index``, mirrored when ``flip`` (the sampler decides)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.mirror = dataset, RandomHorizontalFlip(p=1.0)

    def __getitem__(self, key: tuple[int, bool]):
        index, flip = key
        image, target = self.dataset[index]
        return self.mirror(image, target) if flip else (image, target)


def train_loader(
    dataset: Dataset,
    cfg: MNCConfig,
    *,
    steps_per_epoch: int,
    world: World = SINGLE_PROCESS,
    pin_memory: bool = False,
) -> DataLoader:
    """The micro-batches this process trains on, for a whole run: call
    ``loader.sampler.set_epoch(epoch, first_step=...)`` (:class:`StepSampler`) before each epoch.

    ``cfg.data.num_workers`` processes load the images and stay for the whole run; with
    ``pin_memory`` (on CUDA) batches arrive in page-locked memory, so copies to the GPU overlap
    the computation. ``cfg.data.group_by_aspect`` groups micro-batches by orientation
    (:func:`epoch_order`). The loader has its own seeded generator: the global RNG stays
    untouched.
    """
    t, workers = cfg.train, cfg.data.num_workers
    micro_batch, _ = split_step(t.images_per_batch, t.accumulate, world.size)
    grouped = cfg.data.group_by_aspect and t.images_per_batch > 1
    sampler = StepSampler(
        len(dataset), cfg, steps_per_epoch=steps_per_epoch, world=world,
        landscape=image_orientations(dataset) if grouped else None,
    )
    return DataLoader(
        FlipByKey(dataset),
        batch_size=micro_batch,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,  # safe: the sampler runs here, workers only load keys
        worker_init_fn=_ignore_interrupts,
        generator=torch.Generator().manual_seed(t.seed),
    )


def epoch_loader(
    dataset: Dataset,
    cfg: MNCConfig,
    *,
    epoch: int,
    first_step: int,
    steps_per_epoch: int,
    world: World = SINGLE_PROCESS,
) -> DataLoader:
    """Micro-batches of epoch ``epoch`` from its step ``first_step`` on (earlier ones skipped by
    index): :func:`train_loader` set to that epoch."""
    loader = train_loader(dataset, cfg, steps_per_epoch=steps_per_epoch, world=world)
    loader.sampler.set_epoch(epoch, first_step=first_step)
    return loader


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
            {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
             for k, v in target.items()}
            for target in targets
        ]
    return images, targets
