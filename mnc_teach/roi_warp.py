"""Differentiable RoI warping (MNC_SPEC §5): crop a box from a feature map by bilinear
interpolation, then max-pool; the gradient reaches the features *and* the box coordinates.

Shape legend (structures.py): N images, C channels, h, w feature-map size, R RoIs,
S_h, S_w the warp grid (P x P after pooling); s is the spatial scale (1/16 for VGG-16 conv5_3).

What the forward computes. For RoI r = (b, x1, y1, x2, y2) (image pixels, continuous
coordinates) and output cell (i, j) of an S_h x S_w grid, :func:`roi_warp` takes ONE bilinear
sample of image b at the cell centre, in feature-map coordinates:

    x = x1*s + (j + 0.5) * (x2 - x1)*s / S_w - 0.5
    y = y1*s + (i + 0.5) * (y2 - y1)*s / S_h - 0.5

The -0.5 maps continuous coordinates (pixel j covers [j, j+1)) to feature-cell centres (cell j
sits at j). Border rule, exactly torchvision's ``bilinear_interpolate``: a sample with
y < -1 or y > h or x < -1 or x > w is 0; otherwise y <= 0 is moved to 0 and a sample past the
last cell centre (floor(y) >= h-1) takes row h-1 (the same for x). Every step is a torch op on
the box coordinates, so autograd gives d(output)/d(box): the bilinear weights are piecewise
linear in the sample position, which is linear in (x1, y1, x2, y2) (the paper's
F_RoI = G(B) · F, MNC_SPEC §5.1).

Relation to torchvision.ops:
    * ``roi_warp(f, rois, output_size=S, spatial_scale=s) == roi_align(f, rois, S, s,
      sampling_ratio=1, aligned=True)`` (tests/test_roi_warp.py checks it to float32
      rounding, ~1e-5, and to 1e-12 in float64, feature gradients included). torchvision's
      kernel gives no gradient to ``rois``; ours does.
    * ``roi_align(..., sampling_ratio=2)`` *averages* 2 x 2 samples per output bin; MNC's layer
      warps to a 2x finer grid and *max*-pools each 2 x 2 block (:func:`roi_warp_pool`, pool=2).
    * ``roi_pool`` (Fast R-CNN's RoIPool) rounds the box to feature cells and max-pools over
      whole cells: no interpolation, and no gradient with respect to the box at all.

Relation to the Caffe layer (caffe-mnc ``roi_warping_layer.cu``, MNC_SPEC §5.2): Caffe rounds
the corners to feature cells (start = round(x1/16)), samples at start + pw * bin with no -0.5
centre shift, and its coordinate gradient is the derivative of the *unrounded* map evaluated
at the rounded positions, an approximation. Here nothing is rounded, so the box gradient is
the exact derivative of the forward (checked with ``torch.autograd.gradcheck``).

The default output size (14) and pooling (2) are defined once, in ``config.RoIConfig``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnc_teach.config import RoIConfig

__all__ = [
    "VGG16_SPATIAL_SCALE",
    "ALIGNED_OFFSET",
    "sample_positions",
    "roi_warp",
    "roi_warp_pool",
    "RoIWarpPool",
]

# conv5_3 has stride 16 [code: train.prototxt, spatial_scale 0.0625]
VGG16_SPATIAL_SCALE = 1 / 16
ALIGNED_OFFSET = 0.5  # continuous coordinate -> feature-cell centre (torchvision's aligned=True)


def _pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = tuple(size) if isinstance(size, (tuple, list)) else ()
    positive_ints = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)
    if len(pair) != 2 or not positive_ints:
        raise ValueError(
            f"roi_warp.py: {name} must be a positive int or a pair of positive ints (S_h, S_w), "
            f"got {size!r}"
        )
    return pair  # type: ignore[return-value]


def _check_inputs(features: Tensor, rois: Tensor, spatial_scale: float) -> None:
    """Raise ValueError naming the argument, its shape and the fix when the inputs break the
    contract."""
    if not torch.is_tensor(features) or features.dim() != 4:
        shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise ValueError(
            f"roi_warp.py: features must be a Tensor[N, C, h, w], got {shape}; "
            "for a single image's [C, h, w] map use features[None]"
        )
    if not features.is_floating_point():
        raise ValueError(f"roi_warp.py: features must be a float tensor, got {features.dtype}")
    if not torch.is_tensor(rois) or rois.dim() != 2 or rois.shape[1] != 5:
        shape = tuple(rois.shape) if torch.is_tensor(rois) else type(rois).__name__
        raise ValueError(
            "roi_warp.py: rois must be a Tensor[R, 5] (batch_index, x1, y1, x2, y2), "
            f"got {shape}; for boxes [R, 4] of image 0 use "
            "torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)"
        )
    if not rois.is_floating_point():
        raise ValueError(
            "roi_warp.py: rois must be a float tensor (box coordinates are continuous), "
            f"got {rois.dtype}"
        )
    if rois.device != features.device:
        raise ValueError(
            f"roi_warp.py: rois are on {rois.device} but features on {features.device}; "
            "move one of them"
        )
    if not spatial_scale > 0:
        raise ValueError(
            "roi_warp.py: spatial_scale must be > 0 (feature cells per image pixel, e.g. 1/16), "
            f"got {spatial_scale}"
        )
    if features.shape[2] == 0 or features.shape[3] == 0:
        raise ValueError(
            f"roi_warp.py: the feature map is empty (h, w) = {tuple(features.shape[2:])}"
        )
    if len(rois) > 0:
        batch_column = rois[:, 0].detach()
        bad = (
            (batch_column != batch_column.round())
            | (batch_column < 0)
            | (batch_column >= features.shape[0])
        )
        if bad.any():  # one host sync per call; a readable error instead of an index crash
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"roi_warp.py: rois[{first}, 0] = {batch_column[first].item()} is not an image "
                f"index in 0..{features.shape[0] - 1} (features hold N = {features.shape[0]} "
                "images)"
            )


def sample_positions(start: Tensor, end: Tensor, *, num_cells: int, spatial_scale: float) -> Tensor:
    """Feature-map coordinates of the cell centres along one axis (the grid of
    :func:`roi_warp`).

    Args:
        start, end (Tensor[R], float): x1 and x2 (or y1 and y2) of each RoI, in image pixels.
        num_cells: S_w (or S_h), the output cells along this axis.
        spatial_scale: feature cells per image pixel.

    Returns:
        Tensor[R, num_cells]: ``start*s + (j + 0.5) * (end - start)*s / num_cells - 0.5``,
        differentiable in ``start`` and ``end``.
    """
    cells = torch.arange(num_cells, device=start.device, dtype=start.dtype)  # (S,)
    centres = (cells + 0.5) / num_cells  # (S,)
    roi_start = start * spatial_scale - ALIGNED_OFFSET  # (R,)
    roi_size = (end - start) * spatial_scale  # (R,)
    return roi_start[:, None] + centres[None, :] * roi_size[:, None]  # (R, S)


def _neighbours(pos: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear neighbours and weights along one axis with torchvision's border rule.

    Args:
        pos (Tensor[R, S], float): sample positions in feature coordinates.
        size: h (or w), the feature-map size along this axis.

    Returns:
        low, high (Tensor[R, S], int64): the two neighbouring cells, both in 0..size-1.
        frac (Tensor[R, S], float): weight of ``high`` (``1 - frac`` is the weight of ``low``).
        inside (Tensor[R, S], bool): False where the sample is further than one cell outside.
    """
    inside = (pos >= -1.0) & (pos <= size)  # (R, S): torchvision gives 0 beyond one cell outside
    pos = pos.clamp(min=0.0)  # in (-1, 0]: take cell 0 (no gradient there, as in torchvision)
    low = pos.detach().floor().long().clamp(0, size - 1)  # clamp also keeps NaN/inf boxes in range
    at_edge = low >= size - 1  # past the last cell centre: take the last cell
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)  # (R, S), in [0, 1); carries the gradient to the box
    return low, high, frac, inside


