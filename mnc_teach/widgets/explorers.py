"""Explorers of a trained cascade: the proposal viewer (stage 1), the stage explorer (all stages).

    viewer = ProposalViewer(model, val_set)       # pre/post-NMS top-k, NMS IoU -> recall
    explorer = StageExplorer(model, val_set)      # one RoI through stages 1-5 + detections
    explorer = StageExplorer.from_checkpoint("runs/06_cascade/main/checkpoint.pt", val_set)

Conventions of every explorer: :class:`mnc_teach.widgets.common.Explorer`; what was drawn last
stays inspectable (``.figure``, ``.last_view``, ``.last_recall``...). The model runs once per
image (in :func:`~mnc_teach.engine.inference.eval_mode`: its mode and the RNG are restored
afterwards); the sliders only redo the cheap part (proposal selection, drawing).
``.last_update_s`` says how long the last update took.

Shape legend (structures.py): H, W image size, G instances, D detections, T anchors,
R proposals, C channels, P RoI-feature side, M mask side, K foreground classes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import ipywidgets as widgets
import torch
from torch import Tensor, nn

from mnc_teach.cascade import batch_images
from mnc_teach.engine.checkpoint import load_model
from mnc_teach.engine.inference import eval_mode, model_device
from mnc_teach.evaluation.proposals import best_overlaps, proposal_recall
from mnc_teach.matching import match_rois
from mnc_teach.stage1_rpn import generate_proposals
from mnc_teach.stage2_masks import mask_targets
from mnc_teach.viz.explorer import StageView, draw_stage_view
from mnc_teach.viz.proposals import draw_proposal_view
from mnc_teach.widgets.common import Explorer

__all__ = ["ProposalViewer", "StageExplorer"]

RECALL_IOUS = (0.5, 0.7)
# x values of the recall curve (those below the post-NMS top-k, then the top-k itself)
RECALL_COUNTS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 1000, 2000)


def _slider(value: int, maximum: int, description: str) -> widgets.IntSlider:
    return widgets.IntSlider(value=value, min=1, max=maximum, description=description,
                             continuous_update=False)


def _recall(boxes: Tensor, gt_boxes: Tensor, iou: float) -> tuple[int, int]:
    """(objects covered by a box with IoU >= ``iou``, objects)."""
    covered = best_overlaps(gt_boxes, boxes, [len(boxes)])[0] >= iou  # (G,)
    return int(covered.sum()), len(gt_boxes)


class _ModelExplorer(Explorer):
    """An explorer of a model: it can be built from a checkpoint written by ``train``."""

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, dataset, device: str | None = None,
                        **kwargs):
        """The explorer of the model of ``checkpoint.pt``; ``kwargs`` go to the constructor."""
        return cls(load_model(checkpoint, device)[0], dataset, **kwargs)


@dataclass
class _RPNResult:
    """Stage 1's raw output for one image: everything ``generate_proposals`` needs."""

    image: Tensor  # (3, H, W)
    anchors: Tensor  # (T, 4)
    logits: Tensor  # (T,)
    deltas: Tensor  # (T, 4)
    size: tuple[int, int]
    gt_boxes: Tensor  # (G, 4)


