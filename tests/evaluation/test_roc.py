"""ROC/AUC, DeLong CI and DeLong test, checked against R's pROC on its aSAH example data.

Reference values: /work/shared/reference/pROC_aSAH/README.md, and pROC's own test suite
(github.com/xrobin/pROC, tests/testthat/test-ci.auc.R and test-roc.test.R), which pins
``ci.auc`` and ``roc.test`` results on aSAH to 15 significant digits.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from npc_msom.evaluation import (bootstrap_aucs, delong_covariance, delong_test, roc_auc,
                                 roc_curve)




# ----------------------------------------------------------------- against pROC

@pytest.mark.parametrize("marker, auc", [("s100b", 0.7314), ("ndka", 0.6120), ("wfns", 0.8237)])
def test_auc_matches_pROC_documented_values(asah, marker, auc):
    assert roc_auc(asah.y, asah[marker]).auc == pytest.approx(auc, abs=5e-5)


def test_delong_ci_ndka_matches_pROC(asah):
    r = roc_auc(asah.y, asah.ndka, ci="delong")
    # pROC test-ci.auc.R: c(0.501244999271703, 0.611957994579946, 0.722670989888189)
    assert r.ci_low == pytest.approx(0.501244999271703, abs=1e-12)
    assert r.auc == pytest.approx(0.611957994579946, abs=1e-12)
    assert r.ci_high == pytest.approx(0.722670989888189, abs=1e-12)
    assert (r.n_pos, r.n_neg, r.method, r.level) == (41, 72, "delong", 0.95)


def test_delong_ci_on_subset_matches_pROC(asah):
    # pROC test-ci.auc.R: ci.auc(outcome ~ ndka, subset = gender == "Female")
    f = asah[asah.gender == "Female"]
    r = roc_auc(f.y, f.ndka)
    assert (r.ci_low, r.auc, r.ci_high) == pytest.approx((0.5261398281, 0.6671428571, 0.8081458862), abs=1e-9)


@pytest.mark.parametrize("a, b, z, p, lo, hi", [
    # README + pROC test-roc.test.R, t3: roc.test(r.ndka, r.s100b)
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
    # t1: roc.test(r.wfns, r.s100b)
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    # t2: roc.test(r.wfns, r.ndka)
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
])
def test_delong_test_matches_pROC_roc_test(asah, a, b, z, p, lo, hi):
    r = delong_test(asah.y, asah[a], asah[b])
    assert r.z == pytest.approx(z, abs=1e-10)
    assert r.p_value == pytest.approx(p, abs=1e-10)
    assert r.ci_low == pytest.approx(lo, abs=1e-10)
    assert r.ci_high == pytest.approx(hi, abs=1e-10)
    # reversing the curves flips z and keeps p (pROC test-roc.test.R)
    rev = delong_test(asah.y, asah[b], asah[a])
    assert rev.z == pytest.approx(-z, abs=1e-10)
    assert rev.p_value == pytest.approx(p, abs=1e-10)


def test_delong_test_identical_curves_gives_z0_p1(asah):
    r = delong_test(asah.y, asah.wfns, asah.wfns)
    assert (r.z, r.p_value, r.difference) == (0.0, 1.0, 0.0)


def test_direction_is_fixed_not_chosen_from_data(asah):
    # pROC with direction "<" on -ndka gives 1 - AUC; we never flip to make it look better
    assert roc_auc(asah.y, -asah.ndka).auc == pytest.approx(1 - 0.611957994579946, abs=1e-12)


# ----------------------------------------------------------------- hand-checkable

def test_perfect_classifier_and_ties():
    y = np.array([0, 0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.3, 0.8, 0.9]).auc == 1.0
    assert roc_auc(y, [0.5] * 5).auc == 0.5  # every case-control pair tied: 1/2 each
    assert roc_auc(y, [0.9, 0.8, 0.7, 0.2, 0.1]).auc == 0.0
    # one tie out of 6 pairs: case 0.3 vs control 0.3 -> (5 + 0.5) / 6
    assert roc_auc([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.3, 0.9]).auc == pytest.approx(5.5 / 6)


def test_perfect_classifier_delong_ci_is_degenerate_and_clipped():
    r = roc_auc([0, 0, 0, 1, 1, 1], [1, 2, 3, 4, 5, 6])
    assert (r.auc, r.ci_low, r.ci_high) == (1.0, 1.0, 1.0)


def test_delong_ci_undefined_with_a_single_case():
    import math
    r = roc_auc([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
    assert r.auc == 1.0 and math.isnan(r.ci_low) and math.isnan(r.ci_high)
    with pytest.raises(ValueError, match="at least 2 cases and 2 controls"):
        delong_test([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4])


def test_delong_matches_direct_mann_whitney_placements():
    rng = np.random.default_rng(7)
    y = np.r_[np.ones(30, int), np.zeros(45, int)]
    s = np.round(rng.normal(size=75) + 0.8 * y, 1)  # rounding creates ties
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)  # DeLong 1988 definition
    aucs, cov = delong_covariance(y, s[None, :])
    assert aucs[0] == pytest.approx(psi.mean(), abs=1e-14)
    assert cov[0, 0] == pytest.approx(var, rel=1e-12)


def test_roc_curve_follows_pROC_thresholds():
    c = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert np.allclose(c.thresholds, [np.inf, 0.6, 0.375, 0.225, -np.inf])
    assert np.allclose(c.fpr, [0, 0, 0.5, 0.5, 1])
    assert np.allclose(c.tpr, [0, 0.5, 0.5, 1, 1])
    assert np.trapezoid(c.tpr, c.fpr) == pytest.approx(roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]).auc)


# ----------------------------------------------------------------- bootstrap

def _auc_direct(pos, neg):
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean()


def test_bootstrap_resample_aucs_equal_brute_force():
    """Each vectorised resample AUC equals the AUC of the same resample computed directly."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(12, int), np.zeros(17, int)]
    s = np.round(rng.normal(size=29) + y, 1)  # ties on purpose
    pos, neg = s[y == 1], s[y == 0]
    boots = bootstrap_aucs(y, s, n_boot=50, seed=11)
    # one block: all case index rows are drawn, then all control rows
    rng2 = np.random.default_rng(11)
    ip = rng2.integers(0, 12, size=(50, 12))
    ineg = rng2.integers(0, 17, size=(50, 17))
    expected = [_auc_direct(pos[ip[b]], neg[ineg[b]]) for b in range(50)]
    assert np.allclose(boots, expected, atol=1e-12)


