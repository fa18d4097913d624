"""The two models without images: ``clinical`` (logistic regression on stage 2's clinical vector)
and ``n_stage`` (N stage as an ordinal score, the simplest comparator clinicians use).

Pure functions over the clinical table; the run-folder edge is in ``npc_msom.baselines``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from npc_msom.prediction.clinical import ClinicalEncoder

log = logging.getLogger(__name__)

N_STAGE_SCORE = {"N0": 0, "N1": 1, "N2": 2, "N3": 3}


@dataclass(frozen=True)
class ClinicalFit:
    """A fitted clinical model: scores (P(MSOM)) of every patient asked for, and the model."""
    scores: np.ndarray                  # (n_patients,) float in the order of the table given
    coefficients: dict[str, float]      # encoded feature name -> coefficient (standardised inputs)
    intercept: float
    encoder: dict                       # ClinicalEncoder.to_dict()

    def to_dict(self) -> dict:
        return {"coefficients": self.coefficients, "intercept": self.intercept, "encoder": self.encoder}


def fit_clinical(table: pd.DataFrame, train_ids: list[str], train_labels, *, c: float = 1.0,
                 seed: int = 0) -> ClinicalFit:
    """L2 logistic regression on the ClinicalEncoder vector, both fitted on ``train_ids`` only.

    table: clinical rows indexed by patient_id (every patient to score); train_labels: 0/1 per
    train id. Returns the scores of every row of ``table``.
    """
    enc = ClinicalEncoder.fit(table.loc[list(train_ids)])
    x_train = enc.transform(table.loc[list(train_ids)])
    model = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    model.fit(x_train, np.asarray(train_labels, dtype=int))
    scores = model.predict_proba(enc.transform(table))[:, 1]
    coefs = {n: float(v) for n, v in zip(enc.feature_names, model.coef_[0])}
    return ClinicalFit(scores.astype(float), coefs, float(model.intercept_[0]), enc.to_dict())


def n_stage_scores(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """N0..N3 -> 0..3 (float), no fitting; a missing or unknown N stage -> NaN with a note."""
    scores, notes = [], []
    col = table["n_stage"] if "n_stage" in table.columns else pd.Series([None] * len(table), index=table.index)
    for pid, v in col.items():
        key = str(v).strip().upper() if not pd.isna(v) else ""
        if key in N_STAGE_SCORE:
            scores.append(float(N_STAGE_SCORE[key]))
            notes.append("")
        else:
            scores.append(float("nan"))
            notes.append(f"N stage {v!r} is not one of N0..N3" if key else "no N stage")
            log.warning("n_stage: patient %s not scored (%s)", pid, notes[-1])
    return np.asarray(scores, dtype=float), notes
