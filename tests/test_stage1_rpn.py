"""Tests for mnc_teach/stage1_rpn.py: the head's output order, proposals against a
torchvision-ops reference, and the losses against hand-computed values and torchvision's RPN."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead
from torchvision.models.detection.rpn import concat_box_prediction_layers

from mnc_teach.anchors import generate_base_anchors, grid_anchors
from mnc_teach.boxes import MAX_LOG_SCALE
from mnc_teach.matching import label_anchors
from mnc_teach.stage1_rpn import RegionProposalNetwork, RPNHead, generate_proposals, rpn_losses

RPN_BETA = 1.0 / 9  # smooth-L1 beta of the RPN box loss (sigma 3)


def smooth_l1(x: float, beta: float) -> float:
    """Hand-written smooth L1 of one number."""
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def target(boxes, labels=None):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if labels is None:
        labels = [1] * boxes.shape[0]
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64)}


# --- RPNHead ----------------------------------------------------------------------------------


def test_head_output_order_is_the_anchor_order():
    """A feature that fires at one cell and is wired to one anchor lights up the row of that
    anchor in grid_anchors' (h, w, A) order."""
    num_anchors, (h, w), stride = 3, (4, 5), 16
    head = RPNHead(in_channels=2, conv_channels=2, num_anchors=num_anchors)
    cell_i, cell_j, anchor_a = 2, 3, 1
    with torch.no_grad():
        for layer in (head.conv, head.objectness, head.deltas):
            layer.weight.zero_()
        head.conv.weight[0, 0, 1, 1] = 1.0  # centre tap: channel 0 passes through
        head.objectness.weight[anchor_a, 0] = 5.0
        for k in range(4):
            head.deltas.weight[anchor_a * 4 + k, 0] = k + 1.0
    features = torch.zeros(1, 2, h, w)
    features[0, 0, cell_i, cell_j] = 1.0
    logits, deltas = head(features)
    assert logits.shape == (1, h * w * num_anchors) and deltas.shape == (1, h * w * num_anchors, 4)
    row = (cell_i * w + cell_j) * num_anchors + anchor_a
    assert torch.nonzero(logits[0]).flatten().tolist() == [row]
    assert logits[0, row] == 5.0
    assert deltas[0, row].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert torch.count_nonzero(deltas) == 4
    base = generate_base_anchors(8, (0.5, 1.0, 2.0), (2,))
    anchors = grid_anchors(base, (h, w), stride)
    centre = (anchors[row, :2] + anchors[row, 2:]) / 2
    assert centre.tolist() == [(cell_j + 0.5) * stride, (cell_i + 0.5) * stride]
    assert torch.allclose(anchors[row] - torch.cat([centre, centre]), base[anchor_a])


def test_head_equals_torchvision_rpn_head_with_the_same_weights():
    torch.manual_seed(0)
    ours = RPNHead(in_channels=6, conv_channels=6, num_anchors=3)
    theirs = TorchvisionRPNHead(in_channels=6, num_anchors=3)
    with torch.no_grad():
        theirs.conv[0][0].weight.copy_(ours.conv.weight)
        theirs.conv[0][0].bias.copy_(torch.randn(6))
        ours.conv.bias.copy_(theirs.conv[0][0].bias)
        theirs.cls_logits.weight.copy_(ours.objectness.weight)
        theirs.bbox_pred.weight.copy_(ours.deltas.weight)
    features = torch.randn(2, 6, 5, 7)
    logits, deltas = ours(features)
    objectness, box_regression = theirs([features])
    expected_logits, expected_deltas = concat_box_prediction_layers(objectness, box_regression)
    assert torch.allclose(logits.reshape(-1, 1), expected_logits, atol=1e-6)
    assert torch.allclose(deltas.reshape(-1, 4), expected_deltas, atol=1e-6)


# --- generate_proposals -----------------------------------------------------------------------


def reference_proposals(
    anchors, logits, deltas, *, image_size, pre_nms_top_n, post_nms_top_n, nms_iou, min_size
):
    """The same recipe written with torchvision's box coder and ops."""
    order = logits.detach().argsort(descending=True)[:pre_nms_top_n]
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), bbox_xform_clip=MAX_LOG_SCALE)
    boxes = coder.decode_single(deltas[order], anchors[order])
    boxes = torchvision.ops.clip_boxes_to_image(boxes, image_size)
    scores = logits[order].detach().sigmoid()
    keep = torchvision.ops.remove_small_boxes(boxes.detach(), min_size)
    boxes, scores = boxes[keep], scores[keep]
    keep = torchvision.ops.nms(boxes.detach(), scores, nms_iou)[:post_nms_top_n]
    return boxes[keep], scores[keep]


