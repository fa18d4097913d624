"""Brier score, calibration intercept/slope, binned curve and decision curves."""
from __future__ import annotations

import math

import numpy as np
import pytest

from npc_msom.evaluation import calibration, decision_curve


@pytest.fixture(scope="module")
def logistic_data():
    rng = np.random.default_rng(2024)
    lp = rng.normal(-0.4, 1.3, 4000)
    p = 1 / (1 + np.exp(-lp))
    y = (rng.random(lp.size) < p).astype(int)
    return lp, p, y


def test_brier_hand_checkable():
    r = calibration([1, 0, 1, 0], [0.8, 0.3, 0.6, 0.1], n_bins=2)
    assert r.brier == pytest.approx((0.04 + 0.09 + 0.16 + 0.01) / 4)
    assert r.brier_null == pytest.approx(0.25)


def test_intercept_only_has_closed_form():
    # constant predictions c: intercept = logit(prevalence) - logit(c); slope not identifiable
    y = np.array([1] * 30 + [0] * 70)
    r = calibration(y, np.full(100, 0.5))
    assert r.intercept == pytest.approx(math.log(0.3 / 0.7), abs=1e-8)
    assert math.isnan(r.slope)


def test_slope_and_intercept_match_unpenalised_logistic_regression(logistic_data):
    from sklearn.linear_model import LogisticRegression

    lp, _, y = logistic_data
    p_over = 1 / (1 + np.exp(-2 * lp))  # too extreme: slope about 0.5
    r = calibration(y, p_over)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=1000).fit(np.log(p_over / (1 - p_over))[:, None], y)
    assert r.slope == pytest.approx(ref.coef_[0, 0], abs=1e-5)
    assert 0.45 < r.slope < 0.55
    assert r.slope_ci_low < r.slope < r.slope_ci_high


def test_well_calibrated_model_is_near_ideal(logistic_data):
    _, p, y = logistic_data
    r = calibration(y, p, n_bins=10)
    assert r.slope_ci_low < 1 < r.slope_ci_high
    assert r.intercept_ci_low < 0 < r.intercept_ci_high
    assert r.brier < r.brier_null
    assert len(r.bins) == 10 and sum(b.n for b in r.bins) == y.size
    for b in r.bins:
        assert b.ci_low <= b.observed <= b.ci_high
        assert b.lower <= b.mean_predicted <= b.upper
    # risks overestimated by a constant on the logit scale -> negative intercept
    shifted = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + 1.0)))
    assert calibration(y, shifted).intercept == pytest.approx(-1.0, abs=0.1)


def test_uniform_bins_skip_empty_and_include_p_equal_1():
    r = calibration([0, 1, 1, 0], [0.05, 1.0, 0.95, 0.12], n_bins=10, strategy="uniform")
    assert [b.n for b in r.bins] == [1, 1, 2]
    assert r.bins[-1].upper == 1.0


def test_decision_curve_hand_checkable():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    dc = decision_curve(y, p, thresholds=[0.25, 0.5])
    # pt=0.25: treated 0.9, 0.4, 0.6 -> tp 2, fp 1: 2/5 - 1/5 * (1/3)
    # pt=0.5: treated 0.9, 0.6 -> tp 1, fp 1: 1/5 - 1/5 * 1
    assert dc.net_benefit == pytest.approx([2 / 5 - 1 / 15, 0.0])
    assert dc.treat_all == pytest.approx([0.4 - 0.6 / 3, 0.4 - 0.6])
    assert np.all(dc.treat_none == 0)
    assert dc.prevalence == 0.4


def test_decision_curve_default_grid_and_perfect_model():
    y = np.array([1, 0, 1, 0, 0])
    dc = decision_curve(y, y.astype(float))
    assert dc.thresholds[0] == 0.01 and dc.thresholds[-1] == 0.99 and dc.thresholds.size == 99
    assert np.allclose(dc.net_benefit, 0.4)  # a perfect model treats exactly the cases
    assert len(dc.to_dict()["net_benefit"]) == 99


@pytest.mark.parametrize("call, match", [
    (lambda: calibration([0, 1], [0.2, 1.2]), "probabilities in"),
    (lambda: calibration([0, 1], [0.2, np.nan]), "y_prob contains 1 NaN"),
    (lambda: calibration([1, 1], [0.2, 0.3]), "single class"),
    (lambda: calibration([0, 1, 1], [0.2, 0.3]), "length mismatch"),
    (lambda: calibration([0, 1], [0.2, 0.3], strategy="kmeans"), "strategy"),
    (lambda: decision_curve([0, 1], [0.2, 0.3], thresholds=[0.0, 0.5]), "strictly between 0 and 1"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_recalibration_removes_the_drift_it_was_fitted_on():
    from npc_msom.evaluation.calibration import recalibrate
    rng = np.random.default_rng(3)
    lp = rng.normal(size=2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-lp))).astype(int)
    drifted = 1 / (1 + np.exp(-(2.0 + 0.5 * lp)))           # too high, too flat
    before = calibration(y, drifted)
    assert before.intercept < -1 and before.slope > 1.5
    p1, c1 = recalibrate(y, drifted, "intercept")
    assert c1["slope"] == 1.0 and calibration(y, p1).intercept == pytest.approx(0, abs=1e-6)
    p2, c2 = recalibrate(y, drifted, "intercept+slope")
    after = calibration(y, p2)
    assert after.intercept == pytest.approx(0, abs=1e-6) and after.slope == pytest.approx(1, abs=1e-6)
    assert c2["slope"] == pytest.approx(before.slope, rel=1e-6)
    # monotone: the ranking (and so the AUC) does not change
    assert (np.argsort(p2, kind="stable") == np.argsort(drifted, kind="stable")).all()
    with pytest.raises(ValueError, match="method"):
        recalibrate(y, drifted, "platt")
