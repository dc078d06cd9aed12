"""VOCInstanceSegmentation and make_mnc_split against the fixtures of voc_fixtures.py."""

from __future__ import annotations

import re
import shutil
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy.io import loadmat, savemat
from voc_fixtures import build_sbd, build_voc, write_sbd_mats

from mnc_teach.boxes import masks_to_boxes
from mnc_teach.data.voc import (
    VOC_CLASSES,
    AnnotationWarning,
    VOCInstanceSegmentation,
    make_mnc_split,
    voc_colormap,
)
from mnc_teach.structures import check_targets


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return build_voc(tmp_path_factory.mktemp("voc_ro"))


@pytest.fixture(scope="module")
def sbd(tmp_path_factory):
    return build_sbd(tmp_path_factory.mktemp("sbd_ro"))


def assert_target_matches(target, drawn):
    """The loader's target equals what the fixture drew."""
    height, width = drawn.ignore.shape
    assert target["image_id"] == drawn.image_id
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (
        len(drawn.labels),
        height,
        width,
    )
    np.testing.assert_array_equal(target["masks"].numpy().astype(bool), drawn.masks)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == drawn.labels
    assert target["boxes"].dtype == torch.float32
    np.testing.assert_array_equal(target["boxes"].numpy(), drawn.boxes)
    assert target["ignore"].dtype == torch.uint8
    np.testing.assert_array_equal(target["ignore"].numpy().astype(bool), drawn.ignore)


def class_map_of(target) -> np.ndarray:
    """Rebuild a VOC class map (255 = void) from a target, to compare with torchvision's reading."""
    class_map = np.zeros(target["ignore"].shape, dtype=np.uint8)
    for mask, label in zip(target["masks"].bool().numpy(), target["labels"].tolist(), strict=True):
        class_map[mask] = label
    class_map[target["ignore"].bool().numpy()] = 255
    return class_map


def test_voc_colormap_known_entries():
    colors = voc_colormap()
    assert colors.shape == (256, 3) and colors.dtype == np.uint8
    # entries of the VOCdevkit palette: background, aeroplane, bicycle, person, tvmonitor, void
    assert colors[0].tolist() == [0, 0, 0]
    assert colors[1].tolist() == [128, 0, 0]
    assert colors[2].tolist() == [0, 128, 0]
    assert colors[15].tolist() == [192, 128, 128]
    assert colors[20].tolist() == [0, 64, 128]
    assert colors[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in colors.tolist()}) == 256
    np.testing.assert_array_equal(voc_colormap(21), colors[:21])


def test_voc_classes():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    assert [VOC_CLASSES[k] for k in (1, 15, 20)] == ["aeroplane", "person", "tvmonitor"]


@pytest.mark.parametrize("split", ["train", "val", "trainval"])
def test_voc_loader_matches_fixture(voc, split):
    dataset = VOCInstanceSegmentation(voc.root, split=split)
    assert dataset.image_ids == voc.splits[split]
    assert dataset.root == voc.data_dir.resolve()
    assert (dataset.format, dataset.split) == ("voc", split)
    assert dataset.class_names == VOC_CLASSES and dataset.num_classes == 20
    for index, image_id in enumerate(dataset.image_ids):
        drawn = voc.images[image_id]
        image, target = dataset[index]
        assert_target_matches(target, drawn)
        assert_target_matches(dataset.load_target(index), drawn)
        reference = np.array(Image.open(dataset.image_path(index)).convert("RGB"))  # (H, W, 3)
        assert image.dtype == torch.float32 and image.shape == (3, *drawn.ignore.shape)
        np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), reference / 255.0, atol=1e-6)
        check_targets([image], [target], num_classes=20)


def test_voc_root_may_be_the_voc2012_folder(voc):
    dataset = VOCInstanceSegmentation(voc.data_dir, split="train")
    assert dataset.root == voc.data_dir.resolve() and len(dataset) == 2


def test_voc_empty_image(voc):
    dataset = VOCInstanceSegmentation(voc.root, split="val")
    image, target = dataset[dataset.image_ids.index("2008_000003")]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, *image.shape[-2:])
    assert target["ignore"].sum() == 60  # the void rectangle the fixture drew (10 x 6)
    check_targets([image], [target])


def test_voc_occlusion_keeps_visible_pixels_only(voc):
    target = VOCInstanceSegmentation(voc.root, split="train").load_target(1)  # 2008_000002
    cat, car = target["masks"][0].bool(), target["masks"][1].bool()
    assert target["labels"].tolist() == [8, 7, 7]
    assert not (cat & car).any()
    # the car cuts the cat in two: its box still spans both halves, but its pixels are far fewer
    assert target["boxes"][0].tolist() == [4.0, 9.0, 39.0, 21.0]
    assert cat.sum() < 35 * 12 and not cat[:, 15:24].any()
    # the instances and the void band tile the pixels they cover without overlap
    assert (target["masks"].sum(0) + target["ignore"]).max() == 1


