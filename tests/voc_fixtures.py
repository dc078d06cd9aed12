"""Builders of tiny PASCAL VOC 2012 and SBD folders that return what they drew.

Scenes are painted back to front from rectangles and ellipses, so later instances occlude
earlier ones. The expected masks, boxes and void maps are computed here with plain numpy
(independently of mnc_teach) and the tests compare the loaders against them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse
from PIL import Image
from scipy.io import savemat

VOID = 255
NUM_VOC_FOREGROUND = 20


@dataclass
class DrawnImage:
    """Ground truth of one fixture image (G instances, H x W pixels)."""

    image_id: str
    masks: np.ndarray  # [G, H, W] bool: visible, non-void pixels of each instance
    labels: list[int]  # [G] class ids
    boxes: np.ndarray  # [G, 4] float32 (min col, min row, max col + 1, max row + 1)
    ignore: np.ndarray  # [H, W] bool: void pixels
    class_map: np.ndarray  # [H, W] uint8, what SegmentationClass / GTcls holds (255 = void for VOC)
    instance_map: np.ndarray  # [H, W] uint8, what SegmentationObject / GTinst holds
    pixels: np.ndarray  # [H, W, 3] uint8, the image content written as JPEG


@dataclass
class FixtureTree:
    root: Path  # what the loader gets as ``root``
    data_dir: Path  # VOC2012 folder or SBD dataset folder
    images: dict[str, DrawnImage]
    splits: dict[str, list[str]]  # the dataset's own split lists
    main_splits: dict[str, list[str]] = field(default_factory=dict)  # VOC ImageSets/Main


def _rect(height: int, width: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _ellipse(height: int, width: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    return ((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2 <= 1


def _border(label_map: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label, and those neighbours: a 2 px
    band."""
    band = np.zeros(label_map.shape, dtype=bool)
    right = label_map[:, 1:] != label_map[:, :-1]
    down = label_map[1:, :] != label_map[:-1, :]
    band[:, 1:] |= right
    band[:, :-1] |= right
    band[1:, :] |= down
    band[:-1, :] |= down
    return band


def _tight_box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def draw(
    image_id: str,
    size: tuple[int, int],
    shapes: list[tuple[int, np.ndarray]],
    seed: int,
    void_band: bool,
    extra_void: np.ndarray | None = None,
) -> DrawnImage:
    """Paint ``(class, full mask)`` pairs back to front; instance k is ``shapes[k - 1]``."""
    height, width = size
    instance_map = np.zeros(size, dtype=np.uint8)
    class_of = np.zeros(len(shapes) + 1, dtype=np.uint8)
    for instance_id, (label, mask) in enumerate(shapes, start=1):
        instance_map[mask] = instance_id
        class_of[instance_id] = label
    class_map = class_of[instance_map]
    ignore = _border(instance_map) if void_band else np.zeros(size, dtype=bool)
    if extra_void is not None:
        ignore |= extra_void
    masks, labels = [], []
    for instance_id, (label, _) in enumerate(shapes, start=1):
        mask = (instance_map == instance_id) & ~ignore
        if mask.any():  # an instance hidden entirely by void or occlusion is not expected back
            masks.append(mask)
            labels.append(label)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    instance_map, class_map = instance_map.copy(), class_map.copy()
    instance_map[ignore] = VOID
    class_map[ignore] = VOID
    return DrawnImage(
        image_id=image_id,
        masks=np.array(masks, dtype=bool).reshape(-1, height, width),
        labels=labels,
        boxes=np.array([_tight_box(m) for m in masks], dtype=np.float32).reshape(-1, 4),
        ignore=ignore,
        class_map=class_map,
        instance_map=instance_map,
        pixels=pixels,
    )


