"""Backbones: the shared convolutional trunk all stages read from (docs/paper_vs_code.md).

    tiny      a 6-conv CNN for the 128 x 128 shapes images: stride 8, trains from scratch on
              a CPU.
    vgg16     torchvision VGG-16 up to conv5_3 (ReLU), stride 16, 512 channels [paper].
    resnet50  torchvision ResNet-50 up to C4 (layer3), stride 16, 1024 channels.

Every backbone maps a batch ``Tensor[N, 3, H, W]`` (0-1 images, ImageNet-normalised inside)
to ``Tensor[N, C, h, w]`` with ``h = ceil(H / stride)``, and exposes ``out_channels`` (C) and
``stride``. For VGG-16 and ResNet-50 the box/mask heads after RoI warping (fc6/fc7 or
layer4) are built by stage 3, so only the trunk is here, plus :func:`vgg16_fc_weights` which
hands stage 3 the ImageNet fc6/fc7 weights [paper: "conv and 4096-d fc layers from ImageNet"].

Pretrained weights, in order: ``weights_path`` (a local state_dict file), torchvision's weights
API (downloads once into the torch hub cache), or random initialisation with a printed warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from mnc_teach.config import BackboneConfig

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TinyBackbone",
    "build_backbone",
    "load_imagenet_state",
    "vgg16_fc_weights",
]

# torchvision's normalisation (the Caffe code subtracts BGR means)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_CONV5_3 = 30  # index of the layer after conv5_3's ReLU in torchvision's vgg16().features
VGG16_FROZEN_CONV_INDEX = (0, 2, 5, 7)  # conv1_1, conv1_2, conv2_1, conv2_2 [code: lr_mult 0]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for images in [0, 1]."""

    def __init__(
        self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """Three stages of two 3x3 convs (BatchNorm, ReLU); each stage halves the resolution.

    128 x 128 image -> 16 x 16 feature map (stride 8). The first conv has stride 2 and the
    next two stages end in 2x2 max pools, which keeps a forward pass near 0.2 GFLOP.
    """

    stride = 8

    def __init__(self, channels: tuple[int, ...] = BackboneConfig.tiny_channels):
        super().__init__()
        c1, c2, c3 = channels
        self.normalize = Normalize()
        self.body = nn.Sequential(
            _conv_bn_relu(3, c1, stride=2),  # (N, 3, H, W) -> (N, c1, H/2, W/2)
            _conv_bn_relu(c1, c1),
            nn.MaxPool2d(2, ceil_mode=True),  # -> H/4
            _conv_bn_relu(c1, c2),
            _conv_bn_relu(c2, c2),
            nn.MaxPool2d(2, ceil_mode=True),  # -> H/8
            _conv_bn_relu(c2, c3),
            _conv_bn_relu(c3, c3),
        )
        self.out_channels = c3

    def forward(self, images: Tensor) -> Tensor:
        return self.body(self.normalize(images))  # (N, 3, H, W) -> (N, C, H/8, W/8)


class TorchvisionTrunk(nn.Module):
    """A torchvision classification network cut at stride 16, with ImageNet normalisation."""

    stride = 16

    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.normalize = Normalize()
        self.body = body
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> Tensor:
        return self.body(self.normalize(images))  # (N, 3, H, W) -> (N, C, H/16, W/16)


def load_imagenet_state(
    name: str, pretrained: bool, weights_path: str | None
) -> dict[str, Tensor] | None:
    """ImageNet weights of torchvision's ``name`` ("vgg16" / "resnet50") as a state_dict, or
    None.

    ``weights_path`` (a file saved with ``torch.save(model.state_dict())``) wins; else, when
    ``pretrained``, torchvision's weights API (network access the first time); else None.
    Failure to get weights is not an error: the caller warns and starts from random weights.
    """
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone weights file {path} does not exist; pass the path of a torchvision "
                f"{name} state_dict, or weights_path=None to download (or start from random "
                "weights)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types (RuntimeError, struct.error, ...)
            raise ValueError(
                f"cannot read backbone weights file {path} ({type(error).__name__}); it is "
                f"corrupt or not a state_dict saved with torch.save: get torchvision's {name} "
                "weights again, or set backbone.weights_path=None"
            ) from error
        if not isinstance(state, dict):
            raise ValueError(
                f"backbone weights file {path} holds a {type(state).__name__}, not a state_dict "
                f"of torchvision's {name}; set backbone.weights_path to such a file"
            )
        return state
    if not pretrained:
        return None
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except Exception as error:  # offline, proxy, corrupt cache: fall back with a clear message
        warnings.warn(
            f"could not get ImageNet weights for {name} ({type(error).__name__}: {error}); "
            "starting from RANDOM weights, which needs far longer training. Put the file "
            f"{weights.url.rsplit('/', 1)[-1]} in the torch hub cache or pass "
            "backbone.weights_path",
            stacklevel=2,
        )
        return None


def build_backbone(
    name: str,
    *,
    tiny_channels: tuple[int, ...] = BackboneConfig.tiny_channels,
    pretrained: bool = BackboneConfig.pretrained,
    weights_path: str | None = BackboneConfig.weights_path,
    frozen_layers: int = BackboneConfig.frozen_layers,
) -> tuple[nn.Module, dict[str, Tensor] | None]:
    """The trunk called ``name``, and the ImageNet state_dict it was loaded from (or None).

    Args:
        name: "tiny", "vgg16" or "resnet50".
        tiny_channels: channels of the tiny CNN's three stages.
        pretrained / weights_path: see :func:`load_imagenet_state`.
        frozen_layers: VGG-16: how many of the first convs keep their weights fixed (4 =
            conv1_1..conv2_2 as the code); ResNet-50: 1 freezes the stem and layer1 (as
            detectron2's C4 recipe), 0 nothing.
    """
    if name == "tiny":
        return TinyBackbone(tiny_channels), None
    if name not in ("vgg16", "resnet50"):
        raise ValueError(f"unknown backbone {name!r}; choose tiny, vgg16 or resnet50")
    state = load_imagenet_state(name, pretrained, weights_path)
    if state is None and (pretrained or weights_path):
        print(f"WARNING: {name} starts from random weights (no ImageNet weights available)")
    if name == "vgg16":
        net = torchvision.models.vgg16(weights=None)
    else:  # statistics of 1-image batches are useless: BatchNorm stays frozen (ImageNet's)
        net = torchvision.models.resnet50(
            weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d
        )
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as error:  # missing, unexpected or differently shaped tensors
            raise ValueError(
                f"the backbone weights ({weights_path or 'torchvision'}) do not fit torchvision's "
                f"{name}: {' '.join(str(error).split())[:200]}; give {name} ImageNet weights"
            ) from None
    if name == "vgg16":
        body = net.features[:VGG16_CONV5_3]  # conv1_1 .. relu5_3; pool5 dropped: stride 16
        for layer in body:
            if isinstance(layer, nn.MaxPool2d):  # Caffe pools round up: h = ceil(H / 16)
                layer.ceil_mode = True
        for index in VGG16_FROZEN_CONV_INDEX[:frozen_layers]:
            body[index].requires_grad_(False)
        return TorchvisionTrunk(body, 512), state
    body = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
    )
    if frozen_layers >= 1:
        for part in body[:5]:  # stem + layer1
            part.requires_grad_(False)
    return TorchvisionTrunk(body, 1024), state


def vgg16_fc_weights(state: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    """fc6 / fc7 of an ImageNet VGG-16 state_dict, renamed ``fc6.weight`` etc., or None."""
    if state is None:
        return None
    names = {"classifier.0": "fc6", "classifier.3": "fc7"}
    fc_state = {}
    for key, value in state.items():
        layer, param = key.rsplit(".", 1)  # "classifier.0.weight" -> "classifier.0", "weight"
        if layer in names:
            fc_state[f"{names[layer]}.{param}"] = value
    return fc_state
