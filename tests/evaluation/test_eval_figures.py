"""ROC grid, calibration and decision-curve figures: files written, text in them as specified."""
from __future__ import annotations

import html

import numpy as np
import pytest
from PIL import Image

from npc_msom.evaluation import calibration, decision_curve, roc_auc, roc_curve
from npc_msom.evaluation.figures import (ROCEntry, ROCPanel, plot_calibration, plot_decision_curve,
                                         plot_roc_grid)


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20, int), np.zeros(26, int)]
    return y, [1 / (1 + np.exp(-(rng.normal(size=46) + eff * y))) for eff in (1.2, 0.5)]


def _check_outputs(paths, tmp_path, name):
    png, svg = paths
    assert png == tmp_path / f"{name}.png" and svg == tmp_path / f"{name}.svg"
    with Image.open(png) as im:
        dpi = im.info.get("dpi")
        assert dpi is not None and round(dpi[0]) == 300
        assert im.size[0] > 600
    text = html.unescape(svg.read_text())  # SVG escapes '<' in 'p < 0.001'
    assert text.lstrip().startswith("<?xml") and "</svg>" in text
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file
    return text


def test_roc_grid_six_panels_with_auc_and_ci_in_legend(scores, tmp_path):
    y, (s_model, s_comp) = scores
    panels = []
    # row-major: first row MRI alone for the three sequences, second row MRI + clinical
    for kind in ("MRI", "MRI + clinical"):
        for seq in ("T1WI", "T2WI", "CE-T1WI"):
            panels.append(ROCPanel(f"{seq}, {kind}", [
                ROCEntry("Proposed", roc_curve(y, s_model), roc_auc(y, s_model)),
                ROCEntry("Comparison", roc_curve(y, s_comp), roc_auc(y, s_comp))]))
    svg = _check_outputs(plot_roc_grid(panels, tmp_path / "figure3.png"), tmp_path, "figure3")
    legend = f"Proposed, AUC {roc_auc(y, s_model).format()}"
    assert svg.count(legend) == 6
    assert svg.count("CE-T1WI, MRI + clinical") == 1
    for letter in "ABCDEF":
        assert f">{letter}<" in svg


def test_calibration_and_decision_curve_figures(scores, tmp_path):
    y, (p, _) = scores
    cal = calibration(y, p, n_bins=5)
    svg = _check_outputs(plot_calibration({"MRI + clinical": cal}, tmp_path / "cal"), tmp_path, "cal")
    assert f"slope {cal.slope:.2f}" in svg and f"Brier {cal.brier:.3f}" in svg
    svg = _check_outputs(plot_decision_curve(decision_curve(y, p), tmp_path / "dca"), tmp_path, "dca")
    assert "Treat all" in svg and "Treat none" in svg


def test_empty_grid_raises(tmp_path):
    with pytest.raises(ValueError, match="at least one panel"):
        plot_roc_grid([], tmp_path / "x")