def test_voc_instance_hidden_by_void_is_skipped(voc):
    dataset = VOCInstanceSegmentation(voc.root, split="val")
    target = dataset.load_target(dataset.image_ids.index("2008_000004"))
    assert target["labels"].tolist() == [9, 15]  # chair, person; the all-void dog is gone
    assert (target["masks"].flatten(1).sum(1) > 0).all()


def test_voc_boxes_are_tight_boxes_of_masks(voc):
    dataset = VOCInstanceSegmentation(voc.root, split="trainval")
    for index in range(len(dataset)):
        target = dataset.load_target(index)
        torch.testing.assert_close(target["boxes"], masks_to_boxes(target["masks"]))


def test_load_target_does_not_decode_the_image(tmp_path):
    voc = build_voc(tmp_path)
    (voc.data_dir / "JPEGImages" / "2008_000001.jpg").write_bytes(b"not a jpeg")
    dataset = VOCInstanceSegmentation(voc.root, split="train")
    assert_target_matches(dataset.load_target(0), voc.images["2008_000001"])
    with pytest.raises(ValueError, match="2008_000001.jpg"):
        dataset[0]


def test_transforms_are_applied_last(voc):
    calls = []

    def transform(image, target):
        calls.append((image.shape, target["image_id"]))
        return image * 0, {**target, "image_id": "changed"}

    image, target = VOCInstanceSegmentation(voc.root, split="train", transforms=transform)[0]
    assert calls == [((3, 36, 50), "2008_000001")]
    assert image.abs().sum() == 0 and target["image_id"] == "changed"


def assert_same_as_torchvision(image, target, ref_image, ref_class) -> None:
    """Our image and the class map our instances imply equal what torchvision read from the same
    files."""
    np.testing.assert_array_equal(np.array(ref_class), class_map_of(target))
    ours = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    np.testing.assert_allclose(ours, np.array(ref_image) / 255.0, atol=1e-6)


def test_torchvision_voc_segmentation_reads_the_same_class_maps(voc):
    reference = torchvision.datasets.VOCSegmentation(
        voc.root, year="2012", image_set="trainval", download=False
    )
    dataset = VOCInstanceSegmentation(voc.root, split="trainval")
    assert len(reference) == len(dataset)
    for index in range(len(dataset)):
        assert_same_as_torchvision(*dataset[index], *reference[index])


@pytest.mark.parametrize("split", ["train", "val"])
def test_sbd_loader_matches_fixture(sbd, split):
    dataset = VOCInstanceSegmentation(sbd.root, split=split, format="sbd")
    assert dataset.image_ids == sbd.splits[split] and dataset.root == sbd.data_dir.resolve()
    for index, image_id in enumerate(dataset.image_ids):
        drawn = sbd.images[image_id]
        image, target = dataset[index]
        assert_target_matches(target, drawn)
        assert not target["ignore"].any()  # SBD has no void
        assert image.shape == (3, *drawn.ignore.shape)
        check_targets([image], [target], num_classes=20)


def test_sbd_occlusion_and_empty(sbd):
    # the dataset folder works too
    dataset = VOCInstanceSegmentation(sbd.data_dir, split="val", format="sbd")
    empty = dataset.load_target(dataset.image_ids.index("2008_000005"))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 32, 40)
    train = VOCInstanceSegmentation(sbd.root, split="train", format="sbd")
    target = train.load_target(train.image_ids.index("2008_000003"))
    sheep, tv = target["masks"][1].bool(), target["masks"][2].bool()
    assert target["labels"].tolist() == [17, 17, 20]
    assert not (sheep & tv).any() and target["boxes"][1].tolist() == [12.0, 3.0, 30.0, 25.0]


@pytest.mark.parametrize("split", ["train", "val"])
def test_torchvision_sbdataset_reads_the_same_fixture(sbd, split):
    ours = VOCInstanceSegmentation(sbd.root, split=split, format="sbd")
    reference = partial(torchvision.datasets.SBDataset, sbd.data_dir, image_set=split)
    segmentation, boundaries = reference(mode="segmentation"), reference(mode="boundaries")
    assert len(segmentation) == len(ours)
    for index in range(len(ours)):
        image, target = ours[index]
        assert_same_as_torchvision(image, target, *segmentation[index])
        _, ref_boundaries = boundaries[index]
        assert ref_boundaries.shape == (20, *image.shape[-2:])
        for label in target["labels"].tolist():  # every present class has a boundary
            assert ref_boundaries[label - 1].any()