def roi_warp(
    features: Tensor,
    rois: Tensor,
    *,
    output_size: int | tuple[int, int],
    spatial_scale: float,
) -> Tensor:
    """Warp each RoI to an S_h x S_w grid with one bilinear sample per cell (MNC's RoI
    warping).

    Equal to ``torchvision.ops.roi_align(features, rois, output_size, spatial_scale,
    sampling_ratio=1, aligned=True)``, but differentiable with respect to the box coordinates too.

    Args:
        features (Tensor[N, C, h, w], float): feature maps of the batch.
        rois (Tensor[R, 5], float): (batch_index, x1, y1, x2, y2) in image pixels, continuous
            coordinates. Gradients flow to columns 1-4 when ``rois.requires_grad``.
        output_size: S (square) or (S_h, S_w).
        spatial_scale: feature cells per image pixel (1/16 for VGG-16 conv5_3).

    Returns:
        Tensor[R, C, S_h, S_w] in the dtype of ``features``; (0, C, S_h, S_w) when R == 0.
    """
    out_h, out_w = _pair(output_size, "output_size")
    _check_inputs(features, rois, spatial_scale)
    num_images, channels, height, width = features.shape
    num_rois = rois.shape[0]

    # sample rows (R, S_h) and columns (R, S_w), in feature-map coordinates
    ys = sample_positions(rois[:, 2], rois[:, 4], num_cells=out_h, spatial_scale=spatial_scale)
    xs = sample_positions(rois[:, 1], rois[:, 3], num_cells=out_w, spatial_scale=spatial_scale)
    y_low, y_high, ly, inside_y = _neighbours(ys, height)  # each (R, S_h)
    x_low, x_high, lx, inside_x = _neighbours(xs, width)  # each (R, S_w)
    inside = (inside_y[:, :, None] & inside_x[:, None, :]).to(features.dtype)  # (R, S_h, S_w)
    ly, lx = ly.to(features.dtype), lx.to(features.dtype)
    hy, hx = 1 - ly, 1 - lx

    # Flat row of each neighbour in the (N*h*w, C) table: image offset + row * w + column.
    image_offset = rois[:, 0].detach().long() * (height * width)  # (R,)
    row_low = image_offset[:, None] + y_low * width  # (R, S_h)
    row_high = image_offset[:, None] + y_high * width  # (R, S_h)
    rows = [row_low[:, :, None], row_high[:, :, None]]  # 2 x (R, S_h, 1)
    cols = [x_low[:, None, :], x_high[:, None, :]]  # 2 x (R, 1, S_w)
    y_weights = [hy[:, :, None], ly[:, :, None]]  # 2 x (R, S_h, 1)
    x_weights = [hx[:, None, :], lx[:, None, :]]  # 2 x (R, 1, S_w)

    # (N, C, h, w) -> (N, h, w, C) -> (N*h*w, C)
    table = features.permute(0, 2, 3, 1).reshape(num_images * height * width, channels)
    warped = features.new_zeros(())  # broadcasts up to (R*S_h*S_w, C) on the first addition
    for row, y_weight in zip(rows, y_weights, strict=True):
        for col, x_weight in zip(cols, x_weights, strict=True):
            index = (row + col).reshape(-1)  # (R, S_h, S_w) -> (R*S_h*S_w,)
            # (R, S_h, S_w) -> (R*S_h*S_w, 1)
            weight = (y_weight * x_weight * inside).reshape(-1, 1)
            warped = torch.addcmul(warped, weight, table.index_select(0, index))  # (R*S_h*S_w, C)
    # (R*S_h*S_w, C) -> (R, S_h, S_w, C)
    warped = warped.reshape(num_rois, out_h, out_w, channels)
    return warped.permute(0, 3, 1, 2).contiguous()  # (R, S_h, S_w, C) -> (R, C, S_h, S_w)


