"""The training loop: seeded, with callbacks, atomic checkpoints and exact resume (DESIGN.md §4.7).

    history = train(shapes_cpu(), "runs/first")      # a tqdm bar and a line every log_every steps
    history = train(cfg, "runs/first", resume=True)  # continues from runs/first/checkpoint.pt

One optimiser step = ``cfg.train.accumulate`` micro-batches of ``cfg.train.images_per_batch`` images
(MNC: 1 image x ``iter_size`` 8, docs/paper_vs_code.md: training). The images of step ``s`` are a
pure function of ``(seed, s)`` (:mod:`mnc_teach.engine.batches`), and a resumed run skips to step
``s`` by index. Together with the saved RNG states this makes ``N steps + resume to 2N`` give the
same losses as ``2N`` steps straight.

Callbacks are objects with any of ``on_train_start``, ``on_step_end``, ``on_validation``,
``on_train_end``, each called with the :class:`~mnc_teach.engine.state.TrainState`; setting
``state.stop_requested`` ends the run cleanly after the current step, with a checkpoint. Ctrl-C
(or a Jupyter kernel interrupt) does the same when training runs in the main thread; a second
Ctrl-C aborts at once. What a run saves and how it resumes is :mod:`mnc_teach.engine.checkpoint`.

Mixed precision (``cfg.train.amp``, on CUDA only): bfloat16 where the GPU computes it natively,
else float16 with a gradient scaler (:func:`autocast_dtype`).

Several processes: ``torchrun --nproc_per_node=N -m mnc_teach train ...`` runs this same loop in
N processes (:mod:`mnc_teach.engine.distributed`). They share each step's images
(:func:`~mnc_teach.engine.batches.split_step`), DistributedDataParallel averages their gradients,
and the logged losses are the means over the processes, so the run makes the steps one process
would make. Each process draws its own anchor and RoI samples, seeded by ``(seed, rank, step)``;
process 0 writes the checkpoints and ``history.json`` and calls the callbacks; on resume every
process reads the checkpoint. A stop (a callback, Ctrl-C) and a non-finite loss in any process
end the run in all of them after the same step.
"""

from __future__ import annotations

import bisect
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mnc_teach.cascade import build_mnc, cascade_loss
from mnc_teach.config import MNCConfig, TrainConfig, check_config
from mnc_teach.data.transforms import collate
from mnc_teach.engine.batches import build_datasets, split_step, to_device, train_loader
from mnc_teach.engine.checkpoint import (
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    save_history,
    seed_everything,
)
from mnc_teach.engine.distributed import (
    SINGLE_PROCESS,
    World,
    any_process,
    barrier,
    broadcast_buffers,
    current_world,
    grad_sync,
    main_process_first,
    process_group,
    step_seed,
    sum_over_processes,
    wrap_model,
)
from mnc_teach.engine.inference import cpu_threads, eval_mode
from mnc_teach.engine.state import (
    CHECKPOINT_NAME,
    HISTORY_NAME,
    ProgressPrinter,
    TrainHistory,
    TrainState,
    call_callbacks,
)

__all__ = [
    "autocast_dtype", "lr_factor", "make_optimizer", "train", "train_one_epoch", "train_one_step",
    "validation_losses",
]

MAX_VAL_IMAGES = 50  # validation losses use the first 50 val images only


# ----------------------------------------------------------------------------- optimisation


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimiser step ``step`` (0-based): a linear warm-up from
    ``warmup_factor`` to 1 over ``warmup_steps``, times ``gamma`` for each ``lr_steps`` passed."""
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
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"train.optimizer is {cfg.optimizer!r}; choose 'sgd' or 'adamw'")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype of mixed precision (``cfg.amp``; None: float32 throughout). On CUDA only:
    bfloat16 where the GPU computes it natively (float32's range, so no loss scaling), else
    float16 with a ``GradScaler``."""
    if not cfg.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if _native_bf16(device) else torch.float16


