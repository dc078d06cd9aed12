"""Predictions as COCO results JSON (RLE masks, validated reading and writing), and COCO mask AP.

A predictions file is a JSON list with one dict per detection: ``image_id`` (the dataset's
image id string), ``category_id`` (1..K), ``segmentation`` (pycocotools RLE with str counts)
and ``score``; ``bbox`` ``[x, y, w, h]`` is optional. :mod:`mnc_teach.evaluation.sds` scores
such lists (mAP^r); :func:`coco_evaluate` gives pycocotools' COCO-style AP of the same list.

Shape legend (structures.py): D detections in one image, H, W image size, K foreground classes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from mnc_teach.fileio import write_text_atomically
from mnc_teach.structures import Target

__all__ = [
    "COCO_STAT_NAMES", "MASK_BINARIZE_THRESHOLD", "RESULT_KEYS", "check_result", "check_results",
    "coco_evaluate",
    "decode_mask", "detections_to_coco_results", "encode_mask", "encode_masks", "index_images",
    "load_predictions", "save_predictions",
]

# docs/paper_vs_code.md: inference: `PascalVOCSeg._reformat_result` binarises masks at >= 0.4
# (`BINARIZE_THRESH`).
MASK_BINARIZE_THRESHOLD = 0.4
RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")
COCO_STAT_NAMES = tuple("AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl".split())
HOW_TO_FIX = (
    "write predictions with mnc_teach.evaluation.coco.detections_to_coco_results(...) and "
    'save_predictions(...): a JSON list of {"image_id": str, "category_id": int in 1..K, '
    '"segmentation": {"size": [H, W], "counts": str} (pycocotools RLE), "score": float}'
)


def encode_mask(mask: Tensor | np.ndarray) -> dict:
    """Binary mask ``[H, W]`` (nonzero = inside) -> RLE ``{"size": [H, W], "counts": str}``."""
    mask = torch.as_tensor(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects one mask [H, W], got shape {tuple(mask.shape)}")
    return encode_masks(mask[None])[0]


def decode_mask(rle: dict) -> np.ndarray:
    """RLE (str or bytes counts, or an uncompressed list of counts) -> ``uint8 [H, W]``."""
    height, width = rle["size"]
    if isinstance(rle["counts"], list):  # uncompressed RLE -> compressed
        rle = mask_utils.frPyObjects(rle, height, width)
    elif isinstance(rle["counts"], str):
        rle = {"size": [height, width], "counts": rle["counts"].encode("ascii")}
    with warnings.catch_warnings():  # pycocotools' own numpy-2 deprecation, not ours to fix
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return np.ascontiguousarray(mask_utils.decode(rle))


def encode_masks(masks: Tensor) -> list[dict]:
    """Binary masks ``[G, H, W]`` -> G RLEs (str counts) in one pycocotools call."""
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray((masks != 0).to(torch.uint8).cpu().permute(1, 2, 0).numpy())
    rles = mask_utils.encode(fortran)  # (G, H, W) -> (H, W, G) in Fortran order
    return [
        {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles
    ]


def _rle_run_lengths(counts: str) -> np.ndarray:
    """Run lengths (int64 [R]) of a pycocotools compressed RLE string (`rleFrString`, maskApi.c).

    Each value is stored in 5-bit chunks, least significant first, one character
    ``chr(48 + chunk)`` per chunk: bit 0x20 means "another chunk follows", bit 0x10 of the
    last chunk is the sign, and values after the first two are differences to the value two
    places earlier. Used to validate untrusted RLEs (pycocotools does not check the total).
    """
    if not counts.isascii():
        raise ValueError("counts has non-ASCII characters")
    chunks = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48  # [C]
    if chunks.size == 0:
        return np.zeros(0, dtype=np.int64)
    if chunks.min() < 0 or chunks.max() > 63:
        raise ValueError("counts has characters outside the RLE alphabet '0'..'o'")
    is_last = (chunks & 0x20) == 0  # [C] chunk ends its value
    if not is_last[-1]:
        raise ValueError("counts string ends in the middle of a value")
    starts = np.flatnonzero(np.concatenate([[True], is_last[:-1]]))  # [R] first chunk of each value
    value_of_chunk = np.cumsum(is_last) - is_last  # [C]
    shift = 5 * (np.arange(chunks.size) - starts[value_of_chunk])  # [C] bit offset of each chunk
    if shift.max() > 50:
        raise ValueError("counts holds a run length that is implausibly large")
    values = np.add.reduceat((chunks & 0x1F) << shift, starts)  # [R]
    negative = (chunks[is_last] & 0x10) != 0
    values -= negative * (np.int64(1) << (shift[is_last] + 5))  # two's complement sign
    values[1::2], values[2::2] = np.cumsum(values[1::2]), np.cumsum(values[2::2])  # undo the deltas
    return values


def check_result(
    entry: object,
    where: str,
    *,
    image_ids: Container[str] | None = None,
    num_classes: int | None = None,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> None:
    """Raise ``ValueError`` naming ``where`` if ``entry`` is not a valid COCO result dict.

    Args:
        entry: one element of a predictions list.
        where: how the error names the entry, e.g. ``"predictions.json: entry 3"``.
        image_ids: if given, the entry's ``image_id`` must be one of these.
        num_classes: if given, its ``category_id`` must be in 1..num_classes.
        image_sizes: if given, image_id -> (H, W): the mask must have its image's size.
    """

    def fail(problem: str) -> NoReturn:
        raise ValueError(f"{where}: {problem}; {HOW_TO_FIX}")

    if not isinstance(entry, dict):
        fail(f"expected a dict, got {type(entry).__name__}")
    missing = [key for key in RESULT_KEYS if key not in entry]
    if missing:
        fail(f"missing key(s) {missing}")
    if not isinstance(entry["image_id"], str):
        fail(f"image_id {entry['image_id']!r} is not a str (use the dataset's image id string)")
    if image_ids is not None and entry["image_id"] not in image_ids:
        fail(f"image_id {entry['image_id']!r} is not in the ground truth (wrong split or dataset?)")
    category = entry["category_id"]
    if not isinstance(category, int) or isinstance(category, bool) or category < 1:
        fail(f"category_id {category!r} is not an int >= 1 (0 is background)")
    if num_classes is not None and category > num_classes:
        fail(f"category_id {category} is above the number of classes K = {num_classes}")
    score = entry["score"]
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        fail(f"score {score!r} is not a finite number")
    rle = entry["segmentation"]
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        fail("segmentation is not an RLE dict with exactly the keys 'size' and 'counts'")
    size = rle["size"]
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(s, int) and s > 0 for s in size)
    ):
        fail(f"segmentation size {size!r} is not [H, W] with positive ints")
    if not isinstance(rle["counts"], str):
        fail(
            f"segmentation counts is {type(rle['counts']).__name__}, expected a compressed RLE str"
        )
    try:
        runs = _rle_run_lengths(rle["counts"])
    except ValueError as error:
        fail(f"bad RLE: {error}")
    if (runs < 0).any() or runs.sum() != size[0] * size[1]:
        fail(f"bad RLE: run lengths are negative or do not add up to H * W = {size[0] * size[1]}")
    expected = (image_sizes or {}).get(entry["image_id"])
    if expected is not None and list(expected) != list(size):
        fail(
            f"the mask is {list(size)} (H, W) but image {entry['image_id']!r} is "
            f"{list(expected)}; encode masks at the original image size"
        )


def check_results(
    predictions: list[dict], *, image_ids: Container[str], num_classes: int
) -> None:
    """:func:`check_result` for every entry of a predictions list, each named by its index."""
    for p, entry in enumerate(predictions):
        check_result(entry, f"prediction {p}", image_ids=image_ids, num_classes=num_classes)


def detections_to_coco_results(
    image_id: str, detections: dict, mask_threshold: float = MASK_BINARIZE_THRESHOLD
) -> list[dict]:
    """Convert one image's Detection (structures.py) into COCO result dicts.

    Args:
        image_id: the dataset's id of the image.
        detections: boxes (Tensor[D, 4] xyxy), labels (Tensor[D] in 1..K), scores (Tensor[D]),
            masks (Tensor[D, 1, H, W] soft in [0, 1]).
        mask_threshold: a pixel is inside when its soft value is >= this (MNC: 0.4).

    Returns:
        D dicts with image_id, category_id, segmentation (RLE, str counts), score and
        bbox ``[x, y, w, h]`` taken from the detection's box.
    """
    soft_masks = detections["masks"]
    if soft_masks.ndim != 4 or soft_masks.shape[1] != 1:
        raise ValueError(f"detections['masks'] is {tuple(soft_masks.shape)}; expected [D, 1, H, W]")
    rles = encode_masks(soft_masks[:, 0] >= mask_threshold)  # (D, 1, H, W) -> (D, H, W) -> D RLEs
    boxes = detections["boxes"].detach().cpu().double()
    boxes_xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # xyxy -> xywh
    labels, scores = detections["labels"].tolist(), detections["scores"].tolist()
    return [
        {
            "image_id": image_id,
            "category_id": int(label),
            "segmentation": rle,
            "score": float(score),
            "bbox": box,
        }
        for rle, label, score, box in zip(rles, labels, scores, boxes_xywh.tolist(), strict=True)
    ]


def save_predictions(results: list[dict], path: str | Path) -> None:
    """Validate ``results`` and write them as JSON atomically (temp file + rename)."""
    path = Path(path)
    for i, entry in enumerate(results):
        check_result(entry, f"save_predictions({path}): entry {i}")
    write_text_atomically(path, json.dumps(results))


def load_predictions(
    path: str | Path,
    image_ids: Container[str] | None = None,
    num_classes: int | None = None,
    *,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> list[dict]:
    """Read a COCO results JSON file and validate every entry.

    Args:
        path: the file written by :func:`save_predictions` (or any COCO segm results file).
        image_ids: if given, every entry's image_id must be one of these.
        num_classes: if given, every category_id must be in 1..num_classes.
        image_sizes: if given, image_id -> (H, W): every mask must have its image's size.

    Raises:
        FileNotFoundError / ValueError naming the file, the entry index and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file; {HOW_TO_FIX}")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {HOW_TO_FIX}") from None
    if not isinstance(results, list):
        raise ValueError(
            f"{path} holds a {type(results).__name__}, expected a list of results; {HOW_TO_FIX}"
        )
    for i, entry in enumerate(results):
        check_result(
            entry, f"{path}: entry {i}", image_ids=image_ids, num_classes=num_classes,
            image_sizes=image_sizes,
        )
    return results


