"""The live training dashboard driven from Python: curves, the prediction gallery, Stop (also
from another thread while training runs in the background), the printed fallback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from fakes import DATASETS, FakeInstances, fake_model, small_config
from test_viz_gallery import gallery_drawing
from test_viz_losses import lines

from mnc_teach.engine.checkpoint import load_checkpoint
from mnc_teach.engine.loop import make_optimizer, train
from mnc_teach.engine.state import TrainHistory, TrainState
from mnc_teach.widgets.common import has_widget_frontend
from mnc_teach.widgets.dashboard import TrainingDashboard

TERMS = ("loss_a", "loss_b", "loss_c")


def fake_state(tmp_path: Path, max_steps: int = 100) -> TrainState:
    model = fake_model()
    optimizer = make_optimizer(model, small_config().train)
    return TrainState(
        cfg=small_config(), model=model, optimizer=optimizer, device=torch.device("cpu"),
        out_dir=tmp_path, history=TrainHistory(), max_steps=max_steps,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
    )


def feed_steps(dashboard: TrainingDashboard, state: TrainState, count: int) -> None:
    for _ in range(count):
        state.step += 1
        state.losses = {term: 1.0 / (state.step + k) for k, term in enumerate(TERMS)}
        state.losses["total"] = sum(state.losses.values())
        state.lr, state.images_per_s = 0.01 * 0.99**state.step, 8.0
        state.elapsed_s = state.step * 0.5
        state.history.steps.append({"step": state.step, **state.losses, "lr": state.lr,
                                    "images_per_s": 8.0})
        dashboard.on_step_end(state)


def test_curves_have_one_line_per_term_with_every_step(tmp_path: Path) -> None:
    dashboard = TrainingDashboard(refresh_every=10, frontend=True)
    state = fake_state(tmp_path)
    dashboard.on_train_start(state)
    feed_steps(dashboard, state, 25)
    drawn = lines(dashboard.loss_figure, "train-")
    assert sorted(drawn) == sorted(f"train-{t}" for t in (*TERMS, "total"))
    assert all(xs == list(range(1, 21)) for xs in drawn.values())  # last redraw at step 20
    assert dashboard.loss_figure.axes[0].get_yscale() == "log"

    dashboard.refresh()
    assert all(xs == list(range(1, 26)) for xs in lines(dashboard.loss_figure, "train-").values())
    (lr_line,) = [line for line in dashboard.loss_figure.axes[1].lines if line.get_gid() == "lr"]
    assert list(lr_line.get_ydata()) == pytest.approx([0.01 * 0.99**s for s in range(1, 26)])
    assert bytes(dashboard.loss_image.value).startswith(b"\x89PNG")
    assert "step 25/100" in dashboard.status.value and "8.0 img/s" in dashboard.status.value
    assert "ETA 0m37s" in dashboard.status.value  # 75 steps left at 0.5 s per step

    state.val_losses = {"loss_a": 0.5, "loss_b": 0.4, "loss_c": 0.3, "total": 1.2}
    state.history.val.append({"step": 25, **state.val_losses})
    dashboard.on_validation(state)
    assert lines(dashboard.loss_figure, "val-") == {f"val-{t}": [25] for t in (*TERMS, "total")}


def test_gallery_draws_each_images_detections_above_the_threshold(tmp_path: Path) -> None:
    gallery = FakeInstances(3)
    state = fake_state(tmp_path, max_steps=7)
    state.model.eval()
    # one detection each
    scores = [float(state.model([gallery[i][0]])[0][0]["scores"][0]) for i in range(len(gallery))]
    state.model.train()
    threshold = sorted(scores)[1]  # the image of the lowest score shows no detection
    dashboard = TrainingDashboard(gallery=gallery, gallery_indices=(2, 0, 1), gallery_every=3,
                                  refresh_every=1, score_threshold=threshold, frontend=True)
    assert dashboard.class_names == FakeInstances.class_names  # taken from the dataset
    rng_before = torch.get_rng_state()
    dashboard.on_train_start(state)
    assert state.model.training and torch.equal(torch.get_rng_state(), rng_before)
    drawn = gallery_drawing(dashboard.gallery_figure)
    for entry, index in zip(drawn, (2, 0, 1), strict=True):
        found = int(scores[index] >= threshold)
        drawn_counts = (entry["truth"], entry["found"], entry["masks"], entry["none"])
        assert drawn_counts == (1, found, found, 1 - found)
        assert entry["title"].startswith("step 0: ")
    assert sum(entry["found"] for entry in drawn) == 2
    assert bytes(dashboard.gallery_image.value).startswith(b"\x89PNG")

    feed_steps(dashboard, state, 7)  # redrawn at steps 3 and 6 ...
    titles = [entry["title"] for entry in gallery_drawing(dashboard.gallery_figure)]
    assert all(title.startswith("step 6: ") for title in titles)
    dashboard.on_train_end(state)  # ... and at the end
    titles = [entry["title"] for entry in gallery_drawing(dashboard.gallery_figure)]
    assert all(title.startswith("step 7: ") for title in titles)

    one = TrainingDashboard(gallery=[gallery[1]], frontend=True)  # a list of (image, target)
    one.on_train_start(state)
    assert len(one.gallery) == 1 and len(one.gallery_figure.axes) == 2


def test_stop_button_ends_training_with_a_checkpoint(tmp_path: Path) -> None:
    dashboard = TrainingDashboard(refresh_every=1000, frontend=True)  # drawn at start and end

    class ClickAtThree:
        def on_step_end(self, state) -> None:
            if state.step == 3:
                dashboard.stop_button.click()

    history = train(small_config(val_every=0), tmp_path, callbacks=[ClickAtThree(), dashboard],
                    model=fake_model(), datasets=DATASETS)
    assert [e["step"] for e in history.steps] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert dashboard.stop_button.disabled and "stopped" in dashboard.status.value


def test_stop_click_from_another_thread_while_training_runs_in_the_background(
        tmp_path: Path) -> None:
    dashboard = TrainingDashboard(refresh_every=1000, frontend=True)  # drawn once, at the start
    run = dashboard.run_in_background(small_config(max_steps=5000, val_every=0), tmp_path,
                                      model=fake_model(delay_s=0.002), datasets=DATASETS)
    deadline = time.monotonic() + 30
    while ((dashboard.last_state is None or dashboard.last_state.step < 3)
           and time.monotonic() < deadline):
        time.sleep(0.01)
    assert not run.done and run.join(timeout=0) is None
    dashboard.stop_button.click()  # what the kernel does when the button is clicked
    history = run.join(timeout=30)
    assert run.done and 3 <= len(history.steps) < 5000
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == history.steps[-1]["step"]


def test_background_errors_reach_join_and_the_status_line(tmp_path: Path) -> None:
    dashboard = TrainingDashboard(frontend=True)
    run = dashboard.run_in_background(small_config(accumulate=1, val_every=0), tmp_path,
                                      model=fake_model(nan_at_call=2), datasets=DATASETS)
    with pytest.raises(FloatingPointError, match="step 2: loss_b is nan"):
        run.join(timeout=30)
    assert "failed: FloatingPointError" in dashboard.status.value


def test_without_frontend_it_prints_lines(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert not has_widget_frontend()  # plain python under pytest
    dashboard = TrainingDashboard(gallery=FakeInstances(1))
    train(small_config(max_steps=4, val_every=0), tmp_path, callbacks=[dashboard],
          model=fake_model(), datasets=DATASETS)
    out = capsys.readouterr().out
    assert "step 2/4" in out and "step 4/4" in out and "finished at step 4" in out
    assert dashboard.loss_figure is None and dashboard.gallery_figure is None  # nothing drawn

    # no button to keep responsive: "in the background" runs in this thread, so the lines land in
    # the cell
    run = dashboard.run_in_background(small_config(max_steps=6, val_every=0), tmp_path, resume=True,
                                      model=fake_model(), datasets=DATASETS)
    assert run.done and [e["step"] for e in run.join(timeout=0).steps] == list(range(1, 7))
    assert "step 6/6" in capsys.readouterr().out


def test_interrupting_join_stops_the_background_run_with_a_checkpoint(
        tmp_path: Path) -> None:
    """Jupyter's stop button raises KeyboardInterrupt in the cell waiting in join(): the run must
    end cleanly instead of going on unseen in its thread."""
    dashboard = TrainingDashboard(refresh_every=1000, frontend=True)
    run = dashboard.run_in_background(small_config(max_steps=5000, val_every=0), tmp_path,
                                      model=fake_model(delay_s=0.002), datasets=DATASETS)
    thread_join = run._thread.join
    calls = []

    def interrupted_once(timeout=None):
        calls.append(timeout)
        if len(calls) == 1:
            while dashboard.last_state is None or dashboard.last_state.step < 3:
                time.sleep(0.01)
            raise KeyboardInterrupt
        thread_join(timeout)

    run._thread.join = interrupted_once
    history = run.join()
    assert run.done and 3 <= len(history.steps) < 5000
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == history.steps[-1]["step"]


def test_the_status_line_says_when_the_loss_diverges(tmp_path: Path) -> None:
    dashboard = TrainingDashboard(refresh_every=1, frontend=True)
    state = fake_state(tmp_path)
    dashboard.on_train_start(state)
    feed_steps(dashboard, state, 3)
    assert "diverged" not in dashboard.status.value
    state.step, state.losses["total"] = 4, 1e6
    state.history.steps.append({"step": 4, **state.losses, "lr": 0.01, "images_per_s": 8.0})
    dashboard.on_step_end(state)
    assert "the loss diverged: 1e+06 at step 4" in dashboard.status.value
    assert "lower train.lr" in dashboard.status.value