def _native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes bfloat16 natively (Ampere and later; not emulated)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def train_one_step(
    state: TrainState, micro_batches: list[tuple[list[Tensor], list[dict]]]
) -> dict[str, float]:
    """One optimiser step over this process's micro-batches; returns each loss term (mean over
    the micro-batches, and over the processes) and ``total``.

    Raises:
        FloatingPointError: a loss term, the gradient norm or (after the update) a parameter is
            not finite; named with the step. The weights are then not saved (the caller stops).
            With several processes all of them raise it, after the same step.
    """
    cfg, device, world = state.cfg.train, state.device, state.world
    model = state.model if state.ddp_model is None else state.ddp_model
    dtype = autocast_dtype(cfg, device)
    if world.size > 1:  # each process its own samples; a function of the step: resume is exact
        seed_everything(step_seed(cfg.seed, rank=world.rank, step=state.step))
    state.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    for k, (images, targets) in enumerate(micro_batches):
        last = k == len(micro_batches) - 1
        images, targets = to_device(images, targets, device)
        with grad_sync(model, sync=last):  # DDP averages the gradients in the last backward
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                _, losses = model(images, targets)
            for name, value in losses.items():
                number = value.item()
                if not math.isfinite(number) and world.size == 1:
                    raise FloatingPointError(f"step {state.step + 1}: {name} is {number}")
                sums[name] = sums.get(name, 0.0) + number / len(micro_batches)
            if last and world.size > 1:  # before the backward that waits for every process
                sums = _mean_over_processes(sums, state)
            state.scaler.scale(cascade_loss(losses) / len(micro_batches)).backward()
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    state.scaler.unscale_(state.optimizer)  # the true gradients (nothing to do without a scaler)
    # after DDP's all-reduce every process holds the same gradients: the checks below decide alike
    grad_norm = _norm([p.grad for p in params if p.grad is not None])
    # an fp16 scaler skips a step with inf gradients (and lowers its scale): that is expected;
    # in float32 and bfloat16 (no scaler) a non-finite gradient is an error
    if not torch.isfinite(grad_norm) and not state.scaler.is_enabled():
        raise FloatingPointError(f"step {state.step + 1}: the gradient norm is {grad_norm.item()}")
    if cfg.grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    _check_parameters(state.model, step=state.step + 1)
    return {**sums, "total": sum(sums.values())}


def _mean_over_processes(sums: dict[str, float], state: TrainState) -> dict[str, float]:
    """Each loss term's mean over the processes (one all-reduce); a term that is not finite in
    any process is not finite here, and every process raises the same ``FloatingPointError``."""
    world = state.world
    totals = sum_over_processes(list(sums.values()), world=world, device=state.device)
    means = {name: total / world.size for name, total in zip(sums, totals, strict=True)}
    for name, value in means.items():
        if not math.isfinite(value):
            raise FloatingPointError(
                f"step {state.step + 1}: {name} is {value} (the mean over {world.size} processes)"
            )
    return means


def _norm(tensors: list[Tensor]) -> Tensor:
    """The global 2-norm of ``tensors`` (as one vector); inf or nan when any value is."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def _check_parameters(model: nn.Module, *, step: int) -> None:
    """Raise ``FloatingPointError`` naming the first non-finite trainable parameter (one
    device sync for the whole model)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if not finite.all():
        bad = [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]
        raise FloatingPointError(
            f"step {step}: the update made {len(bad)} parameter tensors non-finite "
            f"(first: {bad[0]})"
        )


def train_one_epoch(
    state: TrainState, loader: DataLoader, *, callbacks: Sequence[Any], val_dataset: Dataset | None
) -> None:
    """Optimiser steps over ``loader`` until it ends, ``max_steps`` is reached or a stop is
    requested; validation every ``val_every`` steps, a checkpoint every ``checkpoint_every``."""
    cfg, micro_batches, tick = state.cfg.train, [], time.perf_counter()
    _, accumulate = split_step(cfg.images_per_batch, cfg.accumulate, state.world.size)
    for images, targets in loader:
        micro_batches.append((images, targets))
        if len(micro_batches) < accumulate:
            continue
        state.losses = train_one_step(state, micro_batches)
        state.lr = state.optimizer.param_groups[0]["lr"]  # the rate this step used
        state.scheduler.step()
        state.step += 1
        now = time.perf_counter()
        images_done = state.world.size * sum(len(imgs) for imgs, _ in micro_batches)
        state.images_per_s = images_done / (now - tick)
        state.elapsed_s, tick, micro_batches = state.elapsed_s + now - tick, now, []
        state.history.steps.append(
            {"step": state.step, **state.losses, "lr": state.lr, "images_per_s": state.images_per_s}
        )
        call_callbacks(callbacks, "on_step_end", state)
        if cfg.val_every > 0 and state.step % cfg.val_every == 0 and val_dataset is not None:
            state.val_losses = validation_losses(
                state.model, val_dataset, device=state.device, batch_size=cfg.images_per_batch,
                world=state.world,
            )
            state.history.val.append({"step": state.step, **state.val_losses})
            call_callbacks(callbacks, "on_validation", state)
            if state.step % cfg.checkpoint_every != 0 and state.world.is_main:
                save_history(state)  # a viewer of the run sees the validation now
        if state.step % cfg.checkpoint_every == 0:
            _save_checkpoint(state)  # (it writes the history too)
        now = time.perf_counter()  # callbacks and validation count for the ETA too
        state.elapsed_s, tick = state.elapsed_s + now - tick, now
        # a stop asked for in one process (a callback, Ctrl-C) stops them all after this step
        state.stop_requested = any_process(
            state.stop_requested, world=state.world, device=state.device
        )
        if state.step >= state.max_steps or state.stop_requested:
            return


