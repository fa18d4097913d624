"""Degenerate survival data (issue 10, items 8-10): R's rules, or a result that says what is wrong."""
import math

import numpy as np
import pytest
from scipy import stats

from npc_msom.survival import cox_ph, cox_risk_group, harrell_c, logrank_test


@pytest.fixture(scope="module")
def lung():
    from lifelines.datasets import load_lung
    return load_lung()


def test_logrank_drops_a_group_with_no_expected_events_as_r_survdiff(lung):
    t = lung.time.to_numpy(float)
    e = lung.status.to_numpy(int)
    g = lung.sex.astype(str).to_numpy(object)
    # a third group: one patient censored before the first event (nobody of it is ever at risk)
    t3 = np.append(t, t.min() / 2)
    e3 = np.append(e, 0)
    g3 = np.append(g, "3")
    two = logrank_test(t, e, g)
    three = logrank_test(t3, e3, g3)
    assert three.expected[2] == 0.0 and three.observed[2] == 0.0
    # survdiff: df = sum(exp > 0) - 1 = 1, and the test is the two-group one (was: df 2, larger p)
    assert three.df == 1
    assert three.chi2 == pytest.approx(two.chi2, rel=1e-10)
    assert three.p_value == pytest.approx(two.p_value, rel=1e-10)
    assert three.p_value == pytest.approx(stats.chi2.sf(three.chi2, 1))
    assert "3" in three.note and "left out" in three.note
    # and the lung reference values (R survdiff: Chisq = 10.3 on 1 df, p = 0.001) still hold
    assert round(two.chi2, 1) == 10.3 and two.df == 1 and two.note == ""


def test_logrank_three_groups_match_lifelines_when_every_group_has_events(lung):
    from lifelines.statistics import multivariate_logrank_test
    g = lung["ph.ecog"].fillna(1).astype(int).clip(upper=2).astype(str)
    r = logrank_test(lung.time, lung.status, g)
    ref = multivariate_logrank_test(lung.time, g, lung.status)
    assert r.df == 2 and r.chi2 == pytest.approx(ref.test_statistic, rel=1e-8)
    assert r.p_value == pytest.approx(ref.p_value, rel=1e-6)


def test_logrank_without_events_is_no_test():
    r = logrank_test([1, 2, 3, 4], [0, 0, 0, 0], ["a", "a", "b", "b"])
    assert r.df == 0 and math.isnan(r.p_value) and math.isnan(r.chi2)     # was: p = 1.0
    assert not r.tested and r.format_p() == "no test (no events)"
    assert r.to_dict()["p_value"] is None


def test_harrell_c_without_comparable_pairs_says_so():
    # the only event is the longest time: no pair has a shorter time that is an event
    with pytest.raises(ValueError, match="no comparable pairs"):        # was: ZeroDivisionError
        harrell_c([1, 2, 3, 10], [0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4])


def test_cox_complete_separation_is_flagged():
    # every event is in the high group: the likelihood has no maximum, the HR runs to infinity
    t = [2, 3, 5, 7, 8, 11, 12, 15, 18, 20]
    e = [1, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    g = ["high", "high", "high", "high", "low", "low", "high", "low", "low", "low"]
    r = cox_risk_group(t, e, g)
    assert "separation" in r.warning and "low" in r.warning
    assert "separation" in r.format()
    good = cox_risk_group([2, 3, 5, 7, 8, 11, 12, 15, 18, 20], [1, 1, 0, 1, 1, 0, 1, 1, 0, 0],
                          ["high", "low", "high", "high", "low", "low", "high", "low", "high", "low"])
    assert good.warning == "" and math.isfinite(good.hr_ci_high)


def test_cox_separation_on_a_continuous_score_is_flagged():
    t = np.arange(1.0, 13.0)
    e = np.array([1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 0])
    x = -t      # the earlier the event, the higher the score, with no exception
    r = cox_ph(t, e, x)
    assert "separation" in r.warning



def test_cox_group_never_at_risk_at_an_event_is_not_identifiable():
    # the low group is censored before the first event: x is constant in every risk set
    r = cox_risk_group([1, 2, 5, 6, 7, 9], [0, 0, 1, 0, 1, 1], ["low", "low", "high", "high", "high", "high"])
    assert r.warning.startswith("not identifiable") and "'low' has no events" in r.warning
    assert r.format().endswith("[not identifiable]")
