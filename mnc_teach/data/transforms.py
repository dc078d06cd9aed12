"""Joint transforms of ``(image, target)`` pairs that keep boxes, masks and ignore consistent.

Every transform takes and returns ``(image Tensor[3, H, W] float, Target)`` and returns a
new target dict (the input is not modified). Keys a target lacks are left out.

Shape legend: see ``mnc_teach/structures.py`` (G instances, H x W image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mnc_teach.structures import Target

__all__ = ["Compose", "RandomHorizontalFlip", "ResizeShortestSide", "collate"]

Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def _resize_nearest(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``Tensor[C, H, W]`` label maps to ``Tensor[C, h, w]`` by nearest pixel centre."""
    if maps.shape[0] == 0:
        return maps.new_zeros((0, *size))
    resized = F.interpolate(maps[None], size=size, mode="nearest-exact")  # (1, C, h, w)
    return resized[0]


class ResizeShortestSide:
    """Scale the image so its short side is ``min_size``, unless the long side would then exceed
    ``max_size``.

    Like MNC's ``prep_im_for_blob`` (``MNC/lib/utils/blob.py``): one scale for both axes,
    ``min_size / short side``, reduced to ``max_size / long side`` when the long side
    would pass ``max_size``; the output size is the rounded ``scale * size``. The image is
    resized bilinearly (``cv2.INTER_LINEAR`` in MNC, no antialiasing), masks and ignore by
    nearest neighbour, boxes are multiplied by the per-axis scale. An instance whose mask
    vanishes when shrinking is dropped (with its box and label), so every mask stays non-empty.

    Args:
        min_size: target short side in pixels (paper: 600, ``TRAIN.SCALES``, docs/paper_vs_code.md:
        data).
        max_size: cap on the long side in pixels (paper: 1000, ``TRAIN.MAX_SIZE``,
        docs/paper_vs_code.md: data).
    """

    def __init__(self, min_size: int = 600, max_size: int = 1000) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(new_height, new_width)`` for an image of ``height x width``."""
        scale = self.min_size / min(height, width)
        if round(scale * max(height, width)) > self.max_size:
            scale = self.max_size / max(height, width)
        return round(height * scale), round(width * scale)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        size = self.output_size(height, width)
        target = dict(target)
        if size == (height, width):
            return image, target
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        image = image[0]  # (1, 3, h, w) -> (3, h, w)
        if "boxes" in target:
            scale_x, scale_y = size[1] / width, size[0] / height
            scale = target["boxes"].new_tensor([scale_x, scale_y, scale_x, scale_y])
            target["boxes"] = target["boxes"] * scale
        if "ignore" in target:
            target["ignore"] = _resize_nearest(target["ignore"][None], size)[0]
        if "masks" in target:
            masks = _resize_nearest(target["masks"], size)  # (G, h, w)
            keep = (masks.flatten(1) != 0).any(dim=1)  # (G, h*w) -> (G,) bool
            target["masks"] = masks[keep]
            for key in ("boxes", "labels"):
                if key in target:
                    target[key] = target[key][keep]
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortestSide(min_size={self.min_size}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror image, masks, ignore and boxes left-right with probability ``p``.

    In continuous coordinates column ``j`` goes to ``W - 1 - j`` and a box ``(x1, y1, x2, y2)``
    goes to ``(W - x2, y1, W - x1, y2)``: the flipped box is exactly the tight box of the
    flipped mask. MNC trains on every image and its mirror (``TRAIN.USE_FLIPPED``,
    docs/paper_vs_code.md: data).

    Args:
        p: probability of flipping.
        generator: optional ``torch.Generator`` for reproducible flips.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        target = dict(target)
        if torch.rand((), generator=self.generator).item() >= self.p:
            return image, target
        width = image.shape[-1]
        image = image.flip(-1)
        if "boxes" in target:
            x1, y1, x2, y2 = target["boxes"].unbind(dim=1)
            target["boxes"] = torch.stack([width - x2, y1, width - x1, y2], dim=1)
        for key in ("masks", "ignore"):
            if key in target:
                target[key] = target[key].flip(-1)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """``DataLoader`` collate function: images and targets as two lists (sizes may differ)."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
