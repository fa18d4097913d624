"""Table 1: the clinical characteristics of the cohort, overall and by group, with p-values.

For each declared variable: n (%) per level for categorical variables, median (IQR) for continuous
ones, overall and within the two groups of each comparison (e.g. MSOM vs non-MSOM, training vs
validation), with a p-value per comparison:

* categorical: Pearson's chi-square test as R's ``chisq.test`` does it by default, i.e. **with**
  Yates' continuity correction for 2x2 tables and without it for larger ones
  (``scipy.stats.chi2_contingency(correction=True)`` applies Yates only when df = 1, the same
  rule). Where an expected count is below 5, Fisher's exact test instead (R's ``fisher.test``:
  two-sided, tables at most as probable as the observed one, relative tolerance 1e-7). 2 x k
  tables are enumerated exactly; if the enumeration would exceed ``max_tables`` tables, a seeded
  Monte Carlo estimate is used and named so in the ``test`` column.
* continuous: the Mann–Whitney U (Wilcoxon rank-sum) test as R's ``wilcox.test`` does it by
  default: exact when both groups have fewer than 50 values and there are no ties, otherwise the
  normal approximation with tie and continuity corrections.

Missing values are left out of percentages and tests and counted in a "missing" row.
The variables are an argument, never hard-coded: see ``Variable``.
"""
from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

log = logging.getLogger(__name__)

CHI2 = "Chi-square"
CHI2_YATES = "Chi-square (Yates)"
FISHER = "Fisher's exact"
FISHER_MC = "Fisher's exact (Monte Carlo)"
MANN_WHITNEY = "Mann-Whitney U"


@dataclass(frozen=True)
class Variable:
    """A row block of Table 1.

    ``name`` is the column in the data frame; ``kind`` "categorical" or "continuous"; ``label``
    is printed (default: ``name``). ``levels`` fixes the order of categories (default: sorted);
    a value outside them raises. ``level_labels`` maps a level to its printed name (e.g. {1: "yes"}).
    """
    name: str
    kind: Literal["categorical", "continuous"]
    label: str | None = None
    levels: tuple | None = None
    level_labels: dict | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Comparison:
    """Two groups to compare: rows where ``df[by] == groups[0]`` vs ``groups[1]``.

    ``labels`` are the printed names (default: str of the groups), e.g. ("MSOM", "non-MSOM").
    """
    by: str
    groups: tuple
    labels: tuple[str, str] | None = None

    def names(self) -> tuple[str, str]:
        return self.labels if self.labels is not None else (str(self.groups[0]), str(self.groups[1]))


@dataclass(frozen=True)
class GroupTestResult:
    """A p-value and the test that produced it (``statistic`` nan for Fisher)."""
    test: str
    statistic: float
    p_value: float


# ---------------------------------------------------------------- tests

def _fisher_2xk_exact(table: np.ndarray, max_tables: int) -> float | None:
    """Exact two-sided Fisher p of a 2 x k table by enumerating all tables with its margins.

    Returns None when more than ``max_tables`` partial tables would be needed.
    """
    r1 = int(table[0].sum())
    cols = table.sum(axis=0).astype(int)
    n = int(cols.sum())
    log_c = [special.gammaln(c + 1) - special.gammaln(np.arange(c + 1) + 1) - special.gammaln(c - np.arange(c + 1) + 1)
             for c in cols]
    obs = float(sum(log_c[j][int(table[0, j])] for j in range(cols.size)))
    remaining = np.concatenate([np.cumsum(cols[::-1])[::-1][1:], [0]])  # capacity after column j
    sums = np.zeros(1, dtype=np.int64)
    logp = np.zeros(1)
    for j, c in enumerate(cols):
        x = np.arange(c + 1)
        s = (sums[:, None] + x[None, :]).ravel()
        lp = (logp[:, None] + log_c[j][None, :]).ravel()
        ok = (s <= r1) & (s + remaining[j] >= r1)
        sums, logp = s[ok], lp[ok]
        if sums.size > max_tables:
            return None
    # every surviving path has first-row sum r1; probabilities relative to C(n, r1)
    log_total = special.gammaln(n + 1) - special.gammaln(r1 + 1) - special.gammaln(n - r1 + 1)
    probs = np.exp(logp - log_total)
    # R fisher.test: tables no more probable than the observed one, with relative error 1e-7
    return float(min(1.0, probs[logp <= obs + math.log1p(1e-7)].sum()))


