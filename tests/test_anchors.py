"""Tests for mnc_teach/anchors.py: the spec's anchor sizes, the official code's anchors,
and torchvision's AnchorGenerator."""

from __future__ import annotations

import math

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from mnc_teach.anchors import anchors_inside_image, generate_base_anchors, grid_anchors

# docs/paper_vs_code.md: stage 1: anchor (width, height) for ratios 0.5, 1, 2 (ratio-major) and
# scales 8, 16, 32.
SPEC_ANCHOR_SIZES = [
    (184, 96), (368, 192), (736, 384),
    (128, 128), (256, 256), (512, 512),
    (88, 176), (176, 352), (352, 704),
]

# The 9 anchors listed in the comment of MNC/lib/transform/anchors.py (from the MATLAB code,
# 1-based inclusive corners, first feature cell).
OFFICIAL_ANCHORS_MATLAB = [
    [-83, -39, 100, 56], [-175, -87, 192, 104], [-359, -183, 376, 200],
    [-55, -55, 72, 72], [-119, -119, 136, 136], [-247, -247, 264, 264],
    [-35, -79, 52, 96], [-79, -167, 96, 184], [-167, -343, 184, 360],
]


def widths_heights(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]


def test_legacy_rounding_gives_the_spec_sizes():
    anchors = generate_base_anchors(legacy_rounding=True)
    widths, heights = widths_heights(anchors)
    assert list(zip(widths.tolist(), heights.tolist(), strict=True)) == SPEC_ANCHOR_SIZES
    assert torch.equal(anchors[:, :2], -anchors[:, 2:])  # centred at (0, 0)


def test_paper_anchors_have_exact_areas_and_ratios():
    anchors = generate_base_anchors()
    assert anchors.shape == (9, 4) and anchors.dtype == torch.float32
    widths, heights = widths_heights(anchors.double())
    expected_area = torch.tensor(
        [(16.0 * s) ** 2 for _ in range(3) for s in (8, 16, 32)], dtype=torch.float64
    )
    expected_ratio = torch.tensor(
        [r for r in (0.5, 1.0, 2.0) for _ in range(3)], dtype=torch.float64
    )
    torch.testing.assert_close(widths * heights, expected_area, rtol=1e-6, atol=0)
    torch.testing.assert_close(heights / widths, expected_ratio, rtol=1e-6, atol=0)
    assert torch.equal(anchors[:, :2], -anchors[:, 2:])
    # ratio 0.5, scale 8: 128 / sqrt(0.5) wide, 128 * sqrt(0.5) high
    torch.testing.assert_close(widths[0].item(), 128 / math.sqrt(0.5), rtol=1e-6, atol=0)
    # The paper's and the code's anchors agree within one rounding step.
    legacy_w, legacy_h = widths_heights(generate_base_anchors(legacy_rounding=True).double())
    assert ((legacy_w / widths - 1).abs().max() < 0.03) and (
        (legacy_h / heights - 1).abs().max() < 0.07
    )


def test_legacy_anchors_equal_the_official_code_at_the_first_cell():
    # 1-based inclusive (MATLAB) -> 0-based inclusive: subtract 1 from all four;
    # 0-based inclusive -> continuous: add 1 to x2, y2.
    matlab_to_continuous = torch.tensor([-1.0, -1.0, 0.0, 0.0])
    official = torch.tensor(OFFICIAL_ANCHORS_MATLAB, dtype=torch.float32) + matlab_to_continuous
    ours = grid_anchors(generate_base_anchors(legacy_rounding=True), (1, 1), stride=16, offset=0.5)
    assert torch.equal(ours, official)


def test_rounded_base_anchors_equal_torchvision():
    generator = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    assert torch.equal(generate_base_anchors().round(), generator.cell_anchors[0])


def test_grid_with_offset_zero_equals_torchvision_anchor_generator():
    feature_h, feature_w, stride = 5, 7, 16
    generator = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    images = ImageList(
        torch.zeros(1, 3, feature_h * stride, feature_w * stride),
        [(feature_h * stride, feature_w * stride)],
    )
    feature_map = torch.zeros(1, 8, feature_h, feature_w)
    expected = generator(images, [feature_map])[0]
    # torchvision rounds its base anchors to whole pixels, so compare with rounded base anchors.
    ours = grid_anchors(generate_base_anchors().round(), (feature_h, feature_w), stride, offset=0.0)
    assert ours.shape == (feature_h * feature_w * 9, 4)
    assert torch.equal(ours, expected)


