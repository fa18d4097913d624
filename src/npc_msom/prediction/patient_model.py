"""The patient-level MSOM models: penalised logistic regressions on one vector per patient.

Why not another neural head: 140 training patients and a few hundred imaging dimensions is the
regime of penalised regression, whose strength can be chosen by cross-validation on the training
patients in seconds. Why groups: a ridge on ~12 burden descriptors next to ~800 region features
lets the many weak deep dimensions take the place of the few strong burden ones (the same
swamping the study's fusion head showed with the clinical vector). So each input group is
standardised and scaled by ``weight / sqrt(p)``, which gives every group the same total prior
variance under the L2 penalty whatever its width, and the deep group's weight (0 = burden only)
and the penalty C are chosen together by inner stratified CV on the training patients (mean
out-of-fold deviance, the glmnet default). Nothing here sees a validation patient: callers pass
training rows to ``fit``.

The fusion model (:func:`fit_fusion`) cannot lose the clinical signal by construction: it is the
clinical-only model's logistic regression (same encoder) with one more input, the imaging model's
out-of-fold logit on the training patients (inner K-fold, the imaging model's chosen
hyper-parameters refitted per fold) entered unstandardised, and its penalty chosen by inner CV, so
with an uninformative image it reduces to clinical-only.

Fitted state is plain numbers (``to_dict``), saved in JSON beside the scores.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CS: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_DEEP_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def _fit_lr(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rare non-converged path point is still a valid ridge fit
        return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)


def _folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold  # noqa: PLC0415
    k = int(min(k, np.bincount(y, minlength=2).min()))
    if k < 2:
        return []
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _deviance(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass
class Standardiser:
    """Per column: NaN -> training mean, then (x - mean) / sd; columns constant in training -> 0."""
    mean: np.ndarray
    sd: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardiser":
        x = np.asarray(x, float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
            sd = np.nanstd(x, axis=0) if len(x) else np.ones(x.shape[1])
        mean = np.where(np.isfinite(mean), mean, 0.0)
        sd = np.where(np.isfinite(sd) & (sd > 1e-9), sd, np.inf)
        return cls(mean, sd)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float)
        x = np.where(np.isfinite(x), x, self.mean)
        return (x - self.mean) / self.sd

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "sd": [None if not np.isfinite(s) else float(s) for s in self.sd]}

    @classmethod
    def from_dict(cls, d: dict) -> "Standardiser":
        return cls(np.asarray(d["mean"], float), np.asarray([np.inf if s is None else s for s in d["sd"]], float))


@dataclass
class GroupRidge:
    """Logistic regression on named input groups, each standardised and scaled by weight / sqrt(p).

    blocks: {group: (n, p)} with the same rows; ``weights`` per group (0 = left out)."""
    groups: tuple[str, ...]
    weights: dict[str, float]
    c: float
    scalers: dict[str, Standardiser] = field(default_factory=dict)
    coef: np.ndarray | None = None
    intercept: float = 0.0
    widths: dict[str, int] = field(default_factory=dict)
    raw: tuple[str, ...] = ()  # groups used as given (already encoded), not re-standardised

    def design(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        cols = []
        for g in self.groups:
            w = self.weights.get(g, 1.0)
            if w <= 0:
                continue
            z = self.scalers[g](blocks[g])
            cols.append(z * (w / np.sqrt(max(z.shape[1], 1))))
        n = len(next(iter(blocks.values())))
        return np.concatenate(cols, axis=1) if cols else np.zeros((n, 0))

    def fit(self, blocks: Mapping[str, np.ndarray], y: np.ndarray, seed: int = 0) -> "GroupRidge":
        self.scalers = {g: (Standardiser(np.zeros(np.asarray(blocks[g]).shape[1]), np.ones(np.asarray(blocks[g]).shape[1]))
                            if g in self.raw else Standardiser.fit(blocks[g])) for g in self.groups}
        self.widths = {g: int(np.asarray(blocks[g]).shape[1]) for g in self.groups}
        x = self.design(blocks)
        if x.shape[1] == 0 or len(np.unique(np.asarray(y))) < 2:  # nothing to fit: the base rate
            self.coef = np.zeros(x.shape[1])
            p = float(np.clip(np.mean(y), 1e-6, 1 - 1e-6))
            self.intercept = float(np.log(p / (1 - p)))
            return self
        lr = _fit_lr(x, np.asarray(y, int), self.c, seed)
        self.coef, self.intercept = lr.coef_[0].astype(float), float(lr.intercept_[0])
        return self

    def logit(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.design(blocks) @ self.coef + self.intercept

    def proba(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        return _sigmoid(self.logit(blocks))

    def contributions(self, blocks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each input's part of the logit, per group: (n, p) = its scaled, standardised value times
        its coefficient; the logit is the sum of all of them plus the intercept (a group left out
        gives zeros)."""
        n = len(next(iter(blocks.values())))
        out, s = {}, 0
        for g in self.groups:
            k = self.widths[g]
            w = self.weights.get(g, 1.0)
            if w <= 0:
                out[g] = np.zeros((n, k))
                continue
            z = self.scalers[g](blocks[g]) * (w / np.sqrt(max(k, 1)))
            out[g] = z * self.coef[s:s + k]
            s += k
        return out

    def group_norms(self) -> dict[str, float]:
        """L2 norm of each group's coefficients (on the scaled inputs): how much each group is used."""
        out, s = {}, 0
        for g in self.groups:
            if self.weights.get(g, 1.0) <= 0:
                out[g] = 0.0
                continue
            k = self.widths[g]
            out[g] = float(np.linalg.norm(self.coef[s:s + k]))
            s += k
        return out

    def to_dict(self) -> dict:
        return {"groups": list(self.groups), "weights": dict(self.weights), "c": self.c,
                "widths": self.widths, "scalers": {g: s.to_dict() for g, s in self.scalers.items()},
                "coef": [] if self.coef is None else self.coef.tolist(), "intercept": self.intercept,
                "raw": list(self.raw)}

    @classmethod
    def from_dict(cls, d: dict) -> "GroupRidge":
        m = cls(tuple(d["groups"]), dict(d["weights"]), float(d["c"]),
                {g: Standardiser.from_dict(s) for g, s in d["scalers"].items()},
                np.asarray(d["coef"], float), float(d["intercept"]), dict(d["widths"]), tuple(d.get("raw", ())))
        return m