def _fisher_2xk_monte_carlo(table: np.ndarray, n_sim: int, seed: int) -> float:
    """Monte Carlo Fisher p (R's ``simulate.p.value``): (1 + #{P_sim <= P_obs}) / (B + 1)."""
    rng = np.random.default_rng(seed)
    r1 = int(table[0].sum())
    cols = table.sum(axis=0).astype(np.int64)

    def logp(x):
        return (special.gammaln(cols + 1) - special.gammaln(x + 1) - special.gammaln(cols - x + 1)).sum(axis=-1)

    sims = rng.multivariate_hypergeometric(cols, r1, size=n_sim)
    hits = int(np.sum(logp(sims) <= logp(table[0].astype(np.int64)) + math.log1p(1e-7)))
    return (1 + hits) / (n_sim + 1)


def fisher_exact_2xk(table, max_tables: int = 5_000_000, n_sim: int = 100_000,
                     seed: int = 0) -> GroupTestResult:
    """Two-sided Fisher exact test of a 2 x k contingency table (rows = groups).

    Exact by enumeration (equal to R's ``fisher.test``); Monte Carlo with ``n_sim`` tables
    (seeded) when the enumeration would be larger than ``max_tables``.
    """
    t = np.asarray(table, dtype=np.int64)
    if t.ndim != 2 or 2 not in t.shape:
        raise ValueError(f"fisher_exact_2xk needs a 2 x k table, got shape {t.shape}")
    if t.shape[0] != 2:
        t = t.T
    if (t < 0).any():
        raise ValueError("contingency table has negative counts")
    t = t[:, t.sum(axis=0) > 0]
    if t.shape[1] < 2 or (t.sum(axis=1) == 0).any():
        return GroupTestResult(FISHER, math.nan, 1.0)
    if t.shape[1] == 2:
        return GroupTestResult(FISHER, math.nan, float(stats.fisher_exact(t).pvalue))
    p = _fisher_2xk_exact(t, max_tables)
    if p is None:
        log.info("Fisher enumeration too large; using a Monte Carlo estimate (B=%d)", n_sim)
        return GroupTestResult(FISHER_MC, math.nan, _fisher_2xk_monte_carlo(t, n_sim, seed))
    return GroupTestResult(FISHER, math.nan, p)


def categorical_test(table, max_tables: int = 5_000_000, seed: int = 0) -> GroupTestResult:
    """Chi-square (Yates for 2x2, as R's ``chisq.test``), or Fisher's exact where an expected
    count is below 5. ``table`` is groups x levels; empty levels are dropped first.
    """
    t = np.asarray(table, dtype=np.int64)
    t = t[:, t.sum(axis=0) > 0]
    t = t[t.sum(axis=1) > 0, :]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return GroupTestResult("not tested (one level)", math.nan, math.nan)
    expected = stats.contingency.expected_freq(t)
    if (expected < 5).any():
        return fisher_exact_2xk(t, max_tables=max_tables, seed=seed)
    res = stats.chi2_contingency(t, correction=True)
    name = CHI2_YATES if res.dof == 1 else CHI2
    return GroupTestResult(name, float(res.statistic), float(res.pvalue))


