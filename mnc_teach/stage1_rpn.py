"""Stage 1: the Region Proposal Network regresses class-agnostic boxes (docs/paper_vs_code.md:
stage 1).

A 3x3 conv on the shared features, then two 1x1 convs: an objectness logit and 4 box
deltas per anchor. Training labels each anchor against the ground truth (matching.py),
samples 256 of them and applies two losses; proposals are the decoded boxes of the best
anchors after NMS. Proposals stay differentiable in the deltas: that is the path by
which stages 2 and 3 send gradients back to stage 1 through the box coordinates.

Shapes (legend in structures.py): N images, C channels, h x w feature map, A anchors per
cell, T = h * w * A anchors in all, R proposals per image. The default settings are defined
once, in ``config.RPNConfig``.

The official code scores each anchor with a 2-way softmax (bg, fg; 18 = 2 x 9 outputs).
We use one logit and a sigmoid: softmax over (bg, fg) is sigmoid(fg - bg), so the two
models are the same and this one has half the parameters in that layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnc_teach.anchors import generate_base_anchors, grid_anchors
from mnc_teach.boxes import (
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nms,
    remove_small_boxes,
)
from mnc_teach.config import RPNConfig
from mnc_teach.matching import label_anchors, sample_pos_neg
from mnc_teach.structures import Target

__all__ = [
    "RPNHead",
    "RPNOutput",
    "RegionProposalNetwork",
    "clamp_gradient",
    "generate_proposals",
    "rpn_losses",
]

INIT_STD = 0.01  # Gaussian init of the RPN convs [code: train.prototxt]


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then per-anchor objectness logits and box deltas."""

    def __init__(self, in_channels: int, conv_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, conv_channels, 3, padding=1)
        self.objectness = nn.Conv2d(conv_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(conv_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (N, C, h, w) -> objectness logits (N, T), deltas (N, T, 4); T ordered
        (h, w, A)."""
        x = F.relu(self.conv(features))
        logits = self.objectness(x)  # (N, A, h, w)
        deltas = self.deltas(x)  # (N, A*4, h, w)
        n = features.shape[0]
        # (N, A, h, w) -> (N, h, w, A) -> (N, T)
        logits = logits.permute(0, 2, 3, 1).reshape(n, -1)
        # (N, A*4, h, w) -> (N, h, w, A*4) -> (N, T, 4)
        deltas = deltas.permute(0, 2, 3, 1).reshape(n, -1, 4)
        return logits, deltas


@dataclass
class RPNOutput:
    """What stage 1 produced for a batch (kept in the model's intermediates).

    Attributes:
        anchors (Tensor[T, 4], xyxy pixels): shared by the images of the (padded) batch.
        objectness_logits (Tensor[N, T])
        anchor_deltas (Tensor[N, T, 4])
        proposals (list of Tensor[R_i, 4]): after NMS, differentiable in ``anchor_deltas``.
        proposal_scores (list of Tensor[R_i]): objectness probability of each proposal.
    """

    anchors: Tensor
    objectness_logits: Tensor
    anchor_deltas: Tensor
    proposals: list[Tensor]
    proposal_scores: list[Tensor]


def clamp_gradient(tensor: Tensor, limit: float | None) -> Tensor:
    """Clamp, per component, the gradient that will reach ``tensor`` to ``[-limit, limit]``
    (the code's ``clip_base: 512`` on box deltas); ``limit=None`` leaves it exact. The forward
    value is unchanged. Returns ``tensor`` itself."""
    if limit is not None and tensor.requires_grad:
        tensor.register_hook(lambda grad: grad.clamp(-limit, limit))
    return tensor


def generate_proposals(
    anchors: Tensor,
    objectness_logits: Tensor,
    anchor_deltas: Tensor,
    *,
    image_size: tuple[int, int],
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_iou: float,
    min_size: float,
    delta_grad_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Proposals of one image: top-k anchors by objectness, decode, clip, drop small, NMS, top-k.

    Args:
        anchors (Tensor[T, 4]), objectness_logits (Tensor[T]), anchor_deltas (Tensor[T, 4]).
        image_size: ``(height, width)`` of the image (not of the padded batch).
        pre_nms_top_n / post_nms_top_n: how many boxes enter / leave NMS (paper: ~10^4 / 300).
        nms_iou: NMS threshold (0.7).
        min_size: smallest side in pixels that a proposal may have.
        delta_grad_clip: clamp the gradient that later stages send back through the proposal
            boxes to the deltas, per component (the code: 1/512, ``clip_base: 512``); None
            leaves it exact (the paper).

    Returns:
        boxes (Tensor[R, 4], xyxy pixels): differentiable w.r.t. ``anchor_deltas``.
        scores (Tensor[R]): objectness probabilities, sorted high to low.
    """
    num_top = min(pre_nms_top_n, objectness_logits.numel())
    top = objectness_logits.detach().topk(num_top).indices  # (k,)
    deltas = anchor_deltas[top]  # (k, 4)
    clamp_gradient(deltas, delta_grad_clip)
    boxes = decode_boxes(deltas, anchors[top])  # (k, 4)
    boxes = clip_boxes(boxes, image_size)
    scores = torch.sigmoid(objectness_logits[top].detach())
    keep = remove_small_boxes(boxes.detach(), min_size)
    boxes, scores = boxes[keep], scores[keep]
    keep = nms(boxes.detach(), scores, nms_iou)
    keep = keep[:post_nms_top_n]  # NMS returns indices sorted by decreasing score
    return boxes[keep], scores[keep]


def rpn_losses(
    anchors: Tensor,
    objectness_logits: Tensor,
    anchor_deltas: Tensor,
    *,
    image_sizes: list[tuple[int, int]],
    targets: list[Target],
    positive_iou: float,
    negative_iou: float,
    batch_size: int,
    positive_fraction: float,
    box_loss_beta: float,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Objectness (logistic) and box (smooth L1) losses over the sampled anchors of every image.

    As the code: both are averaged over the number of sampled anchors (256 per image), so the
    box loss, which only positives contribute to, is small when positives are few.

    Args:
        anchors (Tensor[T, 4]), objectness_logits (Tensor[N, T]), anchor_deltas (Tensor[N, T, 4]).
        image_sizes: ``(height, width)`` of each image; targets: one per image.
        positive_iou, negative_iou: anchor labels (:func:`matching.label_anchors`).
        batch_size, positive_fraction: anchors sampled per image (:func:`matching.sample_pos_neg`).
        box_loss_beta: where the smooth L1 turns from quadratic to linear.
        generator: a seeded ``torch.Generator`` for a reproducible sample (None: global RNG).

    Returns:
        ``{"loss_rpn_obj": ..., "loss_rpn_box": ...}``, scalars.
    """
    sampled_logits, sampled_labels, pos_deltas, pos_targets = [], [], [], []
    per_image = zip(objectness_logits, anchor_deltas, image_sizes, targets, strict=True)
    for logits_i, deltas_i, size_i, target_i in per_image:
        gt_boxes = target_i["boxes"].to(anchors)
        labels, matched_gt = label_anchors(
            anchors, gt_boxes, size_i, positive_iou=positive_iou, negative_iou=negative_iou
        )
        pos_idx, neg_idx = sample_pos_neg(
            labels, batch_size=batch_size, positive_fraction=positive_fraction, generator=generator
        )
        sampled = torch.cat([pos_idx, neg_idx])
        sampled_logits.append(logits_i[sampled])
        sampled_labels.append(labels[sampled].to(logits_i.dtype))
        pos_deltas.append(deltas_i[pos_idx])
        pos_targets.append(encode_boxes(gt_boxes[matched_gt[pos_idx]], anchors[pos_idx]))
    logits, labels = torch.cat(sampled_logits), torch.cat(sampled_labels)
    num_sampled = max(logits.numel(), 1)
    loss_obj = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / num_sampled
    loss_box = F.smooth_l1_loss(
        torch.cat(pos_deltas), torch.cat(pos_targets), beta=box_loss_beta, reduction="sum"
    ) / num_sampled
    return {"loss_rpn_obj": loss_obj, "loss_rpn_box": loss_box}


class RegionProposalNetwork(nn.Module):
    """Stage 1: the head, anchors, proposals and (when targets are given) the two losses."""

    def __init__(
        self,
        *,
        in_channels: int,
        stride: int,
        conv_channels: int = RPNConfig.conv_channels,
        anchor_base_size: int = RPNConfig.anchor_base_size,
        anchor_ratios: tuple[float, ...] = RPNConfig.anchor_ratios,
        anchor_scales: tuple[float, ...] = RPNConfig.anchor_scales,
        positive_iou: float = RPNConfig.positive_iou,
        negative_iou: float = RPNConfig.negative_iou,
        batch_size: int = RPNConfig.batch_size,
        positive_fraction: float = RPNConfig.positive_fraction,
        box_loss_beta: float = RPNConfig.box_loss_beta,
        nms_iou: float = RPNConfig.nms_iou,
        pre_nms_top_n: tuple[int, int] = (
            RPNConfig.pre_nms_top_n_train,
            RPNConfig.pre_nms_top_n_test,
        ),
        post_nms_top_n: tuple[int, int] = (
            RPNConfig.post_nms_top_n_train,
            RPNConfig.post_nms_top_n_test,
        ),
        min_size: float = RPNConfig.min_size,
        delta_grad_clip: float | None = None,
    ):
        """``pre_nms_top_n`` / ``post_nms_top_n`` are ``(train, test)`` pairs; the other
        arguments are those of :func:`generate_proposals` and :func:`rpn_losses`."""
        super().__init__()
        base = generate_base_anchors(anchor_base_size, anchor_ratios, anchor_scales)  # (A, 4)
        self.register_buffer("base_anchors", base, persistent=False)
        self.head = RPNHead(in_channels, conv_channels, base.shape[0])
        self.stride = stride
        self.positive_iou, self.negative_iou = positive_iou, negative_iou
        self.batch_size, self.positive_fraction = batch_size, positive_fraction
        self.box_loss_beta, self.nms_iou, self.min_size = box_loss_beta, nms_iou, min_size
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.delta_grad_clip = delta_grad_clip

    def forward(
        self,
        features: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[Target] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[RPNOutput, dict[str, Tensor]]:
        """features (N, C, h, w) of a padded batch; ``image_sizes`` the true ``(H, W)`` of each
        image."""
        logits, deltas = self.head(features)  # (N, T), (N, T, 4)
        feature_size = tuple(features.shape[-2:])
        anchors = grid_anchors(self.base_anchors, feature_size, self.stride)  # (T, 4)
        phase = 0 if self.training else 1
        proposals, scores = [], []
        for logits_i, deltas_i, size_i in zip(logits, deltas, image_sizes, strict=True):
            boxes_i, scores_i = generate_proposals(
                anchors,
                logits_i,
                deltas_i,
                image_size=size_i,
                pre_nms_top_n=self.pre_nms_top_n[phase],
                post_nms_top_n=self.post_nms_top_n[phase],
                nms_iou=self.nms_iou,
                min_size=self.min_size,
                delta_grad_clip=self.delta_grad_clip,
            )
            proposals.append(boxes_i)
            scores.append(scores_i)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = rpn_losses(
                anchors,
                logits,
                deltas,
                image_sizes=image_sizes,
                targets=targets,
                positive_iou=self.positive_iou,
                negative_iou=self.negative_iou,
                batch_size=self.batch_size,
                positive_fraction=self.positive_fraction,
                box_loss_beta=self.box_loss_beta,
                generator=generator,
            )
        return RPNOutput(anchors, logits, deltas, proposals, scores), losses