def test_make_mnc_split(tmp_path):
    voc, sbd = build_voc(tmp_path), build_sbd(tmp_path)
    with pytest.raises(FileNotFoundError, match="make_mnc_split"):
        VOCInstanceSegmentation(sbd.root, split="mnc_train", format="sbd")
    counts = make_mnc_split(sbd.root, voc.root)
    sbd_ids = set(sbd.splits["train"] + sbd.splits["val"])
    expected = {
        "mnc_train": sorted(sbd_ids & set(voc.main_splits["train"])),
        "mnc_val": sorted(sbd_ids & set(voc.main_splits["val"])),
    }
    assert counts == {name: len(ids) for name, ids in expected.items()}
    assert counts == {"mnc_train": 3, "mnc_val": 3}
    for name, ids in expected.items():
        assert (sbd.data_dir / f"{name}.txt").read_text().split() == ids
        dataset = VOCInstanceSegmentation(sbd.root, split=name, format="sbd")
        assert dataset.image_ids == ids
        for index, image_id in enumerate(ids):
            assert_target_matches(dataset.load_target(index), sbd.images[image_id])
    assert not list(sbd.data_dir.glob("*.tmp"))  # the temporary files were renamed away
    assert make_mnc_split(sbd.data_dir, voc.data_dir) == counts  # idempotent, any accepted root


def test_make_mnc_split_warns_on_unassigned_ids(tmp_path):
    voc, sbd = build_voc(tmp_path), build_sbd(tmp_path)
    (voc.data_dir / "ImageSets" / "Main" / "val.txt").write_text("2008_000002\n")
    with pytest.warns(AnnotationWarning, match="2008_000004"):
        counts = make_mnc_split(sbd.root, voc.root)
    assert counts == {"mnc_train": 3, "mnc_val": 1}


def test_missing_folders_say_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="download voc2012") as error:
        VOCInstanceSegmentation(tmp_path / "nowhere")
    assert "VOCdevkit" in str(error.value) and "mnc_teach shapes" in str(error.value)
    with pytest.raises(FileNotFoundError, match="download sbd"):
        VOCInstanceSegmentation(tmp_path / "nowhere", format="sbd")
    voc = build_voc(tmp_path)
    shutil.rmtree(voc.data_dir / "SegmentationObject")
    with pytest.raises(FileNotFoundError, match="SegmentationObject"):
        VOCInstanceSegmentation(voc.root)


