"""Tests for mnc_teach/config.py: presets, the dict round trip of checkpoints, and override()."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from mnc_teach.anchors import generate_base_anchors
from mnc_teach.config import PRESETS, MNCConfig, get_preset, override, shapes_cpu


def tuple_fields(obj, prefix=""):
    """Dotted names of every tuple-valued field of a (nested) config."""
    names = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            names += tuple_fields(value, f"{prefix}{f.name}.")
        elif isinstance(value, tuple):
            names.append(f"{prefix}{f.name}")
    return names


def get_dotted(obj, name):
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_name_themselves(name):
    cfg = get_preset(name)
    assert isinstance(cfg, MNCConfig)
    assert cfg.preset == name
    assert cfg.num_stages in (3, 5)
    assert cfg.backbone.name in ("tiny", "vgg16", "resnet50")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="shapes-cpu"):
        get_preset("nope")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_through_json_keeps_tuples(name):
    cfg = get_preset(name)
    values = json.loads(json.dumps(cfg.to_dict()))  # what a checkpoint stores: tuples become lists
    restored = MNCConfig.from_dict(values)
    assert restored == cfg
    names = tuple_fields(cfg)
    assert "rpn.anchor_scales" in names and "train.lr_steps" in names
    for field_name in names:
        assert isinstance(get_dotted(restored, field_name), tuple), field_name


def test_from_dict_fills_missing_fields_with_defaults():
    restored = MNCConfig.from_dict({"num_classes": 7, "train": {"lr": 0.5}})
    assert restored.num_classes == 7 and restored.train.lr == 0.5
    assert restored.train.momentum == MNCConfig().train.momentum
    assert restored.rpn == MNCConfig().rpn


def test_override_nested_and_top_level_copies():
    cfg = shapes_cpu()
    changed = override(cfg, "train.max_steps", 7)
    assert changed.train.max_steps == 7
    assert cfg.train.max_steps != 7  # the original is untouched
    assert changed.rpn == cfg.rpn and changed.train.lr == cfg.train.lr
    assert override(cfg, "num_classes", 1).num_classes == 1
    assert override(cfg, "rpn.anchor_scales", (1, 2)).rpn.anchor_scales == (1, 2)


@pytest.mark.parametrize("dotted", ["trian.lr", "train.learning_rate", "nope"])
def test_override_unknown_key_is_an_error_naming_it(dotted):
    bad = dotted.rsplit(".", 1)[-1] if dotted.startswith("train.") else dotted.split(".")[0]
    with pytest.raises(KeyError, match=bad):
        override(shapes_cpu(), dotted, 1)


def test_shapes_anchor_sides_are_as_commented():
    rpn = shapes_cpu().rpn
    square = (1.0,)
    anchors = generate_base_anchors(rpn.anchor_base_size, square, rpn.anchor_scales)
    sides = (anchors[:, 2] - anchors[:, 0]).tolist()
    assert sides == [16.0, 32.0, 64.0]  # "sides 16, 32, 64 px" in config.py


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("train.max_steps", -5, "setting train.max_steps is -5; expected >= 1"),
        ("train.lr", "fast", "setting train.lr is 'fast' (str); expected float"),
        ("train.lr", float("nan"), "setting train.lr is nan; expected > 0"),
        ("train.amp", 1, "setting train.amp is 1 (int); expected bool"),
        ("classifier.mask_grad_fg_only", 0, "mask_grad_fg_only is 0 (int); expected bool"),
        ("rpn.anchor_scales", (), "setting rpn.anchor_scales is (); expected one or more"),
        ("rpn.anchor_scales", (8, "x"), "setting rpn.anchor_scales is (8, 'x') (tuple)"),
        ("classifier.box_weights", (1.0, 1.0), "expected tuple[float, float, float, float]"),
        ("rpn.negative_iou", 0.8, "rpn.negative_iou (0.8) is above rpn.positive_iou (0.7)"),
        ("data.dataset", "coco", "setting data.dataset is 'coco'; expected shapes, voc or sbd"),
        ("num_stages", 4, "setting num_stages is 4; expected 3 or 5"),
    ],
)
def test_a_setting_of_the_wrong_type_or_range_is_refused_by_name(dotted, value, message):
    with pytest.raises(ValueError) as error:
        override(shapes_cpu(), dotted, value)
    assert message in str(error.value)


def test_mask_grad_fg_only_is_a_bool_off_by_default():
    """Off (the paper) in every preset; the official code's gating is one switch away."""
    assert not any(make().classifier.mask_grad_fg_only for make in PRESETS.values())
    cfg = override(shapes_cpu(), "classifier.mask_grad_fg_only", True)
    assert cfg.classifier.mask_grad_fg_only is True
    assert MNCConfig.from_dict(cfg.to_dict()).classifier.mask_grad_fg_only is True


def test_int_fits_a_float_setting_and_none_an_optional_one():
    cfg = override(override(shapes_cpu(), "train.lr", 1), "train.grad_clip_norm", None)
    assert cfg.train.lr == 1 and cfg.train.grad_clip_norm is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("shapes-cpu", "config is of type str; expected a dict of settings"),
        ({"train": [1, 2]}, "config section train is of type list"),
        ({"train": {"seed": "3"}}, "setting train.seed is '3' (str); expected int"),
    ],
)
def test_from_dict_refuses_a_malformed_config(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MNCConfig.from_dict(values)
