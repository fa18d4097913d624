"""The time-to-event view of a risk score: Cox per SD (alone and with N stage) with its
proportional-hazards check, Harrell's and Uno's C, and the cumulative / dynamic AUC at fixed times.

Libraries: lifelines fits the Cox models (Efron's ties, as R's ``coxph``); scikit-survival gives
Uno's C (``concordance_index_ipcw``) and the time-dependent AUC (``cumulative_dynamic_auc``, the
inverse-probability-of-censoring estimator of Uno 2007 / Hung & Chiang 2010, the ``marginal``
weights of R's timeROC). The censoring distribution is the Kaplan-Meier of the patients being
assessed (internal validation patients, or the external cohort), as R's ``concordance`` and
timeROC take it.

The proportional-hazards check is the score test of R ``survival`` >= 3.0 ``cox.zph`` (transform
``"km"``, R's default): at the fitted coefficients, the test that adding ``x * g(t)`` terms
(g = 1 - KM(t-)) improves the partial likelihood, per covariate and globally. lifelines'
``proportional_hazard_test`` is the older scaled-residual approximation and gives other numbers
than today's R, so it is not used.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..evaluation._result import ResultMixin, fmt_ci
from .km import _check_survival_inputs

log = logging.getLogger(__name__)

HORIZONS_MONTHS = (12.0, 24.0, 36.0)


@dataclass(frozen=True)
class CoxTerm(ResultMixin):
    """One covariate of a Cox model: HR per ``per`` units with its Wald CI and p, and the
    Schoenfeld (cox.zph) chi-square and p of its proportional-hazards assumption."""
    name: str
    coef: float
    se: float
    hr: float
    hr_ci_low: float
    hr_ci_high: float
    p_value: float
    per: float
    ph_chi2: float
    ph_p: float

    def format(self, level: float = 0.95, digits: int = 2) -> str:
        return "HR " + fmt_ci(self.hr, self.hr_ci_low, self.hr_ci_high, level, digits)


@dataclass(frozen=True)
class CoxModel(ResultMixin):
    """A Cox model of several covariates, its concordance and the global PH test."""
    terms: list[CoxTerm]
    n: int
    n_events: int
    level: float
    concordance: float
    ph_global_chi2: float
    ph_global_df: int
    ph_global_p: float
    warning: str = ""


@dataclass(frozen=True)
class TimeAUC(ResultMixin):
    """Cumulative / dynamic AUC at ``time``: cases have the event by ``time``, controls are event-free
    beyond it. ``n_cases`` / ``n_controls`` are the patients counted (before weighting)."""
    time: float
    auc: float
    n_cases: int
    n_controls: int
    note: str = ""


def _surv_y(t: np.ndarray, e: np.ndarray):
    from sksurv.util import Surv  # noqa: PLC0415
    return Surv.from_arrays(event=e.astype(bool), time=t)


def uno_c(time, event, score, tau: float | None = None) -> float:
    """Uno's C (IPCW concordance, censoring weights 1/G(t)^2), truncated at ``tau`` when given."""
    from sksurv.metrics import concordance_index_ipcw  # noqa: PLC0415
    t, e = _check_survival_inputs(time, event)
    s = np.asarray(score, dtype=float)
    if e.sum() == 0:
        raise ValueError("event contains no events: Uno's C is undefined without events")
    y = _surv_y(t, e)
    return float(concordance_index_ipcw(y, y, s, tau=tau)[0])


