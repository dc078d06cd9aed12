"""Checkpoints: what a training run writes, how it is read back, the model it holds (DESIGN.md §6).

    out_dir/checkpoint.pt   model, optimiser, scheduler, scaler, step, config, RNG states and
                            history; written atomically (temp file + ``os.replace``), read with
                            ``weights_only=True``
    out_dir/history.json    the loss curves (:class:`~mnc_teach.engine.state.TrainHistory`), for
                            plots of running or finished runs; written at the start, after each
                            validation and with each checkpoint

``restore_checkpoint`` puts a :class:`~mnc_teach.engine.state.TrainState` back exactly as it was
saved, so a resumed run continues the loss curve of the uninterrupted one. ``load_model`` builds
the trained model of a checkpoint; the widgets use it without importing the training loop.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnc_teach.cascade import build_mnc
from mnc_teach.config import MNCConfig, override
from mnc_teach.engine.inference import resolve_device
from mnc_teach.engine.state import HISTORY_NAME, TrainHistory, TrainState
from mnc_teach.fileio import write_atomically

__all__ = [
    "MODEL_KEYS",
    "RESUMABLE_CHANGES",
    "RESUME_KEYS",
    "changed_settings",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "restore_checkpoint",
    "rng_states",
    "save_checkpoint",
    "save_history",
    "seed_everything",
    "set_rng_states",
]

# Settings a resumed run may change; anything else must match the checkpoint's config.
RESUMABLE_CHANGES = {
    "train.max_steps",
    "train.checkpoint_every",
    "train.log_every",
    "train.val_every",
    "data.root",
    "data.num_workers",
}


def rng_states() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain values (``weights_only=True`` loads them).
    The data order and flips need no state: they are a function of ``(seed, step)``."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back the RNG states of :func:`rng_states` (CUDA's only on as many devices as saved)."""
    torch.set_rng_state(states["torch"])
    if (
        states["cuda"]
        and torch.cuda.is_available()
        and len(states["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(states["cuda"])
    n, p = states["numpy"], states["python"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


def save_checkpoint(state: TrainState) -> Path:
    """Write ``out_dir/checkpoint.pt`` atomically (temp file + ``os.replace``), then
    ``history.json``."""
    checkpoint = {
        "step": state.step,
        "config": state.cfg.to_dict(),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": rng_states(),
        "history": state.history.to_dict(),
    }
    path = write_atomically(state.checkpoint_path, lambda file: torch.save(checkpoint, file))
    save_history(state)
    state.checkpoint_step = state.step
    return path


def save_history(state: TrainState) -> Path:
    """Write ``out_dir/history.json`` atomically: a viewer of a running run reads whole files."""
    path = state.out_dir / HISTORY_NAME
    state.history.save(path)  # creates out_dir if missing
    return path


# What load_model needs of a checkpoint; resuming needs every key save_checkpoint writes.
MODEL_KEYS = ("step", "config", "model")
RESUME_KEYS = (*MODEL_KEYS, "optimizer", "scheduler", "scaler", "rng", "history")
_TRAIN_ONE = "train one with `python -m mnc_teach train`"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (tensors and plain values only)
    and check it: a dict with a step, a valid config and all-finite model weights.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming ``path``: unreadable, not an mnc_teach checkpoint (e.g. a bare
            ``state_dict``), an invalid config, or non-finite weights (a diverged run's).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder; give the checkpoint file, e.g. {path / 'checkpoint.pt'}"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint {path}; train one with `python -m mnc_teach train --out {path.parent}`"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (RuntimeError, UnpicklingError, ...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ValueError(
            f"cannot read checkpoint {path} ({first_line}); "
            "it is corrupt or not an mnc_teach checkpoint"
        ) from error
    _check_checkpoint(checkpoint, path)
    return checkpoint


def _check_checkpoint(checkpoint: Any, path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless ``checkpoint`` is what :func:`save_checkpoint`
    writes (the model part of it: :data:`MODEL_KEYS`)."""
    if isinstance(checkpoint, dict) and checkpoint and all(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise ValueError(
            f"{path} holds only model weights (a state_dict of {len(checkpoint)} tensors), not an "
            "mnc_teach checkpoint with the config that builds its model; load it with "
            "build_mnc(cfg).load_state_dict(torch.load(path)), or " + _TRAIN_ONE
        )
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in MODEL_KEYS):
        what = (
            f"a dict without {', '.join(k for k in MODEL_KEYS if k not in checkpoint)}"
            if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        )
        raise ValueError(f"{path} holds {what}, not an mnc_teach checkpoint; {_TRAIN_ONE}")
    if not isinstance(checkpoint["step"], int) or not isinstance(checkpoint["model"], dict):
        raise ValueError(f"{path} has a malformed step or model entry; {_TRAIN_ONE}")
    try:
        MNCConfig.from_dict(checkpoint["config"])
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path} holds an invalid config: {error}; {_TRAIN_ONE}") from None
    bad = [
        name for name, tensor in checkpoint["model"].items()
        if not isinstance(tensor, torch.Tensor)
        or (tensor.is_floating_point() and not torch.isfinite(tensor).all())
    ]
    if bad:
        raise ValueError(
            f"{path} holds {len(bad)} model tensors that are not finite tensors (first: {bad[0]}), "
            "as a diverged run would; retrain from an earlier checkpoint with a lower train.lr"
        )


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
    """Put model, optimiser, scheduler, scaler, step, history and RNG states back as saved.

    Raises:
        ValueError: the checkpoint's config differs from ``state.cfg`` in a setting that is not
            one of :data:`RESUMABLE_CHANGES`.
    """
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(
            f"{state.checkpoint_path} lacks {', '.join(missing)}: it holds a model but not a run "
            "to resume; predict with it, or train into a new folder"
        )
    changed = [
        k
        # through MNCConfig: a setting added since the checkpoint was saved gets its default
        for k in changed_settings(
            state.cfg.to_dict(), MNCConfig.from_dict(checkpoint["config"]).to_dict()
        )
        if k not in RESUMABLE_CHANGES
    ]
    if changed:
        raise ValueError(
            f"{state.checkpoint_path} was trained with other settings ({', '.join(changed)}); "
            "resume with the checkpoint's config "
            "(MNCConfig.from_dict(load_checkpoint(path)['config'])), or train into a new folder"
        )
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint["scaler"] and state.scaler.is_enabled():  # a CPU run saves an empty scaler
        state.scaler.load_state_dict(checkpoint["scaler"])
    state.step = state.start_step = state.checkpoint_step = checkpoint["step"]
    state.history = TrainHistory.from_dict(checkpoint["history"])
    set_rng_states(checkpoint["rng"])


def load_model(
    checkpoint_path: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[nn.Module, MNCConfig]:
    """The trained model (in eval mode, on ``device``) and its config, from a checkpoint."""
    return model_from_checkpoint(
        load_checkpoint(checkpoint_path), device, source=str(checkpoint_path)
    )


def model_from_checkpoint(
    checkpoint: dict, device: str | torch.device | None = None, *, source: str = "the checkpoint"
) -> tuple[nn.Module, MNCConfig]:
    """:func:`load_model` for a checkpoint already read (``load_checkpoint``), e.g. to read its
    step too. ``source`` names it in errors."""
    cfg = MNCConfig.from_dict(checkpoint["config"])
    # no pretrained download: the weights come from the checkpoint
    model = build_mnc(override(cfg, "backbone.pretrained", False))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:  # missing, unexpected or differently shaped tensors
        detail = " ".join(str(error).split())
        raise ValueError(
            f"the weights in {source} do not fit the model its config builds "
            f"({detail[:300]}); was it written by another version of mnc_teach?"
        ) from None
    return model.to(resolve_device(device)).eval(), cfg
