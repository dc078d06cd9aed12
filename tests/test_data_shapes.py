"""The synthetic shapes dataset: reproducible files that the VOC loader reads back."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mnc_teach.boxes import masks_to_boxes
from mnc_teach.data.shapes import (
    MIN_VISIBLE_FRACTION,
    SHAPE_CLASSES,
    dataset_fingerprint,
    generate_shapes,
    render_scene,
)
from mnc_teach.data.voc import VOCInstanceSegmentation, voc_colormap
from mnc_teach.structures import check_targets

SMALL = {"num_train": 12, "num_val": 8, "image_size": 64, "progress": False}


def all_files(voc_dir) -> dict[str, bytes]:
    return {
        p.relative_to(voc_dir).as_posix(): p.read_bytes()
        for p in sorted(voc_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    fingerprint = generate_shapes(root, seed=0, **SMALL)
    return root, fingerprint


def test_layout_and_fingerprint(generated):
    root, fingerprint = generated
    voc_dir = root / "VOCdevkit" / "VOC2012"
    files = all_files(voc_dir)
    assert len([f for f in files if f.startswith("JPEGImages/")]) == 20
    assert len([f for f in files if f.startswith("SegmentationObject/")]) == 20
    assert len([f for f in files if f.startswith("SegmentationClass/")]) == 20
    splits = {
        name: files[f"ImageSets/Segmentation/{name}.txt"].decode().split()
        for name in ("train", "val", "trainval")
    }
    assert (
        len(splits["train"]) == 12
        and len(splits["val"]) == 8
        and splits["trainval"] == splits["train"] + splits["val"]
    )
    assert files["class_names.txt"].decode().split() == list(SHAPE_CLASSES)
    assert files["fingerprint.txt"].decode().strip() == fingerprint == dataset_fingerprint(voc_dir)
    assert json.loads(files["generation.json"])["seed"] == 0
    # the fingerprint is sha256 over the sorted data files (metadata excluded), recomputed by hand
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        if name not in ("fingerprint.txt", "generation.json"):
            digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    assert digest.hexdigest() == fingerprint
    with Image.open(voc_dir / "SegmentationObject" / f"{splits['train'][0]}.png") as png:
        assert png.mode == "P"
        palette = np.array(png.getpalette()[: 256 * 3]).reshape(256, 3)
    np.testing.assert_array_equal(palette, voc_colormap())
    assert not list((root / "VOCdevkit").glob(".*"))  # no temporary folders left behind


def test_same_seed_gives_identical_files_and_other_seed_differs(generated, tmp_path):
    root, fingerprint = generated
    assert generate_shapes(tmp_path / "again", seed=0, **SMALL) == fingerprint
    assert all_files(tmp_path / "again" / "VOCdevkit" / "VOC2012") == all_files(
        root / "VOCdevkit" / "VOC2012"
    )
    assert generate_shapes(tmp_path / "other", seed=1, **SMALL) != fingerprint
    # image i of a split does not depend on how many images the split has
    generate_shapes(
        tmp_path / "fewer", seed=0, num_train=3, num_val=2, image_size=64, progress=False
    )
    fewer, full = (all_files(r / "VOCdevkit" / "VOC2012") for r in (tmp_path / "fewer", root))
    for name in ("JPEGImages/train_000002.jpg", "SegmentationObject/val_000001.png"):
        assert fewer[name] == full[name]


@pytest.mark.parametrize("split", ["train", "val"])
def test_loader_reads_generated_dataset(generated, split):
    root, _ = generated
    dataset = VOCInstanceSegmentation(root, split=split)
    assert dataset.class_names == SHAPE_CLASSES and dataset.num_classes == 3
    min_area = math.ceil(MIN_VISIBLE_FRACTION * 64 * 64)
    for index in range(len(dataset)):
        image, target = dataset[index]
        check_targets([image], [target], num_classes=3)
        assert image.shape == (3, 64, 64)
        masks, ignore = target["masks"].bool(), target["ignore"].bool()
        assert 1 <= len(masks) <= 5
        assert set(target["labels"].tolist()) <= {1, 2, 3}
        torch.testing.assert_close(target["boxes"], masks_to_boxes(target["masks"]), rtol=0, atol=0)
        assert (masks.flatten(1).sum(1) >= min_area).all()  # no instance below the minimum
        assert ignore.any() and not (masks & ignore).any()
        # the void band separates every instance from everything else: each 4-neighbour of a
        # mask pixel is in the same mask or void (padding with True ignores the image border)
        for mask in masks:
            inside = torch.nn.functional.pad(mask, (1, 1, 1, 1), value=True)
            void = torch.nn.functional.pad(ignore, (1, 1, 1, 1), value=True)
            for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
                neighbour_ok = inside[dy : dy + 64, dx : dx + 64] | void[dy : dy + 64, dx : dx + 64]
                assert neighbour_ok[mask].all()


def test_render_scene_draws_only_labelled_shapes():
    for seed in range(20):
        image, instance_map, class_map = render_scene(np.random.default_rng(seed), 48)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert ((instance_map == 255) == (class_map == 255)).all()
        assert ((instance_map == 0) == (class_map == 0)).all()
        ids = sorted(set(np.unique(instance_map).tolist()) - {0, 255})
        assert ids == list(range(1, len(ids) + 1)) and 1 <= len(ids) <= 5
        for instance_id in ids:  # one class per instance
            assert len(np.unique(class_map[instance_map == instance_id])) == 1


def test_second_call_is_a_no_op(generated):
    root, fingerprint = generated
    voc_dir = root / "VOCdevkit" / "VOC2012"
    before = {p: p.stat().st_mtime_ns for p in voc_dir.rglob("*")}
    assert generate_shapes(root, seed=0, **SMALL) == fingerprint
    assert {p: p.stat().st_mtime_ns for p in voc_dir.rglob("*")} == before


def test_parameter_mismatch_needs_overwrite(tmp_path, generated):
    _, fingerprint = generated
    generate_shapes(tmp_path, seed=1, **SMALL)
    with pytest.raises(ValueError, match="seed=1.*seed=0.*overwrite=True"):
        generate_shapes(tmp_path, seed=0, **SMALL)
    assert generate_shapes(tmp_path, seed=0, overwrite=True, **SMALL) == fingerprint
    generation = tmp_path / "VOCdevkit" / "VOC2012" / "generation.json"
    assert json.loads(generation.read_text())["seed"] == 0
    assert not list((tmp_path / "VOCdevkit").glob(".*"))


def test_damaged_or_interrupted_dataset_is_regenerated(tmp_path, generated):
    _, fingerprint = generated
    voc_dir = tmp_path / "VOCdevkit" / "VOC2012"
    # an interrupted run leaves only its hidden temporary folder
    (tmp_path / "VOCdevkit" / ".VOC2012.partial" / "JPEGImages").mkdir(parents=True)
    assert generate_shapes(tmp_path, seed=0, **SMALL) == fingerprint
    assert not (tmp_path / "VOCdevkit" / ".VOC2012.partial").exists()
    (voc_dir / "SegmentationClass" / "train_000003.png").unlink()
    with pytest.warns(UserWarning, match="regenerating"):
        assert generate_shapes(tmp_path, seed=0, **SMALL) == fingerprint
    assert (voc_dir / "SegmentationClass" / "train_000003.png").is_file()


def test_refuses_to_touch_a_folder_it_did_not_write(tmp_path):
    voc_dir = tmp_path / "VOCdevkit" / "VOC2012"
    (voc_dir / "JPEGImages").mkdir(parents=True)
    (voc_dir / "JPEGImages" / "2008_000001.jpg").write_bytes(b"a real photo")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="generation.json"):
            generate_shapes(tmp_path, overwrite=overwrite, **SMALL)
    assert (voc_dir / "JPEGImages" / "2008_000001.jpg").read_bytes() == b"a real photo"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        generate_shapes(tmp_path, image_size=8, progress=False)
    with pytest.raises(ValueError, match="at least one image"):
        generate_shapes(tmp_path, num_train=0, num_val=0, progress=False)


def test_root_that_is_a_file_is_refused_with_a_clear_message(tmp_path):
    a_file = tmp_path / "shapes.zip"
    a_file.write_bytes(b"not a folder")
    with pytest.raises(ValueError, match=re.escape(f"shapes root {a_file} is a file")) as error:
        generate_shapes(a_file, **SMALL)
    assert "choose a folder, e.g. data/shapes" in str(error.value)
    with pytest.raises(ValueError, match=re.escape(f"{a_file} is a file, so the shapes dataset")):
        generate_shapes(a_file / "inside", **SMALL)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "VOCdevkit").write_text("a file where the folder goes")
    with pytest.raises(ValueError, match="VOCdevkit is a file") as error:
        generate_shapes(tmp_path / "root", **SMALL)
    assert "choose another root folder, e.g. data/shapes" in str(error.value)
    assert a_file.read_bytes() == b"not a folder"


def test_unrelated_files_in_root_are_left_alone(tmp_path):
    """Generating into a folder that already holds other things touches only VOCdevkit/VOC2012."""
    theirs = {"notes.txt": b"mine", "VOCdevkit/VOC2007/readme": b"another dataset"}
    for relative, data in theirs.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    generate_shapes(tmp_path, **SMALL)
    for relative, data in theirs.items():
        assert (tmp_path / relative).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "VOCdevkit").iterdir()) == ["VOC2007", "VOC2012"]
