"""roi_warp against torchvision.ops.roi_align, hand-computed values, and gradcheck on features
and boxes; the fast (sparse) version against the readable reference, values and both gradients;
the exercise checker and the drawings of notebook 03."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.autograd import gradcheck

import mnc_teach.roi_warp as roi_warp_module
from mnc_teach.config import RoIConfig
from mnc_teach.roi_warp import (
    VGG16_SPATIAL_SCALE,
    RoIWarpPool,
    roi_warp,
    roi_warp_pool,
    roi_warp_pool_reference,
    roi_warp_reference,
    sample_positions,
)


@pytest.fixture(autouse=True)
def one_thread():
    """These tests make many calls on tiny tensors (gradcheck: hundreds); waking a CPU thread
    pool for each (max_pool2d) costs milliseconds on a loaded 2-core machine, so they run
    single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_rois(
    num: int,
    num_images: int,
    image_size: tuple[int, int],
    gen: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RoIs [num, 5] with non-integer corners from 50 % outside the image on each side; some
    fully outside."""
    height, width = image_size
    span = torch.tensor([width, height], dtype=dtype)
    # (num, 2) x1, y1
    top_left = (torch.rand(num, 2, generator=gen, dtype=dtype) * 2.0 - 0.5) * span
    sides = (0.05 + torch.rand(num, 2, generator=gen, dtype=dtype)) * span * 0.6  # (num, 2)
    batch = torch.randint(0, num_images, (num, 1), generator=gen).to(dtype)
    return torch.cat([batch, top_left, top_left + sides], dim=1)  # (num, 5)


def _roi_align(features, rois, size, scale):
    return torchvision.ops.roi_align(features, rois, size, scale, sampling_ratio=1, aligned=True)


# Hand-checkable 4 x 4 map: f[i, j] = 4 i + j + 1 (rows i, columns j), so interior bilinear
# samples of this linear map are exact: f(x, y) = 4 y + x + 1 at feature coordinates (x, y).
GRID_4X4 = (torch.arange(16, dtype=torch.float32) + 1).reshape(1, 1, 4, 4)


def test_hand_checked_4x4_values() -> None:
    # Box (0, 0, 4, 4) at scale 1, 2 x 2 cells of 2 px: centres at pixels 1 and 3, feature
    # coords 0.5 and 2.5. f(0.5, 0.5) = 2 + 0.5 + 1 = 3.5; f(2.5, 0.5) = 2 + 2.5 + 1 = 5.5;
    # f(0.5, 2.5) = 10 + 0.5 + 1 = 11.5; 13.5.
    box = torch.tensor([[0.0, 0, 0, 4, 4]])
    whole = roi_warp(GRID_4X4, box, output_size=2, spatial_scale=1.0)
    assert torch.allclose(whole[0, 0], torch.tensor([[3.5, 5.5], [11.5, 13.5]]))
    # 1 x 1 output = one sample at the box centre, minus 0.5:
    rois = torch.tensor(
        [
            [0.0, 1, 1, 4, 4],  # centre 2.5 -> (2, 2): f = 8 + 2 + 1 = 11
            [0.0, 2, 2, 5, 5],  # centre 3.5 -> (3, 3): last cell exactly, f[3, 3] = 16
            [0.0, 3, 3, 6, 6],  # centre 4.5 -> (4, 4): past the last centre, <= w: f[3, 3] = 16
            [0.0, 4, 4, 7, 7],  # centre 5.5 -> (5, 5) > w = 4: zero
            [0.0, -1, -1, 1, 1],  # centre 0 -> (-0.5, -0.5): in (-1, 0], moved to 0: f[0, 0] = 1
            [0.0, -2, -2, 0, 0],  # centre -1 -> (-1.5, -1.5) < -1: zero
            [0.0, 0, 0.5, 2, 2.5],  # centre (1, 1.5) -> (0.5, 1): f = 4 + 0.5 + 1 = 5.5
        ]
    )
    expected = torch.tensor([11.0, 16.0, 16.0, 0.0, 1.0, 0.0, 5.5])
    centres = roi_warp(GRID_4X4, rois, output_size=1, spatial_scale=1.0)
    assert torch.allclose(centres.flatten(), expected)
    # Spatial scale: the same box in a 4x larger image at scale 1/4 gives the same numbers.
    large = torch.tensor([[0.0, 0, 0, 16, 16]])
    assert torch.allclose(roi_warp(GRID_4X4, large, output_size=2, spatial_scale=0.25), whole)


def test_hand_checked_box_gradient() -> None:
    # Interior samples of f = 4 y + x + 1 at scale 1, box (0, 0, 4, 4), 2 x 2 output, loss = sum.
    # x_j = x1 + (j + 0.5) (x2 - x1) / 2 - 0.5, so dx_j/dx1 = 1 - (j + 0.5)/2 and
    # dx_j/dx2 = (j + 0.5)/2. d loss/d x1 = sum over i, j of df/dx * dx_j/dx1
    # = 2 rows * (0.75 + 0.25) * 1 = 2; the same for x2; in y, df/dy = 4:
    # d loss/d y1 = d loss/d y2 = 2 columns * (0.75 + 0.25) * 4 = 8.
    rois = torch.tensor([[0.0, 0, 0, 4, 4]], requires_grad=True)
    roi_warp(GRID_4X4, rois, output_size=2, spatial_scale=1.0).sum().backward()
    assert torch.allclose(rois.grad, torch.tensor([[0.0, 2.0, 8.0, 2.0, 8.0]]))


def test_sample_positions_formula() -> None:
    start, end = torch.tensor([16.0, 0.0]), torch.tensor([80.0, 8.0])
    positions = sample_positions(start, end, num_cells=4, spatial_scale=1 / 16)
    # RoI 0: x1*s = 1, width 4 cells, 1 cell per bin: centres 1.5, 2.5, 3.5, 4.5, minus 0.5.
    assert torch.allclose(positions[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # RoI 1: 0.5 cell wide: bins of 0.125 cells, centres 0.0625 + 0.125 j, minus 0.5.
    assert torch.allclose(positions[1], torch.tensor([0.0625, 0.1875, 0.3125, 0.4375]) - 0.5)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("output_size, scale", [(7, 1 / 16), ((3, 5), 0.5), (1, 1.0), (14, 1 / 8)])
def test_equals_torchvision_roi_align(dtype, atol, output_size, scale) -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 4, 9, 11, generator=gen, dtype=dtype).requires_grad_(True)
    image_size = (round(9 / scale), round(11 / scale))
    rois = random_rois(300, 3, image_size, gen, dtype)
    fully_outside = (rois[:, 3] < 0) | (rois[:, 1] > image_size[1])
    assert fully_outside.any(), "the random boxes include ones fully outside"

    ours = roi_warp(features, rois, output_size=output_size, spatial_scale=scale)
    reference = _roi_align(features, rois, output_size, scale)
    assert ours.shape == reference.shape and ours.dtype == dtype
    tolerance = atol * max(1.0, reference.abs().max().item())
    assert torch.allclose(ours, reference, rtol=0, atol=tolerance)

    upstream = torch.randn(ours.shape, generator=gen, dtype=dtype)
    (grad_ours,) = torch.autograd.grad(ours, features, upstream)
    (grad_reference,) = torch.autograd.grad(reference, features, upstream)
    assert torch.allclose(grad_ours, grad_reference, rtol=0, atol=10 * atol)


def test_low_precision_features_and_mixed_dtypes() -> None:
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(1, 4, 9, 11, generator=gen)
    rois = random_rois(30, 1, (144, 176), gen)
    settings = {"output_size": 7, "spatial_scale": 1 / 16}
    reference = roi_warp_pool(features, rois, **settings)
    # boxes stay float32: positions keep their precision
    half = roi_warp_pool(features.bfloat16(), rois, **settings)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), reference, atol=0.05, rtol=0.02)
    double_rois = roi_warp_pool(features, rois.double(), **settings)
    assert torch.allclose(double_rois, reference, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pool", [1, 2])
def test_cuda_fast_matches_reference(pool) -> None:
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(2, 16, 12, 16, generator=gen).relu()  # ReLU: ties inside windows
    rois = random_rois(300, 2, (192, 256), gen)
    settings = {"output_size": 7, "spatial_scale": 1 / 16, "pool": pool}
    results = []
    for function in (roi_warp_pool, roi_warp_pool_reference):
        leaf_features = features.cuda().requires_grad_(True)
        leaf_rois = rois.cuda().requires_grad_(True)
        out = function(leaf_features, leaf_rois, **settings)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).cuda()
        grads = torch.autograd.grad(out, (leaf_features, leaf_rois), upstream)
        results.append((out, *grads))
    for fast, reference in zip(*results, strict=True):
        assert torch.allclose(fast, reference, rtol=1e-4, atol=1e-4)
    # autocast (the AMP training path): half-precision features, float32 boxes
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = roi_warp_pool(features.cuda().bfloat16(), rois.cuda(), **settings)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), results[1][0], atol=0.05, rtol=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_roi_align_and_cpu() -> None:
    gen = torch.Generator().manual_seed(6)
    features, rois = torch.randn(2, 8, 12, 16, generator=gen), random_rois(100, 2, (192, 256), gen)
    features_cuda = features.cuda().requires_grad_(True)
    rois_cuda = rois.cuda().requires_grad_(True)
    settings = {"output_size": 7, "spatial_scale": 1 / 16}
    ours = roi_warp(features_cuda, rois_cuda, **settings)
    reference = _roi_align(features_cuda, rois_cuda.detach(), 7, 1 / 16)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(ours.cpu(), roi_warp(features, rois, **settings), atol=1e-5)
    roi_warp_pool(features_cuda, rois_cuda, **settings).sum().backward()
    cpu_rois = rois.clone().requires_grad_(True)
    roi_warp_pool(features, cpu_rois, **settings).sum().backward()
    assert torch.allclose(rois_cuda.grad.cpu(), cpu_rois.grad, rtol=1e-3, atol=1e-3)


def test_pool_2_is_max_over_2x2_warped_cells_and_pool_1_is_the_warp() -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 3, 8, 10, generator=gen)
    rois = random_rois(20, 2, (128, 160), gen)
    size = RoIConfig.output_size  # 14, the paper's
    fine = _roi_align(features, rois, 2 * size, VGG16_SPATIAL_SCALE)  # (R, C, 28, 28)
    expected = fine.reshape(20, 3, size, 2, size, 2).amax(dim=(3, 5))
    ours = roi_warp_pool(features, rois, output_size=size, spatial_scale=VGG16_SPATIAL_SCALE)
    assert torch.allclose(ours, expected, atol=1e-5)
    assert RoIConfig.warp_pool == 2  # the default above is the official code's 28 -> 14
    coarse = _roi_align(features, rois, (3, 4), 1 / 16)
    settings = {"output_size": (3, 4), "spatial_scale": 1 / 16}
    assert torch.allclose(roi_warp_pool(features, rois, **settings, pool=1), coarse, atol=1e-5)
    # pool = 3 also works: a 9 x 12 warp, 3 x 3 max pooling.
    assert roi_warp_pool(features, rois, **settings, pool=3).shape == (20, 3, 3, 4)


def _gradcheck_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 features [2, 2, 5, 6] and 6 RoIs at scale 1/4 (image 20 x 24), some partly
    outside."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64)
    coords = torch.tensor(
        [
            [1.3, 2.7, 13.1, 17.9],  # inside
            [-3.3, -2.1, 9.7, 6.3],  # over the top-left border
            [14.2, 9.6, 27.7, 23.3],  # over the bottom-right border
            [5.6, 4.4, 7.9, 6.2],  # smaller than a feature cell
            [-6.1, 8.3, 30.2, 11.9],  # wider than the map
            [2.2, 0.6, 21.1, 19.4],  # most of the map
        ],
        dtype=torch.float64,
    )
    # away from kinks
    coords = coords + 0.1 * torch.rand(coords.shape, generator=gen, dtype=torch.float64)
    batch = torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0], [0.0]], dtype=torch.float64)
    return features, coords, batch


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("pool", [None, 1, 2])
def test_gradcheck_features_and_box_coordinates(pool, fast) -> None:
    features, coords, batch = _gradcheck_inputs(seed=pool or 0)
    features.requires_grad_(True)
    coords.requires_grad_(True)
    warp_fn = roi_warp if fast else roi_warp_reference
    warp_pool_fn = roi_warp_pool if fast else roi_warp_pool_reference

    def warp(features, coords):  # the batch-index column stays constant
        rois = torch.cat([batch, coords], dim=1)  # (R, 5)
        if pool is None:
            return warp_fn(features, rois, output_size=(3, 4), spatial_scale=0.25)
        return warp_pool_fn(features, rois, output_size=(3, 4), spatial_scale=0.25, pool=pool)

    assert warp(features, coords).abs().sum() > 0
    assert gradcheck(warp, (features, coords), eps=1e-6, atol=1e-5)
    (box_grad,) = torch.autograd.grad(warp(features, coords).sum(), coords)
    assert (box_grad.abs().sum(dim=1) > 0).all(), "every box gets a gradient"


def _mixed_rois(gen: torch.Generator, dtype: torch.dtype, num_images: int) -> torch.Tensor:
    """RoIs [R, 5] on a 9 x 11 map at scale 1/16 (image 144 x 176): random boxes from 50 %
    outside on each side (some fully outside), boxes far larger than the image, boxes smaller than
    a hundredth of a cell, zero-sized and inverted (x2 < x1) boxes."""
    image_size = (144, 176)
    random = random_rois(120, num_images, image_size, gen, dtype)
    image_wh = torch.tensor([176.0, 144.0], dtype=dtype)
    centres = torch.rand(30, 2, generator=gen, dtype=dtype) * image_wh  # (30, 2)
    huge = torch.cat([centres - 600.0, centres + 900.0], dim=1)  # (30, 4): 10x the image
    tiny = torch.cat([centres, centres + 0.1], dim=1)  # (30, 4): 1/160 of a cell
    flat = torch.cat([centres, centres], dim=1)  # (30, 4): zero size
    inverted = torch.cat([centres + 40.0, centres], dim=1)  # (30, 4)
    boxes = torch.cat([huge, tiny, flat, inverted])  # (120, 4)
    batch = torch.randint(0, num_images, (len(boxes), 1), generator=gen).to(dtype)
    return torch.cat([random, torch.cat([batch, boxes], dim=1)])  # (240, 5)


def _output_and_grads(function, features, rois, upstream_gen, **settings):
    """(output, d loss / d features, d loss / d rois) for a random linear loss."""
    features = features.detach().requires_grad_(True)
    rois = rois.detach().requires_grad_(True)
    out = function(features, rois, **settings)
    upstream = torch.randn(out.shape, generator=upstream_gen, dtype=out.dtype)
    return (out, *torch.autograd.grad(out, (features, rois), upstream))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("pool", [1, 2, 3])
@pytest.mark.parametrize("relu", [False, True], ids=["signed", "relu"])
def test_fast_equals_reference_values_and_both_gradients(dtype, tolerance, pool, relu) -> None:
    """roi_warp_pool (sparse G(B), one autograd node) == roi_warp_pool_reference (autograd
    through the gather): outputs, feature gradients and box gradients. ReLU features have
    exact ties inside the max-pooling windows (zeros), where the first maximum must get the
    gradient, as max_pool2d gives it."""
    gen = torch.Generator().manual_seed(10 * pool + relu)
    features = torch.randn(3, 5, 9, 11, generator=gen, dtype=dtype)
    if relu:
        features = features.relu()
    rois = _mixed_rois(gen, dtype, num_images=3)
    settings = {"output_size": (3, 4), "spatial_scale": 1 / 16, "pool": pool}
    fast, reference = (
        _output_and_grads(function, features, rois, torch.Generator().manual_seed(0), **settings)
        for function in (roi_warp_pool, roi_warp_pool_reference)
    )  # each (output, feature grad, box grad)
    names = ("output", "feature grad", "box grad")
    for name, ours, expected in zip(names, fast, reference, strict=True):
        assert ours.dtype == expected.dtype, name
        scale = max(1.0, expected.abs().max().item())
        assert torch.allclose(ours, expected, rtol=0, atol=tolerance * scale), (
            f"{name}: largest difference {(ours - expected).abs().max().item():.2e}"
        )
    assert fast[2][:, 1:].abs().sum(dim=1).gt(0).sum() > 100, "most boxes get a box gradient"
    assert torch.all(fast[2][:, 0] == 0), "the batch index column gets no gradient"


def test_fast_in_blocks_equals_one_block(monkeypatch) -> None:
    """On the CPU the RoIs go through in blocks (CPU_BLOCK_BYTES); one RoI per block gives the
    same values and gradients as all RoIs in one block."""
    gen = torch.Generator().manual_seed(11)
    features = torch.randn(2, 4, 9, 11, generator=gen).relu()
    rois = _mixed_rois(gen, torch.float32, num_images=2)[::7]  # 35 RoIs
    settings = {"output_size": 3, "spatial_scale": 1 / 16, "pool": 2}
    results = {}
    for block_bytes in (2**40, 1):
        monkeypatch.setattr(roi_warp_module, "CPU_BLOCK_BYTES", block_bytes)
        results[block_bytes] = _output_and_grads(
            roi_warp_pool, features, rois, torch.Generator().manual_seed(0), **settings
        )
    for in_blocks, whole in zip(results[1], results[2**40], strict=True):
        assert torch.allclose(in_blocks, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool", [1, 2])
def test_fast_gradient_to_one_input_only(pool) -> None:
    """Frozen features (only the boxes need a gradient) and fixed boxes (only the features):
    each gradient alone equals the one computed together."""
    gen = torch.Generator().manual_seed(12)
    features = torch.randn(2, 3, 8, 10, generator=gen)
    rois = random_rois(20, 2, (128, 160), gen)
    settings = {"output_size": 4, "spatial_scale": 1 / 16, "pool": pool}
    _, both_features, both_rois = _output_and_grads(
        roi_warp_pool, features, rois, torch.Generator().manual_seed(0), **settings
    )
    upstream_gen = torch.Generator().manual_seed(0)
    leaf_rois = rois.clone().requires_grad_(True)
    out = roi_warp_pool(features, leaf_rois, **settings)
    upstream = torch.randn(out.shape, generator=upstream_gen)
    (only_rois,) = torch.autograd.grad(out, leaf_rois, upstream)
    leaf_features = features.clone().requires_grad_(True)
    out = roi_warp_pool(leaf_features, rois, **settings)
    (only_features,) = torch.autograd.grad(out, leaf_features, upstream)
    assert torch.allclose(only_rois, both_rois) and torch.allclose(only_features, both_features)


def test_fast_is_unchanged_by_cpu_autocast() -> None:
    """Under autocast the sparse products stay in float32 (autocast would run mm in bfloat16)."""
    gen = torch.Generator().manual_seed(13)
    features, rois = torch.randn(1, 4, 9, 11, generator=gen), random_rois(30, 1, (144, 176), gen)
    settings = {"output_size": 7, "spatial_scale": 1 / 16}
    expected = roi_warp_pool(features, rois, **settings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_warp_pool(features, rois, **settings)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)


def test_window_max_is_max_with_the_first_index() -> None:
    gen = torch.Generator().manual_seed(14)
    samples = torch.randint(0, 3, (5, 4, 200), generator=gen).float()  # many ties
    window_max, first = roi_warp_module._window_max(samples)
    expected = samples.max(dim=1)
    assert torch.equal(window_max, expected.values)
    assert first.dtype == torch.uint8
    assert torch.equal(first.long(), expected.indices)
    # and max_pool2d passes the gradient to that index: the first maximum in row-major order
    grid = torch.zeros(1, 1, 2, 2, requires_grad=True)
    F.max_pool2d(grid, 2).sum().backward()
    assert grid.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_detach_boxes_switch() -> None:
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(1, 3, 8, 8, generator=gen, requires_grad=True)
    rois = random_rois(5, 1, (64, 64), gen).clamp(0, 60)
    rois[:, 3:] = rois[:, 1:3] + 20.3  # inside the image, non-integer corners

    attached = rois.clone().requires_grad_(True)
    roi_warp_pool(features, attached, output_size=4, spatial_scale=1 / 8).square().sum().backward()
    assert attached.grad is not None and attached.grad[:, 1:].abs().sum() > 0
    assert torch.all(attached.grad[:, 0] == 0), "the batch index column gets no gradient"

    detached = rois.clone().requires_grad_(True)
    features.grad = None
    module = RoIWarpPool(output_size=4, spatial_scale=1 / 8, detach_boxes=True)
    module(features, detached).square().sum().backward()
    assert detached.grad is None
    assert features.grad is not None
    assert features.grad.abs().sum() > 0, "the features still get a gradient"
    assert "detach_boxes=True" in repr(module) and "pool=2" in repr(module)

    reference = roi_warp_pool_reference(
        features, rois.clone().requires_grad_(True), output_size=4, spatial_scale=1 / 8,
        detach_boxes=True,
    )
    assert reference.grad_fn is not None and torch.allclose(reference, module(features, rois))


def test_module_defaults_and_forward() -> None:
    module = RoIWarpPool()
    settings = (module.output_size, module.spatial_scale, module.pool, module.detach_boxes)
    assert settings == ((14, 14), 1 / 16, 2, False)
    gen = torch.Generator().manual_seed(3)
    features, rois = torch.randn(1, 2, 10, 12, generator=gen), random_rois(4, 1, (160, 192), gen)
    expected = roi_warp_pool(features, rois, output_size=14, spatial_scale=1 / 16, pool=2)
    assert torch.equal(module(features, rois), expected)


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_empty_rois(fast, pool) -> None:
    features = torch.randn(2, 3, 5, 5, requires_grad=True)
    rois = torch.zeros(0, 5, requires_grad=True)
    warp_fn = roi_warp if fast else roi_warp_reference
    warp_pool_fn = roi_warp_pool if fast else roi_warp_pool_reference
    assert warp_fn(features, rois, output_size=(2, 3), spatial_scale=0.5).shape == (0, 3, 2, 3)
    out = warp_pool_fn(features, rois, output_size=4, spatial_scale=0.5, pool=pool)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert features.grad.shape == features.shape and torch.all(features.grad == 0)
    assert rois.grad.shape == (0, 5)


def test_batch_index_picks_the_image() -> None:
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(3, 2, 6, 6, generator=gen)
    boxes = torch.tensor([[4.3, 2.1, 40.6, 33.9]])
    settings = {"output_size": 3, "spatial_scale": 1 / 8}
    of_image_0 = torch.cat([torch.zeros(1, 1), boxes], dim=1)
    for image in range(3):
        rois = torch.cat([torch.tensor([[float(image)]]), boxes], dim=1)
        alone = roi_warp(features[image : image + 1], of_image_0, **settings)
        assert torch.equal(roi_warp(features, rois, **settings), alone)
    other = roi_warp(features, torch.cat([torch.ones(1, 1), boxes], dim=1), **settings)
    assert not torch.allclose(other, roi_warp(features, of_image_0, **settings))


@pytest.mark.parametrize(
    ("features", "rois", "kwargs", "message"),
    [
        (
            torch.zeros(2, 5, 5),
            torch.zeros(1, 5),
            {},
            "features must be a Tensor[N, C, h, w], got (2, 5, 5)",
        ),
        (torch.zeros(1, 2, 5, 5), torch.zeros(3, 4), {}, "rois must be a Tensor[R, 5]"),
        (torch.zeros(1, 2, 5, 5), torch.zeros(5), {}, "torch.cat([boxes.new_zeros"),
        (
            torch.zeros(1, 2, 5, 5, dtype=torch.int64),
            torch.zeros(1, 5),
            {},
            "features must be a float tensor",
        ),
        (
            torch.zeros(1, 2, 5, 5),
            torch.zeros(1, 5, dtype=torch.int64),
            {},
            "rois must be a float tensor",
        ),
        (
            torch.zeros(2, 2, 5, 5),
            torch.tensor([[2.0, 0, 0, 4, 4]]),
            {},
            "rois[0, 0] = 2.0 is not an image index in 0..1",
        ),
        (
            torch.zeros(2, 2, 5, 5),
            torch.tensor([[0.0, 0, 0, 4, 4], [0.5, 0, 0, 4, 4]]),
            {},
            "rois[1, 0] = 0.5",
        ),
        (
            torch.zeros(1, 2, 5, 5),
            torch.zeros(1, 5),
            {"output_size": 0},
            "output_size must be a positive int",
        ),
        (
            torch.zeros(1, 2, 5, 5),
            torch.zeros(1, 5),
            {"output_size": (2, 2, 2)},
            "output_size must be a positive int",
        ),
        (
            torch.zeros(1, 2, 5, 5),
            torch.zeros(1, 5),
            {"spatial_scale": 0.0},
            "spatial_scale must be > 0",
        ),
        (torch.zeros(1, 2, 5, 5), torch.zeros(1, 5), {"pool": 0}, "pool must be an int >= 1"),
    ],
)
def test_bad_inputs_raise_helpful_errors(features, rois, kwargs, message) -> None:
    arguments = {"output_size": 2, "spatial_scale": 1.0} | kwargs
    with pytest.raises(ValueError, match="roi_warp.py") as error:
        roi_warp_pool(features, rois, **arguments)
    assert message in str(error.value)
    if "pool" not in kwargs:
        with pytest.raises(ValueError, match=re.escape(message)):
            roi_warp(features, rois, **arguments)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output_size": -1},
        {"output_size": 2.5},
        {"spatial_scale": -1.0},
        {"pool": 1.5},
        {"pool": True},
    ],
)
def test_module_rejects_bad_settings(kwargs) -> None:
    with pytest.raises(ValueError, match="roi_warp.py"):
        RoIWarpPool(**kwargs)
