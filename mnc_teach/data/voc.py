"""PASCAL VOC 2012 and SBD instance segmentation as ``(image, Target)`` pairs.

Two on-disk formats give the same :class:`~mnc_teach.structures.Target`:

* ``format="voc"``: VOC 2012 ``SegmentationObject`` / ``SegmentationClass`` palette PNGs.
  The pixel *index* is the label; 255 is "void", a thin band around every object
  (docs/paper_vs_code.md: data). Void pixels belong to no mask and come back as
  ``target["ignore"]``.
  The synthetic shapes dataset (``shapes.py``) is written in this layout.
* ``format="sbd"``: SBD ``inst/<id>.mat`` (struct ``GTinst``) and ``cls/<id>.mat``
  (struct ``GTcls``), the annotations MNC trains and tests on (docs/paper_vs_code.md: data).
  SBD has no void label, so ``ignore`` is all zeros.

MNC does not use SBD's own train/val lists: it re-splits all 11,355 SBD images by
their membership in VOC 2012 ``ImageSets/Main/{train,val}.txt`` (5,623 / 5,732 images,
docs/paper_vs_code.md: data). :func:`make_mnc_split` writes that split once as ``mnc_train.txt`` /
``mnc_val.txt``; then ``split="mnc_train"`` / ``"mnc_val"`` read it.

Shape legend: see ``mnc_teach/structures.py`` (G instances, H x W image).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mnc_teach.boxes import masks_to_boxes
from mnc_teach.fileio import write_text_atomically
from mnc_teach.structures import Target

__all__ = [
    "VOC_CLASSES", "VOID", "AnnotationWarning", "VOCInstanceSegmentation", "find_sbd_dir",
    "find_voc_dir", "make_mnc_split", "read_image", "voc_colormap",
]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
BACKGROUND = 0
VOID = 255  # VOC's "void" index in both segmentation PNGs (docs/paper_vs_code.md: data)
FORMATS = ("voc", "sbd")
MNC_SPLITS = ("mnc_train", "mnc_val")  # MNC's re-split of SBD (docs/paper_vs_code.md: data)
CLASS_NAMES_FILE = "class_names.txt"  # optional; written by the synthetic shapes dataset
NOT_SPLIT_FILES = (CLASS_NAMES_FILE, "fingerprint.txt")  # .txt files that are not id lists
SHAPES_MARKER = "generation.json"  # in a shapes dataset's VOC2012 folder (shapes.GENERATION_FILE)
_GET_VOC = "python -m mnc_teach download voc2012 --root {root}"
_GET_SHAPES = "python -m mnc_teach shapes --root {root}"
_GET_SBD = "python -m mnc_teach download sbd --root {root}"


class AnnotationWarning(UserWarning):
    """An annotation disagrees with itself, e.g. one instance covers pixels of two classes."""


def voc_colormap(num_colors: int = 256) -> np.ndarray:
    """The standard PASCAL VOC palette (``VOCdevkit`` ``labelcolormap.m``).

    Colour ``i`` is built by spreading the bits of ``i`` over the three channels:
    bits 0, 3, 6 go to red, 1, 4, 7 to green, 2, 5 to blue, most significant first.

    Returns:
        colors (np.ndarray[num_colors, 3], uint8): e.g. 1 -> (128, 0, 0), 255 -> (224, 224, 192).
    """
    index = np.arange(num_colors, dtype=np.int64)
    colors = np.zeros((num_colors, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            colors[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colors.astype(np.uint8)


def find_voc_dir(root: str | os.PathLike) -> Path:
    """The ``VOC2012`` folder under ``root``: ``root/VOCdevkit/VOC2012``, ``root/VOC2012`` or
    ``root`` itself."""
    root = Path(root).expanduser()
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"no PASCAL VOC 2012 folder under {root}: expected {root / 'VOCdevkit' / 'VOC2012'} "
        "(or the VOC2012 folder itself) holding JPEGImages/, SegmentationObject/, "
        "SegmentationClass/ and "
        f"ImageSets/. Download it with `{_GET_VOC.format(root=root)}`, or generate the synthetic "
        f"shapes dataset with `{_GET_SHAPES.format(root=root)}`."
    )


def find_sbd_dir(root: str | os.PathLike) -> Path:
    """The SBD ``dataset`` folder (``img/``, ``inst/``, ``cls/``) under ``root``.

    Accepts the folder holding ``benchmark_RELEASE``, ``benchmark_RELEASE`` itself, or ``dataset``.
    """
    root = Path(root).expanduser()
    for candidate in (root / "benchmark_RELEASE" / "dataset", root / "dataset", root):
        if (candidate / "inst").is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"no SBD folder under {root}: expected {root / 'benchmark_RELEASE' / 'dataset'} (or "
        "that dataset folder itself) holding img/, inst/, cls/, train.txt and val.txt. "
        f"Download it with `{_GET_SBD.format(root=root)}`."
    )


def read_image(path: Path) -> Tensor:
    """Decode an image file to ``Tensor[3, H, W]`` float32 in [0, 1], naming the file on failure."""
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))  # (H, W, 3) uint8
    except FileNotFoundError:
        raise FileNotFoundError(
            f"image {path} is missing; re-download or regenerate the dataset"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(
            f"cannot decode image {path} ({err}); the file is corrupt or truncated"
        ) from err
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)  # (H, W, 3) -> (3, H, W)


def _read_label_png(path: Path) -> np.ndarray:
    """Pixel indices of a VOC segmentation PNG as ``np.ndarray[H, W]`` uint8 (never via RGB)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(
                    f"{path} is a mode-{image.mode!r} PNG; expected a palette ('P') PNG whose "
                    "pixel values are class or instance indices (do not convert VOC PNGs to RGB)"
                )
            return np.array(image)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"annotation {path} is missing; re-download or regenerate the dataset"
        ) from None
    except (OSError, SyntaxError) as err:
        raise ValueError(
            f"cannot read annotation {path} ({err}); the file is corrupt or truncated"
        ) from err