def voc_scenes() -> list[DrawnImage]:
    """Four VOC images: two objects; occlusion; no instances; an instance that is all void."""
    h, w = 36, 50
    person, dog, cat, car, chair = 15, 12, 8, 7, 9
    return [
        draw(
            "2008_000001",
            (h, w),
            [(person, _rect(h, w, 4, 5, 18, 30)), (dog, _ellipse(h, w, 35, 20, 10, 7))],
            1,
            True,
        ),
        draw(  # a wide cat cut in two by a car drawn over it, then a second, separate car
            "2008_000002",
            (40, 44),
            [
                (cat, _rect(40, 44, 3, 8, 40, 22)),
                (car, _rect(40, 44, 15, 2, 24, 30)),
                (car, _rect(40, 44, 5, 31, 30, 38)),
            ],
            2,
            True,
        ),
        draw("2008_000003", (30, 32), [], 3, True, extra_void=_rect(30, 32, 10, 10, 20, 16)),
        draw(  # instance 2 is a 1-px line: entirely void, so the loader must skip it
            "2008_000004",
            (h, w),
            [
                (chair, _rect(h, w, 2, 2, 20, 20)),
                (dog, _rect(h, w, 30, 5, 31, 30)),
                (person, _rect(h, w, 35, 10, 48, 34)),
            ],
            4,
            True,
        ),
    ]


def _save_palette_png(array: np.ndarray, path: Path, palette: list[int]) -> None:
    image = Image.fromarray(array)  # mode "L"
    image.putpalette(palette)  # -> mode "P", like VOC
    image.save(path)


