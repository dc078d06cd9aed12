"""The Multi-task Network Cascade: stages wired together, 3- or 5-stage
(docs/paper_vs_code.md, section "The stage bridge and the 5-stage cascade").

    features  = backbone(images)
    stage 1   boxes    = RPN(features)                         loss_rpn_obj, loss_rpn_box
    stage 2   masks    = MaskHead(RoIWarp(features, boxes))     loss_mask
    stage 3   classes  = Classifier(RoIWarp(...), masks)        loss_cls_mask, loss_cls_box,
                                                                loss_box_reg
    stage 4   masks'   = stage 2 on the stage-3 regressed boxes loss_mask_s4
    stage 5   classes' = stage 3 on those boxes and masks'      loss_cls_mask_s5,
                                                                loss_cls_box_s5, loss_box_reg_s5

Stages 2-3 and 4-5 are ONE loop over cascade steps (as detectron2's ``CascadeROIHeads``):
step k runs the shared mask and classification heads on its boxes (stages 2k+2 and 2k+3),
computes its losses, whose keys carry the suffix of those stage numbers, and regresses the
boxes of step k+1. Stages 4-5 share the weights of stages 2-3.

In the paper's notation (B boxes, M masks, C categories: names of stage outputs, not shape
letters) the loss is L = L1(B) + L2(M | B) + L3(C | M, B) (+ L4 + L5): the box coordinates are
outputs of stage 1 and inputs of the RoI warping, and the warping is differentiable in them,
so the later losses train stage 1 too, unless ``detach_boxes=True`` (what torchvision and
detectron2 do). Inference always runs all 5 stages [paper] and merges the stage-3 and stage-5
candidates (postprocess.py).

Shapes (legend in structures.py): N images, R RoIs in the batch (R_i of image i), C channels,
P RoI-feature side, M mask side, K foreground classes, Q candidates of an image.
"""

from __future__ import annotations

import dataclasses
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
from mnc_teach.structures import Target, check_images, check_targets

__all__ = [
    "MNC",
    "CascadeIntermediates",
    "InferenceSettings",
    "LossSettings",
    "MaskClassifyOutput",
    "RoISampling",
    "batch_images",
    "build_mnc",
    "cascade_loss",
    "refine_boxes",
]

VAL_SAMPLE_SEED = 0  # RoI / anchor sampling seed for losses computed in eval mode (validation)


