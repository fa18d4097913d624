"""Kaplan–Meier and log-rank against R's survival package on the lung data (shipped with lifelines).

lifelines' ``load_lung`` is R's ``survival::lung`` with status recoded 1/2 -> 0/1 (165 deaths).
R values, as R prints them:

* ``survdiff(Surv(time, status) ~ sex, data = lung)``: N 138/90, Observed 112/53,
  Expected 91.6/73.4, (O-E)^2/E 4.55/5.68, (O-E)^2/V 10.3/10.3, Chisq = 10.3 on 1 df, p = 0.001.
* ``survfit(Surv(time, status) ~ 1, data = lung)``: n 228, events 165, median 310,
  0.95LCL 285, 0.95UCL 363.
* ``survfit(Surv(time, status) ~ sex, data = lung)``: sex=1 n 138, events 112, median 270
  (212, 310); sex=2 n 90, events 53, median 426 (348, 550).
* ``summary(survfit(Surv(time, status) ~ sex, data = lung))``, sex=1 rows (time, n.risk,
  n.event, survival, std.err, lower 95% CI, upper 95% CI), as printed in a public R tutorial
  (drkim.quarto.pub/non_semi_parametric_survival_analysis).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from npc_msom.survival import kaplan_meier, logrank_test


@pytest.fixture(scope="module")
def lung():
    from lifelines.datasets import load_lung
    return load_lung()


def test_lung_data_is_r_lung(lung):
    assert len(lung) == 228 and int(lung.status.sum()) == 165
    assert lung.sex.value_counts().to_dict() == {1: 138, 2: 90}


def test_logrank_matches_r_survdiff(lung):
    r = logrank_test(lung.time, lung.status, lung.sex)
    assert r.groups == ("1", "2") and r.n == (138, 90) and r.df == 1
    assert r.observed == (112.0, 53.0)
    assert [round(e, 1) for e in r.expected] == [91.6, 73.4]
    oe2_e = [(o - e) ** 2 / e for o, e in zip(r.observed, r.expected)]
    assert [round(v, 2) for v in oe2_e] == [4.55, 5.68]
    assert round(r.chi2, 1) == 10.3
    assert round(r.p_value, 3) == 0.001
    assert r.format_p() == "p = 0.001"


def test_logrank_expected_equals_observed_in_total_and_three_groups(lung):
    r = logrank_test(lung.time, lung.status, lung["ph.ecog"].fillna(-1).astype(int).astype(str))
    assert sum(r.expected) == pytest.approx(sum(r.observed))
    assert r.df == len(r.groups) - 1


def test_survfit_median_and_r_log_ci(lung):
    km = kaplan_meier(lung.time, lung.status)
    c = km.curves[0]
    assert (c.n, c.n_events) == (228, 165)
    assert (c.median, c.median_ci_low, c.median_ci_high) == (310.0, 285.0, 363.0)


def test_survfit_by_sex_medians(lung):
    km = kaplan_meier(lung.time, lung.status, lung.sex, groups=[1, 2])
    got = [(c.group, c.n, c.n_events, c.median, c.median_ci_low, c.median_ci_high) for c in km.curves]
    assert got == [("1", 138, 112, 270.0, 212.0, 310.0), ("2", 90, 53, 426.0, 348.0, 550.0)]


@pytest.mark.parametrize("time, n_risk, n_event, surv, se, lo, hi", [
    (11, 138, 3, 0.9783, 0.0124, 0.9542, 1.000),
    (12, 135, 1, 0.9710, 0.0143, 0.9434, 0.999),
    (13, 134, 2, 0.9565, 0.0174, 0.9231, 0.991),
    (53, 128, 2, 0.9130, 0.0240, 0.8672, 0.961),
    (105, 114, 1, 0.8188, 0.0328, 0.7570, 0.886),
    (163, 100, 3, 0.7029, 0.0389, 0.6306, 0.783),
    (180, 89, 1, 0.6445, 0.0408, 0.5693, 0.730),
])
def test_summary_survfit_rows_sex1(lung, time, n_risk, n_event, surv, se, lo, hi):
    c = kaplan_meier(lung.time, lung.status, lung.sex).curve(1)
    i = int(np.flatnonzero(c.time == time)[0])
    assert (int(c.n_at_risk[i]), int(c.n_event[i])) == (n_risk, n_event)
    assert round(float(c.survival[i]), 4) == surv
    assert round(float(c.std_err[i]), 4) == se
    assert round(float(c.ci_low[i]), 4) == lo
    assert round(float(c.ci_high[i]), 3) == hi


def test_log_log_ci_equals_lifelines_exponential_greenwood(lung):
    from lifelines import KaplanMeierFitter

    c = kaplan_meier(lung.time, lung.status, ci_type="log-log").curves[0]
    ref = KaplanMeierFitter().fit(lung.time, lung.status).confidence_interval_.loc[c.time].to_numpy()
    ok = ~np.isnan(c.ci_low)
    assert np.allclose(c.ci_low[ok], ref[ok, 0], atol=1e-10)
    assert np.allclose(c.ci_high[ok], ref[ok, 1], atol=1e-10)
    # the log-log median interval differs from R's default, which is why "log" is our default
    assert (c.median_ci_low, c.median_ci_high) != (285.0, 363.0)


def test_rate_at_time_and_numbers_at_risk(lung):
    c = kaplan_meier(lung.time, lung.status).curves[0]
    r = c.survival_at(365.25)
    i = int(np.searchsorted(c.time, 365.25, side="right")) - 1  # last time <= 365.25
    assert (r.survival, r.ci_low, r.ci_high) == (c.survival[i], c.ci_low[i], c.ci_high[i])
    assert r.n_at_risk == int((lung.time >= 365.25).sum())
    assert list(c.at_risk([0, 365.25, 5000])) == [228, int((lung.time >= 365.25).sum()), 0]
    assert c.survival_at(0).survival == 1.0
    assert math.isnan(c.survival_at(5000).survival)  # beyond follow-up: not estimable
    assert "95% CI" in r.format() and r.format().endswith("%)")


def test_hand_checkable_km_and_flat_median():
    # events at 1 and 2 of 4 patients: S = 3/4, 1/2 (flat at exactly 0.5 until the censor at 4)
    km = kaplan_meier([1, 2, 3, 4], [1, 1, 0, 0])
    c = km.curves[0]
    assert np.allclose(c.survival, [0.75, 0.5, 0.5, 0.5])
    # R: the curve ends on 0.5 -> median is the midpoint of the flat (2 + last time 4) / 2
    assert c.median == 3.0
    km2 = kaplan_meier([1, 2, 3, 4], [1, 1, 1, 0])
    assert km2.curves[0].median == 2.5  # flat 0.5 between 2 and 3 -> midpoint


def test_groups_order_and_unknown_labels():
    t, e = [5, 6, 7, 8], [1, 0, 1, 1]
    km = kaplan_meier(t, e, ["low", "high", "low", "high"], groups=["high", "low"])
    assert km.groups == ("high", "low")
    with pytest.raises(ValueError, match=r"unknown group labels \['medium'\]"):
        kaplan_meier(t, e, ["low", "high", "medium", "high"], groups=["high", "low"])
    with pytest.raises(ValueError, match=r"unknown group labels"):
        logrank_test(t, e, ["low", "high", "medium", "high"], groups=["high", "low"])
    with pytest.raises(ValueError, match="declared but have no patient"):
        kaplan_meier(t, e, ["low"] * 4, groups=["high", "low"])
    with pytest.raises(ValueError, match="at least two groups"):
        logrank_test(t, e, ["low"] * 4)
    with pytest.raises(ValueError, match="no curve for group"):
        km.curve("medium")


@pytest.mark.parametrize("t, e, match", [
    ([1, -2, 3], [1, 0, 1], r"time contains 1 negative times \(positions 1\)"),
    ([1, np.nan, 3], [1, 0, 1], "time contains 1 NaN values"),
    ([1, 2, 3], [1, 0, 2], "event must contain only 0 and 1"),
    ([1, 2, 3], [1, 0], "length mismatch: time has 3, event has 2"),
])
def test_bad_survival_input(t, e, match):
    with pytest.raises(ValueError, match=match):
        kaplan_meier(t, e)


def test_bad_ci_type():
    with pytest.raises(ValueError, match="ci_type"):
        kaplan_meier([1, 2], [1, 0], ci_type="plain")


def test_to_dict_is_json_ready(lung):
    import json
    d = kaplan_meier(lung.time, lung.status, lung.sex).to_dict()
    s = json.dumps(d)  # NaN/inf became None
    assert json.loads(s)["curves"][0]["median"] == 270.0
    assert json.loads(json.dumps(logrank_test(lung.time, lung.status, lung.sex).to_dict()))["df"] == 1
