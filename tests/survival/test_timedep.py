"""The time-to-event view against R on the public ``lung`` data (R 4.2.2, survival 3.5-3).

R, ``f <- coxph(Surv(time, status) ~ age + sex, data = lung)``:
summary(f): age coef 0.01704533 se 0.009223273 p 0.064591012, HR CI 0.9989686-1.0357467;
sex coef -0.51321852 se 0.167457962 p 0.002178445, HR CI 0.4310936-0.8310985.
cox.zph(f)$table (transform "km"): age 0.2092028 (p 0.6473929), sex 2.6076717 (p 0.1063478),
GLOBAL 2.7707854 on 2 df (p 0.2502255); cox.zph(coxph(... ~ age))$table: age 0.3461193.
concordance(Surv(time, status) ~ age, reverse = TRUE): 0.5502398 (Harrell);
with timewt = "n/G2" (Uno): 0.5492307, and with ymax = 700: 0.5502978.

The cumulative / dynamic AUC of ``age + 0.37 * sex`` at 180, 365 and 730 days, from an R
implementation of the marginal-weight estimator (timeROC's ``weighting = "marginal"``: cases
T <= t with an event weighted 1/G(T), controls T > t, G the censoring Kaplan-Meier from
``survfit``, tied markers 1/2): 0.56379476, 0.53849681, 0.59113186.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from npc_msom.survival.timedep import (cox_model, schoenfeld_test, score_survival, time_dependent_auc,
                                       uno_c)


@pytest.fixture(scope="module")
def lung():
    from lifelines.datasets import load_lung
    return load_lung()


def test_multivariable_cox_and_zph_match_r(lung):
    m = cox_model(lung.time, lung.status, lung[["age", "sex"]])
    age, sex = m.terms
    assert age.coef == pytest.approx(0.01704533, abs=2e-7)
    assert age.se == pytest.approx(0.009223273, rel=1e-5)
    assert age.p_value == pytest.approx(0.064591012, rel=1e-4)
    assert (age.hr_ci_low, age.hr_ci_high) == pytest.approx((0.9989686, 1.0357467), rel=1e-5)
    assert sex.coef == pytest.approx(-0.51321852, abs=2e-6)
    assert sex.p_value == pytest.approx(0.002178445, rel=1e-3)
    assert (sex.hr_ci_low, sex.hr_ci_high) == pytest.approx((0.4310936, 0.8310985), rel=1e-5)
    assert age.ph_chi2 == pytest.approx(0.2092028, rel=1e-4)
    assert sex.ph_chi2 == pytest.approx(2.6076717, rel=1e-4)
    assert age.ph_p == pytest.approx(0.6473929, rel=1e-4)
    assert m.ph_global_chi2 == pytest.approx(2.7707854, rel=1e-4)
    assert m.ph_global_df == 2 and m.ph_global_p == pytest.approx(0.2502255, rel=1e-4)
    assert (m.n, m.n_events) == (228, 165)


def test_univariable_zph_equals_global(lung):
    from lifelines import CoxPHFitter
    b = CoxPHFitter().fit(lung[["time", "status", "age"]], "time", "status").params_.to_numpy()
    per, glob = schoenfeld_test(lung.time, lung.status, lung[["age"]].to_numpy(), b)
    assert per[0] == pytest.approx(0.3461193, rel=1e-4) and glob == pytest.approx(per[0])


def test_hr_per_sd_is_hr_per_unit_to_the_sd(lung):
    sd = float(lung.age.std())
    unit = cox_model(lung.time, lung.status, lung[["age"]]).terms[0]
    scaled = cox_model(lung.time, lung.status, lung[["age"]], per={"age": sd}).terms[0]
    assert scaled.coef == pytest.approx(unit.coef * sd, rel=1e-6)
    assert scaled.p_value == pytest.approx(unit.p_value, rel=1e-6)


def test_uno_c_matches_r_concordance(lung):
    # scikit-survival and R differ by about 1e-4 here (their censoring weights at tied times)
    assert uno_c(lung.time, lung.status, lung.age) == pytest.approx(0.5492307, abs=3e-4)
    assert uno_c(lung.time, lung.status, lung.age, tau=700) == pytest.approx(0.5502978, abs=3e-4)


def test_time_dependent_auc_matches_the_r_estimator(lung):
    r = time_dependent_auc(lung.time, lung.status, lung.age + 0.37 * lung.sex, times=(180, 365, 730))
    assert [x.auc for x in r] == pytest.approx([0.56379476, 0.53849681, 0.59113186], abs=2e-6)
    assert r[0].n_cases == int(((lung.time <= 180) & (lung.status == 1)).sum())


def test_time_auc_past_follow_up_is_nan_with_a_note():
    t = np.array([1.0, 2, 3, 4, 5, 6])
    e = np.array([1, 0, 1, 1, 0, 1])
    r = time_dependent_auc(t, e, t[::-1], times=(3.5, 10))
    assert np.isfinite(r[0].auc) and np.isnan(r[1].auc) and "beyond 10" in r[1].note


def test_score_survival_on_a_planted_score():
    rng = np.random.default_rng(0)
    n = 300
    score = rng.normal(size=n)
    n_stage = rng.choice(["N0", "N1", "N2", "N3"], size=n)
    t_event = rng.exponential(30 * np.exp(-0.8 * score))
    t_cens = rng.uniform(10, 60, size=n)
    t, e = np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int)
    v = score_survival(t, e, score, n_stage=n_stage)
    d = v.to_dict()
    assert v.cox_score.terms[0].hr == pytest.approx(np.exp(0.8 * score.std(ddof=1)), rel=0.25)
    assert v.cox_score.terms[0].p_value < 1e-6
    assert [x.name for x in v.cox_score_n_stage.terms] == ["score", "n_stage"]
    assert v.cox_score_n_stage.terms[1].p_value > 0.01       # N stage carries nothing here
    assert v.cox_score.terms[0].ph_p > 0.001                 # proportional by construction
    assert 0.65 < v.harrell_c < 0.85 and 0.65 < v.uno_c < 0.85 and v.uno_tau == 36
    assert [a["time"] for a in d["time_auc"]] == [12, 24, 36] and all(a["auc"] > 0.6 for a in d["time_auc"])


def test_score_survival_without_events_says_so():
    v = score_survival([1.0, 2, 3], [0, 0, 0], [0.1, 0.2, 0.3])
    assert v.cox_score is None and "no events" in v.note and np.isnan(v.harrell_c)


def test_nonproportional_hazards_are_flagged():
    # the score helps early and hurts late: the zph test must see it
    rng = np.random.default_rng(1)
    n = 600
    x = rng.integers(0, 2, size=n).astype(float)
    early = rng.exponential(np.where(x == 1, 5.0, 40.0))
    t = np.where(early < 10, early, 10 + rng.exponential(np.where(x == 1, 80.0, 10.0), size=n))
    e = np.ones(n, dtype=int)
    m = cox_model(t, e, pd.DataFrame({"x": x}))
    assert m.terms[0].ph_p < 1e-4
