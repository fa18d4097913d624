"""Cut-offs and threshold metrics with Wilson CIs.

References: pROC's ``coords(r.s100b, "best")`` on aSAH (pROC tests/testthat/test-coords.R and
helper-coords-expected.R: threshold 0.205, specificity 0.805555555555556, sensitivity
0.634146341463415, accuracy 0.743362831858407, tn 58, tp 26, fn 15, fp 14, npv
0.794520547945205, ppv 0.65); Wilson intervals from Newcombe, Stat Med 1998;17:857-72, Table I
(method 3, score interval without continuity correction).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from npc_msom.evaluation import (metrics_at_cutoffs, median_cutoff, threshold_metrics, wilson_ci,
                                 youden_cutoff)




@pytest.mark.parametrize("k, n, lo, hi", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_1998(k, n, lo, hi):
    got = wilson_ci(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5)
    assert got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_hand_checkable():
    z2 = 1.959963984540054 ** 2
    assert wilson_ci(0, 10)[1] == pytest.approx(z2 / (10 + z2))  # upper bound at p = 0
    lo, hi = wilson_ci(5, 10)
    assert lo + hi == pytest.approx(1.0)  # symmetric about 1/2
    assert all(math.isnan(v) for v in wilson_ci(0, 0))
    with pytest.raises(ValueError, match="0 <= successes <= total"):
        wilson_ci(5, 3)


@pytest.mark.parametrize("n", [3, 6, 7, 10, 12, 13, 14, 24, 25])
def test_wilson_bounds_exact_at_zero_and_all(n):
    # these n left rounding error (lower bound 5.6e-17 at 0 of 7), so the proportion fell outside
    # its own interval and the calibration plot's error bars went negative
    assert wilson_ci(0, n)[0] == 0.0
    assert wilson_ci(n, n)[1] == 1.0


def test_youden_matches_pROC_coords_best(asah):
    c = youden_cutoff(asah.y, asah.s100b)
    assert c == pytest.approx(0.205)
    m = threshold_metrics(asah.y, asah.s100b, c, "youden_same_data")
    assert (m.tp, m.fp, m.tn, m.fn) == (26, 14, 58, 15)
    assert m.specificity.estimate == pytest.approx(0.805555555555556)
    assert m.recall.estimate == pytest.approx(0.634146341463415)
    assert m.sensitivity is m.recall
    assert m.accuracy.estimate == pytest.approx(0.743362831858407)
    assert m.npv.estimate == pytest.approx(0.794520547945205)
    assert m.precision.estimate == pytest.approx(0.65)
    assert m.optimistic is True and "optimistic" in m.label


def test_metrics_hand_checkable_and_wilson_attached():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.6]
    m = threshold_metrics(y, s, 0.5)
    # called positive: 0.9, 0.8, 0.7, 0.6 -> tp 3, fp 1; negative: 0.3 (case), 0.2, 0.1, 0.4
    assert (m.tp, m.fp, m.tn, m.fn) == (3, 1, 3, 1)
    for name in ("precision", "recall", "specificity", "accuracy", "npv"):
        p = getattr(m, name)
        assert (p.ci_low, p.ci_high) == pytest.approx(wilson_ci(p.numerator, p.denominator))
    assert m.accuracy.estimate == 0.75
    assert m.f1.estimate == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # F1's interval is the Jaccard index's Wilson interval mapped through 2J/(1+J)
    jlo, jhi = wilson_ci(3, 5)
    assert m.f1.ci_low == pytest.approx(2 * jlo / (1 + jlo))
    assert m.f1.ci_high == pytest.approx(2 * jhi / (1 + jhi))
    assert m.f1.ci_low < m.f1.estimate < m.f1.ci_high
    assert m.optimistic is False and m.cutoff_method == "given"


def test_score_equal_to_cutoff_is_positive():
    m = threshold_metrics([1, 0], [0.5, 0.4], 0.5)
    assert (m.tp, m.tn) == (1, 1)


def test_undefined_metric_is_nan_not_an_error():
    m = threshold_metrics([1, 0, 0], [0.1, 0.2, 0.3], 0.9)  # nobody called positive
    assert math.isnan(m.precision.estimate) and math.isnan(m.precision.ci_low)
    assert m.npv.estimate == pytest.approx(2 / 3)


def test_metrics_at_cutoffs_honest_default_and_flags():
    rng = np.random.default_rng(0)
    y_tr = rng.integers(0, 2, 140)
    s_tr = rng.normal(size=140) + y_tr
    y_va = rng.integers(0, 2, 46)
    s_va = rng.normal(size=46) + y_va
    out = metrics_at_cutoffs(y_va, s_va, y_train=y_tr, score_train=s_tr)
    assert list(out) == ["median", "youden_train", "youden_same_data"]
    assert out["median"].cutoff == pytest.approx(np.median(s_va)) == median_cutoff(s_va)
    assert out["youden_train"].cutoff == pytest.approx(youden_cutoff(y_tr, s_tr))
    assert out["youden_same_data"].cutoff == pytest.approx(youden_cutoff(y_va, s_va))
    assert [m.optimistic for m in out.values()] == [False, False, True]
    # the same-data cut-off maximises sens + spec on these data, so it is never beaten there
    j = {k: m.recall.estimate + m.specificity.estimate for k, m in out.items()}
    assert j["youden_same_data"] >= max(j["median"], j["youden_train"])
    row = out["youden_same_data"].as_row()
    assert row["optimistic"] is True and "optimistic" in row["label"]
    assert out["median"].to_dict()["recall"]["ci_low"] == out["median"].recall.ci_low
    with pytest.raises(ValueError, match="both y_train and score_train"):
        metrics_at_cutoffs(y_va, s_va, y_train=y_tr)


def test_youden_ties_take_lowest_cutoff():
    # controls 1, 3; cases 2, 4: cut-off 1.5 (sens 1, spec 0.5) and 3.5 (sens 0.5, spec 1) tie
    assert youden_cutoff([0, 1, 0, 1], [1, 2, 3, 4]) == 1.5


@pytest.mark.parametrize("kwargs, match", [
    (dict(y_true=[0, 1], y_score=[0.1, np.nan], cutoff=0.5), "y_score contains 1 NaN values"),
    (dict(y_true=[0, 1, 1], y_score=[0.1, 0.2], cutoff=0.5), "length mismatch"),
    (dict(y_true=[0, 1], y_score=[0.1, 0.2], cutoff=np.nan), "cutoff must be a finite number"),
    (dict(y_true=[0, 1], y_score=[0.1, 0.2], cutoff=0.5, cutoff_method="best"), "cutoff_method must be"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        threshold_metrics(**kwargs)


def test_youden_needs_both_classes():
    with pytest.raises(ValueError, match="single class"):
        youden_cutoff([1, 1, 1], [0.1, 0.2, 0.3])
