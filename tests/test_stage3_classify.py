"""Tests for mnc_teach/stage3_classify.py: mask pooling against an explicit resize, the head's
shapes and weight loading, mask-level labels against a brute-force full-image mask IoU, and
the losses against hand-computed values, the inference max pool against max_pool2d, and the
truncated-SVD compression of fc6/fc7 against torch.linalg.svdvals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnc_teach.stage2_masks import mask_targets
from mnc_teach.stage3_classify import (
    ClassifierHead,
    ClassifierOutput,
    _max_pool,
    classifier_losses,
    compress_fc_layers,
    mask_level_labels,
    mask_pool,
    truncated_svd_linear,
)

# --- mask pooling -----------------------------------------------------------------------------


def test_mask_pool_same_size_is_elementwise_product():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 6, 6, generator=gen, requires_grad=True)
    masks = torch.rand(3, 6, 6, generator=gen, requires_grad=True)
    pooled = mask_pool(features, masks)
    assert torch.allclose(pooled, features * masks[:, None])
    upstream = torch.randn(pooled.shape, generator=gen)
    pooled.backward(upstream)
    # MaskPooling backward [code]: features get upstream * M, the mask gets the sum over
    # channels of upstream * F
    assert torch.allclose(features.grad, upstream * masks[:, None].detach())
    assert torch.allclose(masks.grad, (upstream * features.detach()).sum(dim=1), atol=1e-5)


def test_mask_pool_resizes_the_mask_bilinearly():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 4, 7, 7, generator=gen)
    masks = torch.rand(2, 14, 14, generator=gen)
    # halving with bilinear, align_corners=False samples between 2 x 2 cells: their mean
    expected = features * F.avg_pool2d(masks[:, None], 2)
    assert torch.allclose(mask_pool(features, masks), expected, atol=1e-6)
    constant = torch.full((2, 21, 21), 0.25)  # MNC code: 21 x 21 mask on 14 x 14 features
    pooled = mask_pool(torch.ones(2, 4, 14, 14), constant)
    assert torch.allclose(pooled, torch.full((2, 4, 14, 14), 0.25))


# --- ClassifierHead ---------------------------------------------------------------------------


@pytest.mark.parametrize("roi_size, pathway_pool", [(6, 2), (7, 2), (5, 1)])
def test_classifier_head_shapes(roi_size, pathway_pool):
    head = ClassifierHead(
        in_channels=3, roi_size=roi_size, num_classes=4, fc_dim=16, pathway_pool=pathway_pool
    )
    out = head(torch.randn(5, 3, roi_size, roi_size), torch.rand(5, 9, 9))
    assert isinstance(out, ClassifierOutput)
    assert out.mask_cls_logits.shape == (5, 5) and out.box_cls_logits.shape == (5, 5)
    assert out.box_deltas.shape == (5, 20)


def test_classification_trains_stage_2_through_the_mask():
    head = ClassifierHead(in_channels=3, roi_size=4, num_classes=2, fc_dim=8)
    masks = torch.rand(2, 6, 6, requires_grad=True)
    features = torch.randn(2, 3, 4, 4, requires_grad=True)
    head(features, masks).mask_cls_logits.sum().backward()
    assert masks.grad.abs().sum() > 0 and features.grad.abs().sum() > 0


def test_load_fc_weights_initialises_both_pathways():
    # fc6 input 2 * 2 * 2 = 8
    head = ClassifierHead(in_channels=2, roi_size=4, num_classes=3, fc_dim=5)
    gen = torch.Generator().manual_seed(0)
    fc_state = {
        "fc6.weight": torch.randn(5, 8, generator=gen),
        "fc6.bias": torch.randn(5, generator=gen),
        "fc7.weight": torch.randn(5, 5, generator=gen),
        "fc7.bias": torch.randn(5, generator=gen),
    }
    head.load_fc_weights(fc_state)
    for pathway in (head.mask_pathway, head.box_pathway):
        for index, name in ((0, "fc6"), (2, "fc7")):
            assert torch.equal(pathway[index].weight, fc_state[f"{name}.weight"])
            assert torch.equal(pathway[index].bias, fc_state[f"{name}.bias"])
    # copies, not shared
    assert head.mask_pathway[0].weight.data_ptr() != head.box_pathway[0].weight.data_ptr()


@pytest.mark.parametrize("kernel, side", [(2, 14), (2, 7), (3, 10)])
def test_max_pool_equals_max_pool2d_with_and_without_gradient(kernel, side):
    gen = torch.Generator().manual_seed(kernel + side)
    # ReLU'd features: many tied zeros in a window, where the gradients of max_pool2d and
    # torch.maximum differ
    x = torch.randn(3, 4, side, side, generator=gen).relu()
    with torch.no_grad():
        assert torch.equal(_max_pool(x, kernel), F.max_pool2d(x, kernel))
    x.requires_grad_(True)
    reference = x.detach().clone().requires_grad_(True)
    upstream = torch.randn(F.max_pool2d(reference, kernel).shape, generator=gen)
    _max_pool(x, kernel).backward(upstream)
    F.max_pool2d(reference, kernel).backward(upstream)
    assert torch.equal(x.grad, reference.grad)


# --- truncated SVD of fc6 / fc7 (Fast R-CNN §3.1) ----------------------------------------------


@pytest.mark.parametrize("in_features, out_features", [(12, 5), (6, 9), (7, 7)])
def test_truncated_svd_linear_at_full_rank_reproduces_the_layer(in_features, out_features):
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features).double()
    svd = truncated_svd_linear(layer, min(in_features, out_features))
    x = torch.randn(4, in_features, dtype=torch.float64)
    assert svd[0].bias is None and torch.equal(svd[1].bias, layer.bias)
    assert torch.allclose(svd(x), layer(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("in_features, out_features, rank", [(40, 16, 5), (16, 30, 7)])
def test_truncated_svd_linear_drops_the_smallest_singular_values(in_features, out_features, rank):
    torch.manual_seed(1)
    layer = nn.Linear(in_features, out_features).double()
    svd = truncated_svd_linear(layer, rank)
    weight = layer.weight.detach()
    sigma = torch.linalg.svdvals(weight)  # the reference, descending
    approx = (svd[1].weight @ svd[0].weight).detach()  # W_t = U_t Sigma_t V_t^T (u, v)
    # Eckart-Young: the Frobenius error is the norm of the dropped singular values, and W_t
    # keeps the t largest
    error = torch.linalg.matrix_norm(weight - approx)
    assert math.isclose(error.item(), sigma[rank:].square().sum().sqrt().item(), rel_tol=1e-9)
    assert torch.allclose(torch.linalg.svdvals(approx)[:rank], sigma[:rank], atol=1e-10)
    residual_sigma = torch.linalg.svdvals(weight - approx)  # the dropped ones, then zeros
    assert torch.allclose(residual_sigma[: sigma.numel() - rank], sigma[rank:], atol=1e-10)
    if out_features <= in_features:  # Fast R-CNN's split: Sigma_t V_t^T, then U_t
        assert torch.allclose(svd[0].weight.norm(dim=1), sigma[:rank], atol=1e-10)
        identity = torch.eye(rank, dtype=torch.float64)
        assert torch.allclose(svd[1].weight.T @ svd[1].weight, identity, atol=1e-10)


def low_rank_head(rank: int) -> ClassifierHead:
    """A float64 head whose fc6 and fc7 weights have rank ``rank`` exactly."""
    torch.manual_seed(2)
    head = ClassifierHead(in_channels=3, roi_size=4, num_classes=2, fc_dim=10).double()
    with torch.no_grad():
        for pathway in (head.mask_pathway, head.box_pathway):
            for layer in (pathway[0], pathway[2]):
                out_features, in_features = layer.weight.shape
                left = torch.randn(out_features, rank, dtype=torch.float64)
                layer.weight.copy_(left @ torch.randn(rank, in_features, dtype=torch.float64))
    return head


def test_compress_fc_layers_keeps_the_outputs_of_weights_of_that_rank():
    """fc6 (48 -> 10) and fc7 (10 -> 10) of rank 4: a rank-4 compression is exact."""
    head = low_rank_head(rank=4)
    features = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    masks = torch.rand(6, 5, 5, dtype=torch.float64)
    before = head(features, masks)

    class Model(nn.Module):  # stands for cascade.MNC: the head is its .classifier
        def __init__(self):
            super().__init__()
            self.classifier = head

    model = Model()
    assert compress_fc_layers(model, fc6_rank=4, fc7_rank=4) is model
    after = head(features, masks)
    for name in ("mask_cls_logits", "box_cls_logits", "box_deltas"):
        assert torch.allclose(getattr(after, name), getattr(before, name), rtol=0, atol=1e-10)
    # a lower rank than the weights' changes the outputs
    lower = compress_fc_layers(low_rank_head(rank=4), fc6_rank=2, fc7_rank=2)
    assert not torch.allclose(lower(features, masks).mask_cls_logits, before.mask_cls_logits)


def test_compress_fc_layers_default_ranks_are_fast_rcnns_fractions_of_the_fc_width():
    """VGG-16's 4096-d fcs: 1024 and 256 [Fast R-CNN §3.1]; here 64-d fcs: 16 and 4."""
    head = compress_fc_layers(ClassifierHead(in_channels=8, roi_size=4, num_classes=2, fc_dim=64))
    for pathway in (head.mask_pathway, head.box_pathway):
        assert pathway[0][0].out_features == 64 // 4 and pathway[2][0].out_features == 64 // 16


