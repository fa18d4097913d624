"""Cox proportional hazards for the risk group and for the continuous score; Harrell's C-index.

lifelines' ``CoxPHFitter`` (Efron's method for ties, like R's ``coxph`` default) does the fit;
this module validates the input, names the covariate and returns a small ``CoxResult``.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..evaluation import _checks
from ..evaluation._result import ResultMixin, fmt_ci
from .km import _check_survival_inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoxResult(ResultMixin):
    """Univariable Cox model.

    ``coef`` is the log hazard ratio per ``per`` units of the covariate (per 1 for a group
    indicator: ``comparison`` vs ``reference``); ``hr`` = exp(coef) with its Wald CI at ``level``;
    ``concordance`` is Harrell's C of the fitted risk.
    """
    covariate: str
    coef: float
    se: float
    hr: float
    hr_ci_low: float
    hr_ci_high: float
    z: float
    p_value: float
    level: float
    n: int
    n_events: int
    concordance: float
    per: float = 1.0
    reference: str | None = None
    comparison: str | None = None
    # set when the fit cannot be trusted: "<what>: <why and what to do>" (complete separation,
    # a covariate constant within every risk set, no convergence); empty otherwise
    warning: str = ""

    def format(self, digits: int = 2) -> str:
        """'HR 3.41 (95% CI 1.80–6.47)', with '[<what is wrong>]' appended when ``warning`` is set."""
        text = "HR " + fmt_ci(self.hr, self.hr_ci_low, self.hr_ci_high, self.level, digits)
        return f"{text} [{self.warning.split(':')[0]}]" if self.warning else text


def harrell_c(time, event, risk_score) -> float:
    """Harrell's concordance index of a risk score (higher score = shorter time to event).

    Among comparable pairs (the shorter time is an event), the fraction where the patient with the
    shorter time has the higher score; tied scores count 1/2. 0.5 = chance, 1 = perfect ranking.
    """
    from lifelines.utils import concordance_index

    t, e = _check_survival_inputs(time, event)
    r = _checks.finite_float(risk_score, "risk_score")
    _checks.same_length(time=t, risk_score=r)
    if e.sum() == 0:
        raise ValueError("event contains no events: Harrell's C is undefined without events")
    # lifelines expects a score that increases with survival time, hence the minus sign
    try:
        return float(concordance_index(t, -r, e))
    except ZeroDivisionError:
        raise ValueError(f"no comparable pairs: Harrell's C is undefined (a pair is comparable when the "
                         f"shorter time is an event; {int(e.sum())} event(s), the latest at "
                         f"{t[e == 1].max():g}, none before another patient's time)") from None


def _fit_problem(t: np.ndarray, e: np.ndarray, x: np.ndarray) -> str:
    """Why a univariable Cox fit of x has no finite maximum, or "" when it has one.

    The partial likelihood is monotone (complete separation, HR -> 0 or infinity) exactly when
    every event has the highest (or every event the lowest) x of its risk set, and flat when x is
    constant within every risk set at an event time.
    """
    ev = np.nonzero(e == 1)[0]
    hi = lo = flat = True
    for i in ev:
        at_risk = x[t >= t[i]]
        hi &= bool(x[i] >= at_risk.max())
        lo &= bool(x[i] <= at_risk.min())
        flat &= bool(np.ptp(at_risk) == 0)
    if flat:
        return ("not identifiable: x is the same for every patient at risk at each event time (e.g. a "
                "group with no patient at risk at any event time); the HR and its CI mean nothing")
    if hi or lo:
        side = "highest" if hi else "lowest"
        return (f"complete separation: every event had the {side} x of its risk set, so the HR runs to "
                f"{'infinity' if hi else '0'} and its CI is meaningless; report the Kaplan-Meier curves and "
                f"log-rank test, or a penalised (Firth) Cox model")
    return ""


def cox_ph(time, event, x, covariate: str = "score", per: float = 1.0, level: float = 0.95,
           reference: str | None = None, comparison: str | None = None) -> CoxResult:
    """Cox model of (time, event) on one numeric covariate ``x``.

    Args:
        time: (N,) follow-up times >= 0 (months).
        event: (N,) 1 = event, 0 = censored.
        x: (N,) the covariate, e.g. the model's MSOM probability, or a 0/1 group indicator.
        covariate: its name in the result.
        per: the HR is reported per ``per`` units of x (e.g. 0.1 for a probability).
        level: confidence level of the HR's interval.
        reference, comparison: labels of x = 0 and x = 1 when x is a group indicator.
    """
    from lifelines import CoxPHFitter

    level = _checks.level(level)
    t, e = _check_survival_inputs(time, event)
    xv = _checks.finite_float(x, "x")
    _checks.same_length(time=t, event=e, x=xv)
    if not np.isfinite(per) or per <= 0:
        raise ValueError(f"per must be a positive number, got {per}")
    if e.sum() == 0:
        raise ValueError("event contains no events: a Cox model cannot be fitted")
    if np.ptp(xv) == 0:
        raise ValueError(f"x ({covariate}) is constant: its hazard ratio is not identifiable")
    df = pd.DataFrame({"time": t, "event": e, "x": xv / per})
    problem = _fit_problem(t, e, xv)
    from lifelines.exceptions import ConvergenceError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cph = CoxPHFitter(alpha=1 - level).fit(df, duration_col="time", event_col="event")
        except ConvergenceError as exc:
            if not problem:
                raise ValueError(f"the Cox model of {covariate} did not converge: {exc}") from None
            cph = None
        try:
            concordance = float(cph.concordance_index_) if cph is not None else float("nan")
        except ZeroDivisionError:
            concordance = float("nan")
    if cph is None:
        log.warning("Cox model of %s: %s", covariate, problem)
        nan = float("nan")
        return CoxResult(covariate=covariate, coef=nan, se=nan, hr=nan, hr_ci_low=nan, hr_ci_high=nan,
                         z=nan, p_value=nan, level=level, n=int(t.size), n_events=int(e.sum()),
                         concordance=concordance, per=float(per), reference=reference,
                         comparison=comparison, warning=problem)
    row = cph.summary.loc["x"]
    coef, se = float(row["coef"]), float(row["se(coef)"])
    q = float(stats.norm.ppf(0.5 + level / 2))
    if not problem and (not np.isfinite(se) or not np.isfinite(coef + q * se) or abs(coef) + q * se > 700):
        problem = "no convergence: the standard error is not finite; the HR and its CI mean nothing"
    if not problem and any("converge" in str(w.message).lower() for w in caught):
        problem = "no convergence: lifelines' Newton-Raphson did not converge; check the fit"
    if problem:
        log.warning("Cox model of %s: %s", covariate, problem)
    with np.errstate(over="ignore"):    # a separated fit's CI overflows to inf, as R prints it
        hr, ci_low, ci_high = (float(np.exp(v)) for v in (coef, coef - q * se, coef + q * se))
    return CoxResult(covariate=covariate, coef=coef, se=se, hr=hr, hr_ci_low=ci_low, hr_ci_high=ci_high,
                     z=float(row["z"]), p_value=float(row["p"]), level=level, n=int(t.size),
                     n_events=int(e.sum()), concordance=concordance, per=float(per),
                     reference=reference, comparison=comparison, warning=problem)


def cox_risk_group(time, event, group, high: str = "high", low: str = "low",
                   level: float = 0.95) -> CoxResult:
    """HR of the ``high`` risk group versus the ``low`` (reference) group.

    ``group`` holds exactly the labels ``high`` and ``low``; any other label raises.
    """
    g = _checks.labels(group, "group", allowed=[high, low])
    present: Sequence = sorted(set(map(str, g.tolist())))
    if len(present) < 2:
        raise ValueError(f"group contains only {present}; both {high!r} and {low!r} are needed")
    indicator = np.array([v == high for v in g.tolist()], dtype=float)
    res = cox_ph(time, event, indicator, covariate=f"{high} vs {low}", level=level,
                 reference=str(low), comparison=str(high))
    if res.warning:
        e = np.asarray(event, dtype=float)
        none = [str(lab) for lab, m in ((high, indicator == 1), (low, indicator == 0)) if e[m].sum() == 0]
        if none:
            what, why = res.warning.split(":", 1)
            res = dataclasses.replace(res, warning=f"{what}: group {' and '.join(repr(n) for n in none)} "
                                                   f"has no events;{why}")
    return res
