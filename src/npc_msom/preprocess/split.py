"""Patient-level splits, stratified by outcome and seeded; never a patient in two sets."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from npc_msom.errors import InputError

log = logging.getLogger(__name__)


def split_settings(patient_ids: list[str], labels: list[int], *, val_fraction: float, folds: int, repeats: int,
                   seed: int) -> dict:
    """Everything a split depends on, stored in ``split.json`` and compared before it is reused:
    the fraction, folds and repeats (repeats only matter with folds > 1), the seed, and the patients
    with their outcomes (the split is stratified by them), as a count and a digest."""
    from npc_msom.runtime import settings_digest  # noqa: PLC0415
    pairs = sorted(zip(map(str, patient_ids), map(int, labels)))
    return {"val_fraction": float(val_fraction), "folds": int(folds),
            "repeats": int(repeats) if folds > 1 else None, "seed": int(seed), "n_patients": len(pairs),
            "patients": settings_digest([p for p, _ in pairs]), "labels": settings_digest(pairs)}


def train_val_split(patient_ids: list[str], labels: list[int], val_fraction: float, seed: int) -> dict:
    """{"train": [...], "val": [...]} with the outcome's proportion kept in both (when possible).

    At least one patient goes to each set; a one-patient cohort (a usual first try) has no
    validation patient: it is all "train", with a "note" saying so, and a warning is logged.
    """
    ids = np.asarray(patient_ids)
    y = np.asarray(labels)
    if len(ids) < 2:
        note = (f"only {len(ids)} patient: no validation set (a split needs at least 2 patients); "
                "validation metrics will be empty")
        log.warning("split: %s", note)
        return {"train": sorted(ids.tolist()), "val": [], "note": note}
    n_val = min(len(ids) - 1, max(1, int(round(len(ids) * val_fraction))))
    stratify = y if min(np.bincount(y.astype(int))) >= 2 and n_val >= len(set(y)) else None
    train, val = train_test_split(ids, test_size=n_val, random_state=seed, stratify=stratify)
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist())}


def repeated_kfold(patient_ids: list[str], labels: list[int], folds: int, repeats: int, seed: int) -> list[dict]:
    """Repeated stratified k-fold: a list of {"repeat", "fold", "train", "val"}."""
    ids = np.asarray(patient_ids)
    if folds > len(ids):
        raise InputError(f"{folds}-fold cross-validation of a cohort of {len(ids)} patient(s)",
                         expected=f"at least {folds} patients, or preprocess.folds <= {len(ids)}")
    rskf = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    out = []
    for i, (tr, va) in enumerate(rskf.split(ids, np.asarray(labels))):
        out.append({"repeat": i // folds, "fold": i % folds, "train": sorted(ids[tr].tolist()),
                    "val": sorted(ids[va].tolist())})
    return out
