"""Exercise check of notebook 03: RoI warping (``roi_warp``), forward and gradients.

The check runs the learner's ``my_roi_warp`` on small cases against the library (equal to
``torchvision.ops.roi_align(aligned=True, sampling_ratio=1)``): first the values, then the
gradient of a fixed random loss with respect to the features (against the library's) and with
respect to the BOX coordinates, CS231n style: the learner's own autograd gradient against central
differences of the learner's own function in float64, compared by the relative error
|a - n| / max(|a|, |n|, tiny). Coordinates whose samples lie next to a kink (an integer feature
position: a cell centre or a border) are left out, since the function has no derivative there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mnc_teach.course.exercise import (
    Case,
    call_learner,
    exercise_check,
    passed,
    report_failure,
)
from mnc_teach.roi_warp import roi_warp, sample_positions

__all__ = [
    "GRADIENT_STEP", "MAX_RELATIVE_ERROR", "WARP_KEYWORDS", "check_roi_warp", "roi_warp_cases",
]

WARP_KEYWORDS = ("output_size", "spatial_scale")  # the library's keyword-only parameters
GRADIENT_STEP = 1e-5  # h of the central differences, in image pixels
MAX_RELATIVE_ERROR = 1e-6  # CS231n: below 1e-7 excellent; a piecewise-linear map is ~1e-9 here
TINY = 1e-4  # floor of the relative error's denominator: a zero gradient is compared absolutely
COORDINATES = ("x1", "y1", "x2", "y2")  # columns 1-4 of rois

BOX_GRADIENT_HINT = (
    "the output must be differentiable in the box: compute the sample positions from rois with "
    "torch ops, and the bilinear weights from those positions (floor only to find the "
    "neighbours' indices); no .detach(), .item(), round() or int() on rois or the positions"
)
FEATURE_GRADIENT_HINT = (
    "each sample is sum_k weight_k * feature[neighbour k]: gather the four neighbours from "
    "features (no .detach()) and weight them; a sample outside the map has all weights 0"
)


def _features(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rois(rows: list[list[float]], dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.tensor(rows, dtype=dtype).reshape(-1, 5)


def _random_rois(num: int, *, num_images: int, size: float, seed: int) -> Tensor:
    """``num`` RoIs [num, 5] on images of ``size`` x ``size`` pixels, many partly outside."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand(num, 2, generator=gen, dtype=torch.float64) * size * 1.2 - 0.3 * size
    sides = 1 + torch.rand(num, 2, generator=gen, dtype=torch.float64) * size * 0.8
    images = torch.randint(num_images, (num, 1), generator=gen).to(torch.float64)
    return torch.cat([images, corners, corners + sides], dim=1)  # (num, 5)


