"""A plain, seeded training loop with callbacks, atomic checkpoints and exact resume (DESIGN.md §4.7, §6).

    history = train(shapes_cpu(), "runs/first")           # prints a tqdm bar and a line every log_every steps
    history = train(cfg, "runs/first", resume=True)       # continues from runs/first/checkpoint.pt

One optimiser step = ``cfg.train.accumulate`` micro-batches of ``cfg.train.images_per_batch``
images (MNC: 1 image x ``iter_size`` 8, MNC_SPEC §7). The images of step ``s`` are a pure
function of ``(seed, s)``: epoch ``e`` visits the training set in the order (and with the
flips) drawn by ``numpy.random.default_rng([seed, e])``, and a resumed run skips to step ``s``
by index. Together with the saved RNG states this makes ``N steps + resume to 2N`` give the
same losses as ``2N`` steps straight.

Callbacks are objects with any of ``on_train_start``, ``on_step_end``, ``on_validation``,
``on_train_end``, each called with the :class:`TrainState`; setting ``state.stop_requested``
ends the run cleanly after the current step, with a checkpoint. Ctrl-C (or a Jupyter kernel
interrupt) does the same when training runs in the main thread; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import bisect
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mnc_teach.checkpoint import (
    CHECKPOINT_NAME,
    TrainHistory,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    save_history,
    seed_everything,
)
from mnc_teach.config import MNCConfig, TrainConfig, override
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.data.transforms import RandomHorizontalFlip, ResizeShortestSide, collate
from mnc_teach.data.voc import VOCInstanceSegmentation

__all__ = [
    "Callback", "ProgressPrinter", "TrainState", "build_datasets", "epoch_order",
    "cpu_threads", "load_model", "lr_factor", "make_optimizer", "model_from_checkpoint", "predict", "train",
    "train_one_epoch", "train_one_step", "validation_losses",
]  # fmt: skip

FLIP_PROBABILITY = 0.5  # MNC trains on every image and its mirror (TRAIN.USE_FLIPPED, MNC_SPEC §7)
MAX_VAL_IMAGES = 50  # validation losses use the first 50 val images (an eval forward also runs detection)


@dataclass
class TrainState:
    """Everything the loop works with; callbacks receive it (read it, or set ``stop_requested``)."""

    cfg: MNCConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    out_dir: Path
    history: TrainHistory
    max_steps: int
    step: int = 0  # optimiser steps done
    start_step: int = 0  # step this session started from (> 0 after resume)
    checkpoint_step: int = -1  # step of the last checkpoint written or loaded
    losses: dict[str, float] = field(default_factory=dict)  # last step: each term and "total"
    val_losses: dict[str, float] | None = None  # last validation
    lr: float = 0.0  # learning rate of the last step
    images_per_s: float = 0.0
    elapsed_s: float = 0.0  # wall time of this session so far
    stop_requested: bool = False

    @property
    def eta_s(self) -> float:
        """Seconds left at this session's average speed (nan before the first step)."""
        done = self.step - self.start_step
        return (self.max_steps - self.step) * self.elapsed_s / done if done else float("nan")

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME


