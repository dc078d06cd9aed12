"""The check of notebook 03's exercise (``my_roi_warp``) passes the library, the readable
reference and a vectorised gather written differently, and diagnoses typical mistakes by the
case they fail: wrong values, and box gradients that do not match central differences."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import Tensor

from mnc_teach.course import checks_warp
from mnc_teach.course.checks_warp import check_roi_warp, roi_warp_cases
from mnc_teach.course.exercise import Case, ExerciseFailed
from mnc_teach.roi_warp import roi_warp, roi_warp_reference


def _warp(
    features: Tensor, rois: Tensor, *, output_size: int | tuple[int, int], spatial_scale: float,
    offset: float = 0.5, round_positions: bool = False, detach_rois: bool = False,
    detach_weights: bool = False, ignore_image: bool = False, zero_outside: bool = True,
) -> Tensor:
    """RoI warping by advanced indexing (not the library's flat table); the flags plant the
    mistakes learners make."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    height, width = features.shape[-2:]
    if detach_rois:
        rois = rois.detach()

    def axis(start: Tensor, end: Tensor, cells: int, size: int):
        centres = (torch.arange(cells, dtype=rois.dtype) + 0.5) / cells  # (S,)
        pos = (start * spatial_scale - offset)[:, None] + centres * (
            (end - start) * spatial_scale
        )[:, None]  # (R, S)
        if round_positions:
            pos = pos.round()
        inside = (pos >= -1) & (pos <= size)
        pos = pos.clamp(min=0)
        low = pos.detach().floor().long().clamp(max=size - 1)
        high = (low + 1).clamp(max=size - 1)
        moving = pos.detach() if detach_weights else pos
        frac = torch.where(low >= size - 1, torch.zeros_like(pos), moving - low)
        return low, high, frac.to(features.dtype), inside

    y_low, y_high, ly, in_y = axis(rois[:, 2], rois[:, 4], out_h, height)  # (R, S_h) each
    x_low, x_high, lx, in_x = axis(rois[:, 1], rois[:, 3], out_w, width)  # (R, S_w) each
    image = rois[:, 0].detach().long()[:, None, None]  # (R, 1, 1)
    if ignore_image:
        image = torch.zeros_like(image)

    def at(rows: Tensor, cols: Tensor) -> Tensor:  # (R, S_h, S_w, C)
        return features[image, :, rows[:, :, None], cols[:, None, :]]

    ly, lx = ly[:, :, None, None], lx[:, None, :, None]
    warped = ((1 - ly) * (1 - lx) * at(y_low, x_low) + (1 - ly) * lx * at(y_low, x_high)
              + ly * (1 - lx) * at(y_high, x_low) + ly * lx * at(y_high, x_high))
    if zero_outside:
        warped = warped * (in_y[:, :, None] & in_x[:, None, :])[..., None]
    return warped.permute(0, 3, 1, 2)  # (R, C, S_h, S_w)


def _swapped_sides(features: Tensor, rois: Tensor, *, output_size, spatial_scale: float) -> Tensor:
    """Reads output_size as (S_w, S_h)."""
    swapped = output_size if isinstance(output_size, int) else tuple(output_size)[::-1]
    return roi_warp(features, rois, output_size=swapped, spatial_scale=spatial_scale)


def _not_implemented(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("correct", [roi_warp, roi_warp_reference, _warp])
def test_correct_implementations_pass(correct, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_roi_warp(correct).status == "passed"
    assert capsys.readouterr().out.startswith("✓ my_roi_warp matches roi_warp")


@pytest.mark.parametrize(
    ("wrong", "failing_case", "diagnosis"),
    [
        (partial(_warp, round_positions=True), "one box inside the map, 2 x 2 cells",
         "expected -1.043288, got -1.295627"),
        (partial(_warp, detach_rois=True), "one box inside the map, 2 x 2 cells",
         "no gradient reaches rois at all"),
        (partial(_warp, detach_weights=True), "one box inside the map, 2 x 2 cells",
         "relative error 1.0e+00"),
        (partial(_warp, offset=0.0), "one box inside the map, 2 x 2 cells",
         "the -0.5 puts cell centres at integer positions"),
        (partial(_warp, ignore_image=True), "three images in the batch", "the image index"),
        (partial(_warp, zero_outside=False), "samples more than one cell outside",
         "the sample is 0"),
        (_swapped_sides, "non-square output (S_h, S_w) = (2, 3)",
         "expected a tensor [R, C, S_h, S_w] = (1, 3, 2, 3)"),
        (lambda f, r, *, output_size, spatial_scale: roi_warp(
            f.detach(), r, output_size=output_size, spatial_scale=spatial_scale),
         "one box inside the map, 2 x 2 cells", "d loss / d features"),
    ],
)
def test_planted_mistakes_fail_naming_the_case(
    wrong, failing_case: str, diagnosis: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = check_roi_warp(wrong)
    out = capsys.readouterr().out
    assert result.status == "wrong"
    assert out.startswith(f"✗ {failing_case}\n") and diagnosis in out


def test_a_box_gradient_failure_names_the_coordinate(capsys: pytest.CaptureFixture[str]) -> None:
    check_roi_warp(partial(_warp, detach_weights=True))
    out = capsys.readouterr().out
    assert "d loss / d x1" in out and "analytic (your autograd) +0.0" in out
    assert "numerical (central differences, h = 1e-05) -" in out


def test_a_stub_is_missing_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = check_roi_warp(_not_implemented)
    assert result.status == "missing"
    assert capsys.readouterr().out == "✗ my_roi_warp is not implemented yet\n"
    assert result.choose() is roi_warp


def test_a_hidden_test_raises_and_shows_no_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    features = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    rois = torch.tensor([[0.0, 0.2, 0.3, 2.6, 2.9]], dtype=torch.float64)
    hidden = [Case("a hidden box", (features, rois, 2, 1.0), "the hidden hint")]
    assert check_roi_warp(roi_warp, cases=hidden, hidden=True)
    assert capsys.readouterr().out == ""
    with pytest.raises(ExerciseFailed, match="'roi_warp' fails a hidden test: a hidden box"):
        check_roi_warp(partial(_warp, detach_rois=True), cases=hidden, hidden=True)
    out = capsys.readouterr().out
    assert out.startswith("✗ a hidden box\n")
    assert "RoI 0" not in out and "analytic" not in out  # no inputs, no values


def test_under_nbgrader_a_wrong_warp_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(ExerciseFailed, match="'roi_warp' fails its check: samples more than one"):
        check_roi_warp(partial(_warp, zero_outside=False))


def test_the_float64_cases_check_every_box_coordinate() -> None:
    """The visible boxes keep their samples away from kinks (integer positions), so the
    gradient check covers each coordinate of each box."""
    for case in roi_warp_cases():
        features, rois, output_size, spatial_scale = case.args
        if features.dtype == torch.float64 and len(rois):
            grid = checks_warp._grid(output_size)
            assert checks_warp._away_from_kinks(rois, grid, spatial_scale).all(), case.name
