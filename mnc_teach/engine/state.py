"""What a training run is while it runs: its state, its history, and the callbacks that watch it.

    TrainState     everything the loop works with; callbacks read it (or set ``stop_requested``)
    TrainHistory   the loss curves of a run, saved as ``history.json`` next to the checkpoint
    Callback       the four events the loop calls; ProgressPrinter is the default one

The loop (:mod:`mnc_teach.engine.loop`) fills these; checkpoints
(:mod:`mnc_teach.engine.checkpoint`) save and restore them; the dashboard and the run viewer
(:mod:`mnc_teach.widgets`) read them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mnc_teach.config import MNCConfig
from mnc_teach.engine.distributed import SINGLE_PROCESS, World
from mnc_teach.fileio import write_text_atomically
from mnc_teach.structures import LOSS_PREFIX, loss_terms

__all__ = [
    "CHECKPOINT_NAME", "DIVERGENCE_FACTOR", "HISTORY_NAME", "RENAMED_LOSS_TERMS", "Callback",
    "ProgressPrinter", "TrainHistory", "TrainState", "call_callbacks", "format_seconds",
]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"


# Loss terms renamed since older runs were saved: old name -> name the model reports now. History
# read from history.json or a checkpoint goes through this, so old runs plot and resume as new ones.
RENAMED_LOSS_TERMS = {
    "loss_cls": "loss_cls_mask",
    "loss_box": "loss_box_reg",
    "loss_cls_s5": "loss_cls_mask_s5",
    "loss_box_s5": "loss_box_reg_s5",
}


# A run diverges when its total loss grows this many times above its early level (the lowest
# total of its first EARLY_STEPS steps); a healthy run's loss falls from there.
DIVERGENCE_FACTOR = 100.0
EARLY_STEPS = 10


def _current_names(entry: dict[str, float]) -> dict[str, float]:
    """``entry`` with its loss terms under today's names (:data:`RENAMED_LOSS_TERMS`), in order."""
    return {RENAMED_LOSS_TERMS.get(key, key): value for key, value in entry.items()}


@dataclass
class TrainHistory:
    """What a run measured. ``steps``: one dict per optimiser step with ``step``, every loss
    term, ``total``, ``lr`` and ``images_per_s``; ``val``: one dict per validation with
    ``step``, every loss term and ``total``. Saved as ``history.json`` next to the checkpoint."""

    steps: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)

    def terms(self) -> list[str]:
        """Loss term names (``loss_*``) in the order they first appear."""
        return loss_terms(self.steps + self.val)

    def to_dict(self) -> dict[str, list[dict[str, float]]]:
        return {"steps": self.steps, "val": self.val}

    @classmethod
    def from_dict(cls, values: dict) -> TrainHistory:
        """The inverse of :meth:`to_dict`; loss terms saved under an old name
        (:data:`RENAMED_LOSS_TERMS`) come back under the current one."""
        return cls(
            steps=[_current_names(entry) for entry in values.get("steps", [])],
            val=[_current_names(entry) for entry in values.get("val", [])],
        )

    def divergence(self) -> str | None:
        """Why the run looks diverged (its last total loss is :data:`DIVERGENCE_FACTOR` times
        its early level or more, or not finite), or None."""
        if not self.steps:
            return None
        early = min(entry["total"] for entry in self.steps[:EARLY_STEPS])
        last = self.steps[-1]
        if np.isfinite(last["total"]) and (early <= 0 or last["total"] < DIVERGENCE_FACTOR * early):
            return None
        ratio = last["total"] / early if early > 0 else float("inf")
        times = f"{ratio:.0f}" if ratio < 1e5 else f"{ratio:.1e}"
        return (
            f"the loss diverged: {last['total']:.3g} at step {last['step']}, {times} times its "
            f"early level {early:.3g}; lower train.lr or set train.grad_clip_norm"
        )

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomically(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainHistory:
        return cls.from_dict(json.loads(Path(path).read_text()))


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
    images_per_s: float = 0.0  # of all processes together
    elapsed_s: float = 0.0  # wall time of this session so far
    stop_requested: bool = False
    # the processes training together (torchrun): callbacks run in process 0 only
    world: World = SINGLE_PROCESS
    # DistributedDataParallel(model) when several processes train: the training forward calls it
    ddp_model: nn.Module | None = None

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


def call_callbacks(callbacks: Sequence[Any], event: str, state: TrainState) -> None:
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


def _terms_text(losses: dict[str, float]) -> str:
    """``rpn_obj 0.6931  mask 0.6931 ...``: each loss term of ``losses`` but the total."""
    return "  ".join(
        f"{name.removeprefix(LOSS_PREFIX)} {value:.4f}"
        for name, value in losses.items()
        if name != "total"
    )


class ProgressPrinter:
    """The default callback: a tqdm bar over the steps, a printed line every ``log_every`` steps."""

    def __init__(self, log_every: int | None = None, bar: bool = True) -> None:
        self.log_every, self.bar, self._tqdm = log_every, bar, None
        self._warned = False  # the divergence warning is printed once

    def _print(self, line: str) -> None:
        (self._tqdm.write if self._tqdm is not None else print)(line)

    def on_train_start(self, state: TrainState) -> None:
        if self.bar:
            self._tqdm = tqdm(total=state.max_steps, initial=state.step, desc="train", unit="step")
        steps_left, others = state.max_steps - state.step, state.world.size - 1
        where = f"{state.device}" + (f" and {others} more processes" if others else "")
        self._print(f"training {steps_left} steps on {where} -> {state.checkpoint_path}")

    def on_step_end(self, state: TrainState) -> None:
        if self._tqdm is not None:
            self._tqdm.update(1)
            self._tqdm.set_postfix(loss=f"{state.losses['total']:.3f}", refresh=False)
        every = self.log_every or state.cfg.train.log_every
        if state.step % every == 0 or state.step == state.max_steps:
            self._print(
                f"step {state.step}/{state.max_steps}  loss {state.losses['total']:.4f}  "
                f"({_terms_text(state.losses)})  lr {state.lr:.2e}  "
                f"{state.images_per_s:.1f} img/s  eta {format_seconds(state.eta_s)}"
            )
        diverged = state.history.divergence()
        if diverged and not self._warned:
            self._print(f"warning: step {state.step}: {diverged}")
        self._warned = self._warned or bool(diverged)

    def on_validation(self, state: TrainState) -> None:
        losses = state.val_losses
        self._print(f"step {state.step}: val loss {losses['total']:.4f}  ({_terms_text(losses)})")

    def on_train_end(self, state: TrainState) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        how = "stopped" if state.step < state.max_steps else "finished"
        diverged = state.history.divergence()
        self._print(
            f"{how} at step {state.step}; checkpoint {state.checkpoint_path}"
            + (f"; {diverged}" if diverged else "")
        )
