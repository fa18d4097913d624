"""Patient scores, risk groups and the metrics of one model: the one format that every MSOM model
(stage 2 and the comparison models) writes, so that the report and the DeLong comparisons read them
all the same way.

``patient_scores.csv``: patient_id, split (train | val), score (probability of MSOM; empty when the
patient could not be scored), label (0/1), risk_group (high | low), cutoff, note (why a patient was
not scored). ``metrics.json``: see :func:`model_metrics`. Every number comes from
``npc_msom.evaluation`` on the validation rows; the cut-off of the risk groups is fitted on the
training rows only (Youden), never on the patients it is applied to.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from npc_msom.evaluation import calibration, metrics_at_cutoffs, roc_auc, youden_cutoff
from npc_msom.runtime import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

PATIENT_COLUMNS: tuple[str, ...] = ("patient_id", "split", "score", "label", "risk_group", "cutoff", "note")


def training_cutoff(train_labels: Sequence[int], train_scores: Sequence[float]) -> tuple[float, str]:
    """Youden's cut-off on the training patients' scores -> (cutoff, method).

    With a single class (or fewer than two scored patients) in training, Youden's index is
    undefined; the median of the training scores is used and the method says so.
    """
    y = np.asarray(train_labels, dtype=int)
    s = np.asarray(train_scores, dtype=float)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    if s.size >= 2 and 0 < y.sum() < y.size:
        return youden_cutoff(y, s), "youden_train"
    if s.size == 0:
        return float("nan"), "none"
    log.warning("Youden cut-off undefined on %d training patient(s) of one class: median used", s.size)
    return float(np.median(s)), "median_train"


def patient_table(patient_ids: Sequence[str], splits: Sequence[str], scores: Sequence[float],
                  labels: Sequence[int], notes: Sequence[str] | None = None,
                  cutoff: float | None = None) -> pd.DataFrame:
    """The patient_scores table; ``cutoff`` None = fitted on the training rows (Youden)."""
    df = pd.DataFrame({"patient_id": [str(p) for p in patient_ids], "split": list(splits),
                       "score": np.asarray(scores, dtype=float), "label": np.asarray(labels, dtype=int),
                       "note": list(notes) if notes is not None else [""] * len(patient_ids)})
    if cutoff is None:
        train = df[df["split"] == "train"]
        cutoff, _ = training_cutoff(train["label"], train["score"])
    df["cutoff"] = float(cutoff)
    finite = np.isfinite(df["score"].to_numpy())
    df["risk_group"] = np.where(~finite, "", np.where(df["score"] >= cutoff, "high", "low"))
    return df[list(PATIENT_COLUMNS)]


def model_metrics(df: pd.DataFrame, *, level: float = 0.95, evaluate_on: str = "val",
                  model: str = "", sequence: str = "", extra: Mapping | None = None) -> dict:
    """metrics.json of one model from its patient_scores table.

    On the ``evaluate_on`` rows with a score: AUC with its DeLong CI; precision, recall,
    specificity, accuracy, F1 (Wilson CIs) at the median of the scores (the study's table), at the
    training-fitted Youden cut-off (the honest default) and at the same-data Youden cut-off (the
    study's, ``optimistic: true``); Brier score and calibration slope when the scores are
    probabilities. ``n_patients`` / ``n_scored`` say on how many patients this was computed.
    """
    ev = df[df["split"] == evaluate_on]
    train = df[df["split"] == "train"]
    scored = ev[np.isfinite(ev["score"].to_numpy())]
    tr = train[np.isfinite(train["score"].to_numpy())]
    y = scored["label"].to_numpy(dtype=int)
    s = scored["score"].to_numpy(dtype=float)
    out: dict = {"model": model, "sequence": sequence, "evaluated_on": evaluate_on,
                 "n_patients": int(len(ev)), "n_scored": int(len(scored)), "n_pos": int(y.sum()),
                 "n_neg": int((1 - y).sum()) if y.size else 0,
                 "not_scored": {str(r.patient_id): str(r.note) for r in ev.itertuples()
                                if not np.isfinite(r.score)}}
    if y.size and 0 < y.sum() < y.size:
        out["auc"] = roc_auc(y, s, ci="delong", level=level).to_dict()
        ytr, s_tr = tr["label"].to_numpy(dtype=int), tr["score"].to_numpy(dtype=float)
        has_train = ytr.size >= 2 and 0 < ytr.sum() < ytr.size
        cuts = metrics_at_cutoffs(y, s, ytr if has_train else None, s_tr if has_train else None, level=level)
        out["thresholds"] = {k: v.as_row() for k, v in cuts.items()}
        if np.all((s >= 0) & (s <= 1)):
            cal = calibration(y, s, level=level)
            out["calibration"] = {"brier": cal.brier, "brier_null": cal.brier_null, "slope": cal.slope,
                                  "slope_ci": [cal.slope_ci_low, cal.slope_ci_high],
                                  "intercept": cal.intercept}
    else:
        log.warning("%s %s: the %s patients scored hold one class only; no AUC", model, sequence, evaluate_on)
        out["auc"] = None
    cut = df["cutoff"].dropna()
    out["risk_cutoff"] = float(cut.iloc[0]) if len(cut) else None
    out["risk_groups"] = {g: int((ev["risk_group"] == g).sum()) for g in ("high", "low")}
    if extra:
        out.update(extra)
    return out


def write_scores(out_dir: str | Path, df: pd.DataFrame, metrics: dict,
                 slice_scores: pd.DataFrame | None = None) -> None:
    """patient_scores.csv, metrics.json (and slice_scores.csv), each written atomically."""
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "patient_scores.csv", _csv(df))
    if slice_scores is not None:
        write_text_atomic(out_dir / "slice_scores.csv", _csv(slice_scores))
    write_json_atomic(out_dir / "metrics.json", metrics)


def read_scores(path: str | Path) -> pd.DataFrame:
    """A patient_scores.csv back as a table (patient_id as str, empty score as NaN)."""
    df = pd.read_csv(path, dtype={"patient_id": str, "split": str, "note": str, "risk_group": str},
                     keep_default_na=True)
    df["note"] = df["note"].fillna("")
    df["risk_group"] = df["risk_group"].fillna("")
    return df


def _csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()
