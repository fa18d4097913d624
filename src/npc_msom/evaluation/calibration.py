"""Calibration (Brier score, calibration intercept and slope, binned curve) and decision curves.

Definitions follow Van Calster et al., "Calibration: the Achilles heel of predictive analytics"
(BMC Medicine 2019; 17:230) and Vickers & Elkin, "Decision curve analysis" (Med Decis Making 2006;
26:565-74):

* calibration **slope** b: logistic regression ``logit P(y=1) = a + b * logit(p)``; 1 is ideal,
  < 1 means predictions too extreme (over-fitting).
* calibration **intercept** (calibration-in-the-large) a: ``logit P(y=1) = a + offset(logit(p))``,
  i.e. with the slope fixed at 1; 0 is ideal, < 0 means risks overestimated on average.
* **net benefit** at threshold probability pt: TP/N - FP/N * pt / (1 - pt), treating patients with
  p >= pt; "treat all" is prevalence - (1 - prevalence) * pt / (1 - pt); "treat none" is 0.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats

from . import _checks
from ._result import ResultMixin
from .thresholds import wilson_ci

log = logging.getLogger(__name__)

# predictions are clipped this far from 0 and 1 before the logit, so that a model that outputs
# exactly 0 or 1 still has a finite linear predictor
_EPS = 1e-8


@dataclass(frozen=True)
class CalibrationBin(ResultMixin):
    """One bin of the calibration curve: predicted vs observed risk, observed with a Wilson CI."""
    lower: float
    upper: float
    n: int
    n_events: int
    mean_predicted: float
    observed: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class CalibrationResult(ResultMixin):
    """Calibration of predicted probabilities.

    ``brier`` is mean((p - y)^2); ``brier_null`` is the Brier score of predicting the prevalence
    for everybody, the score to beat. ``intercept``/``slope`` with Wald CIs at ``level`` (nan when
    the logistic fit does not exist, e.g. perfect separation). ``bins`` is the binned curve.
    """
    brier: float
    brier_null: float
    intercept: float
    intercept_ci_low: float
    intercept_ci_high: float
    slope: float
    slope_ci_low: float
    slope_ci_high: float
    n: int
    n_events: int
    level: float
    strategy: str
    bins: tuple[CalibrationBin, ...]
    # what was done to the data or could not be estimated (e.g. predictions of exactly 0 or 1
    # clipped before the logit); empty when nothing
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class DecisionCurve(ResultMixin):
    """Net benefit of the model, of treating all and of treating none, at each threshold (k,)."""
    thresholds: np.ndarray = field(repr=False)
    net_benefit: np.ndarray = field(repr=False)
    treat_all: np.ndarray = field(repr=False)
    treat_none: np.ndarray = field(repr=False)
    prevalence: float = math.nan
    n: int = 0


def _logistic_fit(x: np.ndarray | None, y: np.ndarray, offset: np.ndarray,
                  max_iter: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray] | None:
    """Unpenalised logistic regression by Newton-Raphson (IRLS).

    Model: logit P(y=1) = b0 + b1 * x + offset (x None: intercept only). Returns (coefficients,
    standard errors) or None when it does not converge (separation drives a coefficient to
    infinity).
    """
    n = y.size
    X = np.ones((n, 1)) if x is None else np.column_stack([np.ones(n), x])
    beta = np.zeros(X.shape[1])
    for _ in range(max_iter):
        eta = X @ beta + offset
        mu = special.expit(eta)     # no overflow warning when separation drives eta far out
        w = mu * (1 - mu)
        info = X.T @ (X * w[:, None])
        grad = X.T @ (y - mu)
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.all(np.isfinite(beta)) or np.max(np.abs(beta)) > 1e6:
            return None
        if np.max(np.abs(step)) < tol:
            eta = X @ beta + offset
            mu = 1.0 / (1.0 + np.exp(-eta))
            info = X.T @ (X * (mu * (1 - mu))[:, None])
            try:
                cov = np.linalg.inv(info)
            except np.linalg.LinAlgError:
                return None
            return beta, np.sqrt(np.diag(cov))
    return None


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    if edges.size < 2:  # every prediction equal: a single bin
        edges = np.array([p.min(), p.max()])
    return edges


def calibration(y_true, y_prob, n_bins: int = 10, strategy: str = "quantile",
                level: float = 0.95) -> CalibrationResult:
    """Brier score, calibration intercept and slope, and a binned calibration curve.

    Args:
        y_true: (N,) 0/1 outcomes.
        y_prob: (N,) predicted probabilities in [0, 1].
        n_bins: number of bins of the curve.
        strategy: "quantile" (bins of equal size; fewer if predictions tie) or "uniform"
            (equal-width bins on [0, 1]; empty bins are left out).
        level: confidence level of the intercept/slope Wald CIs and of the bins' Wilson CIs.
    """
    if strategy not in ("quantile", "uniform"):
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    level = _checks.level(level)
    y = _checks.binary(y_true, "y_true").astype(np.float64)
    p = _checks.probabilities(y_prob, "y_prob")
    _checks.same_length(y_true=y, y_prob=p)
    _checks.both_classes(y.astype(np.int8), "y_true")
    z = float(stats.norm.ppf(0.5 + level / 2))

    prev = float(y.mean())
    brier = float(np.mean((p - y) ** 2))
    brier_null = prev * (1 - prev)
    lp = np.log(np.clip(p, _EPS, 1 - _EPS) / (1 - np.clip(p, _EPS, 1 - _EPS)))
    notes: list[str] = []
    n_clipped = int(((p < _EPS) | (p > 1 - _EPS)).sum())
    if n_clipped:
        notes.append(f"{n_clipped} prediction(s) of exactly 0 or 1 (within {_EPS:g}) were clipped to "
                     f"[{_EPS:g}, 1 - {_EPS:g}] before the logit of the intercept and slope; the Brier "
                     f"score and the curve use them as they are")
        log.warning("calibration: %s", notes[-1])

    nan3 = (math.nan, math.nan, math.nan)
    fit_a = _logistic_fit(None, y, offset=lp)
    a = nan3 if fit_a is None else (float(fit_a[0][0]), float(fit_a[0][0] - z * fit_a[1][0]),
                                     float(fit_a[0][0] + z * fit_a[1][0]))
    if np.ptp(lp) == 0:
        fit_b = None  # constant predictions: the slope is not identifiable
    else:
        fit_b = _logistic_fit(lp, y, offset=np.zeros_like(y))
    b = nan3 if fit_b is None else (float(fit_b[0][1]), float(fit_b[0][1] - z * fit_b[1][1]),
                                    float(fit_b[0][1] + z * fit_b[1][1]))
    if fit_a is None or fit_b is None:
        notes.append("calibration intercept or slope could not be estimated (constant predictions "
                     "or perfect separation); reported as nan")
        log.warning("%s", notes[-1])

    edges = _bin_edges(p, int(n_bins), strategy)
    # right-closed last bin so that p == 1 (or the maximum) falls inside
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, edges.size - 2)
    bins = []
    for k in range(edges.size - 1):
        sel = which == k
        nk = int(sel.sum())
        if nk == 0:
            continue
        ek = int(y[sel].sum())
        lo, hi = wilson_ci(ek, nk, level)
        bins.append(CalibrationBin(float(edges[k]), float(edges[k + 1]), nk, ek,
                                   float(p[sel].mean()), ek / nk, lo, hi))
    return CalibrationResult(brier, brier_null, *a, *b, n=int(y.size), n_events=int(y.sum()),
                             level=level, strategy=strategy, bins=tuple(bins), notes=tuple(notes))


def decision_curve(y_true, y_prob, thresholds=None) -> DecisionCurve:
    """Net benefit over threshold probabilities (Vickers & Elkin 2006).

    Args:
        y_true: (N,) 0/1 outcomes.
        y_prob: (N,) predicted probabilities in [0, 1]; a patient is treated when p >= pt.
        thresholds: threshold probabilities in (0, 1), shape (k,); default 0.01, 0.02, ..., 0.99.
    """
    y = _checks.binary(y_true, "y_true")
    p = _checks.probabilities(y_prob, "y_prob")
    _checks.same_length(y_true=y, y_prob=p)
    if thresholds is None:
        pt = np.round(np.arange(1, 100) / 100.0, 2)
    else:
        pt = _checks.finite_float(thresholds, "thresholds")
        bad = (pt <= 0) | (pt >= 1)
        if bad.any():
            raise ValueError(f"thresholds must lie strictly between 0 and 1; {int(bad.sum())} do not")
    n = y.size
    prev = float(y.mean())
    treated = p[None, :] >= pt[:, None]
    tp = (treated & (y[None, :] == 1)).sum(axis=1)
    fp = (treated & (y[None, :] == 0)).sum(axis=1)
    odds = pt / (1 - pt)
    nb = tp / n - fp / n * odds
    treat_all = prev - (1 - prev) * odds
    return DecisionCurve(thresholds=pt, net_benefit=nb, treat_all=treat_all,
                         treat_none=np.zeros_like(pt), prevalence=prev, n=int(n))


RECALIBRATION_METHODS = ("intercept", "intercept+slope")


def recalibrate(y_true, y_prob, method: str = "intercept") -> tuple[np.ndarray, dict]:
    """Logistic recalibration of probabilities on the patients ``y_true`` belongs to.

    ``intercept``: logit p' = a + logit p (calibration-in-the-large only; the ranking and the
    slope stay). ``intercept+slope``: logit p' = b0 + b1 logit p. Returns (p', {"method", the
    coefficients}). These are fitted on the outcomes they are then judged on: label the result so.
    """
    if method not in RECALIBRATION_METHODS:
        raise ValueError(f"method must be one of {RECALIBRATION_METHODS}, got {method!r}")
    y = _checks.binary(y_true, "y_true").astype(np.float64)
    p = _checks.probabilities(y_prob, "y_prob")
    _checks.same_length(y_true=y, y_prob=p)
    _checks.both_classes(y.astype(np.int8), "y_true")
    lp = np.log(np.clip(p, _EPS, 1 - _EPS) / (1 - np.clip(p, _EPS, 1 - _EPS)))
    if method == "intercept":
        fit = _logistic_fit(None, y, offset=lp)
        if fit is None:
            raise ValueError("the recalibration intercept could not be estimated (perfect separation)")
        a, b = float(fit[0][0]), 1.0
    else:
        fit = None if np.ptp(lp) == 0 else _logistic_fit(lp, y, offset=np.zeros_like(y))
        if fit is None:
            raise ValueError("the recalibration intercept and slope could not be estimated "
                             "(constant predictions or perfect separation)")
        a, b = float(fit[0][0]), float(fit[0][1])
    new = 1.0 / (1.0 + np.exp(-(a + b * lp)))
    return new, {"method": method, "intercept": a, "slope": b}