# proposal settings of a 90 x 120 image, smaller than the 96 x 128 anchor grid
SMALL_IMAGE = {
    "image_size": (90, 120),
    "pre_nms_top_n": 60,
    "post_nms_top_n": 20,
    "nms_iou": 0.5,
    "min_size": 12.0,
}


def small_anchors(feature_size=(6, 8), stride=16) -> torch.Tensor:
    """9 anchors (sides 16-48 px) on every cell of a stride-16 grid."""
    return grid_anchors(generate_base_anchors(8, (0.5, 1.0, 2.0), (2, 4, 6)), feature_size, stride)


def random_rpn_outputs(seed: int, feature_size=(6, 8), stride=16):
    gen = torch.Generator().manual_seed(seed)
    anchors = small_anchors(feature_size, stride)
    logits = torch.randn(anchors.shape[0], generator=gen)
    deltas = 0.3 * torch.randn(anchors.shape[0], 4, generator=gen)
    return anchors, logits, deltas


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "pre_nms, post_nms, nms_iou, min_size", [(1000, 1000, 0.7, 0.0), (60, 20, 0.5, 12.0)]
)
def test_generate_proposals_equals_torchvision_reference(
    seed, pre_nms, post_nms, nms_iou, min_size
):
    anchors, logits, deltas = random_rpn_outputs(seed)
    settings = {
        "image_size": (90, 120),  # smaller than the 96 x 128 anchor grid: some boxes are clipped
        "pre_nms_top_n": pre_nms,
        "post_nms_top_n": post_nms,
        "nms_iou": nms_iou,
        "min_size": min_size,
    }
    boxes, scores = generate_proposals(anchors, logits, deltas, **settings)
    expected_boxes, expected_scores = reference_proposals(anchors, logits, deltas, **settings)
    assert boxes.shape == expected_boxes.shape and 0 < boxes.shape[0] <= post_nms
    assert torch.allclose(boxes, expected_boxes, atol=1e-4)
    assert torch.allclose(scores, expected_scores)
    assert torch.all(scores[:-1] >= scores[1:])  # best first
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 2].max() <= 120 and boxes[:, 3].max() <= 90
    assert ((boxes[:, 2:] - boxes[:, :2]) >= min_size).all()


