"""Configuration: nested dataclasses and four named presets.

``build_mnc(cfg)`` (cascade.py) and ``train`` (engine/loop.py) are the only readers of a
config; every module takes explicit keyword arguments. Override a value with ``dataclasses.replace``
or with :func:`override`, e.g. ``override(shapes_cpu(), "train.max_steps", 200)``.

Each default that comes from MNC says where: [paper] or [code] with the file of the official
repository (docs/paper_vs_code.md compares the two). Where the two differ the default follows the
paper and the code's value is named in the comment (and set by a preset where it matters).

These fields are the one definition of each default: a model function with a default for
the same setting refers to the field (``positive_iou: float = RPNConfig.positive_iou``).

Presets:
    shapes_cpu        the default everywhere: a tiny CNN on the synthetic shapes data,
                      CPU minutes.
    voc_vgg16_paper   the paper: VGG-16 conv5_3, SBD train, 5-stage training, 40k x 8 images.
    voc_1gpu_hour     the same recipe in 10k x 8 images: about one GPU-hour (an estimate).
    voc_resnet50      the same recipe on a ResNet-50 C4 trunk.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BackboneConfig",
    "RPNConfig",
    "RoIConfig",
    "MaskHeadConfig",
    "ClassifierConfig",
    "InferenceConfig",
    "DataConfig",
    "TrainConfig",
    "MNCConfig",
    "PRESETS",
    "get_preset",
    "check_config",
    "override",
    "shortened",
    "shapes_cpu",
    "voc_vgg16_paper",
    "voc_1gpu_hour",
    "voc_resnet50",
]


@dataclass
class BackboneConfig:
    name: str = "vgg16"  # "tiny" (shapes), "vgg16" (paper), "resnet50" (C4 trunk)
    tiny_channels: tuple[int, ...] = (32, 64, 96)  # tiny CNN: channels of its 3 stages (stride 8)
    # ImageNet weights via torchvision's weights API when online [paper §4: ImageNet init]
    pretrained: bool = True
    weights_path: str | None = None  # a local .pth state_dict instead of downloading
    # VGG-16 convs kept fixed: conv1_1..conv2_2 [code: train.prototxt lr_mult 0]
    frozen_layers: int = 4


@dataclass
class RPNConfig:
    # anchors [code: MNC/lib/transform/anchors.py, generate_anchors]
    anchor_base_size: int = 16  # side of the reference anchor, pixels
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    anchor_scales: tuple[float, ...] = (8, 16, 32)  # side = base * scale: 128, 256, 512 px
    conv_channels: int = 512  # 3x3 conv on conv5_3 [code] rpn_conv_3x3
    # anchor labels and sampling [code: MNC/lib/mnc_config.py]
    positive_iou: float = 0.7  # [code] TRAIN.RPN_POSITIVE_OVERLAP
    negative_iou: float = 0.3  # [code] TRAIN.RPN_NEGATIVE_OVERLAP
    batch_size: int = 256  # anchors sampled per image [paper; code TRAIN.RPN_BATCHSIZE]
    positive_fraction: float = 0.5  # [code] TRAIN.RPN_FG_FRACTION
    box_loss_beta: float = 1.0 / 9  # SmoothL1 sigma 3 -> quadratic below 1/9 [code] rpn_loss_bbox
    nms_iou: float = 0.7  # [paper; code RPN_NMS_THRESH]
    pre_nms_top_n_train: int = 12000  # [code] RPN_PRE_NMS_TOP_N
    post_nms_top_n_train: int = 300  # [paper "top 300"; code mnc_5stage.yml]
    pre_nms_top_n_test: int = 6000  # [code]
    post_nms_top_n_test: int = 300  # [paper; code]
    min_size: float = 16.0  # pixels at the original image scale [code] RPN_MIN_SIZE


@dataclass
class RoIConfig:
    batch_size: int = 64  # RoIs per image for stages 2-3 [paper; code TRAIN.BATCH_SIZE]
    fg_fraction: float = 0.3  # [code] TRAIN.FG_FRACTION (19 of 64)
    fg_iou: float = 0.5  # box IoU of a foreground RoI [paper; code FG_THRESH]
    bg_iou_low: float = 0.1  # "hard" background: IoU in [0.1, 0.5) [code BG_THRESH_LO]
    hard_bg_fraction: float = 0.85  # share of the background from [bg_iou_low, fg_iou) [code]
    # RoI feature side P after warping + pooling [paper: 14x14 on conv5_3, stage 2]
    output_size: int = 14
    # warp to P*2 then 2x2 max pool [code: train.prototxt, 28 -> 14]; 1 = warp straight to P
    warp_pool: int = 2
    append_gt_boxes: bool = True  # ground-truth boxes join the proposals in training [code]


@dataclass
class MaskHeadConfig:
    mask_size: int = 28  # m [paper]; the code uses 21 (MASK_SIZE)
    hidden_dim: int = 256  # fc before the m*m logits [paper; code fc6_maskest]
    loss_weight: float = 1.0  # [paper: all 1]; the code weights the mask loss 2
    target_threshold: float = 0.4  # binarise resized targets [code BINARIZE_THRESH]


@dataclass
class ClassifierConfig:
    fc_dim: int = 4096  # fc6/fc7 of each pathway [paper]
    pathway_pool: int = 2  # 14x14 -> 7x7 max pool before fc6 [code]; 1 = none
    # mask-level positives need mask IoU >= 0.5 [paper; code FG_SEG_THRESH]
    mask_iou_fg: float = 0.5
    # Stage-3 box-delta weights: the code divides its targets by BBOX_NORMALIZE_STDS
    # (0.1, 0.1, 0.2, 0.2) with means 0, the same as multiplying by these weights
    # [code: MNC/lib/mnc_config.py, MNC/experiments/cfgs/VGG16/mnc_5stage.yml].
    # Stage 1 regresses raw deltas (boxes.RPN_BOX_WEIGHTS).
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_loss_beta: float = 1.0  # SmoothL1 sigma 1 [code]
    # The stage-3 losses' gradient reaches the stage-2 mask only through RoIs whose mask-level
    # label is foreground [code mask_layer.py backward]; False: through every RoI [paper: the
    # loss is differentiable in the mask of all RoIs]. docs/paper_vs_code.md, section
    # "Stages 2 and 3: RoI warping, masks and classes".
    mask_grad_fg_only: bool = False


@dataclass
class InferenceConfig:
    num_stages: int = 5  # always 5 stages, even after 3-stage training [paper §6]
    nms_iou: float = 0.3  # per-class NMS on box IoU [paper; code MASK_MERGE_NMS_THRESH]
    detections_per_image: int = 100  # [code max_per_image]
    score_threshold: float = 0.0  # no absolute threshold in evaluation [code thresh=-inf]
    mask_voting: bool = True  # [paper: about +1 mAP^r]
    vote_iou: float = 0.5  # voters: box IoU >= 0.5 [paper; code MASK_MERGE_IOU_THRESH]
    mask_threshold: float = 0.4  # binarise voted / pasted masks [code BINARIZE_THRESH]


@dataclass
class DataConfig:
    dataset: str = "voc"  # "shapes" (VOC layout, generated) or "voc" / "sbd"
    # holds benchmark_RELEASE/ (SBD), see `python -m mnc_teach download sbd --root data`
    root: str = "data"
    train_split: str = "mnc_train"  # MNC's SBD re-split: 5,623 images [code VOCdevkitSDS/train.txt]
    val_split: str = "mnc_val"  # 5,732 images [code]; make them with data.voc.make_mnc_split
    # annotation format for "voc"/"sbd": "voc" (PNGs) or "sbd" (.mat) [code: SBD]
    format: str = "sbd"
    min_size: int = 600  # short side [paper; code TRAIN.SCALES]
    max_size: int = 1000  # [code MAX_SIZE]
    flip: bool = True  # horizontal flips [code USE_FLIPPED]
    num_workers: int = 2
    # micro-batches of one orientation (landscape / portrait) [code ASPECT_GROUPING,
    # MNC/lib/pylayer/mnc_data_layer.py]; no effect with 1 image per batch or square images
    group_by_aspect: bool = False


@dataclass
class TrainConfig:
    seed: int = 3  # [code RNG_SEED]
    images_per_batch: int = 1  # per step [code IMS_PER_BATCH]
    accumulate: int = 8  # gradient accumulation [code iter_size 8]; the paper uses 8 GPUs x 1 image
    max_steps: int = 40000  # optimiser steps [paper: 32k + 8k]; the code stops at 25k
    # "sgd" with momentum [paper; code] or "adamw" (the shapes preset: from scratch, see there)
    optimizer: str = "sgd"
    lr: float = 1e-3  # [paper; code base_lr]
    lr_steps: tuple[int, ...] = (32000,)  # x gamma at each [paper]; the code steps at 20k
    gamma: float = 0.1  # [code]
    warmup_steps: int = 0  # linear warm-up from lr * warmup_factor (not in MNC; small batches)
    warmup_factor: float = 0.1
    momentum: float = 0.9  # [code solver.prototxt]
    weight_decay: float = 5e-4  # [code]
    grad_clip_norm: float | None = None  # optional global-norm clipping (not in MNC)
    amp: bool = True  # mixed precision, used only on CUDA
    # torch intra-op threads while training on a CPU (None: torch's default)
    cpu_threads: int | None = None
    checkpoint_every: int = 1000  # steps between checkpoints (plus one at the end)
    log_every: int = 20  # steps between logged loss lines / dashboard updates
    val_every: int = 0  # steps between validation-loss evaluations (0 = never)


@dataclass
class MNCConfig:
    preset: str = "custom"
    num_classes: int = 20  # foreground classes K (VOC) [code num_classes 21 incl. background]
    num_stages: int = 5  # training cascade: 3 or 5 [paper: 5-stage is best]
    detach_boxes: bool = False  # True stops the gradient at the box coordinates [paper: False]
    # clamp box gradients reaching the deltas [code clip_base 512]; the paper is silent;
    # None = exact
    box_grad_clip: float | None = 1 / 512
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)
    mask: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_config(self)  # every way a config is made (presets, override, from_dict) checks it

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-friendly), as stored in checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MNCConfig:
        """Inverse of :meth:`to_dict`; tuples come back as tuples."""
        return _from_dict(cls, values)


def _from_dict(cls, values: dict[str, Any], prefix: str = ""):
    if not isinstance(values, dict):
        raise ValueError(
            f"config{' section ' + prefix.rstrip('.') if prefix else ''} is of type "
            f"{type(values).__name__}; expected a dict of settings (MNCConfig.to_dict())"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            value = _from_dict(type(default), value, f"{prefix}{f.name}.")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


# ----------------------------------------------------------------------------- checks

_NUMBER_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _type_problem(value: Any, annotation: str) -> str | None:
    """Why ``value`` does not fit a field annotated ``annotation`` (e.g. ``"float | None"``,
    ``"tuple[int, ...]"``), or None when it fits. An int fits a float; a bool fits only bool."""
    options = [part.strip() for part in annotation.split(" | ")]
    if value is None:
        return None if "None" in options else "None"
    for option in options:
        if option.startswith("tuple["):
            if not isinstance(value, tuple):
                continue
            items = [item.strip() for item in option[len("tuple["):-1].split(",")]
            if items[-1] == "...":
                item_types, ok_length = [items[0]] * len(value), True
            else:
                item_types, ok_length = items, len(items) == len(value)
            pairs = zip(value, item_types, strict=True) if ok_length else ()
            if ok_length and all(_type_problem(v, t) is None for v, t in pairs):
                return None
        elif option in _NUMBER_TYPES:
            allowed = _NUMBER_TYPES[option]
            if isinstance(value, allowed) and (option == "bool" or not isinstance(value, bool)):
                return None
    return f"{value!r} ({type(value).__name__})"


def _positive(x: Any) -> bool:
    return x > 0 and math.isfinite(x)


def _all_positive(values: tuple) -> bool:
    return len(values) >= 1 and all(map(_positive, values))


# (test, what it must be, the settings it holds for): the values a type cannot express.
_RULES: list[tuple[Callable[[Any], bool], str, tuple[str, ...]]] = [
    (lambda x: x >= 1, ">= 1", (
        "num_classes", "rpn.anchor_base_size", "rpn.conv_channels", "rpn.batch_size",
        "rpn.pre_nms_top_n_train", "rpn.post_nms_top_n_train", "rpn.pre_nms_top_n_test",
        "rpn.post_nms_top_n_test", "roi.batch_size", "roi.output_size", "roi.warp_pool",
        "mask.mask_size", "mask.hidden_dim", "classifier.fc_dim", "classifier.pathway_pool",
        "inference.detections_per_image", "data.min_size", "data.max_size",
        "train.images_per_batch", "train.accumulate", "train.max_steps",
        "train.checkpoint_every", "train.log_every",
    )),
    (lambda x: x >= 0, ">= 0", (
        "backbone.frozen_layers", "rpn.box_loss_beta", "rpn.min_size", "mask.loss_weight",
        "classifier.box_loss_beta", "data.num_workers", "train.warmup_steps",
        "train.weight_decay", "train.val_every",
    )),
    (_positive, "> 0 (and finite)", ("train.lr", "train.gamma")),
    (lambda x: x is None or _positive(x), "None or > 0", (
        "box_grad_clip", "train.grad_clip_norm",
    )),
    (lambda x: x is None or x >= 1, "None or >= 1", ("train.cpu_threads",)),
    (lambda x: 0 <= x <= 1, "in [0, 1]", (
        "rpn.positive_iou", "rpn.negative_iou", "roi.fg_iou", "roi.bg_iou_low",
        "roi.hard_bg_fraction", "mask.target_threshold", "classifier.mask_iou_fg",
        "inference.vote_iou", "inference.mask_threshold",
    )),
    (lambda x: 0 < x <= 1, "in (0, 1]", (
        "rpn.positive_fraction", "rpn.nms_iou", "roi.fg_fraction", "inference.nms_iou",
        "train.warmup_factor",
    )),
    (lambda x: 0 <= x < 1, "in [0, 1)", ("train.momentum",)),
    (lambda x: x in (3, 5), "3 or 5", ("num_stages", "inference.num_stages")),
    (_all_positive, "one or more values > 0", (
        "rpn.anchor_ratios", "rpn.anchor_scales", "classifier.box_weights",
    )),
    (lambda x: len(x) == 3 and min(x) >= 1, "3 channel counts >= 1", ("backbone.tiny_channels",)),
    (lambda x: min(x, default=0) >= 0, "steps >= 0", ("train.lr_steps",)),
    (lambda x: x in ("tiny", "vgg16", "resnet50"), "tiny, vgg16 or resnet50", ("backbone.name",)),
    (lambda x: x in ("shapes", "voc", "sbd"), "shapes, voc or sbd", ("data.dataset",)),
    (lambda x: x in ("voc", "sbd"), "voc or sbd", ("data.format",)),
    (lambda x: x in ("sgd", "adamw"), "sgd or adamw", ("train.optimizer",)),
]
# (low, high): pairs of settings in order
_ORDERED = [("rpn.negative_iou", "rpn.positive_iou"), ("roi.bg_iou_low", "roi.fg_iou"),
            ("data.min_size", "data.max_size")]


def _settings(cfg: Any, prefix: str = ""):
    """``(dotted name, value, annotation)`` of every leaf setting of ``cfg``."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _settings(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, str(f.type)