def test_compress_fc_layers_parameter_count():
    head = ClassifierHead(in_channels=4, roi_size=6, num_classes=3, fc_dim=20, pathway_pool=2)
    fc6_in, fc_dim, fc6_rank, fc7_rank = 4 * 3 * 3, 20, 8, 5
    before = sum(p.numel() for p in head.parameters())
    compress_fc_layers(head, fc6_rank=fc6_rank, fc7_rank=fc7_rank)
    after = sum(p.numel() for p in head.parameters())
    # per pathway: u * v weights become t * (u + v); biases unchanged
    saved_per_pathway = (
        fc6_in * fc_dim - fc6_rank * (fc6_in + fc_dim) + fc_dim * fc_dim - fc7_rank * 2 * fc_dim
    )
    assert before - after == 2 * saved_per_pathway
    assert head.mask_pathway[0][0].weight.shape == (fc6_rank, fc6_in)
    assert head.box_pathway[2][1].weight.shape == (fc_dim, fc7_rank)


def test_compress_fc_layers_refuses_ranks_that_do_not_compress_and_a_second_pass():
    head = ClassifierHead(in_channels=2, roi_size=4, num_classes=2, fc_dim=16)
    with pytest.raises(ValueError, match=r"fc6_rank 8 must be in 1\.\.7"):
        compress_fc_layers(head, fc6_rank=8)  # fc6 is Linear(8, 16)
    with pytest.raises(ValueError, match=r"fc7_rank 16 must be in 1\.\.15"):
        compress_fc_layers(head, fc6_rank=4, fc7_rank=16)
    assert isinstance(head.mask_pathway[0], nn.Linear)  # nothing changed by a refusal
    compress_fc_layers(head, fc6_rank=4, fc7_rank=8)
    with pytest.raises(ValueError, match="compressed already"):
        compress_fc_layers(head, fc6_rank=4, fc7_rank=8)
    with pytest.raises(TypeError, match="ClassifierHead"):
        compress_fc_layers(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"rank 0 must be in 1\.\.3"):
        truncated_svd_linear(nn.Linear(3, 5), 0)


