"""Kaplan–Meier figures with a numbers-at-risk table (the study's Figure 4).

``plot_km_grid`` draws one panel per endpoint (DMFS, OS) side by side; each panel shows the curves
with their CI bands and censoring ticks, the log-rank chi-square and p, the rate at a time point
(3-year, 36 months) per group in the legend, and the numbers at risk in a table aligned under the
x-axis. Writes PNG (300 dpi) and SVG; returns both paths.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.transforms as mtransforms  # noqa: E402
import numpy as np  # noqa: E402

from ..evaluation.figures import COLORS, STYLE, save_figure  # noqa: E402
from .km import KMResult, LogRankResult  # noqa: E402

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KMPanel:
    """One endpoint: curves, the log-rank result, and what to print.

    ``labels`` maps group -> legend label (e.g. {"high": "High risk"}); ``rate_time`` (months)
    adds each group's rate there to its legend entry, named ``rate_label``.
    """
    title: str
    km: KMResult
    logrank: LogRankResult | None = None
    ylabel: str = "Survival probability"
    rate_time: float | None = 36.0
    rate_label: str = "3-year"
    labels: dict = field(default_factory=dict)


def _tick_times(km: KMResult, step: float, x_max: float | None) -> np.ndarray:
    end = x_max if x_max is not None else max(float(c.time[-1]) for c in km.curves)
    return np.arange(0.0, end + 1e-9, step)


def _draw_panel(ax, tab, panel: KMPanel, ticks: np.ndarray, xlabel: str) -> None:
    for k, c in enumerate(panel.km.curves):
        color = COLORS[k % len(COLORS)]
        name = panel.labels.get(c.group, c.group)
        label = f"{name} (n={c.n})"
        if panel.rate_time is not None:
            r = c.survival_at(panel.rate_time)
            label += f", {panel.rate_label} {r.format()}"
        t = np.concatenate([[0.0], c.time])
        s = np.concatenate([[1.0], c.survival])
        lo = np.concatenate([[1.0], c.ci_low])
        hi = np.concatenate([[1.0], c.ci_high])
        ax.step(t, s, where="post", color=color, label=label, zorder=3)
        ax.fill_between(t, lo, hi, step="post", color=color, alpha=0.15, lw=0, zorder=2)
        cens = c.n_censored > 0
        ax.plot(c.time[cens], c.survival[cens], ls="none", marker="|", ms=5, mew=0.9, color=color, zorder=4)
    title = None
    if panel.logrank is not None:
        lr = panel.logrank
        title = (f"Log-rank \u03c7\u00b2 = {lr.chi2:.2f}, {lr.format_p()}" if lr.tested
                 else f"Log-rank: {lr.format_p()}")
    # legend above the plot area, under the title: inside it would hide the curves' start
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), frameon=False, title=title,
              alignment="left", borderaxespad=0.0, handlelength=1.5)
    ax.set_title(panel.title, pad=6 + 11.5 * (len(panel.km.curves) + (title is not None)),
                 fontweight="bold")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(ticks[0], ticks[-1] * 1.02 if ticks[-1] > 0 else 1)
    ax.set_xticks(ticks)
    ax.set_ylabel(panel.ylabel)
    ax.set_xlabel(xlabel)

    # numbers at risk: one row per group, each number centred under its tick; the group names
    # sit left of the y-axis, shifted by a fixed offset so they never touch the first column
    tab.set_xlim(ax.get_xlim())
    n_groups = len(panel.km.curves)
    tab.set_ylim(-0.5, n_groups - 0.5)
    tab.axis("off")
    shift = mtransforms.ScaledTranslation(-14 / 72, 0, tab.figure.dpi_scale_trans)
    trans = mtransforms.blended_transform_factory(tab.transAxes, tab.transData) + shift
    for k, c in enumerate(panel.km.curves):
        y = n_groups - 1 - k
        color = COLORS[k % len(COLORS)]
        for x, n in zip(ticks, c.at_risk(ticks)):
            tab.text(x, y, str(int(n)), ha="center", va="center", fontsize=8, color=color)
        tab.text(0.0, y, panel.labels.get(c.group, c.group), ha="right", va="center", fontsize=8,
                 color=color, transform=trans)
    tab.text(0.0, n_groups - 0.45, "Number at risk", ha="right", va="bottom", fontsize=8,
             fontweight="bold", transform=trans)


def plot_km_grid(panels: Sequence[KMPanel], path: str | Path, xlabel: str = "Time (months)",
                 tick_step: float = 12.0, x_max: float | None = None,
                 panel_width_in: float = 4.6) -> tuple[Path, Path]:
    """Kaplan–Meier panels side by side, each with its numbers-at-risk table under the x-axis.

    Args:
        panels: e.g. [KMPanel("DMFS", km_dmfs, lr_dmfs), KMPanel("OS", km_os, lr_os)].
        path: output path; ``.png`` and ``.svg`` are written.
        xlabel: x-axis label (times are months in this project).
        tick_step: spacing of the x ticks and of the at-risk columns (12 = yearly).
        x_max: last time shown; default the longest follow-up of the panel.
    """
    if not panels:
        raise ValueError("plot_km_grid needs at least one panel")
    max_groups = max(len(p.km.curves) for p in panels)
    table_h = 0.22 * max_groups + 0.35
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(panel_width_in * len(panels), 4.2 + table_h), layout="constrained")
        gs = fig.add_gridspec(2, len(panels), height_ratios=[3.6, table_h])
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(gs[0, i])
            tab = fig.add_subplot(gs[1, i])
            ticks = _tick_times(panel.km, tick_step, x_max)
            _draw_panel(ax, tab, panel, ticks, xlabel)
            if len(panels) > 1:
                ax.annotate(chr(ord("A") + i), xy=(0, 1), xycoords="axes fraction", xytext=(-38, 40),
                            textcoords="offset points", fontsize=12, fontweight="bold", va="bottom")
        return save_figure(fig, path)