def test_bootstrap_in_blocks_equals_brute_force():
    """With one resample per block (tiny memory budget) the draws alternate cases/controls."""
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(9, int), np.zeros(14, int)]
    s = np.round(rng.normal(size=23) + y, 1)
    pos, neg = s[y == 1], s[y == 0]
    boots = bootstrap_aucs(y, s, n_boot=20, seed=5, max_block_elements=1)
    rng2 = np.random.default_rng(5)
    expected = []
    for _ in range(20):
        ip = rng2.integers(0, 9, size=(1, 9))[0]
        ineg = rng2.integers(0, 14, size=(1, 14))[0]
        expected.append(_auc_direct(pos[ip], neg[ineg]))
    assert np.allclose(boots, expected, atol=1e-12)


def test_bootstrap_ci_is_seeded_stratified_and_close_to_delong(asah):
    a = roc_auc(asah.y, asah.s100b, ci="bootstrap", n_boot=2000, seed=1)
    b = roc_auc(asah.y, asah.s100b, ci="bootstrap", n_boot=2000, seed=1)
    c = roc_auc(asah.y, asah.s100b, ci="bootstrap", n_boot=2000, seed=2)
    d = roc_auc(asah.y, asah.s100b, ci="delong")
    assert a == b and a != c
    assert (a.method, a.n_boot, a.seed) == ("bootstrap", 2000, 1)
    assert a.auc == d.auc
    # stratified percentile bootstrap and DeLong agree to about 0.01 on 113 patients
    assert a.ci_low == pytest.approx(d.ci_low, abs=0.015)
    assert a.ci_high == pytest.approx(d.ci_high, abs=0.015)


# ----------------------------------------------------------------- bad input

@pytest.mark.parametrize("y, s, match", [
    ([0, 1, 0, 1], [0.1, np.nan, 0.3, np.nan], r"y_score contains 2 NaN values \(positions 1, 3\)"),
    ([1, 1, 1], [0.1, 0.2, 0.3], "single class"),
    ([0, 0], [0.1, 0.2], "single class"),
    ([0, 1, 1], [0.1, 0.2], "length mismatch: y_true has 3, y_score has 2"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "only 0 and 1"),
    ([0, 1], [0.1, np.inf], "infinite"),
    (["Good", "Poor"], [0.1, 0.2], "only 0 and 1"),
])
def test_bad_input_raises_value_error_naming_the_problem(y, s, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(y, s)


def test_bad_arguments():
    with pytest.raises(ValueError, match="ci must be one of"):
        roc_auc([0, 1], [0.1, 0.2], ci="wald")
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        roc_auc([0, 1], [0.1, 0.2], level=95)
    with pytest.raises(ValueError, match="length mismatch"):
        delong_test([0, 1, 0], [0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="score_b contains 1 NaN"):
        delong_test([0, 1, 0], [0.1, 0.2, 0.3], [0.1, np.nan, 0.3])


def test_to_dict_is_json_ready(asah):
    import json
    d = roc_auc(asah.y, asah.ndka).to_dict()
    assert json.loads(json.dumps(d))["ci_low"] == pytest.approx(0.501244999271703)
    assert roc_auc(asah.y, asah.ndka).format() == "0.612 (95% CI 0.501\u20130.723)"