# --- mask-level labels ------------------------------------------------------------------------


def paste_binary(cells: torch.Tensor, box: list[float], height: int, width: int) -> torch.Tensor:
    """Brute force: every pixel whose centre is inside the box takes the value of the m x m
    cell it falls in."""
    m = cells.shape[0]
    x1, y1, x2, y2 = box
    centres_x, centres_y = torch.arange(width) + 0.5, torch.arange(height) + 0.5
    col = ((centres_x - x1) / (x2 - x1) * m).floor().long()  # (W,)
    row = ((centres_y - y1) / (y2 - y1) * m).floor().long()  # (H,)
    inside = ((col >= 0) & (col < m))[None, :] & ((row >= 0) & (row < m))[:, None]
    values = cells[row.clamp(0, m - 1)][:, col.clamp(0, m - 1)]
    return values.bool() & inside


def brute_mask_iou(pred_cells, box, gt_mask):
    pred = paste_binary(pred_cells, box, *gt_mask.shape)
    gt = gt_mask.bool()
    return ((pred & gt).sum() / (pred | gt).sum()).item()


def noisy_predictions(targets, gen, noise):
    return (0.15 + 0.7 * targets + noise * torch.randn(targets.shape, generator=gen)).clamp(0, 1)


def test_mask_level_labels_equal_full_image_iou_on_a_pixel_aligned_grid():
    """Boxes of 20 px on even pixels, M = 10 (2 x 2 px per cell), instances made of 2 x 2
    blocks: the m x m computation is exact, so labels equal those of the brute-force image
    IoU."""
    gen = torch.Generator().manual_seed(0)
    origins = torch.tensor([[4, 6], [16, 14]])  # (x, y) of each instance's 20 x 20 px region
    gt_masks = torch.zeros(2, 40, 40, dtype=torch.uint8)
    for g, (x, y) in enumerate(origins.tolist()):
        blocks = (torch.rand(10, 10, generator=gen) > 0.2).to(torch.uint8)
        pixels = blocks.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
        gt_masks[g, y : y + 20, x : x + 20] = pixels
    num_rois = 40
    matched = torch.randint(0, 2, (num_rois,), generator=gen)
    # even x1, y1
    corners = origins[matched] + 2 * torch.randint(-2, 3, (num_rois, 2), generator=gen)
    boxes = torch.cat([corners, corners + 20], dim=1).float()  # (R, 4)
    targets = mask_targets(gt_masks, matched, boxes, mask_size=10)
    probs = noisy_predictions(targets, gen, noise=0.45)
    # some box-level background
    box_labels = torch.where(torch.arange(num_rois) % 5 == 4, 0, matched + 1)
    gt_areas = gt_masks.flatten(1).sum(1).float()[matched]
    labels = mask_level_labels(probs, targets, boxes, gt_areas=gt_areas, box_labels=box_labels)
    expected = []
    for r in range(num_rois):
        iou = brute_mask_iou((probs[r] >= 0.4).long(), boxes[r].tolist(), gt_masks[matched[r]])
        expected.append(box_labels[r].item() if iou >= 0.5 else 0)
    assert labels.tolist() == expected
    assert 0 < sum(e > 0 for e in expected) < sum(box_labels > 0)  # both outcomes occur


