"""A run's state and history: history.json (also in the old loss names), the ETA, callbacks and
the default ProgressPrinter."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fakes import DATASETS, fake_model, small_config

from mnc_teach.engine.loop import train
from mnc_teach.engine.state import (
    RENAMED_LOSS_TERMS,
    ProgressPrinter,
    TrainHistory,
    TrainState,
    call_callbacks,
    format_seconds,
)


def test_history_round_trips_through_json_and_lists_its_terms(tmp_path: Path) -> None:
    history = TrainHistory(
        steps=[{"step": 1, "loss_b": 0.5, "total": 0.5, "lr": 0.1},
               {"step": 2, "loss_b": 0.4, "loss_a": 0.2, "total": 0.6, "lr": 0.1}],
        val=[{"step": 2, "loss_c": 0.3, "total": 0.3}],
    )
    assert history.terms() == ["loss_b", "loss_a", "loss_c"]  # in order of first appearance
    path = tmp_path / "run" / "history.json"
    history.save(path)  # creates the folder
    assert json.loads(path.read_text()) == history.to_dict()
    assert TrainHistory.load(path) == history
    assert TrainHistory.from_dict({}) == TrainHistory()


def test_history_json_of_an_old_run_reads_the_old_loss_names_as_new() -> None:
    """history.json written before the rename of stage 3's and stage 5's loss terms."""
    old = {
        "steps": [{"step": 1, "loss_rpn_obj": 0.7, "loss_cls": 1.1, "loss_box": 0.3,
                   "loss_cls_box": 0.9, "loss_cls_s5": 1.0, "loss_box_s5": 0.2,
                   "loss_cls_box_s5": 0.8, "total": 5.0, "lr": 0.001, "images_per_s": 3.0}],
        "val": [{"step": 1, "loss_cls": 1.2, "loss_box_s5": 0.1, "total": 1.3}],
    }
    history = TrainHistory.from_dict(json.loads(json.dumps(old)))
    assert list(history.steps[0]) == [
        "step", "loss_rpn_obj", "loss_cls_mask", "loss_box_reg", "loss_cls_box",
        "loss_cls_mask_s5", "loss_box_reg_s5", "loss_cls_box_s5", "total", "lr", "images_per_s",
    ]
    assert list(history.steps[0].values()) == list(old["steps"][0].values())
    assert history.val == [{"step": 1, "loss_cls_mask": 1.2, "loss_box_reg_s5": 0.1, "total": 1.3}]
    assert set(RENAMED_LOSS_TERMS) == {"loss_cls", "loss_box", "loss_cls_s5", "loss_box_s5"}
    # a history in today's names is read as it is
    assert TrainHistory.from_dict(history.to_dict()) == history


def test_eta_is_the_average_speed_of_this_session() -> None:
    state = TrainState(
        cfg=small_config(), model=None, optimizer=None, scheduler=None, scaler=None, device=None,
        out_dir=Path("run"), history=TrainHistory(), max_steps=10, step=6, start_step=4,
        elapsed_s=20.0,
    )
    assert state.eta_s == pytest.approx(4 * 20.0 / 2)  # 2 steps in 20 s, 4 to go
    assert state.checkpoint_path == Path("run") / "checkpoint.pt"
    state.step = state.start_step
    assert math.isnan(state.eta_s)


def test_format_seconds() -> None:
    assert format_seconds(65) == "1m05s"
    assert format_seconds(2 * 3600 + 3 * 60 + 59) == "2h03m"
    assert format_seconds(float("nan")) == "?"


def test_call_callbacks_calls_only_the_methods_a_callback_has() -> None:
    calls = []

    class OnlyStepEnd:
        def on_step_end(self, state) -> None:
            calls.append(state.step)

    state = SimpleNamespace(step=3)
    call_callbacks([OnlyStepEnd(), object()], "on_step_end", state)
    call_callbacks([OnlyStepEnd()], "on_validation", state)
    assert calls == [3]


def test_progress_printer_prints_every_log_every_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(
        small_config(max_steps=4), tmp_path, callbacks=[ProgressPrinter(bar=False)],
        model=fake_model(), datasets=DATASETS,
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("training 4 steps on ")
    step_lines = [line for line in lines if line.startswith("step ") and "val" not in line]
    assert [line.split()[1] for line in step_lines] == ["2/4", "4/4"]
    assert "(a " in step_lines[0] and "  b " in step_lines[0]
    assert not math.isnan(float(step_lines[0].split()[3]))
    assert any(line.startswith("step 3: val loss") for line in lines)
    assert lines[-1].startswith("finished at step 4")


def _history(totals: list[float]) -> TrainHistory:
    return TrainHistory(steps=[{"step": s + 1, "total": t} for s, t in enumerate(totals)])


def test_divergence_is_a_loss_100_times_its_early_level() -> None:
    assert TrainHistory().divergence() is None
    falling = [7.0, 6.0, *np.linspace(5.0, 0.01, 30)]  # a healthy run: down by 700 times
    assert _history(falling).divergence() is None
    assert _history([7.0, 6.0, 5.0, 499.0]).divergence() is None  # 99.8 x the early 5.0
    message = _history([7.0, 6.0, 5.0, 500.0]).divergence()
    assert message == (
        "the loss diverged: 500 at step 4, 100 times its early level 5; "
        "lower train.lr or set train.grad_clip_norm"
    )
    # the early level is the first 10 steps' lowest: a late low does not move it
    assert _history([*[5.0] * 10, 0.001, 400.0]).divergence() is None
    assert "at step 3" in _history([1.0, 2.0, float("inf")]).divergence()


def test_progress_printer_warns_once_when_the_loss_diverges(capsys) -> None:
    printer = ProgressPrinter(log_every=100, bar=False)
    state = SimpleNamespace(step=0, max_steps=10, history=_history([]), losses={"total": 1.0},
                            cfg=small_config())
    for total in (5.0, 4.0, 900.0, 1000.0):
        state.step += 1
        state.history.steps.append({"step": state.step, "total": total})
        printer.on_step_end(state)
    printed = capsys.readouterr().out
    assert printed.count("warning: step 3: the loss diverged: 900 at step 3") == 1
    assert printed.count("warning") == 1
