"""Metrics at a cut-off (precision, recall, specificity, accuracy, F1, NPV) with Wilson CIs.

A patient is called positive (high risk) when ``score >= cutoff`` (the study: "high risk = score
>= the best ROC cut-off"; higher score = case, as in ``roc.py``).

Three ways to choose the cut-off, each recorded in the result:

* ``"median"``: the median of the evaluated scores (the study's choice for its metrics table).
* ``"youden_train"``: Youden's best cut-off fitted on the *training* scores and applied to the
  validation scores. This is the honest default: the cut-off never sees the data it is judged on.
* ``"youden_same_data"``: Youden's cut-off chosen on the same scores it is evaluated on (the
  study's "best cut-off from the ROC curve"). Kept for comparison with the paper, and flagged
  ``optimistic=True`` in every output because choosing and judging on the same data inflates
  sensitivity + specificity.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from . import _checks
from ._result import ResultMixin, fmt_ci
from .roc import roc_curve

log = logging.getLogger(__name__)

CUTOFF_METHODS = ("median", "youden_train", "youden_same_data", "given")


def wilson_ci(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion, without continuity correction.

    The same interval as R's ``prop.test(x, n, correct = FALSE)$conf.int`` and
    ``binom::binom.confint(method = "wilson")``. Returns (nan, nan) when ``total`` is 0.
    """
    level = _checks.level(level)
    if total < 0 or successes < 0 or successes > total:
        raise ValueError(f"need 0 <= successes <= total, got successes={successes}, total={total}")
    if total == 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # at p = 0 or 1 the bound is exactly 0 or 1; centre - half leaves rounding error (5.6e-17 at
    # 0 of 7), which put the observed proportion outside its own interval
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == total else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class Proportion(ResultMixin):
    """A metric with its Wilson interval: ``estimate`` = numerator / denominator (nan if 0/0)."""
    estimate: float
    ci_low: float
    ci_high: float
    numerator: int
    denominator: int

    def format(self, digits: int = 3, level: float = 0.95) -> str:
        return fmt_ci(self.estimate, self.ci_low, self.ci_high, level, digits)


def _proportion(k: int, n: int, level: float) -> Proportion:
    lo, hi = wilson_ci(k, n, level)
    return Proportion(k / n if n else math.nan, lo, hi, int(k), int(n))


def _f1(tp: int, fp: int, fn: int, level: float) -> Proportion:
    """F1 with an interval from the Jaccard index.

    F1 is not a binomial proportion, but J = TP / (TP + FP + FN) is one (the cases among the
    patients who are a case or called one), and F1 = 2J / (1 + J) is increasing in J, so the
    Wilson interval of J maps to an interval of F1. numerator/denominator are J's.
    """
    n = tp + fp + fn
    lo, hi = wilson_ci(tp, n, level)
    to_f1 = lambda j: 2 * j / (1 + j) if not math.isnan(j) else math.nan  # noqa: E731
    est = 2 * tp / (2 * tp + fp + fn) if n else math.nan
    return Proportion(est, to_f1(lo), to_f1(hi), int(tp), int(n))