def test_proposals_are_differentiable_in_the_deltas_only_where_kept():
    anchors, logits, deltas = random_rpn_outputs(seed=5)
    logits.requires_grad_(True)
    weights = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (generate_proposals, reference_proposals):
        d = deltas.clone().requires_grad_(True)
        boxes, scores = fn(anchors, logits, d, **SMALL_IMAGE)
        assert not scores.requires_grad  # objectness is trained by stage 1's own loss only
        (boxes * weights[: boxes.shape[0]]).sum().backward()
        grads.append(d.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    rows_with_grad = torch.count_nonzero(grads[0].abs().sum(dim=1))
    assert 0 < rows_with_grad <= 20  # only the anchors whose proposals survived
    assert logits.grad is None


def test_delta_grad_clip_clamps_the_gradient_reaching_the_deltas():
    anchors, logits, deltas = random_rpn_outputs(seed=6)
    # large upstream gradients
    weights = 50 * torch.randn(20, 4, generator=torch.Generator().manual_seed(2))
    grads = []
    for clip in (None, 0.01):
        d = deltas.clone().requires_grad_(True)
        boxes, _ = generate_proposals(anchors, logits, d, **SMALL_IMAGE, delta_grad_clip=clip)
        (boxes * weights[: boxes.shape[0]]).sum().backward()
        grads.append(d.grad)
    assert (grads[0].abs() > 0.01).any()
    assert torch.allclose(grads[1], grads[0].clamp(-0.01, 0.01))


# --- rpn_losses -------------------------------------------------------------------------------

# One ground truth (10, 10, 50, 50) in a 100 x 100 image and five hand-placed anchors.
HAND_ANCHORS = torch.tensor(
    [
        [10.0, 10.0, 50.0, 60.0],  # IoU 0.8: positive
        [30.0, 10.0, 70.0, 50.0],  # IoU 1/3: between the thresholds, ignored
        [60.0, 60.0, 90.0, 90.0],  # IoU 0: negative
        [55.0, 0.0, 95.0, 40.0],  # IoU 0: negative
        [-10.0, -10.0, 30.0, 30.0],  # sticks out of the image: ignored
    ]
)
HAND_DELTAS = torch.tensor(
    [[0.05, -0.6, 0.1, 0.0], [9.0, 9.0, 9.0, 9.0], [9.0] * 4, [9.0] * 4, [9.0] * 4]
)
# target of anchor 0: centres (30, 30) vs (30, 35), sizes 40 x 40 vs 40 x 50
HAND_TARGET_0 = (0.0, -5.0 / 50, 0.0, math.log(40 / 50))


def hand_box_loss_sum() -> float:
    pairs = zip(HAND_DELTAS[0].tolist(), HAND_TARGET_0, strict=True)
    return sum(smooth_l1(d - t, RPN_BETA) for d, t in pairs)


# the paper's anchor labels and sampling (0.7 / 0.3, half positive at most)
RPN_SETTINGS = {
    "positive_iou": 0.7,
    "negative_iou": 0.3,
    "positive_fraction": 0.5,
    "box_loss_beta": RPN_BETA,
}


def call_rpn_losses(logits, deltas, sizes, targets, batch_size=256, generator=None):
    return rpn_losses(
        HAND_ANCHORS,
        logits,
        deltas,
        image_sizes=sizes,
        targets=targets,
        batch_size=batch_size,
        generator=generator,
        **RPN_SETTINGS,
    )


def test_rpn_losses_hand_computed():
    logits = torch.tensor([[0.3, -1.2, 0.7, -0.4, 2.0]], requires_grad=True)
    deltas = HAND_DELTAS[None].clone().requires_grad_(True)
    losses = call_rpn_losses(logits, deltas, [(100, 100)], [target([10, 10, 50, 50])])
    assert set(losses) == {"loss_rpn_obj", "loss_rpn_box"}
    # sampled: anchor 0 (label 1), anchors 2 and 3 (label 0); both losses divided by 3
    expected_obj = (softplus(-0.3) + softplus(0.7) + softplus(-0.4)) / 3
    assert losses["loss_rpn_obj"].item() == pytest.approx(expected_obj, rel=1e-5)
    assert losses["loss_rpn_box"].item() == pytest.approx(hand_box_loss_sum() / 3, rel=1e-5)
    sum(losses.values()).backward()
    assert logits.grad[0, [1, 4]].abs().sum() == 0  # ignored anchors
    assert deltas.grad[0, 1:].abs().sum() == 0  # only the positive regresses
    assert deltas.grad[0, 0].abs().sum() > 0


def test_rpn_losses_normalise_by_the_sampled_count():
    # batch of 2 anchors: the positive and one of the two negatives (equal logits, so either)
    logits = torch.tensor([[0.3, -1.2, 0.7, 0.7, 2.0]])
    one_object = [target([10, 10, 50, 50])]
    losses = call_rpn_losses(logits, HAND_DELTAS[None], [(100, 100)], one_object, batch_size=2)
    expected_obj = (softplus(-0.3) + softplus(0.7)) / 2
    assert losses["loss_rpn_obj"].item() == pytest.approx(expected_obj, rel=1e-5)
    assert losses["loss_rpn_box"].item() == pytest.approx(hand_box_loss_sum() / 2, rel=1e-5)


def test_rpn_losses_over_a_batch_with_an_image_without_ground_truth():
    logits = torch.tensor([[0.3, -1.2, 0.7, -0.4, 2.0], [0.1, 0.2, -0.3, 0.4, 5.0]])
    deltas = torch.stack([HAND_DELTAS, HAND_DELTAS]).requires_grad_(True)
    empty = target(torch.zeros(0, 4))
    targets = [target([10, 10, 50, 50]), empty]
    losses = call_rpn_losses(logits, deltas, [(100, 100), (100, 100)], targets)
    # image 2: the four inside anchors are negatives; 3 + 4 = 7 sampled in the batch
    obj_sum = softplus(-0.3) + softplus(0.7) + softplus(-0.4)
    obj_sum += sum(softplus(x) for x in (0.1, 0.2, -0.3, 0.4))
    assert losses["loss_rpn_obj"].item() == pytest.approx(obj_sum / 7, rel=1e-5)
    assert losses["loss_rpn_box"].item() == pytest.approx(hand_box_loss_sum() / 7, rel=1e-5)
    only_empty = call_rpn_losses(logits[1:], deltas[1:], [(100, 100)], [empty])
    assert only_empty["loss_rpn_box"].item() == 0.0
    only_empty["loss_rpn_box"].backward()  # a zero that is still part of the graph
    assert deltas.grad is not None and deltas.grad.abs().sum() == 0


@pytest.mark.parametrize("seed", range(3))
def test_rpn_losses_equal_torchvision_rpn_compute_loss(seed):
    """Same labels, the same sample (same global RNG order), the same normalisation."""
    gen = torch.Generator().manual_seed(seed)
    anchors = small_anchors()
    sizes = [(96, 128), (80, 112)]
    targets = [
        target([[10, 12, 50, 60], [60, 20, 110, 52], [30, 40, 70, 90]]),
        target([[5, 5, 45, 37]]),
    ]
    logits = torch.randn(2, anchors.shape[0], generator=gen)
    deltas = 0.2 * torch.randn(2, anchors.shape[0], 4, generator=gen)
    torch.manual_seed(100 + seed)
    losses = rpn_losses(
        anchors, logits, deltas, image_sizes=sizes, targets=targets, batch_size=32, **RPN_SETTINGS
    )

    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    labels, regression_targets = [], []
    for size, t in zip(sizes, targets, strict=True):
        labels_i, matched_i = label_anchors(
            anchors, t["boxes"], size, positive_iou=0.7, negative_iou=0.3
        )
        assert (labels_i == 1).sum() > 0
        labels.append(labels_i.float())
        regression_targets.append(coder.encode_single(t["boxes"][matched_i], anchors))
    rpn = torchvision.models.detection.rpn.RegionProposalNetwork(
        None,
        None,
        0.7,
        0.3,
        batch_size_per_image=32,
        positive_fraction=0.5,
        pre_nms_top_n={},
        post_nms_top_n={},
        nms_thresh=0.7,
    )
    assert isinstance(rpn.fg_bg_sampler, BalancedPositiveNegativeSampler)
    torch.manual_seed(100 + seed)
    obj, box = rpn.compute_loss(
        logits.reshape(-1, 1), deltas.reshape(-1, 4), labels, regression_targets
    )
    assert torch.allclose(losses["loss_rpn_obj"], obj, atol=1e-6)
    assert torch.allclose(losses["loss_rpn_box"], box, atol=1e-6)


# --- RegionProposalNetwork --------------------------------------------------------------------


def test_rpn_module_train_and_test_settings_and_gradient_path():
    torch.manual_seed(0)
    rpn = RegionProposalNetwork(
        in_channels=4,
        stride=16,
        conv_channels=8,
        anchor_base_size=8,
        anchor_scales=(2, 4, 6),
        pre_nms_top_n=(50, 40),
        post_nms_top_n=(7, 3),
        min_size=4.0,
    )
    features = torch.randn(2, 4, 5, 6)
    sizes = [(80, 96), (70, 90)]
    out, losses = rpn(features, sizes)
    assert losses == {}
    assert out.anchors.shape == (5 * 6 * 9, 4) and out.objectness_logits.shape == (2, 270)
    assert out.anchor_deltas.shape == (2, 270, 4)
    assert [p.shape[0] for p in out.proposals] == [7, 7]  # training: post_nms_top_n[0]
    training = {"pre_nms_top_n": 50, "post_nms_top_n": 7, "nms_iou": 0.7, "min_size": 4.0}
    for i, size in enumerate(sizes):  # the module runs generate_proposals with those numbers
        boxes, scores = generate_proposals(
            out.anchors, out.objectness_logits[i], out.anchor_deltas[i], image_size=size, **training
        )
        assert torch.equal(out.proposals[i], boxes) and torch.equal(out.proposal_scores[i], scores)
    out.proposals[0].sum().backward()  # later stages reach the delta conv, not the objectness conv
    assert rpn.head.deltas.weight.grad.abs().sum() > 0
    assert rpn.head.objectness.weight.grad is None
    rpn.eval()
    with torch.no_grad():
        out, losses = rpn(features, sizes, [target([10, 10, 50, 50]), target([0, 0, 30, 30])])
    assert [p.shape[0] for p in out.proposals] == [3, 3]  # test: post_nms_top_n[1]
    assert set(losses) == {"loss_rpn_obj", "loss_rpn_box"}


def test_rpn_losses_with_seeded_generator_are_reproducible():
    anchors = small_anchors()
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, anchors.shape[0], generator=gen)
    deltas = torch.randn(1, anchors.shape[0], 4, generator=gen)
    kwargs = {
        "image_sizes": [(96, 128)],
        "targets": [target([10, 12, 50, 60])],
        "batch_size": 16,
        **RPN_SETTINGS,
    }
    first = rpn_losses(
        anchors, logits, deltas, **kwargs, generator=torch.Generator().manual_seed(3)
    )
    second = rpn_losses(
        anchors, logits, deltas, **kwargs, generator=torch.Generator().manual_seed(3)
    )
    assert all(torch.equal(first[k], second[k]) for k in first)
