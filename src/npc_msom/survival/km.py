"""Kaplan–Meier curves per risk group, rates at a time point, median survival, and the log-rank test.

Built on lifelines (the estimate and the log-rank statistic) with the confidence intervals and the
median's interval computed here, so that they agree with R's ``survival`` package:

* ``ci_type="log"`` (default) is R ``survfit``'s default ``conf.type = "log"``:
  S * exp(±z * se), se = Greenwood's standard error of log S = sqrt(sum d / (n (n - d))); the
  upper limit is capped at 1.
* ``ci_type="log-log"`` is R's ``conf.type = "log-log"``, and also lifelines' own
  ``confidence_interval_`` (its "exponential Greenwood") and SAS PROC LIFETEST's default.
* The median and its interval follow R's ``quantile.survfit``: the first time the curve (or the
  lower / upper band) reaches 0.5, with the midpoint rule when a curve is flat at exactly 0.5.

Times are in months throughout the project (``time_months``); nothing here depends on the unit.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats

from ..evaluation import _checks
from ..evaluation._result import ResultMixin, fmt_ci

log = logging.getLogger(__name__)

CI_TYPES = ("log", "log-log")
# R's quantile.survfit tolerance for "the curve is exactly at the quantile"
_TOL = math.sqrt(np.finfo(float).eps)


@dataclass(frozen=True)
class SurvivalRate(ResultMixin):
    """Survival probability at ``time`` (e.g. 3-year DMFS at 36 months) with its CI."""
    group: str
    time: float
    survival: float
    ci_low: float
    ci_high: float
    n_at_risk: int
    level: float
    ci_type: str

    def format(self, digits: int = 3) -> str:
        """'11.4% (95% CI 4.1–22.3%)'."""
        return fmt_ci(self.survival, self.ci_low, self.ci_high, self.level, digits, percent=True)


@dataclass(frozen=True, eq=False)
class KMCurve(ResultMixin):
    """One Kaplan–Meier curve. Arrays have shape (k,), one entry per distinct observed time.

    ``n_at_risk[i]`` is the number with follow-up >= time[i]; ``survival[i]`` is S just after
    time[i]; ``std_err`` is the standard error of S (Greenwood, as R's ``summary.survfit``).
    ``median_*`` are nan where a curve or band never reaches 0.5 (R prints NA).
    """
    group: str
    n: int
    n_events: int
    level: float
    ci_type: str
    median: float
    median_ci_low: float
    median_ci_high: float
    time: np.ndarray = field(repr=False)
    n_at_risk: np.ndarray = field(repr=False)
    n_event: np.ndarray = field(repr=False)
    n_censored: np.ndarray = field(repr=False)
    survival: np.ndarray = field(repr=False)
    std_err: np.ndarray = field(repr=False)
    ci_low: np.ndarray = field(repr=False)
    ci_high: np.ndarray = field(repr=False)

    def _index_at(self, t: float) -> int:
        """Index of the last stored time <= t, or -1 before the first one."""
        return int(np.searchsorted(self.time, t, side="right")) - 1

    def survival_at(self, t: float) -> SurvivalRate:
        """S(t) with its CI. nan beyond the last follow-up time (R's summary with extend=FALSE)."""
        if not np.isfinite(t) or t < 0:
            raise ValueError(f"time point must be a finite number >= 0, got {t}")
        n_risk = int(self.at_risk([t])[0])
        if t > self.time[-1]:
            log.warning("group %s: no follow-up beyond %.4g, so S(%.4g) is not estimable",
                        self.group, self.time[-1], t)
            return SurvivalRate(self.group, float(t), math.nan, math.nan, math.nan, 0, self.level, self.ci_type)
        i = self._index_at(t)
        if i < 0:
            return SurvivalRate(self.group, float(t), 1.0, 1.0, 1.0, n_risk, self.level, self.ci_type)
        return SurvivalRate(self.group, float(t), float(self.survival[i]), float(self.ci_low[i]),
                            float(self.ci_high[i]), n_risk, self.level, self.ci_type)

    def at_risk(self, times: Sequence[float]) -> np.ndarray:
        """Number at risk (follow-up >= t) at each of ``times``, shape (len(times),), int."""
        t = np.asarray(times, dtype=float)
        # the first stored time >= t has the same risk set as t itself
        j = np.searchsorted(self.time, t, side="left")
        out = np.zeros(t.shape, dtype=np.int64)
        inside = j < self.time.size
        out[inside] = self.n_at_risk[j[inside]]
        return out


@dataclass(frozen=True, eq=False)
class KMResult(ResultMixin):
    """Kaplan–Meier curves of one or more groups, in ``groups`` order."""
    curves: tuple[KMCurve, ...]
    level: float
    ci_type: str

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(c.group for c in self.curves)

    def curve(self, group) -> KMCurve:
        for c in self.curves:
            if c.group == str(group):
                return c
        raise ValueError(f"no curve for group {group!r}; groups are {list(self.groups)}")

    def survival_at(self, t: float) -> dict[str, SurvivalRate]:
        """{group: S(t) with CI} for every group."""
        return {c.group: c.survival_at(t) for c in self.curves}


@dataclass(frozen=True)
class LogRankResult(ResultMixin):
    """Log-rank test of equal survival across groups (R's ``survdiff``).

    ``observed``/``expected`` are the events per group in ``groups`` order; ``n`` the patients.
    """
    chi2: float
    df: int
    p_value: float
    groups: tuple[str, ...]
    n: tuple[int, ...]
    observed: tuple[float, ...]
    expected: tuple[float, ...]
    # why there is no test (chi2 and p_value nan, df 0), or which groups were left out of it
    note: str = ""

    @property
    def tested(self) -> bool:
        """False when no test was possible (no events, or fewer than two groups at risk)."""
        return self.df > 0 and math.isfinite(self.p_value)

    def format_p(self) -> str:
        """'p < 0.001' or 'p = 0.012', as papers print it; 'no test (why)' when none was possible."""
        if not self.tested:
            return f"no test ({self.note})" if self.note else "no test"
        return "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.3f}"


def _check_survival_inputs(time, event, name_time: str = "time", name_event: str = "event"):
    t = _checks.times(time, name_time)
    e = _checks.binary(event, name_event)
    _checks.same_length(**{name_time: t, name_event: e})
    return t, e


def _findq(x: np.ndarray, y: np.ndarray, p: float) -> float:
    """R survival's findq: the time where the step curve y = 1 - S(x) reaches p.

    x: (k,) times starting with 0; y: (k,) nondecreasing 1 - S (nan allowed, dropped). When y is
    flat at exactly p the answer is the midpoint of that flat, as R does for medians.
    """
    ok = ~np.isnan(y)
    x, y = x[ok], y[ok]
    if y.size == 0 or y.max() < p:
        return math.nan
    xmax = x[-1]
    _, first = np.unique(y, return_index=True)
    keep = np.sort(first)
    x, y = x[keep], y[keep]
    i1 = np.flatnonzero(y + _TOL >= p)
    i2 = np.flatnonzero(y - _TOL >= p)
    if i1.size == 0:
        return math.nan
    if abs(p - y[-1]) < _TOL:  # the curve ends on the quantile: midpoint with the last time
        return float((x[i1[0]] + xmax) / 2)
    if i2.size == 0:
        return math.nan
    return float((x[i1[0]] + x[i2[0]]) / 2)


def _km_curve(t: np.ndarray, e: np.ndarray, group: str, level: float, ci_type: str) -> KMCurve:
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter().fit(t, e, label=group)
    table = kmf.event_table
    # lifelines adds a row at time 0 (entrance); keep only real observed times
    table = table[table["removed"] > 0]
    times = table.index.to_numpy(dtype=float)
    n_risk = table["at_risk"].to_numpy(dtype=np.int64)
    d = table["observed"].to_numpy(dtype=np.int64)
    cens = table["censored"].to_numpy(dtype=np.int64)
    surv = kmf.survival_function_.loc[times].to_numpy(dtype=float).ravel()

    with np.errstate(divide="ignore", invalid="ignore"):
        # Greenwood's variance of log S; infinite once everybody at risk has had the event
        green = np.cumsum(np.where(n_risk > d, d / (n_risk * (n_risk - d)), np.inf))
        se_log = np.sqrt(green)
        z = float(stats.norm.ppf(0.5 + level / 2))
        if ci_type == "log":
            lo = surv * np.exp(-z * se_log)
            hi = np.minimum(1.0, surv * np.exp(z * se_log))
        else:
            log_s = np.log(surv)
            theta = np.log(-log_s)
            se_theta = se_log / np.abs(log_s)
            lo = np.exp(-np.exp(theta + z * se_theta))
            hi = np.exp(-np.exp(theta - z * se_theta))
            one = surv == 1.0  # no event yet: the band is the point 1 (R gives NA there)
            lo[one], hi[one] = 1.0, 1.0
    dead = (surv <= 0) | ~np.isfinite(se_log)
    lo[dead], hi[dead] = np.nan, np.nan
    std_err = surv * se_log
    std_err[dead] = np.nan

    x = np.concatenate([[0.0], times])
    median = _findq(x, np.concatenate([[0.0], 1 - surv]), 0.5)
    med_lo = _findq(x, np.concatenate([[0.0], 1 - lo]), 0.5)
    med_hi = _findq(x, np.concatenate([[0.0], 1 - hi]), 0.5)
    return KMCurve(group=group, n=int(t.size), n_events=int(e.sum()), level=level, ci_type=ci_type,
                   median=median, median_ci_low=med_lo, median_ci_high=med_hi, time=times,
                   n_at_risk=n_risk, n_event=d, n_censored=cens, survival=surv, std_err=std_err,
                   ci_low=lo, ci_high=hi)


def _group_order(g: np.ndarray, groups: Sequence | None) -> list:
    if groups is not None:
        present = set(g.tolist())
        missing = [x for x in groups if x not in present]
        if missing:
            raise ValueError(f"group labels {missing} were declared but have no patient")
        return list(groups)
    try:
        return sorted(set(g.tolist()))
    except TypeError:
        return sorted(set(g.tolist()), key=str)


def kaplan_meier(time, event, group=None, groups: Sequence | None = None, level: float = 0.95,
                 ci_type: str = "log") -> KMResult:
    """Kaplan–Meier curves, one per group.

    Args:
        time: (N,) follow-up times >= 0 (months in this project).
        event: (N,) 1 = event (metastasis / death), 0 = censored.
        group: (N,) group labels (e.g. "high"/"low"), or None for a single curve labelled "all".
        groups: the expected labels in display order; a label outside them raises.
            Default: the sorted distinct labels.
        level: confidence level.
        ci_type: "log" (R's default) or "log-log" (lifelines' default); see the module docstring.
    """
    if ci_type not in CI_TYPES:
        raise ValueError(f"ci_type must be one of {CI_TYPES}, got {ci_type!r}")
    level = _checks.level(level)
    t, e = _check_survival_inputs(time, event)
    if group is None:
        return KMResult((_km_curve(t, e, "all", level, ci_type),), level, ci_type)
    g = _checks.labels(group, "group", allowed=groups)
    _checks.same_length(time=t, group=g)
    curves = tuple(_km_curve(t[g == lab], e[g == lab], str(lab), level, ci_type)
                   for lab in _group_order(g, groups))
    return KMResult(curves, level, ci_type)


def logrank_test(time, event, group, groups: Sequence | None = None) -> LogRankResult:
    """Log-rank test across any number of groups (R: ``survdiff(Surv(time, event) ~ group)``).

    Args:
        time: (N,) follow-up times >= 0.
        event: (N,) 1 = event, 0 = censored.
        group: (N,) group labels; at least two distinct groups.
        groups: the expected labels (and the order of the result); others raise.

    The statistic is R's: with O - E and the hypergeometric variance V summed over event times,
    chi2 = (O - E)' V^- (O - E) over the groups with expected events > 0, minus one of them; so
    a group with no patient at risk at any event time (e.g. one patient censored before the first
    event) is left out and df = (groups with E > 0) - 1, as ``survdiff`` does (lifelines keeps
    such a group in df). With no events, or fewer than two groups with E > 0, there is no test:
    chi2 and p_value are nan, df is 0 and ``note`` says why (R prints no test either).
    """
    t, e = _check_survival_inputs(time, event)
    g = _checks.labels(group, "group", allowed=groups)
    _checks.same_length(time=t, group=g)
    order = _group_order(g, groups)
    if len(order) < 2:
        raise ValueError(f"the log-rank test needs at least two groups, got {order}")
    gi = np.array([order.index(v) for v in g.tolist()])
    event_times = np.unique(t[e == 1])
    k = len(order)
    # at risk (time >= s) and events (time == s, event) per event time s and group: (T, G)
    at_risk = np.stack([(t[gi == j][None, :] >= event_times[:, None]).sum(1) for j in range(k)], 1)
    deaths = np.stack([((t[(gi == j) & (e == 1)][None, :] == event_times[:, None]).sum(1))
                       for j in range(k)], 1)
    d_tot = deaths.sum(1, keepdims=True).astype(float)
    n_tot = at_risk.sum(1, keepdims=True).astype(float)
    expected = (d_tot * at_risk / n_tot).sum(0)
    observed = deaths.sum(0)
    # hypergeometric variance, summed over event times with more than one patient at risk
    w = np.where(n_tot > 1, d_tot * (n_tot - d_tot) / (n_tot ** 2 * np.maximum(n_tot - 1, 1)), 0.0)[:, 0]
    frac = at_risk.astype(float)
    var = np.einsum("t,tj,tk->jk", w, frac, frac) * -1.0
    var[np.diag_indices(k)] += np.einsum("t,tj->j", w * n_tot[:, 0], frac)
    keep = np.nonzero(expected > 0)[0]
    dropped = [str(order[j]) for j in range(k) if expected[j] <= 0]
    note = ""
    if len(event_times) == 0:
        chi2, df, p = math.nan, 0, math.nan
        note = "no events"
    elif len(keep) < 2:
        chi2, df, p = math.nan, 0, math.nan
        note = f"fewer than two groups have patients at risk at an event time (no events expected in {', '.join(dropped)})"
    else:
        diff = (observed - expected)[keep][1:]
        v = var[np.ix_(keep, keep)][1:, 1:]
        chi2 = float(diff @ np.linalg.pinv(v) @ diff)
        df = len(keep) - 1
        p = float(stats.chi2.sf(chi2, df))
        if dropped:
            note = (f"group(s) {', '.join(dropped)} left out of the test: no patient at risk at any event "
                    f"time (0 expected events), as R's survdiff does")
    if note:
        log.warning("log-rank test: %s", note)
    return LogRankResult(chi2=chi2, df=int(df), p_value=p, groups=tuple(str(x) for x in order),
                         n=tuple(int((gi == j).sum()) for j in range(k)),
                         observed=tuple(float(x) for x in observed),
                         expected=tuple(float(x) for x in expected), note=note)
