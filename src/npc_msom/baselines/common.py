"""What every comparison model shares: the split, the labels, the output folder and the check
that an output is already up to date (its ``metrics.json`` records the settings it was made with).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.errors import InputError
from npc_msom.prediction.scores import model_metrics, patient_table, write_scores

log = logging.getLogger(__name__)

ALL_SEQUENCES = "all"  # the folder of a model that does not use the images


@dataclass(frozen=True)
class Split:
    """The patient-level split of a run (``preprocessed/split.json``), ids in file order."""
    train: tuple[str, ...]
    val: tuple[str, ...]

    @property
    def patient_ids(self) -> list[str]:
        return list(self.train) + list(self.val)

    def split_of(self, patient_id: str) -> str:
        return "train" if patient_id in set(self.train) else "val"

    def digest(self) -> str:
        text = json.dumps({"train": sorted(self.train), "val": sorted(self.val)})
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_split(run_dir: str | Path) -> Split:
    path = Path(run_dir) / "preprocessed" / "split.json"
    if not path.is_file():
        raise InputError("the run has no patient split; run the preprocessing stage first", file=path,
                         expected="preprocessed/split.json with 'train' and 'val' lists")
    data = json.loads(path.read_text())
    if not isinstance(data.get("train"), list) or not isinstance(data.get("val"), list):
        raise InputError("split.json lacks its 'train' or 'val' list", file=path,
                         expected='{"train": [...], "val": [...]}')
    return Split(tuple(str(p) for p in data["train"]), tuple(str(p) for p in data["val"]))


def labels_for(clinical: pd.DataFrame, ids: list[str], source: str = "clinical table") -> np.ndarray:
    """0/1 MSOM labels of ``ids`` (int array); a patient without a label is an error naming it."""
    if "msom" not in clinical.columns:
        raise InputError("the clinical table has no 'msom' column", file=source,
                         expected="an msom column (0/1) for every patient of the split")
    out = []
    for pid in ids:
        if pid not in clinical.index or pd.isna(clinical.loc[pid, "msom"]):
            raise InputError("no MSOM label for a patient of the split", patient=pid, file=source,
                             expected="msom 0 or 1")
        out.append(int(clinical.loc[pid, "msom"]))
    return np.asarray(out, dtype=int)


def frame_digest(df: pd.DataFrame) -> str:
    """A short hash of a table's content, to notice that a model's input changed."""
    return hashlib.sha1(df.to_csv().encode()).hexdigest()[:16]


def file_digest(*paths: str | Path) -> str:
    h = hashlib.sha1()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def _plain(obj):
    """The settings as JSON would give them back (tuples -> lists), for comparison."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def up_to_date(out_dir: str | Path, settings: dict) -> bool:
    """True when ``out_dir`` holds patient_scores.csv and a metrics.json made with ``settings``."""
    out_dir = Path(out_dir)
    m = out_dir / "metrics.json"
    if not (m.is_file() and (out_dir / "patient_scores.csv").is_file()):
        return False
    try:
        recorded = json.loads(m.read_text()).get("settings")
    except json.JSONDecodeError:
        return False
    return recorded == _plain(settings)


def write_model(out_dir: str | Path, *, model: str, sequence: str, split: Split, scores, labels,
                notes=None, settings: dict, level: float = 0.95, extra: dict | None = None) -> dict:
    """Stage 2's patient_scores.csv + metrics.json for one comparison model; returns the metrics.

    scores/labels/notes: one per patient of ``split.patient_ids`` (train first), NaN score = not
    scored, with the reason in its note.
    """
    ids = split.patient_ids
    df = patient_table(ids, [split.split_of(p) for p in ids], scores, labels, notes)
    metrics = model_metrics(df, level=level, model=model, sequence=sequence,
                            extra={"settings": _plain(settings), **(extra or {})})
    write_scores(out_dir, df, metrics)
    auc = (metrics.get("auc") or {}).get("auc")
    log.info("%s %s: validation AUC %s on %d of %d patients", model, sequence,
             f"{auc:.3f}" if auc is not None else "n/a", metrics["n_scored"], metrics["n_patients"])
    return metrics