def _save_checkpoint(state: TrainState) -> None:
    """Process 0 writes the checkpoint (and the history); the others note its step."""
    if state.world.is_main:
        save_checkpoint(state)
    else:
        state.checkpoint_step = state.step


@torch.no_grad()
def validation_losses(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 1,
    max_images: int = MAX_VAL_IMAGES,
    world: World = SINGLE_PROCESS,
) -> dict[str, float]:
    """Mean loss terms (and ``total``) on the first ``max_images`` images, in eval mode. The RNG
    state is restored afterwards, so validating does not change the training run. With several
    processes (``world``) each takes every N-th batch, with process 0's BatchNorm statistics,
    and every process gets the means over all of them."""
    sums, count = {}, 0
    broadcast_buffers(model, world=world)
    num_images = min(len(dataset), max_images)
    starts = range(world.rank * batch_size, num_images, world.size * batch_size)
    # a process left without a batch still names the terms (the first batch, weighted 0)
    weight = 1 if starts or num_images == 0 else 0
    with eval_mode(model):
        for start in starts or range(min(num_images, 1)):
            stop = min(start + batch_size, num_images)
            images, targets = to_device(*collate([dataset[i] for i in range(start, stop)]), device)
            _, losses = model(images, targets, detect=False)  # losses only: no inference
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(images) * weight
            count += len(images) * weight
    if world.size > 1:  # every process computes the same terms
        totals = sum_over_processes([*sums.values(), count], world=world, device=device)
        sums, count = dict(zip(sums, totals[:-1], strict=True)), totals[-1]
    means = {name: total / max(count, 1) for name, total in sums.items()}
    return {**means, "total": sum(means.values())}


@contextmanager
def _stop_on_interrupt(state: TrainState):
    """In the main thread, the first Ctrl-C requests a clean stop; the second one aborts. (A stop
    asked for otherwise, or in another process, does not count: under torchrun each process gets
    the Ctrl-C once, at its own moment.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupts = 0

    def request_stop(signum, frame) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt
        state.stop_requested = True
        if state.world.is_main:
            print(
                "\ninterrupt: stopping after this step with a checkpoint (Ctrl-C again aborts now)",
                flush=True,
            )

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- the run


def train(
    cfg: MNCConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] | None = None,
    device: str | torch.device | None = None,
    model: nn.Module | None = None,
    datasets: tuple[Dataset, Dataset | None] | None = None,
    overwrite: bool = False,
) -> TrainHistory:
    """Train ``build_mnc(cfg)`` (or ``model``) for ``cfg.train.max_steps`` optimiser steps.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; they train together
    (:mod:`mnc_teach.engine.distributed`) and each returns the same history.

    Args:
        cfg: the run's configuration; ``cfg.train`` and ``cfg.data`` are read here.
        out_dir: gets ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end) and
            ``history.json`` (at the start, after each validation and with each checkpoint; see
            ``mnc_teach.widgets.run_viewer``). With several processes: a folder all of them read.
        resume: continue from ``out_dir/checkpoint.pt``; only ``RESUMABLE_CHANGES``
            (:mod:`mnc_teach.engine.checkpoint`) may differ from its config.
        callbacks: objects with on_train_start / on_step_end / on_validation / on_train_end;
            default ``[ProgressPrinter()]``; pass ``()`` for a silent run. Process 0 only.
        device: default CUDA when available (under torchrun: ``cuda:LOCAL_RANK``). Mixed
            precision (``cfg.train.amp``) is used on CUDA only (:func:`autocast_dtype`).
        model: a model with MNC's interface instead of ``build_mnc(cfg)``.
        datasets: ``(train, val or None)`` instead of :func:`build_datasets`.
        overwrite: start afresh although ``out_dir`` holds a run's checkpoint or history
            (they are replaced).

    Returns:
        The run's :class:`TrainHistory` (of the whole run, including the steps before a resume).

    Raises:
        FloatingPointError: a loss term, the gradient norm or a parameter became nan/inf (named
            with the step); the last checkpoint written stays the last one, with finite weights.
    """
    out_dir, t = Path(out_dir).expanduser(), cfg.train
    _check_run_folder(out_dir, resume=resume, overwrite=overwrite)  # (before anyone writes)
    check_config(cfg)  # again: a config's fields may have been changed in place since
    world = current_world()  # torchrun's processes, or this one alone
    split_step(t.images_per_batch, t.accumulate, world.size)  # can the processes share a step?
    with process_group(world, device) as device:
        # the datasets first: a data error comes before a download of pretrained weights
        with main_process_first(world, device):  # a missing shapes dataset is generated once
            train_ds, val_ds = datasets if datasets is not None else build_datasets(cfg)
        steps_per_epoch = _steps_per_epoch(len(train_ds), t)
        state = _new_state(cfg, out_dir, model=model, device=device, world=world)
        if resume:
            restore_checkpoint(state, load_checkpoint(state.checkpoint_path))
        state.ddp_model = wrap_model(state.model, world=world, device=device)
        callbacks = [ProgressPrinter()] if callbacks is None else list(callbacks)
        callbacks = callbacks if world.is_main else []
        if world.is_main:
            save_history(state)  # a fresh run replaces the history.json of an overwritten one
        state.model.train()
        call_callbacks(callbacks, "on_train_start", state)
        loader = train_loader(
            train_ds, cfg, steps_per_epoch=steps_per_epoch, world=world,
            pin_memory=device.type == "cuda",
        )
        with cpu_threads(t.cpu_threads if device.type == "cpu" else None):
            _run_epochs(state, loader, val_ds, callbacks=callbacks, steps_per_epoch=steps_per_epoch)
        if state.checkpoint_step != state.step:
            _save_checkpoint(state)
        call_callbacks(callbacks, "on_train_end", state)
        barrier(world, device)  # every process returns once the last checkpoint is written
    return state.history


def _check_run_folder(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A resumed run needs its checkpoint; a new one must not replace a run's files (its
    checkpoint, or a history.json: perhaps a user's) unless told to."""
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the run folder {out_dir} is a file; choose a folder for --out")
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(
            f"cannot resume: {checkpoint_path} does not exist; train without resume first"
        )
    existing = [p for p in (checkpoint_path, out_dir / HISTORY_NAME) if p.exists()]
    if not resume and existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists; resume that run (--resume), choose another --out, "
            "or replace it (--overwrite, or overwrite=True)"
        )