def check_config(cfg: MNCConfig) -> None:
    """Raise ``ValueError`` naming the first setting of the wrong type or out of range, e.g.
    ``train.max_steps is -5; expected >= 1``. Runs whenever an :class:`MNCConfig` is made."""
    values = {}
    for name, value, annotation in _settings(cfg):
        problem = _type_problem(value, annotation)
        if problem is not None:
            raise ValueError(f"setting {name} is {problem}; expected {annotation}")
        values[name] = value
    for test, expected, names in _RULES:
        for name in names:
            if not test(values[name]):
                raise ValueError(f"setting {name} is {values[name]!r}; expected {expected}")
    for low, high in _ORDERED:
        if values[low] > values[high]:
            raise ValueError(
                f"setting {low} ({values[low]}) is above {high} ({values[high]}); "
                f"expected {low} <= {high}"
            )


def override(cfg: MNCConfig, dotted_name: str, value: Any) -> MNCConfig:
    """A copy of ``cfg`` with one (possibly nested) field replaced:
    ``override(cfg, "train.lr", 0.01)``."""
    head, _, rest = dotted_name.partition(".")
    if not any(f.name == head for f in dataclasses.fields(cfg)):
        names = ", ".join(f.name for f in dataclasses.fields(cfg))
        raise KeyError(f"{type(cfg).__name__} has no field {head!r}; fields: {names}")
    if rest:
        return dataclasses.replace(cfg, **{head: override(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: value})


def shortened(cfg: MNCConfig, steps: int) -> MNCConfig:
    """``cfg`` trained for ``steps`` optimiser steps (at most its own ``max_steps``): the lr drops
    and the warm-up scaled by ``steps / max_steps``, a checkpoint at the end, at most three
    validations. Notebooks and benchmarks use it for short runs of a preset."""
    t = cfg.train
    steps = min(steps, t.max_steps)
    scale = steps / t.max_steps
    train = dataclasses.replace(
        t,
        max_steps=steps,
        lr_steps=tuple(max(1, round(s * scale)) for s in t.lr_steps),
        warmup_steps=round(t.warmup_steps * scale),
        checkpoint_every=steps,
        val_every=max(1, steps // 3) if t.val_every else 0,
        log_every=max(1, min(t.log_every, steps // 4)),
    )
    return dataclasses.replace(cfg, train=train)


def shapes_cpu() -> MNCConfig:
    """The CPU track: 128 x 128 synthetic shapes, a tiny CNN from scratch, minutes on 2 cores.

    The paper's recipe scaled to the data: stride 8 instead of 16 with anchors of 16-64 px,
    fewer proposals and RoIs (an image holds at most 5 objects), 256-d instead of 4096-d fcs,
    a larger batch, and AdamW instead of SGD. The network starts from scratch and its fc
    mask head has 784 outputs, each seeing 1/784 of the mean per-pixel loss's gradient; with
    SGD it barely learns masks on a CPU budget (README.md, "Command line", gives the measured
    mAP^r of both). The paper presets use SGD.
    """
    return MNCConfig(
        preset="shapes-cpu",
        num_classes=3,
        num_stages=5,
        backbone=BackboneConfig(name="tiny", tiny_channels=(32, 48, 64), pretrained=False),
        rpn=RPNConfig(
            anchor_base_size=8,
            anchor_scales=(2, 4, 8),  # sides 16, 32, 64 px: the shapes are 20-70 px wide
            conv_channels=128,
            batch_size=128,
            pre_nms_top_n_train=600,
            post_nms_top_n_train=100,
            pre_nms_top_n_test=600,
            post_nms_top_n_test=100,
            min_size=4.0,
        ),
        # 7 x 7 RoI features warped directly (pool 1, as the code's test-time stage 4):
        # 4x fewer samples
        roi=RoIConfig(batch_size=16, fg_fraction=0.5, output_size=7, warp_pool=1),
        mask=MaskHeadConfig(mask_size=28, hidden_dim=256),
        classifier=ClassifierConfig(fc_dim=256, pathway_pool=1),
        inference=InferenceConfig(),
        data=DataConfig(
            dataset="shapes",
            root="data/shapes",
            train_split="train",
            val_split="val",
            format="voc",
            min_size=128,
            max_size=128,
            num_workers=0,
        ),
        train=TrainConfig(
            seed=0,
            images_per_batch=8,
            accumulate=1,
            max_steps=600,  # 4.8 epochs of the 1,000 training images
            optimizer="adamw",
            lr=1e-3,
            lr_steps=(450, 550),
            warmup_steps=50,
            weight_decay=1e-4,
            grad_clip_norm=10.0,
            # this model's tensors are small: a second thread mostly waits and slows a step
            # down (measured: README.md, "Command line")
            cpu_threads=1,
            checkpoint_every=250,
            log_every=25,
            val_every=250,
        ),
    )


def voc_vgg16_paper() -> MNCConfig:
    """The paper: VGG-16, SBD train (5,623 images), 5-stage end-to-end training, lr 1e-3 for
    32k then 1e-4 for 8k steps of 8 images (1 image x 8 accumulated here); docs/paper_vs_code.md,
    section "Training schedule and optimiser"."""
    return MNCConfig(preset="voc-vgg16-paper", backbone=BackboneConfig(name="vgg16"))


def voc_1gpu_hour() -> MNCConfig:
    """The paper's VGG-16 recipe cut to about one GPU-hour: 10,000 steps of 8 images (80,000
    images, 14 epochs of MNC's 5,623 training images) instead of 40,000, the lr drop at 75 %
    as the paper's 32k of 40k, 2 images x 4 accumulated per step, 4 loader workers.

    The hour is an ESTIMATE, not a measurement (no GPU was lent when this preset was written):
    80,000 images at 28 images/s (the training speed the VOC track aims for with AMP) take
    48 minutes. Notebook 09 prints the measured images/s and ETA of your card.
    """
    cfg = voc_vgg16_paper()
    return dataclasses.replace(
        cfg,
        preset="voc-1gpu-hour",
        data=dataclasses.replace(cfg.data, num_workers=4),
        train=dataclasses.replace(
            cfg.train, max_steps=10_000, lr_steps=(7_500,), images_per_batch=2, accumulate=4,
            checkpoint_every=500, log_every=20, val_every=1_000,
        ),
    )


def voc_resnet50() -> MNCConfig:
    """The paper's recipe on a ResNet-50 C4 trunk (stride 16, 1024 channels). The code's note:
    5-stage ResNet-50 training needs more than 12 GB of GPU memory (MNC issues #16, #37)."""
    return MNCConfig(
        preset="voc-resnet50",
        backbone=BackboneConfig(name="resnet50", frozen_layers=1),
        rpn=RPNConfig(conv_channels=512),
        classifier=ClassifierConfig(fc_dim=1024),
    )


PRESETS = {
    "shapes-cpu": shapes_cpu,
    "voc-vgg16-paper": voc_vgg16_paper,
    "voc-1gpu-hour": voc_1gpu_hour,
    "voc-resnet50": voc_resnet50,
}


def get_preset(name: str) -> MNCConfig:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
