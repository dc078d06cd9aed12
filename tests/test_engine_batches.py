"""engine.batches: the datasets of a config (generated, resized, clear errors), the seeded epoch
order with flips (grouped by orientation on request), how processes share a step, and the loader
that serves the epochs from any step on."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from voc_fixtures import build_sbd, build_voc

from mnc_teach.config import get_preset, override, shapes_cpu
from mnc_teach.data.shapes import generate_shapes
from mnc_teach.data.voc import make_mnc_split
from mnc_teach.engine import batches as batches_module
from mnc_teach.engine.batches import (
    StepSampler,
    build_datasets,
    epoch_loader,
    epoch_order,
    image_orientations,
    split_step,
    train_loader,
)
from mnc_teach.engine.distributed import World


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


# ----------------------------------------------------------------------------- sharing a step


@pytest.mark.parametrize(
    ("per_batch", "accumulate", "processes", "expected"),
    [
        (1, 8, 8, (1, 1)),  # the paper: 8 GPUs x 1 image = 1 image x 8 accumulated
        (1, 8, 2, (1, 4)),
        (8, 1, 2, (4, 1)),  # shapes-cpu on 2 processes: half a micro-batch each
        (2, 2, 4, (1, 1)),
        (2, 3, 2, (1, 3)),
        (4, 2, 1, (4, 2)),  # on its own: the config as it is
    ],
)
def test_split_step_shares_a_step_equally(per_batch, accumulate, processes, expected) -> None:
    micro_batch, micro_batches = split_step(per_batch, accumulate, processes)
    assert (micro_batch, micro_batches) == expected
    assert micro_batch * micro_batches * processes == per_batch * accumulate
    assert per_batch % micro_batch == 0  # a micro-batch lies inside one of the config's


def test_split_step_refuses_a_step_it_cannot_share() -> None:
    with pytest.raises(ValueError, match=r"3 x 1 images .* by 2 processes.*train.accumulate=2"):
        split_step(3, 1, 2)


def test_the_processes_share_each_step_as_one_process_sees_it() -> None:
    cfg = shapes_cpu()
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, images_per_batch=2, accumulate=3)
    )
    one = StepSampler(40, cfg, steps_per_epoch=6)
    shares = [
        StepSampler(40, cfg, steps_per_epoch=6, world=World(rank=rank, size=3)) for rank in range(3)
    ]
    for sampler in (one, *shares):
        sampler.set_epoch(2, first_step=1)
    whole, parts = list(one), [list(share) for share in shares]
    assert whole == epoch_order(40, seed=cfg.train.seed, epoch=2, flip=True)[6:36]
    assert len(one) == 30 and [len(share) for share in shares] == [10, 10, 10]
    for step in range(5):  # each step's 6 images: 2 per process, in order
        shared = [key for part in parts for key in part[2 * step : 2 * step + 2]]
        assert whole[6 * step : 6 * step + 6] == shared


class _Sized(torch.utils.data.Dataset):
    """Blank images of the given (height, width)."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int):
        return torch.zeros(3, *self.sizes[index]), {"image_id": f"im{index}"}


def test_image_orientations_from_images_or_file_headers(tmp_path: Path) -> None:
    sizes = [(30, 40), (40, 30), (35, 35), (10, 90)]
    assert image_orientations(_Sized(sizes)) == [True, False, True, True]

    class Files(_Sized):  # the files are read only for their headers
        def image_path(self, index: int) -> Path:
            path = tmp_path / f"{index}.png"
            Image.new("RGB", self.sizes[index][::-1]).save(path)
            return path

        def __getitem__(self, index: int):
            raise AssertionError("the image was decoded")

    assert image_orientations(Files(sizes)) == [True, False, True, True]


def test_grouped_order_has_micro_batches_of_one_orientation() -> None:
    landscape = [i % 3 != 0 for i in range(23)]  # 15 landscape, 8 portrait
    plain = epoch_order(23, seed=4, epoch=1, flip=True)
    grouped = epoch_order(23, seed=4, epoch=1, flip=True, landscape=landscape, batch_size=4)
    assert sorted(grouped) == sorted(plain)  # the same images with the same flips
    assert grouped != plain
    assert grouped == epoch_order(23, seed=4, epoch=1, flip=True, landscape=landscape, batch_size=4)
    batches = [grouped[start : start + 4] for start in range(0, 20, 4)]  # 3 + 2 whole runs
    assert all(len({landscape[i] for i, _ in batch}) == 1 for batch in batches)
    assert sum(landscape[batch[0][0]] for batch in batches) == 3
    # nothing to group: one orientation, or micro-batches of 1 image
    for values in ({"landscape": [True] * 23, "batch_size": 4}, {"landscape": landscape}):
        assert epoch_order(23, seed=4, epoch=1, flip=True, **values) == plain


def test_one_loader_serves_every_epoch_with_persistent_workers(tiny_shapes: Path) -> None:
    cfg = _with_data(shapes_cpu(), root=str(tiny_shapes), num_workers=1)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, images_per_batch=2, accumulate=1, seed=5)
    )
    train_set, _ = build_datasets(cfg)
    loader = train_loader(_NotePid(train_set), cfg, steps_per_epoch=3)
    assert loader.persistent_workers and not loader.pin_memory
    pids = set()
    for epoch, first_step in [(0, 1), (1, 0), (2, 2)]:
        loader.sampler.set_epoch(epoch, first_step=first_step)
        in_workers = list(loader)
        pids |= {t["pid"] for _, targets in in_workers for t in targets}
        here = epoch_loader(
            train_set, _with_data(cfg, num_workers=0), epoch=epoch, first_step=first_step,
            steps_per_epoch=3,
        )
        expected = list(here)
        assert len(in_workers) == len(expected) == 3 - first_step
        for (images, targets), (images_here, targets_here) in zip(
            in_workers, expected, strict=True
        ):
            assert [t["image_id"] for t in targets] == [t["image_id"] for t in targets_here]
            # (a worker resizes with 1 thread: torch's bilinear resize then rounds differently)
            torch.testing.assert_close(images, images_here, rtol=0, atol=1e-6)
    assert len(pids) == 1 and os.getpid() not in pids  # one worker, the same for every epoch


class _NotePid(torch.utils.data.Dataset):
    """``dataset``, each target noting the process that loaded it."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, {**target, "pid": os.getpid()}


def test_loader_groups_micro_batches_by_orientation_on_request() -> None:
    sizes = [(30, 40) if i % 3 else (40, 30) for i in range(24)]  # 16 landscape, 8 portrait
    cfg = _with_data(shapes_cpu(), flip=False)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, images_per_batch=4, accumulate=2, seed=2)
    )
    data = dataclasses.replace(cfg.data)
    data.group_by_aspect = True  # (a setting of config.py: data.group_by_aspect)
    grouped = dataclasses.replace(cfg, data=data)
    for world in (World(), World(rank=1, size=2), World(rank=1, size=8)):
        mixed = {}
        for name, config in {"plain": cfg, "grouped": grouped}.items():
            loader = train_loader(_Sized(sizes), config, steps_per_epoch=3, world=world)
            loader.sampler.set_epoch(1)
            mixed[name] = sum(len({image.shape for image in images}) > 1 for images, _ in loader)
        assert mixed["grouped"] == 0, world  # every micro-batch of one orientation
        assert mixed["plain"] > 0 or world.size == 8  # (8 processes: micro-batches of 1 image)