class ProposalViewer(_ModelExplorer):
    """Stage-1 proposals of one image under adjustable top-k / NMS settings, with live recall.

    The RPN runs once per image; the sliders re-run ``stage1_rpn.generate_proposals`` (top-k by
    objectness, decode, clip, drop small, NMS, top-k) on its cached output. Recall is the
    fraction of ground-truth objects whose best IoU with a proposal is >= 0.5 / 0.7, on this
    image and over the first ``recall_images`` images of the dataset.

    Args:
        model: has ``.backbone`` and ``.rpn`` (an ``MNC``, or notebook 02's stage-1 ModuleDict).
        dataset: returns ``(image, target)`` by index.
        recall_images: images of the recall curve (the RPN runs on each once, at start).
        max_boxes: at most this many proposals are drawn (the best by objectness).

    Attributes:
        index, pre_nms_top_n, post_nms_top_n, nms_iou: the controls. widget, figure, status.
        boxes, scores: the current image's proposals. last_recall: ``{"image": {0.5: r, 0.7: r},
        "dataset": {...}}`` (``nan`` for an image without objects). last_update_s: seconds.
    """

    def __init__(self, model: nn.Module, dataset, index: int = 0, *, recall_images: int = 10,
                 max_boxes: int = 50):
        super().__init__(dataset, index)
        self.model, self.max_boxes = model, max_boxes
        rpn = model.rpn
        self._rpn_results: dict[int, _RPNResult] = {}  # every image seen: the recall images stay
        self._curves: tuple | None = None  # (settings, _dataset_curves() result)
        self.recall_indices = list(range(min(recall_images, len(dataset))))
        for i in self.recall_indices:
            self._rpn_result(i)
        num_anchors = max(len(r.anchors) for r in self._rpn_results.values())
        post_max = max(rpn.post_nms_top_n[1], min(num_anchors, 1000))
        self.pre_nms_top_n = _slider(min(rpn.pre_nms_top_n[1], num_anchors), num_anchors,
                                     "pre-NMS top-k")
        self.post_nms_top_n = _slider(rpn.post_nms_top_n[1], post_max, "post-NMS top-k")
        self.nms_iou = widgets.FloatSlider(value=rpn.nms_iou, min=0.1, max=1.0, step=0.05,
                                           description="NMS IoU", continuous_update=False)
        self.status = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.index, self.nms_iou]),
                                    widgets.HBox([self.pre_nms_top_n, self.post_nms_top_n]),
                                    self.status, self.output])
        self.boxes, self.scores = torch.zeros((0, 4)), torch.zeros((0,))
        self.last_recall: dict[str, dict[float, float]] = {}
        self.last_update_s = 0.0
        self.watch(self.pre_nms_top_n, self.post_nms_top_n, self.nms_iou)

    @torch.no_grad()
    def _rpn_result(self, index: int) -> _RPNResult:
        if index not in self._rpn_results:
            image, target = self.dataset[index]
            with eval_mode(self.model):
                batch, sizes = batch_images([image.to(model_device(self.model))],
                                            self.model.backbone.stride)
                out, _ = self.model.rpn(self.model.backbone(batch), sizes)
            self._rpn_results[index] = _RPNResult(
                image, out.anchors.cpu(), out.objectness_logits[0].cpu(),
                out.anchor_deltas[0].cpu(), sizes[0], target["boxes"].float())
        return self._rpn_results[index]

    def _proposals(self, result: _RPNResult) -> tuple[Tensor, Tensor]:
        return generate_proposals(result.anchors, result.logits, result.deltas,
                                  image_size=result.size, pre_nms_top_n=self.pre_nms_top_n.value,
                                  post_nms_top_n=self.post_nms_top_n.value,
                                  nms_iou=self.nms_iou.value, min_size=self.model.rpn.min_size)

    def _dataset_curves(self) -> tuple[list[int], dict[str, list[float]], dict[float, float]]:
        """Recall over the recall images against the number of proposals kept, for the current
        settings: ``(counts, curves "IoU t" -> recall per count, recall at the post-NMS top-k
        per IoU)``. Kept until a setting changes (picking another image does not change it)."""
        settings = (self.pre_nms_top_n.value, self.post_nms_top_n.value, self.nms_iou.value)
        if self._curves is None or self._curves[0] != settings:
            top_k = self.post_nms_top_n.value
            counts = [n for n in RECALL_COUNTS if n < top_k] + [top_k]
            proposals = [(self._proposals(self._rpn_results[i])[0], self._rpn_results[i].gt_boxes)
                         for i in self.recall_indices]
            recall = proposal_recall([gt for _, gt in proposals], [b for b, _ in proposals],
                                     counts, RECALL_IOUS)  # {iou: [recall per count]}
            curves = {f"IoU {iou:g}": values for iou, values in recall.items()}
            final = {iou: values[-1] for iou, values in recall.items()}
            self._curves = (settings, (counts, curves, final))
        return self._curves[1]

    def update(self, change: dict | None = None) -> None:
        """Recompute the proposals and the recall for the current settings and redraw."""
        start = time.perf_counter()
        result = self._rpn_result(self.index.value)
        self.boxes, self.scores = self._proposals(result)
        per_image = {iou: _recall(self.boxes, result.gt_boxes, iou) for iou in RECALL_IOUS}
        counts, curves, dataset_recall = self._dataset_curves()
        self.last_recall = {
            "image": {iou: h / g if g else float("nan") for iou, (h, g) in per_image.items()},
            "dataset": dataset_recall,
        }
        title = f"recall over {len(self.recall_indices)} images (dotted: post-NMS top-k)"
        fig = draw_proposal_view(result.image, self.boxes, self.scores, result.gt_boxes,
                                 counts=counts, recalls=curves, chosen=self.post_nms_top_n.value,
                                 title=title, max_boxes=self.max_boxes)
        image_part = ", ".join(f"IoU {iou:g}: {h}/{g}" for iou, (h, g) in per_image.items())
        set_part = ", ".join(f"IoU {iou:g}: {r:.2f}" for iou, r in dataset_recall.items())
        self.status.value = (f"<b>{len(self.boxes)} proposals</b> &middot; recall on this image "
                             f"({image_part}) &middot; over {len(self.recall_indices)} images "
                             f"({set_part})")
        self.show(fig)
        self.last_update_s = time.perf_counter() - start


