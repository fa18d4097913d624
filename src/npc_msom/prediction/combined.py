"""Beyond the study, which modelled each sequence alone: one score per patient from T1WI, T2WI and
CE-T1WI together.

- ``mean``: the mean of the sequences' fusion (MRI + clinical) probabilities; nothing is fitted, so
  it cannot overfit. A patient missing a sequence gets the mean of those present (noted).
- ``stack``: a logistic regression on the logits of the sequences' probabilities, fitted on the
  training patients' scores. Those scores are in-sample for every sequence model, so the stack can
  trust the most over-fitted sequence; it is reported beside ``mean``, never instead of it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.config import Config
from npc_msom.prediction.model import file_digest
from npc_msom.prediction.scores import model_metrics, patient_table, read_scores, write_scores
from npc_msom.prediction.stage import PredictorResult, check_stale

log = logging.getLogger(__name__)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sequence_scores(run_dir: Path, sequences, model: str) -> pd.DataFrame:
    """patient_id -> split, label and one score column per sequence found."""
    meta, cols = None, {}
    for seq in sequences:
        p = run_dir / "prediction" / seq / model / "patient_scores.csv"
        if p.is_file():
            df = read_scores(p).set_index("patient_id")
            meta = df[["split", "label"]] if meta is None else meta.combine_first(df[["split", "label"]])
            cols[seq] = df["score"]
    if meta is None:
        return pd.DataFrame()
    return meta.join(pd.DataFrame(cols), how="left")


def combine_for_run(config: Config, run_dir: str | Path, *, force: bool = False) -> dict[str, PredictorResult]:
    """Write ``prediction/combined/{mean,stack}/`` from the sequences' fusion (else mri) scores."""
    run_dir = Path(run_dir)
    pc = config.prediction
    base = "fusion" if "fusion" in pc.models else "mri"
    table = sequence_scores(run_dir, pc.combine_sequences, base)
    seqs = [s for s in pc.combine_sequences if s in table.columns]
    if len(seqs) < 2:
        log.info("combined model skipped: fewer than two sequences scored (%s)", seqs)
        return {}
    inputs = {s: file_digest(run_dir / "prediction" / s / base / "patient_scores.csv") for s in seqs}
    ids = list(table.index)
    splits, labels = table["split"].tolist(), table["label"].astype(int).to_numpy()
    x = table[seqs].to_numpy(dtype=float)
    present = np.isfinite(x).sum(axis=1)
    results = {}

    with np.errstate(invalid="ignore"):
        mean = np.where(present > 0, np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=1), np.nan)
    notes = ["" if k == len(seqs) else ("no sequence scored" if k == 0 else f"mean of {k} of {len(seqs)} sequences")
             for k in present]
    results["mean"] = _write(config, run_dir, "mean", ids, splits, mean, labels, notes, seqs, base, inputs, force)

    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    complete = present == len(seqs)
    train = complete & (np.asarray(splits) == "train")
    stack = np.full(len(ids), np.nan)
    coef = None
    if train.sum() >= 4 and 0 < labels[train].sum() < train.sum():
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(_logit(x[train]), labels[train])
        stack[complete] = lr.predict_proba(_logit(x[complete]))[:, 1]
        coef = {"intercept": float(lr.intercept_[0]), **{s: float(c) for s, c in zip(seqs, lr.coef_[0])}}
    notes = ["" if c else "a sequence is missing" for c in complete]
    results["stack"] = _write(config, run_dir, "stack", ids, splits, stack, labels, notes, seqs, base, inputs, force,
                              {"coefficients": coef, "fitted_on": "training patients' in-sample scores"})
    return results


def _write(config, run_dir, name, ids, splits, scores, labels, notes, seqs, base, inputs, force, extra=None):
    out_dir = run_dir / "prediction" / "combined" / name
    settings = {"combined": name, "sequences": seqs, "from": base, "inputs": inputs}
    if check_stale(out_dir, settings, force):
        return PredictorResult(out_dir, "combined", name, json.loads((out_dir / "metrics.json").read_text()), True)
    table = patient_table(ids, splits, scores, labels, notes)
    metrics = model_metrics(table, level=config.evaluation.level, model=f"combined-{name}", sequence="+".join(seqs),
                            extra={"settings": settings, **(extra or {})})
    write_scores(out_dir, table, metrics)
    auc = metrics.get("auc") or {}
    log.info("combined %s (%s): validation AUC %s", name, "+".join(seqs), f"{auc.get('auc'):.3f}" if auc else "n/a")
    return PredictorResult(out_dir, "combined", name, metrics)
