"""ROC curves, AUC with DeLong or stratified-bootstrap CIs, and DeLong's paired test.

Conventions (the same as R's pROC with ``direction = "<"``, which this module is tested against):

* ``y_true`` is 0/1, 1 = case (MSOM), 0 = control.
* A **higher score means a case**: controls < cases. The direction is fixed, never chosen from the
  data (pROC's ``direction = "auto"`` picks it from the medians, which makes a useless model look
  better than chance); an AUC below 0.5 is therefore reported as it is.
* Ties between a case and a control count one half (the Mann–Whitney / midrank convention).

DeLong's variance is computed with the fast algorithm of Sun & Xu (IEEE Signal Processing Letters
2014; 21(11):1389-93), which needs only midranks: O(N log N) instead of DeLong's O(m n).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from . import _checks
from ._result import ResultMixin, fmt_ci

log = logging.getLogger(__name__)

CI_METHODS = ("delong", "bootstrap")


@dataclass(frozen=True)
class AUCResult(ResultMixin):
    """Area under the ROC curve with its confidence interval.

    ``method`` is "delong" or "bootstrap"; ``n_boot`` and ``seed`` are set for the bootstrap.
    """
    auc: float
    ci_low: float
    ci_high: float
    method: str
    level: float
    n_pos: int
    n_neg: int
    n_boot: int | None = None
    seed: int | None = None
    # why the interval is not an ordinary one (zero width, undefined); empty otherwise
    note: str = ""

    def format(self, digits: int = 3) -> str:
        """'0.733 (95% CI 0.559–0.909)', with '[note]' appended when ``note`` is set."""
        text = fmt_ci(self.auc, self.ci_low, self.ci_high, self.level, digits)
        return f"{text} [{self.note}]" if self.note else text


def _zero_width_note(auc: float, lo: float, hi: float) -> str:
    """A note for an interval of zero width: it shows no sampling uncertainty, not certainty."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo > 1e-12:
        return ""
    why = ("the scores separate cases from controls perfectly" if auc in (0.0, 1.0)
           else "every case-control pair is tied" if auc == 0.5 else "no case-control pair varies")
    note = f"zero-width CI: {why}, so the interval shows no sampling uncertainty"
    log.warning("AUC %.3f: %s", auc, note)
    return note


@dataclass(frozen=True)
class DeLongTestResult(ResultMixin):
    """DeLong's test of two correlated ROC curves (same patients, two scores).

    ``difference`` = auc_a - auc_b; ``z`` = difference / SE; two-sided ``p_value``; ``ci_low`` and
    ``ci_high`` bound the difference at ``level``. Matches pROC's ``roc.test(roc_a, roc_b)``.
    """
    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    level: float
    n_pos: int
    n_neg: int
    method: str = "DeLong's test for two correlated ROC curves"


@dataclass(frozen=True, eq=False)
class ROCCurve(ResultMixin):
    """Empirical ROC curve, points ordered by increasing ``fpr``.

    ``thresholds`` follow pROC: +inf, the midpoints between consecutive distinct scores, -inf;
    a patient is called positive when ``score >= threshold``. Arrays have shape (k,).
    """
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)
    n_pos: int = 0
    n_neg: int = 0

    @property
    def specificity(self) -> np.ndarray:
        return 1.0 - self.fpr


def _prepare(y_true, y_score, score_name: str = "y_score") -> tuple[np.ndarray, np.ndarray, int, int]:
    y = _checks.binary(y_true, "y_true")
    s = _checks.finite_float(y_score, score_name)
    _checks.same_length(y_true=y, **{score_name: s})
    n_pos, n_neg = _checks.both_classes(y, "y_true")
    return y, s, n_pos, n_neg