@dataclass(frozen=True)
class ThresholdMetrics(ResultMixin):
    """Confusion counts and metrics at one cut-off, each metric with its Wilson interval.

    ``optimistic`` is True only for a cut-off chosen on the data being evaluated
    (``cutoff_method == "youden_same_data"``): those numbers are biased upwards.
    """
    cutoff: float
    cutoff_method: str
    optimistic: bool
    level: float
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    precision: Proportion
    recall: Proportion
    specificity: Proportion
    accuracy: Proportion
    f1: Proportion
    npv: Proportion

    @property
    def sensitivity(self) -> Proportion:
        return self.recall

    @property
    def label(self) -> str:
        """Human label for tables and legends; the optimistic cut-off says so."""
        names = {"median": "median of scores", "youden_train": "Youden (training cut-off)",
                 "youden_same_data": "Youden (same-data cut-off, optimistic)", "given": "given cut-off"}
        return names.get(self.cutoff_method, self.cutoff_method)

    def as_row(self, digits: int = 3) -> dict:
        """One flat row for a metrics table (estimates and formatted CIs)."""
        row = {"cutoff_method": self.cutoff_method, "label": self.label, "optimistic": self.optimistic,
               "cutoff": self.cutoff, "n": self.n, "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}
        for name in ("precision", "recall", "specificity", "accuracy", "f1", "npv"):
            p: Proportion = getattr(self, name)
            row[name] = p.estimate
            row[f"{name}_ci_low"] = p.ci_low
            row[f"{name}_ci_high"] = p.ci_high
            row[f"{name}_text"] = p.format(digits, self.level)
        return row


def median_cutoff(y_score) -> float:
    """The median of the scores (the study's cut-off)."""
    return float(np.median(_checks.finite_float(y_score, "y_score")))


def youden_cutoff(y_true, y_score) -> float:
    """Youden's best cut-off: the threshold maximising sensitivity + specificity.

    Candidate thresholds are pROC's (midpoints between consecutive distinct scores), so the
    result equals pROC's ``coords(roc, "best", best.method = "youden")``. When several thresholds
    tie, pROC returns all of them; this returns the lowest (the most sensitive), because missing a
    patient who will metastasise costs more than an extra follow-up scan.
    """
    curve = roc_curve(y_true, y_score)
    j = curve.tpr - curve.fpr
    finite = np.isfinite(curve.thresholds)
    j_f = np.where(finite, j, -np.inf)
    best = np.flatnonzero(j_f == j_f.max())
    if best.size > 1:
        log.info("Youden's index ties at %d cut-offs; taking the lowest", best.size)
    cut = float(curve.thresholds[best].min())
    if not np.isfinite(cut):
        # every score equal: pROC's only cut-offs are -Inf / Inf; "everyone positive" as a usable
        # finite cut-off is the lowest score itself
        cut = float(np.min(_checks.finite_float(y_score, "y_score")))
        log.warning("all scores equal: Youden's cut-off is the score itself (everyone called positive)")
    return cut


def threshold_metrics(y_true, y_score, cutoff: float, cutoff_method: str = "given",
                      level: float = 0.95) -> ThresholdMetrics:
    """Metrics of the rule ``score >= cutoff`` on (y_true, y_score).

    Args:
        y_true: (N,) 0/1, 1 = case.
        y_score: (N,) finite scores.
        cutoff: the threshold, in score units.
        cutoff_method: how it was chosen, one of ``CUTOFF_METHODS``; "youden_same_data" marks the
            result optimistic.
        level: confidence level of the Wilson intervals.

    A metric whose denominator is zero (e.g. precision when nobody is called positive) is nan
    with a nan interval, and a warning is logged.
    """
    if cutoff_method not in CUTOFF_METHODS:
        raise ValueError(f"cutoff_method must be one of {CUTOFF_METHODS}, got {cutoff_method!r}")
    if cutoff is None or not np.isfinite(cutoff):
        raise ValueError(f"cutoff must be a finite number, got {cutoff}")
    level = _checks.level(level)
    y = _checks.binary(y_true, "y_true")
    s = _checks.finite_float(y_score, "y_score")
    _checks.same_length(y_true=y, y_score=s)
    pred = s >= cutoff
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    for name, denom in (("precision", tp + fp), ("recall", tp + fn), ("specificity", tn + fp),
                        ("npv", tn + fn)):
        if denom == 0:
            log.warning("%s is undefined at cut-off %.4g (denominator 0)", name, cutoff)
    optimistic = cutoff_method == "youden_same_data"
    if optimistic:
        log.warning("cut-off chosen on the evaluated data (same-data Youden): metrics are optimistic")
    return ThresholdMetrics(
        cutoff=float(cutoff), cutoff_method=cutoff_method, optimistic=optimistic, level=level,
        n=int(y.size), tp=tp, fp=fp, tn=tn, fn=fn,
        precision=_proportion(tp, tp + fp, level), recall=_proportion(tp, tp + fn, level),
        specificity=_proportion(tn, tn + fp, level), accuracy=_proportion(tp + tn, y.size, level),
        f1=_f1(tp, fp, fn, level), npv=_proportion(tn, tn + fn, level))


def metrics_at_cutoffs(y_true, y_score, y_train=None, score_train=None,
                       level: float = 0.95) -> dict[str, ThresholdMetrics]:
    """Metrics on (y_true, y_score) at the median, training-Youden and same-data-Youden cut-offs.

    Args:
        y_true, y_score: the evaluated (validation) set, shapes (N,).
        y_train, score_train: the training set, shapes (M,); when given, the honest
            "youden_train" cut-off is fitted on them. Both or neither.

    Returns:
        {"median": ..., "youden_train": ... (only with training data), "youden_same_data": ...},
        the last with ``optimistic=True``.
    """
    if (y_train is None) != (score_train is None):
        raise ValueError("give both y_train and score_train, or neither")
    out = {"median": threshold_metrics(y_true, y_score, median_cutoff(y_score), "median", level)}
    if y_train is not None:
        out["youden_train"] = threshold_metrics(y_true, y_score, youden_cutoff(y_train, score_train),
                                                "youden_train", level)
    out["youden_same_data"] = threshold_metrics(y_true, y_score, youden_cutoff(y_true, y_score),
                                                "youden_same_data", level)
    return out
