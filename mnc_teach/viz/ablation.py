"""Repeated runs compared (notebook 06's ablation): a final metric of several seeds per setting.

    summarize_ablation   group runs by a setting; per metric each seed's value, the mean, the
                         sample standard deviation and the range
    format_ablation      that summary as a text table, and the difference of two settings' means
    draw_ablation        that summary as a dot plot: a dot per seed, a bar at the mean

A run is a dict such as ``{"detach_boxes": False, "seed": 0, "mAP_r@0.5": 0.93, ...}``, the
``runs`` of a benchmark's JSON file (``benchmarks/detach_ablation.py``). This module reads no
file: loading the JSON is the caller's. Conventions: :mod:`mnc_teach.viz.common`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "GID_ABLATION_MEAN", "GID_ABLATION_SEED", "MIN_PAD_POINTS", "MetricSummary", "draw_ablation",
    "format_ablation", "summarize_ablation",
]

GID_ABLATION_SEED = "ablation-seed"  # draw_ablation: one dot per (setting, seed) in each panel
GID_ABLATION_MEAN = "ablation-mean"  # draw_ablation: one bar per setting at the mean
MIN_PAD_POINTS = 1.0  # draw_ablation: y axes reach at least this many points (%) beyond the values


@dataclass(frozen=True)
class MetricSummary:
    """One metric of the runs of one setting: each seed's value and their spread.

    ``std`` is the sample standard deviation (n - 1 in the denominator; ``nan`` for one run).
    """

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else float("nan")

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def summarize_ablation(
    runs: Sequence[Mapping], *, setting: str = "detach_boxes",
    metrics: Sequence[str] = ("mAP_r@0.5", "mAP_r@0.7"),
) -> dict[str, dict[str, MetricSummary]]:
    """Group repeated runs by the value of ``setting`` and summarise each metric over the seeds.

    Args:
        runs: one dict per run, e.g. ``{"detach_boxes": False, "seed": 0, "mAP_r@0.5": 0.93,
            ...}`` (the ``runs`` of a benchmark's JSON file).

    Returns:
        ``"setting=value" -> metric -> MetricSummary``, settings in order of first appearance,
        seeds in the order of the runs.
    """
    if not runs:
        raise ValueError("summarize_ablation: no runs")
    groups: dict[str, list[Mapping]] = {}
    for run in runs:
        groups.setdefault(f"{setting}={run[setting]}", []).append(run)
    return {
        name: {m: MetricSummary(tuple(int(r["seed"]) for r in group),
                                tuple(float(r[m]) for r in group)) for m in metrics}
        for name, group in groups.items()
    }


def format_ablation(summary: Mapping[str, Mapping[str, MetricSummary]], *,
                    percent: bool = True) -> str:
    """A text table: per setting and metric, mean ± sample std, [min, max], and every seed's
    value (in % when ``percent``). With two settings, also each metric's difference of the
    means and whether the ranges over the seeds overlap (once both have two runs or more), and
    a note when the settings have different numbers of runs (an ablation still running)."""
    factor, unit = (100.0, " (in %)") if percent else (1.0, "")
    lines = [f"{'setting':<22}{'metric':<12}{'runs':>5}{'mean':>8}{'± std':>8}"
             f"{'min - max':>15}   each seed{unit}"]
    for name, metrics in summary.items():
        for metric, s in metrics.items():
            seeds = ", ".join(f"{seed}: {factor * v:.1f}" for seed, v in zip(s.seeds, s.values,
                                                                            strict=True))
            spread = f"{factor * s.std:.1f}" if len(s.values) > 1 else "n/a"
            lines.append(f"{name:<22}{metric:<12}{len(s.values):>5}{factor * s.mean:>8.1f}"
                         f"{spread:>8}{f'{factor * s.low:.1f} - {factor * s.high:.1f}':>15}"
                         f"   {seeds}")
    runs = {name: len(next(iter(metrics.values())).values) for name, metrics in summary.items()}
    if len(set(runs.values())) > 1:
        lines.append("\nnot every setting has the same number of runs: is the ablation finished?")
    if len(runs) == 2 and min(runs.values()) >= 2:  # a spread needs two runs
        (first, a_metrics), (second, b_metrics) = summary.items()
        lines.append("")
        for metric, a in a_metrics.items():
            b = b_metrics[metric]
            overlap = "overlap" if a.low <= b.high and b.low <= a.high else "do not overlap"
            points = " points" if percent else ""
            lines.append(f"{metric}: mean of {first} - mean of {second} = "
                         f"{factor * (a.mean - b.mean):+.1f}{points}; the ranges over the seeds "
                         f"{overlap}")
    return "\n".join(lines)


def draw_ablation(summary: Mapping[str, Mapping[str, MetricSummary]], *, percent: bool = True,
                  title: str | None = None) -> Figure:
    """A dot plot per metric: each seed's value as a dot, each setting's mean as a short bar.

    Returns:
        The figure: one axes per metric (titled with it), with one dot (GID_ABLATION_SEED) per
        (setting, seed) at x = the setting's position, and one line (GID_ABLATION_MEAN) per
        setting at its mean.
    """
    names = list(summary)
    metrics = list(next(iter(summary.values()))) if names else []
    if not metrics:
        raise ValueError("draw_ablation: nothing to draw; pass summarize_ablation(runs)")
    factor = 100.0 if percent else 1.0
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], metrics, strict=True):
        for x, name in enumerate(names):
            s = summary[name][metric]
            offsets = np.linspace(-0.12, 0.12, len(s.values)) if len(s.values) > 1 else [0.0]
            for dx, value in zip(offsets, s.values, strict=True):
                ax.plot(x + dx, factor * value, "o", color=colors(x % 10), alpha=0.8,
                        gid=GID_ABLATION_SEED)
            ax.plot([x - 0.25, x + 0.25], [factor * s.mean] * 2, "-", color="black", lw=2.0,
                    gid=GID_ABLATION_MEAN)
        values = [factor * v for name in names for v in summary[name][metric].values]
        pad = max(0.25 * (max(values) - min(values)), MIN_PAD_POINTS * factor / 100)
        ax.set_ylim(min(values) - pad, max(values) + pad)  # a tiny spread is not blown up
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(metric, fontsize=9)
        ax.set_ylabel(f"{metric}{' (%)' if percent else ''}", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], ls="", marker="o", color="gray", label="one seed"),
               Line2D([], [], color="black", lw=2.0, label="mean")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, frameon=False)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    return fig
