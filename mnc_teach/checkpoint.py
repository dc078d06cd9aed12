"""Checkpoints and run histories: what a training run writes and how it is read back (DESIGN.md §6).

    out_dir/checkpoint.pt   model, optimiser, scheduler, scaler, step, config, RNG states and history;
                            written atomically (temp file + ``os.replace``), read with ``weights_only=True``
    out_dir/history.json    the loss curves (:class:`TrainHistory`), for plots of running or finished runs;
                            written atomically at the start, after each validation and with each checkpoint

``restore_checkpoint`` puts a :class:`~mnc_teach.train.TrainState` back exactly as it was saved,
so a resumed run continues the loss curve of the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mnc_teach.fileio import write_atomically, write_text_atomically

if TYPE_CHECKING:
    from mnc_teach.train import TrainState

__all__ = [
    "CHECKPOINT_NAME", "HISTORY_NAME", "RESUMABLE_CHANGES", "TrainHistory", "changed_settings", "load_checkpoint",
    "restore_checkpoint", "rng_states", "save_checkpoint", "save_history", "seed_everything", "set_rng_states",
]  # fmt: skip

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"
# Settings a resumed run may change; anything else must match the checkpoint's config.
RESUMABLE_CHANGES = {"train.max_steps", "train.checkpoint_every", "train.log_every", "train.val_every",
                     "data.root", "data.num_workers"}  # fmt: skip


@dataclass
class TrainHistory:
    """What a run measured. ``steps``: one dict per optimiser step with ``step``, every loss
    term, ``total``, ``lr`` and ``images_per_s``; ``val``: one dict per validation with
    ``step``, every loss term and ``total``. Saved as ``history.json`` next to the checkpoint."""

    steps: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)

    def terms(self) -> list[str]:
        """Loss term names (``loss_*``) in the order they first appear."""
        names = {key: None for entry in self.steps + self.val for key in entry if key.startswith("loss_")}
        return list(names)

    def to_dict(self) -> dict[str, list[dict[str, float]]]:
        return {"steps": self.steps, "val": self.val}

    @classmethod
    def from_dict(cls, values: dict) -> TrainHistory:
        return cls(steps=list(values.get("steps", [])), val=list(values.get("val", [])))

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomically(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainHistory:
        return cls.from_dict(json.loads(Path(path).read_text()))


def rng_states() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain values (loadable with ``weights_only=True``).
    The data order and flips need no state: they are a function of ``(seed, step)``."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }  # fmt: skip


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    n, p = states["numpy"], states["python"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


def save_checkpoint(state: TrainState) -> Path:
    """Write ``out_dir/checkpoint.pt`` atomically (temp file + ``os.replace``), then ``history.json``."""
    checkpoint = {
        "step": state.step, "config": state.cfg.to_dict(), "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(), "rng": rng_states(), "history": state.history.to_dict(),
    }  # fmt: skip
    path = write_atomically(state.checkpoint_path, lambda file: torch.save(checkpoint, file))
    save_history(state)
    state.checkpoint_step = state.step
    return path


def save_history(state: TrainState) -> Path:
    """Write ``out_dir/history.json`` atomically: a viewer of the running run reads whole files only."""
    path = state.out_dir / HISTORY_NAME
    state.history.save(path)  # creates out_dir if missing
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (tensors and plain values only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}; train one with `python -m mnc_teach train --out {path.parent}`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (RuntimeError, UnpicklingError, EOFError, ...)
        raise ValueError(f"cannot read checkpoint {path} ({error}); it is corrupt or not an mnc_teach checkpoint") from error


def changed_settings(new: dict, old: dict, prefix: str = "") -> list[str]:
    """Dotted names of the config values that differ (tuples and lists compare equal)."""
    changed = []
    for key in sorted(new.keys() | old.keys()):
        a, b = new.get(key), old.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_settings(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            changed.append(f"{prefix}{key}")
    return changed


def restore_checkpoint(state: TrainState, checkpoint: dict[str, Any]) -> None:
    """Put model, optimiser, scheduler, scaler, step, history and RNG states back as they were saved."""
    changed = [k for k in changed_settings(state.cfg.to_dict(), checkpoint["config"]) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(
            f"{state.checkpoint_path} was trained with other settings ({', '.join(changed)}); resume with the "
            "checkpoint's config (MNCConfig.from_dict(load_checkpoint(path)['config'])), or train into a new folder"
        )
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint["scaler"] and state.scaler.is_enabled():  # a CPU run saves an empty (disabled) scaler
        state.scaler.load_state_dict(checkpoint["scaler"])
    state.step = state.start_step = state.checkpoint_step = checkpoint["step"]
    state.history = TrainHistory.from_dict(checkpoint["history"])
    set_rng_states(checkpoint["rng"])