def test_missing_and_corrupt_annotations_name_the_file(tmp_path):
    voc, sbd = build_voc(tmp_path), build_sbd(tmp_path)
    dataset = VOCInstanceSegmentation(voc.root, split="train")
    (voc.data_dir / "SegmentationObject" / "2008_000001.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="SegmentationObject.2008_000001.png"):
        dataset.load_target(0)
    png = voc.data_dir / "SegmentationClass" / "2008_000002.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated
    with pytest.raises(ValueError, match="2008_000002.png"):
        dataset[1]
    Image.open(voc.data_dir / "SegmentationObject" / "2008_000003.png").convert("RGB").save(
        voc.data_dir / "SegmentationObject" / "2008_000003.png"
    )
    with pytest.raises(ValueError, match="2008_000003.png.*RGB"):
        VOCInstanceSegmentation(voc.root, split="val").load_target(0)
    (voc.data_dir / "SegmentationClass" / "2008_000004.png").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000004.png"):
        VOCInstanceSegmentation(voc.root, split="val").load_target(1)
    sbd_dataset = VOCInstanceSegmentation(sbd.root, split="train", format="sbd")
    (sbd.data_dir / "inst" / "2008_000001.mat").write_bytes(b"MATLAB 5.0 nonsense")
    with pytest.raises(ValueError, match="2008_000001.mat"):
        sbd_dataset.load_target(0)
    (sbd.data_dir / "cls" / "2008_000002.mat").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000002.mat"):
        sbd_dataset.load_target(1)


def test_unknown_split_lists_the_available_ones(voc, sbd):
    with pytest.raises(ValueError, match="train, trainval, val"):
        VOCInstanceSegmentation(voc.root, split="test")
    with pytest.raises(ValueError, match="mnc_train, mnc_val, train, val"):
        VOCInstanceSegmentation(sbd.root, split="trainaug", format="sbd")
    with pytest.raises(ValueError, match="format"):
        VOCInstanceSegmentation(voc.root, format="coco")


def test_voc_class_disagreement_warns_and_takes_the_majority(tmp_path):
    voc = build_voc(tmp_path)
    path = voc.data_dir / "SegmentationClass" / "2008_000001.png"
    with Image.open(path) as image:
        class_map, palette = np.array(image), image.getpalette()
    class_map[10:13, 8:12] = 3  # 12 "bird" pixels inside the person (instance 1)
    relabelled = Image.fromarray(class_map)
    relabelled.putpalette(palette)
    relabelled.save(path)
    dataset = VOCInstanceSegmentation(voc.root, split="train")
    with pytest.warns(AnnotationWarning, match="2008_000001.png"):
        target = dataset.load_target(0)
    assert target["labels"].tolist() == [15, 12]


def test_sbd_class_disagreement_warns_and_uses_categories(tmp_path):
    sbd = build_sbd(tmp_path)
    # Categories says bottle (5), but the cls file says bird
    write_sbd_mats(sbd.data_dir, sbd.images["2008_000001"], categories=[5])
    dataset = VOCInstanceSegmentation(sbd.root, split="train", format="sbd")
    with pytest.warns(AnnotationWarning, match="2008_000001.mat"):
        target = dataset.load_target(0)
    assert target["labels"].tolist() == [5]


def test_class_names_file_and_argument(tmp_path):
    voc = build_voc(tmp_path)
    names = ("background",) + tuple(f"thing{i}" for i in range(1, 21))
    (voc.data_dir / "class_names.txt").write_text("\n".join(names) + "\n")
    dataset = VOCInstanceSegmentation(voc.root, split="train")
    assert dataset.class_names == names and dataset.num_classes == 20
    few = VOCInstanceSegmentation(voc.root, split="train", class_names=("background", "a", "b"))
    assert few.num_classes == 2
    with pytest.raises(ValueError, match="class 15, outside 1..2"):
        few.load_target(0)
    with pytest.raises(ValueError, match="background"):
        VOCInstanceSegmentation(voc.root, split="train", class_names=("person", "dog"))


@pytest.mark.parametrize(
    ("folder", "struct", "fields", "missing"),
    [
        ("inst", "GTinst", ("Categories", "Boundaries"), "Segmentation"),
        ("inst", "GTinst", ("Segmentation", "Boundaries"), "Categories"),
        ("cls", "GTcls", ("Boundaries", "CategoriesPresent"), "Segmentation"),
    ],
)
def test_sbd_mat_without_a_required_field_names_the_file_and_field(
    tmp_path, folder: str, struct: str, fields: tuple[str, ...], missing: str
):
    sbd = build_sbd(tmp_path)
    path = sbd.data_dir / folder / "2008_000001.mat"
    full = loadmat(path)[struct][0, 0]
    savemat(path, {struct: {field: full[field] for field in fields}})
    dataset = VOCInstanceSegmentation(sbd.root, split="train", format="sbd")
    with pytest.raises(ValueError, match=f"{folder}.2008_000001.mat: the struct {struct}") as error:
        dataset.load_target(0)
    message = str(error.value)
    assert f"has no field {missing}" in message and "\n" not in message
    root = sbd.root.parent  # the folder that holds benchmark_RELEASE
    assert f"delete {root / '.sbd.complete'}" in message
    assert f"`python -m mnc_teach download sbd --root {root}`" in message


@pytest.mark.parametrize("content", ["", "\n  \n\n"], ids=["empty", "blank lines"])
def test_split_file_without_ids_names_the_file(tmp_path, content: str):
    voc, sbd = build_voc(tmp_path), build_sbd(tmp_path)
    voc_split = voc.data_dir / "ImageSets" / "Segmentation" / "val.txt"
    voc_split.write_text(content)
    no_ids = re.escape(f"split file {voc_split} lists no image ids")
    with pytest.raises(ValueError, match=no_ids) as error:
        VOCInstanceSegmentation(voc.root, split="val")
    assert f"delete {voc.root / '.voc2012.complete'} if present" in str(error.value)
    assert f"`python -m mnc_teach download voc2012 --root {voc.root}`" in str(error.value)
    (sbd.data_dir / "train.txt").write_text(content)
    with pytest.raises(ValueError, match="train.txt lists no image ids") as error:
        VOCInstanceSegmentation(sbd.root, split="train", format="sbd")
    assert f"`python -m mnc_teach download sbd --root {sbd.root.parent}`" in str(error.value)


def test_empty_split_of_a_shapes_dataset_says_how_to_regenerate(tmp_path):
    voc = build_voc(tmp_path)
    (voc.data_dir / "generation.json").write_text("{}")  # marks a shapes dataset
    (voc.data_dir / "ImageSets" / "Segmentation" / "train.txt").write_text("")
    with pytest.raises(ValueError, match="train.txt lists no image ids") as error:
        VOCInstanceSegmentation(voc.root, split="train")
    assert f"`python -m mnc_teach shapes --root {voc.root} --train 1000" in str(error.value)
