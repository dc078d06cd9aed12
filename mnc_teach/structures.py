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

from collections.abc import Mapping, Sequence
from typing import TypedDict

import torch
from torch import Tensor

__all__ = ["LOSS_PREFIX", "Detection", "Target", "check_targets", "empty_target", "loss_terms"]

# The model returns its losses as {"loss_<stage>_<what>": scalar}; stages 4-5 add "_s4" / "_s5".
LOSS_PREFIX = "loss_"


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


def check_targets(
    images: list[Tensor], targets: list[Target], num_classes: int | None = None
) -> None:
    """Raise ``ValueError`` naming the image and the key when the contract is broken.

    Checks shapes, dtypes, box validity (finite, x2 > x1, y2 > y1) and label range.
    Called at the model boundary so a wrong target fails with a readable message
    instead of a shape error deep inside a loss.
    """
    if len(images) != len(targets):
        raise ValueError(
            f"got {len(images)} images but {len(targets)} targets; pass one target per image"
        )
    for i, (image, target) in enumerate(zip(images, targets, strict=True)):
        where = f"target {i}"
        if target.get("image_id"):
            where += f" (image_id {target['image_id']!r})"
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"image {i} has shape {tuple(image.shape)}; expected Tensor[3, H, W]"
            )
        if not image.is_floating_point():
            raise ValueError(
                f"image {i} has dtype {image.dtype}; expected float in [0, 1] "
                "(use transforms.ToTensor)"
            )
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
        if labels.min() < 1 or (num_classes is not None and labels.max() > num_classes):
            raise ValueError(
                f"{where}: labels must be in 1..{num_classes or 'K'} (0 is background), "
                f"got {labels.tolist()}"
            )
