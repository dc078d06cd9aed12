"""viz.losses: the one loss-curve module. A notebook loop's curves, a run's history (train,
validation, learning rate, thinned when long) from a TrainHistory or its dict, and several runs
compared: every line holds the values it was given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes import DATASETS, fake_model, small_config
from matplotlib.figure import Figure

from mnc_teach.engine.loop import train
from mnc_teach.engine.state import TrainHistory
from mnc_teach.viz.common import count_artists
from mnc_teach.viz.losses import (
    GID_LOSS,
    GID_LR,
    GID_RUN_CURVE,
    LOSS_FIGSIZE,
    MAX_POINTS,
    draw_history,
    draw_history_comparison,
    draw_loss_curves,
    moving_average,
    plot_history,
    term_points,
)


def lines(fig, prefix: str) -> dict[str, list]:
    """gid -> x data of the lines whose gid starts with ``prefix``."""
    return {line.get_gid(): list(line.get_xdata()) for ax in fig.axes for line in ax.lines
            if (line.get_gid() or "").startswith(prefix)}


def _steps(scale: float, num_steps: int = 6, with_s4: bool = True) -> list[dict[str, float]]:
    steps = []
    for s in range(1, num_steps + 1):
        entry = {"step": s, "loss_rpn_obj": scale / s, "loss_mask": 2 * scale / s}
        if with_s4:
            entry["loss_mask_s4"] = 3 * scale / s
        entry["total"] = sum(v for k, v in entry.items() if k.startswith("loss_"))
        steps.append(entry)
    return steps


# ----------------------------------------------------------------------------- the pieces


def test_moving_average_matches_hand_computed_trailing_means() -> None:
    values = [1.0, 3.0, 5.0, 7.0]
    np.testing.assert_allclose(moving_average(values, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(moving_average(values, 3), [1.0, 2.0, 3.0, 5.0])
    np.testing.assert_allclose(moving_average(values, 1), values)
    np.testing.assert_allclose(moving_average(values, 10), np.cumsum(values) / np.arange(1, 5))
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0], 0)


def test_term_points_are_the_steps_that_have_the_term() -> None:
    entries = [{"step": 1, "loss_b": 1.0, "total": 1.0},
               {"step": 2, "loss_a": 2.0, "loss_b": 3.0, "lr": 0.1}]
    assert term_points(entries, "loss_b") == ([1, 2], [1.0, 3.0])
    assert term_points(entries, "loss_a") == ([2], [2.0])


# ----------------------------------------------------------------------------- a notebook's loop


def test_draw_loss_curves_one_smoothed_line_per_term() -> None:
    values = [4.0, 2.0, 0.0, 2.0]
    fig = draw_loss_curves({"loss_rpn_obj": values, "loss_rpn_box": [1.0] * 4}, smooth=2,
                           title="stage 1")
    drawn = [line for line in fig.axes[0].lines if line.get_gid() == GID_LOSS]
    assert len(drawn) == count_artists(fig, GID_LOSS) == 2
    assert drawn[0].get_label() == "rpn_obj"
    np.testing.assert_allclose(drawn[0].get_ydata(), [4.0, 3.0, 1.0, 1.0])  # trailing mean of 2
    np.testing.assert_allclose(drawn[0].get_xdata(), [0, 1, 2, 3])
    np.testing.assert_allclose(drawn[1].get_ydata(), [1.0] * 4)
    assert fig.axes[0].get_ylabel() == "loss (mean of 2 steps)"
    assert fig.axes[0].get_title() == "stage 1"


# ----------------------------------------------------------------------------- a run's history


def test_draw_history_train_validation_and_learning_rate() -> None:
    steps = [{"step": s, "loss_a": 1.0 / s, "loss_b": 0.5, "total": 1.0 / s + 0.5, "lr": 0.1 * s}
             for s in range(1, 6)]
    val = [{"step": 5, "loss_a": 0.3, "loss_b": 0.4, "total": 0.7}]
    fig = Figure(figsize=LOSS_FIGSIZE)
    draw_history(fig, TrainHistory(steps=steps, val=val), max_steps=10)
    ax_loss, ax_lr = fig.axes
    assert lines(fig, "train-") == {f"train-{t}": [1, 2, 3, 4, 5]
                                    for t in ("loss_a", "loss_b", "total")}
    assert lines(fig, "val-") == {f"val-{t}": [5] for t in ("loss_a", "loss_b", "total")}
    (lr,) = [line for line in ax_lr.lines if line.get_gid() == GID_LR]
    assert list(lr.get_ydata()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert ax_loss.get_yscale() == "log" and ax_loss.get_xlim() == (0.0, 10.0)
    legend = [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert legend == ["a", "b", "total", "validation"]
    draw_history(fig, TrainHistory())  # drawing again clears the figure first
    assert len(fig.axes) == 2 and lines(fig, "") == {}
    assert fig.axes[0].texts[0].get_text() == "waiting for the first step"


def test_draw_history_keeps_the_loss_axis_within_four_decades() -> None:
    steps = [{"step": s, "loss_a": 1.0, "loss_b": 1e-9, "total": 1.0, "lr": 0.1}
             for s in range(1, 4)]
    fig = plot_history({"steps": steps, "val": []})
    low, high = fig.axes[0].get_ylim()
    assert low == pytest.approx(1e-4 / 1.5) and high == pytest.approx(1.5)


def test_long_runs_are_thinned_for_drawing() -> None:
    history = TrainHistory(steps=[{"step": s, "loss_a": 1.0, "total": 1.0, "lr": 0.1}
                                  for s in range(1, 5001)])
    drawn = lines(plot_history(history), "")
    assert set(drawn) == {"train-loss_a", "train-total", GID_LR}
    assert all(len(xs) <= MAX_POINTS + 1 and xs[0] == 1 and xs[-1] == 5000
               for xs in drawn.values())


def test_plot_history_of_a_saved_run_equals_that_of_its_dict(tmp_path: Path) -> None:
    history = train(small_config(max_steps=6, val_every=3), tmp_path, callbacks=(),
                    model=fake_model(), datasets=DATASETS)
    fig = plot_history(TrainHistory.load(tmp_path / "history.json"))
    assert tuple(fig.get_size_inches()) == LOSS_FIGSIZE
    assert lines(fig, "train-") == {f"train-{t}": list(range(1, 7))
                                    for t in ("loss_a", "loss_b", "total")}
    assert lines(fig, "val-") == {f"val-{t}": [3, 6] for t in ("loss_a", "loss_b", "total")}
    assert lines(plot_history(history.to_dict()), "") == lines(fig, "")


# ----------------------------------------------------------------------------- runs compared


def test_history_comparison_one_panel_per_term_and_one_line_per_run() -> None:
    runs = {"a": _steps(1.0), "b": _steps(2.0)}
    fig = draw_history_comparison(runs, ncols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["rpn_obj", "mask", "mask_s4", "total"]
    assert count_artists(fig, GID_RUN_CURVE) == 2 * 4
    first = fig.axes[0]
    assert [line.get_label() for line in first.lines] == ["a", "b"]
    np.testing.assert_allclose(first.lines[1].get_ydata(), [2.0 / s for s in range(1, 7)])
    np.testing.assert_allclose(first.lines[1].get_xdata(), range(1, 7))


def test_history_comparison_smooths_and_skips_missing_terms() -> None:
    runs = {"5 stages": _steps(1.0), "3 stages": _steps(1.0, with_s4=False)}
    fig = draw_history_comparison(runs, terms=["loss_mask", "loss_mask_s4"], smooth=3, ncols=3)
    assert count_artists(fig, GID_RUN_CURVE) == 2 + 1  # the 3-stage run has no loss_mask_s4
    mask_line = fig.axes[0].lines[0]
    expected = moving_average([2.0 / s for s in range(1, 7)], 3)
    np.testing.assert_allclose(mask_line.get_ydata(), expected)
    assert not fig.axes[2].axison  # the unused third panel is hidden
    assert fig.axes[0].get_yscale() == "linear"  # values span less than a factor of 10


def test_history_comparison_log_scale_only_for_wide_ranges() -> None:
    wide = [{"step": s, "loss_a": 10.0 ** -s, "loss_b": 1.0 + s / 10} for s in range(1, 4)]
    fig = draw_history_comparison({"run": wide}, terms=["loss_a", "loss_b"], ncols=2)
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear"]
    fig = draw_history_comparison({"run": wide}, terms=["loss_a"], ncols=1, log_scale=False)
    assert fig.axes[0].get_yscale() == "linear"


def test_history_comparison_rejects_no_runs() -> None:
    with pytest.raises(ValueError, match="no runs"):
        draw_history_comparison({})