def continuous_test(a, b) -> GroupTestResult:
    """Two-sided Mann–Whitney U with R ``wilcox.test``'s defaults (see module docstring)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    # no test ran: say why instead of naming a test with p nan
    if a.size == 0 or b.size == 0:
        return GroupTestResult("not tested (no values in one group)", math.nan, math.nan)
    both = np.concatenate([a, b])
    if np.ptp(both) == 0:
        return GroupTestResult("not tested (all values equal)", math.nan, math.nan)
    ties = np.unique(both).size < both.size
    if a.size < 50 and b.size < 50 and not ties:
        res = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
    else:
        res = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
    return GroupTestResult(MANN_WHITNEY, float(res.statistic), float(res.pvalue))


# ---------------------------------------------------------------- table

def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _median_iqr(x: np.ndarray, digits: int) -> str:
    if x.size == 0:
        return ""
    q1, med, q3 = np.quantile(x, [0.25, 0.5, 0.75])  # linear = R's default type 7
    return f"{med:.{digits}f} ({q1:.{digits}f}\u2013{q3:.{digits}f})"


def _check_columns(df: pd.DataFrame, variables: Sequence[Variable], comparisons: Sequence[Comparison]) -> None:
    missing = [v.name for v in variables if v.name not in df.columns]
    missing += [c.by for c in comparisons if c.by not in df.columns]
    if missing:
        raise ValueError(f"Table 1: columns {missing} are not in the data frame "
                         f"(columns are {list(df.columns)})")
    names = [v.name for v in variables]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"Table 1: variables declared twice: {dups}")
    for v in variables:
        if v.kind not in ("categorical", "continuous"):
            raise ValueError(f"Table 1: variable {v.name!r} has kind {v.kind!r}; "
                             f"expected 'categorical' or 'continuous'")
    for c in comparisons:
        if len(c.groups) != 2:
            raise ValueError(f"Table 1: comparison by {c.by!r} needs exactly two groups, got {c.groups}")
        col = df[c.by]
        if col.isna().any():
            rows = list(np.flatnonzero(col.isna().to_numpy())[:10])
            raise ValueError(f"Table 1: column {c.by!r} has {int(col.isna().sum())} missing group labels "
                             f"(rows {rows})")
        unknown = sorted({str(v) for v in col if v not in set(c.groups)})
        if unknown:
            raise ValueError(f"Table 1: column {c.by!r} contains unknown group labels {unknown}; "
                             f"expected {list(c.groups)}")


def _levels(v: Variable, col: pd.Series) -> list:
    present = list(pd.unique(col.dropna()))
    if v.levels is None:
        try:
            return sorted(present)
        except TypeError:
            return sorted(present, key=str)
    unknown = sorted({str(x) for x in present if x not in set(v.levels)})
    if unknown:
        raise ValueError(f"Table 1: variable {v.name!r} has values {unknown} outside its declared "
                         f"levels {list(v.levels)}")
    return list(v.levels)


def make_table1(df: pd.DataFrame, variables: Sequence[Variable], comparisons: Sequence[Comparison],
                digits: int = 1, max_tables: int = 5_000_000, seed: int = 0) -> pd.DataFrame:
    """Table 1 as a data frame, one row per continuous variable and per category level.

    Args:
        df: one row per patient.
        variables: the rows to show, in order.
        comparisons: the group comparisons, in column order, e.g.
            [Comparison("msom", (1, 0), ("MSOM", "non-MSOM")),
             Comparison("split", ("train", "val"), ("Training", "Validation"))].
        digits: decimals of medians, IQRs and percentages.

    Returns:
        Columns "Variable", "Level", "Overall (n=N)", then per comparison its two groups
        "<label> (n=..)", "p (<a> vs <b>)" (float) and "Test (<a> vs <b>)". Category rows leave
        Variable empty; a categorical variable's header row carries its p-values.
    """
    _check_columns(df, variables, comparisons)
    group_cols = []
    for c in comparisons:
        a, b = c.names()
        na, nb = int((df[c.by] == c.groups[0]).sum()), int((df[c.by] == c.groups[1]).sum())
        group_cols.append((c, f"{a} (n={na})", f"{b} (n={nb})", f"p ({a} vs {b})", f"Test ({a} vs {b})"))
    overall_col = f"Overall (n={len(df)})"
    rows: list[dict] = []

    for v in variables:
        col = df[v.name]
        n_missing = int(col.isna().sum())
        if v.kind == "continuous":
            num = pd.to_numeric(col, errors="coerce")
            bad = num.isna() & col.notna()
            if bad.any():
                raise ValueError(f"Table 1: continuous variable {v.name!r} has non-numeric values "
                                 f"{sorted({str(x) for x in col[bad]})[:5]}")
            row = {"Variable": v.display, "Level": "median (IQR)",
                   overall_col: _median_iqr(num.dropna().to_numpy(float), digits)}
            for c, ca, cb, cp, ct in group_cols:
                xa = num[df[c.by] == c.groups[0]].dropna().to_numpy(float)
                xb = num[df[c.by] == c.groups[1]].dropna().to_numpy(float)
                res = continuous_test(xa, xb)
                row.update({ca: _median_iqr(xa, digits), cb: _median_iqr(xb, digits), cp: res.p_value, ct: res.test})
            rows.append(row)
        else:
            levels = _levels(v, col)
            head = {"Variable": v.display, "Level": "", overall_col: ""}
            level_rows = []
            for c, ca, cb, cp, ct in group_cols:
                table = np.array([[int(((df[c.by] == g) & (col == lev)).sum()) for lev in levels]
                                  for g in c.groups])
                res = categorical_test(table, max_tables=max_tables, seed=seed)
                head.update({ca: "", cb: "", cp: res.p_value, ct: res.test})
            n_valid = int(col.notna().sum())
            for lev in levels:
                name = (v.level_labels or {}).get(lev, str(lev))
                k = int((col == lev).sum())
                r = {"Variable": "", "Level": name,
                     overall_col: f"{k} ({100 * k / n_valid:.{digits}f})" if n_valid else "0"}
                for c, ca, cb, cp, ct in group_cols:
                    for g, cg in ((c.groups[0], ca), (c.groups[1], cb)):
                        in_g = df[c.by] == g
                        denom = int((in_g & col.notna()).sum())
                        kg = int((in_g & (col == lev)).sum())
                        r[cg] = f"{kg} ({100 * kg / denom:.{digits}f})" if denom else "0"
                    r[cp], r[ct] = math.nan, ""
                level_rows.append(r)
            rows.append(head)
            rows.extend(level_rows)
        if n_missing:
            r = {"Variable": "", "Level": "missing", overall_col: str(n_missing)}
            for c, ca, cb, cp, ct in group_cols:
                r[ca] = str(int((col.isna() & (df[c.by] == c.groups[0])).sum()))
                r[cb] = str(int((col.isna() & (df[c.by] == c.groups[1])).sum()))
                r[cp], r[ct] = math.nan, ""
            rows.append(r)
    columns = ["Variable", "Level", overall_col] + [x for g in group_cols for x in g[1:]]
    return pd.DataFrame(rows, columns=columns)


def write_table1_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Writes the table as UTF-8 CSV (p-values at full precision), atomically; returns the path."""
    from ..runtime import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, encoding="utf-8")
    return path