def test_mask_level_labels_close_to_full_image_iou_for_any_boxes():
    """Real-valued boxes, smooth instances: the m x m IoU approximates the image IoU, so the
    labels agree wherever the image IoU is not within 0.05 of the 0.5 threshold."""
    gen = torch.Generator().manual_seed(1)
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    # an ellipse, box ~ (12, 21, 48, 45)
    gt_mask = (((xs - 30) / 18) ** 2 + ((ys - 33) / 12) ** 2 <= 1).to(torch.uint8)
    base = torch.tensor([12.0, 21.0, 48.0, 45.0])
    boxes = base + 6 * torch.randn(60, 4, generator=gen)
    targets = mask_targets(gt_mask[None], torch.zeros(60, dtype=torch.int64), boxes, mask_size=28)
    probs = noisy_predictions(targets, gen, noise=0.5)
    box_labels = torch.ones(60, dtype=torch.int64)
    gt_areas = gt_mask.sum().float().expand(60)
    labels = mask_level_labels(probs, targets, boxes, gt_areas=gt_areas, box_labels=box_labels)
    compared = 0
    for r in range(60):
        iou = brute_mask_iou((probs[r] >= 0.4).long(), boxes[r].tolist(), gt_mask)
        if abs(iou - 0.5) > 0.05:
            assert labels[r].item() == int(iou >= 0.5), (r, iou)
            compared += 1
    assert compared >= 40


def test_mask_level_labels_zero_for_box_background():
    targets = torch.ones(2, 4, 4)
    labels = mask_level_labels(
        torch.ones(2, 4, 4),
        targets,
        torch.tensor([[0.0, 0, 8, 8]] * 2),
        gt_areas=torch.tensor([64.0, 64.0]),
        box_labels=torch.tensor([0, 3]),
    )
    assert labels.tolist() == [0, 3]  # perfect masks: the box label survives, background stays 0


# --- losses -----------------------------------------------------------------------------------