def index_images(ground_truth: list[Target], num_classes: int) -> dict[str, int]:
    """Map image_id -> position in ``ground_truth``; check ids are unique and labels in 1..K."""
    index: dict[str, int] = {}
    for i, target in enumerate(ground_truth):
        image_id = target.get("image_id")
        if not isinstance(image_id, str) or image_id in index:
            raise ValueError(
                f"ground truth {i} has a missing or duplicate image_id {image_id!r}; "
                "ids must be unique str"
            )
        labels = target["labels"]
        if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(
                f"ground truth {image_id!r}: labels {labels.tolist()} outside 1..{num_classes}"
            )
        index[image_id] = i
    return index


def coco_evaluate(
    predictions: list[dict],
    ground_truth: list[Target],
    class_names: Sequence[str],
    *,
    verbose: bool = False,
    check: bool = True,
) -> dict[str, float]:
    """COCO mask AP/AR (``COCOeval(iouType="segm")``) of COCO-format predictions.

    Image ids are mapped to ints 1..len(ground_truth) in order. Void pixels: pycocotools has
    no void label, so they are simply not part of any GT mask; a prediction covering void
    pixels is penalised here (unlike :func:`~mnc_teach.evaluation.sds.mask_iou`). An optional
    ``bbox`` is dropped from the results so ``loadRes`` takes each detection's area from its
    mask (with a bbox present it would use the box area for the small/medium/large ranges).

    Args:
        predictions: COCO result dicts (see the module docstring).
        ground_truth: one Target per image, with a unique str ``image_id``.
        class_names: "background" first; K = len(class_names) - 1.
        verbose: print pycocotools' summary table.
        check: validate every prediction first (:func:`check_result`); ``False`` for callers
            that already did, e.g. with :func:`load_predictions`.

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};
        NaN where COCO reports -1 (no GT in that class / area range). With no predictions
        every value is 0.0 (or NaN), as COCOeval gives.
    """
    num_classes = len(class_names) - 1
    image_index = index_images(ground_truth, num_classes)
    if check:
        check_results(predictions, image_ids=image_index, num_classes=num_classes)
    results = [
        {key: entry[key] for key in RESULT_KEYS} | {"image_id": image_index[entry["image_id"]] + 1}
        for entry in predictions
    ]

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = _coco_dataset(ground_truth, class_names)
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes indexes results[0]; an empty result set is evaluated as such
            coco_dt = COCO()
            coco_dt.dataset = {**coco_gt.dataset, "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(log.getvalue())
    return {
        name: float(value) if value >= 0 else math.nan
        for name, value in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)
    }


def _coco_dataset(ground_truth: list[Target], class_names: Sequence[str]) -> COCO:
    """The ground truth as a pycocotools ``COCO`` object: image ``i`` gets id ``i + 1``, each
    instance one annotation with its RLE mask, area and box (none is a crowd)."""
    categories = [{"id": k, "name": class_names[k]} for k in range(1, len(class_names))]
    images, annotations = [], []
    for i, target in enumerate(ground_truth):
        height, width = (int(side) for side in target["masks"].shape[-2:])
        images.append(
            {"id": i + 1, "file_name": target["image_id"], "height": height, "width": width}
        )
        rles = encode_masks(target["masks"])
        for rle, label in zip(rles, target["labels"].tolist(), strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": label,
                "iscrowd": 0, "segmentation": rle, "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
            })
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    coco.createIndex()
    return coco
