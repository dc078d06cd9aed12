"""viz.ablation: repeated runs grouped by a setting, summarised over the seeds (sample std,
range), printed with every seed's value and drawn as a dot per seed and a bar per mean."""

from __future__ import annotations

import json
import math

import pytest

from mnc_teach.viz.ablation import (
    GID_ABLATION_MEAN,
    GID_ABLATION_SEED,
    draw_ablation,
    format_ablation,
    summarize_ablation,
)
from mnc_teach.viz.common import count_artists

ABLATION_JSON = """{"command": "python benchmarks/detach_ablation.py", "preset": "shapes-cpu",
 "steps": 10, "runs": [
  {"detach_boxes": false, "seed": 0, "mAP_r@0.5": 0.90, "mAP_r@0.7": 0.70, "train_s": 1.0},
  {"detach_boxes": true, "seed": 0, "mAP_r@0.5": 0.80, "mAP_r@0.7": 0.60, "train_s": 1.0},
  {"detach_boxes": false, "seed": 1, "mAP_r@0.5": 0.94, "mAP_r@0.7": 0.72, "train_s": 1.0},
  {"detach_boxes": true, "seed": 1, "mAP_r@0.5": 0.84, "mAP_r@0.7": 0.66, "train_s": 1.0},
  {"detach_boxes": false, "seed": 2, "mAP_r@0.5": 0.92, "mAP_r@0.7": 0.74, "train_s": 1.0},
  {"detach_boxes": true, "seed": 2, "mAP_r@0.5": 0.82, "mAP_r@0.7": 0.63, "train_s": 1.0}]}"""


def test_summarize_ablation_groups_by_setting_with_sample_std() -> None:
    summary = summarize_ablation(json.loads(ABLATION_JSON)["runs"])
    assert list(summary) == ["detach_boxes=False", "detach_boxes=True"]
    kept = summary["detach_boxes=False"]["mAP_r@0.5"]
    assert kept.seeds == (0, 1, 2) and kept.values == (0.90, 0.94, 0.92)
    assert kept.mean == pytest.approx(0.92) and kept.std == pytest.approx(0.02)  # n - 1
    assert (kept.low, kept.high) == (0.90, 0.94)
    one = summarize_ablation([{"detach_boxes": True, "seed": 4, "mAP_r@0.5": 0.5}],
                             metrics=["mAP_r@0.5"])
    assert math.isnan(one["detach_boxes=True"]["mAP_r@0.5"].std)
    with pytest.raises(ValueError, match="no runs"):
        summarize_ablation([])


def test_format_ablation_prints_mean_spread_range_and_every_seed() -> None:
    lines = format_ablation(summarize_ablation(json.loads(ABLATION_JSON)["runs"])).splitlines()
    assert len(lines) == 1 + 2 * 2 + 1 + 2
    assert lines[1].split()[:6] == ["detach_boxes=False", "mAP_r@0.5", "3", "92.0", "2.0", "90.0"]
    assert lines[1].endswith("0: 90.0, 1: 94.0, 2: 92.0")
    assert lines[4].split()[:4] == ["detach_boxes=True", "mAP_r@0.7", "3", "63.0"]
    difference = "mean of detach_boxes=False - mean of detach_boxes=True"
    assert lines[6] == (f"mAP_r@0.5: {difference} = +10.0 points; "
                        "the ranges over the seeds do not overlap")
    assert lines[7].startswith(f"mAP_r@0.7: {difference} = +9.0 points")


def test_format_ablation_of_an_unfinished_ablation() -> None:
    runs = json.loads(ABLATION_JSON)["runs"][:3]  # False: seeds 0, 1; True: seed 0
    text = format_ablation(summarize_ablation(runs))
    assert "not every setting has the same number of runs" in text
    assert "mean of" not in text  # no spread for a setting with one run
    assert "n/a" in text.splitlines()[3]
    overlapping = [dict(run, **{"mAP_r@0.5": 0.85}) for run in json.loads(ABLATION_JSON)["runs"]]
    overlapping[0]["mAP_r@0.5"] = 0.86
    text = format_ablation(summarize_ablation(overlapping, metrics=["mAP_r@0.5"]))
    assert text.splitlines()[-1].endswith("= +0.3 points; the ranges over the seeds overlap")


def test_draw_ablation_a_dot_per_seed_and_a_bar_per_mean() -> None:
    summary = summarize_ablation(json.loads(ABLATION_JSON)["runs"])
    fig = draw_ablation(summary, title="detach_boxes")
    assert [ax.get_title() for ax in fig.axes] == ["mAP_r@0.5", "mAP_r@0.7"]
    assert count_artists(fig, GID_ABLATION_SEED) == 2 * 2 * 3
    means = [line for line in fig.axes[1].lines if line.get_gid() == GID_ABLATION_MEAN]
    assert [list(line.get_ydata()) for line in means] == [[pytest.approx(72.0)] * 2,
                                                          [pytest.approx(63.0)] * 2]
    dots = [line for line in fig.axes[0].lines if line.get_gid() == GID_ABLATION_SEED]
    assert sorted(float(d.get_ydata()[0]) for d in dots[:3]) == pytest.approx([90.0, 92.0, 94.0])
    assert all(abs(float(d.get_xdata()[0]) - 1) < 0.2 for d in dots[3:])  # the second setting
    low, high = fig.axes[0].get_ylim()
    assert low == pytest.approx(80.0 - 3.5) and high == pytest.approx(94.0 + 3.5)  # range / 4


def test_draw_ablation_does_not_blow_up_a_tiny_spread() -> None:
    runs = [{"detach_boxes": False, "seed": s, "mAP_r@0.5": 0.9 + s / 1000} for s in range(3)]
    fig = draw_ablation(summarize_ablation(runs, metrics=["mAP_r@0.5"]))
    low, high = fig.axes[0].get_ylim()
    assert low == pytest.approx(89.0) and high == pytest.approx(91.2)  # at least 1 point of margin
