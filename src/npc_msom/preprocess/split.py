"""Patient-level splits, stratified by outcome and seeded; never a patient in two sets."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split


def train_val_split(patient_ids: list[str], labels: list[int], val_fraction: float, seed: int) -> dict:
    """{"train": [...], "val": [...]} with the outcome's proportion kept in both (when possible)."""
    ids = np.asarray(patient_ids)
    y = np.asarray(labels)
    n_val = max(1, int(round(len(ids) * val_fraction)))
    stratify = y if min(np.bincount(y.astype(int))) >= 2 and n_val >= len(set(y)) else None
    train, val = train_test_split(ids, test_size=n_val, random_state=seed, stratify=stratify)
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist())}


def repeated_kfold(patient_ids: list[str], labels: list[int], folds: int, repeats: int, seed: int) -> list[dict]:
    """Repeated stratified k-fold: a list of {"repeat", "fold", "train", "val"}."""
    ids = np.asarray(patient_ids)
    rskf = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    out = []
    for i, (tr, va) in enumerate(rskf.split(ids, np.asarray(labels))):
        out.append({"repeat": i // folds, "fold": i % folds, "train": sorted(ids[tr].tolist()),
                    "val": sorted(ids[va].tolist())})
    return out
