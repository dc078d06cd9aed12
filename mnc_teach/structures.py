"""The data contract every part of mnc_teach speaks (DESIGN.md §3).

Shape legend: each letter means the same thing in every module of the package.
    N     images in a batch               H, W  image height and width (pixels)
    C     feature channels                h, w  feature-map size
    A     anchors per feature-map location
    T     anchors of an image in all: h * w * A
    R     RoIs / proposals (R_i: those of image i; R_fg: the foreground ones)
    G     ground-truth instances in one image
    B     boxes of any kind, in the geometry helpers (B1, B2: two sets)
    K     foreground classes (0 = background, so K+1 classes with it)
    P     RoI-warp output side            S_h, S_w  a warp grid's size (P x P after pooling)
    M     mask side (m in the paper)
    Q     candidate detections of an image, before NMS
    D     detections in one image

Conventions:
    * Images are float tensors in [0, 1], ``Tensor[3, H, W]``.
    * Boxes are ``Tensor[*, 4]`` float32 ``(x1, y1, x2, y2)`` in absolute pixels with
      *continuous* coordinates: pixel (row i, column j) covers the square
      [j, j+1) x [i, i+1), so the tight box of a mask is
      ``(min col, min row, max col + 1, max row + 1)`` and a box's width is ``x2 - x1``.
      (The 2016 Caffe code uses inclusive integer corners and ``x2 - x1 + 1``; the
      continuous convention is torchvision's and makes the "+1" unnecessary.)
    * "RoIs" always means ``Tensor[R, 5]`` with the batch index in column 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypedDict

import torch
from torch import Tensor

from mnc_teach.boxes import masks_to_boxes

__all__ = [
    "LOSS_PREFIX", "Detection", "Target", "check_images", "check_targets", "empty_target",
    "loss_terms",
]

# The model returns its losses as {"loss_<stage>_<what>": scalar}; stages 4-5 add "_s4" / "_s5".
LOSS_PREFIX = "loss_"
# check_targets tolerances. Pixel values may stray this far outside [0, 1] (float rounding).
IMAGE_VALUE_TOLERANCE = 1e-3
# Box corners may stray this many pixels outside [0, W] x [0, H] (float rounding of a resize).
BOX_OUTSIDE_TOLERANCE_PX = 1e-3
# A box matches its mask when the mask's tight box lies inside it, give or take
# max(BOX_MASK_SLACK_PX, BOX_MASK_SLACK_FRACTION * box side) per edge (the package's resize and
# flip keep it within 0.5 px), and spans at least BOX_MASK_MIN_SPAN of the box's width and height
# (plus BOX_MASK_SLACK_PX per edge): shrinking an image by nearest neighbour can drop thin parts
# of a mask, never add any, so the box may be larger than the mask but not much smaller.
BOX_MASK_SLACK_PX = 2.0
BOX_MASK_SLACK_FRACTION = 0.1
BOX_MASK_MIN_SPAN = 0.5


class Target(TypedDict, total=False):
    """Ground truth for one image (torchvision detection convention plus two keys).

    Keys:
        boxes (Tensor[G, 4], float32, xyxy pixels): tight box of each instance mask.
        labels (Tensor[G], int64): class of each instance, in 1..K.
        masks (Tensor[G, H, W], uint8): 1 where a pixel belongs to the instance.
        ignore (Tensor[H, W], uint8): 1 on "void" pixels (VOC's 255 band); these pixels
            belong to no mask and are left out of mask IoU during evaluation.
        image_id (str): the dataset's id of the image, e.g. ``"2008_000123"``.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    ignore: Tensor
    image_id: str


class Detection(TypedDict, total=False):
    """Predictions for one image.

    Keys:
        boxes (Tensor[D, 4], float32, xyxy pixels)
        labels (Tensor[D], int64): predicted class in 1..K.
        scores (Tensor[D], float32): confidence, higher is better.
        masks (Tensor[D, 1, H, W], float32): soft masks in [0, 1].
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    masks: Tensor


def loss_terms(entries: Sequence[Mapping[str, float]]) -> list[str]:
    """The loss terms (``loss_*`` keys) of per-step records, in the order they first appear
    (a run's history keeps one record per step, with ``step``, ``total``, ``lr``... beside them)."""
    return list({key: None for entry in entries for key in entry if key.startswith(LOSS_PREFIX)})


def empty_target(height: int, width: int, image_id: str = "") -> Target:
    """A valid target for an image with no instances (it contributes only negatives)."""
    return Target(
        boxes=torch.zeros((0, 4), dtype=torch.float32),
        labels=torch.zeros((0,), dtype=torch.int64),
        masks=torch.zeros((0, height, width), dtype=torch.uint8),
        ignore=torch.zeros((height, width), dtype=torch.uint8),
        image_id=image_id,
    )


def check_images(images: list[Tensor], image_ids: list[str | None] | None = None) -> None:
    """Raise ``ValueError`` naming the image unless each is a non-empty float Tensor[3, H, W]
    with values in [0, 1] (the backbone normalises them itself). The model checks its input
    with it, in training (through :func:`check_targets`) and at inference."""
    for i, image in enumerate(images):
        image_id = image_ids[i] if image_ids is not None else None
        named = f"image {i}" + (f" (image_id {image_id!r})" if image_id else "")
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"{named} has shape {shape}; expected Tensor[3, H, W]")
        if not image.is_floating_point():
            raise ValueError(
                f"{named} has dtype {image.dtype}; expected float in [0, 1]: divide by "
                "255 (mnc_teach.data.voc.read_image loads images this way)"
            )
        if image.numel() == 0:
            raise ValueError(f"{named} is empty {tuple(image.shape)}; drop it")
        _check_image_values(image, named)


def check_targets(
    images: list[Tensor], targets: list[Target], num_classes: int | None = None
) -> None:
    """Raise ``ValueError`` naming the image and the key when the contract is broken.

    Checks shapes and dtypes, image values in [0, 1] (the backbone normalises them itself),
    box validity (finite, x2 > x1, y2 > y1, inside [0, W] x [0, H]), that each box is the
    tight box of its mask (see ``BOX_MASK_*``; masks must be non-empty) and the label range.
    Called at the model boundary so a wrong target fails with a readable message
    instead of a shape error deep inside a loss.
    """
    if len(images) != len(targets):
        raise ValueError(
            f"got {len(images)} images but {len(targets)} targets; pass one target per image"
        )
    check_images(images, [target.get("image_id") for target in targets])
    for i, (image, target) in enumerate(zip(images, targets, strict=True)):
        named = f" (image_id {target['image_id']!r})" if target.get("image_id") else ""
        where = f"target {i}{named}"
        height, width = image.shape[-2:]
        for key in ("boxes", "labels", "masks"):
            if key not in target:
                raise ValueError(f"{where} has no {key!r}; expected keys boxes, labels, masks")
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype != torch.float32:
            raise ValueError(
                f"{where}: boxes are {boxes.dtype} {tuple(boxes.shape)}; "
                "expected float32 [G, 4] xyxy"
            )
        num_instances = boxes.shape[0]
        if labels.shape != (num_instances,) or labels.dtype != torch.int64:
            raise ValueError(
                f"{where}: labels are {labels.dtype} {tuple(labels.shape)}; "
                f"expected int64 [{num_instances}]"
            )
        if masks.shape != (num_instances, height, width) or masks.dtype != torch.uint8:
            raise ValueError(
                f"{where}: masks are {masks.dtype} {tuple(masks.shape)}; "
                f"expected uint8 [{num_instances}, {height}, {width}] "
                "(one mask per box, image size)"
            )
        if "ignore" in target and target["ignore"].shape != (height, width):
            raise ValueError(
                f"{where}: ignore is {tuple(target['ignore'].shape)}; "
                f"expected [{height}, {width}]"
            )
        if num_instances == 0:
            continue
        if not torch.isfinite(boxes).all():
            raise ValueError(f"{where}: boxes contain NaN or inf")
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            bad = degenerate.nonzero()[0, 0].item()
            raise ValueError(
                f"{where}: box {bad} = {boxes[bad].tolist()} is degenerate (x2 <= x1 or y2 <= y1); "
                "drop empty instances before building targets"
            )
        outside = (boxes[:, :2] < -BOX_OUTSIDE_TOLERANCE_PX).any(dim=1)
        outside |= (boxes[:, 2] > width + BOX_OUTSIDE_TOLERANCE_PX)
        outside |= (boxes[:, 3] > height + BOX_OUTSIDE_TOLERANCE_PX)
        if outside.any():
            bad = outside.nonzero()[0, 0].item()
            raise ValueError(
                f"{where}: box {bad} = {boxes[bad].tolist()} lies outside the image "
                f"[0, {width}] x [0, {height}] (W x H); boxes are xyxy pixels of the image as "
                "passed: resize or flip them with the image, or recompute them from the masks "
                "with mnc_teach.boxes.masks_to_boxes"
            )
        _check_boxes_match_masks(boxes, masks, where)
        if labels.min() < 1 or (num_classes is not None and labels.max() > num_classes):
            raise ValueError(
                f"{where}: labels must be in 1..{num_classes or 'K'} (0 is background), "
                f"got {labels.tolist()}"
            )


def _check_image_values(image: Tensor, name: str) -> None:
    """Raise ``ValueError`` when a float image is not in [0, 1] (give or take
    ``IMAGE_VALUE_TOLERANCE``), e.g. still in 0-255 or already mean/std normalised."""
    low, high = (value.item() for value in torch.aminmax(image.detach()))
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"{name} contains NaN; check the image loading and transforms")
    if low < -IMAGE_VALUE_TOLERANCE:  # checked first: a normalised image also exceeds 1
        raise ValueError(
            f"{name} has values down to {low:.4g}; expected float in [0, 1]: pass the image "
            "before any mean/std normalisation (the backbone normalises it itself)"
        )
    if high > 1 + IMAGE_VALUE_TOLERANCE:
        raise ValueError(
            f"{name} has values up to {high:.4g}; expected float in [0, 1]: divide a 0-255 image "
            "by 255 (mnc_teach.data.voc.read_image loads images this way)"
        )