def smooth_l1(x: float, beta: float) -> float:
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def hand_cross_entropy(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def hand_deltas(gt, ref, weights):
    gw, gh, rw, rh = gt[2] - gt[0], gt[3] - gt[1], ref[2] - ref[0], ref[3] - ref[1]
    gx, gy, rx, ry = gt[0] + gw / 2, gt[1] + gh / 2, ref[0] + rw / 2, ref[1] + rh / 2
    return [
        weights[0] * (gx - rx) / rw,
        weights[1] * (gy - ry) / rh,
        weights[2] * math.log(gw / rw),
        weights[3] * math.log(gh / rh),
    ]


def test_classifier_losses_hand_computed():
    gen = torch.Generator().manual_seed(0)
    num_classes = 2
    mask_cls_logits = torch.randn(3, 3, generator=gen, requires_grad=True)
    box_cls_logits = torch.randn(3, 3, generator=gen, requires_grad=True)
    box_deltas = (0.3 * torch.randn(3, 12, generator=gen)).requires_grad_(True)
    output = ClassifierOutput(mask_cls_logits, box_cls_logits, box_deltas)
    boxes = torch.tensor(
        [[10.0, 10.0, 50.0, 40.0], [0.0, 5.0, 30.0, 45.0], [60.0, 60.0, 80.0, 70.0]],
        requires_grad=True,
    )
    gt_boxes = torch.tensor(
        [[12.0, 8.0, 48.0, 44.0], [2.0, 5.0, 34.0, 40.0], [0.0, 0.0, 10.0, 10.0]]
    )
    box_labels = torch.tensor([2, 1, 0])  # RoI 2 is background: no box loss
    mask_labels = torch.tensor([2, 0, 0])  # RoI 1's mask was poor
    weights = (10.0, 10.0, 5.0, 5.0)
    losses = classifier_losses(
        output,
        mask_labels=mask_labels,
        box_labels=box_labels,
        boxes=boxes,
        gt_boxes=gt_boxes,
        box_weights=weights,
        box_loss_beta=1.0,
    )
    assert set(losses) == {"loss_cls_mask", "loss_cls_box", "loss_box_reg"}

    expected_cls_mask = sum(
        hand_cross_entropy(mask_cls_logits[r].tolist(), mask_labels[r].item()) for r in range(3)
    ) / 3
    expected_cls_box = sum(
        hand_cross_entropy(box_cls_logits[r].tolist(), box_labels[r].item()) for r in range(3)
    ) / 3
    box_sum = 0.0
    for r in (0, 1):
        k = box_labels[r].item()
        pred = box_deltas[r, 4 * k : 4 * k + 4].tolist()  # the RoI's own class
        goal = hand_deltas(gt_boxes[r].tolist(), boxes[r].tolist(), weights)
        box_sum += sum(smooth_l1(p - g, 1.0) for p, g in zip(pred, goal, strict=True))
    assert losses["loss_cls_mask"].item() == pytest.approx(expected_cls_mask, rel=1e-5)
    assert losses["loss_cls_box"].item() == pytest.approx(expected_cls_box, rel=1e-5)
    # divided by R, not by the number of foreground RoIs
    assert losses["loss_box_reg"].item() == pytest.approx(box_sum / 3, rel=1e-5)

    losses["loss_box_reg"].backward()
    grad = box_deltas.grad.view(3, num_classes + 1, 4).abs().sum(dim=2)  # (R, K+1)
    expected_rows = [[False, False, True], [False, True, False], [False, False, False]]
    assert (grad > 0).tolist() == expected_rows
    assert boxes.grad is None  # the regression targets are constants


def test_classifier_losses_without_foreground():
    output = ClassifierOutput(
        torch.zeros(2, 3), torch.zeros(2, 3), torch.randn(2, 12, requires_grad=True)
    )
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 5.0]])
    background = torch.zeros(2, dtype=torch.int64)
    losses = classifier_losses(
        output, mask_labels=background, box_labels=background, boxes=boxes, gt_boxes=boxes
    )
    assert losses["loss_box_reg"].item() == 0.0
    # uniform logits over K + 1 = 3
    assert losses["loss_cls_mask"].item() == pytest.approx(math.log(3))
    losses["loss_box_reg"].backward()
    assert output.box_deltas.grad.abs().sum() == 0


def test_no_rois_give_zero_losses_not_nan():
    head = ClassifierHead(in_channels=4, roi_size=6, num_classes=3, fc_dim=8)
    out = head(torch.zeros(0, 4, 6, 6), torch.zeros(0, 5, 5))
    assert out.mask_cls_logits.shape == (0, 4) and out.box_deltas.shape == (0, 16)
    no_labels = torch.zeros(0, dtype=torch.int64)
    no_boxes = torch.zeros(0, 4)
    losses = classifier_losses(
        out, mask_labels=no_labels, box_labels=no_labels, boxes=no_boxes, gt_boxes=no_boxes
    )
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    assert head.cls_score.weight.grad is not None
    no_masks = torch.zeros(0, 5, 5)
    labels = mask_level_labels(
        no_masks, no_masks, no_boxes, gt_areas=torch.zeros(0), box_labels=no_labels
    )
    assert labels.shape == (0,)
