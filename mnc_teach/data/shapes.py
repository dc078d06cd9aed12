"""A synthetic instance segmentation dataset (circles, squares, triangles) in PASCAL VOC layout.

Every CPU lesson trains on it. ``generate_shapes(root)`` writes
``root/VOCdevkit/VOC2012/`` exactly like VOC 2012, so ``VOCInstanceSegmentation(root)``
reads it with the same code as the real data:

    JPEGImages/<id>.jpg                   the rendered images
    SegmentationClass/<id>.png            palette PNG: 0 background, c = class, 255 = void
    SegmentationObject/<id>.png           palette PNG: 0 background, k = instance k, 255 = void
    ImageSets/Segmentation/{train,val,trainval}.txt
    class_names.txt                       "background", "circle", "square", "triangle"
    fingerprint.txt, generation.json      the dataset's sha256 and the parameters used

Each image shows 1-5 shapes of random class, colour, size and rotation on a textured
background. Later shapes occlude earlier ones and each mask keeps only the visible pixels.
Like VOC, a void band runs along every instance boundary. Instances whose visible area
(void excluded) is below ``MIN_VISIBLE_FRACTION`` of the image are dropped *before*
rendering, so the image never shows an unlabelled shape.

Same parameters give byte-identical files: each image has its own ``numpy`` Generator
seeded with ``(seed, split, index)``, the JPEG quality is fixed and no file holds a
timestamp. The data is written to a hidden temporary folder and renamed into place at
the end, so an interrupted run never leaves a folder that looks complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mnc_teach.data.voc import VOID, voc_colormap

__all__ = ["SHAPE_CLASSES", "dataset_fingerprint", "generate_shapes", "render_scene"]

SHAPE_CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle")
GENERATOR_VERSION = 1  # bump when the drawing changes, so stored datasets no longer match
MAX_INSTANCES = 5  # each image starts with 1..MAX_INSTANCES shapes
MIN_VISIBLE_FRACTION = 0.015  # drop instances with fewer visible pixels than 1.5% of the image
VOID_RADIUS = 1  # void = pixels with another label within this (chessboard) distance: a 2 px band
CIRCLE_RADIUS = (0.09, 0.22)  # fraction of the image side
SQUARE_HALF_SIDE = (0.09, 0.2)
TRIANGLE_RADIUS = (0.13, 0.28)  # circumradius of the equilateral triangle
CENTER_RANGE = (0.1, 0.9)  # shape centres, fraction of the image side
MIN_COLOR_DISTANCE = 80.0  # RGB distance of a shape to the mean background colour (0-255 scale)
NOISE_STD = 6.0  # Gaussian pixel noise over the whole image (0-255 scale)
JPEG_QUALITY = 95  # fixed, so files are reproducible
SPLIT_CODES = {"train": 0, "val": 1}  # part of each image's seed
METADATA_FILES = ("fingerprint.txt", "generation.json")  # not hashed into the fingerprint
GENERATION_FILE = "generation.json"  # written last: its presence marks a complete dataset


@functools.lru_cache(maxsize=4)
def _pixel_centers(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)``, each ``np.ndarray[S, S]`` float32: the continuous coordinates of pixel
    centres."""
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    xs, ys = np.meshgrid(coords, coords, indexing="xy")
    xs.flags.writeable = ys.flags.writeable = False  # shared by every call
    return xs, ys


