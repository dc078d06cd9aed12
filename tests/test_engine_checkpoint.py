"""Checkpoints: what they hold, that they load with weights_only, exact RNG restore, the settings a
resume may change, old histories inside them, and load_model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import DATASETS, FakeMNC, fake_model, small_config

from mnc_teach.config import MNCConfig
from mnc_teach.engine import checkpoint as checkpoint_module
from mnc_teach.engine.checkpoint import (
    RESUMABLE_CHANGES,
    changed_settings,
    load_checkpoint,
    load_model,
    restore_checkpoint,
    rng_states,
    set_rng_states,
)
from mnc_teach.engine.loop import _new_state, train
from mnc_teach.engine.state import TrainState


def _trained(tmp_path: Path, **train_values) -> MNCConfig:
    """Train FakeMNC into ``tmp_path`` with ``small_config(**train_values)``."""
    cfg = small_config(**train_values)
    train(cfg, tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    return cfg


def _fresh_state(out_dir: Path, cfg: MNCConfig) -> TrainState:
    """The TrainState train() starts a run of ``cfg`` with (step 0, other initial weights)."""
    return _new_state(cfg, out_dir, model=FakeMNC(), device=torch.device("cpu"))


def test_checkpoint_loads_with_weights_only_and_holds_everything(tmp_path: Path) -> None:
    cfg = _trained(tmp_path, max_steps=4, val_every=0)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    keys = {"model", "optimizer", "scheduler", "scaler", "step", "config", "rng", "history"}
    assert keys <= checkpoint.keys()
    assert checkpoint["step"] == 4 and MNCConfig.from_dict(checkpoint["config"]) == cfg
    assert set(checkpoint["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert [e["step"] for e in checkpoint["history"]["steps"]] == [1, 2, 3, 4]
    # no temp files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "history.json"]


def test_rng_states_put_back_every_generator() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    states = rng_states()
    first = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on
    set_rng_states(states)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == first


def test_changed_settings_names_the_dotted_paths() -> None:
    old = {"train": {"lr": 0.01, "lr_steps": [5]}, "data": {"root": "a"}}
    new = {"train": {"lr": 0.02, "lr_steps": (5,)}, "data": {"root": "b", "flip": True}}
    assert changed_settings(new, old) == ["data.flip", "data.root", "train.lr"]  # tuple == list
    assert changed_settings(old, old) == []


def test_restore_accepts_only_resumable_changes(tmp_path: Path) -> None:
    _trained(tmp_path, max_steps=2, val_every=0)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert {"train.max_steps", "data.root"} <= RESUMABLE_CHANGES
    state = _fresh_state(tmp_path, small_config(max_steps=6, val_every=0))
    restore_checkpoint(state, checkpoint)  # more steps: allowed
    assert (state.step, state.start_step, state.checkpoint_step) == (2, 2, 2)
    assert [e["step"] for e in state.history.steps] == [1, 2]
    for name, value in state.model.state_dict().items():
        assert torch.equal(value, checkpoint["model"][name]), name
    other = _fresh_state(tmp_path, small_config(lr=0.5, seed=3, val_every=0))
    with pytest.raises(ValueError, match=r"other settings \(train.lr, train.seed\)") as error:
        restore_checkpoint(other, checkpoint)
    assert "MNCConfig.from_dict" in str(error.value)


def test_history_saved_under_old_loss_names_resumes_under_the_new_ones(tmp_path: Path) -> None:
    """Checkpoints written before loss_cls / loss_box were renamed still resume."""
    _trained(tmp_path, max_steps=2, val_every=0)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    checkpoint["history"] = {
        "steps": [{"step": 1, "loss_cls": 0.5, "loss_box": 0.25, "loss_cls_s5": 0.4,
                   "loss_box_s5": 0.2, "loss_cls_box": 0.1, "total": 1.45, "lr": 0.01}],
        "val": [{"step": 1, "loss_cls": 0.6, "total": 0.6}],
    }
    state = _fresh_state(tmp_path, small_config(max_steps=2, val_every=0))
    restore_checkpoint(state, checkpoint)
    assert list(state.history.steps[0]) == [
        "step", "loss_cls_mask", "loss_box_reg", "loss_cls_mask_s5", "loss_box_reg_s5",
        "loss_cls_box", "total", "lr",
    ]
    assert state.history.steps[0]["loss_box_reg"] == 0.25
    assert state.history.val == [{"step": 1, "loss_cls_mask": 0.6, "total": 0.6}]


def test_a_checkpoint_saved_before_a_setting_existed_resumes_with_its_default(
    tmp_path: Path,
) -> None:
    _trained(tmp_path, max_steps=2, val_every=0)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    del checkpoint["config"]["data"]["group_by_aspect"]  # as saved before the field was added
    state = _fresh_state(tmp_path, small_config(max_steps=3, val_every=0))
    restore_checkpoint(state, checkpoint)
    assert state.step == 2


def test_load_model_returns_the_trained_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fake_model()
    cfg = small_config(max_steps=2, val_every=0)
    train(cfg, tmp_path, callbacks=(), model=model, datasets=DATASETS)
    monkeypatch.setattr(checkpoint_module, "build_mnc", lambda cfg: FakeMNC())
    loaded, loaded_cfg = load_model(tmp_path / "checkpoint.pt", device="cpu")
    assert loaded_cfg == cfg and not loaded.training
    for a, b in zip(loaded.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_load_checkpoint_names_a_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*missing.pt; train one"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*bad.pt") as error:
        load_model(tmp_path / "bad.pt")
    assert str(error.value).endswith("it is corrupt or not an mnc_teach checkpoint")
