"""Stage 3: categorise each instance from mask-pooled and box-pooled features
(docs/paper_vs_code.md, section "Stages 2 and 3: RoI warping, masks and classes").

*Mask pooling* multiplies the RoI features by the stage-2 soft mask, resized to the
feature grid: ``F_mask = F_RoI * M`` (the paper's equation; differentiable in both, so the
classification losses also train stage 2: the paper's end-to-end loss passes that gradient for
every RoI; the official code only for RoIs with a foreground mask-level label, see
``config.ClassifierConfig.mask_grad_fg_only``). Two pathways of two fc layers each, one on
``F_mask`` and one on ``F_RoI``, are concatenated and feed three heads:

    mask_cls_logits  (K+1)-way *mask-level* classifier: the only score used at inference;
                     loss ``loss_cls_mask``;
    box_cls_logits   (K+1)-way *box-level* classifier: a training signal only; ``loss_cls_box``;
    box_deltas       class-specific box regression, 4 per class (background included, as the
                     code); ``loss_box_reg``.

Labels: a RoI is box-level foreground (its GT class) when its box IoU is >= 0.5; it is
mask-level foreground when in addition the stage-2 mask, binarised at 0.4, has mask IoU
>= 0.5 with the instance [paper; code ``mask_layer.py``].

For inference, :func:`compress_fc_layers` replaces each pathway's fc6 and fc7 by their
truncated SVD (Fast R-CNN §3.1): fewer multiply-adds for a small change of the outputs.

Shapes (legend in structures.py): R RoIs (R_fg: the box-level foreground ones), C channels,
P RoI-feature side, M mask side, K foreground classes. The default settings are defined
once, in ``config.ClassifierConfig`` and ``config.MaskHeadConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnc_teach.boxes import box_area, encode_boxes
from mnc_teach.config import ClassifierConfig, MaskHeadConfig

__all__ = [
    "ClassifierHead",
    "ClassifierOutput",
    "mask_pool",
    "mask_level_labels",
    "classifier_losses",
    "compress_fc_layers",
    "truncated_svd_linear",
]

CLS_INIT_STD = 0.01  # cls_score / seg_cls_score init (Fast R-CNN)
BOX_INIT_STD = 0.001  # bbox_pred init (Fast R-CNN)
# default truncated-SVD ranks of fc6 / fc7: the fc width divided by these, Fast R-CNN's
# 1024 and 256 on VGG-16's 4096-d fcs [Fast R-CNN §3.1]
FC6_SVD_DIVISOR = 4
FC7_SVD_DIVISOR = 16


def mask_pool(roi_features: Tensor, mask_probs: Tensor) -> Tensor:
    """``F_RoI * M``: features (R, C, P, P) times the soft masks (R, M, M) resized to P x P."""
    masks = F.interpolate(
        mask_probs[:, None], size=roi_features.shape[-2:], mode="bilinear", align_corners=False
    )  # (R, M, M) -> (R, 1, P, P)
    return roi_features * masks  # (R, C, P, P) * (R, 1, P, P)


@dataclass
class ClassifierOutput:
    """Stage-3 (or stage-5) outputs for R RoIs.

    Attributes:
        mask_cls_logits (Tensor[R, K+1]): mask-level class logits (the inference score).
        box_cls_logits (Tensor[R, K+1]): box-level class logits.
        box_deltas (Tensor[R, 4 * (K+1)]): encoded with the stage-3 box weights (10, 10, 5, 5).
    """

    mask_cls_logits: Tensor
    box_cls_logits: Tensor
    box_deltas: Tensor


class ClassifierHead(nn.Module):
    """Mask pathway + box pathway -> mask-level classifier, box-level classifier, box regression."""

    def __init__(
        self,
        *,
        in_channels: int,
        roi_size: int,
        num_classes: int,
        fc_dim: int = ClassifierConfig.fc_dim,
        pathway_pool: int = ClassifierConfig.pathway_pool,
    ):
        """``num_classes`` = K foreground classes; ``pathway_pool`` max-pools the RoI features
        before fc6 (the code: 14 x 14 -> 7 x 7 so that fc6 takes ImageNet VGG-16 weights)."""
        super().__init__()
        self.pathway_pool = pathway_pool
        fc_in = in_channels * (roi_size // pathway_pool) ** 2

        def pathway() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(fc_in, fc_dim),
                nn.ReLU(inplace=True),
                nn.Linear(fc_dim, fc_dim),
                nn.ReLU(inplace=True),
            )

        self.mask_pathway = pathway()  # fc6_mask, fc7_mask
        self.box_pathway = pathway()  # fc6, fc7
        # layer names kept as the checkpoints' state-dict keys: cls_score is the mask-level one
        self.cls_score = nn.Linear(2 * fc_dim, num_classes + 1)  # seg_cls_score: mask-level
        self.box_cls_score = nn.Linear(2 * fc_dim, num_classes + 1)  # cls_score: box-level
        self.box_pred = nn.Linear(2 * fc_dim, 4 * (num_classes + 1))  # bbox_pred
        for layer, std in (
            (self.cls_score, CLS_INIT_STD),
            (self.box_cls_score, CLS_INIT_STD),
            (self.box_pred, BOX_INIT_STD),
        ):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def load_fc_weights(self, fc_state: dict[str, Tensor]) -> None:
        """Both pathways start from the same ImageNet fc6/fc7 (keys ``fc6.weight`` ...)
        [paper; code]."""
        for pathway in (self.mask_pathway, self.box_pathway):
            for index, name in ((0, "fc6"), (2, "fc7")):
                pathway[index].load_state_dict(
                    {"weight": fc_state[f"{name}.weight"], "bias": fc_state[f"{name}.bias"]}
                )

    def _flat(self, x: Tensor) -> Tensor:
        if self.pathway_pool > 1:
            x = _max_pool(x, self.pathway_pool)  # (R, C, P, P) -> (R, C, P/2, P/2)
        return x.flatten(1)

    def forward(self, roi_features: Tensor, mask_probs: Tensor) -> ClassifierOutput:
        """roi_features (R, C, P, P); mask_probs (R, M, M) soft stage-2 masks in [0, 1]."""
        masked = mask_pool(roi_features, mask_probs)  # (R, C, P, P)
        mask_branch = self.mask_pathway(self._flat(masked))  # (R, fc_dim)
        box_branch = self.box_pathway(self._flat(roi_features))  # (R, fc_dim)
        joint = torch.cat([mask_branch, box_branch], dim=1)  # (R, 2 * fc_dim)
        return ClassifierOutput(
            mask_cls_logits=self.cls_score(joint),
            box_cls_logits=self.box_cls_score(joint),
            box_deltas=self.box_pred(joint),
        )


def _max_pool(x: Tensor, kernel: int) -> Tensor:
    """``F.max_pool2d(x, kernel)`` (stride = kernel, floor mode); (R, C, P, P) -> (R, C, P/k, P/k).

    Without gradient it is the elementwise maximum of the k x k strided sub-grids: the same
    values, several times faster on a CPU (max_pool2d also computes the argmax indices).
    With gradient it is max_pool2d, whose backward sends a tie's gradient to one element
    (torch.maximum would split it).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, kernel)
    height, width = x.shape[-2] // kernel * kernel, x.shape[-1] // kernel * kernel
    pooled = x[..., 0:height:kernel, 0:width:kernel]
    for row, col in product(range(kernel), range(kernel)):
        if row or col:
            pooled = torch.maximum(pooled, x[..., row:height:kernel, col:width:kernel])
    return pooled


