"""Joint transforms keep boxes, masks and ignore consistent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from voc_fixtures import build_voc

from mnc_teach.boxes import masks_to_boxes
from mnc_teach.data.transforms import Compose, RandomHorizontalFlip, ResizeShortestSide, collate
from mnc_teach.data.voc import VOCInstanceSegmentation
from mnc_teach.structures import check_targets, empty_target


def random_sample(seed: int, height: int = 37, width: int = 53, num_instances: int = 3):
    """An image with random rectangle-and-blob masks, boxes = their tight boxes."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(3, height, width, generator=generator)
    masks = torch.zeros(num_instances, height, width, dtype=torch.uint8)
    for k in range(num_instances):
        y1 = int(torch.randint(0, height - 12, (), generator=generator))
        x1 = int(torch.randint(0, width - 12, (), generator=generator))
        masks[k, y1 : y1 + 10, x1 : x1 + 11] = 1
        masks[k, y1 + 3, x1 + 11] = 1  # a one-pixel bump, so boxes are not symmetric
    ignore = (torch.rand(height, width, generator=generator) < 0.05).to(torch.uint8)
    target = {
        "boxes": masks_to_boxes(masks),
        "labels": torch.arange(1, num_instances + 1),
        "masks": masks,
        "ignore": ignore,
        "image_id": f"sample{seed}",
    }
    return image, target


@pytest.mark.parametrize("seed", range(5))
def test_flip_boxes_equal_tight_boxes_of_flipped_masks(seed):
    image, target = random_sample(seed)
    flipped_image, flipped = RandomHorizontalFlip(p=1.0)(image, target)
    torch.testing.assert_close(flipped["boxes"], masks_to_boxes(flipped["masks"]), rtol=0, atol=0)
    torch.testing.assert_close(flipped_image, image.flip(-1))
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    assert torch.equal(flipped["ignore"], target["ignore"].flip(-1))
    assert torch.equal(flipped["labels"], target["labels"])
    assert flipped["image_id"] == target["image_id"]
    # flipping twice is the identity, and the input target is untouched
    again_image, again = RandomHorizontalFlip(p=1.0)(flipped_image, flipped)
    assert torch.equal(again_image, image) and torch.equal(again["boxes"], target["boxes"])
    assert torch.equal(target["boxes"], masks_to_boxes(target["masks"]))


def test_flip_probability_and_generator():
    image, target = random_sample(0)
    unchanged_image, unchanged = RandomHorizontalFlip(p=0.0)(image, target)
    assert unchanged_image is image and torch.equal(unchanged["boxes"], target["boxes"])

    def flips(seed: int) -> list[bool]:
        flip = RandomHorizontalFlip(p=0.5, generator=torch.Generator().manual_seed(seed))
        return [not torch.equal(flip(image, target)[0], image) for _ in range(200)]

    assert flips(3) == flips(3)
    assert 70 < sum(flips(3)) < 130  # about half of 200
    with pytest.raises(ValueError):
        RandomHorizontalFlip(p=1.5)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (375, 500, (600, 800)),  # a typical VOC image: short side to 600
        (300, 900, (333, 1000)),  # long side capped at 1000
        (600, 1000, (600, 1000)),  # already right
    ],
)
def test_resize_output_size(height, width, expected):
    assert ResizeShortestSide(600, 1000).output_size(height, width) == expected


@pytest.mark.parametrize(("min_size", "max_size"), [(80, 200), (20, 200), (30, 40)])
def test_resize_keeps_boxes_close_to_masks(min_size, max_size):
    image, target = random_sample(1)
    resize = ResizeShortestSide(min_size, max_size)
    out_image, out = resize(image, target)
    new_size = resize.output_size(*image.shape[-2:])
    assert tuple(out_image.shape) == (3, *new_size)
    assert out["masks"].shape[-2:] == new_size and out["ignore"].shape == new_size
    assert out["masks"].dtype == torch.uint8 and out["ignore"].dtype == torch.uint8
    scale_x, scale_y = new_size[1] / image.shape[-1], new_size[0] / image.shape[-2]
    torch.testing.assert_close(
        out["boxes"], target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    )
    # nearest-pixel-centre sampling keeps a full-height edge within half an output pixel of the
    # scaled box; when shrinking, the one-pixel bump may vanish too, moving x2 by up to its scaled
    # width
    shrinking = scale_x < 1 or scale_y < 1
    tolerance = 0.5 + (max(scale_x, scale_y) if shrinking else 0.0) + 1e-4
    assert (out["boxes"] - masks_to_boxes(out["masks"])).abs().max() <= tolerance
    # images are resized bilinearly, masks by nearest pixel centre (torch as reference)
    bilinear = F.interpolate(image[None], size=new_size, mode="bilinear")[0]
    torch.testing.assert_close(out_image, bilinear)
    reference = F.interpolate(target["masks"][None].float(), size=new_size, mode="nearest-exact")[0]
    assert torch.equal(out["masks"], reference.to(torch.uint8))
    check_targets([out_image], [out])


def test_resize_drops_instances_that_vanish():
    image = torch.rand(3, 100, 100)
    masks = torch.zeros(2, 100, 100, dtype=torch.uint8)
    masks[0, 10:60, 10:60] = 1
    masks[1, 70, 70] = 1  # one pixel: gone at 1/10 scale
    target = {"boxes": masks_to_boxes(masks), "labels": torch.tensor([4, 2]), "masks": masks}
    _, out = ResizeShortestSide(10, 10)(image, target)
    assert (
        out["labels"].tolist() == [4]
        and out["masks"].shape == (1, 10, 10)
        and out["boxes"].shape == (1, 4)
    )


def test_transforms_accept_targets_without_instances():
    image = torch.rand(3, 20, 30)
    target = empty_target(20, 30, "empty")
    pipeline = Compose([ResizeShortestSide(40, 100), RandomHorizontalFlip(p=1.0)])
    out_image, out = pipeline(image, target)
    assert out_image.shape == (3, 40, 60)
    assert (
        out["boxes"].shape == (0, 4)
        and out["labels"].shape == (0,)
        and out["masks"].shape == (0, 40, 60)
    )
    assert out["ignore"].shape == (40, 60)
    check_targets([out_image], [out])


def test_compose_and_collate_on_the_voc_fixture(tmp_path):
    voc = build_voc(tmp_path)
    transforms = Compose([ResizeShortestSide(72, 120), RandomHorizontalFlip(p=1.0)])
    dataset = VOCInstanceSegmentation(voc.root, split="trainval", transforms=transforms)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate)
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [3, 1]
    images = [image for batch_images, _ in batches for image in batch_images]
    targets = [target for _, batch_targets in batches for target in batch_targets]
    assert [t["image_id"] for t in targets] == dataset.image_ids
    check_targets(images, targets, num_classes=20)
    for image, target in zip(images, targets, strict=True):
        assert min(image.shape[-2:]) == 72
        assert target["ignore"].shape == image.shape[-2:]
        if len(target["boxes"]):
            assert (target["boxes"] - masks_to_boxes(target["masks"])).abs().max() <= 0.5 + 1e-4
    assert collate([]) == ([], [])
