"""The training loop with a fake model of MNC's interface: exact resume, data order, checkpoints,
non-finite losses, stop requests, the lr schedule, gradient accumulation, datasets and predict.

``FakeMNC`` and ``FakeInstances`` are imported by test_dashboard.py and test_cli.py too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from mnc_teach.config import MNCConfig, TrainConfig, shapes_cpu
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.data.transforms import ResizeShortestSide
from mnc_teach.data.voc import VOCInstanceSegmentation
from mnc_teach.engine import checkpoint as checkpoint_module
from mnc_teach.engine import loop as train_module
from mnc_teach.engine.checkpoint import load_checkpoint, load_model
from mnc_teach.engine.inference import predict
from mnc_teach.engine.loop import build_datasets, epoch_order, lr_factor, make_optimizer, train
from mnc_teach.engine.state import ProgressPrinter, TrainHistory
from mnc_teach.evaluation.coco import decode_mask

IMAGE_SIZE = 16


class FakeInstances(torch.utils.data.Dataset):
    """``n`` random 16 x 16 images, each with one 6 x 6 square of class 1 + i % 3 at column i % 8."""

    class_names = ("background", "a", "b", "c")

    def __init__(self, n: int = 10, prefix: str = "img") -> None:
        self.n, self.prefix = n, prefix

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(i))
        x = i % 8
        masks = torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        masks[0, 4:10, x : x + 6] = 1
        target = {"boxes": torch.tensor([[x, 4.0, x + 6, 10.0]]), "labels": torch.tensor([1 + i % 3]), "masks": masks,
                  "ignore": torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8), "image_id": f"{self.prefix}{i:03d}"}  # fmt: skip
        return image, target


class FakeMNC(nn.Module):
    """MNC's interface on a linear map: the losses depend on the parameters, on the target boxes
    (so on flips) and, in training, on the global RNG (as MNC's anchor/RoI sampling does).
    In eval mode every image gets one detection: the centre square of half the image's side."""

    def __init__(self, noise: bool = True, nan_at_call: int | None = None, delay_s: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Linear(3, 4)
        self.scale = nn.Parameter(torch.ones(4))  # 1-d, like a norm parameter: no weight decay
        self.noise, self.nan_at_call, self.delay_s = noise, nan_at_call, delay_s
        self.calls, self.seen = 0, []  # training forward calls; (image_id, x1 of its box) fed in training

    def forward(self, images, targets=None, detect=None):
        out = self.features(torch.stack([image.mean(dim=(1, 2)) for image in images])) * self.scale  # (N, 4)
        if self.noise and self.training:
            out = out + 0.01 * torch.rand_like(out)
        detections = []
        for image, row in zip(images, out, strict=True):
            height, width = image.shape[-2:]
            masks = torch.zeros(1, 1, height, width)
            masks[..., height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1.0
            boxes = torch.tensor([[width / 4, height / 4, 3 * width / 4, 3 * height / 4]])
            detections.append({"boxes": boxes, "labels": torch.tensor([1]), "scores": torch.sigmoid(row[:1]).detach(), "masks": masks})
        if targets is None:
            return detections, {}
        goal = torch.stack([t["boxes"][0] / image.shape[-1] for t, image in zip(targets, images, strict=True)])  # (N, 4)
        losses = {"loss_a": ((out[:, :2] - goal[:, :2]) ** 2).mean(), "loss_b": (out[:, 2:] - goal[:, 2:]).abs().mean()}
        if self.training:
            self.calls += 1
            self.seen += [(t["image_id"], round(float(t["boxes"][0, 0]))) for t in targets]
            if self.calls == self.nan_at_call:
                losses["loss_b"] = losses["loss_b"] * float("nan")
            if self.delay_s:
                import time

                time.sleep(self.delay_s)
        return detections, losses


def fake_model(**kwargs) -> FakeMNC:
    torch.manual_seed(0)
    return FakeMNC(**kwargs)


def small_config(**train_values) -> MNCConfig:
    """shapes-cpu with a tiny schedule: 2 images x 2 accumulated per step, flips on."""
    cfg = shapes_cpu()
    values = dict(seed=1, images_per_batch=2, accumulate=2, max_steps=8, lr=0.05, lr_steps=(5,), warmup_steps=2,
                  checkpoint_every=4, val_every=3, log_every=2, grad_clip_norm=1.0)  # fmt: skip
    values.update(train_values)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **values))


def without_timing(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "images_per_s"} for entry in entries]


