"""check_targets accepts the contract and names what is wrong otherwise."""

from __future__ import annotations

import pytest
import torch

from mnc_teach.structures import Target, check_targets, empty_target, loss_terms


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