@dataclass
class _ImageRun:
    """The cascade's outputs for one image, on the CPU; RoI tensors are indexed by proposal."""

    image: Tensor
    target: dict
    detections: dict
    # name -> Tensor[R, ...]: boxes, objectness, features, masks, cls / box_cls probs, stages 4-5
    view_rows: dict
    order: Tensor  # (R,) RoIs by stage-3 foreground score, best first


class StageExplorer(_ModelExplorer):
    """One RoI of one image through every stage of a trained cascade, and the image's detections.

    Pick an image and a RoI (RoIs are ranked by their stage-3 foreground score, so RoI 0 is the
    most confident); the figure links the stages by colour: the stage-1 proposal and its
    objectness, the warped RoI features, the stage-2 mask and its target, the pasted mask, the
    stage-3 mask-level and box-level class scores, and for a 5-stage model the regressed box
    and the stage-4 mask; the last panel shows the best ``top-N`` detections above the score
    threshold, their masks binarised at the mask threshold.

    Args:
        model: a trained ``MNC`` (e.g. from ``mnc_teach.engine.checkpoint.load_model``).
        dataset: returns ``(image, target)`` by index and has ``class_names``.
        index, roi: first image and RoI rank shown.
        score_threshold, top_n: which detections the last panel shows.
        mask_threshold: binarisation of masks (default: the model's
            ``inference.mask_threshold``).

    Attributes:
        index, roi, score_threshold, mask_threshold, top_n: the controls. widget, figure, status.
        last_view (StageView | None): what the RoI panels showed. last_num_detections: detections
        drawn. last_update_s: seconds the last update took (with the model run when the image
        changed).
    """

    def __init__(self, model: nn.Module, dataset, index: int = 0, *, roi: int = 0,
                 score_threshold: float = 0.5, mask_threshold: float | None = None,
                 top_n: int = 10):
        super().__init__(dataset, index)
        self.model = model
        self.class_names = list(dataset.class_names)
        inference = model.inference  # the model's InferenceSettings
        if mask_threshold is None:
            mask_threshold = inference.mask_threshold
        self.roi = widgets.IntSlider(value=roi, min=0, max=max(roi, 1), description="RoI",
                                     continuous_update=False)
        slider = {"min": 0.0, "max": 1.0, "step": 0.05, "continuous_update": False}
        self.score_threshold = widgets.FloatSlider(value=score_threshold, description="score ≥",
                                                   **slider)
        self.mask_threshold = widgets.FloatSlider(value=mask_threshold, description="mask ≥",
                                                  **slider)
        self.top_n = _slider(top_n, max(top_n, inference.detections_per_image), "top-N")
        self.status = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.index, self.roi, self.top_n]),
                                    widgets.HBox([self.score_threshold, self.mask_threshold]),
                                    self.status, self.output])
        self.last_view: StageView | None = None
        self.last_num_detections = 0
        self.last_update_s = 0.0
        self._updating = False
        self.watch(self.roi, self.score_threshold, self.mask_threshold, self.top_n)

    def _run(self, index: int) -> _ImageRun:
        """The cascade's outputs on image ``index`` (run once; kept until another image)."""
        return self.cached(index, self._run_model)

    @torch.no_grad()
    def _run_model(self, index: int) -> _ImageRun:
        image, target = self.dataset[index]
        with eval_mode(self.model):
            detections, _, inter = self.model([image.to(model_device(self.model))],
                                              return_intermediates=True)
        s23, s45 = inter.stages_23, inter.stages_45
        rows = {
            "boxes": s23.boxes[0], "objectness": inter.rpn.proposal_scores[0],
            "features": s23.roi_features, "masks": s23.mask_probs,
            "cls_probs": s23.mask_cls_probs,
            "box_cls_probs": s23.box_cls_logits.softmax(dim=1),
        }
        if s45 is not None:
            rows |= {"refined": inter.refined_boxes[0], "masks_s4": s45.mask_probs,
                     "cls_probs_s5": s45.mask_cls_probs}
        rows = {name: value.detach().cpu() for name, value in rows.items()}
        order = rows["cls_probs"][:, 1:].max(dim=1).values.argsort(descending=True)  # (R,)
        detections = {k: v.detach().cpu() if isinstance(v, Tensor) else v
                      for k, v in detections[0].items()}
        return _ImageRun(image, target, detections, rows, order)

    def _view(self, run: _ImageRun, rank: int) -> StageView:
        """The StageView of the RoI ranked ``rank``: its rows, its stage-2 target and label."""
        r = int(run.order[rank])
        rows, box = run.view_rows, run.view_rows["boxes"][r : r + 1]  # (1, 4)
        gt_boxes = run.target["boxes"].float()
        match = match_rois(box, gt_boxes, run.target["labels"],
                           fg_iou=self.model.roi_sampling.fg_iou)
        label = int(match.labels[0])
        target = None
        if label > 0:
            target = mask_targets(run.target["masks"], match.matched_gt, box,
                                  mask_size=rows["masks"].shape[-1],
                                  threshold=self.model.loss_settings.mask_target_threshold)[0]
        later_stages = (("refined_box", "refined"), ("mask_s4", "masks_s4"),
                        ("cls_probs_s5", "cls_probs_s5"))
        optional = {name: rows[key][r] for name, key in later_stages if key in rows}
        return StageView(
            image=run.image, gt_boxes=gt_boxes, roi_rank=rank, num_rois=len(run.order),
            proposal_index=r, objectness=float(rows["objectness"][r]), box=rows["boxes"][r],
            features=rows["features"][r], mask=rows["masks"][r], target=target,
            matched_iou=float(match.iou[0]), true_label=label, cls_probs=rows["cls_probs"][r],
            box_cls_probs=rows["box_cls_probs"][r], **optional,
        )

    def _status_counts(self, run: _ImageRun) -> str:
        scores = run.detections["scores"]
        image_id = run.target.get("image_id", self.index.value)
        above = int((scores >= self.score_threshold.value).sum())
        return (f"image {self.index.value} of {len(self.dataset)} ({image_id}): "
                f"{len(run.target['boxes'])} objects, {len(run.order)} RoIs, "
                f"{len(scores)} detections, {above} scoring ≥ {self.score_threshold.value:g}")

    def update(self, change: dict | None = None) -> None:
        """Redraw for the current controls (runs the model only when the image changed)."""
        if self._updating:  # the RoI slider's range is being set for a new image
            return
        start = time.perf_counter()
        run = self._run(self.index.value)
        num_rois = len(run.order)
        self._updating = True
        try:
            self.roi.max = max(num_rois - 1, 0)  # clamps roi.value; the observer returns early
            self.roi.disabled = num_rois == 0
        finally:
            self._updating = False
        counts = self._status_counts(run)
        if num_rois == 0:
            self.last_view, self.figure = None, None
            self.status.value = (f"{counts} &middot; <b style='color:#b00'>stage 1 proposed no "
                                 "box on this image</b>")
            self.output.clear_output()
            return
        view = self.last_view = self._view(run, self.roi.value)
        fig = draw_stage_view(view, run.detections, self.class_names,
                              mask_threshold=self.mask_threshold.value,
                              score_threshold=self.score_threshold.value, top_n=self.top_n.value)
        scores = run.detections["scores"]
        above = int((scores >= self.score_threshold.value).sum())
        self.last_num_detections = min(self.top_n.value, above)
        best = int(view.cls_probs.argmax())
        label = self.class_names[view.true_label] if view.true_label else "background"
        self.status.value = (f"{counts} &middot; RoI {view.roi_rank}: proposal "
                             f"#{view.proposal_index}, label <b>{label}</b>, stage 3 says "
                             f"<b>{self.class_names[best]}</b> ({float(view.cls_probs[best]):.2f})")
        self.show(fig)
        self.last_update_s = time.perf_counter() - start
