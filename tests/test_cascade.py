"""The whole cascade: output shapes and loss keys (3 and 5 stages), the detach_boxes switch,
overfitting one shapes image (every loss term falls), and inference shortcuts (the
no-gradient max pool, the truncated SVD of fc6/fc7) keeping the detections."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mnc_teach.boxes import masks_to_boxes
from mnc_teach.cascade import MNC, batch_images, build_mnc, refine_boxes
from mnc_teach.config import override, shapes_cpu
from mnc_teach.engine.loop import make_optimizer
from mnc_teach.stage3_classify import compress_fc_layers
from mnc_teach.structures import empty_target

STAGE_123_KEYS = {
    "loss_rpn_obj",
    "loss_rpn_box",
    "loss_mask",
    "loss_cls_mask",
    "loss_cls_box",
    "loss_box_reg",
}
STAGE_45_KEYS = {"loss_mask_s4", "loss_cls_mask_s5", "loss_cls_box_s5", "loss_box_reg_s5"}


def small_config(num_stages: int = 5, **changes):
    """shapes-cpu with narrower layers, so a step takes milliseconds."""
    cfg = shapes_cpu()
    cfg = dataclasses.replace(cfg, num_stages=num_stages, **changes)
    cfg = override(cfg, "backbone.tiny_channels", (8, 16, 16))
    cfg = override(cfg, "rpn.conv_channels", 16)
    cfg = override(cfg, "mask.hidden_dim", 32)
    cfg = override(cfg, "classifier.fc_dim", 32)
    return cfg


def square_scene(size: int = 64) -> tuple[torch.Tensor, dict]:
    """One image with a bright square (class 2) and a darker disc (class 1)."""
    image = torch.full((3, size, size), 0.2)
    masks = torch.zeros((2, size, size), dtype=torch.uint8)
    masks[0, 8:30, 10:34] = 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks[1] = (((yy - 44) ** 2 + (xx - 40) ** 2) <= 12**2).to(torch.uint8)
    masks[1] &= 1 - masks[0]
    image[:, masks[0].bool()] = torch.tensor([0.9, 0.8, 0.1])[:, None]
    image[:, masks[1].bool()] = torch.tensor([0.1, 0.3, 0.9])[:, None]
    target = {
        "boxes": masks_to_boxes(masks),
        "labels": torch.tensor([2, 1]),
        "masks": masks,
        "ignore": torch.zeros((size, size), dtype=torch.uint8),
        "image_id": "square_and_disc",
    }
    return image, target


@pytest.mark.parametrize("num_stages", [3, 5])
def test_training_losses_and_intermediate_shapes(num_stages: int) -> None:
    torch.manual_seed(0)
    cfg = small_config(num_stages)
    model = build_mnc(cfg).train()
    image, target = square_scene()
    detections, losses, inter = model(
        [image, image.flip(-1)], [target, target], return_intermediates=True
    )
    expected = STAGE_123_KEYS | (STAGE_45_KEYS if num_stages == 5 else set())
    assert detections == [] and set(losses) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    k, m, p = cfg.num_classes, cfg.mask.mask_size, cfg.roi.output_size
    channels = model.backbone.out_channels
    assert inter.features.shape == (2, channels, 8, 8)  # 64 / stride 8
    assert inter.rpn.objectness_logits.shape == (2, 8 * 8 * 9)
    assert inter.rpn.anchor_deltas.shape == (2, 8 * 8 * 9, 4)
    for stages in [inter.stages_23] + ([inter.stages_45] if num_stages == 5 else []):
        r = stages.rois.shape[0]
        assert stages.rois.shape == (r, 5) and r == sum(b.shape[0] for b in stages.boxes)
        assert stages.roi_features.shape == (r, channels, p, p)
        assert stages.mask_logits.shape == (r, m, m) and stages.mask_targets.shape == (r, m, m)
        assert stages.mask_cls_logits.shape == (r, k + 1)
        assert stages.box_cls_logits.shape == (r, k + 1)
        assert stages.box_deltas.shape == (r, 4 * (k + 1))
        # mask-level foreground is a subset of box-level foreground, with the same class
        fg = stages.mask_labels > 0
        assert torch.equal(stages.mask_labels[fg], stages.box_labels[fg])
    assert (inter.stages_45 is None) == (num_stages == 3)


@pytest.mark.parametrize("inference_stages", [3, 5])
def test_inference_detections(inference_stages: int) -> None:
    torch.manual_seed(0)
    cfg = override(small_config(), "inference.num_stages", inference_stages)
    model = build_mnc(cfg).eval()
    image, target = square_scene()
    with torch.no_grad():
        detections, losses, inter = model([image, image[:, :40, :50]], return_intermediates=True)
    assert losses == {}
    for det, (h, w) in zip(detections, [(64, 64), (40, 50)], strict=True):
        d = det["boxes"].shape[0]
        assert 0 < d <= cfg.inference.detections_per_image
        assert det["masks"].shape == (d, 1, h, w)
        assert det["labels"].shape == det["scores"].shape == (d,)
        assert det["labels"].min() >= 1 and det["labels"].max() <= cfg.num_classes
        assert det["masks"].min() >= 0 and det["masks"].max() <= 1
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
    assert (inter.stages_45 is not None) == (inference_stages == 5)
    # eval mode with targets: validation losses, reproducible (fixed sampling seed)
    with torch.no_grad():
        _, val_losses_a = model([image], [target])
        _, val_losses_b = model([image], [target])
    assert set(val_losses_a) == STAGE_123_KEYS | STAGE_45_KEYS
    assert all(torch.equal(val_losses_a[k], val_losses_b[k]) for k in val_losses_a)


def assert_same_detections(found: list[dict], expected: list[dict]) -> None:
    for det, ref in zip(found, expected, strict=True):
        assert torch.equal(det["labels"], ref["labels"])
        for key in ("boxes", "scores", "masks"):
            assert torch.allclose(det[key], ref[key], rtol=1e-4, atol=1e-5), key


def test_inference_without_gradient_keeps_the_detections() -> None:
    """Under no_grad the classifier's 2 x 2 max pool takes its fast path (the maximum of 4
    strided views); with gradient enabled it is max_pool2d: the same detections."""
    torch.manual_seed(0)
    cfg = override(small_config(), "roi.output_size", 8)
    cfg = override(cfg, "classifier.pathway_pool", 2)
    model = build_mnc(cfg).eval()
    image, _ = square_scene()
    with torch.no_grad():
        fast, _ = model([image, image.flip(-1)])
    with torch.enable_grad():  # parameters require gradients: max_pool2d
        reference, _ = model([image, image.flip(-1)])
    assert fast[0]["boxes"].shape[0] > 0
    assert_same_detections(fast, reference)


def test_compressed_model_keeps_the_detections_of_weights_of_that_rank() -> None:
    """compress_fc_layers on an MNC whose fc6 / fc7 weights have rank 6: a rank-6 truncated
    SVD is exact, so the detections stay (up to float32 rounding)."""
    torch.manual_seed(0)
    model = build_mnc(small_config()).eval()
    with torch.no_grad():
        for pathway in (model.classifier.mask_pathway, model.classifier.box_pathway):
            for layer in (pathway[0], pathway[2]):
                u, s, vh = torch.linalg.svd(layer.weight, full_matrices=False)
                layer.weight.copy_(u[:, :6] @ torch.diag(s[:6]) @ vh[:6])
    image, _ = square_scene()
    with torch.no_grad():
        before, _ = model([image])
        compress_fc_layers(model, fc6_rank=6, fc7_rank=6)
        after, _ = model([image])
    assert isinstance(model.classifier.box_pathway[2], torch.nn.Sequential)
    assert_same_detections(after, before)


def test_image_without_instances_trains() -> None:
    torch.manual_seed(0)
    model = build_mnc(small_config()).train()
    image, _ = square_scene()
    _, losses = model([image], [empty_target(64, 64)])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def box_gradient(
    detach_boxes: bool, num_stages: int, box_grad_clip: float | None = None
) -> torch.Tensor:
    """Gradient of the stage-2+ losses with respect to the RPN's box deltas (it can only come
    through the proposal boxes: the RPN's own losses are left out)."""
    torch.manual_seed(0)
    cfg = small_config(num_stages, detach_boxes=detach_boxes, box_grad_clip=box_grad_clip)
    model = build_mnc(cfg).train()
    image, target = square_scene()
    _, losses, inter = model([image], [target], return_intermediates=True)
    later = sum(v for k, v in losses.items() if not k.startswith("loss_rpn"))
    (grad,) = torch.autograd.grad(later, inter.rpn.anchor_deltas, allow_unused=True)
    return torch.zeros(1) if grad is None else grad


