"""Anchors for stage 1 (the RPN), as pure functions (docs/paper_vs_code.md: stage 1).

An anchor is a reference box placed at every cell of the feature map; the RPN predicts,
for each anchor, an objectness score and the deltas that move it onto an object.

Shape legend (structures.py): A anchors per location, h, w feature-map size,
H, W image size, T anchors in all (T = h * w * A).

The default anchor settings (base size 16, ratios 0.5 / 1 / 2, scales 8 / 16 / 32) are
defined once, in ``config.RPNConfig``.

Coordinates are continuous (structures.py): pixel (i, j) covers [j, j+1) x [i, i+1).
The official code (``MNC/lib/transform/anchors.py``) writes anchors with inclusive
integer corners centred at (7.5, 7.5) in the first cell; in continuous coordinates
those are the same boxes, centred at (8, 8) = ((0 + 0.5) * 16, (0 + 0.5) * 16), which
is why :func:`grid_anchors` uses ``offset=0.5``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mnc_teach.config import RPNConfig

__all__ = [
    "FEATURE_STRIDE",
    "generate_base_anchors",
    "grid_anchors",
    "anchors_inside_image",
]

# conv5_3 of VGG-16: one feature cell per 16 x 16 pixels
# [code: MNC/models/VGG16/mnc_5stage/train.prototxt, feat_stride; docs/paper_vs_code.md: stage 1]
FEATURE_STRIDE = 16


def generate_base_anchors(
    base_size: float = RPNConfig.anchor_base_size,
    ratios: tuple[float, ...] = RPNConfig.anchor_ratios,
    scales: tuple[float, ...] = RPNConfig.anchor_scales,
    *,
    legacy_rounding: bool = False,
) -> Tensor:
    """The A = len(ratios) * len(scales) anchors of one feature-map cell, centred at (0, 0).

    Ordered ratio-major, then scale (for each ratio, each scale), like the official code
    and ``torchvision.models.detection.anchor_utils.AnchorGenerator``.

    * ``legacy_rounding=False`` (the paper's definition): area ``(base_size * scale)**2``
      exactly and ``height / width = ratio``, so ``width = base_size * scale / sqrt(ratio)``.
    * ``legacy_rounding=True`` reproduces the official code: first a base_size x
      base_size box is reshaped to the ratio with whole-pixel sides
      (``w = round(sqrt(base_size**2 / ratio))``, ``h = round(w * ratio)``; half-way
      values round to even, like ``numpy.round``), then both sides are multiplied by
      the scale. With the defaults this gives the sizes listed in docs/paper_vs_code.md: stage 1:
      184x96, 368x192, 736x384 (ratio 0.5), 128², 256², 512², 88x176, 176x352, 352x704.

    Args:
        base_size: side of the reference square, in pixels.
        ratios: aspect ratios, height / width.
        scales: multipliers of ``base_size``.
        legacy_rounding: round the sides as the official code does.

    Returns:
        base_anchors (Tensor[A, 4], float32, xyxy pixels): ``(-w/2, -h/2, w/2, h/2)``.
    """
    sizes = []  # (width, height) of each anchor, ratio-major
    for ratio in ratios:
        for scale in scales:
            if legacy_rounding:
                width = round(math.sqrt(base_size * base_size / ratio))
                height = round(width * ratio)
                sizes.append((width * scale, height * scale))
            else:
                side = base_size * scale
                sizes.append((side / math.sqrt(ratio), side * math.sqrt(ratio)))
    widths, heights = torch.tensor(sizes, dtype=torch.float64).unbind(dim=1)  # (A,), (A,)
    base_anchors = torch.stack([-widths, -heights, widths, heights], dim=1) / 2  # (A, 4)
    return base_anchors.to(torch.float32)


def grid_anchors(
    base_anchors: Tensor,
    feature_size: tuple[int, int],
    stride: int = FEATURE_STRIDE,
    *,
    offset: float = 0.5,
) -> Tensor:
    """Place the base anchors at the centre of every feature-map cell.

    The centre of cell (row i, column j) is ``((j + offset) * stride, (i + offset) * stride)``
    in image pixels. ``offset=0.5`` puts it at the centre of the cell's stride x stride
    pixel block, which is where the official code's anchors are (see the module
    docstring); ``offset=0`` gives torchvision's ``AnchorGenerator`` grid.

    The output is ordered (h, w, A): anchor ``a`` of cell ``(i, j)`` is row
    ``(i * w + j) * A + a``. That is the order of an RPN head output permuted as
    ``(N, A*4, h, w) -> (N, h, w, A*4) -> (N, h*w*A, 4)``, so deltas and anchors line up.

    Args:
        base_anchors (Tensor[A, 4], float, xyxy pixels): from :func:`generate_base_anchors`.
        feature_size: ``(h, w)`` of the feature map.
        stride: image pixels per feature cell.
        offset: position of the anchor centre inside a cell, in cells.

    Returns:
        anchors (Tensor[T, 4], T = h * w * A, xyxy pixels), on the device and dtype of
        base_anchors.
    """
    height, width = feature_size
    dtype, device = base_anchors.dtype, base_anchors.device
    centres_x = (torch.arange(width, dtype=dtype, device=device) + offset) * stride  # (w,)
    centres_y = (torch.arange(height, dtype=dtype, device=device) + offset) * stride  # (h,)
    grid_y, grid_x = torch.meshgrid(centres_y, centres_x, indexing="ij")  # each (h, w)
    shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1)  # (h, w, 4)
    # (h, w, 1, 4) + (1, 1, A, 4) -> (h, w, A, 4): every base anchor moved to every centre
    anchors = shifts[:, :, None, :] + base_anchors[None, None, :, :]
    return anchors.reshape(-1, 4)  # (h, w, A, 4) -> (T, 4)


def anchors_inside_image(
    anchors: Tensor,
    image_size: tuple[int, int],
    allowed_border: float = 0.0,
) -> Tensor:
    """Which anchors lie fully inside the image (up to ``allowed_border`` pixels outside).

    Stage 1 ignores the other anchors during training (``allowed_border = 0``,
    docs/paper_vs_code.md: stage 1, ``MNC/lib/pylayer/anchor_target_layer.py``). The official
    test on inclusive corners, ``x2 < W + border``, reads ``x2 <= W + border`` in continuous
    coordinates, because the continuous right edge is the inclusive one plus 1.

    Args:
        anchors (Tensor[T, 4], float, xyxy pixels)
        image_size: ``(height, width)`` of the image.
        allowed_border: how far (pixels) an anchor may stick out of the image.

    Returns:
        inside (Tensor[T], bool)
    """
    height, width = image_size
    return (
        (anchors[:, 0] >= -allowed_border)
        & (anchors[:, 1] >= -allowed_border)
        & (anchors[:, 2] <= width + allowed_border)
        & (anchors[:, 3] <= height + allowed_border)
    )
