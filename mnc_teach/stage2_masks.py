"""Stage 2: a class-agnostic m x m soft mask for every box (docs/paper_vs_code.md: stages 2-3).

The RoI features (from differentiable RoI warping, roi_warp.py) go through one 256-d fc
layer and a second fc layer with m x m outputs: one logit per mask cell. Training compares
them with the ground-truth mask of the RoI's matched instance, cropped to the RoI and
resized to m x m, with a per-pixel logistic loss on the positive RoIs.

Shapes (legend in structures.py): R RoIs, C channels, P RoI-feature side, M mask side
(m in the paper: 28; the official code uses 21), G instances, H, W image size. The default
settings are defined once, in ``config.MaskHeadConfig``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from mnc_teach.boxes import require_finite
from mnc_teach.config import MaskHeadConfig

__all__ = ["MaskHead", "mask_targets", "mask_loss"]

# Gaussian init of the mask logits layer (the code: 0.001, see MaskHead)
MASK_LOGITS_INIT_STD = 0.01
# roi_align samples per mask cell and axis when resizing ground-truth masks
TARGET_SAMPLES = 2


class MaskHead(nn.Module):
    """RoI features (R, C, P, P) -> mask logits (R, M, M): fc (hidden_dim) + ReLU, fc (M*M)."""

    def __init__(
        self,
        *,
        in_channels: int,
        roi_size: int,
        mask_size: int = MaskHeadConfig.mask_size,
        hidden_dim: int = MaskHeadConfig.hidden_dim,
    ):
        super().__init__()
        self.mask_size = mask_size
        self.fc = nn.Linear(in_channels * roi_size * roi_size, hidden_dim)
        self.mask_logits = nn.Linear(hidden_dim, mask_size * mask_size)
        # The code initialises both layers with std 0.001 (on ImageNet VGG-16 features). Two such
        # layers in a row starve each other of gradient on a network trained from scratch, so the
        # fc keeps PyTorch's default (Kaiming-uniform) init and the logits start small (std 0.01).
        nn.init.normal_(self.mask_logits.weight, std=MASK_LOGITS_INIT_STD)
        nn.init.zeros_(self.mask_logits.bias)

    def forward(self, roi_features: Tensor) -> Tensor:
        x = F.relu(self.fc(roi_features.flatten(1)))  # (R, C, P, P) -> (R, C*P*P) -> (R, hidden)
        logits = self.mask_logits(x)  # (R, M*M)
        return logits.view(-1, self.mask_size, self.mask_size)  # (R, M*M) -> (R, M, M)


def mask_targets(
    gt_masks: Tensor,
    matched_gt: Tensor,
    boxes: Tensor,
    *,
    mask_size: int,
    threshold: float = MaskHeadConfig.target_threshold,
) -> Tensor:
    """The ground-truth mask of each RoI's instance, inside the RoI, resized to M x M,
    binarised.

    The paper's target is "the intersection of the proposal box and the ground-truth mask,
    resized to m x m". Resizing is bilinear (``roi_align`` with 2 x 2 samples per cell, which
    reads 0 outside the image) and cells >= ``threshold`` (0.4, the code's
    ``BINARIZE_THRESH``) are foreground. Targets are constants: no gradient flows into boxes.

    Args:
        gt_masks (Tensor[G, H, W], uint8): instance masks of one image.
        matched_gt (Tensor[R], int64): instance index of each RoI.
        boxes (Tensor[R, 4], xyxy pixels): the RoIs.
        mask_size: M.
        threshold: cells of the resized mask at or above it are foreground.

    Returns:
        targets (Tensor[R, M, M], float32): 0 or 1.
    """
    if boxes.numel() == 0 or gt_masks.shape[0] == 0:
        return boxes.new_zeros((boxes.shape[0], mask_size, mask_size), dtype=torch.float32)
    # roi_align repeats the edge pixel up to 1 px outside the image: a 1-px zero border makes
    # the outside 0
    padded = F.pad(gt_masks[:, None].float(), (1, 1, 1, 1))  # (G, 1, H+2, W+2)
    shifted = require_finite(boxes.detach(), where="mask targets") + 1  # (R, 4), padded frame
    # (R, 5): the instance index as the "batch" index
    rois = torch.cat([matched_gt[:, None].to(boxes.dtype), shifted], dim=1)
    resized = roi_align(
        padded,
        rois.float(),
        mask_size,
        spatial_scale=1.0,
        sampling_ratio=TARGET_SAMPLES,
        aligned=True,
    )  # (R, 1, M, M), soft
    return (resized[:, 0] >= threshold).float()


def mask_loss(mask_logits: Tensor, targets: Tensor, positive: Tensor) -> Tensor:
    """Mean per-pixel binary cross-entropy over the pixels of the positive RoIs.

    As the code's weighted SigmoidCrossEntropyLoss: weight 1 on positives, 0 elsewhere,
    normalised by the number of weighted pixels. With no positive RoI the loss is a zero
    that still depends on the logits (so every parameter gets a gradient, of zero).

    Args:
        mask_logits (Tensor[R, M, M]), targets (Tensor[R, M, M], 0/1), positive (Tensor[R], bool).
    """
    if not positive.any():
        return mask_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(
        mask_logits[positive], targets[positive].to(mask_logits.dtype)
    )