def assert_same_entries(got: list[dict], expected: list[dict]) -> None:
    assert [e.keys() for e in got] == [e.keys() for e in expected]
    for a, b in zip(got, expected, strict=True):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)


DATASETS = (FakeInstances(10), FakeInstances(3, prefix="val"))


def test_resume_continues_the_uninterrupted_run(tmp_path: Path) -> None:
    straight_model = fake_model()
    straight = train(small_config(), tmp_path / "a", callbacks=(), model=straight_model, datasets=DATASETS)
    first_model = fake_model()
    first = train(small_config(max_steps=3), tmp_path / "b", callbacks=(), model=first_model, datasets=DATASETS)
    assert len(first.steps) == 3 and load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    resumed_model = FakeMNC()  # other initial weights: all of them come from the checkpoint
    resumed = train(small_config(), tmp_path / "b", resume=True, callbacks=(), model=resumed_model, datasets=DATASETS)

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
    train(small_config(max_steps=5, val_every=0), tmp_path, callbacks=(), model=model, datasets=DATASETS)
    # 10 images // 4 per step = 2 steps per epoch; the 2 left over wait for the next epoch
    expected = []
    for epoch in range(3):
        for index, flip in epoch_order(10, seed=1, epoch=epoch, flip=True)[:8]:
            x1 = index % 8
            expected.append((f"img{index:03d}", IMAGE_SIZE - (x1 + 6) if flip else x1))
    assert model.seen == expected[: 5 * 4]
    assert any(x1 != int(image_id[3:]) % 8 for image_id, x1 in model.seen)  # some images were mirrored


def test_epoch_order_is_a_seeded_permutation() -> None:
    order = epoch_order(50, seed=3, epoch=2, flip=True)
    assert sorted(i for i, _ in order) == list(range(50))
    assert order == epoch_order(50, seed=3, epoch=2, flip=True)
    assert order != epoch_order(50, seed=3, epoch=3, flip=True) != epoch_order(50, seed=4, epoch=2, flip=True)
    assert 10 < sum(flip for _, flip in order) < 40
    assert not any(flip for _, flip in epoch_order(50, seed=3, epoch=2, flip=False))