class Callback(Protocol):
    """What the loop calls; a callback may define any subset of these methods."""

    def on_train_start(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_validation(self, state: TrainState) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...


def _call(callbacks: Sequence[Any], event: str, state: TrainState) -> None:
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(state)


def format_seconds(seconds: float) -> str:
    """``1m05s``, ``2h03m``; ``?`` for nan."""
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


class ProgressPrinter:
    """The default callback: a tqdm bar over the steps and a printed line every ``log_every`` steps."""

    def __init__(self, log_every: int | None = None, bar: bool = True) -> None:
        self.log_every, self.bar, self._tqdm = log_every, bar, None

    def _print(self, line: str) -> None:
        (self._tqdm.write if self._tqdm is not None else print)(line)

    def on_train_start(self, state: TrainState) -> None:
        if self.bar:
            self._tqdm = tqdm(total=state.max_steps, initial=state.step, desc="train", unit="step")
        self._print(f"training {state.max_steps - state.step} steps on {state.device} -> {state.checkpoint_path}")

    def on_step_end(self, state: TrainState) -> None:
        if self._tqdm is not None:
            self._tqdm.update(1)
            self._tqdm.set_postfix(loss=f"{state.losses['total']:.3f}", refresh=False)
        every = self.log_every or state.cfg.train.log_every
        if state.step % every == 0 or state.step == state.max_steps:
            terms = "  ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in state.losses.items() if k != "total")
            self._print(f"step {state.step}/{state.max_steps}  loss {state.losses['total']:.4f}  ({terms})  "
                        f"lr {state.lr:.2e}  {state.images_per_s:.1f} img/s  eta {format_seconds(state.eta_s)}")

    def on_validation(self, state: TrainState) -> None:
        terms = "  ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in state.val_losses.items() if k != "total")
        self._print(f"step {state.step}: val loss {state.val_losses['total']:.4f}  ({terms})")

    def on_train_end(self, state: TrainState) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        how = "stopped" if state.step < state.max_steps else "finished"
        self._print(f"{how} at step {state.step}; checkpoint {state.checkpoint_path}")


# ----------------------------------------------------------------------------- data


def build_datasets(cfg: MNCConfig) -> tuple[VOCInstanceSegmentation, VOCInstanceSegmentation]:
    """Train and val datasets of ``cfg.data``, resized by ``ResizeShortestSide(min_size, max_size)``.

    Flips are not a dataset transform: the loop draws them with the data order (:func:`epoch_order`).
    The shapes dataset is generated (``generate_shapes(root, seed=0)``) when its folder is missing.
    """
    data, root = cfg.data, Path(cfg.data.root).expanduser()
    if data.dataset == "shapes" and not (root / "VOCdevkit" / "VOC2012").exists():
        print(f"no shapes dataset in {root}: generating it (python -m mnc_teach shapes --root {root})")
        generate_shapes(root, seed=0)
    fmt = "voc" if data.dataset == "shapes" else data.format
    resize = ResizeShortestSide(data.min_size, data.max_size)
    try:
        return tuple(
            VOCInstanceSegmentation(root, split=split, format=fmt, transforms=resize)
            for split in (data.train_split, data.val_split)
        )
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error} (the config's data.root is {root}; set it with --data-root DIR)") from None


def epoch_order(num_images: int, seed: int, epoch: int, flip: bool) -> list[tuple[int, bool]]:
    """``(dataset index, flip?)`` for every image of epoch ``epoch``; depends on ``(seed, epoch)`` only."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_images)
    flips = rng.random(num_images) < FLIP_PROBABILITY if flip else np.zeros(num_images, dtype=bool)
    return list(zip(order.tolist(), flips.tolist(), strict=True))


class _FlipByKey(Dataset):
    """``dataset[(index, flip)]``: item ``index``, mirrored when ``flip`` (decided by the sampler)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.mirror = dataset, RandomHorizontalFlip(p=1.0)

    def __getitem__(self, key: tuple[int, bool]):
        index, flip = key
        image, target = self.dataset[index]
        return self.mirror(image, target) if flip else (image, target)


def _epoch_loader(dataset: Dataset, cfg: MNCConfig, epoch: int, first_step: int, steps_per_epoch: int) -> DataLoader:
    """Micro-batches of epoch ``epoch`` from its step ``first_step`` on (earlier ones skipped by index)."""
    per_step = cfg.train.images_per_batch * cfg.train.accumulate
    keys = epoch_order(len(dataset), cfg.train.seed, epoch, cfg.data.flip)[first_step * per_step : steps_per_epoch * per_step]
    return DataLoader(_FlipByKey(dataset), batch_size=cfg.train.images_per_batch, sampler=keys, collate_fn=collate,
                      num_workers=cfg.data.num_workers, worker_init_fn=_ignore_interrupts,
                      generator=torch.Generator().manual_seed(cfg.train.seed))  # its own: the global RNG stays untouched


def _ignore_interrupts(worker_id: int) -> None:
    """Workers ignore Ctrl-C: the main process decides (stop after the step), workers keep loading."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _to_device(images: list[Tensor], targets: list[dict] | None, device: torch.device):
    images = [image.to(device, non_blocking=True) for image in images]
    if targets is not None:
        targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
    return images, targets


# ----------------------------------------------------------------------------- optimisation


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimiser step ``step`` (0-based): a linear warm-up from
    ``warmup_factor`` to 1 over ``warmup_steps``, times ``gamma`` for each of ``lr_steps`` passed."""
    warmup = 1.0
    if step < cfg.warmup_steps:
        alpha = step / cfg.warmup_steps
        warmup = cfg.warmup_factor * (1 - alpha) + alpha
    return warmup * cfg.gamma ** bisect.bisect_right(sorted(cfg.lr_steps), step)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW (``cfg.optimizer``); weight decay on weights only,
    not on biases and norm parameters (1-d) [code train.prototxt: biases decay_mult 0]. Frozen
    parameters are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]  # fmt: skip
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"train.optimizer is {cfg.optimizer!r}; choose 'sgd' or 'adamw'")