@pytest.mark.parametrize("num_stages", [3, 5])
def test_detach_boxes_switch(num_stages: int) -> None:
    assert box_gradient(detach_boxes=False, num_stages=num_stages).abs().sum() > 0
    assert box_gradient(detach_boxes=True, num_stages=num_stages).abs().sum() == 0


def test_box_gradient_clip_bounds_the_gradient_reaching_the_deltas() -> None:
    exact = box_gradient(detach_boxes=False, num_stages=3, box_grad_clip=None)
    clipped = box_gradient(detach_boxes=False, num_stages=3, box_grad_clip=1e-6)
    assert exact.abs().max() > 1e-5  # large enough for the clip to matter
    assert clipped.abs().max() <= 1e-6 + 1e-12 and clipped.abs().max() > 0


def stage3_mask_gradient(mask_grad_fg_only: bool) -> tuple[torch.Tensor, ...]:
    """The gradient of the stage-3 losses (L3) with respect to the stage-2 mask logits, per
    RoI (the gradient's norm), with the mask-level labels and the losses."""
    torch.manual_seed(0)
    cfg = override(small_config(3), "classifier.mask_grad_fg_only", mask_grad_fg_only)
    model = build_mnc(cfg).train()
    image, target = square_scene()
    _, losses, inter = model([image], [target], return_intermediates=True)
    l3 = losses["loss_cls_mask"] + losses["loss_cls_box"] + losses["loss_box_reg"]
    (grad,) = torch.autograd.grad(l3, inter.stages_23.mask_logits)
    return grad.flatten(1).norm(dim=1), inter.stages_23.mask_labels, losses