def test_checkpoint_loads_with_weights_only_and_holds_everything(tmp_path: Path) -> None:
    cfg = small_config(max_steps=4, val_every=0)
    train(cfg, tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "step", "config", "rng", "history"} <= checkpoint.keys()
    assert checkpoint["step"] == 4 and MNCConfig.from_dict(checkpoint["config"]) == cfg
    assert set(checkpoint["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "history.json"]  # no temp files left


def test_stop_request_saves_a_checkpoint_and_ends(tmp_path: Path) -> None:
    class StopAtThree:
        def on_step_end(self, state) -> None:
            state.stop_requested = state.step == 3

    history = train(small_config(val_every=0), tmp_path, callbacks=[StopAtThree()], model=fake_model(), datasets=DATASETS)
    assert [e["step"] for e in history.steps] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert json.loads((tmp_path / "history.json").read_text()) == history.to_dict()


def test_history_json_is_written_at_the_start_after_validations_and_with_checkpoints(tmp_path: Path) -> None:
    """A viewer of a running run (mnc_teach.widgets.run_viewer) reads history.json: it must follow the run."""
    train(small_config(max_steps=2, val_every=0), tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    seen = {}

    class ReadHistory:
        def on_train_start(self, state) -> None:
            seen[0] = TrainHistory.load(tmp_path / "history.json")

        def on_step_end(self, state) -> None:  # before this step's validation and checkpoint
            seen[state.step] = TrainHistory.load(tmp_path / "history.json")

    cfg = small_config(max_steps=8, val_every=3, checkpoint_every=4)
    history = train(cfg, tmp_path, callbacks=[ReadHistory()], model=fake_model(), datasets=DATASETS, overwrite=True)
    assert seen[0].to_dict() == {"steps": [], "val": []}  # the overwritten run's history is gone at once
    t = cfg.train
    for step in range(1, 9):
        written = max([0] + [s for s in range(1, step) if s % t.val_every == 0 or s % t.checkpoint_every == 0])
        assert seen[step].steps == history.steps[:written], step
        assert seen[step].val == [e for e in history.val if e["step"] <= written], step
    assert TrainHistory.load(tmp_path / "history.json").to_dict() == history.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "history.json"]  # no temp files left


def test_non_finite_loss_names_term_and_step_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    saved = {}

    class ReadCheckpoint:
        def on_step_end(self, state) -> None:
            if state.step == 5:
                saved["bytes"] = (tmp_path / "checkpoint.pt").read_bytes()

    cfg = small_config(accumulate=1, val_every=0)  # one forward call per step: call 6 is step 6
    with pytest.raises(FloatingPointError, match=r"step 6: loss_b is nan; the last good checkpoint .* \(step 4\) is kept"):
        train(cfg, tmp_path, callbacks=[ReadCheckpoint()], model=fake_model(nan_at_call=6), datasets=DATASETS)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved["bytes"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_refuses_to_overwrite_or_resume_with_other_settings(tmp_path: Path) -> None:
    train(small_config(max_steps=2), tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_config(max_steps=2), tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    with pytest.raises(ValueError, match=r"other settings \(train.lr\)"):
        train(small_config(max_steps=4, lr=0.1), tmp_path, resume=True, callbacks=(), model=fake_model(), datasets=DATASETS)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(small_config(), tmp_path / "new", resume=True, callbacks=(), model=fake_model(), datasets=DATASETS)


def test_lr_factor_warmup_and_steps() -> None:
    cfg = TrainConfig(lr_steps=(5, 8), gamma=0.1, warmup_steps=4, warmup_factor=0.2)
    factors = [lr_factor(step, cfg) for step in (0, 2, 4, 5, 7, 8, 100)]
    assert factors == pytest.approx([0.2, 0.2 * 0.5 + 0.5, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_history_records_the_scheduled_lr(tmp_path: Path) -> None:
    cfg = small_config(val_every=0)
    history = train(cfg, tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS)
    assert [e["lr"] for e in history.steps] == pytest.approx([cfg.train.lr * lr_factor(s, cfg.train) for s in range(8)])
    for entry in history.steps:
        assert entry["total"] == pytest.approx(entry["loss_a"] + entry["loss_b"])
        assert entry["images_per_s"] > 0


def test_accumulating_two_micro_batches_equals_one_batch_of_two(tmp_path: Path) -> None:
    models = []
    for name, (per_batch, accumulate) in {"batch": (2, 1), "accumulated": (1, 2)}.items():
        model = fake_model(noise=False)
        cfg = small_config(images_per_batch=per_batch, accumulate=accumulate, max_steps=1, val_every=0, grad_clip_norm=None)
        train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, flip=False)), tmp_path / name,
              callbacks=(), model=model, datasets=DATASETS)  # fmt: skip
        models.append(model)
    assert models[0].seen == models[1].seen
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(models[0].features.weight, fake_model().features.weight)  # it did train


def test_weight_decay_only_on_trainable_weights() -> None:
    model = fake_model()
    model.features.bias.requires_grad_(False)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=1e-4))
    groups = {group["weight_decay"]: group["params"] for group in optimizer.param_groups}
    assert [tuple(p.shape) for p in groups[1e-4]] == [(4, 3)]
    assert [tuple(p.shape) for p in groups[0.0]] == [(4,)]  # the scale; the frozen bias is left out


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, seed=0, num_train=6, num_val=4, image_size=64, progress=False)
    return root


def test_build_datasets_resizes_and_names_a_missing_folder(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = shapes_cpu()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tiny_shapes), min_size=96, max_size=96))
    train_ds, val_ds = build_datasets(cfg)
    assert (len(train_ds), len(val_ds)) == (6, 4)
    image, target = train_ds[0]
    assert image.shape == (3, 96, 96) and target["masks"].shape[-2:] == (96, 96)
    voc = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset="voc", format="voc", root=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*download voc2012.*--data-root"):
        build_datasets(voc)


def test_build_datasets_generates_missing_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    calls = []

    def small_generate(root, seed):
        calls.append(seed)
        return generate_shapes(root, seed=seed, num_train=4, num_val=2, image_size=64, progress=False)

    monkeypatch.setattr(train_module, "generate_shapes", small_generate)
    cfg = shapes_cpu()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path / "shapes")))
    train_ds, _ = build_datasets(cfg)
    assert calls == [0] and len(train_ds) == 4
    assert "generating" in capsys.readouterr().out


def test_predict_maps_masks_back_to_the_image_size(tiny_shapes: Path) -> None:
    plain = VOCInstanceSegmentation(tiny_shapes, split="val")
    resized = VOCInstanceSegmentation(tiny_shapes, split="val", transforms=ResizeShortestSide(96, 96))
    model = fake_model()  # predicts the centre square, half the side of the image it sees
    for dataset in (plain, resized):
        results = predict(model, dataset, progress=False)
        assert [r["image_id"] for r in results] == plain.image_ids
        for result in results:
            mask = decode_mask(result["segmentation"])
            expected = torch.zeros(64, 64, dtype=torch.bool)
            expected[16:48, 16:48] = True
            assert torch.equal(torch.from_numpy(mask).bool(), expected)
            assert result["bbox"] == pytest.approx([16, 16, 32, 32])
    assert model.training  # predict restores the mode


