"""Publication figures of discrimination and calibration (matplotlib, Agg backend).

Each function takes result objects and a path, writes a 300-dpi PNG and an SVG beside it (the
suffix of ``path`` is ignored) and returns the two paths. Files are written atomically.

* ``plot_roc_grid``: the study's Figure 3, panels of ROC curves (three sequences x MRI alone /
  with clinical data), each curve's legend entry "Model, AUC 0.733 (95% CI 0.559–0.909)".
* ``plot_calibration``: calibration curve with Wilson CIs, intercept, slope and Brier score.
* ``plot_decision_curve``: net benefit of the model(s) against treat-all and treat-none.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..runtime import atomic_path  # noqa: E402
from .calibration import CalibrationResult, DecisionCurve  # noqa: E402
from .roc import AUCResult, ROCCurve  # noqa: E402

log = logging.getLogger(__name__)

# Okabe–Ito colours: distinguishable with the common colour-vision deficiencies
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7.5,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.linewidth": 0.8, "lines.linewidth": 1.6,
    "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none",
    "font.family": "sans-serif", "font.sans-serif": ["Arial", "Helvetica", "DejaVu Sans"],
}


def save_figure(fig, path: str | Path, dpi: int = 300) -> tuple[Path, Path]:
    """Writes ``fig`` as <path>.png (``dpi``) and <path>.svg, atomically; closes it."""
    base = Path(path)
    base = base.with_suffix("") if base.suffix.lower() in (".png", ".svg", ".pdf") else base
    out = []
    for ext in ("png", "svg"):
        target = base.parent / f"{base.name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight")
        out.append(target)
    plt.close(fig)
    log.info("wrote %s and %s", out[0], out[1])
    return out[0], out[1]


@dataclass(frozen=True)
class ROCEntry:
    """One curve of a panel: its legend label, the curve and its AUC result."""
    label: str
    curve: ROCCurve
    auc: AUCResult


@dataclass(frozen=True)
class ROCPanel:
    """One panel of ``plot_roc_grid``: a title and its curves (first = the model, drawn on top)."""
    title: str
    entries: Sequence[ROCEntry]


def _draw_roc(ax, panel: ROCPanel) -> None:
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", zorder=1)
    for k, entry in reversed(list(enumerate(panel.entries))):
        c = entry.curve
        ax.step(c.fpr, c.tpr, where="post", color=COLORS[k % len(COLORS)], zorder=3 + (len(panel.entries) - k),
                label=f"{entry.label}, AUC {entry.auc.format()}")
    handles, labels = ax.get_legend_handles_labels()
    # below the axes: "Model, AUC 0.733 (95% CI 0.559–0.909)" is too long to sit on the curves
    ax.legend(handles[::-1], labels[::-1], loc="upper center", bbox_to_anchor=(0.5, -0.2),
              frameon=False, handlelength=1.5, borderaxespad=0.0)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 \u2212 specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_title(panel.title)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_yticks(np.linspace(0, 1, 6))


def plot_roc_grid(panels: Sequence[ROCPanel], path: str | Path, ncols: int = 3,
                  panel_size_in: float = 3.2) -> tuple[Path, Path]:
    """Grid of ROC panels (Figure 3: ncols=3 sequences, rows MRI alone / MRI + clinical).

    Panels fill the grid row by row and are lettered A, B, C, ... in their top-left corners.
    """
    if not panels:
        raise ValueError("plot_roc_grid needs at least one panel")
    ncols = max(1, min(ncols, len(panels)))
    nrows = int(np.ceil(len(panels) / ncols))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                                 figsize=(panel_size_in * ncols, (panel_size_in + 0.45) * nrows))
        for i, ax in enumerate(axes.flat):
            if i >= len(panels):
                ax.set_visible(False)
                continue
            _draw_roc(ax, panels[i])
            if len(panels) > 1:
                ax.text(-0.22, 1.06, chr(ord("A") + i), transform=ax.transAxes, fontsize=12,
                        fontweight="bold", va="bottom")
        return save_figure(fig, path)


def plot_calibration(results: dict[str, CalibrationResult] | CalibrationResult, path: str | Path,
                     title: str = "Calibration") -> tuple[Path, Path]:
    """Calibration curve(s): observed vs mean predicted risk per bin, with Wilson CIs.

    ``results`` is one ``CalibrationResult`` or {label: result}. The legend gives each model's
    calibration intercept, slope and Brier score.
    """
    if isinstance(results, CalibrationResult):
        results = {"Model": results}
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.8, 4.2 + 0.15 * len(results)), layout="constrained")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="Ideal")
        for k, (label, r) in enumerate(results.items()):
            x = np.array([b.mean_predicted for b in r.bins])
            y = np.array([b.observed for b in r.bins])
            # clipped at 0: matplotlib refuses a negative error bar, and rounding can make one
            err = np.clip(np.array([[b.observed - b.ci_low for b in r.bins],
                                    [b.ci_high - b.observed for b in r.bins]]), 0.0, None)
            ax.errorbar(x, y, yerr=err, color=COLORS[k % len(COLORS)], marker="o", ms=3.5, capsize=2,
                        lw=1.2, label=(f"{label}: intercept {r.intercept:.2f}, slope {r.slope:.2f}, "
                                       f"Brier {r.brier:.3f}"))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("Predicted probability")
        ax.set_ylabel("Observed proportion")
        ax.set_title(title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, borderaxespad=0.0)
        return save_figure(fig, path)


def plot_decision_curve(curves: dict[str, DecisionCurve] | DecisionCurve, path: str | Path,
                        title: str = "Decision curve", max_threshold: float | None = None
                        ) -> tuple[Path, Path]:
    """Net benefit against threshold probability, with treat-all and treat-none.

    ``curves`` is one ``DecisionCurve`` or {label: curve} on the same patients. The y-axis is
    cut a little below zero so that treat-all's steep fall does not flatten the plot.
    """
    if isinstance(curves, DecisionCurve):
        curves = {"Model": curves}
    first = next(iter(curves.values()))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.4), layout="constrained")
        ax.plot(first.thresholds, first.treat_all, color="0.45", lw=1.0, label="Treat all")
        ax.plot(first.thresholds, first.treat_none, color="0.0", lw=1.0, ls="--", label="Treat none")
        for k, (label, dc) in enumerate(curves.items()):
            ax.plot(dc.thresholds, dc.net_benefit, color=COLORS[k % len(COLORS)], label=label)
        top = max(first.prevalence, max(float(np.max(dc.net_benefit)) for dc in curves.values()))
        low = min(float(np.min(dc.net_benefit)) for dc in curves.values())
        # show the models' own dips below zero, but not treat-all's fall towards -infinity
        bottom = max(min(-0.02 - 0.05 * top, 1.15 * low), -0.5 * top)
        ax.set_ylim(bottom, top * 1.1 + 0.01)
        ax.set_xlim(0, max_threshold if max_threshold is not None else float(first.thresholds.max()))
        ax.set_xlabel("Threshold probability")
        ax.set_ylabel("Net benefit")
        ax.set_title(title)
        ax.legend(loc="upper right", frameon=False)
        return save_figure(fig, path)
