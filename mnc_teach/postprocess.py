"""Inference post-processing: per-class NMS, mask voting, masks pasted into the image
(docs/paper_vs_code.md: inference).

The cascade gives candidates: boxes, m x m soft masks and (K+1)-way mask-level class
probabilities (300 from stage 3 plus 300 from stage 5 in the paper). For each class, NMS at
box IoU 0.3 on that class's score; the best 100 over all classes are kept. *Mask voting*
then replaces each kept mask by the score-weighted average of the pasted masks of all
candidates whose box has IoU >= 0.5 with it (suppressed ones included), binarised at 0.4 for
the box; the paper measures about +1 mAP^r from it.

Shapes (legend in structures.py): Q candidates, M mask side, K classes, D detections,
H x W image; h_r x w_r a region of it. The default settings are defined once, in
``config.InferenceConfig``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mnc_teach.boxes import batched_nms, box_iou
from mnc_teach.config import InferenceConfig

__all__ = ["mask_voting_weights", "paste_masks", "postprocess_detections"]


def paste_masks(masks: Tensor, boxes: Tensor, region: tuple[int, int, int, int]) -> Tensor:
    """Resample m x m masks into their boxes, on the pixel grid of an image region.

    Pixel (row i, column j) of the region, with centre ``(x0 + j + 0.5, y0 + i + 0.5)`` in
    image coordinates, reads the mask bilinearly at the same relative position inside the
    box (edge cells are extended to the box border); pixels whose centre is outside the box
    are 0.

    Args:
        masks (Tensor[Q, M, M]): soft masks in [0, 1], each relative to its box.
        boxes (Tensor[Q, 4], xyxy pixels)
        region: ``(x0, y0, x1, y1)`` integer pixel bounds of the output (the whole image is
            ``(0, 0, W, H)``).

    Returns:
        pasted (Tensor[Q, y1 - y0, x1 - x0]) in [0, 1].
    """
    x0, y0, x1, y1 = region
    num = masks.shape[0]
    if num == 0 or x1 <= x0 or y1 <= y0:
        return masks.new_zeros((num, max(y1 - y0, 0), max(x1 - x0, 0)))
    xs = torch.arange(x0, x1, device=masks.device, dtype=masks.dtype) + 0.5  # (w_r,) centres
    ys = torch.arange(y0, y1, device=masks.device, dtype=masks.dtype) + 0.5  # (h_r,)
    bx1, by1, bx2, by2 = boxes.to(masks.dtype).unbind(dim=1)  # each (Q,)
    # relative position in the box, mapped to grid_sample's [-1, 1] (align_corners=False: -1 is
    # the box edge)
    gx = 2 * (xs[None] - bx1[:, None]) / (bx2 - bx1).clamp(min=1e-6)[:, None] - 1  # (Q, w_r)
    gy = 2 * (ys[None] - by1[:, None]) / (by2 - by1).clamp(min=1e-6)[:, None] - 1  # (Q, h_r)
    # (Q, h_r, w_r, 2) as (x, y)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    pasted = F.grid_sample(
        masks[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[:, 0]  # (Q, 1, M, M) -> (Q, h_r, w_r)
    inside = (gx.abs() <= 1)[:, None, :] & (gy.abs() <= 1)[:, :, None]  # (Q, h_r, w_r)
    return pasted * inside


def _voter_regions(voters: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Per detection, the smallest integer pixel region ``(x0, y0, x1, y1)`` holding the boxes
    of its voters, clipped to the image: voters (Tensor[D, Q], bool), boxes (Tensor[Q, 4])
    -> (Tensor[D, 4], int64); all 0 for a detection without voters."""
    height, width = image_size
    inf = torch.tensor(float("inf"), dtype=boxes.dtype, device=boxes.device)
    lows = torch.where(voters[:, :, None], boxes[None, :, :2], inf).amin(dim=1)  # (D, 2)
    highs = torch.where(voters[:, :, None], boxes[None, :, 2:], -inf).amax(dim=1)  # (D, 2)
    lows = lows.floor().clamp(min=0)
    highs = torch.minimum(highs.ceil(), torch.tensor([width, height]).to(highs))
    regions = torch.cat([lows, highs], dim=1)  # (D, 4)
    return torch.where(voters.any(dim=1, keepdim=True), regions, 0).long()