def render_table1_html(table: pd.DataFrame, title: str = "Table 1. Patient characteristics",
                       footnote: str | None = None) -> str:
    """A plain, self-contained HTML ``<table>`` (no external CSS or scripts).

    p-values print as "<0.001" or with three decimals; the default footnote names the tests.
    """
    if footnote is None:
        footnote = ("Categorical variables: n (%), chi-square test (Yates' correction for 2x2 tables, "
                    "as R's chisq.test), or Fisher's exact test where an expected count is below 5. "
                    "Continuous variables: median (IQR), Mann\u2013Whitney U test.")
    p_cols = [c for c in table.columns if c.startswith("p (")]
    test_cols = [c for c in table.columns if c.startswith("Test (")]
    shown = [c for c in table.columns if c not in test_cols]
    out = ['<table class="table1" style="border-collapse:collapse;font-family:sans-serif;font-size:13px">',
           f'<caption style="text-align:left;font-weight:bold;padding:4px 0">{html.escape(title)}</caption>',
           "<thead><tr>"]
    for c in shown:
        out.append(f'<th style="border-bottom:1px solid #000;border-top:2px solid #000;padding:3px 8px;'
                   f'text-align:left">{html.escape(str(c))}</th>')
    out.append("</tr></thead><tbody>")
    for _, row in table.iterrows():
        out.append("<tr>")
        for c in shown:
            val = row[c]
            text = _fmt_p(val) if c in p_cols else ("" if (isinstance(val, float) and math.isnan(val)) else str(val))
            test = row.get("Test " + c[2:], "") if c in p_cols else ""
            if c in p_cols and not text and isinstance(test, str) and test.startswith("not tested"):
                text = test      # a blank p would read as a lost value
            indent = "padding-left:20px;" if c == "Level" and not row["Variable"] else ""
            out.append(f'<td style="padding:2px 8px;{indent}">{html.escape(text)}</td>')
        out.append("</tr>")
    out.append(f'</tbody><tfoot><tr><td colspan="{len(shown)}" style="border-top:2px solid #000;'
               f'padding:4px 8px;font-size:11px">{html.escape(footnote)}</td></tr></tfoot></table>')
    return "\n".join(out)