def time_dependent_auc(time, event, score, times: Sequence[float] = HORIZONS_MONTHS) -> list[TimeAUC]:
    """Cumulative / dynamic AUC of ``score`` at each of ``times`` (months); a time with no case or
    no control, or past the last follow-up, gets NaN and a note instead of an error."""
    from sksurv.metrics import cumulative_dynamic_auc  # noqa: PLC0415
    t, e = _check_survival_inputs(time, event)
    s = np.asarray(score, dtype=float)
    y = _surv_y(t, e)
    out = []
    for h in times:
        n_cases, n_controls = int(((t <= h) & (e == 1)).sum()), int((t > h).sum())
        note = ""
        if n_cases == 0:
            note = f"no event by {h:g} months"
        elif n_controls == 0:
            note = f"nobody followed beyond {h:g} months"
        auc = math.nan
        if not note:
            try:
                auc = float(cumulative_dynamic_auc(y, y, s, [h])[0][0])
            except ValueError as exc:
                note = str(exc)
        out.append(TimeAUC(time=float(h), auc=auc, n_cases=n_cases, n_controls=n_controls, note=note))
    return out


def _km_transform(t: np.ndarray, e: np.ndarray, event_times: np.ndarray) -> np.ndarray:
    """1 - KM(u-) of (t, e) at each event time u (R cox.zph's ``transform = "km"``)."""
    s, out = 1.0, []
    for u in event_times:
        out.append(1.0 - s)
        s *= 1.0 - ((t == u) & (e == 1)).sum() / (t >= u).sum()
    return np.asarray(out)


def schoenfeld_test(time, event, X, beta) -> tuple[list[float], float]:
    """cox.zph's score test (R survival >= 3, transform "km", Efron ties) at the fitted ``beta``.

    Returns ([chi-square per column of X], global chi-square); each per-column test has 1 df, the
    global one X.shape[1].
    """
    t, e = _check_survival_inputs(time, event)
    X = np.asarray(X, dtype=float).reshape(len(t), -1)
    beta = np.asarray(beta, dtype=float)
    p = X.shape[1]
    w = np.exp((X - X.mean(0)) @ beta)
    event_times = np.unique(t[e == 1])
    g = _km_transform(t, e, event_times)
    u = np.zeros(p)
    info = np.zeros((2 * p, 2 * p))
    for gu, tu in zip(g, event_times):
        risk, dead = t >= tu, (t == tu) & (e == 1)
        d = int(dead.sum())
        wr, xr, wd, xd = w[risk], X[risk], w[dead], X[dead]
        s0r, s1r, s2r = wr.sum(), wr @ xr, np.einsum("i,ij,ik->jk", wr, xr, xr)
        s0d, s1d, s2d = wd.sum(), wd @ xd, np.einsum("i,ij,ik->jk", wd, xd, xd)
        xbar, v = np.zeros(p), np.zeros((p, p))
        for k in range(d):                       # Efron: the tied deaths leave the risk set in steps
            f = k / d
            s0, s1, s2 = s0r - f * s0d, s1r - f * s1d, s2r - f * s2d
            m = s1 / s0
            xbar += m
            v += s2 / s0 - np.outer(m, m)
        u += gu * (xd.sum(0) - xbar)
        info[:p, :p] += v
        info[:p, p:] += gu * v
        info[p:, :p] += gu * v
        info[p:, p:] += gu * gu * v
    i11, i12, i22 = info[:p, :p], info[:p, p:], info[p:, p:]
    cond = i22 - i12.T @ np.linalg.solve(i11, i12)
    per = [float(u[k] ** 2 / (i22[k, k] - i12[:, k] @ np.linalg.solve(i11, i12[:, k]))) for k in range(p)]
    return per, float(u @ np.linalg.solve(cond, u))


