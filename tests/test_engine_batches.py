"""engine.batches: the datasets of a config (generated, resized, clear errors), the seeded epoch
order with flips, and the loader that serves an epoch from any step on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from voc_fixtures import build_sbd, build_voc

from mnc_teach.config import get_preset, override, shapes_cpu
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.data.voc import make_mnc_split
from mnc_teach.engine import batches as batches_module
from mnc_teach.engine.batches import build_datasets, epoch_loader, epoch_order


def test_epoch_order_is_a_seeded_permutation() -> None:
    order = epoch_order(50, seed=3, epoch=2, flip=True)
    assert sorted(i for i, _ in order) == list(range(50))
    assert order == epoch_order(50, seed=3, epoch=2, flip=True)
    assert order != epoch_order(50, seed=3, epoch=3, flip=True)
    assert order != epoch_order(50, seed=4, epoch=2, flip=True)
    assert 10 < sum(flip for _, flip in order) < 40
    assert not any(flip for _, flip in epoch_order(50, seed=3, epoch=2, flip=False))


def test_epoch_loader_starts_at_the_asked_step_and_flips_as_ordered(tiny_shapes: Path) -> None:
    cfg = _with_data(shapes_cpu(), root=str(tiny_shapes))
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, images_per_batch=1, accumulate=2, seed=5)
    )
    train_set, _ = build_datasets(cfg)
    order = epoch_order(len(train_set), seed=5, epoch=1, flip=cfg.data.flip)
    loader = epoch_loader(train_set, cfg, epoch=1, first_step=1, steps_per_epoch=3)
    batches = list(loader)
    assert len(batches) == 4  # steps 1 and 2, two micro-batches of one image each
    for (images, targets), (index, flip) in zip(batches, order[2:6], strict=True):
        image, _ = train_set[index]
        expected = image.flip(-1) if flip else image
        assert torch.equal(images[0], expected)
        assert targets[0]["image_id"] == train_set.image_ids[index]


def _with_data(cfg, **data_values):
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_values))


def test_build_datasets_resizes_and_names_a_missing_folder(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    cfg = _with_data(shapes_cpu(), root=str(tiny_shapes), min_size=96, max_size=96)
    train_ds, val_ds = build_datasets(cfg)
    assert (len(train_ds), len(val_ds)) == (6, 4)
    image, target = train_ds[0]
    assert image.shape == (3, 96, 96) and target["masks"].shape[-2:] == (96, 96)
    voc = _with_data(cfg, dataset="voc", format="voc", root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*download voc2012.*--data-root"):
        build_datasets(voc)


def test_build_datasets_generates_missing_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def small_generate(root, seed):
        calls.append(seed)
        return generate_shapes(
            root, seed=seed, num_train=4, num_val=2, image_size=64, progress=False
        )

    monkeypatch.setattr(batches_module, "generate_shapes", small_generate)
    train_ds, _ = build_datasets(_with_data(shapes_cpu(), root=str(tmp_path / "shapes")))
    assert calls == [0] and len(train_ds) == 4
    assert "generating" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["voc-vgg16-paper", "voc-resnet50"])
def test_paper_presets_read_mncs_sbd_split(tmp_path: Path, preset: str) -> None:
    """The VOC presets train on MNC's re-split of SBD (mnc_train / mnc_val), resized to
    600 / 1000."""
    voc, sbd = build_voc(tmp_path), build_sbd(tmp_path)
    make_mnc_split(sbd.root, voc.root)
    cfg = override(get_preset(preset), "data.root", str(sbd.root))
    train_set, val_set = build_datasets(cfg)
    assert (train_set.split, val_set.split, train_set.format) == ("mnc_train", "mnc_val", "sbd")
    assert len(train_set) == len(val_set) == 3 and train_set.num_classes == cfg.num_classes == 20
    image, target = train_set[0]
    assert min(image.shape[-2:]) == 600 or max(image.shape[-2:]) == 1000
    assert target["masks"].shape[-2:] == image.shape[-2:]
