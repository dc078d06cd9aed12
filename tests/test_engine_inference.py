"""engine.inference: eval_mode gives back every module's mode and the RNG (also after an error),
and predict / predict_images run in it: a model in training stays in training, with its RNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakes import FakeInstances, FakeMNC, fake_model
from torch import nn

from mnc_teach.data.transforms import ResizeShortestSide
from mnc_teach.data.voc import VOCInstanceSegmentation
from mnc_teach.engine.inference import eval_mode, model_device, predict, predict_images
from mnc_teach.evaluation.coco import decode_mask


class NoisyMNC(FakeMNC):
    """FakeMNC that draws from the global RNG at every call (as sampling or dropout would)."""

    def forward(self, images, targets=None, detect=None):
        torch.rand(1)
        return super().forward(images, targets, detect)


class Broken(FakeMNC):
    def forward(self, images, targets=None, detect=None):
        raise RuntimeError("broken forward")


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def test_eval_mode_evaluates_inside_and_restores_modes_and_rng_after() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(2)))
    model[2].eval()  # a mixed state: the inner block frozen while the rest trains
    before = modes(model)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(module.training for module in model.modules())
        torch.rand(10)  # uses the RNG inside the block
    assert modes(model) == before
    assert torch.equal(torch.get_rng_state(), rng)


def test_eval_mode_restores_after_an_error() -> None:
    model = nn.Linear(2, 2).train()
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="inside"), eval_mode(model):
        torch.rand(3)
        raise ValueError("inside")
    assert model.training and torch.equal(torch.get_rng_state(), rng)


def test_predict_images_keeps_the_order_of_images_of_several_sizes() -> None:
    images = [torch.rand(3, 16, 16), torch.rand(3, 8, 12), torch.rand(3, 16, 16)]
    model = fake_model()  # detects the centre square: (W/4, H/4, 3W/4, 3H/4)
    detections = predict_images(model, images)
    for image, found in zip(images, detections, strict=True):
        height, width = image.shape[-2:]
        assert found["boxes"].tolist() == [[width / 4, height / 4, 3 * width / 4, 3 * height / 4]]
        model.eval()
        assert torch.equal(found["scores"], model([image])[0][0]["scores"])
        model.train()
    assert model.training


def test_predict_images_and_predict_leave_a_training_model_and_the_rng_as_they_were() -> None:
    torch.manual_seed(0)
    model = NoisyMNC().train()
    rng = torch.get_rng_state()
    predict_images(model, [FakeInstances(1)[0][0]])
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    results = predict(model, FakeInstances(2), progress=False)
    assert {r["image_id"] for r in results} == {"img000", "img001"}
    assert model.training and torch.equal(torch.get_rng_state(), rng)


def test_predict_restores_train_mode_when_the_model_fails() -> None:
    model = Broken().train()
    with pytest.raises(RuntimeError, match="broken forward"):
        predict(model, FakeInstances(1), progress=False)
    assert model.training
    with pytest.raises(RuntimeError, match="broken forward"):
        predict_images(model, [FakeInstances(1)[0][0]])
    assert model.training


def test_predict_maps_masks_back_to_the_image_size(tiny_shapes: Path) -> None:
    plain = VOCInstanceSegmentation(tiny_shapes, split="val")
    resized = VOCInstanceSegmentation(
        tiny_shapes, split="val", transforms=ResizeShortestSide(96, 96)
    )
    model = fake_model()  # predicts the centre square, half the side of the image it sees
    for dataset in (plain, resized):
        results = predict(model, dataset, progress=False)
        assert [r["image_id"] for r in results] == plain.image_ids
        for result in results:
            mask = decode_mask(result["segmentation"])
            expected = torch.zeros(64, 64, dtype=torch.bool)
            expected[16:48, 16:48] = True
            assert torch.equal(torch.from_numpy(mask).bool(), expected)
            assert result["bbox"] == pytest.approx([16, 16, 32, 32])
    assert model.training  # predict restores the mode


def test_model_device_is_where_the_parameters_are_unless_asked() -> None:
    model = nn.Linear(2, 2)
    assert model_device(model) == torch.device("cpu")
    assert model_device(model, "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA was asked for"):
            model_device(model, "cuda")
