"""check_targets accepts the contract and names what is wrong otherwise."""

from __future__ import annotations

import pytest
import torch

from mnc_teach.structures import (
    Target,
    check_images,
    check_targets,
    empty_target,
    loss_terms,
)


def _valid_target() -> Target:
    masks = torch.zeros((2, 20, 30), dtype=torch.uint8)
    masks[0, 2:6, 3:9] = 1
    masks[1, 10:18, 20:29] = 1
    return Target(
        boxes=torch.tensor([[3.0, 2.0, 9.0, 6.0], [20.0, 10.0, 29.0, 18.0]]),
        labels=torch.tensor([1, 3]),
        masks=masks,
        ignore=torch.zeros((20, 30), dtype=torch.uint8),
        image_id="img_0",
    )


def test_valid_and_empty_targets_pass() -> None:
    image = torch.rand(3, 20, 30)
    check_targets([image, image], [_valid_target(), empty_target(20, 30, "empty")], num_classes=3)
    empty = empty_target(20, 30)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 20, 30)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update(boxes=t["boxes"].double()), "boxes are torch.float64"),
        (lambda t: t.update(labels=t["labels"].int()), "labels are torch.int32"),
        (lambda t: t.update(masks=t["masks"][:, :10]), "masks are torch.uint8 (2, 10, 30)"),
        (
            lambda t: t.update(
                boxes=torch.tensor([[3.0, 2.0, 3.0, 6.0], [20.0, 10.0, 29.0, 18.0]])
            ),
            "box 0",
        ),
        (lambda t: t.update(labels=torch.tensor([0, 1])), "labels must be in 1..3"),
        (lambda t: t.update(labels=torch.tensor([1, 4])), "labels must be in 1..3"),
        (lambda t: t.pop("masks"), "has no 'masks'"),
        (
            lambda t: t.update(
                boxes=torch.tensor([[float("nan"), 2.0, 9.0, 6.0], [20.0, 10.0, 29.0, 18.0]])
            ),
            "NaN",
        ),
    ],
)
def test_broken_targets_name_the_problem(change, message: str) -> None:
    target = _valid_target()
    change(target)
    with pytest.raises(ValueError, match="img_0") as error:
        check_targets([torch.rand(3, 20, 30)], [target], num_classes=3)
    assert message in str(error.value)


def test_image_checks() -> None:
    with pytest.raises(ValueError, match="expected Tensor\\[3, H, W\\]"):
        check_targets([torch.rand(20, 30)], [_valid_target()])
    with pytest.raises(ValueError, match="expected float"):
        check_targets([torch.zeros(3, 20, 30, dtype=torch.uint8)], [_valid_target()])
    with pytest.raises(ValueError, match="1 images but 2 targets"):
        check_targets([torch.rand(3, 20, 30)], [_valid_target(), _valid_target()])


def test_loss_terms_in_order_of_first_appearance_without_other_keys() -> None:
    entries = [{"step": 1, "loss_b": 1.0, "total": 1.0},
               {"step": 2, "loss_a": 2.0, "loss_b": 3.0, "lr": 0.1, "images_per_s": 5.0}]
    assert loss_terms(entries) == ["loss_b", "loss_a"]
    assert loss_terms([]) == []


def _check_one(target: Target, image: torch.Tensor | None = None) -> None:
    check_targets([torch.rand(3, 20, 30) if image is None else image], [target], num_classes=3)


@pytest.mark.parametrize(
    "box",
    [[20.0, 10.0, 31.0, 18.0], [-1.0, 10.0, 29.0, 18.0], [20.0, 10.0, 29.0, 20.5]],
    ids=["x2 > W", "x1 < 0", "y2 > H"],
)
def test_box_outside_the_image_is_rejected(box: list[float]) -> None:
    target = _valid_target()
    target["boxes"][1] = torch.tensor(box)
    with pytest.raises(ValueError, match="target 0 \\(image_id 'img_0'\\): box 1") as error:
        _check_one(target)
    message = str(error.value)
    assert "outside the image [0, 30] x [0, 20]" in message and "masks_to_boxes" in message
    assert "\n" not in message