def batch_images(images: list[Tensor], stride: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """Pad images (bottom/right, zeros) to one ``Tensor[N, 3, H', W']``, H' and W' multiples
    of ``stride``; also return the ``(H, W)`` of each image."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height = -(-max(h for h, _ in sizes) // stride) * stride  # round up
    width = -(-max(w for _, w in sizes) // stride) * stride
    batch = images[0].new_zeros((len(images), 3, height, width))
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = im
    return batch, sizes


def refine_boxes(
    mask_cls_logits: Tensor,
    box_deltas: Tensor,
    boxes: Tensor,
    *,
    image_size: tuple[int, int],
    weights: tuple[float, ...],
    delta_grad_clip: float | None = None,
) -> Tensor:
    """Stage-3 regressed boxes (stage 4's input): each box moved by the deltas of its most
    likely foreground class (mask-level score), clipped to the image
    [code: stage_bridge_layer.py].

    Differentiable in ``box_deltas`` and ``boxes``. mask_cls_logits (R, K+1),
    box_deltas (R, 4(K+1)), boxes (R, 4) -> (R, 4). ``delta_grad_clip`` clamps the gradient
    reaching the deltas (the code: 1/512).
    """
    if boxes.shape[0] == 0:
        return boxes
    best_fg = mask_cls_logits.detach()[:, 1:].argmax(dim=1) + 1  # (R,) in 1..K
    rows = torch.arange(boxes.shape[0])
    deltas = box_deltas.view(boxes.shape[0], -1, 4)[rows, best_fg]  # (R, K+1, 4) -> (R, 4)
    clamp_gradient(deltas, delta_grad_clip)
    return clip_boxes(decode_boxes(deltas, boxes, weights=weights), image_size)


def cascade_loss(losses: dict[str, Tensor]) -> Tensor:
    """The training objective L = L1(B) + L2(M | B) + L3(C | M, B) (+ L4 + L5 in 5 stages):
    the sum of every stage's loss terms (each already weighted), a scalar that keeps the graph.

    losses: ``{name: Tensor[]}`` as :class:`MNC` returns them in training.
    """
    if not losses:
        raise ValueError("cascade_loss got no loss terms; the model returns them in training")
    terms = iter(losses.values())
    total = next(terms)
    for term in terms:
        total = total + term
    return total


@dataclass(frozen=True)
class RoISampling:
    """How a cascade step chooses its training RoIs (``config.RoIConfig`` holds the defaults).

    Step 0 (stages 2-3) draws ``batch_size`` RoIs per image from the proposals with
    :func:`matching.sample_rois`; later steps keep every regressed box and match it with
    :func:`matching.match_rois` [code: stage_bridge_layer.py]. ``append_gt_boxes`` adds the
    ground-truth boxes to the candidates of every step.
    """

    batch_size: int
    fg_fraction: float
    fg_iou: float
    bg_iou_low: float
    hard_bg_fraction: float
    append_gt_boxes: bool


@dataclass(frozen=True)
class LossSettings:
    """The settings of each cascade step's losses (defaults: ``config.MaskHeadConfig`` and
    ``config.ClassifierConfig``).

    Attributes:
        mask_loss_weight: multiplies the mask loss (the paper: 1).
        mask_target_threshold: binarises the resized ground-truth masks and the predicted
            masks of the mask-level labels.
        mask_iou_fg: smallest mask IoU of a mask-level foreground RoI.
        box_loss_beta: smooth L1 beta of the box regression.
        mask_grad_fg_only: the gradient that stage 3 sends into the stage-2 masks passes only
            for RoIs with a foreground mask-level label [code: mask_layer.py, backward];
            False: for every RoI [paper]. Training only.
    """

    mask_loss_weight: float
    mask_target_threshold: float
    mask_iou_fg: float
    box_loss_beta: float
    mask_grad_fg_only: bool


@dataclass(frozen=True)
class InferenceSettings:
    """What inference runs and keeps (``config.InferenceConfig`` holds the defaults and
    their sources). ``num_stages``: 3 or 5; the rest are the arguments of
    :func:`postprocess.postprocess_detections`."""

    num_stages: int
    nms_iou: float
    detections_per_image: int
    score_threshold: float
    mask_voting: bool
    vote_iou: float
    mask_threshold: float


@dataclass
class MaskClassifyOutput:
    """One cascade step: stages 2-3 (or 4-5) over a set of boxes; the training fields are
    None at inference.

    Attributes:
        boxes (list of Tensor[R_i, 4]): the boxes of each image.
        rois (Tensor[R, 5]): the same, concatenated with the image index in column 0.
        roi_features (Tensor[R, C, P, P]): warped + max-pooled features.
        mask_logits (Tensor[R, M, M]): stage-2 mask logits (``mask_probs`` = sigmoid).
        mask_cls_logits (Tensor[R, K+1]): the mask-level classifier (``mask_cls_probs`` =
            softmax), the inference score; box_cls_logits (Tensor[R, K+1]): the box-level one.
        box_deltas (Tensor[R, 4(K+1)]): stage-3 class-specific box regression.
        classifier_masks (Tensor[R, M, M]): the sigmoid of ``mask_logits`` that stage 3 pools
            with: the same values as ``mask_probs``, its own tensor so that a hook on it
            gates only the gradient stage 3 sends into stage 2 (``mask_grad_fg_only``).
        box_labels, mask_labels (Tensor[R]): training labels; mask_targets (Tensor[R, M, M]).
    """

    boxes: list[Tensor]
    rois: Tensor
    roi_features: Tensor
    mask_logits: Tensor
    mask_cls_logits: Tensor
    box_cls_logits: Tensor
    box_deltas: Tensor
    classifier_masks: Tensor | None = None
    box_labels: Tensor | None = None
    mask_labels: Tensor | None = None
    mask_targets: Tensor | None = None

    @property
    def mask_probs(self) -> Tensor:
        return torch.sigmoid(self.mask_logits)

    @property
    def mask_cls_probs(self) -> Tensor:
        return F.softmax(self.mask_cls_logits, dim=1)

    def per_image(self, tensor: Tensor) -> list[Tensor]:
        """Split a per-RoI tensor into one tensor per image."""
        return list(tensor.split([b.shape[0] for b in self.boxes]))


@dataclass
class CascadeIntermediates:
    """What every stage produced, for notebooks and widgets (``return_intermediates=True``).

    ``stages_23`` ran on the stage-1 boxes, ``stages_45`` on the stage-3 regressed boxes
    (``refined_boxes``). In training mode they hold the sampled RoIs, in eval mode all
    proposals (with targets in eval mode: the RoIs of the validation losses).
    """

    image_sizes: list[tuple[int, int]]
    features: Tensor
    rpn: RPNOutput
    stages_23: MaskClassifyOutput | None = None
    refined_boxes: list[Tensor] = field(default_factory=list)
    stages_45: MaskClassifyOutput | None = None


@dataclass
class _CascadeRun:
    """One run of the cascade steps: each step's output, and the regressed boxes that fed
    each later step (``refined[k]`` fed step k+1)."""

    steps: list[MaskClassifyOutput]
    refined: list[list[Tensor]]


def _loss_suffix(stage: int) -> str:
    """The loss-key suffix of a stage: "" for stages 1-3, "_s4", "_s5" for the repeated ones."""
    return "" if stage <= 3 else f"_s{stage}"


class MNC(nn.Module):
    """Multi-task Network Cascade.
    ``forward(images, targets=None, *, return_intermediates=False, detect=None)``:

    * train mode, with targets: ``([], losses)``;
    * eval mode: ``(detections, {})``, or ``(detections, losses)`` when targets are given
      (validation losses; anchors and RoIs are then sampled with a fixed seed);
      ``detect=False`` skips inference (``([], losses)``: validation losses at half the cost);
    * ``return_intermediates=True`` appends a :class:`CascadeIntermediates`.

    Built by :func:`build_mnc`; the settings are attributes (``model.inference``,
    ``model.roi_sampling``, ``model.loss_settings``, ...), which the model's methods read.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_warp: RoIWarpPool,
        mask_head: MaskHead,
        classifier: ClassifierHead,
        num_classes: int,
        num_stages: int,
        roi_sampling: RoISampling,
        loss_settings: LossSettings,
        inference: InferenceSettings,
        box_weights: tuple[float, float, float, float],
        box_grad_clip: float | None,
    ):
        """``num_stages``: the training cascade, 3 or 5; ``box_weights``: stage 3's box-delta
        weights; ``box_grad_clip``: clamp of the box gradient reaching the stage-3 deltas."""
        super().__init__()
        self.backbone, self.rpn, self.roi_warp = backbone, rpn, roi_warp
        self.mask_head, self.classifier = mask_head, classifier
        self.num_classes, self.num_stages = num_classes, num_stages
        self.roi_sampling, self.loss_settings = roi_sampling, loss_settings
        self.inference = inference
        self.box_weights, self.box_grad_clip = box_weights, box_grad_clip

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: list[Tensor],
        targets: list[Target] | None = None,
        *,
        return_intermediates: bool = False,
        detect: bool | None = None,
    ):
        if targets is not None:
            check_targets(images, targets, self.num_classes)
        elif self.training:
            raise ValueError("MNC in train mode needs targets; call model.eval() for inference")
        else:
            check_images(images)
        batch, image_sizes = batch_images(images, self.backbone.stride)
        features = self.backbone(batch)  # (N, 3, H, W) -> (N, C, h, w)
        generator = None
        if targets is not None and not self.training:
            generator = torch.Generator(device=features.device).manual_seed(VAL_SAMPLE_SEED)
        rpn_out, losses = self.rpn(features, image_sizes, targets, generator=generator)

        runs: list[_CascadeRun] = []  # the training run first: its RoIs are the intermediates
        if targets is not None:
            run, cascade_losses = self._run_cascade(
                features, rpn_out.proposals, image_sizes,
                num_stages=self.num_stages, targets=targets, generator=generator,
            )
            losses.update(cascade_losses)
            runs.append(run)
        detections: list[dict[str, Tensor]] = []
        if (not self.training) if detect is None else detect:
            proposals = [p.detach() for p in rpn_out.proposals]
            run, _ = self._run_cascade(
                features, proposals, image_sizes, num_stages=self.inference.num_stages
            )
            detections = self._detections(run, image_sizes)
            runs.append(run)
        if not return_intermediates:
            return detections, losses
        return detections, losses, _intermediates(image_sizes, features, rpn_out, runs)

    # ------------------------------------------------------------------ the cascade steps
    def _run_cascade(
        self,
        features: Tensor,
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        num_stages: int,
        targets: list[Target] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[_CascadeRun, dict[str, Tensor]]:
        """Stages 2..``num_stages`` as one loop over cascade steps, starting from the
        proposals: run the stages on the step's boxes, compute the step's losses (with
        targets: on RoIs sampled or matched from those boxes), regress the next step's boxes."""
        run = _CascadeRun(steps=[], refined=[])
        losses: dict[str, Tensor] = {}
        boxes = proposals
        num_steps = (num_stages - 1) // 2
        for step in range(num_steps):
            samples = None
            if targets is not None:
                samples = self._training_rois(boxes, targets, step=step, generator=generator)
                boxes = [s.boxes for s in samples]
            output = self._run_stages(features, boxes)
            if samples is not None:
                output, step_losses = self._step_losses(output, samples, targets, step=step)
                losses.update(step_losses)
            run.steps.append(output)
            if step + 1 < num_steps:
                boxes = self._refine(output, image_sizes)
                run.refined.append(boxes)
        return run, losses

    def _training_rois(
        self,
        boxes: list[Tensor],
        targets: list[Target],
        *,
        step: int,
        generator: torch.Generator | None,
    ) -> list[RoISample]:
        """The training RoIs of a step, per image. Step 0: drawn from the proposals (plus the
        ground truth) [code: proposal_target_layer.py]; later steps: every regressed box plus
        the ground truth, matched, no subsampling [code: stage_bridge_layer.py]."""
        s = self.roi_sampling
        if step == 0:
            return [
                sample_rois(
                    b, t["boxes"], t["labels"],
                    batch_size=s.batch_size, fg_fraction=s.fg_fraction, fg_iou=s.fg_iou,
                    bg_iou_low=s.bg_iou_low, hard_bg_fraction=s.hard_bg_fraction,
                    append_gt_boxes=s.append_gt_boxes, generator=generator,
                )
                for b, t in zip(boxes, targets, strict=True)
            ]
        samples = []
        for b, t in zip(boxes, targets, strict=True):
            candidates = torch.cat([b, t["boxes"].to(b)]) if s.append_gt_boxes else b
            samples.append(match_rois(candidates, t["boxes"], t["labels"], fg_iou=s.fg_iou))
        return samples

    def _run_stages(self, features: Tensor, boxes: list[Tensor]) -> MaskClassifyOutput:
        """Stages 2 and 3 (or 4 and 5, same weights) on the given boxes of every image."""
        rois = torch.cat(
            [torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1) for i, b in enumerate(boxes)]
        )  # (R, 5)
        roi_features = self.roi_warp(features, rois)  # (R, C, P, P)
        mask_logits = self.mask_head(roi_features)  # (R, M, M)
        classifier_masks = torch.sigmoid(mask_logits)  # stage 3's own copy (mask_grad_fg_only)
        out = self.classifier(roi_features, classifier_masks)
        return MaskClassifyOutput(
            boxes=boxes, rois=rois, roi_features=roi_features, mask_logits=mask_logits,
            mask_cls_logits=out.mask_cls_logits, box_cls_logits=out.box_cls_logits,
            box_deltas=out.box_deltas, classifier_masks=classifier_masks,
        )

    def _refine(
        self, output: MaskClassifyOutput, image_sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """The boxes of the next step: each box of ``output`` regressed (:func:`refine_boxes`)."""
        per_image = zip(
            output.per_image(output.mask_cls_logits),
            output.per_image(output.box_deltas),
            output.boxes,
            image_sizes,
            strict=True,
        )
        return [
            refine_boxes(
                logits, deltas, boxes,
                image_size=size, weights=self.box_weights, delta_grad_clip=self.box_grad_clip,
            )
            for logits, deltas, boxes, size in per_image
        ]

    # ------------------------------------------------------------------ training
    def _step_losses(
        self,
        output: MaskClassifyOutput,
        samples: list[RoISample],
        targets: list[Target],
        *,
        step: int,
    ) -> tuple[MaskClassifyOutput, dict[str, Tensor]]:
        """The mask loss and the classification losses of one step on its sampled RoIs, and
        ``output`` with its training fields (labels, mask targets) filled in."""
        settings = self.loss_settings
        mask_size = output.mask_logits.shape[-1]
        all_targets, gt_areas, gt_boxes = [], [], []
        for sample, t in zip(samples, targets, strict=True):
            masks = t["masks"]
            all_targets.append(
                mask_targets(
                    masks, sample.matched_gt, sample.boxes,
                    mask_size=mask_size, threshold=settings.mask_target_threshold,
                )
            )
            if masks.shape[0]:
                gt_areas.append(masks.flatten(1).sum(1).to(sample.boxes.dtype)[sample.matched_gt])
                gt_boxes.append(t["boxes"].to(sample.boxes)[sample.matched_gt])
            else:  # an image without instances: every RoI is background
                gt_areas.append(sample.boxes.new_zeros(sample.boxes.shape[0]))
                gt_boxes.append(sample.boxes.detach().clone())
        roi_mask_targets = torch.cat(all_targets)  # (R, M, M)
        box_labels = torch.cat([s.labels for s in samples])  # (R,)
        boxes = torch.cat([s.boxes for s in samples])  # (R, 4)
        mask_labels = mask_level_labels(
            output.mask_probs, roi_mask_targets, boxes,
            gt_areas=torch.cat(gt_areas), box_labels=box_labels,
            mask_iou_fg=settings.mask_iou_fg, threshold=settings.mask_target_threshold,
        )
        if settings.mask_grad_fg_only:
            _gate_mask_gradient(output.classifier_masks, keep=mask_labels > 0)
        head_out = ClassifierOutput(
            output.mask_cls_logits, output.box_cls_logits, output.box_deltas
        )
        cls_losses = classifier_losses(
            head_out, mask_labels=mask_labels, box_labels=box_labels,
            boxes=boxes, gt_boxes=torch.cat(gt_boxes),
            box_weights=self.box_weights, box_loss_beta=settings.box_loss_beta,
        )
        positive = box_labels > 0
        loss_mask = mask_loss(output.mask_logits, roi_mask_targets, positive)
        # step k runs stages 2k+2 (masks) and 2k+3 (classes): loss_mask, loss_mask_s4, ...
        mask_suffix, cls_suffix = _loss_suffix(2 * step + 2), _loss_suffix(2 * step + 3)
        losses = {f"loss_mask{mask_suffix}": settings.mask_loss_weight * loss_mask}
        losses.update({f"{name}{cls_suffix}": value for name, value in cls_losses.items()})
        output = dataclasses.replace(
            output, box_labels=box_labels, mask_labels=mask_labels, mask_targets=roi_mask_targets
        )
        return output, losses

    # ------------------------------------------------------------------ inference
    def _detections(
        self, run: _CascadeRun, image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Every step's boxes, masks and mask-level class probabilities are candidates; per
        image they are merged (stage 3's first, then stage 5's) and post-processed."""
        inf = self.inference
        candidates = [
            (step.boxes, step.per_image(step.mask_probs), step.per_image(step.mask_cls_probs))
            for step in run.steps
        ]
        detections = []
        for i, size in enumerate(image_sizes):
            boxes = torch.cat([c[0][i] for c in candidates])  # (Q, 4)
            masks = torch.cat([c[1][i] for c in candidates])  # (Q, M, M)
            probs = torch.cat([c[2][i] for c in candidates])  # (Q, K+1)
            detections.append(
                postprocess_detections(
                    boxes, masks, probs,
                    image_size=size, nms_iou=inf.nms_iou,
                    detections_per_image=inf.detections_per_image,
                    score_threshold=inf.score_threshold, mask_voting=inf.mask_voting,
                    vote_iou=inf.vote_iou, mask_threshold=inf.mask_threshold,
                )
            )
        return detections


def _gate_mask_gradient(classifier_masks: Tensor | None, keep: Tensor) -> None:
    """Zero the gradient rows of ``classifier_masks`` (R, M, M) where ``keep`` (R,) is False,
    when backward passes through it [code: mask_layer.py, backward]. The forward values stay."""
    if classifier_masks is None or not classifier_masks.requires_grad:
        return  # no graph (validation losses under no_grad): nothing to gate
    keep = keep.detach().clone()[:, None, None]  # (R,) -> (R, 1, 1)
    classifier_masks.register_hook(lambda grad: torch.where(keep, grad, torch.zeros_like(grad)))


def _intermediates(
    image_sizes: list[tuple[int, int]],
    features: Tensor,
    rpn_out: RPNOutput,
    runs: list[_CascadeRun],
) -> CascadeIntermediates:
    """The intermediates of a forward pass; each step is taken from the first run that has
    it (the training run before the inference run)."""
    stages_23 = next((run.steps[0] for run in runs if run.steps), None)
    later = next((run for run in runs if len(run.steps) > 1), None)
    return CascadeIntermediates(
        image_sizes=image_sizes,
        features=features,
        rpn=rpn_out,
        stages_23=stages_23,
        refined_boxes=later.refined[0] if later is not None else [],
        stages_45=later.steps[1] if later is not None else None,
    )


def build_mnc(cfg: MNCConfig) -> MNC:
    """The model described by ``cfg`` (with the training loop, the only code that reads a
    config)."""
    if cfg.num_stages not in (3, 5) or cfg.inference.num_stages not in (3, 5):
        raise ValueError(
            f"num_stages must be 3 or 5, got {cfg.num_stages} (train) / "
            f"{cfg.inference.num_stages} (inference)"
        )
    b, r, roi, inf = cfg.backbone, cfg.rpn, cfg.roi, cfg.inference
    backbone, imagenet_state = build_backbone(
        b.name, tiny_channels=b.tiny_channels, pretrained=b.pretrained,
        weights_path=b.weights_path, frozen_layers=b.frozen_layers,
    )
    channels = backbone.out_channels
    rpn = RegionProposalNetwork(
        in_channels=channels, stride=backbone.stride, conv_channels=r.conv_channels,
        anchor_base_size=r.anchor_base_size, anchor_ratios=r.anchor_ratios,
        anchor_scales=r.anchor_scales, positive_iou=r.positive_iou, negative_iou=r.negative_iou,
        batch_size=r.batch_size, positive_fraction=r.positive_fraction,
        box_loss_beta=r.box_loss_beta, nms_iou=r.nms_iou,
        pre_nms_top_n=(r.pre_nms_top_n_train, r.pre_nms_top_n_test),
        post_nms_top_n=(r.post_nms_top_n_train, r.post_nms_top_n_test),
        min_size=r.min_size, delta_grad_clip=cfg.box_grad_clip,
    )
    roi_warp = RoIWarpPool(
        output_size=roi.output_size, spatial_scale=1.0 / backbone.stride, pool=roi.warp_pool,
        detach_boxes=cfg.detach_boxes,
    )
    mask_head = MaskHead(
        in_channels=channels, roi_size=roi.output_size, mask_size=cfg.mask.mask_size,
        hidden_dim=cfg.mask.hidden_dim,
    )
    classifier = ClassifierHead(
        in_channels=channels, roi_size=roi.output_size, num_classes=cfg.num_classes,
        fc_dim=cfg.classifier.fc_dim, pathway_pool=cfg.classifier.pathway_pool,
    )
    fc_state = vgg16_fc_weights(imagenet_state) if b.name == "vgg16" else None
    fc6_inputs = classifier.mask_pathway[0].in_features
    if fc_state is not None and fc6_inputs == fc_state["fc6.weight"].shape[1]:
        classifier.load_fc_weights(fc_state)
    roi_sampling = RoISampling(
        batch_size=roi.batch_size, fg_fraction=roi.fg_fraction, fg_iou=roi.fg_iou,
        bg_iou_low=roi.bg_iou_low, hard_bg_fraction=roi.hard_bg_fraction,
        append_gt_boxes=roi.append_gt_boxes,
    )
    loss_settings = LossSettings(
        mask_loss_weight=cfg.mask.loss_weight, mask_target_threshold=cfg.mask.target_threshold,
        mask_iou_fg=cfg.classifier.mask_iou_fg, box_loss_beta=cfg.classifier.box_loss_beta,
        mask_grad_fg_only=cfg.classifier.mask_grad_fg_only,
    )
    inference = InferenceSettings(
        num_stages=inf.num_stages, nms_iou=inf.nms_iou,
        detections_per_image=inf.detections_per_image, score_threshold=inf.score_threshold,
        mask_voting=inf.mask_voting, vote_iou=inf.vote_iou, mask_threshold=inf.mask_threshold,
    )
    return MNC(
        backbone=backbone, rpn=rpn, roi_warp=roi_warp, mask_head=mask_head,
        classifier=classifier, num_classes=cfg.num_classes, num_stages=cfg.num_stages,
        roi_sampling=roi_sampling, loss_settings=loss_settings, inference=inference,
        box_weights=cfg.classifier.box_weights, box_grad_clip=cfg.box_grad_clip,
    )
