"""Differentiable RoI warping (docs/paper_vs_code.md: stages 2-3): crop a box from a feature map by
bilinear interpolation, then max-pool; the gradient reaches the features *and* the box coordinates.

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
last cell centre (floor(y) >= h-1) takes row h-1 (the same for x). The bilinear weights are
piecewise linear in the sample position, which is linear in (x1, y1, x2, y2), so the output has
an exact derivative with respect to the box (the paper's F_RoI = G(B) · F, docs/paper_vs_code.md:
stages 2-3).

Two implementations of the same function:
    * :func:`roi_warp_reference` (and :func:`roi_warp_pool_reference`), the teaching version:
      every step is a torch op on the box coordinates (a gather from the feature map viewed as
      an (N*h*w, C) table), and autograd differentiates all of them.
    * :func:`roi_warp` and :func:`roi_warp_pool`, the fast version used by the model: G(B) is
      built as a sparse matrix, one row per sample, four non-zero bilinear weights per row, and
      one ``torch.autograd.Function`` does the whole layer with three sparse products:
      forward ``G @ F`` (then the max over each pool x pool window), feature gradient
      ``G^T @ dL/dF_RoI``, and box gradient from the same four neighbour values the forward
      weighted: d(sample)/d(x) is the difference of the right and left neighbours (weighted by
      the y weights), and each neighbour's share is one dot product over the channels
      (``torch.sparse.sampled_addmm``). With pool 2 only the maximum of each 2 x 2 window gets a
      gradient, so the gradient to propagate is zero elsewhere. The tests check that both
      implementations agree (values, feature and box gradients) and run ``gradcheck`` on both.

Relation to torchvision.ops:
    * ``roi_warp(f, rois, output_size=S, spatial_scale=s) == roi_align(f, rois, S, s,
      sampling_ratio=1, aligned=True)`` (tests/test_roi_warp.py checks it to float32
      rounding, ~1e-5, and to 1e-12 in float64, feature gradients included). torchvision's
      kernel gives no gradient to ``rois``; ours does.
    * ``roi_align(..., sampling_ratio=2)`` *averages* 2 x 2 samples per output bin; MNC's layer
      warps to a 2x finer grid and *max*-pools each 2 x 2 block (:func:`roi_warp_pool`, pool=2).
    * ``roi_pool`` (Fast R-CNN's RoIPool) rounds the box to feature cells and max-pools over
      whole cells: no interpolation, and no gradient with respect to the box at all.

Relation to the Caffe layer (caffe-mnc ``roi_warping_layer.cu``, docs/paper_vs_code.md: stages 2-3):
Caffe rounds the corners to feature cells (start = round(x1/16)), samples at start + pw * bin with
no -0.5 centre shift, and its coordinate gradient is the derivative of the *unrounded* map evaluated
at the rounded positions, an approximation. Here nothing is rounded, so the box gradient is the
exact derivative of the forward (checked with ``torch.autograd.gradcheck``).

The default output size (14) and pooling (2) are defined once, in ``config.RoIConfig``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mnc_teach.config import RoIConfig

__all__ = [
    "VGG16_SPATIAL_SCALE",
    "ALIGNED_OFFSET",
    "boxes_for_warp",
    "sample_positions",
    "roi_warp",
    "roi_warp_pool",
    "roi_warp_reference",
    "roi_warp_pool_reference",
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


def roi_warp_reference(
    features: Tensor,
    rois: Tensor,
    *,
    output_size: int | tuple[int, int],
    spatial_scale: float,
) -> Tensor:
    """Warp each RoI to an S_h x S_w grid with one bilinear sample per cell (MNC's RoI
    warping): the readable version, differentiated by autograd (the fast one is
    :func:`roi_warp`).

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



def _check_pool(pool: int) -> None:
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(
            "roi_warp.py: pool must be an int >= 1 (1 = no max pooling, 2 = MNC's code), "
            f"got {pool!r}"
        )


def boxes_for_warp(rois: Tensor, *, detach_boxes: bool) -> Tensor:
    """The RoIs the warp reads: the same values; with ``detach_boxes`` cut from the graph, so
    that no gradient reaches the box coordinates (torchvision, detectron2), else kept (MNC)."""
    return rois.detach() if detach_boxes else rois