# paste every voter over the whole image at once below this many floats
MAX_PASTED_ELEMENTS = 2**25


def _weighted_pasted_masks(
    voter_weights: Tensor, mask_probs: Tensor, boxes: Tensor, *, image_size: tuple[int, int]
) -> Tensor:
    """``sum_q voter_weights[d, q] * paste(mask q)`` for every detection d: (D, Q) -> (D, H, W).

    Small images (shapes): every voter is pasted once and the sums are one matrix product.
    Large images (VOC, 600 candidates x 600 x 1000 would be 1.4 GB): one detection at a
    time, over the region its voters cover. Both give the same result.
    """
    height, width = image_size
    num_detections = voter_weights.shape[0]
    # the candidates that vote at all (U of them; V below: the voters of one detection)
    used = torch.nonzero(voter_weights.sum(dim=0) > 0).flatten()
    if used.numel() * height * width <= MAX_PASTED_ELEMENTS:
        pasted = paste_masks(mask_probs[used], boxes[used], (0, 0, width, height))  # (U, H, W)
        weighted = voter_weights[:, used] @ pasted.flatten(1)  # (D, U) @ (U, H*W) -> (D, H*W)
        return weighted.view(num_detections, height, width)
    out = mask_probs.new_zeros((num_detections, height, width))
    is_voter = voter_weights != 0  # (D, Q)
    # every voter list and region up front: 3 host syncs in all, not 4 per detection (CUDA)
    voters_per_detection = torch.nonzero(is_voter)[:, 1].split(is_voter.sum(dim=1).tolist())
    regions = _voter_regions(is_voter, boxes, image_size).tolist()
    for d, (voters, region) in enumerate(zip(voters_per_detection, regions, strict=True)):
        if voters.numel() == 0:  # a detection whose class score is 0
            continue
        x0, y0, x1, y1 = region
        # (V, h_r, w_r) for the V voters of detection d
        pasted = paste_masks(mask_probs[voters], boxes[voters], (x0, y0, x1, y1))
        out[d, y0:y1, x0:x1] = torch.einsum("v,vhw->hw", voter_weights[d, voters], pasted)
    return out


def _tight_boxes(masks: Tensor, threshold: float, fallback: Tensor) -> Tensor:
    """The tight box (``boxes.masks_to_boxes``' convention) of each mask's pixels >=
    ``threshold``; ``fallback`` (Tensor[D, 4]) where there is none. masks (Tensor[D, H, W]).

    One pass to binarise and one per axis: these are full-image masks, the costly part."""
    height, width = masks.shape[-2:]
    binary = masks >= threshold  # (D, H, W)
    rows_any, cols_any = binary.any(dim=2), binary.any(dim=1)  # (D, H), (D, W)
    rows = torch.arange(height, device=masks.device)
    cols = torch.arange(width, device=masks.device)
    tight = torch.stack(
        [
            torch.where(cols_any, cols, width).amin(dim=1),
            torch.where(rows_any, rows, height).amin(dim=1),
            torch.where(cols_any, cols, -1).amax(dim=1) + 1,
            torch.where(rows_any, rows, -1).amax(dim=1) + 1,
        ],
        dim=1,
    ).to(fallback.dtype)  # (D, 4)
    return torch.where(rows_any.any(dim=1, keepdim=True), tight, fallback)


def mask_voting_weights(
    kept: Tensor, labels: Tensor, boxes: Tensor, fg_scores: Tensor, *, vote_iou: float
) -> Tensor:
    """Mask voting's weights [code: gpu_mask_voting]: detection d's mask is the average of the
    masks of every candidate whose box has IoU >= ``vote_iou`` with d's box (d itself always
    votes), each weighted by its score for d's class; the weights of a row sum to 1.

    Args:
        kept (Tensor[D], int64): the candidate each detection came from (after per-class NMS).
        labels (Tensor[D], int64 in 1..K): each detection's class.
        boxes (Tensor[Q, 4]): every candidate's box. fg_scores (Tensor[Q, K]): their class
            probabilities without the background column.

    Returns:
        Tensor[D, Q]: ``weights[d, q]``, the share of candidate q's mask in detection d's mask.
    """
    similar = box_iou(boxes[kept], boxes) >= vote_iou  # (D, Q)
    similar[torch.arange(kept.numel(), device=kept.device), kept] = True  # itself, even 0-area
    weights = similar * fg_scores[:, labels - 1].T  # (D, Q): each voter's score for d's class
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)