def _check_boxes_match_masks(boxes: Tensor, masks: Tensor, where: str) -> None:
    """Raise ``ValueError`` unless each box is the tight box of its mask (``BOX_MASK_*``).

    Args:
        boxes (Tensor[G, 4], float32, xyxy pixels), masks (Tensor[G, H, W], uint8); G > 0.
    """
    nonempty = (masks.flatten(1) != 0).any(dim=1)  # (G, H, W) -> (G, H*W) -> (G,) bool
    if not nonempty.all():
        bad = (~nonempty).nonzero()[0, 0].item()
        raise ValueError(
            f"{where}: mask {bad} is empty (its box is {boxes[bad].tolist()}); drop instances "
            "without pixels (box, label and mask) before building targets"
        )
    mask_boxes = masks_to_boxes(masks)  # (G, 4) tight boxes, xyxy
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (G, 2) -> (G, 4): w, h, w, h
    slack = (sides * BOX_MASK_SLACK_FRACTION).clamp(min=BOX_MASK_SLACK_PX)  # (G, 4)
    # how far the mask reaches past each edge of its box: (G, 4)
    beyond = torch.cat([boxes[:, :2] - mask_boxes[:, :2], mask_boxes[:, 2:] - boxes[:, 2:]], 1)
    mask_sides = mask_boxes[:, 2:] - mask_boxes[:, :2]  # (G, 2)
    too_narrow = mask_sides + 2 * BOX_MASK_SLACK_PX < BOX_MASK_MIN_SPAN * sides[:, :2]
    wrong = (beyond > slack).any(dim=1) | too_narrow.any(dim=1)  # (G,)
    if wrong.any():
        bad = wrong.nonzero()[0, 0].item()
        raise ValueError(
            f"{where}: box {bad} = {boxes[bad].tolist()} does not match its mask, whose tight box "
            f"is {mask_boxes[bad].tolist()}; keep boxes and masks in the same order and recompute "
            "the boxes with mnc_teach.boxes.masks_to_boxes(masks) after any transform of the masks"
        )
