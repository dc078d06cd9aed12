"""The live training dashboard driven from Python: curves, the prediction gallery, Stop (also from
another thread while training runs in the background), the printed fallback, plot_history."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest
import torch
from test_engine_loop import DATASETS, FakeInstances, fake_model, small_config

from mnc_teach.engine.checkpoint import load_checkpoint
from mnc_teach.engine.loop import make_optimizer, train
from mnc_teach.engine.state import TrainHistory, TrainState
from mnc_teach.viz import common as viz
from mnc_teach.viz.training import (
    GID_NO_DETECTIONS,
    MAX_POINTS,
    draw_prediction_gallery,
    new_gallery_figure,
    plot_history,
)
from mnc_teach.widgets.dashboard import TrainingDashboard, has_widget_frontend, predict_images

TERMS = ("loss_a", "loss_b", "loss_c")


def lines(fig, prefix: str) -> dict[str, list]:
    """gid -> x data of the lines whose gid starts with ``prefix``."""
    return {line.get_gid(): list(line.get_xdata()) for ax in fig.axes for line in ax.lines
            if (line.get_gid() or "").startswith(prefix)}  # fmt: skip


def gallery_drawing(fig) -> list[dict]:
    """Per gallery image (column k: axes k above, n + k below): boxes drawn in each row, the
    "no detections" text, the titles."""

    def count(ax, gid: str) -> int:
        return sum(artist.get_gid() == gid for artist in ax.get_children())

    n = len(fig.axes) // 2
    return [{"truth": count(fig.axes[k], viz.GID_BOX), "found": count(fig.axes[n + k], viz.GID_BOX),
             "masks": count(fig.axes[n + k], viz.GID_MASK), "none": count(fig.axes[n + k], GID_NO_DETECTIONS),
             "title": fig.axes[n + k].get_title()} for k in range(n)]  # fmt: skip


def fake_state(tmp_path: Path, max_steps: int = 100) -> TrainState:
    model = fake_model()
    optimizer = make_optimizer(model, small_config().train)
    return TrainState(
        cfg=small_config(), model=model, optimizer=optimizer, device=torch.device("cpu"), out_dir=tmp_path,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), history=TrainHistory(),
        scaler=torch.amp.GradScaler("cpu", enabled=False), max_steps=max_steps,
    )  # fmt: skip


def feed_steps(dashboard: TrainingDashboard, state: TrainState, count: int) -> None:
    for _ in range(count):
        state.step += 1
        state.losses = {term: 1.0 / (state.step + k) for k, term in enumerate(TERMS)}
        state.losses["total"] = sum(state.losses.values())
        state.lr, state.images_per_s, state.elapsed_s = 0.01 * 0.99**state.step, 8.0, state.step * 0.5
        state.history.steps.append({"step": state.step, **state.losses, "lr": state.lr, "images_per_s": 8.0})
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


def test_long_runs_are_thinned_for_drawing(tmp_path: Path) -> None:
    history = TrainHistory(steps=[{"step": s, "loss_a": 1.0, "total": 1.0, "lr": 0.1} for s in range(1, 5001)])
    drawn = lines(plot_history(history), "train-")
    assert all(len(xs) <= MAX_POINTS + 1 and xs[0] == 1 and xs[-1] == 5000 for xs in drawn.values())


def test_gallery_draws_each_images_detections_above_the_threshold(tmp_path: Path) -> None:
    gallery = FakeInstances(3)
    state = fake_state(tmp_path, max_steps=7)
    state.model.eval()
    scores = [float(state.model([gallery[i][0]])[0][0]["scores"][0]) for i in range(len(gallery))]  # one detection each
    state.model.train()
    threshold = sorted(scores)[1]  # the image of the lowest score shows no detection
    dashboard = TrainingDashboard(gallery=gallery, gallery_indices=(2, 0, 1), gallery_every=3, refresh_every=1,
                                  score_threshold=threshold, frontend=True)  # fmt: skip
    assert dashboard.class_names == FakeInstances.class_names  # taken from the dataset
    rng_before = torch.get_rng_state()
    dashboard.on_train_start(state)
    assert state.model.training and torch.equal(torch.get_rng_state(), rng_before)
    drawn = gallery_drawing(dashboard.gallery_figure)
    for entry, index in zip(drawn, (2, 0, 1), strict=True):
        found = int(scores[index] >= threshold)
        assert (entry["truth"], entry["found"], entry["masks"], entry["none"]) == (1, found, found, 1 - found)
        assert entry["title"].startswith("step 0: ")
    assert sum(entry["found"] for entry in drawn) == 2
    assert bytes(dashboard.gallery_image.value).startswith(b"\x89PNG")

    feed_steps(dashboard, state, 7)  # redrawn at steps 3 and 6 ...
    assert all(entry["title"].startswith("step 6: ") for entry in gallery_drawing(dashboard.gallery_figure))
    dashboard.on_train_end(state)  # ... and at the end
    assert all(entry["title"].startswith("step 7: ") for entry in gallery_drawing(dashboard.gallery_figure))

    one = TrainingDashboard(sample=gallery[1], frontend=True)  # the older name: a gallery of one
    one.on_train_start(state)
    assert len(one.gallery) == 1 and len(one.gallery_figure.axes) == 2


def test_predict_images_keeps_the_order_of_images_of_several_sizes() -> None:
    images = [torch.rand(3, 16, 16), torch.rand(3, 8, 12), torch.rand(3, 16, 16)]
    model = fake_model()  # detects the centre square: (W/4, H/4, 3W/4, 3H/4)
    detections = predict_images(model, images)
    for image, found in zip(images, detections, strict=True):
        height, width = image.shape[-2:]
        assert found["boxes"].tolist() == [[width / 4, height / 4, 3 * width / 4, 3 * height / 4]]
        model.eval()
        assert torch.equal(found["scores"], model([image])[0][0]["scores"])
        model.train()
    assert model.training


def test_gallery_drawing_counts_thresholds_caps_and_images_without_detections() -> None:
    (image, target), (other, other_target) = FakeInstances(2)[0], FakeInstances(2)[1]
    size = image.shape[-1]

    def detections(scores: list[float]) -> dict:
        count = len(scores)
        masks = torch.zeros(count, 1, size, size)
        masks[:, :, 2:8, 2:8] = 1.0
        return {"boxes": torch.tensor([[2.0, 2.0, 8.0, 8.0]] * count).reshape(-1, 4), "masks": masks,
                "labels": torch.ones(count, dtype=torch.int64), "scores": torch.tensor(scores).reshape(-1)}  # fmt: skip

    fig = new_gallery_figure(3)
    found = [detections([0.9, 0.2, 0.6]), detections([]), detections([0.95] * 12)]
    draw_prediction_gallery(fig, [image, other, image], [target, other_target, target], found,
                            FakeInstances.class_names, score_threshold=0.5, step=40, max_drawn=10)  # fmt: skip
    drawn = gallery_drawing(fig)
    assert [(e["truth"], e["found"], e["masks"], e["none"]) for e in drawn] == [(1, 2, 2, 0), (1, 0, 0, 1), (1, 10, 10, 0)]
    assert [e["title"] for e in drawn] == ["step 40: 2 with score >= 0.5", "step 40: 0 with score >= 0.5",
                                          "step 40: 10 of 12 with score >= 0.5"]  # fmt: skip
    texts = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == GID_NO_DETECTIONS]
    assert texts == ["no detections >= 0.5"]

    axes_before = list(fig.axes)  # drawing again reuses the axes and leaves nothing of the last drawing
    draw_prediction_gallery(fig, [image, other, image], [target, other_target, target], found,
                            FakeInstances.class_names, score_threshold=0.1)  # fmt: skip
    assert fig.axes == axes_before
    assert [(e["found"], e["none"]) for e in gallery_drawing(fig)] == [(3, 0), (0, 1), (10, 0)]
    assert gallery_drawing(fig)[0]["title"] == "3 with score >= 0.1"


def test_stop_button_ends_training_with_a_checkpoint(tmp_path: Path) -> None:
    dashboard = TrainingDashboard(refresh_every=1000, frontend=True)  # drawn at the start and the end

    class ClickAtThree:
        def on_step_end(self, state) -> None:
            if state.step == 3:
                dashboard.stop_button.click()

    history = train(small_config(val_every=0), tmp_path, callbacks=[ClickAtThree(), dashboard],
                    model=fake_model(), datasets=DATASETS)  # fmt: skip
    assert [e["step"] for e in history.steps] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert dashboard.stop_button.disabled and "stopped" in dashboard.status.value


def test_stop_click_from_another_thread_while_training_runs_in_the_background(tmp_path: Path) -> None:
    dashboard = TrainingDashboard(refresh_every=1000, frontend=True)  # drawn once, at the start
    run = dashboard.run_in_background(small_config(max_steps=5000, val_every=0), tmp_path,
                                      model=fake_model(delay_s=0.002), datasets=DATASETS)  # fmt: skip
    deadline = time.monotonic() + 30
    while (dashboard.last_state is None or dashboard.last_state.step < 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not run.done and run.join(timeout=0) is None
    dashboard.stop_button.click()  # what the kernel does when the button is clicked
    history = run.join(timeout=30)
    assert run.done and 3 <= len(history.steps) < 5000
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == history.steps[-1]["step"]


def test_background_errors_reach_join_and_the_status_line(tmp_path: Path) -> None:
    dashboard = TrainingDashboard(frontend=True)
    run = dashboard.run_in_background(small_config(accumulate=1, val_every=0), tmp_path,
                                      model=fake_model(nan_at_call=2), datasets=DATASETS)  # fmt: skip
    with pytest.raises(FloatingPointError, match="step 2: loss_b is nan"):
        run.join(timeout=30)
    assert "failed: FloatingPointError" in dashboard.status.value


def test_without_frontend_it_prints_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not has_widget_frontend()  # plain python under pytest
    dashboard = TrainingDashboard(sample=FakeInstances(1)[0])
    train(small_config(max_steps=4, val_every=0), tmp_path, callbacks=[dashboard], model=fake_model(), datasets=DATASETS)
    out = capsys.readouterr().out
    assert "step 2/4" in out and "step 4/4" in out and "finished at step 4" in out
    assert dashboard.loss_figure is None and dashboard.gallery_figure is None  # nothing drawn

    # no button to keep responsive: "in the background" runs in this thread, so the lines land in the cell
    run = dashboard.run_in_background(small_config(max_steps=6, val_every=0), tmp_path, resume=True,
                                      model=fake_model(), datasets=DATASETS)  # fmt: skip
    assert run.done and [e["step"] for e in run.join(timeout=0).steps] == list(range(1, 7))
    assert "step 6/6" in capsys.readouterr().out


def test_plot_history_of_a_saved_run(tmp_path: Path) -> None:
    history = train(small_config(max_steps=6, val_every=3), tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    fig = plot_history(tmp_path / "history.json")
    assert lines(fig, "train-") == {f"train-{t}": list(range(1, 7)) for t in ("loss_a", "loss_b", "total")}
    assert lines(fig, "val-") == {f"val-{t}": [3, 6] for t in ("loss_a", "loss_b", "total")}
    assert lines(plot_history(history.to_dict()), "") == lines(fig, "")


def test_widget_frontend_means_a_kernel_started_by_a_notebook_server(monkeypatch: pytest.MonkeyPatch) -> None:
    class ZMQInteractiveShell:  # the shell class of an ipykernel kernel
        pass

    fake_ipython = types.ModuleType("IPython")
    fake_ipython.get_ipython = ZMQInteractiveShell
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("VSCODE_PID", raising=False)
    assert not has_widget_frontend()  # a kernel, but headless (nbclient)
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/06_cascade_end_to_end.ipynb")  # set by Jupyter Server
    assert has_widget_frontend()
    fake_ipython.get_ipython = lambda: None  # IPython imported, but no kernel running
    assert not has_widget_frontend()


def test_interrupting_join_stops_the_background_run_with_a_checkpoint(tmp_path: Path) -> None:
    """Jupyter's stop button raises KeyboardInterrupt in the cell waiting in join(): the run must
    end cleanly instead of going on unseen in its thread."""
    dashboard = TrainingDashboard(refresh_every=1000, frontend=True)
    run = dashboard.run_in_background(small_config(max_steps=5000, val_every=0), tmp_path,
                                      model=fake_model(delay_s=0.002), datasets=DATASETS)  # fmt: skip
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