def cox_model(time, event, covariates: pd.DataFrame, per: dict[str, float] | None = None,
              level: float = 0.95) -> CoxModel:
    """Cox model of (time, event) on the columns of ``covariates`` (numeric, complete), HR per
    ``per[column]`` units (default 1), with cox.zph's per-term and global PH tests."""
    from lifelines import CoxPHFitter  # noqa: PLC0415
    from lifelines.exceptions import ConvergenceError  # noqa: PLC0415
    t, e = _check_survival_inputs(time, event)
    cov = covariates.reset_index(drop=True).astype(float)
    if len(cov) != len(t):
        raise ValueError(f"covariates have {len(cov)} rows for {len(t)} times")
    if cov.isna().any().any():
        raise ValueError(f"covariates contain missing values: {list(cov.columns[cov.isna().any()])}")
    if e.sum() == 0:
        raise ValueError("event contains no events: a Cox model cannot be fitted")
    per = {c: float((per or {}).get(c, 1.0)) for c in cov.columns}
    constant = [c for c in cov.columns if np.ptp(cov[c].to_numpy()) == 0]
    if constant:
        raise ValueError(f"covariate(s) {constant} are constant: their hazard ratio is not identifiable")
    scaled = cov / pd.Series(per)
    df = scaled.assign(_time=t, _event=e)
    q = float(stats.norm.ppf(0.5 + level / 2))
    warning = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cph = CoxPHFitter(alpha=1 - level).fit(df, duration_col="_time", event_col="_event")
        except ConvergenceError as exc:
            raise ValueError(f"the Cox model of {list(cov.columns)} did not converge: {exc}") from None
    if any("converge" in str(w.message).lower() for w in caught):
        warning = "no convergence: lifelines' Newton-Raphson did not converge (separation?); the HRs mean little"
    beta = cph.params_.reindex(scaled.columns).to_numpy(dtype=float)
    try:
        per_chi2, glob = schoenfeld_test(t, e, scaled.to_numpy(), beta)
    except np.linalg.LinAlgError:
        per_chi2, glob = [math.nan] * len(beta), math.nan
    terms = []
    for k, c in enumerate(scaled.columns):
        row = cph.summary.loc[c]
        coef, se = float(row["coef"]), float(row["se(coef)"])
        with np.errstate(over="ignore"):
            hr, lo, hi = (float(np.exp(v)) for v in (coef, coef - q * se, coef + q * se))
        terms.append(CoxTerm(name=str(c), coef=coef, se=se, hr=hr, hr_ci_low=lo, hr_ci_high=hi,
                             p_value=float(row["p"]), per=per[c], ph_chi2=per_chi2[k],
                             ph_p=float(stats.chi2.sf(per_chi2[k], 1)) if np.isfinite(per_chi2[k]) else math.nan))
    return CoxModel(terms=terms, n=int(len(t)), n_events=int(e.sum()), level=level,
                    concordance=float(cph.concordance_index_), ph_global_chi2=glob, ph_global_df=len(terms),
                    ph_global_p=float(stats.chi2.sf(glob, len(terms))) if np.isfinite(glob) else math.nan,
                    warning=warning)


N_STAGE_ORDINAL = {"N0": 0, "N1": 1, "N2": 2, "N3": 3}


@dataclass(frozen=True)
class ScoreSurvival(ResultMixin):
    """The time-to-event view of one model's score on one endpoint (see ``score_survival``)."""
    endpoint: str
    n: int
    n_events: int
    score_sd: float
    cox_score: CoxModel | None
    cox_score_n_stage: CoxModel | None
    harrell_c: float
    uno_c: float
    uno_tau: float | None
    time_auc: list[TimeAUC] = field(default_factory=list)
    note: str = ""