def test_grid_order_lines_up_with_permuted_head_output():
    """Row (i*w + j)*A + a is anchor a at cell (i, j), the order of
    (N, A*4, h, w) -> (N, h, w, A*4)."""
    feature_h, feature_w, stride = 3, 4, 16
    base = generate_base_anchors(legacy_rounding=True)  # whole pixels: the checks below are exact
    num_anchors = base.shape[0]
    anchors = grid_anchors(base, (feature_h, feature_w), stride)
    # A fake RPN box head output whose 4 "deltas" for anchor a at cell (i, j) are (j, i, a, 0).
    head = torch.zeros(1, num_anchors * 4, feature_h, feature_w)
    rows = torch.arange(feature_h)[:, None].expand(feature_h, feature_w)
    cols = torch.arange(feature_w)[None, :].expand(feature_h, feature_w)
    for a in range(num_anchors):
        head[0, 4 * a + 0], head[0, 4 * a + 1], head[0, 4 * a + 2] = cols, rows, a
    flat = head.permute(0, 2, 3, 1)  # (N, A*4, h, w) -> (N, h, w, A*4)
    flat = flat.reshape(-1, 4)  # (1, h, w, A*4) -> (h*w*A, 4)
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centres_y = (anchors[:, 1] + anchors[:, 3]) / 2
    assert torch.equal(centres_x, (flat[:, 0] + 0.5) * stride)
    assert torch.equal(centres_y, (flat[:, 1] + 0.5) * stride)
    assert torch.equal(
        anchors - torch.stack([centres_x, centres_y] * 2, dim=1), base[flat[:, 2].long()]
    )


def test_grid_offset_half_centres():
    anchors = grid_anchors(torch.tensor([[-1.0, -2.0, 1.0, 2.0]]), (2, 3), stride=10, offset=0.5)
    expected_centres = torch.tensor(
        [[5.0, 5.0], [15.0, 5.0], [25.0, 5.0], [5.0, 15.0], [15.0, 15.0], [25.0, 15.0]]
    )
    assert torch.equal((anchors[:, :2] + anchors[:, 2:]) / 2, expected_centres)
    assert grid_anchors(generate_base_anchors(), (0, 5), 16).shape == (0, 4)


def test_anchors_inside_image_hand_computed():
    image_size = (50, 80)  # (height, width)
    anchors = torch.tensor(
        [
            [0.0, 0.0, 80.0, 50.0],  # the whole image: inside
            [-0.5, 0.0, 10.0, 10.0],  # sticks out on the left
            [0.0, 0.0, 80.5, 10.0],  # sticks out on the right
            [0.0, 40.0, 10.0, 50.5],  # sticks out at the bottom
            [10.0, 10.0, 20.0, 20.0],  # well inside
        ]
    )
    assert anchors_inside_image(anchors, image_size).tolist() == [True, False, False, False, True]
    assert anchors_inside_image(anchors, image_size, allowed_border=1.0).tolist() == [True] * 5
    assert anchors_inside_image(torch.zeros(0, 4), image_size).shape == (0,)


def test_anchors_inside_image_equals_the_official_inclusive_rule():
    image_h, image_w, stride = 600, 800, 16
    anchors = grid_anchors(
        generate_base_anchors(legacy_rounding=True), (image_h // stride, image_w // stride), stride
    )
    # The same anchors as the Caffe code writes them (inclusive corners).
    inclusive = anchors - torch.tensor([0.0, 0.0, 1.0, 1.0])
    for border in (0.0, 32.0):
        official = (
            (inclusive[:, 0] >= -border)
            & (inclusive[:, 1] >= -border)
            & (inclusive[:, 2] < image_w + border)
            & (inclusive[:, 3] < image_h + border)
        )
        ours = anchors_inside_image(anchors, (image_h, image_w), border)
        assert 0 < ours.sum() < ours.numel()
        assert torch.equal(ours, official)
