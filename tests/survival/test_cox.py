"""Cox model and Harrell's C.

R reference, ``summary(coxph(Surv(time, status) ~ sex, data = lung))`` as printed:
coef -0.5310, exp(coef) 0.5880, se(coef) 0.1672, z -3.176, Pr(>|z|) 0.00149,
lower .95 0.4237, upper .95 0.816; Score (logrank) test = 10.33.
"""
from __future__ import annotations

import numpy as np
import pytest

from npc_msom.survival import cox_ph, cox_risk_group, harrell_c, logrank_test


@pytest.fixture(scope="module")
def lung():
    from lifelines.datasets import load_lung
    return load_lung()


def test_cox_sex_matches_r_coxph(lung):
    r = cox_ph(lung.time, lung.status, lung.sex, covariate="sex")
    assert round(r.coef, 4) == -0.5310
    assert round(r.hr, 4) == 0.5880
    assert round(r.se, 4) == 0.1672
    assert round(r.z, 3) == -3.176
    assert round(r.p_value, 5) == 0.00149
    assert round(r.hr_ci_low, 4) == 0.4237
    assert round(r.hr_ci_high, 3) == 0.816
    assert (r.n, r.n_events) == (228, 165)
    assert r.format() == "HR 0.59 (95% CI 0.42\u20130.82)"


def test_risk_group_hr_is_group_indicator_and_agrees_with_logrank(lung):
    group = np.where(lung.sex == 1, "high", "low")  # men die sooner
    r = cox_risk_group(lung.time, lung.status, group)
    assert r.hr == pytest.approx(1 / 0.588003736823464, rel=1e-6)
    assert (r.comparison, r.reference) == ("high", "low")
    # the Cox score test is the log-rank test; R prints both as 10.3
    assert round(logrank_test(lung.time, lung.status, group).chi2, 1) == 10.3


def test_per_rescales_hazard_ratio(lung):
    a = cox_ph(lung.time, lung.status, lung.age, covariate="age")
    b = cox_ph(lung.time, lung.status, lung.age, covariate="age", per=10)
    assert b.coef == pytest.approx(10 * a.coef, rel=1e-5)
    assert b.p_value == pytest.approx(a.p_value, rel=1e-5)


def test_harrell_c_hand_checkable():
    # times 1..4 all events; risk decreasing with time -> every pair concordant
    assert harrell_c([1, 2, 3, 4], [1, 1, 1, 1], [4, 3, 2, 1]) == 1.0
    assert harrell_c([1, 2, 3, 4], [1, 1, 1, 1], [1, 2, 3, 4]) == 0.0
    assert harrell_c([1, 2, 3, 4], [1, 1, 1, 1], [1, 1, 1, 1]) == 0.5
    # censored at 1: the pair (1, later) is not comparable; the remaining 3 pairs (2,3),(2,4),(3,4)
    # with risks 3, 2, 1 are concordant, pairs with the censored patient add nothing
    assert harrell_c([1, 2, 3, 4], [0, 1, 1, 1], [0, 3, 2, 1]) == 1.0


def test_cox_concordance_equals_harrell_c_of_linear_predictor(lung):
    r = cox_ph(lung.time, lung.status, lung.age, covariate="age")
    assert r.concordance == pytest.approx(harrell_c(lung.time, lung.status, np.sign(r.coef) * lung.age))


@pytest.mark.parametrize("call, match", [
    (lambda: cox_ph([1, 2, 3], [1, 0, 1], [0.1, np.nan, 0.3]), "x contains 1 NaN"),
    (lambda: cox_ph([1, -2, 3], [1, 0, 1], [0.1, 0.2, 0.3]), "negative times"),
    (lambda: cox_ph([1, 2, 3], [0, 0, 0], [0.1, 0.2, 0.3]), "no events"),
    (lambda: cox_ph([1, 2, 3], [1, 0, 1], [0.5, 0.5, 0.5]), "constant"),
    (lambda: cox_ph([1, 2, 3], [1, 0, 1], [0.1, 0.2]), "length mismatch"),
    (lambda: cox_risk_group([1, 2, 3], [1, 0, 1], ["high", "low", "mid"]), r"unknown group labels \['mid'\]"),
    (lambda: cox_risk_group([1, 2, 3], [1, 0, 1], ["high"] * 3), "only"),
    (lambda: harrell_c([1, 2, 3], [0, 0, 0], [1, 2, 3]), "no events"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
