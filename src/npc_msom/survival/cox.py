"""Cox proportional hazards for the risk group and for the continuous score; Harrell's C-index.

lifelines' ``CoxPHFitter`` (Efron's method for ties, like R's ``coxph`` default) does the fit;
this module validates the input, names the covariate and returns a small ``CoxResult``.
"""
from __future__ import annotations

import logging
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

    def format(self, digits: int = 2) -> str:
        """'HR 3.41 (95% CI 1.80–6.47)'."""
        return "HR " + fmt_ci(self.hr, self.hr_ci_low, self.hr_ci_high, self.level, digits)


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
    return float(concordance_index(t, -r, e))


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
    cph = CoxPHFitter(alpha=1 - level).fit(df, duration_col="time", event_col="event")
    row = cph.summary.loc["x"]
    coef, se = float(row["coef"]), float(row["se(coef)"])
    q = float(stats.norm.ppf(0.5 + level / 2))
    return CoxResult(covariate=covariate, coef=coef, se=se, hr=float(np.exp(coef)),
                     hr_ci_low=float(np.exp(coef - q * se)), hr_ci_high=float(np.exp(coef + q * se)),
                     z=float(row["z"]), p_value=float(row["p"]), level=level, n=int(t.size),
                     n_events=int(e.sum()), concordance=float(cph.concordance_index_), per=float(per),
                     reference=reference, comparison=comparison)


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
    return cox_ph(time, event, indicator, covariate=f"{high} vs {low}", level=level,
                  reference=str(low), comparison=str(high))