def _steps_per_epoch(num_images: int, cfg: TrainConfig) -> int:
    """Whole optimiser steps in one pass over the training set; the remainder waits for the next
    epoch."""
    steps = num_images // (cfg.images_per_batch * cfg.accumulate)
    if steps == 0:
        raise ValueError(
            f"the training set has {num_images} images, fewer than one step's "
            f"{cfg.images_per_batch} x {cfg.accumulate}; "
            "lower train.images_per_batch or train.accumulate"
        )
    return steps


def _new_state(
    cfg: MNCConfig,
    out_dir: Path,
    *,
    model: nn.Module | None,
    device: torch.device,
    world: World = SINGLE_PROCESS,
) -> TrainState:
    """Step 0 of a run: the seeded model (same seed, same initial weights in every process), its
    optimiser, learning-rate schedule and AMP scaler (float16 only), and an empty history."""
    t = cfg.train
    seed_everything(t.seed)  # before the model is built
    model = (model if model is not None else build_mnc(cfg)).to(device)
    optimizer = make_optimizer(model, t)
    return TrainState(
        cfg=cfg,
        model=model,
        optimizer=optimizer,
        device=device,
        out_dir=out_dir,
        history=TrainHistory(),
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, t)),
        scaler=torch.amp.GradScaler(
            device.type, enabled=autocast_dtype(t, device) == torch.float16
        ),
        max_steps=t.max_steps,
        world=world,
    )


def _run_epochs(
    state: TrainState,
    loader: DataLoader,
    val_dataset: Dataset | None,
    *,
    callbacks: list,
    steps_per_epoch: int,
) -> None:
    """The epochs of :func:`train` (``loader`` from :func:`train_loader`, set to each epoch in
    turn), with Ctrl-C handling and a clear error on a non-finite loss."""
    state.stop_requested = any_process(state.stop_requested, world=state.world, device=state.device)
    try:
        with _stop_on_interrupt(state):
            while state.step < state.max_steps and not state.stop_requested:
                epoch, first_step = divmod(state.step, steps_per_epoch)
                loader.sampler.set_epoch(epoch, first_step=first_step)
                train_one_epoch(state, loader, callbacks=callbacks, val_dataset=val_dataset)
    except FloatingPointError as error:
        raise FloatingPointError(f"{error}; {_what_is_kept(state)}") from None


def _what_is_kept(state: TrainState) -> str:
    """The end of a non-finite-training message: which checkpoint survives, and what to do."""
    if state.checkpoint_step < 0:
        return "no checkpoint was written yet. Lower train.lr or set train.grad_clip_norm"
    saved = TrainHistory(
        steps=[entry for entry in state.history.steps if entry["step"] <= state.checkpoint_step]
    )
    kept = (
        f"the last checkpoint written, {state.checkpoint_path} (step {state.checkpoint_step}, "
        "finite weights), is kept"
    )
    if saved.divergence():
        kept += ", but its loss had already diverged: train again with --overwrite"
    return f"{kept}. Lower train.lr or set train.grad_clip_norm"