def postprocess_detections(
    boxes: Tensor,
    mask_probs: Tensor,
    class_probs: Tensor,
    *,
    image_size: tuple[int, int],
    nms_iou: float = InferenceConfig.nms_iou,
    detections_per_image: int = InferenceConfig.detections_per_image,
    score_threshold: float = InferenceConfig.score_threshold,
    mask_voting: bool = InferenceConfig.mask_voting,
    vote_iou: float = InferenceConfig.vote_iou,
    mask_threshold: float = InferenceConfig.mask_threshold,
) -> dict[str, Tensor]:
    """Turn one image's candidates into detections (structures.Detection).

    Args:
        boxes (Tensor[Q, 4], xyxy pixels): candidate boxes, inside the image.
        mask_probs (Tensor[Q, M, M]): their soft masks.
        class_probs (Tensor[Q, K+1]): mask-level class probabilities (column 0 = background).
        image_size: ``(H, W)``.
        nms_iou: per-class NMS threshold on box IoU (0.3).
        detections_per_image: how many to keep over all classes (100).
        score_threshold: drop (candidate, class) pairs scoring below this (0: none).
        mask_voting: average the masks of similar candidates (True) or paste each own mask.
        vote_iou: box IoU that makes a candidate a voter (0.5).
        mask_threshold: binarisation of the voted mask, for the output box (0.4).

    Returns:
        boxes (Tensor[D, 4]), labels (Tensor[D]), scores (Tensor[D]), masks
        (Tensor[D, 1, H, W], soft). With voting the box is the tight box of the voted mask
        >= ``mask_threshold`` (as the code), or the candidate's box when that is empty.
    """
    height, width = image_size
    num_candidates, num_fg = class_probs.shape[0], class_probs.shape[1] - 1
    fg_scores = class_probs[:, 1:]  # (Q, K)
    # one row per (candidate, class) pair
    candidates = torch.arange(num_candidates, device=boxes.device)
    pair_candidate = candidates.repeat_interleave(num_fg)  # (Q*K,)
    pair_label = torch.arange(1, num_fg + 1, device=boxes.device).repeat(num_candidates)  # (Q*K,)
    pair_score = fg_scores.reshape(-1)  # (Q, K) -> (Q*K,), same order
    valid = pair_score >= score_threshold
    pair_candidate, pair_label = pair_candidate[valid], pair_label[valid]
    pair_score = pair_score[valid]
    keep = batched_nms(
        boxes[pair_candidate], pair_score, pair_label, iou_threshold=nms_iou
    )[:detections_per_image]
    kept_candidate, labels, scores = pair_candidate[keep], pair_label[keep], pair_score[keep]

    # voter_weights[d, q]: weight of candidate q's mask in detection d's mask (rows sum to 1)
    if mask_voting:
        voter_weights = mask_voting_weights(
            kept_candidate, labels, boxes, fg_scores, vote_iou=vote_iou
        )
    else:
        # (D, Q): each detection's own mask only
        voter_weights = F.one_hot(kept_candidate, num_candidates).to(mask_probs.dtype)
    out_masks = _weighted_pasted_masks(
        voter_weights, mask_probs, boxes, image_size=image_size
    )  # (D, H, W)
    out_boxes = boxes[kept_candidate]
    if mask_voting:  # the box of the voted mask, as the code
        out_boxes = _tight_boxes(out_masks, mask_threshold, fallback=out_boxes)
    out_masks = out_masks[:, None]  # (D, H, W) -> (D, 1, H, W)
    return {"boxes": out_boxes, "labels": labels, "scores": scores, "masks": out_masks}