def _refetch(data_dir: Path, dataset: str) -> str:
    """How to extract ``dataset`` ("voc2012" or "sbd") again, for its folder ``data_dir``
    (``VOC2012`` or SBD's ``dataset``). ``download`` skips a dataset whose completion stamp
    exists, so the stamp goes first."""
    parent = {"voc2012": "VOCdevkit", "sbd": "benchmark_RELEASE"}[dataset]
    root = data_dir.parent.parent if data_dir.parent.name == parent else data_dir.parent
    return (
        f"delete {root / f'.{dataset}.complete'} if present, then run "
        f"`python -m mnc_teach download {dataset} --root {root}`"
    )


def _read_mat_struct(path: Path, name: str, fields: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Fields of the MATLAB struct ``name`` in an SBD .mat file (``loadmat(f)[name][0, 0]``,
    docs/paper_vs_code.md: data); ``ValueError`` naming the file when one of ``fields`` is
    missing."""
    from scipy.io import loadmat

    if not path.is_file():
        raise FileNotFoundError(
            f"annotation {path} is missing; re-extract SBD: {_refetch(path.parent.parent, 'sbd')}"
        )
    try:
        struct = loadmat(path)[name][0, 0]
        found = {field: struct[field] for field in struct.dtype.names}
    except KeyError:
        raise ValueError(
            f"{path} has no MATLAB struct {name!r}; is it an SBD {name} file?"
        ) from None
    except Exception as err:  # scipy raises several types (MatReadError, ValueError, ...)
        raise ValueError(
            f"cannot read annotation {path} ({err}); the file is corrupt or truncated"
        ) from err
    missing = [field for field in fields if field not in found]
    if missing:
        raise ValueError(
            f"{path}: the struct {name} has no field {', '.join(missing)} (it has "
            f"{', '.join(found) or 'none'}), so it is not a complete SBD annotation; "
            f"re-extract SBD: {_refetch(path.parent.parent, 'sbd')}"
        )
    return found


def _read_id_list(path: Path) -> list[str]:
    """Image ids of a split file, one per line (the first token, so that VOC's ``<id> <flag>``
    lines work too)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _read_class_names(folder: Path) -> tuple[str, ...]:
    path = folder / CLASS_NAMES_FILE
    if not path.is_file():
        return VOC_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names or names[0] != "background":
        raise ValueError(
            f"{path} must list one class per line starting with 'background', got {names[:3]}"
        )
    return names


class VOCInstanceSegmentation(Dataset):
    """Instance segmentation ground truth from VOC 2012 PNGs or SBD .mat files.

    Args:
        root: ``format="voc"``: a folder holding ``VOCdevkit/VOC2012`` (or that ``VOC2012`` folder).
            ``format="sbd"``: SBD's ``benchmark_RELEASE`` folder or its ``dataset`` folder.
        split: the name of an id list. VOC: any ``ImageSets/Segmentation/<split>.txt`` (train,
            val, trainval). SBD: ``train`` / ``val`` (SBD's lists) or ``mnc_train`` / ``mnc_val``
            (MNC's re-split; create it once with :func:`make_mnc_split`).
        format: ``"voc"`` or ``"sbd"``.
        transforms: ``transforms(image, target) -> (image, target)``, applied last.
        class_names: names with ``"background"`` first; default: ``class_names.txt`` in the
            dataset folder when present (the shapes dataset writes one), else ``VOC_CLASSES``.

    Items are ``(image Tensor[3, H, W] float32 in [0, 1], Target)``; see ``structures.py``.
    Instances come in the order of their ids in the annotation; an image without
    instances gives boxes ``[0, 4]``, labels ``[0]``, masks ``[0, H, W]``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str = "train",
        format: str = "voc",
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
        class_names: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.format = format
        self.split = split
        self.transforms = transforms
        if format == "voc":
            self.root = find_voc_dir(root)
            required = (
                "JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"
            )
            split_dir, how = self.root / "ImageSets" / "Segmentation", _GET_VOC
        else:
            self.root = find_sbd_dir(root)
            required = ("img", "inst", "cls")
            split_dir, how = self.root, _GET_SBD
        for sub in required:
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(
                    f"{self.root / sub} is missing; the dataset is incomplete. "
                    f"Get it with `{how.format(root=root)}`."
                )
        self.image_ids = self._read_split(split_dir, root)
        if class_names is None:
            class_names = _read_class_names(self.root)
        self.class_names = tuple(class_names)
        if self.class_names[0] != "background":
            raise ValueError(
                f"class_names must start with 'background', got {self.class_names[:3]}"
            )
        self.num_classes = len(self.class_names) - 1

    def _read_split(self, split_dir: Path, root: str | os.PathLike) -> list[str]:
        split_file = split_dir / f"{self.split}.txt"
        if split_file.is_file():
            image_ids = _read_id_list(split_file)
            if image_ids:
                return image_ids
            if (self.root / SHAPES_MARKER).is_file():
                if self.root.parent.name == "VOCdevkit":  # the folder generate_shapes was given
                    root = self.root.parent.parent
                fix = (
                    f"regenerate it with images in every split, e.g. "
                    f"`{_GET_SHAPES.format(root=root)} --train 1000 --val 200 --overwrite`"
                )
            else:
                fix = "extract the dataset again: " + _refetch(
                    self.root, "voc2012" if self.format == "voc" else "sbd"
                )
            raise ValueError(
                f"split file {split_file} lists no image ids (it is empty or blank); choose a "
                f"split with images, or {fix}"
            )
        if self.format == "sbd" and self.split in MNC_SPLITS:
            raise FileNotFoundError(
                f"{split_file} does not exist. MNC's split re-splits SBD by VOC 2012 "
                "ImageSets/Main membership (docs/paper_vs_code.md: data); create it once with "
                "`from mnc_teach.data.voc import "
                f"make_mnc_split; make_mnc_split({str(self.root)!r}, VOC_ROOT)`."
            )
        available = {p.stem for p in split_dir.glob("*.txt") if p.name not in NOT_SPLIT_FILES}
        if self.format == "sbd":
            available |= set(MNC_SPLITS)
        raise ValueError(
            f"unknown split {self.split!r}: no {split_file}; "
            f"available: {', '.join(sorted(available)) or 'none'}"
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        folder = "JPEGImages" if self.format == "voc" else "img"
        return self.root / folder / f"{self.image_ids[index]}.jpg"

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        target = self.load_target(index)
        image = read_image(self.image_path(index))
        if tuple(image.shape[-2:]) != tuple(target["ignore"].shape):
            raise ValueError(
                f"{self.image_path(index)} is {tuple(image.shape[-2:])} (H, W) but its annotation "
                f"is {tuple(target['ignore'].shape)}; the image and annotation files do not belong "
                "together"
            )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def load_target(self, index: int) -> Target:
        """The ground truth of one image, read from the annotation only (no JPEG is decoded)."""
        image_id = self.image_ids[index]
        if self.format == "voc":
            instance_map, ignore, instance_ids, labels = self._load_voc(image_id)
        else:
            instance_map, ignore, instance_ids, labels = self._load_sbd(image_id)
        ids = torch.as_tensor(instance_ids, dtype=torch.int64)
        instance_map = torch.from_numpy(instance_map.astype(np.int64))
        ignore = torch.from_numpy(ignore)
        masks = (instance_map[None] == ids[:, None, None]) & ~ignore  # (G, H, W) bool
        masks = masks.to(torch.uint8)
        return Target(
            boxes=masks_to_boxes(masks),
            labels=torch.as_tensor(labels, dtype=torch.int64),
            masks=masks,
            ignore=ignore.to(torch.uint8),
            image_id=image_id,
        )

    def _check_label(self, label: int, path: Path, instance_id: int) -> None:
        if not 1 <= label <= self.num_classes:
            raise ValueError(
                f"{path}: instance {instance_id} has class {label}, outside 1..{self.num_classes} "
                f"({len(self.class_names)} class names); pass the right class_names or fix the file"
            )

    def _load_voc(self, image_id: str) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        object_path = self.root / "SegmentationObject" / f"{image_id}.png"
        class_path = self.root / "SegmentationClass" / f"{image_id}.png"
        # (H, W): 0 = background, k = instance k, 255 = void
        instance_map = _read_label_png(object_path)
        class_map = _read_label_png(class_path)  # (H, W) 0 = background, c = class c, 255 = void
        if instance_map.shape != class_map.shape:
            raise ValueError(
                f"{object_path} is {instance_map.shape} but {class_path} is {class_map.shape}"
            )
        ignore = (instance_map == VOID) | (class_map == VOID)
        inside = ~ignore & (instance_map != BACKGROUND)
        # pair_counts[k, c] = number of non-void pixels of instance k labelled class c
        pairs = instance_map[inside].astype(np.int64) * 256 + class_map[inside]
        pair_counts = np.bincount(pairs, minlength=256 * 256).reshape(256, 256)
        # instances without a pixel are skipped
        instance_ids = np.flatnonzero(pair_counts.sum(axis=1)).tolist()
        labels = []
        for instance_id in instance_ids:
            counts = pair_counts[instance_id]
            label = int(counts.argmax())
            if np.count_nonzero(counts) > 1:
                found = {c: int(counts[c]) for c in np.flatnonzero(counts)}
                warnings.warn(
                    f"{class_path}: instance {instance_id} of {object_path.name} covers several "
                    f"classes (class: pixels {found}); using the majority class {label}",
                    AnnotationWarning,
                    stacklevel=3,
                )
            self._check_label(label, class_path, instance_id)
            labels.append(label)
        return instance_map, ignore, instance_ids, labels

    def _load_sbd(self, image_id: str) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        inst_path = self.root / "inst" / f"{image_id}.mat"
        cls_path = self.root / "cls" / f"{image_id}.mat"
        gt_inst = _read_mat_struct(inst_path, "GTinst", ("Segmentation", "Categories"))
        instance_map = np.asarray(gt_inst["Segmentation"])  # (H, W) 0 = background, k = instance k
        # (G,): the class of instance k is categories[k - 1]
        categories = np.asarray(gt_inst["Categories"]).reshape(-1).astype(np.int64)
        gt_cls = _read_mat_struct(cls_path, "GTcls", ("Segmentation",))
        class_map = np.asarray(gt_cls["Segmentation"])  # (H, W) class ids
        if instance_map.shape != class_map.shape:
            raise ValueError(
                f"{inst_path} is {instance_map.shape} but {cls_path} is {class_map.shape}"
            )
        instance_ids = [int(k) for k in np.unique(instance_map) if k != BACKGROUND]
        labels = []
        for instance_id in instance_ids:
            if instance_id > len(categories):
                raise ValueError(
                    f"{inst_path}: instance id {instance_id} in Segmentation but only "
                    f"{len(categories)} Categories"
                )
            label = int(categories[instance_id - 1])
            self._check_label(label, inst_path, instance_id)
            under = np.unique(class_map[instance_map == instance_id])
            if under.tolist() != [label]:
                warnings.warn(
                    f"{inst_path}: instance {instance_id} has Categories class {label} but "
                    f"{cls_path.name} shows classes {under.tolist()} under it; using {label}",
                    AnnotationWarning,
                    stacklevel=3,
                )
            labels.append(label)
        # SBD has no void pixels (docs/paper_vs_code.md: data)
        ignore = np.zeros(instance_map.shape, dtype=bool)
        return instance_map, ignore, instance_ids, labels


def make_mnc_split(sbd_root: str | os.PathLike, voc_root: str | os.PathLike) -> dict[str, int]:
    """Write MNC's re-split of SBD as ``mnc_train.txt`` / ``mnc_val.txt`` in the SBD dataset folder.

    Every SBD image (SBD ``train.txt`` + ``val.txt``) goes to ``mnc_train`` if its id is in
    VOC 2012 ``ImageSets/Main/train.txt`` and to ``mnc_val`` if it is in ``.../val.txt``
    (docs/paper_vs_code.md: data: the full data gives 5,623 / 5,732). SBD ids in neither list
    are left out with a warning. Ids are written sorted; each file is replaced atomically.

    Args:
        sbd_root: SBD's ``benchmark_RELEASE`` folder or its ``dataset`` folder.
        voc_root: a folder holding ``VOCdevkit/VOC2012`` (or that ``VOC2012`` folder).

    Returns:
        ``{"mnc_train": count, "mnc_val": count}``.
    """
    sbd_dir, voc_dir = find_sbd_dir(sbd_root), find_voc_dir(voc_root)
    sbd_ids: set[str] = set()
    for name in ("train", "val"):
        path = sbd_dir / f"{name}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; re-download SBD with `{_GET_SBD.format(root=sbd_root)}`"
            )
        sbd_ids.update(_read_id_list(path))
    main_ids = {}
    for name in ("train", "val"):
        path = voc_dir / "ImageSets" / "Main" / f"{name}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; MNC's split needs VOC 2012's ImageSets/Main lists. "
                f"Get them with `{_GET_VOC.format(root=voc_root)}`."
            )
        main_ids[name] = set(_read_id_list(path))
    both = main_ids["train"] & main_ids["val"] & sbd_ids
    if both:
        raise ValueError(
            f"ids in both ImageSets/Main/train.txt and val.txt of {voc_dir}: {sorted(both)[:5]}"
        )
    unassigned = sorted(sbd_ids - main_ids["train"] - main_ids["val"])
    if unassigned:
        warnings.warn(
            f"{len(unassigned)} SBD ids are in neither VOC 2012 ImageSets/Main/train.txt nor "
            f"val.txt (e.g. {unassigned[:3]}); they are left out of mnc_train / mnc_val",
            AnnotationWarning,
            stacklevel=2,
        )
    counts = {}
    for name, split in zip(("train", "val"), MNC_SPLITS, strict=True):
        ids = sorted(sbd_ids & main_ids[name])
        lines = "".join(f"{image_id}\n" for image_id in ids)
        write_text_atomically(sbd_dir / f"{split}.txt", lines)
        counts[split] = len(ids)
    return counts