def _write_lines(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{image_id}\n" for image_id in ids))


def build_voc(tmp_path: Path) -> FixtureTree:
    """``tmp_path/voc/VOCdevkit/VOC2012`` with JPEGImages, palette PNGs and
    ImageSets/{Segmentation,Main}."""
    root = tmp_path / "voc"
    voc_dir = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationObject", "SegmentationClass", "Annotations"):
        (voc_dir / folder).mkdir(parents=True)
    # The standard palette, written out by hand here so the fixture does not use mnc_teach.
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette += rgb
    images = {}
    for drawn in voc_scenes():
        name = drawn.image_id
        Image.fromarray(drawn.pixels).save(voc_dir / "JPEGImages" / f"{name}.jpg", quality=100)
        object_png = voc_dir / "SegmentationObject" / f"{name}.png"
        _save_palette_png(drawn.instance_map, object_png, palette)
        _save_palette_png(drawn.class_map, voc_dir / "SegmentationClass" / f"{name}.png", palette)
        images[drawn.image_id] = drawn
    splits = {"train": ["2008_000001", "2008_000002"], "val": ["2008_000003", "2008_000004"]}
    splits["trainval"] = splits["train"] + splits["val"]
    # ImageSets/Main decides MNC's SBD split; it also lists ids that SBD does not have.
    main_splits = {
        "train": ["2008_000001", "2008_000003", "2008_000005", "2009_000100"],
        "val": ["2008_000002", "2008_000004", "2008_000006", "2009_000200"],
    }
    for name, ids in splits.items():
        _write_lines(voc_dir / "ImageSets" / "Segmentation" / f"{name}.txt", ids)
    for name, ids in main_splits.items():
        _write_lines(voc_dir / "ImageSets" / "Main" / f"{name}.txt", ids)
    return FixtureTree(
        root=root, data_dir=voc_dir, images=images, splits=splits, main_splits=main_splits
    )


def sbd_scenes() -> list[DrawnImage]:
    """Six SBD images (no void): single objects, occlusion, three instances, and no instance."""
    h, w = 32, 40
    bird, boat, bus, horse, sheep, tv = 3, 4, 6, 13, 17, 20
    return [
        draw("2008_000001", (h, w), [(bird, _ellipse(h, w, 12, 14, 8, 6))], 11, False),
        draw(
            "2008_000002",
            (h, w),
            [(boat, _rect(h, w, 2, 4, 30, 20)), (horse, _rect(h, w, 10, 10, 38, 30))],
            12,
            False,
        ),
        draw(
            "2008_000003",
            (28, 36),
            [
                (sheep, _rect(28, 36, 1, 1, 10, 10)),
                (sheep, _rect(28, 36, 12, 3, 30, 25)),
                (tv, _ellipse(28, 36, 20, 14, 5, 5)),
            ],
            13,
            False,
        ),
        draw("2008_000004", (h, w), [(bus, _rect(h, w, 0, 0, 40, 12))], 14, False),
        draw("2008_000005", (h, w), [], 15, False),
        draw(
            "2008_000006",
            (h, w),
            [(tv, _rect(h, w, 5, 5, 15, 15)), (bird, _ellipse(h, w, 28, 20, 7, 9))],
            16,
            False,
        ),
    ]


def _boundary_cell(masks: list[np.ndarray]) -> np.ndarray:
    """A MATLAB cell (object array [K, 1]) of sparse boundary maps, as in SBD's .mat files."""
    cell = np.empty((len(masks), 1), dtype=object)
    for index, mask in enumerate(masks):
        eroded = mask.copy()
        eroded[1:, :] &= mask[:-1, :]
        eroded[:-1, :] &= mask[1:, :]
        eroded[:, 1:] &= mask[:, :-1]
        eroded[:, :-1] &= mask[:, 1:]
        cell[index, 0] = scipy.sparse.csc_matrix(mask & ~eroded)
    return cell


def write_sbd_mats(data_dir: Path, drawn: DrawnImage, categories: list[int] | None = None) -> None:
    """Write ``inst/<id>.mat`` (GTinst) and ``cls/<id>.mat`` (GTcls) as MATLAB structs."""
    num_instances = int(drawn.instance_map.max())
    if categories is None:  # class of instance k = the class painted under it
        categories = [
            int(drawn.class_map[drawn.instance_map == k][0]) for k in range(1, num_instances + 1)
        ]
    inst_masks = [drawn.instance_map == k for k in range(1, num_instances + 1)]
    class_masks = [drawn.class_map == c for c in range(1, NUM_VOC_FOREGROUND + 1)]
    gt_inst = {
        "Segmentation": drawn.instance_map,
        "Categories": np.array(categories, dtype=np.uint8).reshape(-1, 1),
        "Boundaries": _boundary_cell(inst_masks),
    }
    present = sorted({int(c) for c in np.unique(drawn.class_map) if c != 0})
    gt_cls = {
        "Segmentation": drawn.class_map,
        "Boundaries": _boundary_cell(class_masks),
        "CategoriesPresent": np.array(present, dtype=np.uint8).reshape(-1, 1),
    }
    savemat(data_dir / "inst" / f"{drawn.image_id}.mat", {"GTinst": gt_inst})
    savemat(data_dir / "cls" / f"{drawn.image_id}.mat", {"GTcls": gt_cls})


def build_sbd(tmp_path: Path) -> FixtureTree:
    """``tmp_path/sbd/benchmark_RELEASE/dataset`` with img/, inst/, cls/, train.txt, val.txt."""
    root = tmp_path / "sbd" / "benchmark_RELEASE"
    data_dir = root / "dataset"
    for folder in ("img", "inst", "cls"):
        (data_dir / folder).mkdir(parents=True)
    images = {}
    for drawn in sbd_scenes():
        Image.fromarray(drawn.pixels).save(data_dir / "img" / f"{drawn.image_id}.jpg", quality=100)
        write_sbd_mats(data_dir, drawn)
        images[drawn.image_id] = drawn
    ids = sorted(images)
    splits = {"train": ids[:4], "val": ids[4:]}
    for name, split_ids in splits.items():
        _write_lines(data_dir / f"{name}.txt", split_ids)
    return FixtureTree(root=root, data_dir=data_dir, images=images, splits=splits)


def build_voc_and_sbd(root: Path) -> Path:
    """``root`` holding both fixtures as the download commands lay them out:
    ``root/VOCdevkit/VOC2012`` and ``root/benchmark_RELEASE/dataset`` (the voc track's data)."""
    staging = root / ".staging"
    voc, sbd = build_voc(staging), build_sbd(staging)
    (voc.root / "VOCdevkit").rename(root / "VOCdevkit")
    sbd.root.rename(root / "benchmark_RELEASE")
    shutil.rmtree(staging)
    return root
