"""The training loop with a fake model of MNC's interface: exact resume, data order, non-finite
losses, stop requests, the lr schedule, gradient accumulation, the precision of AMP; and the real
MNC resuming exactly (and, where CUDA is, training with AMP). Several processes:
tests/test_engine_distributed.py.

The fakes (FakeMNC, FakeInstances, small_config) are in tests/fakes.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from fakes import (
    DATASETS,
    IMAGE_SIZE,
    FakeMNC,
    assert_same_entries,
    fake_model,
    small_config,
    without_timing,
)

from mnc_teach.config import TrainConfig, shapes_cpu
from mnc_teach.data.voc import VOCInstanceSegmentation
from mnc_teach.engine import loop as loop_module
from mnc_teach.engine.batches import epoch_order
from mnc_teach.engine.checkpoint import load_checkpoint, load_model
from mnc_teach.engine.inference import predict
from mnc_teach.engine.loop import autocast_dtype, lr_factor, make_optimizer, train
from mnc_teach.engine.state import TrainHistory


def test_resume_continues_the_uninterrupted_run(tmp_path: Path) -> None:
    straight_model = fake_model()
    straight = train(
        small_config(), tmp_path / "a", callbacks=(), model=straight_model, datasets=DATASETS
    )
    first_model = fake_model()
    first = train(
        small_config(max_steps=3), tmp_path / "b", callbacks=(), model=first_model,
        datasets=DATASETS,
    )
    assert len(first.steps) == 3 and load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    resumed_model = FakeMNC()  # other initial weights: all of them come from the checkpoint
    resumed = train(
        small_config(), tmp_path / "b", resume=True, callbacks=(), model=resumed_model,
        datasets=DATASETS,
    )

    assert [e["step"] for e in resumed.steps] == list(range(1, 9))
    assert_same_entries(without_timing(resumed.steps), without_timing(straight.steps))
    assert [e["step"] for e in straight.val] == [3, 6]
    assert_same_entries(resumed.val, straight.val)
    for a, b in zip(resumed_model.parameters(), straight_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the same images (and flips) in the same order: 4 images per step, steps 4-8 after the resume
    assert resumed_model.seen == straight_model.seen[3 * 4 :]
    assert first_model.seen == straight_model.seen[: 3 * 4]
    assert TrainHistory.load(tmp_path / "b" / "history.json").to_dict() == resumed.to_dict()


def test_each_step_feeds_the_epoch_order(tmp_path: Path) -> None:
    model = fake_model()
    cfg = small_config(max_steps=5, val_every=0)
    train(cfg, tmp_path, callbacks=(), model=model, datasets=DATASETS)
    # 10 images // 4 per step = 2 steps per epoch; the 2 left over wait for the next epoch
    expected = []
    for epoch in range(3):
        for index, flip in epoch_order(10, seed=1, epoch=epoch, flip=True)[:8]:
            x1 = index % 8
            expected.append((f"img{index:03d}", IMAGE_SIZE - (x1 + 6) if flip else x1))
    assert model.seen == expected[: 5 * 4]
    assert any(x1 != int(image_id[3:]) % 8 for image_id, x1 in model.seen)  # some were mirrored


def test_stop_request_saves_a_checkpoint_and_ends(tmp_path: Path) -> None:
    class StopAtThree:
        def on_step_end(self, state) -> None:
            state.stop_requested = state.step == 3

    history = train(
        small_config(val_every=0), tmp_path, callbacks=[StopAtThree()], model=fake_model(),
        datasets=DATASETS,
    )
    assert [e["step"] for e in history.steps] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert json.loads((tmp_path / "history.json").read_text()) == history.to_dict()


def test_history_json_is_written_at_the_start_after_validations_and_with_checkpoints(
    tmp_path: Path,
) -> None:
    """A viewer of a running run (mnc_teach.widgets.run_viewer) reads history.json: it must
    follow the run."""
    cfg = small_config(max_steps=2, val_every=0)
    train(cfg, tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    seen = {}

    class ReadHistory:
        def on_train_start(self, state) -> None:
            seen[0] = TrainHistory.load(tmp_path / "history.json")

        def on_step_end(self, state) -> None:  # before this step's validation and checkpoint
            seen[state.step] = TrainHistory.load(tmp_path / "history.json")

    cfg = small_config(max_steps=8, val_every=3, checkpoint_every=4)
    history = train(
        cfg, tmp_path, callbacks=[ReadHistory()], model=fake_model(), datasets=DATASETS,
        overwrite=True,
    )
    assert seen[0].to_dict() == {"steps": [], "val": []}  # the overwritten run's history is gone
    t = cfg.train
    for step in range(1, 9):
        saved_at = [0] + [s for s in range(1, step) if s % t.val_every == 0]
        saved_at += [s for s in range(1, step) if s % t.checkpoint_every == 0]
        written = max(saved_at)
        assert seen[step].steps == history.steps[:written], step
        assert seen[step].val == [e for e in history.val if e["step"] <= written], step
    assert TrainHistory.load(tmp_path / "history.json").to_dict() == history.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "history.json"]


def test_non_finite_loss_names_term_and_step_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    saved = {}

    class ReadCheckpoint:
        def on_step_end(self, state) -> None:
            if state.step == 5:
                saved["bytes"] = (tmp_path / "checkpoint.pt").read_bytes()

    cfg = small_config(accumulate=1, val_every=0)  # one forward call per step: call 6 is step 6
    message = (
        r"step 6: loss_b is nan; the last checkpoint written, .* \(step 4, finite weights\), "
        "is kept"
    )
    with pytest.raises(FloatingPointError, match=message):
        train(
            cfg, tmp_path, callbacks=[ReadCheckpoint()], model=fake_model(nan_at_call=6),
            datasets=DATASETS,
        )
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved["bytes"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_refuses_to_overwrite_or_resume_with_other_settings(tmp_path: Path) -> None:
    def run(cfg, out_dir, **kwargs):
        return train(cfg, out_dir, callbacks=(), model=fake_model(), datasets=DATASETS, **kwargs)

    run(small_config(max_steps=2), tmp_path)
    with pytest.raises(FileExistsError, match="--resume"):
        run(small_config(max_steps=2), tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(train.lr\)"):
        run(small_config(max_steps=4, lr=0.1), tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        run(small_config(), tmp_path / "new", resume=True)


def test_refuses_a_training_set_smaller_than_one_step(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 images, fewer than one step's 2 x 2"):
        train(
            small_config(), tmp_path, callbacks=(), model=fake_model(),
            datasets=(DATASETS[1], None),
        )
    assert not tmp_path.joinpath("checkpoint.pt").exists()


def test_lr_factor_warmup_and_steps() -> None:
    cfg = TrainConfig(lr_steps=(5, 8), gamma=0.1, warmup_steps=4, warmup_factor=0.2)
    factors = [lr_factor(step, cfg) for step in (0, 2, 4, 5, 7, 8, 100)]
    assert factors == pytest.approx([0.2, 0.2 * 0.5 + 0.5, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_history_records_the_scheduled_lr(tmp_path: Path) -> None:
    cfg = small_config(val_every=0)
    history = train(cfg, tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    expected = [cfg.train.lr * lr_factor(s, cfg.train) for s in range(8)]
    assert [e["lr"] for e in history.steps] == pytest.approx(expected)
    for entry in history.steps:
        assert entry["total"] == pytest.approx(entry["loss_a"] + entry["loss_b"])
        assert entry["images_per_s"] > 0


def test_accumulating_two_micro_batches_equals_one_batch_of_two(tmp_path: Path) -> None:
    models = []
    for name, (per_batch, accumulate) in {"batch": (2, 1), "accumulated": (1, 2)}.items():
        model = fake_model(noise=False)
        cfg = small_config(
            images_per_batch=per_batch, accumulate=accumulate, max_steps=1, val_every=0,
            grad_clip_norm=None,
        )
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, flip=False))
        train(cfg, tmp_path / name, callbacks=(), model=model, datasets=DATASETS)
        models.append(model)
    assert models[0].seen == models[1].seen
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(models[0].features.weight, fake_model().features.weight)  # it trained


def test_weight_decay_only_on_trainable_weights() -> None:
    model = fake_model()
    model.features.bias.requires_grad_(False)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=1e-4))
    groups = {group["weight_decay"]: group["params"] for group in optimizer.param_groups}
    assert [tuple(p.shape) for p in groups[1e-4]] == [(4, 3)]
    assert [tuple(p.shape) for p in groups[0.0]] == [(4,)]  # the scale; the frozen bias is left out


def test_real_mnc_resumes_exactly_and_predicts(tiny_shapes: Path, tmp_path: Path) -> None:
    """build_mnc(shapes-cpu) on 64 x 64 images: 2 steps straight == resuming its step-1
    checkpoint, then predict."""
    cfg = shapes_cpu()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, root=str(tiny_shapes), min_size=64, max_size=64),
        train=dataclasses.replace(
            cfg.train, images_per_batch=1, accumulate=1, max_steps=2, val_every=0, warmup_steps=0
        ),
        inference=dataclasses.replace(cfg.inference, detections_per_image=5, mask_voting=False),
    )

    class KeepStepOne:  # the step-1 checkpoint, copied before step 2 replaces it
        def on_step_end(self, state) -> None:
            if state.step == 2:
                (tmp_path / "b").mkdir()
                shutil.copy(state.checkpoint_path, tmp_path / "b" / "checkpoint.pt")

    every_step = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=1))
    straight = train(every_step, tmp_path / "a", callbacks=[KeepStepOne()])
    resumed = train(cfg, tmp_path / "b", resume=True, callbacks=())
    terms = {"loss_rpn_obj", "loss_mask", "loss_cls_mask", "loss_mask_s4", "loss_cls_mask_s5"}
    assert terms <= set(straight.terms())
    assert_same_entries(without_timing(resumed.steps), without_timing(straight.steps))

    model, loaded_cfg = load_model(tmp_path / "b" / "checkpoint.pt", device="cpu")
    assert loaded_cfg == cfg
    val = VOCInstanceSegmentation(tiny_shapes, split="val")
    results = predict(model, torch.utils.data.Subset(val, [0]), progress=False)
    assert results
    for result in results:
        assert result["image_id"] == val.image_ids[0]
        assert result["segmentation"]["size"] == [64, 64]


def test_mixed_precision_is_bfloat16_where_native_else_float16_on_cuda_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert autocast_dtype(TrainConfig(amp=True), cpu) is None  # AMP on CUDA only
    assert autocast_dtype(TrainConfig(amp=False), cuda) is None
    for native, dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(loop_module, "_native_bf16", lambda device, native=native: native)
        assert autocast_dtype(TrainConfig(amp=True), cuda) == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_mnc_trains_with_mixed_precision_on_cuda(tiny_shapes: Path, tmp_path: Path) -> None:
    """Two steps of build_mnc(shapes-cpu) with AMP on the GPU: finite losses; a GradScaler only
    for float16."""
    cfg = shapes_cpu()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, root=str(tiny_shapes), min_size=64, max_size=64),
        train=dataclasses.replace(cfg.train, images_per_batch=2, accumulate=1, max_steps=2,
                                  val_every=0, amp=True),
    )
    seen = {}

    class Note:
        def on_train_end(self, state) -> None:
            seen["scaler"] = state.scaler.is_enabled()

    history = train(cfg, tmp_path, callbacks=[Note()], device="cuda")
    assert [e["step"] for e in history.steps] == [1, 2]
    assert all(math.isfinite(e["total"]) for e in history.steps)
    assert seen["scaler"] == (autocast_dtype(cfg.train, torch.device("cuda")) == torch.float16)