def test_box_on_the_image_border_is_legal() -> None:
    target = _valid_target()  # continuous coordinates: a mask touching column W-1 has x2 == W
    target["masks"][1, 12:20, 25:30] = 1
    target["boxes"][1] = torch.tensor([20.0, 10.0, 30.0 + 1e-4, 20.0])
    _check_one(target)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update(boxes=t["boxes"].flip(0)), "box 0 = [20.0, 10.0, 29.0, 18.0]"),
        (lambda t: t["boxes"][0].add_(torch.tensor([6.0, 0.0, 6.0, 0.0])), "tight box is [3.0"),
        (lambda t: t["boxes"][0].copy_(torch.tensor([0.0, 0.0, 30.0, 20.0])), "box 0"),
        (lambda t: t["boxes"][1].copy_(torch.tensor([24.0, 10.0, 26.0, 18.0])), "box 1"),
    ],
    ids=["shuffled", "shifted", "much larger", "much smaller"],
)
def test_box_that_does_not_match_its_mask_is_rejected(change, message: str) -> None:
    target = _valid_target()
    change(target)
    with pytest.raises(ValueError, match="image_id 'img_0'") as error:
        _check_one(target)
    text = str(error.value)
    assert "does not match its mask" in text and message in text
    assert "recompute the boxes with mnc_teach.boxes.masks_to_boxes(masks)" in text


def test_box_close_to_its_mask_passes() -> None:
    """Within the slack: the package's resize and flip keep boxes within 0.5 px of the mask, and
    a shrunk mask (thin parts lost by nearest-neighbour downscaling) keeps its larger box."""
    target = _valid_target()
    target["boxes"] += torch.tensor([[-0.5, 0.5, 1.5, -1.5], [-2.0, 2.0, 1.0, -2.0]])
    _check_one(target)
    target = _valid_target()
    target["masks"][1, :, 25:] = 0  # the mask lost its right 4 of 9 columns; the box did not
    _check_one(target)


def test_empty_mask_is_rejected() -> None:
    target = _valid_target()
    target["masks"][1] = 0
    with pytest.raises(ValueError, match="target 0 \\(image_id 'img_0'\\): mask 1 is empty") as err:
        _check_one(target)
    assert "drop instances without pixels" in str(err.value)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.rand(3, 20, 30) * 255, "expected float in [0, 1]: divide a 0-255 image by 255"),
        ((torch.rand(3, 20, 30) - 0.45) / 0.225, "before any mean/std normalisation"),
        (torch.full((3, 20, 30), float("nan")), "contains NaN; check the image loading"),
    ],
    ids=["0-255", "normalised", "nan"],
)
def test_image_values_outside_0_1_are_rejected(image: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match="image 0 \\(image_id 'img_0'\\)") as error:
        _check_one(_valid_target(), image)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_image_values_within_rounding_pass() -> None:
    image = torch.rand(3, 20, 30)
    image[0, 0, 0], image[0, 0, 1] = 1.0005, -0.0005
    _check_one(_valid_target(), image)


def test_check_images_names_the_image_and_says_what_to_do() -> None:
    check_images([torch.rand(3, 8, 8), torch.zeros(3, 4, 5)])  # valid: nothing raised
    with pytest.raises(ValueError, match=r"image 1 \(image_id 'b'\) contains NaN"):
        check_images([torch.rand(3, 8, 8), torch.full((3, 8, 8), float("nan"))], ["a", "b"])
    with pytest.raises(ValueError, match=r"image 0 has values up to 2.+divide a 0-255 image"):
        check_images([torch.rand(3, 8, 8) + 1.5])
    with pytest.raises(ValueError, match=r"image 0 has shape \(8, 8\); expected Tensor\[3, H, W\]"):
        check_images([torch.rand(8, 8)])