def roi_warp_cases() -> list[Case]:
    """The visible cases of ``my_roi_warp``: (features, rois, output_size, spatial_scale).
    Feature maps are small (a few cells) and float64, so that the box gradient can be checked
    by central differences; sample positions avoid integers (kinks)."""
    return [
        Case(
            "one box inside the map, 2 x 2 cells",
            (_features(1, 2, 5, 6, seed=0), _rois([[0, 1.3, 0.8, 4.1, 3.9]]), 2, 1.0),
            "cell (i, j) samples at x = x1*s + (j + 0.5) * (x2 - x1)*s / S_w - 0.5 (y likewise "
            "with i, S_h), not rounded: a sample between cells mixes its four neighbours; the "
            "-0.5 puts cell centres at integer positions",
        ),
        Case(
            "non-square output (S_h, S_w) = (2, 3)",
            (_features(1, 3, 5, 6, seed=1), _rois([[0, 0.6, 1.2, 5.3, 3.1]]), (2, 3), 1.0),
            "output_size is an int S or a pair (S_h, S_w): rows use y1, y2 and S_h, columns x1, "
            "x2 and S_w; the output is [R, C, S_h, S_w]",
        ),
        Case(
            "spatial_scale = 1/4",
            (_features(1, 2, 6, 7, seed=2), _rois([[0, 3.2, 5.1, 21.7, 19.4]]), 3, 0.25),
            "multiply the box by spatial_scale first: rois are in image pixels, the map in cells",
        ),
        Case(
            "samples within one cell left of and above the map",
            (_features(1, 2, 4, 5, seed=3), _rois([[0, -0.9, -0.8, 2.7, 2.3]]), 3, 1.0),
            "-1 <= x < 0 (or y): move the position to 0 and read the first column (or row), "
            "do not return 0",
        ),
        Case(
            "samples more than one cell outside",
            (_features(1, 2, 4, 5, seed=4),
             _rois([[0, -6.3, 0.6, 3.2, 3.3], [0, 0.4, -5.8, 4.1, 6.7]]), 3, 1.0),
            "x < -1 or x > w (or y < -1 or y > h): the sample is 0",
        ),
        Case(
            "samples past the last cell centre",
            (_features(1, 2, 4, 5, seed=5), _rois([[0, 2.3, 1.6, 5.8, 4.9]]), 3, 1.0),
            "floor(x) >= w - 1: both neighbours are the last column w - 1 (weight 1); do not "
            "index column w (the same for y and h)",
        ),
        Case(
            "a box larger than the map",
            (_features(1, 2, 3, 4, seed=6), _rois([[0, -2.7, -2.2, 6.9, 5.6]]), 5, 1.0),
            "apply the border rules to every sample: 0 beyond one cell outside, the border cell "
            "within one cell of it",
        ),
        Case(
            "three images in the batch",
            (_features(3, 2, 4, 5, seed=7),
             _rois([[2, 0.4, 0.3, 3.7, 2.6], [0, 1.1, 0.2, 4.2, 3.7], [1, 0.3, 1.3, 2.9, 3.6]]),
             2, 1.0),
            "column 0 of rois is the image index: sample features[int(rois[r, 0])], not image 0",
        ),
        Case(
            "no RoIs (R = 0)",
            (_features(2, 3, 4, 5, seed=8), _rois([]), (2, 3), 1.0),
            "R = 0 must give an empty [0, C, S_h, S_w] tensor",
        ),
        Case(
            "float32 features, as in the model",
            (_features(1, 4, 6, 6, seed=9, dtype=torch.float32),
             _rois([[0, 0.7, 1.1, 9.2, 10.6]], dtype=torch.float32), 3, 0.5),
            "return a tensor in the dtype of features",
        ),
        Case(
            "12 random boxes on two images, spatial_scale = 1/2",
            (_features(2, 2, 6, 8, seed=10), _random_rois(12, num_images=2, size=14, seed=10),
             (3, 4), 0.5),
            "compare one failing cell with the rule for the region its sample lies in",
        ),
    ]


