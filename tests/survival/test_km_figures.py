"""Figure 4: KM panels with log-rank p, 3-year rates and a numbers-at-risk table."""
from __future__ import annotations

import html

import numpy as np
import pytest
from PIL import Image

from npc_msom.survival import kaplan_meier, logrank_test
from npc_msom.survival.figures import KMPanel, plot_km_grid


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(1)
    n = 120
    g = np.where(rng.random(n) < 0.45, "high", "low")
    censor = rng.uniform(36, 72, n)
    t_met = np.where(g == "high", rng.exponential(20, n), rng.exponential(300, n))
    t_os = np.where(g == "high", rng.exponential(150, n), rng.exponential(600, n))
    return (g, np.minimum(t_met, censor), (t_met <= censor).astype(int),
            np.minimum(t_os, censor), (t_os <= censor).astype(int))


def test_figure4_contents(cohort, tmp_path):
    g, t1, e1, t2, e2 = cohort
    labels = {"high": "High risk", "low": "Low risk"}
    km1, lr1 = kaplan_meier(t1, e1, g, groups=["high", "low"]), logrank_test(t1, e1, g)
    km2, lr2 = kaplan_meier(t2, e2, g, groups=["high", "low"]), logrank_test(t2, e2, g)
    png, svg = plot_km_grid([KMPanel("DMFS", km1, lr1, ylabel="DMFS probability", labels=labels),
                             KMPanel("OS", km2, lr2, ylabel="OS probability", labels=labels)],
                            tmp_path / "figure4")
    with Image.open(png) as im:
        assert round(im.info["dpi"][0]) == 300
    text = html.unescape(svg.read_text())  # SVG escapes '<' in 'p < 0.001'
    assert f"Log-rank \u03c7\u00b2 = {lr1.chi2:.2f}, {lr1.format_p()}" in text
    rate = km1.curve("high").survival_at(36).format()
    assert f"High risk (n={km1.curve('high').n}), 3-year {rate}" in text
    assert text.count("Number at risk") == 2
    # the at-risk numbers of the first panel at 0, 12, 24, 36 months are in the figure
    for n in km1.curve("low").at_risk([0, 12, 24, 36]):
        assert f">{n}<" in text


def test_empty_panels_raise(tmp_path):
    with pytest.raises(ValueError, match="at least one panel"):
        plot_km_grid([], tmp_path / "x")