def roi_warp_pool(
    features: Tensor,
    rois: Tensor,
    *,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    pool: int = RoIConfig.warp_pool,
    detach_boxes: bool = False,
) -> Tensor:
    """MNC's RoI feature: warp to (output_size * pool), then ``pool`` x ``pool``
    stride-``pool`` max pooling.

    Args:
        features (Tensor[N, C, h, w], float): feature maps of the batch.
        rois (Tensor[R, 5], float): (batch_index, x1, y1, x2, y2) in image pixels.
        output_size: P (square) or a pair after pooling; 14 in the paper
            (``RoIConfig.output_size``).
        spatial_scale: feature cells per image pixel.
        pool: 2 as in the official code (warp 28 x 28 -> max pool -> 14 x 14,
            ``RoIConfig.warp_pool``); 1 warps straight to the output size (the released
            test.prototxt's stage 4).
        detach_boxes: True stops the gradient at the box coordinates (``rois.detach()``), as
            torchvision and detectron2 do on purpose; MNC keeps it (False).

    Returns:
        Tensor[R, C, P, P] (or the pair's size).
    """
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(
            "roi_warp.py: pool must be an int >= 1 (1 = no max pooling, 2 = MNC's code), "
            f"got {pool!r}"
        )
    out_h, out_w = _pair(output_size, "output_size")
    if detach_boxes:
        rois = rois.detach()
    warped = roi_warp(
        features, rois, output_size=(out_h * pool, out_w * pool), spatial_scale=spatial_scale
    )  # (R, C, S_h, S_w) with S_h = P_h * pool
    if pool == 1:
        return warped
    return F.max_pool2d(warped, kernel_size=pool, stride=pool)  # (R, C, P_h, P_w)


class RoIWarpPool(nn.Module):
    """:func:`roi_warp_pool` as a module (no parameters; it keeps the settings next to the
    model's layers).

    Args:
        output_size: P or a pair after pooling; 14 (``RoIConfig.output_size``).
        spatial_scale: feature cells per image pixel; 1/16 for VGG-16 conv5_3.
        pool: max-pool window and stride after warping; 2 (``RoIConfig.warp_pool``).
        detach_boxes: stop the gradient at the box coordinates (False = MNC).
    """

    def __init__(
        self,
        *,
        output_size: int | tuple[int, int] = RoIConfig.output_size,
        spatial_scale: float = VGG16_SPATIAL_SCALE,
        pool: int = RoIConfig.warp_pool,
        detach_boxes: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = _pair(output_size, "output_size")
        if not spatial_scale > 0:
            raise ValueError(f"roi_warp.py: spatial_scale must be > 0, got {spatial_scale}")
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(f"roi_warp.py: pool must be an int >= 1, got {pool!r}")
        self.spatial_scale = spatial_scale
        self.pool = pool
        self.detach_boxes = detach_boxes

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        """features (Tensor[N, C, h, w]), rois (Tensor[R, 5]) -> Tensor[R, C, P, P]."""
        return roi_warp_pool(
            features,
            rois,
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            pool=self.pool,
            detach_boxes=self.detach_boxes,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"pool={self.pool}, detach_boxes={self.detach_boxes}"
        )