def _subset(blocks: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {g: np.asarray(b)[idx] for g, b in blocks.items()}


def select_group_ridge(blocks: Mapping[str, np.ndarray], y: np.ndarray, *, tunable: Sequence[str] = ("deep",),
                       weights_grid: Sequence[float] = DEFAULT_DEEP_WEIGHTS, cs: Sequence[float] = DEFAULT_CS,
                       folds: int = 5, seed: int = 0, fixed: Mapping[str, float] | None = None,
                       raw: tuple[str, ...] = ()) -> tuple[GroupRidge, dict]:
    """Choose the weight of the ``tunable`` groups (one shared value) and C by inner stratified CV
    on these (training) rows, then refit on all of them. Returns (model, selection record).

    fixed: the weight of each group that is not tuned (default 1); raw: groups used as given."""
    y = np.asarray(y, int)
    groups = tuple(blocks)
    tun = [g for g in groups if g in tunable]
    grid_w = list(weights_grid) if tun else [1.0]
    if tun and len(groups) == len(tun):
        grid_w = [w for w in grid_w if w > 0] or [1.0]  # nothing left to fit with weight 0
    splits = _folds(y, folds, seed)
    fixed = dict(fixed or {})
    results = []
    for w in grid_w:
        weights = {g: (w if g in tun else fixed.get(g, 1.0)) for g in groups}
        for c in cs:
            if not splits:
                results.append((0.0, w, c))
                continue
            dev = []
            for tr, te in splits:
                m = GroupRidge(groups, weights, c, raw=raw).fit(_subset(blocks, tr), y[tr], seed)
                dev.append(_deviance(y[te], m.proba(_subset(blocks, te))))
            results.append((float(np.mean(dev)), w, c))
    best = min(results, key=lambda r: (round(r[0], 6), r[1], r[2]))  # ties: the simpler model
    weights = {g: (best[1] if g in tun else fixed.get(g, 1.0)) for g in groups}
    model = GroupRidge(groups, weights, best[2], raw=raw).fit(blocks, y, seed)
    record = {"chosen": {"weight": best[1], "c": best[2], "inner_deviance": best[0]},
              "tunable": tun, "folds": len(splits),
              "grid": [{"weight": w, "c": c, "deviance": d} for d, w, c in results]}
    return model, record


def out_of_fold_logits(blocks: Mapping[str, np.ndarray], y: np.ndarray, chosen: GroupRidge, *, folds: int = 5,
                       seed: int = 0) -> np.ndarray:
    """The logits of the training rows from models (``chosen``'s groups, weights and C) that did not
    see them; rows of a class too small to fold get the in-sample logit."""
    y = np.asarray(y, int)
    out = chosen.logit(blocks)
    for tr, te in _folds(y, folds, seed + 1):
        m = GroupRidge(chosen.groups, chosen.weights, chosen.c).fit(_subset(blocks, tr), y[tr], seed)
        out[te] = m.logit(_subset(blocks, te))
    return out


@dataclass
class FusionModel:
    """Clinical vector + imaging logit -> L2 logistic regression (the clinical-only model's C)."""
    image: GroupRidge
    fusion: GroupRidge

    def proba(self, blocks: Mapping[str, np.ndarray], clinical: np.ndarray) -> np.ndarray:
        return self.fusion.proba({"clinical": clinical, "imaging": self.image.logit(blocks)[:, None]})

    def to_dict(self) -> dict:
        return {"image": self.image.to_dict(), "fusion": self.fusion.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "FusionModel":
        return cls(GroupRidge.from_dict(d["image"]), GroupRidge.from_dict(d["fusion"]))


def fit_fusion(image: GroupRidge, blocks: Mapping[str, np.ndarray], clinical: np.ndarray, y: np.ndarray, *,
               cs: Sequence[float] | None = DEFAULT_CS, c: float = 1.0, folds: int = 5, seed: int = 0
               ) -> tuple[FusionModel, dict]:
    """Fit the fusion model on training rows; ``image`` is the imaging model fitted on the same rows.

    The clinical group keeps the clinical-only model's encoding and the imaging out-of-fold logit
    enters as it is (a logit is already on the scale of the regression: standardising it and then
    shrinking it with the clinical model's penalty drew it towards 0 and the fusion towards
    clinical-only). The penalty is chosen by inner CV on these rows over ``cs`` (deviance, as the
    imaging model's); ``cs=None`` keeps the fixed ``c`` (the clinical-only model's)."""
    oof = out_of_fold_logits(blocks, y, image, folds=folds, seed=seed)
    clinical = np.asarray(clinical, float)
    fused = {"clinical": clinical, "imaging": oof[:, None]}
    fixed = {"clinical": np.sqrt(max(clinical.shape[1], 1)), "imaging": 1.0}  # undo the 1/sqrt(p) scaling
    fusion, record = select_group_ridge(fused, y, tunable=(), cs=tuple(cs) if cs else (c,),
                                        folds=folds if cs else 0, seed=seed, fixed=fixed,
                                        raw=("clinical", "imaging"))
    return FusionModel(image, fusion), {"c": fusion.c, "c_grid": record["grid"] if cs else None,
                                        "imaging_coef": float(fusion.coef[-1]) if fusion.coef.size else 0.0,
                                        "oof_folds": folds}