def score_survival(time, event, score, n_stage=None, endpoint: str = "DMFS",
                   horizons: Sequence[float] = HORIZONS_MONTHS, level: float = 0.95) -> ScoreSurvival:
    """Cox of the endpoint on the score per SD (alone, and with N stage as an ordinal N0-N3 term),
    Harrell's and Uno's C (Uno's truncated at the last horizon within follow-up) and the
    time-dependent AUC at ``horizons``. Each part that cannot be computed is NaN with a note."""
    from .cox import harrell_c as _harrell  # noqa: PLC0415
    t, e = _check_survival_inputs(time, event)
    s = np.asarray(score, dtype=float)
    sd = float(np.std(s, ddof=1)) if len(s) > 1 else math.nan
    notes = []
    cox1 = cox2 = None
    hc = uc = math.nan
    if e.sum() == 0 or not np.isfinite(sd) or sd == 0:
        notes.append("no events" if e.sum() == 0 else "the score is constant")
        return ScoreSurvival(endpoint=endpoint, n=len(t), n_events=int(e.sum()), score_sd=sd, cox_score=None,
                             cox_score_n_stage=None, harrell_c=hc, uno_c=uc, uno_tau=None,
                             time_auc=time_dependent_auc(t, e, s, horizons), note="; ".join(notes))
    try:
        cox1 = cox_model(t, e, pd.DataFrame({"score": s}), per={"score": sd}, level=level)
    except ValueError as exc:
        notes.append(f"Cox on the score: {exc}")
    if n_stage is not None:
        ns = pd.Series(list(n_stage)).map(lambda v: N_STAGE_ORDINAL.get(str(v), np.nan)).to_numpy(dtype=float)
        ok = np.isfinite(ns)
        if ok.sum() < len(ns):
            notes.append(f"{int((~ok).sum())} patient(s) without N stage left out of the model with N stage")
        try:
            cox2 = cox_model(t[ok], e[ok], pd.DataFrame({"score": s[ok], "n_stage": ns[ok]}),
                             per={"score": sd}, level=level)
        except ValueError as exc:
            notes.append(f"Cox on the score and N stage: {exc}")
    try:
        hc = _harrell(t, e, s)
    except ValueError as exc:
        notes.append(f"Harrell's C: {exc}")
    within = [h for h in horizons if h < t.max()]
    tau = float(max(within)) if within else None
    try:
        uc = uno_c(t, e, s, tau=tau)
    except ValueError as exc:
        notes.append(f"Uno's C: {exc}")
    return ScoreSurvival(endpoint=endpoint, n=len(t), n_events=int(e.sum()), score_sd=sd, cox_score=cox1,
                         cox_score_n_stage=cox2, harrell_c=hc, uno_c=uc, uno_tau=tau,
                         time_auc=time_dependent_auc(t, e, s, horizons), note="; ".join(notes))


TIME_TO_EVENT_COLUMNS = (
    "key", "label", "population", "endpoint", "n", "events",
    "hr_per_sd", "hr_ci_low", "hr_ci_high", "hr_p", "ph_p",
    "adj_hr_per_sd", "adj_hr_ci_low", "adj_hr_ci_high", "adj_hr_p", "n_stage_hr", "n_stage_p", "adj_ph_global_p",
    "harrell_c", "uno_c", "uno_tau", *(f"auc_{h:g}m" for h in HORIZONS_MONTHS), "note")


def time_to_event_row(v: ScoreSurvival, **ids) -> dict:
    """One flat row of TIME_TO_EVENT_COLUMNS (``ids``: key, label, population) of a ScoreSurvival."""
    row = {c: math.nan for c in TIME_TO_EVENT_COLUMNS}
    row.update(ids, endpoint=v.endpoint, n=v.n, events=v.n_events, harrell_c=v.harrell_c, uno_c=v.uno_c,
               uno_tau=v.uno_tau if v.uno_tau is not None else math.nan, note=v.note)
    if v.cox_score is not None:
        s = v.cox_score.terms[0]
        row.update(hr_per_sd=s.hr, hr_ci_low=s.hr_ci_low, hr_ci_high=s.hr_ci_high, hr_p=s.p_value, ph_p=s.ph_p)
    if v.cox_score_n_stage is not None:
        s, n = v.cox_score_n_stage.terms
        row.update(adj_hr_per_sd=s.hr, adj_hr_ci_low=s.hr_ci_low, adj_hr_ci_high=s.hr_ci_high, adj_hr_p=s.p_value,
                   n_stage_hr=n.hr, n_stage_p=n.p_value, adj_ph_global_p=v.cox_score_n_stage.ph_global_p)
    for a in v.time_auc:
        if f"auc_{a.time:g}m" in row:
            row[f"auc_{a.time:g}m"] = a.auc
    return row
