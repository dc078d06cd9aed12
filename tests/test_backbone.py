"""Tests for mnc_teach/backbone.py: output size and stride of each trunk, frozen layers,
where the ImageNet weights come from (never the network here), and the fc6/fc7 hand-over."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torchvision
from torch import nn

from mnc_teach import backbone as backbone_module
from mnc_teach.backbone import (
    IMAGENET_MEAN,
    TinyBackbone,
    build_backbone,
    load_imagenet_state,
    vgg16_fc_weights,
)


@pytest.fixture
def skip_weight_init(monkeypatch):
    """Building torchvision's VGG-16 / ResNet-50 spends seconds drawing random weights that these
    tests never read (they check structure, shapes and loaded weights): leave them uninitialised."""
    monkeypatch.setattr(nn.Linear, "reset_parameters", lambda self: None)
    monkeypatch.setattr(nn.modules.conv._ConvNd, "reset_parameters", lambda self: None)
    for name in ("normal_", "kaiming_normal_", "constant_"):
        monkeypatch.setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt to reach torchvision's weights API fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download ImageNet weights")

    monkeypatch.setattr(torchvision.models, "get_model_weights", refuse)


# --- tiny -------------------------------------------------------------------------------------


def test_tiny_output_is_ceil_of_size_over_stride():
    model, state = build_backbone("tiny")
    assert state is None and isinstance(model, TinyBackbone)
    assert model.stride == 8 and model.out_channels == 96
    model.eval()  # BatchNorm in training mode cannot take the 1 x 1 map of an 8 x 8 image
    with torch.no_grad():
        assert model(torch.rand(2, 3, 128, 128)).shape == (2, 96, 16, 16)
        for height, width in [(100, 99), (33, 64), (8, 8)]:
            features = model(torch.rand(1, 3, height, width))
            assert features.shape == (1, 96, math.ceil(height / 8), math.ceil(width / 8))


def test_tiny_channels_and_normalisation():
    model = TinyBackbone((4, 6, 10)).eval()
    assert model.out_channels == 10
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 10, 2, 2)
    # an image of the ImageNet mean colour is all zeros after normalisation
    mean_image = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 5, 7)
    assert torch.allclose(model.normalize(mean_image), torch.zeros(1, 3, 5, 7), atol=1e-6)


# --- torchvision trunks (random weights) --------------------------------------------------------


def test_vgg16_trunk_shape_stride_and_frozen_convs(skip_weight_init):
    model, state = build_backbone("vgg16", pretrained=False)
    assert state is None
    assert model.stride == 16 and model.out_channels == 512
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13  # conv1_1 .. conv5_3
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.body) == 4  # pool5 dropped
    assert isinstance(model.body[-1], nn.ReLU)  # relu5_3
    # frozen_layers=4: conv1_1, conv1_2, conv2_1, conv2_2 fixed, the other nine trainable
    frozen = [all(not p.requires_grad for p in c.parameters()) for c in convs]
    assert frozen == [True] * 4 + [False] * 9
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 48)).shape == (1, 512, 2, 3)
        # sizes that are not multiples of 16 round up, as Caffe's pooling does
        assert model(torch.rand(1, 3, 50, 33)).shape == (1, 512, 4, 3)


def test_vgg16_frozen_layers_count(skip_weight_init):
    model, _ = build_backbone("vgg16", pretrained=False, frozen_layers=2)
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs[:4]] == [False, False, True, True]


def test_resnet50_trunk_shape_stride_and_frozen_stem(skip_weight_init):
    model, state = build_backbone("resnet50", pretrained=False)
    assert state is None
    assert model.stride == 16 and model.out_channels == 1024
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # FrozenBatchNorm2d only
    stem_and_layer1, layer2, layer3 = model.body[:5], model.body[5], model.body[6]
    assert all(not p.requires_grad for p in stem_and_layer1.parameters())
    assert all(p.requires_grad for p in layer2.parameters())
    assert all(p.requires_grad for p in layer3.parameters())
    with torch.no_grad():
        # ceil(50 / 16), ceil(33 / 16)
        assert model(torch.rand(1, 3, 50, 33)).shape == (1, 1024, 4, 3)
    unfrozen, _ = build_backbone("resnet50", pretrained=False, frozen_layers=0)
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="tiny, vgg16 or resnet50"):
        build_backbone("vgg19", pretrained=False)


# --- where the ImageNet weights come from --------------------------------------------------------


def test_load_imagenet_state_reads_weights_path_first(tmp_path):
    saved = {"features.0.weight": torch.randn(2, 3), "classifier.0.bias": torch.arange(4.0)}
    path = tmp_path / "vgg16.pth"
    torch.save(saved, path)
    # no download attempted
    state = load_imagenet_state("vgg16", pretrained=True, weights_path=str(path))
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_load_imagenet_state_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_imagenet_state("vgg16", pretrained=True, weights_path=str(missing))


def test_load_imagenet_state_not_pretrained_is_none():
    assert load_imagenet_state("resnet50", pretrained=False, weights_path=None) is None


def test_offline_falls_back_to_random_weights_with_a_warning(monkeypatch, capsys, skip_weight_init):
    def offline(*args, **kwargs):
        raise OSError("no network")

    fake_weights = types.SimpleNamespace(
        url="https://example.invalid/resnet50-0676ba61.pth", get_state_dict=offline
    )
    monkeypatch.setattr(
        torchvision.models,
        "get_model_weights",
        lambda name: types.SimpleNamespace(IMAGENET1K_V1=fake_weights),
    )
    with pytest.warns(UserWarning, match="RANDOM.*resnet50-0676ba61.pth"):
        model, state = build_backbone("resnet50", pretrained=True)
    assert state is None
    assert "random weights" in capsys.readouterr().out
    assert model.out_channels == 1024


def test_build_loads_the_imagenet_state(monkeypatch, skip_weight_init):
    """The state_dict of a plain torchvision resnet50 (BatchNorm2d, as the ImageNet file) loads
    into the trunk with frozen BatchNorm: weights and running statistics arrive."""
    reference = torchvision.models.resnet50(weights=None)
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in reference.state_dict().items()
    }
    seen = {}

    def fake_load(name, pretrained, weights_path):
        seen["args"] = (name, pretrained, weights_path)
        return state

    monkeypatch.setattr(backbone_module, "load_imagenet_state", fake_load)
    model, returned = build_backbone("resnet50", pretrained=True, weights_path="some.pth")
    assert seen["args"] == ("resnet50", True, "some.pth")
    assert returned is state
    conv1, bn1, layer3 = model.body[0], model.body[1], model.body[6]
    assert torch.equal(conv1.weight, state["conv1.weight"])
    assert torch.equal(bn1.running_mean, state["bn1.running_mean"])
    assert torch.equal(bn1.weight, state["bn1.weight"])
    assert torch.equal(layer3[5].conv3.weight, state["layer3.5.conv3.weight"])


def test_vgg16_fc_weights_renames_fc6_fc7_only():
    state = {
        "features.0.weight": torch.zeros(1),
        "classifier.0.weight": torch.full((3, 2), 6.0),
        "classifier.0.bias": torch.full((3,), 6.5),
        "classifier.3.weight": torch.full((3, 3), 7.0),
        "classifier.3.bias": torch.full((3,), 7.5),
        "classifier.6.weight": torch.zeros(4, 3),  # fc8 (ImageNet classes): not handed over
    }
    fc = vgg16_fc_weights(state)
    assert set(fc) == {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    for ours, theirs in (("fc6", "classifier.0"), ("fc7", "classifier.3")):
        assert fc[f"{ours}.weight"] is state[f"{theirs}.weight"]
        assert fc[f"{ours}.bias"] is state[f"{theirs}.bias"]
    assert vgg16_fc_weights(None) is None