def delong_placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong structural components of k scores on the same patients (Sun & Xu 2014).

    Args:
        y: (N,) 0/1, both classes present (not re-checked here).
        scores: (k, N) float scores, higher = case.

    Returns:
        aucs (k,), v10 (k, m) placements of the m cases, v01 (k, n) placements of the n controls.
        v10[i] is the fraction of controls below case i (ties count 1/2); mean(v10) = AUC.
    """
    scores = np.atleast_2d(scores)
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = stats.rankdata(pos, method="average", axis=1)
    ty = stats.rankdata(neg, method="average", axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    # rank among all minus rank among cases = number of controls below (midranks give ties 1/2)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k); divisors m-1 and n-1 as in pROC.

    The covariance is nan when there are fewer than 2 cases or 2 controls.
    """
    aucs, v10, v01 = delong_placements(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        return aucs, np.full((len(aucs), len(aucs)), np.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def bootstrap_aucs(y_true, y_score, n_boot: int = 2000, seed: int = 0,
                   max_block_elements: int = 20_000_000) -> np.ndarray:
    """AUCs of ``n_boot`` stratified bootstrap resamples, vectorised: shape (n_boot,).

    Cases and controls are resampled separately (each with replacement, keeping m and n), as
    pROC does with ``boot.stratified = TRUE``. Each resample is an index matrix row turned into
    multiplicities; its AUC is then a weighted count of control scores below each case score,
    read from a cumulative sum over the sorted controls, so no resample is ever sorted again.
    Resamples are processed in blocks of at most ``max_block_elements`` numbers of memory.
    """
    y, s, m, n = _prepare(y_true, y_score)
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be a positive number of resamples, got {n_boot}")
    n_boot = int(n_boot)
    rng = np.random.default_rng(seed)
    pos = s[y == 1]
    order = np.argsort(s[y == 0], kind="stable")
    neg_sorted = s[y == 0][order]
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[order] = np.arange(n)
    # controls strictly below / at most each case score, in the sorted order
    lo = np.searchsorted(neg_sorted, pos, side="left")
    hi = np.searchsorted(neg_sorted, pos, side="right")

    block = max(1, int(max_block_elements // (m + n + 1)))
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx_pos = rng.integers(0, m, size=(b, m))
        idx_neg = rng.integers(0, n, size=(b, n))
        row = np.arange(b)[:, None]
        w_pos = np.bincount((idx_pos + row * m).ravel(), minlength=b * m).reshape(b, m)
        w_neg = np.bincount((rank_of[idx_neg] + row * n).ravel(), minlength=b * n).reshape(b, n)
        cum = np.zeros((b, n + 1), dtype=np.float64)
        np.cumsum(w_neg, axis=1, out=cum[:, 1:])
        below = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])
        out[start:start + b] = np.einsum("ij,ij->i", w_pos, below) / (m * n)
    return out


def roc_auc(y_true, y_score, ci: str = "delong", level: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> AUCResult:
    """AUC of ``y_score`` for ``y_true`` with a confidence interval.

    Args:
        y_true: (N,) 0/1, 1 = case. Both classes must be present.
        y_score: (N,) finite scores; higher = more likely a case (pROC's direction "<").
        ci: "delong" (Sun & Xu fast DeLong; normal interval clipped to [0, 1], as pROC's
            ``ci.auc``) or "bootstrap" (stratified percentile bootstrap, R's type-7 quantiles,
            as pROC's ``ci.auc(method = "bootstrap")``).
        level: confidence level, e.g. 0.95.
        n_boot, seed: number of bootstrap resamples and the seed of NumPy's default generator
            (bootstrap only; the interval is reproducible for a given seed, not equal to R's).

    With fewer than 2 cases or 2 controls the DeLong interval is nan (pROC: NA).

    Raises:
        ValueError: NaN or infinite scores, labels other than 0/1, a single class, lengths that
            differ, an unknown ``ci``.
    """
    if ci not in CI_METHODS:
        raise ValueError(f"ci must be one of {CI_METHODS}, got {ci!r}")
    level = _checks.level(level)
    y, s, n_pos, n_neg = _prepare(y_true, y_score)
    z = stats.norm.ppf(0.5 + level / 2)
    if ci == "delong":
        if min(n_pos, n_neg) < 2:
            # DeLong's variance needs two of each class (pROC returns NA here too)
            log.warning("DeLong CI undefined with %d case(s) and %d control(s); reported as nan", n_pos, n_neg)
            auc = float(delong_placements(y, s[None, :])[0][0])
            return AUCResult(auc, math.nan, math.nan, "delong", level, n_pos, n_neg,
                             note=f"no CI: DeLong's variance needs 2 cases and 2 controls "
                                  f"({n_pos} and {n_neg})")
        aucs, cov = delong_covariance(y, s[None, :])
        auc = float(aucs[0])
        se = float(np.sqrt(max(cov[0, 0], 0.0)))
        lo, hi = float(max(auc - z * se, 0.0)), float(min(auc + z * se, 1.0))
        return AUCResult(auc, lo, hi, "delong", level, n_pos, n_neg, note=_zero_width_note(auc, lo, hi))
    auc = float(delong_placements(y, s[None, :])[0][0])
    boots = bootstrap_aucs(y, s, n_boot=n_boot, seed=seed)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return AUCResult(auc, float(lo), float(hi), "bootstrap", level, n_pos, n_neg,
                     n_boot=int(n_boot), seed=int(seed), note=_zero_width_note(auc, float(lo), float(hi)))


def delong_test(y_true, score_a, score_b, level: float = 0.95) -> DeLongTestResult:
    """Paired DeLong test of AUC(score_a) = AUC(score_b) on the same patients.

    Args:
        y_true: (N,) 0/1, 1 = case.
        score_a, score_b: (N,) scores of two models on the same N patients, higher = case.
        level: confidence level of the interval of the difference.

    Returns:
        ``DeLongTestResult``; identical curves give z = 0 and p = 1, as in pROC.
    """
    level = _checks.level(level)
    y = _checks.binary(y_true, "y_true")
    a = _checks.finite_float(score_a, "score_a")
    b = _checks.finite_float(score_b, "score_b")
    _checks.same_length(y_true=y, score_a=a, score_b=b)
    n_pos, n_neg = _checks.both_classes(y, "y_true")
    if min(n_pos, n_neg) < 2:
        raise ValueError(f"DeLong's test needs at least 2 cases and 2 controls, got {n_pos} and {n_neg}")
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        # same ranking of every case-control pair: no evidence of a difference
        z, p = (0.0, 1.0) if diff == 0.0 else (float(np.sign(diff) * np.inf), 0.0)
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    q = stats.norm.ppf(0.5 + level / 2)
    return DeLongTestResult(float(aucs[0]), float(aucs[1]), diff, se, float(z), p,
                            float(diff - q * se), float(diff + q * se), level, n_pos, n_neg)


def roc_curve(y_true, y_score) -> ROCCurve:
    """Empirical ROC curve with pROC's thresholds (see ``ROCCurve``)."""
    y, s, n_pos, n_neg = _prepare(y_true, y_score)
    u = np.unique(s)
    mids = (u[:-1] + u[1:]) / 2.0
    thresholds = np.concatenate([[np.inf], mids[::-1], [-np.inf]])
    pos = np.sort(s[y == 1])
    neg = np.sort(s[y == 0])
    tpr = (n_pos - np.searchsorted(pos, thresholds, side="left")) / n_pos
    fpr = (n_neg - np.searchsorted(neg, thresholds, side="left")) / n_neg
    return ROCCurve(fpr=fpr, tpr=tpr, thresholds=thresholds, n_pos=n_pos, n_neg=n_neg)