def test_load_model_returns_the_trained_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fake_model()
    cfg = small_config(max_steps=2, val_every=0)
    train(cfg, tmp_path, callbacks=(), model=model, datasets=DATASETS)
    monkeypatch.setattr(checkpoint_module, "build_mnc", lambda cfg: FakeMNC())
    loaded, loaded_cfg = load_model(tmp_path / "checkpoint.pt", device="cpu")
    assert loaded_cfg == cfg and not loaded.training
    for a, b in zip(loaded.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")


def test_progress_printer_prints_every_log_every_steps(tmp_path: Path, capsys) -> None:
    train(small_config(max_steps=4), tmp_path, callbacks=[ProgressPrinter(bar=False)],
          model=fake_model(), datasets=DATASETS)  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    step_lines = [line for line in lines if line.startswith("step ") and "val" not in line]
    assert [line.split()[1] for line in step_lines] == ["2/4", "4/4"]
    assert "a " in step_lines[0] and "b " in step_lines[0] and not math.isnan(float(step_lines[0].split()[3]))
    assert any(line.startswith("step 3: val loss") for line in lines)
    assert lines[-1].startswith("finished at step 4")


def test_real_mnc_resumes_exactly_and_predicts(tiny_shapes: Path, tmp_path: Path) -> None:
    """build_mnc(shapes-cpu) on 64 x 64 images: 2 steps straight == resuming its step-1 checkpoint, then predict."""
    cfg = shapes_cpu()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, root=str(tiny_shapes), min_size=64, max_size=64),
        train=dataclasses.replace(cfg.train, images_per_batch=1, accumulate=1, max_steps=2, val_every=0, warmup_steps=0),
        inference=dataclasses.replace(cfg.inference, detections_per_image=5, mask_voting=False),
    )

    class KeepStepOne:  # the step-1 checkpoint, copied before step 2 replaces it (saves training a second run)
        def on_step_end(self, state) -> None:
            if state.step == 2:
                (tmp_path / "b").mkdir()
                shutil.copy(state.checkpoint_path, tmp_path / "b" / "checkpoint.pt")

    straight = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=1)), tmp_path / "a",
                     callbacks=[KeepStepOne()])  # fmt: skip
    resumed = train(cfg, tmp_path / "b", resume=True, callbacks=())
    assert {"loss_rpn_obj", "loss_mask", "loss_cls", "loss_mask_s4", "loss_cls_s5"} <= set(straight.terms())
    assert_same_entries(without_timing(resumed.steps), without_timing(straight.steps))

    model, loaded_cfg = load_model(tmp_path / "b" / "checkpoint.pt", device="cpu")
    assert loaded_cfg == cfg
    val = VOCInstanceSegmentation(tiny_shapes, split="val")
    results = predict(model, torch.utils.data.Subset(val, [0]), progress=False)
    assert results and all(r["image_id"] == val.image_ids[0] and r["segmentation"]["size"] == [64, 64] for r in results)


@pytest.mark.parametrize("preset", ["voc-vgg16-paper", "voc-resnet50"])
def test_paper_presets_read_mncs_sbd_split(tmp_path: Path, preset: str) -> None:
    """The VOC presets train on MNC's re-split of SBD (mnc_train / mnc_val), resized to 600 / 1000."""
    from voc_fixtures import build_sbd, build_voc

    from mnc_teach.config import get_preset, override
    from mnc_teach.data.voc import make_mnc_split

    voc, sbd = build_voc(tmp_path), build_sbd(tmp_path)
    make_mnc_split(sbd.root, voc.root)
    cfg = override(get_preset(preset), "data.root", str(sbd.root))
    train_set, val_set = build_datasets(cfg)
    assert (train_set.split, val_set.split, train_set.format) == ("mnc_train", "mnc_val", "sbd")
    assert len(train_set) == len(val_set) == 3 and train_set.num_classes == cfg.num_classes == 20
    image, target = train_set[0]
    assert min(image.shape[-2:]) == 600 or max(image.shape[-2:]) == 1000
    assert target["masks"].shape[-2:] == image.shape[-2:]
