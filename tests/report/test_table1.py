"""Table 1: layout, statistics and their agreement with R.

R references (printed output):
* ``chisq.test(matrix(c(60, 54, 46, 41, 40, 44, 53, 57), ncol = 4, byrow = TRUE))``:
  X-squared = 8.0061, df = 3, p-value = 0.04589 (a public R how-to, Bentley University).
* ``wilcox.test(x, y)`` with x = c(1,5,9,24,56,21,3,7,21,4), y = c(12,15,5,9,9,14,56,22,3,7,32,5):
  W = 51.5, p-value = 0.5966; with y = c(1233,4356,987,39999,1111,200000): W = 0,
  p-value = 0.001364 (endmemo.com/r/wilcoxon.php; both with ties, so the normal approximation
  with continuity correction).
Hand-checkable: Fisher's tea-tasting table [[3,1],[1,3]], two-sided p = 2 * (16 + 1) / 70;
Yates' chi-square of [[10,20],[20,10]] = 4 * (5 - 0.5)^2 / 15 = 5.4.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from npc_msom.report.table1 import (CHI2, CHI2_YATES, FISHER, FISHER_MC, MANN_WHITNEY, Comparison,
                                    Variable, categorical_test, continuous_test, fisher_exact_2xk,
                                    make_table1, render_table1_html, write_table1_csv)


# ----------------------------------------------------------------- tests against R / by hand

def test_fisher_tea_tasting_by_hand():
    r = categorical_test([[3, 1], [1, 3]])  # expected counts 2 < 5 -> Fisher
    assert r.test == FISHER
    assert r.p_value == pytest.approx(2 * (16 + 1) / 70)


def test_chi_square_2x2_uses_yates_like_r():
    r = categorical_test([[10, 20], [20, 10]])
    assert r.test == CHI2_YATES
    assert r.statistic == pytest.approx(4 * 4.5 ** 2 / 15)
    assert r.p_value == pytest.approx(stats.chi2.sf(5.4, 1))


def test_chi_square_2x4_matches_r_chisq_test():
    r = categorical_test([[60, 54, 46, 41], [40, 44, 53, 57]])
    assert r.test == CHI2  # no Yates beyond 2x2, as R
    assert round(r.statistic, 4) == 8.0061
    assert round(r.p_value, 5) == 0.04589


@pytest.mark.parametrize("y, w, p", [
    ([12, 15, 5, 9, 9, 14, 56, 22, 3, 7, 32, 5], 51.5, 0.5966),
    ([1233, 4356, 987, 39999, 1111, 200000], 0.0, 0.001364),
])
def test_mann_whitney_matches_r_wilcox_test(y, w, p):
    r = continuous_test([1, 5, 9, 24, 56, 21, 3, 7, 21, 4], y)
    assert r.test == MANN_WHITNEY and r.statistic == w
    assert float(f"{r.p_value:.4g}") == p


def test_mann_whitney_exact_without_ties_by_hand():
    # complete separation of 3 vs 3: 2 of the C(6,3) = 20 orderings are as extreme
    assert continuous_test([1, 2, 3], [4, 5, 6]).p_value == pytest.approx(0.1)


def _fisher_brute_force(t):
    t = np.asarray(t)
    cols, r1 = t.sum(0), int(t[0].sum())
    n = int(cols.sum())

    def prob(x):
        return np.prod([math.comb(int(c), int(k)) for c, k in zip(cols, x)]) / math.comb(n, r1)

    p_obs = prob(t[0])
    return sum(prob(x) for x in itertools.product(*[range(int(c) + 1) for c in cols])
               if sum(x) == r1 and prob(x) <= p_obs * (1 + 1e-7))


@pytest.mark.parametrize("table", [[[3, 1, 4], [1, 5, 2]], [[0, 2, 6, 1], [4, 3, 0, 2]], [[5, 0, 1], [0, 4, 2]]])
def test_fisher_2xk_exact_equals_brute_force_enumeration(table):
    r = fisher_exact_2xk(table)
    assert r.test == FISHER
    assert r.p_value == pytest.approx(_fisher_brute_force(table), rel=1e-10)
    # orientation does not matter
    assert fisher_exact_2xk(np.asarray(table).T).p_value == pytest.approx(r.p_value, rel=1e-12)


def test_fisher_monte_carlo_fallback_is_seeded_and_close():
    table = [[3, 1, 4, 2], [1, 5, 2, 6]]
    exact = fisher_exact_2xk(table).p_value
    mc = fisher_exact_2xk(table, max_tables=3, n_sim=20_000, seed=1)
    assert mc.test == FISHER_MC
    assert mc.p_value == pytest.approx(exact, abs=0.01)
    assert fisher_exact_2xk(table, max_tables=3, n_sim=20_000, seed=1).p_value == mc.p_value


def test_single_level_is_not_tested():
    r = categorical_test([[5, 0], [7, 0]])
    assert math.isnan(r.p_value) and "not tested" in r.test


# ----------------------------------------------------------------- the table

@pytest.fixture()
def clinical():
    rng = np.random.default_rng(0)
    n = 80
    df = pd.DataFrame({
        "age": rng.normal(50, 10, n).round(),
        "gender": rng.choice(["M", "F"], n, p=[0.7, 0.3]),
        "t_stage": rng.choice(["T1", "T2", "T3", "T4"], n, p=[0.05, 0.25, 0.4, 0.3]),
        "induction_chemo": rng.integers(0, 2, n),
        "hgb_g_l": rng.normal(135, 12, n),
        "msom": np.r_[np.ones(35, int), np.zeros(45, int)],
        "split": np.where(np.arange(n) % 4 == 0, "val", "train"),
    })
    df.loc[[3, 10], "hgb_g_l"] = np.nan
    return df


VARIABLES = [
    Variable("age", "continuous", "Age (years)"),
    Variable("gender", "categorical", "Gender", levels=("M", "F"), level_labels={"M": "Male", "F": "Female"}),
    Variable("t_stage", "categorical", "T stage"),
    Variable("induction_chemo", "categorical", "Induction chemotherapy", level_labels={0: "no", 1: "yes"}),
    Variable("hgb_g_l", "continuous", "HGB (g/L)"),
]
COMPARISONS = [Comparison("msom", (1, 0), ("MSOM", "non-MSOM")),
               Comparison("split", ("train", "val"), ("Training", "Validation"))]


def test_table_layout_counts_and_tests(clinical):
    t = make_table1(clinical, VARIABLES, COMPARISONS)
    assert list(t.columns) == [
        "Variable", "Level", "Overall (n=80)", "MSOM (n=35)", "non-MSOM (n=45)", "p (MSOM vs non-MSOM)",
        "Test (MSOM vs non-MSOM)", "Training (n=60)", "Validation (n=20)", "p (Training vs Validation)",
        "Test (Training vs Validation)"]
    assert list(t["Level"]) == ["median (IQR)", "", "Male", "Female", "", "T1", "T2", "T3", "T4", "",
                                "no", "yes", "median (IQR)", "missing"]
    # n (%) of a level, by hand
    male = t[t.Level == "Male"].iloc[0]
    k = int((clinical.gender == "M").sum())
    assert male["Overall (n=80)"] == f"{k} ({100 * k / 80:.1f})"
    k1 = int(((clinical.gender == "M") & (clinical.msom == 1)).sum())
    assert male["MSOM (n=35)"] == f"{k1} ({100 * k1 / 35:.1f})"
    # median (IQR) with R's default quantiles (type 7 = NumPy's linear)
    q1, med, q3 = np.quantile(clinical.age, [0.25, 0.5, 0.75])
    assert t.iloc[0]["Overall (n=80)"] == f"{med:.1f} ({q1:.1f}\u2013{q3:.1f})"
    # p-values are those of the test functions on the same data
    age = continuous_test(clinical.age[clinical.msom == 1], clinical.age[clinical.msom == 0])
    assert t.iloc[0]["p (MSOM vs non-MSOM)"] == age.p_value
    gender_tab = pd.crosstab(clinical.msom, clinical.gender).loc[[1, 0], ["M", "F"]].to_numpy()
    head = t[t.Variable == "Gender"].iloc[0]
    assert head["p (MSOM vs non-MSOM)"] == categorical_test(gender_tab).p_value
    # T1 is rare (expected < 5): Fisher; the missing HGB values are counted and left out
    assert t[t.Variable == "T stage"].iloc[0]["Test (MSOM vs non-MSOM)"] == FISHER
    assert t[t.Level == "missing"].iloc[0]["Overall (n=80)"] == "2"
    hgb = t[t.Variable == "HGB (g/L)"].iloc[0]
    assert hgb["p (MSOM vs non-MSOM)"] == continuous_test(
        clinical.hgb_g_l[clinical.msom == 1].dropna(), clinical.hgb_g_l[clinical.msom == 0].dropna()).p_value


def test_variables_are_an_argument_not_hard_coded(clinical):
    t = make_table1(clinical, [Variable("hgb_g_l", "continuous")], COMPARISONS[:1])
    assert list(t.Variable) == ["hgb_g_l", ""] and len(t.columns) == 7


def test_csv_and_html(clinical, tmp_path):
    t = make_table1(clinical, VARIABLES, COMPARISONS)
    path = write_table1_csv(t, tmp_path / "table1.csv")
    back = pd.read_csv(path, keep_default_na=False)
    assert list(back.columns) == list(t.columns)
    assert float(back.iloc[0]["p (MSOM vs non-MSOM)"]) == pytest.approx(t.iloc[0]["p (MSOM vs non-MSOM)"])
    h = render_table1_html(t)
    assert h.startswith("<table") and h.rstrip().endswith("</table>")
    assert h.count("<tr>") == len(t) + 2  # header + rows + footnote
    assert "Test (" not in h and "Fisher&#x27;s exact test" in h
    assert "Age (years)" in h and "Overall (n=80)" in h
    p = t.iloc[0]["p (MSOM vs non-MSOM)"]
    assert (f"{p:.3f}" if p >= 0.001 else "&lt;0.001") in h


@pytest.mark.parametrize("mutate, variables, match", [
    (lambda d: d.assign(msom=d.msom.replace({0: 2})), VARIABLES, r"unknown group labels \['2'\]"),
    (lambda d: d.assign(split=d.split.where(d.index != 5, None)), VARIABLES, "missing group labels"),
    (lambda d: d, VARIABLES + [Variable("pni", "continuous")], r"columns \['pni'\] are not in"),
    (lambda d: d, [Variable("age", "ordinal")], "kind 'ordinal'"),
    (lambda d: d.assign(t_stage=d.t_stage.replace({"T4": "T4a"})),
     [Variable("t_stage", "categorical", levels=("T1", "T2", "T3", "T4"))], r"values \['T4a'\] outside"),
    (lambda d: d.assign(age=d.age.astype(object).where(d.index != 0, "old")), VARIABLES, "non-numeric"),
])
def test_bad_input(clinical, mutate, variables, match):
    with pytest.raises(ValueError, match=match):
        make_table1(mutate(clinical), variables, COMPARISONS)