def test_mask_grad_fg_only_gates_the_stage3_gradient_into_background_masks() -> None:
    """[code: mask_layer.py, backward]: with the option, L3 reaches the mask logits of the
    mask-level foreground RoIs only; without it (the paper), of every RoI. The forward pass,
    and so every loss, is the same either way."""
    gated, labels, gated_losses = stage3_mask_gradient(mask_grad_fg_only=True)
    full, labels_off, full_losses = stage3_mask_gradient(mask_grad_fg_only=False)
    assert torch.equal(labels, labels_off)
    fg = labels > 0
    assert fg.any() and (~fg).any()  # the scene has both kinds of RoI
    assert (gated[~fg] == 0).all() and (gated[fg] > 0).all()
    assert (full[~fg] > 0).all() and (full[fg] > 0).all()
    assert torch.allclose(gated[fg], full[fg])
    assert all(torch.equal(gated_losses[k], full_losses[k]) for k in full_losses)


def test_refine_boxes_uses_best_foreground_class() -> None:
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    # background is highest; class 2 is the best foreground
    mask_cls_logits = torch.tensor([[5.0, 0.0, 2.0]])
    deltas = torch.zeros(1, 12)
    deltas[0, 8] = 1.0  # class 2: dx = 1 / 10 (weight 10) -> shift by 0.1 * width = 2 px
    refined = refine_boxes(
        mask_cls_logits, deltas, boxes, image_size=(64, 64), weights=(10.0, 10.0, 5.0, 5.0)
    )
    assert torch.allclose(refined, torch.tensor([[12.0, 10.0, 32.0, 30.0]]))


def test_settings_come_from_the_config_and_drive_the_model() -> None:
    """build_mnc copies the config into the model's settings; the model reads only those, so
    changing them changes what it does (inference with 3 stages: no stage-4/5 outputs)."""
    cfg = small_config(5)
    model = build_mnc(cfg).eval()
    assert model.num_stages == 5 and model.num_classes == cfg.num_classes
    assert model.roi_sampling.batch_size == cfg.roi.batch_size
    assert model.loss_settings.mask_target_threshold == cfg.mask.target_threshold
    assert model.inference.detections_per_image == cfg.inference.detections_per_image
    assert model.box_weights == cfg.classifier.box_weights
    image, _ = square_scene()
    model.inference = dataclasses.replace(model.inference, num_stages=3, detections_per_image=2)
    with torch.no_grad():
        (det,), _, inter = model([image], return_intermediates=True)
    assert inter.stages_45 is None and inter.refined_boxes == []
    assert det["scores"].shape[0] <= 2


def test_state_dict_keys_keep_the_checkpoint_names() -> None:
    """Old checkpoints load: the mask-level classifier is still ``classifier.cls_score``."""
    keys = set(build_mnc(small_config()).state_dict())
    assert {"classifier.cls_score.weight", "classifier.box_cls_score.weight"} <= keys
    assert {"classifier.box_pred.weight", "mask_head.mask_logits.weight"} <= keys
    assert {"rpn.head.objectness.weight", "rpn.head.deltas.weight"} <= keys


def test_batch_images_pads_to_stride() -> None:
    batch, sizes = batch_images([torch.ones(3, 20, 30), torch.ones(3, 33, 10)], stride=8)
    assert batch.shape == (2, 3, 40, 32) and sizes == [(20, 30), (33, 10)]
    assert batch[0, :, 20:].abs().sum() == 0 and batch[1, :, :33, :10].min() == 1


def test_train_mode_needs_targets() -> None:
    model = build_mnc(small_config()).train()
    with pytest.raises(ValueError, match="model.eval"):
        model([torch.zeros(3, 32, 32)])


def test_overfit_one_image() -> None:
    """The full 5-stage cascade fits one image: every loss term halves within 200 steps
    (with the shapes-cpu preset's optimiser)."""
    torch.manual_seed(0)
    cfg = small_config(5)
    model: MNC = build_mnc(cfg).train()
    image, target = square_scene()
    optimizer = make_optimizer(model, cfg.train)
    history = []
    for _ in range(200):
        _, losses = model([image], [target])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first = {k: sum(h[k] for h in history[:5]) / 5 for k in history[0]}
    last = {k: sum(h[k] for h in history[-5:]) / 5 for k in history[0]}
    falls = {k: (round(first[k], 4), round(last[k], 4)) for k in first}
    assert all(last[k] < 0.5 * first[k] for k in first), falls
    model.eval()
    with torch.no_grad():
        (det,), _ = model([image])
    best = det["scores"].argmax()
    assert det["scores"][best] > 0.5