def truncated_svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Two layers computing ``layer`` through its rank-t truncated SVD [Fast R-CNN §3.1].

    ``W (u x v) ~ U_t Sigma_t V_t^T``: a first ``Linear(v, t, bias=False)`` with weight
    ``Sigma_t V_t^T`` and a second ``Linear(t, u)`` with weight ``U_t`` and the original bias,
    so ``u * v`` weights become ``t * (u + v)``; fewer only when ``t < u v / (u + v)``. Among
    rank-t matrices this W_t is the closest to W (Eckart-Young): the Frobenius error is
    ``sqrt(sum of the dropped sigma^2)``. ``rank = min(u, v)`` reproduces the layer.

    Computed in float64 from the eigenvectors of the smaller Gram matrix (W W^T or W^T W;
    several times faster than ``torch.linalg.svd`` on VGG-16's fc6 on a CPU), on the layer's
    device; the new layers have the layer's dtype. When u > v the scaling goes to the second
    layer instead (weights ``V_t^T`` and ``U_t Sigma_t``): the same product.
    """
    out_features, in_features = layer.weight.shape
    if not 1 <= rank <= min(out_features, in_features):
        raise ValueError(
            f"truncated_svd_linear: rank {rank} must be in 1..{min(out_features, in_features)} "
            f"for a Linear({in_features}, {out_features})"
        )
    weight = layer.weight.detach().double()  # (u, v)
    if out_features <= in_features:
        _, eigenvectors = torch.linalg.eigh(weight @ weight.T)  # (u, u), ascending eigenvalues
        left = eigenvectors[:, -rank:].flip(1)  # U_t (u, t): the largest singular values first
        first_weight, second_weight = left.T @ weight, left  # U_t^T W = Sigma_t V_t^T (t, v)
    else:
        _, eigenvectors = torch.linalg.eigh(weight.T @ weight)  # (v, v)
        right = eigenvectors[:, -rank:].flip(1)  # V_t (v, t)
        first_weight, second_weight = right.T, weight @ right  # W V_t = U_t Sigma_t (u, t)
    like = {"dtype": layer.weight.dtype, "device": layer.weight.device}
    first = nn.Linear(in_features, rank, bias=False, **like)
    second = nn.Linear(rank, out_features, bias=layer.bias is not None, **like)
    with torch.no_grad():
        first.weight.copy_(first_weight)
        second.weight.copy_(second_weight)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def compress_fc_layers(
    model: nn.Module, *, fc6_rank: int | None = None, fc7_rank: int | None = None
) -> nn.Module:
    """Replace fc6 and fc7 of both classifier pathways (mask and box) by their truncated SVD
    (:func:`truncated_svd_linear`), in place, for inference; return ``model``.

    ``model`` is a :class:`ClassifierHead` or a model whose ``classifier`` attribute is one
    (``cascade.MNC``). The default ranks are the fc width / 4 and / 16: Fast R-CNN's 1024 and
    256 on VGG-16's 4096-d fcs, 64 and 16 on the shapes preset's 256-d ones. Each rank must be
    below its layer's smaller side. The state-dict keys change (``mask_pathway.0.0.weight``,
    ...): compress after loading a checkpoint, not before saving one.
    """
    head = getattr(model, "classifier", model)
    if not isinstance(head, ClassifierHead):
        raise TypeError(
            f"compress_fc_layers: expected a ClassifierHead or a model with a .classifier "
            f"ClassifierHead (an MNC), got {type(model).__name__}"
        )
    fc_layers = [pathway[i] for pathway in (head.mask_pathway, head.box_pathway) for i in (0, 2)]
    if not all(isinstance(layer, nn.Linear) for layer in fc_layers):
        raise ValueError("compress_fc_layers: this classifier is compressed already")
    fc_dim = head.mask_pathway[2].out_features
    fc6_rank = max(fc_dim // FC6_SVD_DIVISOR, 1) if fc6_rank is None else fc6_rank
    fc7_rank = max(fc_dim // FC7_SVD_DIVISOR, 1) if fc7_rank is None else fc7_rank
    for pathway in (head.mask_pathway, head.box_pathway):
        for index, name, rank in ((0, "fc6", fc6_rank), (2, "fc7", fc7_rank)):
            layer = pathway[index]
            smaller = min(layer.in_features, layer.out_features)
            if not 1 <= rank < smaller:
                raise ValueError(
                    f"compress_fc_layers: {name}_rank {rank} must be in 1..{smaller - 1}: "
                    f"below the smaller side of {name}, Linear({layer.in_features}, "
                    f"{layer.out_features}), else nothing is compressed"
                )
    for pathway in (head.mask_pathway, head.box_pathway):
        pathway[0] = truncated_svd_linear(pathway[0], fc6_rank)
        pathway[2] = truncated_svd_linear(pathway[2], fc7_rank)
    return model


def mask_level_labels(
    mask_probs: Tensor,
    mask_targets: Tensor,
    boxes: Tensor,
    *,
    gt_areas: Tensor,
    box_labels: Tensor,
    mask_iou_fg: float = ClassifierConfig.mask_iou_fg,
    threshold: float = MaskHeadConfig.target_threshold,
) -> Tensor:
    """Mask-level labels: the box-level label where the predicted mask has IoU >= 0.5 with the
    instance.

    The IoU is computed in the RoI's m x m frame, scaled to pixels: each cell covers
    ``box area / M^2`` pixels. The intersection and the predicted area are counted inside
    the RoI; the instance's area is its full pixel count ``gt_areas``, so an instance that
    sticks out of the RoI lowers the IoU as it should.

    Args:
        mask_probs (Tensor[R, M, M]): stage-2 soft masks (no gradient is taken).
        mask_targets (Tensor[R, M, M]): the instance inside the RoI, 0/1
            (stage2_masks.mask_targets).
        boxes (Tensor[R, 4]): the RoIs. gt_areas (Tensor[R]): pixel area of each RoI's instance.
        box_labels (Tensor[R], int64): box-level labels (0 = background).
        mask_iou_fg: smallest mask IoU of a mask-level foreground RoI.
        threshold: binarises ``mask_probs``.

    Returns:
        labels (Tensor[R], int64)
    """
    pred = (mask_probs.detach() >= threshold).float()
    cell_area = box_area(boxes.detach()) / mask_probs.shape[-1] ** 2  # (R,) pixels per mask cell
    intersection = (pred * mask_targets).flatten(1).sum(1) * cell_area
    union = pred.flatten(1).sum(1) * cell_area + gt_areas - intersection
    iou = intersection / union.clamp(min=1e-6)
    return torch.where(iou >= mask_iou_fg, box_labels, torch.zeros_like(box_labels))


def classifier_losses(
    output: ClassifierOutput,
    *,
    mask_labels: Tensor,
    box_labels: Tensor,
    boxes: Tensor,
    gt_boxes: Tensor,
    box_weights: tuple[float, float, float, float] = ClassifierConfig.box_weights,
    box_loss_beta: float = ClassifierConfig.box_loss_beta,
) -> dict[str, Tensor]:
    """Cross-entropy for both classifiers and smooth L1 for the box-level foreground's deltas.

    As Fast R-CNN and the code, the box loss is summed over the foreground RoIs' 4 deltas of
    their class and divided by the number of RoIs.

    Args:
        output: the head's outputs for R RoIs.
        mask_labels, box_labels (Tensor[R], int64): see :func:`mask_level_labels`.
        boxes (Tensor[R, 4]): the RoIs; gt_boxes (Tensor[R, 4]): each RoI's matched instance box.
        box_weights: the weights the deltas are encoded with (``boxes.encode_boxes``).
        box_loss_beta: where the smooth L1 turns from quadratic to linear.

    Returns:
        ``{"loss_cls_mask", "loss_cls_box", "loss_box_reg"}``: the mask-level and the
        box-level classifier, the box regression.
    """
    num_rois = max(box_labels.numel(), 1)
    fg = torch.nonzero(box_labels > 0).flatten()
    deltas = output.box_deltas.unflatten(1, (-1, 4))  # (R, 4(K+1)) -> (R, K+1, 4); R may be 0
    pred_deltas = deltas[fg, box_labels[fg]]  # (R_fg, 4): each foreground RoI's own class
    target_deltas = encode_boxes(gt_boxes[fg].to(boxes), boxes[fg].detach(), weights=box_weights)
    loss_box_reg = F.smooth_l1_loss(
        pred_deltas, target_deltas.to(pred_deltas), beta=box_loss_beta, reduction="sum"
    ) / num_rois
    # sum / R: the mean, and 0 (not NaN) when there is no RoI
    loss_cls_mask = F.cross_entropy(output.mask_cls_logits, mask_labels, reduction="sum")
    loss_cls_box = F.cross_entropy(output.box_cls_logits, box_labels, reduction="sum")
    return {
        "loss_cls_mask": loss_cls_mask / num_rois,
        "loss_cls_box": loss_cls_box / num_rois,
        "loss_box_reg": loss_box_reg,
    }
