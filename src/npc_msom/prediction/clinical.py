"""The clinical vector of the fusion models: the schema's predictor columns, encoded the same way
for every patient, training or new.

``ClinicalEncoder.fit`` sees the training patients only. Numbers are standardised with the training
mean and SD, binary columns stay 0/1, categories become one-hot columns over the levels seen in
training, and a column that had missing values in training gets an indicator column (its missing
cells are imputed with the training mean, i.e. 0 after standardising, or no level). Outcome columns
(msom, organ, times, events) are refused by construction: only ``schema.FEATURE_COLUMNS`` are used.
The fitted state is a plain dict (``to_dict``), saved inside every checkpoint that uses it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from npc_msom.cohort.schema import CLINICAL_SCHEMA, FEATURE_COLUMNS
from npc_msom.errors import InputError

log = logging.getLogger(__name__)

_KINDS = {c.name: c.kind for c in CLINICAL_SCHEMA}
OUTCOME_COLUMNS: tuple[str, ...] = tuple(c.name for c in CLINICAL_SCHEMA if c.outcome)


@dataclass(frozen=True)
class EncodedColumn:
    """How one clinical column becomes one or more model inputs."""
    name: str
    kind: str                       # "number" | "binary" | "category"
    mean: float = 0.0               # numbers: training mean (also the imputed value)
    sd: float = 1.0                 # numbers: training SD (ddof 1; 1 when constant)
    levels: tuple[str, ...] = ()    # categories: levels seen in training, one column each
    indicator: bool = False         # a "<name>_missing" column (missing values in training)

    def output_names(self) -> list[str]:
        names = [f"{self.name}={lv}" for lv in self.levels] if self.kind == "category" else [self.name]
        return names + ([f"{self.name}_missing"] if self.indicator else [])


class ClinicalEncoder:
    """Fitted encoding of clinical tables (rows = patients indexed by patient_id) -> float32 arrays."""

    def __init__(self, columns: tuple[EncodedColumn, ...]):
        self.columns = tuple(columns)

    @property
    def feature_names(self) -> list[str]:
        return [n for c in self.columns for n in c.output_names()]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @classmethod
    def fit(cls, table: pd.DataFrame, columns: tuple[str, ...] | None = None) -> "ClinicalEncoder":
        """Fit on the training patients' rows of a validated clinical table.

        columns: the predictor columns to use (default: every schema predictor present in ``table``).
        Raises InputError for an outcome column or a column the table lacks.
        """
        wanted = tuple(columns) if columns else tuple(c for c in FEATURE_COLUMNS if c in table.columns)
        bad = [c for c in wanted if c in OUTCOME_COLUMNS or c == "patient_id"]
        if bad:
            raise InputError(f"outcome or id column(s) {bad} cannot be model inputs",
                             expected=f"predictor columns from {list(FEATURE_COLUMNS)}")
        missing = [c for c in wanted if c not in table.columns]
        if missing:
            raise InputError(f"clinical table lacks column(s) {missing}",
                             expected=f"the columns {list(wanted)}")
        if len(table) == 0:
            raise InputError("no training patient has clinical data", expected="at least one row")
        out = []
        for name in wanted:
            kind = _KINDS.get(name, "float")
            col = table[name]
            na = col.isna().to_numpy()
            if kind == "category":
                levels = tuple(sorted({str(v) for v in col[~na]}))
                out.append(EncodedColumn(name, "category", levels=levels, indicator=bool(na.any())))
            elif kind == "binary":
                out.append(EncodedColumn(name, "binary", indicator=bool(na.any())))
            else:
                vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
                finite = vals[np.isfinite(vals)]
                mean = float(finite.mean()) if finite.size else 0.0
                sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
                out.append(EncodedColumn(name, "number", mean=mean, sd=sd if sd > 0 else 1.0,
                                         indicator=bool((~np.isfinite(vals)).any())))
        return cls(tuple(out))

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """(n_patients, n_features) float32 in ``table``'s row order."""
        missing = [c.name for c in self.columns if c.name not in table.columns]
        if missing:
            raise InputError(f"clinical table lacks column(s) {missing} that the model was trained with",
                             expected=f"the columns {[c.name for c in self.columns]}")
        blocks = []
        for c in self.columns:
            col = table[c.name]
            na = col.isna().to_numpy()
            if c.kind == "category":
                text = col.astype(object).where(~col.isna(), None).to_numpy()
                block = np.stack([np.array([v is not None and str(v) == lv for v in text], np.float32)
                                  for lv in c.levels], axis=1) if c.levels else np.zeros((len(col), 0), np.float32)
                unseen = sorted({str(v) for v in text if v is not None and str(v) not in c.levels})
                if unseen:
                    log.warning("clinical column %s: level(s) %s not seen in training, encoded as no level",
                                c.name, unseen)
            else:
                vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
                na = ~np.isfinite(vals)
                if c.kind == "number":
                    vals = np.where(na, c.mean, vals)
                    vals = (vals - c.mean) / c.sd
                else:
                    vals = np.where(na, 0.0, vals)
                block = vals.astype(np.float32)[:, None]
            if na.any() and not c.indicator:
                log.warning("clinical column %s: %d missing value(s) imputed (none were missing in training)",
                            c.name, int(na.sum()))
            blocks.append(block)
            if c.indicator:
                blocks.append(na.astype(np.float32)[:, None])
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(table), 0), np.float32)

    def to_dict(self) -> dict:
        return {"columns": [{"name": c.name, "kind": c.kind, "mean": c.mean, "sd": c.sd,
                             "levels": list(c.levels), "indicator": c.indicator} for c in self.columns],
                "feature_names": self.feature_names}

    @classmethod
    def from_dict(cls, data: dict) -> "ClinicalEncoder":
        cols = tuple(EncodedColumn(d["name"], d["kind"], float(d["mean"]), float(d["sd"]),
                                   tuple(d["levels"]), bool(d["indicator"])) for d in data["columns"])
        enc = cls(cols)
        if enc.feature_names != list(data.get("feature_names", enc.feature_names)):
            raise InputError("stored clinical encoding is inconsistent", expected="feature names of its columns")
        return enc

    def __eq__(self, other) -> bool:
        return isinstance(other, ClinicalEncoder) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ClinicalEncoder({self.n_features} features from {len(self.columns)} columns)"
