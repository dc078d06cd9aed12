"""Small stand-ins the tests share: a fake model and dataset for the training loop, and tiny
hand-made predictions and ground truth for the evaluation protocols.

Training (tests of engine, cli, widgets):
    FakeInstances, FakeMNC, fake_model, small_config, DATASETS, without_timing, assert_same_entries
Evaluation (tests of evaluation, viz):
    SIDE, CLASSES, rect, target, pred, synthetic_set
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from torch import nn

from mnc_teach.boxes import masks_to_boxes
from mnc_teach.config import MNCConfig, shapes_cpu
from mnc_teach.evaluation.coco import encode_mask

# ----------------------------------------------------------------------------- training

IMAGE_SIZE = 16


class FakeInstances(torch.utils.data.Dataset):
    """``n`` random 16 x 16 images, each with one 6 x 6 square of class 1 + i % 3 at column
    i % 8."""

    class_names = ("background", "a", "b", "c")

    def __init__(self, n: int = 10, prefix: str = "img") -> None:
        self.n, self.prefix = n, prefix

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(i))
        x = i % 8
        masks = torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        masks[0, 4:10, x : x + 6] = 1
        target = {
            "boxes": torch.tensor([[x, 4.0, x + 6, 10.0]]),
            "labels": torch.tensor([1 + i % 3]),
            "masks": masks,
            "ignore": torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8),
            "image_id": f"{self.prefix}{i:03d}",
        }
        return image, target


class FakeMNC(nn.Module):
    """MNC's interface on a linear map: the losses depend on the parameters, on the target boxes
    (so on flips) and, in training, on the global RNG (as MNC's anchor/RoI sampling does).
    In eval mode every image gets one detection: the centre square of half the image's side."""

    def __init__(
        self, noise: bool = True, nan_at_call: int | None = None, delay_s: float = 0.0
    ) -> None:
        super().__init__()
        self.features = nn.Linear(3, 4)
        self.scale = nn.Parameter(torch.ones(4))  # 1-d, like a norm parameter: no weight decay
        self.noise, self.nan_at_call, self.delay_s = noise, nan_at_call, delay_s
        self.calls = 0  # training forward calls
        self.seen = []  # (image_id, x1 of its box) of every image fed in training

    def forward(self, images, targets=None, detect=None):
        means = torch.stack([image.mean(dim=(1, 2)) for image in images])  # (N, 3)
        out = self.features(means) * self.scale  # (N, 4)
        if self.noise and self.training:
            out = out + 0.01 * torch.rand_like(out)
        pairs = zip(images, out, strict=True)
        detections = [self._centre_square(image, row) for image, row in pairs]
        if targets is None:
            return detections, {}
        goal = torch.stack(
            [t["boxes"][0] / image.shape[-1] for t, image in zip(targets, images, strict=True)]
        )  # (N, 4)
        losses = {
            "loss_a": ((out[:, :2] - goal[:, :2]) ** 2).mean(),
            "loss_b": (out[:, 2:] - goal[:, 2:]).abs().mean(),
        }
        if self.training:
            self.calls += 1
            self.seen += [(t["image_id"], round(float(t["boxes"][0, 0]))) for t in targets]
            if self.calls == self.nan_at_call:
                losses["loss_b"] = losses["loss_b"] * float("nan")
            if self.delay_s:
                time.sleep(self.delay_s)
        return detections, losses

    @staticmethod
    def _centre_square(image: torch.Tensor, row: torch.Tensor) -> dict:
        height, width = image.shape[-2:]
        masks = torch.zeros(1, 1, height, width)
        masks[..., height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1.0
        boxes = torch.tensor([[width / 4, height / 4, 3 * width / 4, 3 * height / 4]])
        scores = torch.sigmoid(row[:1]).detach()
        return {"boxes": boxes, "labels": torch.tensor([1]), "scores": scores, "masks": masks}


def fake_model(**kwargs) -> FakeMNC:
    """A FakeMNC with the same initial weights every time."""
    torch.manual_seed(0)
    return FakeMNC(**kwargs)


def small_config(**train_values) -> MNCConfig:
    """shapes-cpu with a tiny schedule: 2 images x 2 accumulated per step, flips on."""
    cfg = shapes_cpu()
    values = dict(
        seed=1, images_per_batch=2, accumulate=2, max_steps=8, lr=0.05, lr_steps=(5,),
        warmup_steps=2, checkpoint_every=4, val_every=3, log_every=2, grad_clip_norm=1.0,
    )
    values.update(train_values)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **values))


DATASETS = (FakeInstances(10), FakeInstances(3, prefix="val"))


def without_timing(entries: list[dict]) -> list[dict]:
    """History entries without ``images_per_s`` (the one value that is not reproducible)."""
    return [{k: v for k, v in entry.items() if k != "images_per_s"} for entry in entries]


def assert_same_entries(got: list[dict], expected: list[dict]) -> None:
    """History entries with the same keys and (to float rounding) the same values."""
    assert [e.keys() for e in got] == [e.keys() for e in expected]
    for a, b in zip(got, expected, strict=True):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)


# ----------------------------------------------------------------------------- evaluation

SIDE = 32
CLASSES = ("background", "circle", "square", "triangle")


def rect(y1: int, y2: int, x1: int, x2: int, side: int = SIDE) -> torch.Tensor:
    """uint8 [side, side] mask, 1 on rows y1:y2 and columns x1:x2."""
    mask = torch.zeros((side, side), dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def target(image_id: str, masks: list[torch.Tensor], labels: list[int], ignore=None) -> dict:
    """A Target (structures.py) of SIDE x SIDE masks; boxes are the masks' tight boxes."""
    stacked = torch.stack(masks) if masks else torch.zeros((0, SIDE, SIDE), dtype=torch.uint8)
    out = {
        "image_id": image_id,
        "boxes": masks_to_boxes(stacked),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": stacked,
    }
    if ignore is not None:
        out["ignore"] = ignore
    return out


def pred(image_id: str, label: int, mask: torch.Tensor, score: float) -> dict:
    """One COCO result dict (RLE mask)."""
    return {
        "image_id": image_id,
        "category_id": label,
        "segmentation": encode_mask(mask),
        "score": score,
    }


def synthetic_set() -> tuple[list[dict], list[dict]]:
    """5 images, 3 classes; predictions are shifted GT (some missed) plus random false positives."""
    rng = np.random.default_rng(7)
    ground_truth, predictions = [], []
    for i in range(5):
        masks, labels = [], []
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, 20, size=2)
            h, w = rng.integers(3, 12, size=2)
            masks.append(rect(y, y + h, x, x + w))
            labels.append(int(rng.integers(1, 4)))
            if rng.random() < 0.8:  # detected, shifted by up to 2 pixels
                dy, dx = rng.integers(-2, 3, size=2)
                shifted = torch.roll(masks[-1], shifts=(int(dy), int(dx)), dims=(0, 1))
                predictions.append(pred(f"im{i}", labels[-1], shifted, float(rng.random())))
        for _ in range(rng.integers(0, 3)):  # false positives
            y, x = rng.integers(0, 24, size=2)
            label, score = int(rng.integers(1, 4)), float(rng.random())
            predictions.append(pred(f"im{i}", label, rect(y, y + 8, x, x + 8), score))
        ground_truth.append(target(f"im{i}", masks, labels))
    return predictions, ground_truth