def train_one_step(state: TrainState, micro_batches: list[tuple[list[Tensor], list[dict]]]) -> dict[str, float]:
    """One optimiser step over ``accumulate`` micro-batches; returns each loss term (mean) and ``total``."""
    cfg, model, device = state.cfg.train, state.model, state.device
    amp = cfg.amp and device.type == "cuda"
    state.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for images, targets in micro_batches:
        images, targets = _to_device(images, targets, device)
        with torch.autocast(device.type, enabled=amp):
            _, losses = model(images, targets)
        for name, value in losses.items():
            if not torch.isfinite(value):
                raise FloatingPointError(f"step {state.step + 1}: {name} is {value.item()}")
            sums[name] = sums.get(name, 0.0) + value.item() / len(micro_batches)
        state.scaler.scale(sum(losses.values()) / len(micro_batches)).backward()
    if cfg.grad_clip_norm is not None:
        state.scaler.unscale_(state.optimizer)  # clip the true gradients, not the AMP-scaled ones
        params = [p for group in state.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return {**sums, "total": sum(sums.values())}


def train_one_epoch(state: TrainState, loader: DataLoader, callbacks: Sequence[Any], val_dataset: Dataset | None) -> None:
    """Optimiser steps over ``loader`` until it ends, ``max_steps`` is reached or a stop is requested."""
    cfg, micro_batches, tick = state.cfg.train, [], time.perf_counter()
    for images, targets in loader:
        micro_batches.append((images, targets))
        if len(micro_batches) < cfg.accumulate:
            continue
        state.losses = train_one_step(state, micro_batches)
        state.lr = state.optimizer.param_groups[0]["lr"]  # the rate this step used
        state.scheduler.step()
        state.step += 1
        now = time.perf_counter()
        state.images_per_s = sum(len(imgs) for imgs, _ in micro_batches) / (now - tick)
        state.elapsed_s, tick, micro_batches = state.elapsed_s + now - tick, now, []
        state.history.steps.append({"step": state.step, **state.losses, "lr": state.lr, "images_per_s": state.images_per_s})
        _call(callbacks, "on_step_end", state)
        if cfg.val_every > 0 and state.step % cfg.val_every == 0 and val_dataset is not None:
            state.val_losses = validation_losses(state.model, val_dataset, device=state.device, batch_size=cfg.images_per_batch)
            state.history.val.append({"step": state.step, **state.val_losses})
            _call(callbacks, "on_validation", state)
            if state.step % cfg.checkpoint_every != 0:
                save_history(state)  # a viewer of the run sees the validation now (a checkpoint writes it too)
        if state.step % cfg.checkpoint_every == 0:
            save_checkpoint(state)
        now = time.perf_counter()
        state.elapsed_s, tick = state.elapsed_s + now - tick, now  # callbacks and validation count for the ETA
        if state.step >= state.max_steps or state.stop_requested:
            return


@torch.no_grad()
def validation_losses(model: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 1,
                      max_images: int = MAX_VAL_IMAGES) -> dict[str, float]:  # fmt: skip
    """Mean loss terms (and ``total``) on the first ``max_images`` images, in eval mode. The RNG
    state is restored afterwards, so validating does not change the training run."""
    was_training, sums, count = model.training, {}, 0
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for start in range(0, min(len(dataset), max_images), batch_size):
            stop = min(start + batch_size, len(dataset), max_images)
            images, targets = _to_device(*collate([dataset[i] for i in range(start, stop)]), device)
            _, losses = model(images, targets, detect=False)  # losses only: no inference
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(images)
            count += len(images)
    model.train(was_training)
    means = {name: total / max(count, 1) for name, total in sums.items()}
    return {**means, "total": sum(means.values())}


@contextmanager
def _stop_on_interrupt(state: TrainState):
    """In the main thread, the first Ctrl-C requests a clean stop; the second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame) -> None:
        if state.stop_requested:
            raise KeyboardInterrupt
        state.stop_requested = True
        print("\ninterrupt: stopping after this step with a checkpoint (Ctrl-C again aborts now)", flush=True)

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- the run


def _build_model(cfg: MNCConfig) -> nn.Module:
    """``build_mnc(cfg)``, imported here: the loop itself works with any model of the same interface."""
    from mnc_teach.cascade import build_mnc

    return build_mnc(cfg)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but torch.cuda.is_available() is False; use device 'cpu'")
    return device


def train(
    cfg: MNCConfig, out_dir: str | os.PathLike, *, resume: bool = False, callbacks: Sequence[Any] | None = None,
    device: str | torch.device | None = None, model: nn.Module | None = None,
    datasets: tuple[Dataset, Dataset | None] | None = None, overwrite: bool = False,
) -> TrainHistory:  # fmt: skip
    """Train ``build_mnc(cfg)`` (or ``model``) for ``cfg.train.max_steps`` optimiser steps.

    Args:
        cfg: the run's configuration; ``cfg.train`` and ``cfg.data`` are read here.
        out_dir: gets ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end) and ``history.json``
            (at the start, after each validation and with each checkpoint; see ``mnc_teach.run_viewer``).
        resume: continue from ``out_dir/checkpoint.pt``; only RESUMABLE_CHANGES may differ from its config.
        callbacks: objects with on_train_start / on_step_end / on_validation / on_train_end;
            default ``[ProgressPrinter()]``; pass ``()`` for a silent run.
        device: default CUDA when available. AMP (``cfg.train.amp``) is used on CUDA only.
        model: a model with MNC's interface instead of ``build_mnc(cfg)``.
        datasets: ``(train, val or None)`` instead of :func:`build_datasets`.
        overwrite: start afresh although ``out_dir`` holds a checkpoint (it is replaced).

    Returns:
        The run's :class:`TrainHistory` (of the whole run, including the steps before a resume).

    Raises:
        FloatingPointError: a loss term became nan/inf (named with the step); the last checkpoint is kept.
    """
    out_dir, t = Path(out_dir).expanduser(), cfg.train
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"cannot resume: {checkpoint_path} does not exist; train without resume first")
    if not resume and checkpoint_path.exists() and not overwrite:
        raise FileExistsError(f"{checkpoint_path} exists; resume it (--resume), choose another --out, or pass overwrite=True")
    if min(t.images_per_batch, t.accumulate, t.checkpoint_every, t.log_every) < 1:
        raise ValueError("train.images_per_batch, accumulate, checkpoint_every and log_every must be >= 1")
    device = _device(device)
    train_ds, val_ds = datasets if datasets is not None else build_datasets(cfg)  # data errors before a weights download
    steps_per_epoch = len(train_ds) // (t.images_per_batch * t.accumulate)  # the remainder waits for the next epoch
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {len(train_ds)} images, fewer than one step's "
                         f"{t.images_per_batch} x {t.accumulate}; lower train.images_per_batch or train.accumulate")  # fmt: skip
    seed_everything(t.seed)  # before the model is built: same seed, same initial weights
    model = (model if model is not None else _build_model(cfg)).to(device)
    optimizer = make_optimizer(model, t)
    state = TrainState(
        cfg=cfg, model=model, optimizer=optimizer, device=device, out_dir=out_dir, history=TrainHistory(),
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, t)),
        scaler=torch.amp.GradScaler(device.type, enabled=t.amp and device.type == "cuda"), max_steps=t.max_steps,
    )  # fmt: skip
    if resume:
        restore_checkpoint(state, load_checkpoint(checkpoint_path))
    callbacks = [ProgressPrinter()] if callbacks is None else list(callbacks)
    save_history(state)  # a fresh run replaces the history.json of an overwritten one at once
    model.train()
    _call(callbacks, "on_train_start", state)
    with cpu_threads(t.cpu_threads if device.type == "cpu" else None):
        _run(state, callbacks, train_ds, val_ds, steps_per_epoch, checkpoint_path)
    if state.checkpoint_step != state.step:
        save_checkpoint(state)
    _call(callbacks, "on_train_end", state)
    return state.history


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


def _run(state: TrainState, callbacks: list, train_ds: Dataset, val_ds: Dataset | None, steps_per_epoch: int,
         checkpoint_path: Path) -> None:  # fmt: skip
    """The epochs of :func:`train`, with Ctrl-C handling and a clear message on a non-finite loss."""
    cfg = state.cfg
    try:
        with _stop_on_interrupt(state):
            while state.step < state.max_steps and not state.stop_requested:
                epoch, first_step = divmod(state.step, steps_per_epoch)
                loader = _epoch_loader(train_ds, cfg, epoch, first_step, steps_per_epoch)
                train_one_epoch(state, loader, callbacks, val_ds)
    except FloatingPointError as error:
        kept = (f"the last good checkpoint {checkpoint_path} (step {state.checkpoint_step}) is kept"
                if state.checkpoint_step >= 0 else "no checkpoint was written yet")  # fmt: skip
        raise FloatingPointError(f"{error}; {kept}. Lower train.lr or set train.grad_clip_norm") from None


def load_model(checkpoint_path: str | os.PathLike, device: str | torch.device | None = None) -> tuple[nn.Module, MNCConfig]:
    """The trained model (in eval mode, on ``device``) and its config, from a checkpoint."""
    return model_from_checkpoint(load_checkpoint(checkpoint_path), device)


def model_from_checkpoint(checkpoint: dict, device: str | torch.device | None = None) -> tuple[nn.Module, MNCConfig]:
    """:func:`load_model` for a checkpoint already read (``load_checkpoint``), e.g. to read its step too."""
    cfg = MNCConfig.from_dict(checkpoint["config"])
    model = _build_model(override(cfg, "backbone.pretrained", False))  # the weights come from the checkpoint
    model.load_state_dict(checkpoint["model"])
    return model.to(_device(device)).eval(), cfg


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
    from mnc_teach.predictions import detections_to_coco_results

    device = next(model.parameters()).device if device is None else _device(device)
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
