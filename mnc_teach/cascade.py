"""The Multi-task Network Cascade: stages wired together, 3- or 5-stage (MNC_SPEC §1, §6).

    features  = backbone(images)
    stage 1   boxes B     = RPN(features)                      loss_rpn_obj, loss_rpn_box
    stage 2   masks M     = MaskHead(RoIWarp(features, B))      loss_mask
    stage 3   classes C   = Classifier(RoIWarp(...), M)         loss_cls, loss_cls_box, loss_box
    stage 4   masks M'    = stage 2 on B' (stage-3 regressed boxes)   loss_mask_s4
    stage 5   classes C'  = stage 3 on B', M'                   loss_cls_s5, loss_cls_box_s5, loss_box_s5

L = L1(B) + L2(M | B) + L3(C | M, B) (+ L4 + L5): the box coordinates B are outputs of stage
1 and inputs of the RoI warping, and the warping is differentiable in them, so the later
losses train stage 1 too, unless ``detach_boxes=True`` (what torchvision and detectron2 do).
Stages 4-5 share the weights of stages 2-3. Inference always runs all 5 stages [paper] and
merges the stage-3 and stage-5 candidates (postprocess.py).

Shapes (legend in structures.py): N images, R RoIs in the batch, C channels, P RoI-feature
side, M mask side, K foreground classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnc_teach.backbone import build_backbone, vgg16_fc_weights
from mnc_teach.boxes import clip_boxes, decode_boxes
from mnc_teach.config import MNCConfig
from mnc_teach.matching import RoISample, match_rois, sample_rois
from mnc_teach.postprocess import postprocess_detections
from mnc_teach.roi_warp import RoIWarpPool
from mnc_teach.stage1_rpn import RegionProposalNetwork, RPNOutput, clamp_gradient
from mnc_teach.stage2_masks import MaskHead, mask_loss, mask_targets
from mnc_teach.stage3_classify import (
    ClassifierHead,
    ClassifierOutput,
    classifier_losses,
    mask_level_labels,
)
from mnc_teach.structures import Target, check_targets

__all__ = ["MNC", "CascadeIntermediates", "MaskClassifyOutput", "batch_images", "build_mnc", "refine_boxes"]

VAL_SAMPLE_SEED = 0  # RoI / anchor sampling seed for losses computed in eval mode (validation)


def batch_images(images: list[Tensor], stride: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """Pad images (bottom/right, zeros) to one ``Tensor[N, 3, H', W']``, H' and W' multiples of ``stride``."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height = -(-max(h for h, _ in sizes) // stride) * stride  # round up
    width = -(-max(w for _, w in sizes) // stride) * stride
    batch = images[0].new_zeros((len(images), 3, height, width))
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = im
    return batch, sizes


def refine_boxes(
    cls_logits: Tensor,
    box_deltas: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    weights: tuple[float, ...],
    delta_grad_clip: float | None = None,
) -> Tensor:
    """Stage-3 regressed boxes (stage 4's input): each box moved by the deltas of its most
    likely foreground class (mask-level score), clipped to the image [code: stage_bridge_layer.py].

    Differentiable in ``box_deltas`` and ``boxes``. cls_logits (R, K+1), box_deltas (R, 4(K+1)),
    boxes (R, 4) -> (R, 4). ``delta_grad_clip`` clamps the gradient reaching the deltas (the code: 1/512).
    """
    if boxes.shape[0] == 0:
        return boxes
    best_fg = cls_logits.detach()[:, 1:].argmax(dim=1) + 1  # (R,) in 1..K
    deltas = box_deltas.view(boxes.shape[0], -1, 4)[torch.arange(boxes.shape[0]), best_fg]  # (R, 4)
    clamp_gradient(deltas, delta_grad_clip)
    return clip_boxes(decode_boxes(deltas, boxes, weights), image_size)


@dataclass
class MaskClassifyOutput:
    """One pass of stages 2-3 (or 4-5) over a set of boxes; training fields are None at inference.

    Attributes:
        boxes (list of Tensor[R_i, 4]): the boxes of each image.
        rois (Tensor[R, 5]): the same, concatenated with the image index in column 0.
        roi_features (Tensor[R, C, P, P]): warped + max-pooled features.
        mask_logits (Tensor[R, M, M]): stage-2 mask logits (``mask_probs`` = sigmoid).
        cls_logits, box_cls_logits (Tensor[R, K+1]); box_deltas (Tensor[R, 4(K+1)]): stage 3.
        box_labels, mask_labels (Tensor[R]): training labels; mask_targets (Tensor[R, M, M]).
    """

    boxes: list[Tensor]
    rois: Tensor
    roi_features: Tensor
    mask_logits: Tensor
    cls_logits: Tensor
    box_cls_logits: Tensor
    box_deltas: Tensor
    box_labels: Tensor | None = None
    mask_labels: Tensor | None = None
    mask_targets: Tensor | None = None

    @property
    def mask_probs(self) -> Tensor:
        return torch.sigmoid(self.mask_logits)

    @property
    def cls_probs(self) -> Tensor:
        return F.softmax(self.cls_logits, dim=1)

    def per_image(self, tensor: Tensor) -> list[Tensor]:
        """Split a per-RoI tensor into one tensor per image."""
        return list(tensor.split([b.shape[0] for b in self.boxes]))


@dataclass
class CascadeIntermediates:
    """What every stage produced, for notebooks and widgets (``return_intermediates=True``).

    ``stages_23`` ran on the stage-1 boxes, ``stages_45`` on the stage-3 regressed boxes
    (``refined_boxes``). In training mode they hold the sampled RoIs, in eval mode all proposals.
    """

    image_sizes: list[tuple[int, int]]
    features: Tensor
    rpn: RPNOutput
    stages_23: MaskClassifyOutput | None = None
    refined_boxes: list[Tensor] = field(default_factory=list)
    stages_45: MaskClassifyOutput | None = None


class MNC(nn.Module):
    """Multi-task Network Cascade. ``forward(images, targets=None, return_intermediates=False)``.

    * train mode, with targets: ``([], losses)``;
    * eval mode: ``(detections, {})``, or ``(detections, losses)`` when targets are given
      (validation losses; anchors and RoIs are then sampled with a fixed seed);
      ``detect=False`` skips inference (``([], losses)``: validation losses at half the cost);
    * ``return_intermediates=True`` appends a :class:`CascadeIntermediates`.
    """

    def __init__(self, backbone: nn.Module, rpn: RegionProposalNetwork, roi_warp: RoIWarpPool, mask_head: MaskHead,
                 classifier: ClassifierHead, cfg: MNCConfig):  # fmt: skip
        super().__init__()
        self.backbone, self.rpn, self.roi_warp = backbone, rpn, roi_warp
        self.mask_head, self.classifier = mask_head, classifier
        self.cfg = cfg
        self.num_classes = cfg.num_classes

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: list[Tensor],
        targets: list[Target] | None = None,
        return_intermediates: bool = False,
        detect: bool | None = None,
    ):
        if targets is not None:
            check_targets(images, targets, self.num_classes)
        elif self.training:
            raise ValueError("MNC in train mode needs targets; call model.eval() for inference")
        batch, image_sizes = batch_images(images, self.backbone.stride)
        features = self.backbone(batch)  # (N, 3, H, W) -> (N, C, h, w)
        generator = None
        if targets is not None and not self.training:
            generator = torch.Generator(device=features.device).manual_seed(VAL_SAMPLE_SEED)
        rpn_out, losses = self.rpn(features, image_sizes, targets, generator)
        proposals = rpn_out.proposals
        inter = CascadeIntermediates(image_sizes, features, rpn_out)

        if targets is not None:
            losses.update(self._losses(features, proposals, image_sizes, targets, generator, inter))
        detections: list[dict[str, Tensor]] = []
        if (not self.training) if detect is None else detect:
            detections = self._detect(features, proposals, image_sizes, inter)
        return (detections, losses, inter) if return_intermediates else (detections, losses)

    def _run_stages(self, features: Tensor, boxes: list[Tensor]) -> MaskClassifyOutput:
        """Stages 2 and 3 (or 4 and 5, same weights) on the given boxes of every image."""
        rois = torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1) for i, b in enumerate(boxes)])  # (R, 5)
        roi_features = self.roi_warp(features, rois)  # (R, C, P, P)
        mask_logits = self.mask_head(roi_features)  # (R, M, M)
        out = self.classifier(roi_features, torch.sigmoid(mask_logits))
        return MaskClassifyOutput(boxes, rois, roi_features, mask_logits, out.cls_logits, out.box_cls_logits, out.box_deltas)

    def _refine(self, stages: MaskClassifyOutput, image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        weights = self.cfg.classifier.box_weights
        return [
            refine_boxes(logits, deltas, boxes, size, weights, self.cfg.box_grad_clip)
            for logits, deltas, boxes, size in zip(
                stages.per_image(stages.cls_logits), stages.per_image(stages.box_deltas), stages.boxes, image_sizes,
                strict=True,
            )
        ]

    # ------------------------------------------------------------------ training
    def _losses(self, features, proposals, image_sizes, targets, generator, inter) -> dict[str, Tensor]:
        roi = self.cfg.roi
        samples = [
            sample_rois(p, t["boxes"], t["labels"], roi.batch_size, roi.fg_fraction, roi.fg_iou, roi.bg_iou_low,
                        roi.hard_bg_fraction, roi.append_gt_boxes, generator)  # fmt: skip
            for p, t in zip(proposals, targets, strict=True)
        ]
        inter.stages_23 = self._run_stages(features, [s.boxes for s in samples])
        losses = self._stage_losses(inter.stages_23, samples, targets, mask_key="loss_mask", cls_suffix="")
        if self.cfg.num_stages == 5:
            # stage-3 regressed boxes + ground truth, all kept (no subsampling) [code: stage_bridge_layer.py]
            inter.refined_boxes = self._refine(inter.stages_23, image_sizes)
            samples_45 = []
            for boxes, t in zip(inter.refined_boxes, targets, strict=True):
                candidates = torch.cat([boxes, t["boxes"].to(boxes)]) if roi.append_gt_boxes else boxes
                samples_45.append(match_rois(candidates, t["boxes"], t["labels"], roi.fg_iou))
            inter.stages_45 = self._run_stages(features, [s.boxes for s in samples_45])
            losses.update(self._stage_losses(inter.stages_45, samples_45, targets, mask_key="loss_mask_s4", cls_suffix="_s5"))
        return losses

    def _stage_losses(self, stages: MaskClassifyOutput, samples: list[RoISample], targets: list[Target],
                      mask_key: str, cls_suffix: str) -> dict[str, Tensor]:  # fmt: skip
        """Stage-2 mask loss and stage-3 classification losses for sampled RoIs."""
        mask_size = stages.mask_logits.shape[-1]
        all_targets, gt_areas, gt_boxes = [], [], []
        for sample, t in zip(samples, targets, strict=True):
            masks = t["masks"]
            all_targets.append(mask_targets(masks, sample.matched_gt, sample.boxes, mask_size, self.cfg.mask.target_threshold))
            if masks.shape[0]:
                gt_areas.append(masks.flatten(1).sum(1).to(sample.boxes.dtype)[sample.matched_gt])
                gt_boxes.append(t["boxes"].to(sample.boxes)[sample.matched_gt])
            else:  # an image without instances: every RoI is background
                gt_areas.append(sample.boxes.new_zeros(sample.boxes.shape[0]))
                gt_boxes.append(sample.boxes.detach().clone())
        stages.mask_targets = torch.cat(all_targets)
        stages.box_labels = torch.cat([s.labels for s in samples])
        boxes = torch.cat([s.boxes for s in samples])
        stages.mask_labels = mask_level_labels(
            stages.mask_probs, stages.mask_targets, boxes, torch.cat(gt_areas), stages.box_labels,
            self.cfg.classifier.mask_iou_fg, self.cfg.mask.target_threshold,
        )
        head_out = ClassifierOutput(stages.cls_logits, stages.box_cls_logits, stages.box_deltas)
        cls = classifier_losses(head_out, stages.mask_labels, stages.box_labels, boxes, torch.cat(gt_boxes),
                                self.cfg.classifier.box_weights, self.cfg.classifier.box_loss_beta)  # fmt: skip
        losses = {mask_key: self.cfg.mask.loss_weight * mask_loss(stages.mask_logits, stages.mask_targets, stages.box_labels > 0)}
        losses.update({f"{name}{cls_suffix}": value for name, value in cls.items()})
        return losses

    # ------------------------------------------------------------------ inference
    def _detect(self, features, proposals, image_sizes, inter) -> list[dict[str, Tensor]]:
        stages_23 = self._run_stages(features, [p.detach() for p in proposals])
        candidates = [(stages_23.boxes, stages_23.per_image(stages_23.mask_probs), stages_23.per_image(stages_23.cls_probs))]
        if inter.stages_23 is None:
            inter.stages_23 = stages_23
        if self.cfg.inference.num_stages == 5:
            refined = self._refine(stages_23, image_sizes)
            stages_45 = self._run_stages(features, refined)
            candidates.append((refined, stages_45.per_image(stages_45.mask_probs), stages_45.per_image(stages_45.cls_probs)))
            if inter.stages_45 is None:
                inter.refined_boxes, inter.stages_45 = refined, stages_45
        inf = self.cfg.inference
        detections = []
        for i, size in enumerate(image_sizes):
            boxes = torch.cat([c[0][i] for c in candidates])  # (Q, 4): stage-3 then stage-5 candidates
            masks = torch.cat([c[1][i] for c in candidates])  # (Q, M, M)
            probs = torch.cat([c[2][i] for c in candidates])  # (Q, K+1)
            detections.append(postprocess_detections(
                boxes, masks, probs, size, inf.nms_iou, inf.detections_per_image, inf.score_threshold,
                inf.mask_voting, inf.vote_iou, inf.mask_threshold,
            ))  # fmt: skip
        return detections


def build_mnc(cfg: MNCConfig) -> MNC:
    """The model described by ``cfg`` (the only code that reads a config besides train.py)."""
    if cfg.num_stages not in (3, 5) or cfg.inference.num_stages not in (3, 5):
        raise ValueError(f"num_stages must be 3 or 5, got {cfg.num_stages} (train) / {cfg.inference.num_stages} (inference)")
    b, r = cfg.backbone, cfg.rpn
    backbone, imagenet_state = build_backbone(b.name, b.tiny_channels, b.pretrained, b.weights_path, b.frozen_layers)
    rpn = RegionProposalNetwork(
        backbone.out_channels, backbone.stride, r.conv_channels, r.anchor_base_size, r.anchor_ratios, r.anchor_scales,
        r.positive_iou, r.negative_iou, r.batch_size, r.positive_fraction, r.box_loss_beta, r.nms_iou,
        (r.pre_nms_top_n_train, r.pre_nms_top_n_test), (r.post_nms_top_n_train, r.post_nms_top_n_test), r.min_size,
        cfg.box_grad_clip,
    )
    roi_warp = RoIWarpPool(cfg.roi.output_size, 1.0 / backbone.stride, cfg.roi.warp_pool, cfg.detach_boxes)
    mask_head = MaskHead(backbone.out_channels, cfg.roi.output_size, cfg.mask.mask_size, cfg.mask.hidden_dim)
    classifier = ClassifierHead(backbone.out_channels, cfg.roi.output_size, cfg.num_classes, cfg.classifier.fc_dim,
                                cfg.classifier.pathway_pool)  # fmt: skip
    fc_state = vgg16_fc_weights(imagenet_state) if b.name == "vgg16" else None
    if fc_state is not None and classifier.mask_pathway[0].in_features == fc_state["fc6.weight"].shape[1]:
        classifier.load_fc_weights(fc_state)
    return MNC(backbone, rpn, roi_warp, mask_head, classifier, cfg)
