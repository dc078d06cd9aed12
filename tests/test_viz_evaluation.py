"""viz.evaluation: every figure draws what it was given, counted by gid and read back from
the artists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import CLASSES, rect, synthetic_set

from mnc_teach.evaluation.sds import average_precision, evaluate_sds
from mnc_teach.viz.common import count_artists, find_artists
from mnc_teach.viz.evaluation import (
    GID_AP_AREA,
    GID_DET_LABEL,
    GID_ENVELOPE,
    GID_FP_MASK,
    GID_GT_OUTLINE,
    GID_IOU_PIXELS,
    GID_PR_CURVE,
    GID_PRED_MASK,
    GID_TP_MASK,
    GID_VOC07_POINTS,
    IOU_COLORS,
    GalleryItem,
    draw_ap_variants,
    draw_failure_gallery,
    draw_mask_iou,
    draw_matching,
    draw_pr_curves,
    mask_outline,
)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_mask_outline_is_the_boundary() -> None:
    mask = np.zeros((5, 5), dtype=np.uint8)
    mask[1:4, 1:4] = 1
    outline = mask_outline(mask)
    assert outline.sum() == 8 and not outline[2, 2] and outline[1, 1]
    full = mask_outline(np.ones((4, 4)))  # pixels on the image border count as boundary
    assert full.sum() == 12 and not full[1:3, 1:3].any()


def test_draw_mask_iou_colours_every_pixel_by_kind() -> None:
    a, b = rect(0, 4, 0, 4, side=8), rect(2, 6, 2, 7, side=8)  # 16 and 20 pixels, 2 x 2 shared
    fig = draw_mask_iou(a, b, names=("prediction", "ground truth"))
    (image,) = find_artists(fig, GID_IOU_PIXELS)
    pixels = image.get_array().reshape(-1, 3)
    counts = [int(np.all(np.isclose(pixels, IOU_COLORS[k]), axis=1).sum()) for k in range(4)]
    assert counts == [64 - 32, 12, 16, 4]
    assert fig.axes[0].get_title() == f"IoU = 4 / 32 = {4 / 32:.3f}"
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["prediction only (12)", "ground truth only (16)", "both (4)"]
    with pytest.raises(ValueError, match="one size"):
        draw_mask_iou(a, rect(0, 2, 0, 2, side=6))


def test_draw_matching_counts_and_places_captions() -> None:
    image = torch.rand(3, 32, 32)
    gts = torch.stack([rect(0, 10, 0, 10), rect(20, 30, 20, 30)])
    dets = torch.stack([rect(0, 10, 0, 10), rect(1, 10, 0, 10), rect(15, 20, 5, 12)])
    fig = draw_matching(image, gts, dets, [True, False, False], ["#1", "#2", "#3"])
    assert count_artists(fig, GID_GT_OUTLINE) == 2
    assert count_artists(fig, GID_TP_MASK) == 1 and count_artists(fig, GID_FP_MASK) == 2
    labels = find_artists(fig, GID_DET_LABEL)
    assert [t.get_text() for t in labels] == ["#1", "#2", "#3"]
    # (x, y) of each mask's corner
    assert [t.get_position() for t in labels] == [(0, 0), (0, 1), (5, 15)]
    (tp_overlay,) = find_artists(fig, GID_TP_MASK)
    alpha = tp_overlay.get_array()[..., 3]  # filled, with an opaque boundary
    assert (alpha > 0).sum() == dets[0].sum() and (alpha == 1).sum() == mask_outline(dets[0]).sum()
    (outline, _) = find_artists(fig, GID_GT_OUTLINE)
    assert (outline.get_array()[..., 3] > 0).sum() == mask_outline(gts[0]).sum()
    with pytest.raises(ValueError, match="one of each"):
        draw_matching(image, gts, dets, [True], ["#1", "#2", "#3"])


def _polygon_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def test_draw_ap_variants_shades_the_area_ap_and_marks_the_voc07_points() -> None:
    recall = np.array([0.25, 0.25, 0.5, 0.75, 0.75])
    precision = np.array([1.0, 0.5, 0.67, 0.75, 0.6])
    fig = draw_ap_variants(recall, precision, title="toy")
    (area,) = find_artists(fig, GID_AP_AREA)
    shaded = sum(_polygon_area(path.vertices) for path in area.get_paths())
    assert shaded == pytest.approx(average_precision(recall, precision, "area"))
    (points,) = find_artists(fig, GID_VOC07_POINTS)
    np.testing.assert_allclose(points.get_xdata(), np.arange(11) / 10)
    voc07_ap = average_precision(recall, precision, "voc07")
    assert np.mean(points.get_ydata()) == pytest.approx(voc07_ap)
    assert count_artists(fig, GID_ENVELOPE) == 1 and count_artists(fig, GID_PR_CURVE) == 1
    area_ap = average_precision(recall, precision, "area")
    assert fig.axes[0].get_title() == f"toy: area AP {area_ap:.3f}, VOC07 AP {voc07_ap:.3f}"


def test_draw_pr_curves_one_line_per_class_and_threshold() -> None:
    predictions, ground_truth = synthetic_set()
    sds = evaluate_sds(predictions, ground_truth, CLASSES)
    fig = draw_pr_curves(sds.curves, sds.class_names, ap=sds.ap["area"])
    drawable = [k for k in range(3) if sds.num_gt[k] > 0 and sds.num_det[k] > 0]
    assert count_artists(fig, GID_PR_CURVE) == 2 * len(drawable)
    ax = fig.axes[drawable[0]]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), sds.curves[0.7][drawable[0]][1])
    assert ax.get_title() == CLASSES[1 + drawable[0]]
    ap = sds.ap["area"][0.5][drawable[0]]
    assert ax.get_legend().get_texts()[0].get_text() == f"IoU 0.5: AP {ap:.3f}"

    no_gt = {0.5: [(np.full(2, np.nan), np.array([0.0, 0.0])), (np.zeros(0), np.zeros(0))]}
    fig = draw_pr_curves(no_gt, ["circle", "square"])
    assert count_artists(fig, GID_PR_CURVE) == 0 and _texts(fig) == ["no GT", "no detections"]
    with pytest.raises(ValueError, match="foreground names"):
        draw_pr_curves(no_gt, ["circle"])


def test_draw_failure_gallery_rows_items_and_crops() -> None:
    image = torch.rand(3, 64, 64)
    gt, pred = rect(10, 20, 10, 20, side=64).numpy(), rect(12, 22, 40, 50, side=64).numpy()
    rows = {
        "false positives": [GalleryItem(image, None, pred, "fp 0.9"),
                            GalleryItem(image, gt, pred, "fp 0.8")],
        "missed instances": [],
        "poor masks": [GalleryItem(image, gt, None, "missed")],
    }
    fig = draw_failure_gallery(rows, ncols=3)
    assert len(fig.axes) == 9
    assert count_artists(fig, GID_GT_OUTLINE) == 2 and count_artists(fig, GID_PRED_MASK) == 2
    assert [fig.axes[i].get_title() for i in (0, 1, 6)] == ["fp 0.9", "fp 0.8", "missed"]
    assert "none" in [t.get_text() for t in fig.axes[3].texts]
    (x1, x2), (y2, y1) = fig.axes[6].get_xlim(), fig.axes[6].get_ylim()
    assert x1 <= 9.5 and x2 >= 19.5 and y1 <= 9.5 and y2 >= 19.5  # the crop shows the whole GT
    assert x2 - x1 >= 24 - 1e-9 and x2 - x1 < 64  # at least MIN_CROP_SIDE, less than the image
