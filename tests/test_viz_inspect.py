"""viz.inspect: the trace of an image counts and draws every step's boxes; the NMS printout
agrees with the library's nms; feature channels and weight statistics show what they were given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mnc_teach.boxes import nms
from mnc_teach.viz.common import GID_BOX, GID_GT, count_artists, find_artists
from mnc_teach.viz.inspect import (
    GID_CHANNEL,
    GID_HISTOGRAM,
    NMSDecision,
    TraceStep,
    draw_feature_channels,
    draw_trace,
    draw_weight_histograms,
    format_nms_trace,
    format_trace,
    format_weight_table,
    nms_trace,
    weight_statistics,
)


def test_trace_table_and_panels_count_each_step() -> None:
    steps = [TraceStep("anchors", torch.rand(30, 2).repeat(1, 2) * 10 + torch.tensor([0, 0, 5, 5]),
                       "every position x shape"),
             TraceStep("after NMS", torch.tensor([[1.0, 1, 9, 9], [2.0, 2, 8, 8]]), "IoU 0.7"),
             TraceStep("detections", torch.zeros(0, 4), "none left")]
    table = format_trace(steps).splitlines()
    assert table[1].split()[:2] == ["anchors", "30"] and table[3].split()[1] == "0"
    assert table[2].endswith("IoU 0.7")
    fig = draw_trace(torch.rand(3, 20, 20), steps, gt_boxes=torch.tensor([[1.0, 1, 9, 9]]),
                     max_drawn=10, ncols=2)
    assert len(fig.axes) == 3  # 2 rows of 2, the spare one removed
    assert fig.axes[2].get_subplotspec().rowspan.start == 1
    assert count_artists(fig, GID_BOX) == 10 + 2 + 0  # at most max_drawn per panel
    assert sum(1 for a in find_artists(fig, GID_GT)) == 3  # the ground truth in every panel
    assert fig.axes[0].get_title() == "anchors\n30 boxes (10 drawn)"
    assert fig.axes[1].get_title() == "after NMS\n2 boxes"


def test_nms_trace_keeps_what_nms_keeps_and_names_the_suppressor() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [20.0, 20, 30, 30],
                          [0.0, 1, 10, 11], [21.0, 20, 31, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.3])
    decisions = nms_trace(boxes, scores, 0.5)
    assert [d.index for d in decisions] == [3, 0, 1, 2, 4]  # by decreasing score
    assert sorted(d.index for d in decisions if d.kept) == sorted(nms(boxes, scores, 0.5).tolist())
    by_index = {d.index: d for d in decisions}
    assert by_index[0].suppressed_by == 3 and by_index[0].iou == pytest.approx(90 / 110)
    assert by_index[1].suppressed_by == 3  # the best kept box that overlaps it, not box 0
    assert by_index[4] == NMSDecision(4, pytest.approx(0.3), False, 2, pytest.approx(90 / 110))
    text = format_nms_trace(decisions, max_rows=3).splitlines()
    assert text[1].split() == ["0", "3", "0.950", "kept"]
    assert "suppressed by box 3 (IoU 0.82)" in text[2]
    assert text[-1] == "... 2 more: 1 kept, 1 suppressed"
    assert nms_trace(torch.zeros(0, 4), torch.zeros(0), 0.5) == []


def test_random_boxes_nms_trace_equals_nms() -> None:
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=generator) * 20], dim=1)
    scores = torch.rand(60, generator=generator)
    kept = [d.index for d in nms_trace(boxes, scores, 0.3) if d.kept]
    assert kept == nms(boxes, scores, 0.3).tolist()


def test_feature_channels_show_the_mean_and_the_chosen_channels() -> None:
    features = torch.arange(4 * 3 * 5, dtype=torch.float32).view(4, 3, 5)
    fig = draw_feature_channels(torch.rand(3, 48, 80), features, [2, 0])
    shown = find_artists(fig, GID_CHANNEL)
    assert len(shown) == 3 and len(fig.axes) == 4
    np.testing.assert_allclose(shown[0].get_array(), features.mean(dim=0).numpy())
    np.testing.assert_allclose(shown[1].get_array(), features[2].numpy())
    assert fig.axes[3].get_title().startswith("channel 0\n[0, 14]")


def test_weight_statistics_table_and_histograms() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    net[1].bias.requires_grad_(False)
    rows = weight_statistics(net)
    assert [r["name"] for r in rows] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    first = rows[0]
    assert first["shape"] == (2, 3) and first["mean"] == pytest.approx(3.5)
    assert first["std"] == pytest.approx(np.std([1, 2, 3, 4, 5, 6]))
    assert (first["min"], first["max"]) == (1.0, 6.0)
    table = format_weight_table(rows).splitlines()
    assert len(table) == 5 and table[1].split()[:2] == ["0.weight", "(2,"]
    assert table[4].endswith("(frozen)") and not table[3].endswith("(frozen)")
    fig = draw_weight_histograms(net, ["0.weight", "1.weight"], bins=4)
    assert len(fig.axes) == 2 and count_artists(fig, GID_HISTOGRAM) == 8
    assert sum(p.get_height() for p in find_artists(fig, GID_HISTOGRAM)[:4]) == 6
    with pytest.raises(KeyError, match="no parameter"):
        draw_weight_histograms(net, ["2.weight"])