def _background(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth two-colour gradient, with stripes half of the time.

    Returns:
        image (np.ndarray[S, S, 3], float32, 0-255) and its mean colour (np.ndarray[3]).
    """
    xs, ys = _pixel_centers(image_size)
    colors = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    along = (
        (xs - image_size / 2) * np.cos(angle) + (ys - image_size / 2) * np.sin(angle)
    ) / image_size + 0.5
    along = np.clip(along, 0, 1)[..., None]  # (S, S) -> (S, S, 1)
    image = (colors[0] + along * (colors[1] - colors[0])).astype(np.float32)  # (S, S, 3)
    if rng.random() < 0.5:
        stripe_angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        amplitude = rng.uniform(10, 30)
        phase = (xs * np.cos(stripe_angle) + ys * np.sin(stripe_angle)) * 2 * np.pi / period
        image = image + amplitude * np.sin(phase)[..., None]
    return image.astype(np.float32), colors.mean(axis=0)


def _shape_mask(rng: np.random.Generator, label: int, image_size: int) -> np.ndarray:
    """Rasterise one random shape of class ``label``: ``np.ndarray[S, S]`` bool (the pixels whose
    centre is inside)."""
    xs, ys = _pixel_centers(image_size)
    cx, cy = rng.uniform(*CENTER_RANGE, size=2) * image_size
    if SHAPE_CLASSES[label] == "circle":
        radius = rng.uniform(*CIRCLE_RADIUS) * image_size
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    if SHAPE_CLASSES[label] == "square":
        num_corners, radius = 4, rng.uniform(*SQUARE_HALF_SIDE) * image_size * np.sqrt(2)
    else:
        num_corners, radius = 3, rng.uniform(*TRIANGLE_RADIUS) * image_size
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(num_corners) / num_corners
    corner_xs, corner_ys = cx + radius * np.cos(angles), cy + radius * np.sin(angles)  # (C,) each
    corners = np.stack([corner_xs, corner_ys], axis=1)  # (C, 2)
    inside = np.ones((image_size, image_size), dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        # corners run counter-clockwise in (x, y): the inside is left of every edge
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def _void_band(label_map: np.ndarray) -> np.ndarray:
    """``np.ndarray[S, S]`` bool: pixels with a different label within ``VOID_RADIUS`` (the
    image border excluded)."""
    padded = np.pad(label_map, VOID_RADIUS, mode="edge")
    height, width = label_map.shape
    lowest, highest = label_map.copy(), label_map.copy()
    for dy in range(2 * VOID_RADIUS + 1):
        for dx in range(2 * VOID_RADIUS + 1):
            window = padded[dy : dy + height, dx : dx + width]
            lowest, highest = np.minimum(lowest, window), np.maximum(highest, window)
    return lowest != highest


def _label_map(full_masks: list[np.ndarray]) -> np.ndarray:
    """Paint masks in order (later ones on top): ``np.ndarray[S, S]`` uint8, 0 = background,
    k = mask k-1."""
    label_map = np.zeros(full_masks[0].shape, dtype=np.uint8)
    for instance_id, mask in enumerate(full_masks, start=1):
        label_map[mask] = instance_id
    return label_map


def render_scene(
    rng: np.random.Generator, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image and its two VOC annotations.

    Returns:
        image (np.ndarray[S, S, 3], uint8 RGB),
        instance_map (np.ndarray[S, S], uint8): 0 background, k = instance k (1..G), 255 void,
        class_map (np.ndarray[S, S], uint8): 0 background, c = class c, 255 void.
    """
    min_area = int(np.ceil(MIN_VISIBLE_FRACTION * image_size * image_size))
    background, background_mean = _background(rng, image_size)
    while True:
        num_shapes = int(rng.integers(1, MAX_INSTANCES + 1))
        labels = rng.integers(1, len(SHAPE_CLASSES), size=num_shapes)
        full_masks = [_shape_mask(rng, int(label), image_size) for label in labels]
        # Drop too-small instances until all survivors are big enough. Removing a shape can
        # only reveal pixels of the others, so this loop ends after one or two passes.
        while full_masks:
            label_map = _label_map(full_masks)
            void = _void_band(label_map)  # (S, S) bool, kept for the annotations below
            visible = label_map[~void]
            areas = np.bincount(visible, minlength=len(full_masks) + 1)[1:]
            keep = areas >= min_area
            if keep.all():
                break
            full_masks = [mask for mask, k in zip(full_masks, keep, strict=True) if k]
            labels = labels[keep]
        if full_masks:
            break
    colors = []
    for _ in full_masks:
        color = rng.uniform(0, 255, size=3)
        while np.linalg.norm(color - background_mean) < MIN_COLOR_DISTANCE:
            color = rng.uniform(0, 255, size=3)
        colors.append(color)
    image = background.copy()
    for instance_id, color in enumerate(colors, start=1):
        image[label_map == instance_id] = color
    image += NOISE_STD * rng.standard_normal(size=image.shape, dtype=np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    class_map = np.concatenate([[0], labels]).astype(np.uint8)[label_map]  # instance id -> class
    instance_map = label_map.copy()
    instance_map[void], class_map[void] = VOID, VOID
    return image, instance_map, class_map


def dataset_fingerprint(voc_dir: str | os.PathLike) -> str:
    """sha256 hex over the sorted relative paths and bytes of every file under ``voc_dir``.

    ``fingerprint.txt`` and ``generation.json`` at the top level are left out. Each file adds
    ``path (utf-8) + NUL + size (8 bytes, little endian) + bytes`` to the hash.
    """
    voc_dir = Path(voc_dir)
    if not voc_dir.is_dir():
        raise FileNotFoundError(f"{voc_dir} is not a folder; nothing to fingerprint")
    digest = hashlib.sha256()
    paths = sorted(p.relative_to(voc_dir).as_posix() for p in voc_dir.rglob("*") if p.is_file())
    for relative in paths:
        if relative in METADATA_FILES:
            continue
        data = (voc_dir / relative).read_bytes()
        digest.update(relative.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _write_split(
    voc_dir: Path, split: str, *, count: int, seed: int, image_size: int, bar: tqdm
) -> list[str]:
    """Render and write the ``count`` images of ``split``; return their ids."""
    palette = voc_colormap().reshape(-1).tolist()  # (256, 3) -> 768 ints
    image_ids = [f"{split}_{index:06d}" for index in range(count)]
    for index, image_id in enumerate(image_ids):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
        image, instance_map, class_map = render_scene(rng, image_size)
        jpeg_path = voc_dir / "JPEGImages" / f"{image_id}.jpg"
        Image.fromarray(image).save(jpeg_path, quality=JPEG_QUALITY)
        label_maps = (("SegmentationObject", instance_map), ("SegmentationClass", class_map))
        for folder, indices in label_maps:
            png = Image.fromarray(indices)  # mode "L" ...
            png.putpalette(palette)  # ... becomes a palette ("P") PNG, as in VOC
            png.save(voc_dir / folder / f"{image_id}.png")
        bar.update(1)
    return image_ids


def generate_shapes(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: int = 128,
    progress: bool = True,
    overwrite: bool = False,
) -> str:
    """Write the shapes dataset to ``root/VOCdevkit/VOC2012`` and return its fingerprint.

    Calling again with the same parameters on an intact dataset does nothing and returns
    the stored fingerprint, so notebooks can call it every time. A damaged dataset made
    with the same parameters is regenerated (with a warning).

    Args:
        root: folder that gets ``VOCdevkit/VOC2012``.
        seed: the dataset seed; image ``i`` of ``split`` uses ``default_rng([seed, split, i])``.
        num_train, num_val: images in ``train.txt`` and ``val.txt`` (``trainval.txt`` is both).
        image_size: side S of the square images, in pixels.
        progress: show a ``tqdm`` progress bar.
        overwrite: replace a shapes dataset generated with other parameters.

    Returns:
        The sha256 hex fingerprint (also in ``fingerprint.txt``), see :func:`dataset_fingerprint`.

    Raises:
        ValueError: the folder holds a shapes dataset with other parameters and ``overwrite``
            is False, or ``root`` (or a folder on the way to ``VOCdevkit/VOC2012``) is a file.
        FileExistsError: the folder exists but was not written by this function (e.g. real VOC).
    """
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(
            f"need num_train, num_val >= 0 and at least one image, got {num_train}, {num_val}"
        )
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    voc_dir = Path(root).expanduser() / "VOCdevkit" / "VOC2012"
    _check_not_a_file(root, voc_dir)
    params = {
        "generator": __name__, "version": GENERATOR_VERSION, "seed": int(seed),
        "num_train": int(num_train), "num_val": int(num_val), "image_size": int(image_size),
    }
    if voc_dir.exists():
        intact_fingerprint = _existing_dataset(voc_dir, params, overwrite=overwrite)
        if intact_fingerprint is not None:
            return intact_fingerprint

    # hidden; one left by an interrupted run is removed
    tmp_dir = voc_dir.with_name(f".{voc_dir.name}.partial")
    old_dir = voc_dir.with_name(f".{voc_dir.name}.old")
    for leftover in (tmp_dir, old_dir):
        shutil.rmtree(leftover, ignore_errors=True)
    folders = ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation")
    for folder in folders:
        (tmp_dir / folder).mkdir(parents=True)
    with tqdm(total=num_train + num_val, desc="shapes", unit="img", disable=not progress) as bar:
        kwargs = {"seed": seed, "image_size": image_size, "bar": bar}
        train_ids = _write_split(tmp_dir, "train", count=num_train, **kwargs)
        val_ids = _write_split(tmp_dir, "val", count=num_val, **kwargs)
    for split, ids in (("train", train_ids), ("val", val_ids), ("trainval", train_ids + val_ids)):
        split_file = tmp_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        split_file.write_text("".join(f"{i}\n" for i in ids))
    (tmp_dir / "class_names.txt").write_text("".join(f"{name}\n" for name in SHAPE_CLASSES))
    fingerprint = dataset_fingerprint(tmp_dir)
    (tmp_dir / "fingerprint.txt").write_text(fingerprint + "\n")
    (tmp_dir / GENERATION_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    if voc_dir.exists():  # ours (checked above): moved aside first, never half-deleted
        os.replace(voc_dir, old_dir)
    os.replace(tmp_dir, voc_dir)
    shutil.rmtree(old_dir, ignore_errors=True)
    return fingerprint


def _check_not_a_file(root: str | os.PathLike, voc_dir: Path) -> None:
    """``ValueError`` when the nearest existing folder on the way to ``voc_dir`` is a file
    (``mkdir`` would fail with a bare ``NotADirectoryError`` / ``FileExistsError``)."""
    existing = next(path for path in (voc_dir, *voc_dir.parents) if path.exists())
    if existing.is_dir():
        return
    if existing == Path(root).expanduser():
        raise ValueError(f"shapes root {existing} is a file; choose a folder, e.g. data/shapes")
    raise ValueError(
        f"{existing} is a file, so the shapes dataset cannot go to {voc_dir}; move that file "
        "or choose another root folder, e.g. data/shapes"
    )


def _existing_dataset(voc_dir: Path, params: dict, *, overwrite: bool) -> str | None:
    """The fingerprint of the intact shapes dataset made with ``params`` in ``voc_dir``; None
    when it must be (re)generated. Raises when the folder holds something else."""
    stored = _read_generation(voc_dir)
    if stored != params and not overwrite:
        differing = sorted(
            key for key in params.keys() | stored.keys() if stored.get(key) != params.get(key)
        )
        had = ", ".join(f"{key}={stored.get(key)}" for key in differing)
        asked = ", ".join(f"{key}={params.get(key)}" for key in differing)
        raise ValueError(
            f"{voc_dir} holds a shapes dataset made with {had}, but you asked for {asked}. "
            "Pass overwrite=True (command line: --overwrite) to replace it, or choose another "
            "root."
        )
    if stored != params:
        return None  # overwrite
    fingerprint_file = voc_dir / "fingerprint.txt"
    stored_fingerprint = fingerprint_file.read_text().strip() if fingerprint_file.is_file() else ""
    if stored_fingerprint and dataset_fingerprint(voc_dir) == stored_fingerprint:
        return stored_fingerprint
    warnings.warn(
        f"{voc_dir} does not match its fingerprint.txt (files changed or missing); regenerating",
        stacklevel=3,
    )
    return None


def _read_generation(voc_dir: Path) -> dict:
    """The parameters stored in ``generation.json``; refuse folders this module did not write."""
    path = voc_dir / GENERATION_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict) or stored.get("generator") != __name__:
        raise FileExistsError(
            f"{voc_dir} exists but has no valid {GENERATION_FILE} from generate_shapes, so it is "
            "not a shapes dataset (it may be a real VOC 2012 download, which is never "
            "overwritten). Choose another root, or delete that folder yourself if it is a broken "
            "shapes dataset."
        )
    return stored