def roi_warp_pool_reference(
    features: Tensor,
    rois: Tensor,
    *,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    pool: int = RoIConfig.warp_pool,
    detach_boxes: bool = False,
    warp: Callable[..., Tensor] = roi_warp_reference,
) -> Tensor:
    """:func:`roi_warp_reference` to (output_size * pool), then ``pool`` x ``pool``
    stride-``pool`` max pooling: the readable version of :func:`roi_warp_pool` (same
    arguments, same result). ``warp``: another function with :func:`roi_warp`'s signature
    to warp with (the course plugs a learner's in)."""
    _check_pool(pool)
    out_h, out_w = _pair(output_size, "output_size")
    rois = boxes_for_warp(rois, detach_boxes=detach_boxes)
    warped = warp(
        features, rois, output_size=(out_h * pool, out_w * pool), spatial_scale=spatial_scale
    )  # (R, C, S_h, S_w) with S_h = P_h * pool
    if pool == 1:
        return warped
    return F.max_pool2d(warped, kernel_size=pool, stride=pool)  # (R, C, P_h, P_w)


# ---- the fast version: the sampling matrix G(B) as a sparse matrix ----

# Neighbour k = 0..3 of a sample, as an offset in the padded table (_padded_table, width w + 1):
# (low row, low column), (low row, high column), (high row, low column), (high row, high column).
NEIGHBOURS = 4


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32 (the sparse
    products have no half-precision CPU kernels, and the sums over channels want float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _axis_samples(pos: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_neighbours` for the padded table: the high neighbour is always ``low + 1``.

    At the last cell (and past it) ``low + 1`` is the zero padding cell ``size`` with weight
    ``frac = 0``, so the value is the last cell's, exactly as with torchvision's rule; the four
    neighbours of a sample are then always distinct cells (what a sparse matrix row needs).

    Args:
        pos (Tensor[R, S], float): sample positions in feature coordinates.
        size: h (or w), the feature-map size along this axis.

    Returns:
        low (Tensor[R, S], int64): the low neighbour, in 0..size-1.
        frac (Tensor[R, S], float): weight of ``low + 1`` (``1 - frac`` is the weight of ``low``).
        slope (Tensor[R, S], float): d frac / d pos: 1, or 0 where the position was clamped (in
            (-1, 0) or past the last cell centre).
        inside (Tensor[R, S], bool): False where the sample is further than one cell outside.
    """
    inside = (pos >= -1.0) & (pos <= size)
    clamped = pos.clamp(min=0.0)
    low = clamped.floor().long().clamp(0, size - 1)  # clamp also keeps NaN/inf boxes in range
    at_edge = low >= size - 1
    frac = torch.where(at_edge, torch.zeros_like(clamped), clamped - low.to(pos.dtype))
    slope = ((pos >= 0) & ~at_edge).to(pos.dtype)
    return low, frac, slope, inside


def _by_offset(values: Tensor, pool: int) -> Tensor:
    """(R, S * pool) -> (R, pool, S): the fine grid's cells grouped by their offset inside each
    pool x pool window (fine cell pool * i + a goes to [r, a, i])."""
    return values.unflatten(1, (-1, pool)).transpose(1, 2)


class _Sampling(NamedTuple):
    """G(B) for every sample of the fine grid, and what its derivative needs.

    The samples are ordered (r, a, b, i, j): fine row pool * i + a, fine column pool * j + b of
    RoI r. The samples of one RoI are consecutive rows of G(B), and the pool * pool samples of
    window (i, j) sit in pool * pool equal slabs of them.
    """

    columns: Tensor  # (R*pool*pool*S_h*S_w, 4) int64: the 4 neighbours' rows in the table
    weights: Tensor  # (R*pool*pool*S_h*S_w, 4): bilinear weights, 0 for samples outside
    y_frac: Tensor  # (R, pool, S_h): weight of the high row
    y_slope: Tensor  # (R, pool, S_h): d y_frac / d y
    x_frac: Tensor  # (R, pool, S_w)
    x_slope: Tensor  # (R, pool, S_w)
    inside: Tensor  # (R, pool, pool, S_h, S_w) float: 1 where the sample reads the map


def _sampling(
    rois: Tensor,
    *,
    feature_size: tuple[int, int],
    grid: tuple[int, int],
    pool: int,
    spatial_scale: float,
) -> _Sampling:
    """The neighbours and bilinear weights of every sample of the (grid * pool) warp of every
    RoI (rois: Tensor[R, 5], detached; positions in its dtype)."""
    height, width = feature_size
    out_h, out_w = grid
    ys = sample_positions(
        rois[:, 2], rois[:, 4], num_cells=out_h * pool, spatial_scale=spatial_scale
    )  # (R, pool*S_h)
    xs = sample_positions(
        rois[:, 1], rois[:, 3], num_cells=out_w * pool, spatial_scale=spatial_scale
    )  # (R, pool*S_w)
    # each (R, pool, S_h) and (R, pool, S_w)
    y_low, y_frac, y_slope, y_inside = (_by_offset(t, pool) for t in _axis_samples(ys, height))
    x_low, x_frac, x_slope, x_inside = (_by_offset(t, pool) for t in _axis_samples(xs, width))

    padded_width = width + 1
    image = rois[:, 0].long()  # (R,)
    row_start = (image[:, None, None] * (height + 1) + y_low) * padded_width  # (R, pool, S_h)
    # table row of neighbour 0: (R, pool_a, pool_b, S_h, S_w)
    first = row_start[:, :, None, :, None] + x_low[:, None, :, None, :]
    offsets = torch.tensor([0, 1, padded_width, padded_width + 1], device=rois.device)
    columns = first[..., None] + offsets  # (R, pool, pool, S_h, S_w, 4)

    y_weights = torch.stack([1 - y_frac, 1 - y_frac, y_frac, y_frac], dim=-1)  # (R, pool, S_h, 4)
    x_weights = torch.stack([1 - x_frac, x_frac, 1 - x_frac, x_frac], dim=-1)  # (R, pool, S_w, 4)
    inside = (y_inside[:, :, None, :, None] & x_inside[:, None, :, None, :]).to(y_frac.dtype)
    weights = (
        y_weights[:, :, None, :, None] * x_weights[:, None, :, None, :] * inside[..., None]
    )  # (R, pool, pool, S_h, S_w, 4)
    return _Sampling(
        columns=columns.reshape(-1, NEIGHBOURS),
        weights=weights.reshape(-1, NEIGHBOURS),
        y_frac=y_frac, y_slope=y_slope, x_frac=x_frac, x_slope=x_slope, inside=inside,
    )


def _sparse_csr(columns: Tensor, values: Tensor, num_columns: int) -> Tensor:
    """Tensor[rows, num_columns] in CSR layout with the 4 entries (columns, values) of each
    row (columns, values: Tensor[rows, 4])."""
    num_rows = columns.shape[0]
    row_starts = torch.arange(
        0, NEIGHBOURS * num_rows + 1, NEIGHBOURS, device=columns.device
    )  # (rows + 1,)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used as documented
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            row_starts, columns.reshape(-1), values.reshape(-1), size=(num_rows, num_columns),
            check_invariants=False,  # by construction: sorted, distinct, in range
        )


def _transposed_csr(columns: Tensor, values: Tensor, num_columns: int) -> Tensor:
    """The transpose of :func:`_sparse_csr`'s matrix, Tensor[num_columns, rows], in CSR layout:
    the entries sorted by table row (stable, so by sample within a row)."""
    flat_columns = columns.reshape(-1)  # (rows * 4,)
    order = flat_columns.argsort(stable=True)  # entry order of the transpose
    row_starts = flat_columns.new_zeros(num_columns + 1)  # (num_columns + 1,)
    torch.cumsum(torch.bincount(flat_columns, minlength=num_columns), dim=0, out=row_starts[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            row_starts, order // NEIGHBOURS, values.reshape(-1)[order],
            size=(num_columns, columns.shape[0]), check_invariants=False,
        )


def _padded_table(features: Tensor, dtype: torch.dtype) -> Tensor:
    """(N, C, h, w) -> (N*(h+1)*(w+1), C): the feature map as a table of C-channel rows, with
    a zero row below and a zero column right of each image (the high neighbour at the border)."""
    num_images, channels, height, width = features.shape
    table = features.new_zeros((num_images, height + 1, width + 1, channels), dtype=dtype)
    table[:, :height, :width] = features.permute(0, 2, 3, 1)  # (N, C, h, w) -> (N, h, w, C)
    return table.view(-1, channels)


def _window_max(samples: Tensor) -> tuple[Tensor, Tensor]:
    """The maximum over dim 1 of samples (Tensor[B, K, X]) and the index of its first
    occurrence, the one ``max_pool2d`` passes the gradient to (Tensor[B, X] each, the index in
    uint8 for K <= 256). Same as ``samples.max(dim=1)``, in a few vectorised passes.
    """
    window_max = samples.amax(dim=1)  # (B, X)
    is_max = samples == window_max[:, None]  # (B, K, X)
    not_found = ~is_max[:, 0]  # (B, X): no maximum among the samples 0..k yet
    first = not_found.to(torch.uint8 if samples.shape[1] <= 256 else torch.int64)
    for k in range(1, samples.shape[1] - 1):
        not_found &= ~is_max[:, k]
        first += not_found  # counts the samples before the first maximum
    return window_max, first


# The RoIs go through in blocks whose fine-grid samples (pool² S_h S_w C values) take about this
# many bytes. On the CPU the temporaries then stay in cache and are reused instead of being
# allocated (and page-faulted) at full size; on a GPU the blocks only bound the memory.
CPU_BLOCK_BYTES = 8 * 2**20
DEVICE_BLOCK_BYTES = 512 * 2**20


def _roi_blocks(num_rois: int, *, bytes_per_roi: int, device: torch.device) -> list[slice]:
    """Consecutive slices of the R RoIs, one per block."""
    budget = CPU_BLOCK_BYTES if device.type == "cpu" else DEVICE_BLOCK_BYTES
    per_block = max(1, budget // bytes_per_roi)
    starts = range(0, num_rois, per_block)
    return [slice(start, min(start + per_block, num_rois)) for start in starts]


class _SparseRoIWarp(torch.autograd.Function):
    """roi_warp_pool as one autograd node: forward G(B) @ F and max pooling; backward the
    feature gradient G(B)^T @ dL/d(samples) and the exact box gradient (no autograd graph
    inside)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        features: Tensor,
        rois: Tensor,
        grid: tuple[int, int],
        spatial_scale: float,
        pool: int,
    ) -> Tensor:
        num_rois, channels = rois.shape[0], features.shape[1]
        out_h, out_w = grid
        ctx.grid, ctx.spatial_scale, ctx.pool = grid, spatial_scale, pool
        ctx.feature_shape, ctx.feature_dtype = features.shape, features.dtype
        if num_rois == 0 or channels == 0:
            ctx.save_for_backward(None, rois, None, None)
            return features.new_zeros((num_rois, channels, out_h, out_w))
        dtype = _compute_dtype(features.dtype)
        windows = pool * pool
        cells = out_h * out_w
        with torch.autocast(features.device.type, enabled=False):
            sampling = _sampling(
                rois.detach().to(torch.promote_types(rois.dtype, torch.float32)),
                feature_size=features.shape[2:], grid=grid, pool=pool,
                spatial_scale=spatial_scale,
            )
            sampling = sampling._replace(weights=sampling.weights.to(dtype))
            table = _padded_table(features, dtype)  # (N*(h+1)*(w+1), C)
            out = features.new_empty((num_rois, channels, out_h, out_w))
            # the index of each window's maximum (pool 1: none)
            window_argmax = None if pool == 1 else torch.empty(
                (num_rois, cells * channels),
                dtype=torch.uint8 if windows <= 256 else torch.int64,
                device=features.device,
            )
            bytes_per_roi = windows * cells * channels * table.element_size()
            for block in _roi_blocks(num_rois, bytes_per_roi=bytes_per_roi, device=table.device):
                rows = slice(block.start * windows * cells, block.stop * windows * cells)
                matrix = _sparse_csr(sampling.columns[rows], sampling.weights[rows], len(table))
                samples = matrix @ table  # (R_block*pool²*S_h*S_w, C)
                num_block = block.stop - block.start
                if pool == 1:
                    warped = samples
                else:  # (R_block*pool²*S_h*S_w, C) -> (R_block, pool², S_h*S_w*C)
                    warped, window_argmax[block] = _window_max(samples.view(num_block, windows, -1))
                # (R_block*S_h*S_w, C) -> (R_block, S_h, S_w, C) -> (R_block, C, S_h, S_w)
                out[block] = warped.view(num_block, out_h, out_w, channels).permute(0, 3, 1, 2)
        ctx.save_for_backward(table, rois, window_argmax, *sampling)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        table, rois, window_argmax, *saved_sampling = ctx.saved_tensors
        need_features, need_rois = ctx.needs_input_grad[:2]
        grad_features = grad_rois = None
        if table is None:  # no RoIs or no channels
            if need_features:
                grad_features = grad_out.new_zeros(ctx.feature_shape, dtype=ctx.feature_dtype)
            if need_rois:
                grad_rois = torch.zeros_like(rois)
            return grad_features, grad_rois, None, None, None
        pool, (out_h, out_w) = ctx.pool, ctx.grid
        num_images, channels, height, width = ctx.feature_shape
        num_rois, windows, cells = rois.shape[0], pool * pool, out_h * out_w
        sampling = _Sampling(*saved_sampling)  # the weights in the dtype of the table
        weights = sampling.weights
        with torch.autocast(grad_out.device.type, enabled=False):
            grad_table = torch.zeros_like(table) if need_features else None
            # q_k = <dL/d(sample), table[neighbour k]> for every sample (see _box_gradient)
            dots = weights.new_empty(weights.shape) if need_rois else None
            bytes_per_roi = windows * cells * channels * table.element_size()
            for block in _roi_blocks(num_rois, bytes_per_roi=bytes_per_roi, device=table.device):
                num_block = block.stop - block.start
                # dL/d(warped): (R_block, C, S_h, S_w) -> (R_block, 1, S_h*S_w*C)
                grad_warped = (
                    grad_out[block].permute(0, 2, 3, 1).to(table.dtype).reshape(num_block, 1, -1)
                )
                if pool == 1:
                    grad_samples = grad_warped
                else:  # only the maximum of each window receives the gradient
                    grad_samples = grad_warped.new_zeros((num_block, windows, cells * channels))
                    grad_samples.scatter_(1, window_argmax[block].long()[:, None], grad_warped)
                # (R_block*pool²*S_h*S_w, C); contiguous also when the gradient was expanded
                grad_samples = grad_samples.contiguous().view(-1, channels)
                rows = slice(block.start * windows * cells, block.stop * windows * cells)
                if need_features:  # G(B)^T @ dL/d(samples): (N*(h+1)*(w+1), C)
                    transposed = _transposed_csr(sampling.columns[rows], weights[rows], len(table))
                    grad_table.addmm_(transposed, grad_samples)
                if need_rois:  # the same entries, valued by a dot product each
                    pattern = _sparse_csr(
                        sampling.columns[rows], torch.zeros_like(weights[rows]), len(table)
                    )
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
                        sampled = torch.sparse.sampled_addmm(
                            pattern, grad_samples, table.t(), beta=0.0
                        )
                    dots[rows] = sampled.values().view(-1, NEIGHBOURS)
            if need_features:
                grad_features = torch.empty(
                    ctx.feature_shape, dtype=ctx.feature_dtype, device=grad_out.device
                )
                # (N, h+1, w+1, C) without the padding -> (N, C, h, w)
                padded = grad_table.view(num_images, height + 1, width + 1, channels)
                grad_features.copy_(padded[:, :height, :width].permute(0, 3, 1, 2))
            if need_rois:
                grad_rois = _box_gradient(
                    sampling, dots=dots, spatial_scale=ctx.spatial_scale
                ).to(rois.dtype)
        return grad_features, grad_rois, None, None, None


def _position_gradient(grad_positions: Tensor, spatial_scale: float) -> tuple[Tensor, Tensor]:
    """dL/d(start), dL/d(end) (each Tensor[R]) from dL/d(sample positions) (Tensor[R, S]):
    the chain rule through :func:`sample_positions`."""
    num_cells = grad_positions.shape[1]
    cells = torch.arange(num_cells, device=grad_positions.device, dtype=grad_positions.dtype)
    centres = (cells + 0.5) / num_cells  # (S,): d position / d end, over spatial_scale
    grad_end = (grad_positions * centres).sum(dim=1) * spatial_scale  # (R,)
    grad_start = grad_positions.sum(dim=1) * spatial_scale - grad_end  # (R,)
    return grad_start, grad_end


def _box_gradient(sampling: _Sampling, *, dots: Tensor, spatial_scale: float) -> Tensor:
    """dL/d(rois) (Tensor[R, 5], column 0 zero) from the dots q_k = <dL/d(sample),
    table[neighbour k]> (Tensor[R*pool²*S_h*S_w, 4]), one per entry of G(B).

    A sample is sum_k weight_k * table[neighbour_k] with weights (1-fy)(1-fx), (1-fy)fx,
    fy(1-fx), fy fx, so dL/d fx = (1-fy)(q_1 - q_0) + fy(q_3 - q_2) and
    dL/d fy = (1-fx)(q_2 - q_0) + fx(q_3 - q_1); fx moves with x at slope 1 (0 where clamped),
    and x with the box as in :func:`sample_positions`.
    """
    num_rois, pool, out_h = sampling.y_frac.shape
    out_w = sampling.x_frac.shape[2]
    q0, q1, q2, q3 = dots.view(num_rois, pool, pool, out_h, out_w, NEIGHBOURS).unbind(-1)
    fy = sampling.y_frac[:, :, None, :, None]  # (R, pool_a, 1, S_h, 1)
    fx = sampling.x_frac[:, None, :, None, :]  # (R, 1, pool_b, 1, S_w)
    grad_fx = sampling.inside * ((1 - fy) * (q1 - q0) + fy * (q3 - q2))  # (R, pool, pool, S_h, S_w)
    grad_fy = sampling.inside * ((1 - fx) * (q2 - q0) + fx * (q3 - q1))
    # per fine column (R, pool_b, S_w) and fine row (R, pool_a, S_h), then in fine-grid order:
    # (R, pool, S) -> (R, S, pool) -> (R, S*pool)
    grad_xs = (grad_fx.sum(dim=(1, 3)) * sampling.x_slope).transpose(1, 2).reshape(num_rois, -1)
    grad_ys = (grad_fy.sum(dim=(2, 4)) * sampling.y_slope).transpose(1, 2).reshape(num_rois, -1)
    grad_x1, grad_x2 = _position_gradient(grad_xs, spatial_scale)
    grad_y1, grad_y2 = _position_gradient(grad_ys, spatial_scale)
    zeros = torch.zeros_like(grad_x1)  # the batch index gets no gradient
    return torch.stack([zeros, grad_x1, grad_y1, grad_x2, grad_y2], dim=1)  # (R, 5)


def roi_warp(
    features: Tensor,
    rois: Tensor,
    *,
    output_size: int | tuple[int, int],
    spatial_scale: float,
) -> Tensor:
    """Warp each RoI to an S_h x S_w grid with one bilinear sample per cell (MNC's RoI
    warping), differentiable with respect to the features and the box coordinates.

    Equal to ``torchvision.ops.roi_align(features, rois, output_size, spatial_scale,
    sampling_ratio=1, aligned=True)`` and to :func:`roi_warp_reference` (the readable version;
    this one computes the same function and its exact gradients with sparse products).

    Args:
        features (Tensor[N, C, h, w], float): feature maps of the batch.
        rois (Tensor[R, 5], float): (batch_index, x1, y1, x2, y2) in image pixels, continuous
            coordinates. Gradients flow to columns 1-4 when ``rois.requires_grad``.
        output_size: S (square) or (S_h, S_w).
        spatial_scale: feature cells per image pixel (1/16 for VGG-16 conv5_3).

    Returns:
        Tensor[R, C, S_h, S_w] in the dtype of ``features``; (0, C, S_h, S_w) when R == 0.
    """
    return _warp_and_pool(features, rois, output_size, spatial_scale=spatial_scale, pool=1)


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
    stride-``pool`` max pooling (equal to :func:`roi_warp_pool_reference`, gradients included).

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
        Tensor[R, C, P, P] (or the pair's size), in the dtype of ``features``.
    """
    rois = boxes_for_warp(rois, detach_boxes=detach_boxes)
    return _warp_and_pool(features, rois, output_size, spatial_scale=spatial_scale, pool=pool)


def _warp_and_pool(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    *,
    spatial_scale: float,
    pool: int,
) -> Tensor:
    """What :func:`roi_warp` and :func:`roi_warp_pool` compute, with checked inputs (each
    calls this, not the other: the course's seam may replace either)."""
    _check_pool(pool)
    grid = _pair(output_size, "output_size")
    _check_inputs(features, rois, spatial_scale)
    return _SparseRoIWarp.apply(features, rois, grid, spatial_scale, pool)


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
