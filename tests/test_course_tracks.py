"""course.tracks: the parameter cell's TRACK picks the data, the preset and the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from voc_fixtures import build_voc_and_sbd

from mnc_teach.cascade import build_mnc
from mnc_teach.config import override, shapes_cpu
from mnc_teach.course.tracks import DataMissing, course_track
from mnc_teach.data import collate
from mnc_teach.engine.batches import build_datasets


def test_the_shapes_track_is_the_cpu_preset_on_data_root_shapes(tmp_path: Path) -> None:
    track = course_track("shapes", data_root=tmp_path, fast=True, device="cpu")
    assert track.cfg == override(shapes_cpu(), "data.root", str(tmp_path / "shapes"))
    assert track.device == torch.device("cpu") and track.data_root == tmp_path / "shapes"
    track.prepare(num_train=4, num_val=2)
    train_set, val_set = build_datasets(track.cfg)
    assert (len(train_set), len(val_set)) == (4, 2)


def test_the_voc_track_says_what_is_missing_and_how_to_get_it(tmp_path: Path) -> None:
    track = course_track("voc", data_root=tmp_path, fast=True, device="cpu")
    with pytest.raises(DataMissing) as error:
        track.prepare()
    message = str(error.value)
    assert f"download sbd --root {tmp_path}" in message
    assert f"download voc2012 --root {tmp_path}" in message and 'TRACK = "shapes"' in message


def test_the_fast_voc_track_trains_the_vgg16_cascade_on_the_fixture(tmp_path: Path) -> None:
    root = build_voc_and_sbd(tmp_path / "data")
    track = course_track("voc", data_root=root, fast=True, device="cpu")
    track.prepare()  # writes MNC's split of SBD by VOC's ImageSets/Main
    train_set, val_set = build_datasets(track.cfg)
    assert train_set.image_ids == ["2008_000001", "2008_000003", "2008_000005"]
    assert val_set.image_ids == ["2008_000002", "2008_000004", "2008_000006"]
    assert track.cfg.backbone.name == "vgg16" and track.cfg.num_classes == 20
    torch.manual_seed(0)
    model = build_mnc(track.cfg).train()
    images, targets = collate([train_set[0], train_set[1]])
    assert min(images[0].shape[-2:]) == track.cfg.data.min_size  # resized to the track's size
    _, losses = model(images, targets)
    assert all(torch.isfinite(value) for value in losses.values()) and "loss_mask_s4" in losses


def test_an_unknown_track_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TRACK is 'coco'; choose one of 'shapes', 'voc'"):
        course_track("coco", data_root=tmp_path)


def test_the_fast_voc_track_has_anchors_that_fit_its_images(tmp_path: Path) -> None:
    """Stage 1 trains in fast mode: some anchor covers an object well (positive labels)."""
    root = build_voc_and_sbd(tmp_path / "data")
    track = course_track("voc", data_root=root, fast=True, device="cpu")
    track.prepare()
    train_set, _ = build_datasets(track.cfg)
    torch.manual_seed(0)
    model = build_mnc(track.cfg).train()
    images, targets = collate([train_set[0], train_set[1]])
    _, losses = model(images, targets)
    assert losses["loss_rpn_box"] > 0  # a positive anchor has a box-regression loss
