"""The viewer of a run on disk, driven from Python: a real shapes-cpu run (finished, and viewed
while it trains), Reload after the files grew, the score slider, watch(), and the errors it
names."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from fakes import DATASETS, FakeInstances, FakeMNC, fake_model, small_config
from test_viz_gallery import gallery_drawing
from test_viz_losses import lines

from mnc_teach.config import MNCConfig, shapes_cpu
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.engine import checkpoint as checkpoint_module
from mnc_teach.engine.batches import build_datasets
from mnc_teach.engine.checkpoint import load_checkpoint, load_model
from mnc_teach.engine.loop import train
from mnc_teach.engine.state import TrainHistory
from mnc_teach.viz.gallery import MAX_DRAWN
from mnc_teach.widgets import run_viewer as run_viewer_module
from mnc_teach.widgets.run_viewer import GID_NO_CHECKPOINT, RunViewer


def real_config(root: Path, **train_values) -> MNCConfig:
    """shapes-cpu on 64 x 64 images, one image per step, 3 steps, validation and checkpoint at
    step 2."""
    cfg = shapes_cpu()
    values = dict(images_per_batch=1, accumulate=1, max_steps=3, warmup_steps=0, lr_steps=(),
                  val_every=2, checkpoint_every=2)
    values.update(train_values)
    data = dataclasses.replace(cfg.data, root=str(root), min_size=64, max_size=64)
    return dataclasses.replace(cfg, data=data, train=dataclasses.replace(cfg.train, **values))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, seed=0, num_train=4, num_val=3, image_size=64, progress=False)
    return root


@pytest.fixture(scope="module")
def finished_run(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "finished"
    train(real_config(shapes_root), run_dir, callbacks=())
    return run_dir


def scores_of(run_dir: Path, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """The detection scores of the checkpoint's model (load_model), one image at a time, for
    reference."""
    model, _ = load_model(run_dir / "checkpoint.pt", device="cpu")
    with torch.no_grad():
        return [model([image])[0][0]["scores"] for image in images]


def test_a_finished_run_shows_its_curves_status_and_gallery(
        finished_run: Path, shapes_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, val_set = build_datasets(real_config(shapes_root))
    viewer = RunViewer(finished_run, gallery=val_set, gallery_indices=(2, 0))
    history = TrainHistory.load(finished_run / "history.json")
    assert lines(viewer.history_figure, "train-")["train-total"] == [1, 2, 3]
    assert lines(viewer.history_figure, "val-") == {f"val-{t}": [2]
                                                    for t in [*history.terms(), "total"]}
    assert viewer.finished and viewer.checkpoint_step == 3
    for part in ("<b>finished</b>", "step 3/3", f"loss {history.steps[-1]['total']:.4f}",
                 f"val loss {history.val[-1]['total']:.4f} (step 2)", "checkpoint of step 3"):
        assert part in viewer.status.value
    assert bytes(viewer.history_image.value).startswith(b"\x89PNG")
    assert bytes(viewer.gallery_image.value).startswith(b"\x89PNG")

    images, targets = zip(*(val_set[i] for i in (2, 0)), strict=True)
    scores = scores_of(finished_run, list(images))
    assert all(len(s) > 0 for s in scores)
    shown_scores = [d["scores"] for d in viewer.detections]
    torch.testing.assert_close(shown_scores, scores, rtol=0, atol=1e-5)  # batched
    calls = []  # the slider redraws from the detections it has: no model runs again
    monkeypatch.setattr(run_viewer_module, "predict_images", lambda *args: calls.append(args))
    for threshold in (0.5, 0.0, float(torch.cat(scores).median())):
        viewer.score_slider.value = threshold
        threshold = viewer.score_slider.value  # the slider rounds to its step
        drawn = gallery_drawing(viewer.gallery_figure)
        for entry, target, image_scores in zip(drawn, targets, scores, strict=True):
            found = min(MAX_DRAWN, int((image_scores >= threshold).sum()))
            counts = (entry["truth"], entry["found"], entry["none"])
            assert counts == (len(target["boxes"]), found, int(found == 0))
            assert entry["title"].startswith("step 3: ")
    assert calls == []


def test_a_run_viewed_while_it_trains(shapes_root: Path, tmp_path: Path) -> None:
    """A viewer made at step 1 sees no checkpoint; reloaded at step 3 it sees steps 1-2, the
    step-2 validation and checkpoint; reloaded after the end it sees everything (train writes
    history.json at the start, after validations and with checkpoints)."""
    cfg = real_config(shapes_root)
    _, val_set = build_datasets(cfg)
    seen = {}

    class View:
        def on_step_end(self, state) -> None:
            if state.step == 1:
                seen["viewer"] = viewer = RunViewer(tmp_path, gallery=val_set, gallery_indices=(0,))
            else:
                viewer = seen["viewer"]
                viewer.reload_button.click()
            figure = viewer.gallery_figure
            seen[state.step] = {
                "train": lines(viewer.history_figure, "train-").get("train-total", []),
                "val": lines(viewer.history_figure, "val-").get("val-total", []),
                "checkpoint": viewer.checkpoint_step, "finished": viewer.finished,
                "status": viewer.status.value,
                "no checkpoint text": sum(t.get_gid() == GID_NO_CHECKPOINT for t in figure.texts),
                "gallery titles": [e["title"] for e in gallery_drawing(figure)],
            }

    train(cfg, tmp_path, callbacks=[View()])
    first, third = seen[1], seen[3]
    assert first["train"] == [] and first["val"] == [] and first["checkpoint"] is None
    assert first["no checkpoint text"] == 1 and "no checkpoint yet" in first["status"]
    assert "not finished" in first["status"] and "no validation losses" in first["status"]
    assert third["train"] == [1, 2] and third["val"] == [2] and third["checkpoint"] == 2
    assert third["no checkpoint text"] == 0
    assert [t[:8] for t in third["gallery titles"]] == ["step 2: "]
    assert not third["finished"] and "step 2/3" in third["status"]

    viewer = seen["viewer"]
    viewer.reload_button.click()
    assert lines(viewer.history_figure, "train-")["train-total"] == [1, 2, 3]
    assert viewer.finished and viewer.checkpoint_step == 3
    assert [e["title"][:8] for e in gallery_drawing(viewer.gallery_figure)] == ["step 3: "]


def fake_run(run_dir: Path, monkeypatch: pytest.MonkeyPatch, **train_values) -> Path:
    """A run of FakeMNC (fast), viewable: the viewer builds FakeMNC from its checkpoint."""
    train(small_config(**train_values), run_dir, callbacks=(), model=fake_model(),
          datasets=DATASETS)
    monkeypatch.setattr(checkpoint_module, "build_mnc", lambda cfg: FakeMNC())
    return run_dir


def test_reload_draws_a_longer_history_and_validation_once_there_is_one(tmp_path,
                                                                        monkeypatch) -> None:
    run_dir = fake_run(tmp_path, monkeypatch, max_steps=4, val_every=0)
    viewer = RunViewer(run_dir, gallery=FakeInstances(2))
    assert lines(viewer.history_figure, "train-total") == {"train-total": [1, 2, 3, 4]}
    assert lines(viewer.history_figure, "val-") == {}
    assert "no validation losses" in viewer.status.value

    # the run goes on (as another process would write it)
    history = TrainHistory.load(run_dir / "history.json")
    history.steps += [dict(history.steps[-1], step=step) for step in (5, 6)]
    last_losses = {k: v for k, v in history.steps[-1].items() if k.startswith("loss_")}
    history.val.append({"step": 6, **last_losses, "total": 1.0})
    history.save(run_dir / "history.json")
    gallery_png = viewer.gallery_image.value
    viewer.reload_button.click()
    assert lines(viewer.history_figure, "train-total") == {"train-total": [1, 2, 3, 4, 5, 6]}
    assert lines(viewer.history_figure, "val-total") == {"val-total": [6]}
    assert "step 6/4" in viewer.status.value
    assert "val loss 1.0000 (step 6)" in viewer.status.value
    assert viewer.gallery_image.value is gallery_png  # same checkpoint: the gallery is not redrawn


def test_watch_reloads_until_the_run_is_finished(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = fake_run(tmp_path, monkeypatch, max_steps=4, val_every=0)
    final_history = (run_dir / "history.json").read_text()
    final_checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    history = json.loads(final_history)
    (run_dir / "checkpoint.pt").unlink()
    (run_dir / "history.json").write_text(json.dumps({"steps": history["steps"][:1], "val": []}))
    viewer = RunViewer(run_dir, gallery=FakeInstances(1), frontend=True)
    writes = iter([{"steps": history["steps"][:2], "val": []},
                   {"steps": history["steps"][:3], "val": []}, None])

    def the_run_writes(seconds: float) -> None:  # what the training process does meanwhile
        written = next(writes)
        if written is None:
            (run_dir / "history.json").write_text(final_history)
            (run_dir / "checkpoint.pt").write_bytes(final_checkpoint)
        else:
            (run_dir / "history.json").write_text(json.dumps(written))

    monkeypatch.setattr(run_viewer_module.time, "sleep", the_run_writes)
    assert viewer.watch(seconds=60, every=5) == 3  # then the run is finished
    assert viewer.finished
    assert lines(viewer.history_figure, "train-total") == {"train-total": [1, 2, 3, 4]}
    assert viewer.watch(seconds=60, every=5) == 0


def test_missing_files_are_named_with_what_writes_them(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError,
                       match=r"no run folder .*nowhere.*python -m mnc_teach train --out"):
        RunViewer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError,
                       match=r"no .*empty/history.json: train writes it when a run starts"):
        RunViewer(tmp_path / "empty")

    run_dir = fake_run(tmp_path / "run", monkeypatch)
    viewer = RunViewer(run_dir)
    shutil.rmtree(run_dir)
    viewer.reload_button.click()  # a button's error goes to the status line
    assert "FileNotFoundError: no run folder" in viewer.status.value


def test_a_file_being_replaced_while_read_is_read_once_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = fake_run(tmp_path, monkeypatch, max_steps=2, val_every=0)
    monkeypatch.setattr(run_viewer_module, "RETRY_DELAY_S", 0.0)
    reads = []

    def fails_once(path):
        reads.append(path)
        if len(reads) == 1:
            raise ValueError(f"cannot read checkpoint {path} (unexpected EOF)")
        return load_checkpoint(path)

    monkeypatch.setattr(run_viewer_module, "load_checkpoint", fails_once)
    viewer = RunViewer(run_dir, gallery=FakeInstances(1))
    assert len(reads) == 2 and viewer.checkpoint_step == 2

    (run_dir / "history.json").write_text('{"steps": [')  # half a file: read again, then the error
    with pytest.raises(ValueError,
                       match=r"cannot read .*history.json .*not a history.json written by train"):
        viewer.reload()