def _loss_weights(shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """Fixed random weights of the probe loss sum(out * weights), shape [R, C, S_h, S_w]."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(123), dtype=dtype)


def _grid(output_size: int | tuple[int, int]) -> tuple[int, int]:
    return (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)


def _positions(rois: Tensor, grid: tuple[int, int], spatial_scale: float) -> tuple[Tensor, Tensor]:
    """Sample positions in feature cells: x (Tensor[R, S_w]) and y (Tensor[R, S_h])."""
    rois = rois.detach()
    xs = sample_positions(rois[:, 1], rois[:, 3], num_cells=grid[1], spatial_scale=spatial_scale)
    ys = sample_positions(rois[:, 2], rois[:, 4], num_cells=grid[0], spatial_scale=spatial_scale)
    return xs, ys


def _close(got: Tensor, expected: Tensor) -> Tensor:
    """Elementwise: the learner's values equal the library's, to the dtype's rounding."""
    atol = 1e-9 if expected.dtype == torch.float64 else 1e-5
    return torch.isclose(got.detach(), expected.detach(), rtol=1e-6, atol=atol)


def _forward_failure(case: Case, expected: Tensor, got: Tensor) -> bool:
    """Report the first cell whose value differs, with its sample position."""
    features, rois, output_size, spatial_scale = case.args
    wrong = ~_close(got, expected)
    r, c, i, j = (int(v) for v in wrong.nonzero()[0])
    xs, ys = _positions(rois, _grid(output_size), spatial_scale)
    height, width = features.shape[-2:]
    return report_failure(case, [
        f"RoI {r}: {[round(v, 3) for v in rois[r].tolist()]}, spatial_scale {spatial_scale:g}, "
        f"map h x w = {height} x {width}",
        f"cell (i, j) = ({i}, {j}), channel {c}: the sample at (x, y) = "
        f"({xs[r, j].item():.3f}, {ys[r, i].item():.3f}) in feature cells",
        f"expected {expected[r, c, i, j].item():.6f}, got {got[r, c, i, j].item():.6f}",
    ])


def _numerical_box_gradient(
    fn: Callable, features: Tensor, rois: Tensor, settings: dict, weights: Tensor
) -> Tensor:
    """Central differences of each RoI's loss sum(out[r] * weights[r]) in each coordinate
    (Tensor[R, 4]). A RoI's output depends on its own box only, so one column moves for all
    RoIs at once: 8 calls in all."""
    numerical = torch.zeros(len(rois), 4, dtype=rois.dtype)
    with torch.no_grad():
        for k in range(4):
            step = torch.zeros_like(rois)
            step[:, k + 1] = GRADIENT_STEP
            plus = (fn(features, rois + step, **settings) * weights).sum(dim=(1, 2, 3))  # (R,)
            minus = (fn(features, rois - step, **settings) * weights).sum(dim=(1, 2, 3))
            numerical[:, k] = (plus - minus) / (2 * GRADIENT_STEP)
    return numerical


def _away_from_kinks(rois: Tensor, grid: tuple[int, int], spatial_scale: float) -> Tensor:
    """Tensor[R, 4] bool: True where every sample that the coordinate moves stays away from an
    integer position (a kink) within the step of the central differences."""
    margin = 10 * GRADIENT_STEP * spatial_scale
    xs, ys = _positions(rois, grid, spatial_scale)
    x_ok = ((xs - xs.round()).abs() > margin).all(dim=1)  # (R,)
    y_ok = ((ys - ys.round()).abs() > margin).all(dim=1)
    return torch.stack([x_ok, y_ok, x_ok, y_ok], dim=1)  # (R, 4): x1, y1, x2, y2


def _check_box_gradient(case: Case, fn: Callable, analytic: Tensor | None, weights: Tensor) -> bool:
    """CS231n's gradient check on the box coordinates (float64 only)."""
    features, rois, output_size, spatial_scale = case.args
    settings = {"output_size": output_size, "spatial_scale": spatial_scale}
    try:
        numerical = _numerical_box_gradient(fn, features, rois, settings, weights)
    except Exception as error:  # the learner's function on slightly moved boxes
        return report_failure(case, [
            f"my_roi_warp raised {type(error).__name__}: {error} on boxes moved by "
            f"{GRADIENT_STEP:g} px (the numerical gradient)"
        ])
    analytic = torch.zeros_like(numerical) if analytic is None else analytic[:, 1:]
    checked = _away_from_kinks(rois, _grid(output_size), spatial_scale)
    scale = torch.maximum(analytic.abs(), numerical.abs()).clamp(min=TINY)
    error = torch.where(checked, (analytic - numerical).abs() / scale, 0.0)  # (R, 4)
    if not checked.any() or error.max() <= MAX_RELATIVE_ERROR:
        return True
    r, k = divmod(int(error.argmax()), 4)
    lines = [
        f"RoI {r}: {[round(v, 3) for v in rois[r].tolist()]}, d loss / d {COORDINATES[k]}:",
        f"analytic (your autograd) {analytic[r, k].item():+.8f}, numerical (central "
        f"differences, h = {GRADIENT_STEP:g}) {numerical[r, k].item():+.8f}",
        f"relative error {error[r, k].item():.1e} (a correct warp gives < {MAX_RELATIVE_ERROR:g})",
    ]
    if not analytic.any():
        lines.append("no gradient reaches rois at all: the boxes are cut from the graph")
    return report_failure(case._replace(hint=BOX_GRADIENT_HINT), lines)


def _check_feature_gradient(case: Case, expected: Tensor, got: Tensor | None) -> bool:
    """The gradient with respect to the features against the library's."""
    got = torch.zeros_like(expected) if got is None else got
    tolerance = 1e-9 if expected.dtype == torch.float64 else 1e-4
    if torch.allclose(got, expected, rtol=1e-6, atol=tolerance):
        return True
    n, c, i, j = (int(v) for v in ((got - expected).abs() == (got - expected).abs().max())
                  .nonzero()[0])
    return report_failure(case._replace(hint=FEATURE_GRADIENT_HINT), [
        f"d loss / d features[{n}, {c}, {i}, {j}]: expected {expected[n, c, i, j].item():+.6f}, "
        f"got {got[n, c, i, j].item():+.6f}",
    ])


@exercise_check("roi_warp", roi_warp=roi_warp)
def check_roi_warp(fn: Callable[..., Tensor], *, cases: Sequence[Case] | None = None) -> bool:
    """Check ``my_roi_warp(features [N, C, h, w], rois [R, 5], *, output_size, spatial_scale) ->
    [R, C, S_h, S_w]`` against ``mnc_teach.roi_warp.roi_warp``: values, the gradient with
    respect to the features, and (float64 cases) a relative-error check of the gradient with
    respect to the box coordinates."""
    cases = roi_warp_cases() if cases is None else cases
    for case in cases:
        features, rois, output_size, spatial_scale = case.args
        settings = {"output_size": output_size, "spatial_scale": spatial_scale}
        library_features = features.detach().clone().requires_grad_(True)
        expected = roi_warp(library_features, rois, **settings)
        weights = _loss_weights(expected.shape, expected.dtype)
        (expected_grad,) = torch.autograd.grad((expected * weights).sum(), library_features)
        leaves = features.detach().clone().requires_grad_(True), rois.detach().clone()
        leaves[1].requires_grad_(True)
        ok, got = call_learner(
            fn, case._replace(args=(*leaves, output_size, spatial_scale)),
            fn_name="my_roi_warp", keywords=WARP_KEYWORDS,
        )
        if not ok:
            return False
        if not torch.is_tensor(got) or got.shape != expected.shape or got.dtype != expected.dtype:
            what = (f"{tuple(got.shape)} {got.dtype}" if torch.is_tensor(got)
                    else type(got).__name__)
            dtype_only = torch.is_tensor(got) and got.shape == expected.shape
            hint = "return the dtype of features (build the weights in it)" if dtype_only else None
            return report_failure(case._replace(hint=hint or case.hint), [
                f"expected a tensor [R, C, S_h, S_w] = {tuple(expected.shape)} {expected.dtype}",
                f"got {what}",
            ])
        if not _close(got, expected).all():
            return _forward_failure(case, expected, got)
        grads = (None, None)
        if got.requires_grad and got.numel():
            grads = torch.autograd.grad((got * weights).sum(), leaves, allow_unused=True)
        if not _check_feature_gradient(case, expected_grad, grads[0]):
            return False
        if len(rois) and features.dtype == torch.float64 and rois.dtype == torch.float64:
            if not _check_box_gradient(case, fn, grads[1], weights):
                return False
    return passed(
        f"my_roi_warp matches roi_warp (= torchvision roi_align, aligned=True, sampling_ratio=1) "
        f"on all {len(cases)} cases; its feature and box gradients are right"
    )
