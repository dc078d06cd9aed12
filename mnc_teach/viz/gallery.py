"""Galleries: predictions on fixed images, and the failures of an evaluated model.

    predictions  draw_prediction_gallery: each image's ground truth above its detections
    failures     failure_gallery_rows, draw_failures: the most confident false positives, the
                 missed instances and the poor masks of notebook 08, as crops

The training dashboard and the run viewer draw the prediction gallery from a thread, so it uses
matplotlib's object API (``Figure()``, never pyplot) and draws again into the same figure;
``viz.common.figure_png`` turns it into the PNG an ``ipywidgets.Image`` shows.

Conventions: :mod:`mnc_teach.viz.common`.

Shape legend (structures.py): H, W image size, D detections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from mnc_teach.evaluation.analysis import (
    FP_WRONG_CLASS,
    UNMATCHED,
    MatchAnalysis,
    false_positive_cause,
)
from mnc_teach.evaluation.coco import decode_mask
from mnc_teach.structures import Target
from mnc_teach.viz.evaluation import GalleryItem, draw_failure_gallery
from mnc_teach.viz.instances import best_detections, draw_instances

__all__ = [
    "GID_NO_DETECTIONS", "MAX_DRAWN", "SCORE_THRESHOLD", "draw_failures",
    "draw_prediction_gallery", "failure_gallery_rows", "new_gallery_figure",
]

SCORE_THRESHOLD = 0.5  # the gallery draws the detections scoring at least this
MAX_DRAWN = 10  # the gallery draws at most this many detections per image (the highest scores)
GID_NO_DETECTIONS = "no-detections"  # the "no detections >= t" text of a gallery image
GALLERY_PANEL = 2.2  # inches per gallery image (a column: ground truth above, predictions below)


def new_gallery_figure(count: int) -> Figure:
    """An empty figure sized for a gallery of ``count`` images."""
    return Figure(figsize=(max(GALLERY_PANEL * count, 4.0), 2 * GALLERY_PANEL + 0.4))


def _gallery_axes(fig: Figure, count: int) -> np.ndarray:
    """The figure's 2 x ``count`` gallery axes, emptied (reused: new axes cost more than drawing).
    """
    axes = fig.axes
    if len(axes) == 2 * count and all(ax.get_gid() == f"gallery-{i}" for i, ax in enumerate(axes)):
        for ax in axes:
            for artist in [*ax.images, *ax.patches, *ax.texts, *ax.collections, *ax.lines]:
                artist.remove()
        return np.array(axes).reshape(2, count)
    fig.clear()
    axes = fig.subplots(2, count, squeeze=False)  # (2, count): ground truth above, detections below
    for i, ax in enumerate(axes.flat):
        ax.set_gid(f"gallery-{i}")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.05, hspace=0.12)
    return axes


def draw_prediction_gallery(
    fig: Figure, images: Sequence[Tensor], targets: Sequence[dict], detections: Sequence[dict],
    class_names: Sequence[str], *, score_threshold: float = SCORE_THRESHOLD,
    step: int | None = None, max_drawn: int = MAX_DRAWN,
) -> Figure:
    """One column per image: its ground truth above, its detections scoring >= the threshold below.

    Args:
        fig: the figure to draw into (its gallery axes are reused when they fit).
        images (Tensor[3, H, W] each), targets, detections: one of each per image.
        class_names: names of the labels, index 0 background.
        score_threshold, max_drawn: at most ``max_drawn`` detections scoring at least this are
            drawn per image, the highest scores, each in its colour among all of the image's.
        step: the training step, written in the titles of the predictions.

    Returns:
        ``fig``: axes ``[0, k]`` and ``[1, k]`` (gids ``gallery-<k>``, ``gallery-<n + k>``) hold
        image k; an image without such detections says "no detections >= t"
        (gid GID_NO_DETECTIONS).
    """
    axes = _gallery_axes(fig, len(images))
    for k, (image, target, found) in enumerate(zip(images, targets, detections, strict=True)):
        name = target.get("image_id", f"image {k}")
        draw_instances(image, target, class_names, ax=axes[0, k], title=f"{name}: ground truth")
        shown, colors, num_above = best_detections(found, score_threshold, max_drawn)
        num_shown = len(shown["scores"])
        count = f"{num_shown}" if num_shown == num_above else f"{num_shown} of {num_above}"
        when = "" if step is None else f"step {step}: "
        draw_instances(image, shown, class_names, ax=axes[1, k], colors=colors,
                       title=f"{when}{count} with score >= {score_threshold:g}")
        if num_shown == 0:
            axes[1, k].text(0.5, 0.5, f"no detections >= {score_threshold:g}",
                            transform=axes[1, k].transAxes, ha="center", va="center", fontsize=8,
                            gid=GID_NO_DETECTIONS, bbox={"facecolor": "white", "alpha": 0.8})
        for ax in axes[:, k]:
            ax.set_title(ax.get_title(), fontsize=8, y=1.0)  # a fixed y: no automatic placement
    return fig


def failure_gallery_rows(
    analysis: MatchAnalysis, predictions: list[dict], ground_truth: Sequence[Target],
    class_names: Sequence[str], load_image: Callable[[int], Tensor], *, per_row: int = 4,
    strict_iou: float = 0.7,
) -> dict[str, list[GalleryItem]]:
    """The rows of the failure gallery, each with its first ``per_row`` items:

    * "false positives": the FPs of highest score, outlined: the object they overlap most (any
      class); caption: class, score and cause (``false_positive_cause``);
    * "missed instances": the GT instances no prediction matched, nearest misses first, with the
      prediction of their class that overlaps them most (if any);
    * "poor masks (IoU < strict_iou)": the TPs whose mask IoU is below ``strict_iou``, most
      confident first.

    Args:
        analysis: ``analyze_matches`` of ``predictions`` against ``ground_truth``.
        predictions: COCO results (``segmentation`` RLE at the size of the image file).
        class_names: index 0 background.
        load_image: image index -> Tensor[3, H, W] at the size of its file (called once per
            image shown).
    """
    images: dict[int, Tensor] = {}

    def image_of(i: int) -> Tensor:
        if i not in images:
            images[i] = load_image(i)
        return images[i]

    def pred_mask(p: int) -> np.ndarray:
        return decode_mask(predictions[p]["segmentation"])  # (H, W) uint8

    def caption(p: int, detail: str) -> str:
        return f"{class_names[analysis.category[p]]} {analysis.score[p]:.2f}\n{detail}"

    false_positives = []
    for p in analysis.false_positives()[:per_row].tolist():
        target, mask = ground_truth[analysis.image[p]], pred_mask(p)
        why = false_positive_cause(analysis, p, mask, target)
        detail = (f"wrong class: a {class_names[why.nearest_label]}, IoU {why.iou:.2f}"
                  if why.cause == FP_WRONG_CLASS
                  else f"{why.cause.removeprefix('FP: ')}, IoU {why.iou:.2f}")
        outline = None if why.nearest_gt == UNMATCHED else target["masks"][why.nearest_gt]
        false_positives.append(GalleryItem(image_of(analysis.image[p]), outline, mask,
                                           caption(p, detail)))
    missed = []
    for i, g in analysis.missed()[:per_row]:
        nearest = int(analysis.gt_best_pred[i][g])  # the prediction of its class closest to it
        missed.append(GalleryItem(
            image_of(i), ground_truth[i]["masks"][g], None if nearest < 0 else pred_mask(nearest),
            f"{class_names[int(ground_truth[i]['labels'][g])]} in {ground_truth[i]['image_id']}\n"
            f"nearest IoU {analysis.gt_best_iou[i][g]:.3f}"))
    poor = [
        GalleryItem(image_of(analysis.image[p]),
                    ground_truth[analysis.image[p]]["masks"][analysis.best_gt[p]], pred_mask(p),
                    caption(p, f"IoU {analysis.best_iou[p]:.3f}"))
        for p in analysis.matched_below(strict_iou)[:per_row].tolist()
    ]
    return {"false positives": false_positives, "missed instances": missed,
            f"poor masks (IoU < {strict_iou:g})": poor}


def draw_failures(
    analysis: MatchAnalysis, predictions: list[dict], ground_truth: Sequence[Target],
    class_names: Sequence[str], load_image: Callable[[int], Tensor], *, per_row: int = 4,
    strict_iou: float = 0.7, title: str | None = None,
) -> Figure:
    """The failure gallery: :func:`failure_gallery_rows` drawn by ``draw_failure_gallery``
    (crops in grey, ground truth outlined gold, predictions filled blue)."""
    rows = failure_gallery_rows(analysis, predictions, ground_truth, class_names, load_image,
                                per_row=per_row, strict_iou=strict_iou)
    return draw_failure_gallery(rows, ncols=per_row, title=title)
