"""Reading the clinical table (CSV or Excel) and validating it against ``CLINICAL_SCHEMA``.

Every bad cell is collected and reported at once in one ``ClinicalTableError``: its ``problems``
list holds dicts ``{"row", "column", "value", "expected", "patient"}`` where ``row`` is the row
number as a spreadsheet shows it (the header is row 1, the first patient row 2) and is ``None``
for a problem of the whole column (a missing column).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.cohort.model import Outcome
from npc_msom.cohort.schema import CLINICAL_SCHEMA, Column
from npc_msom.errors import ClinicalTableError

CLINICAL_NAMES: tuple[str, ...] = ("clinical.csv", "clinical.xlsx", "clinical.xls")
_EMPTY = {"", "na", "n/a", "nan", "none", "null", "-"}
_TRUE = {"1", "1.0", "yes", "y", "true"}
_FALSE = {"0", "0.0", "no", "n", "false"}


def find_clinical_table(root: str | Path) -> Path | None:
    """``clinical.csv`` / ``clinical.xlsx`` directly inside ``root`` (case-insensitive), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    for name in CLINICAL_NAMES:
        if name in by_lower:
            return by_lower[name]
    return None


def read_clinical_table(path: str | Path) -> pd.DataFrame:
    """The table as strings exactly as written (no type guessing), columns stripped.

    Raises ClinicalTableError if the file cannot be read at all.
    """
    path = Path(path)
    if not path.is_file():
        raise ClinicalTableError([{"row": None, "column": None, "value": None,
                                   "expected": "an existing CSV or Excel file"}], file=path)
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            df = pd.read_excel(path, dtype=str, keep_default_na=False, engine=None)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=None, engine="python",
                             encoding="utf-8-sig")
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise ClinicalTableError([{"row": None, "column": None, "value": f"{type(exc).__name__}: {exc}",
                                   "expected": "a readable CSV or Excel table with a header row"}],
                                 file=path) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _parse_number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _check_cell(col: Column, text: str):
    """(ok, typed value) for one non-empty cell."""
    if col.kind == "id":
        return True, text
    if col.kind == "category":
        for a in col.allowed:  # case-insensitive match, stored in the schema's spelling
            if text.lower() == a.lower():
                return True, a
        return False, None
    if col.kind == "binary":
        low = text.lower()
        if low in _TRUE:
            return True, 1
        if low in _FALSE:
            return True, 0
        return False, None
    v = _parse_number(text)
    if v is None:
        return False, None
    if col.kind == "int":
        if abs(v - round(v)) > 1e-9:
            return False, None
        v = int(round(v))
    if col.low is not None and v < col.low:
        return False, None
    if col.high is not None and v > col.high:
        return False, None
    return True, v


def validate_clinical(raw: pd.DataFrame, *, file: str | Path | None = None,
                      schema: tuple[Column, ...] = CLINICAL_SCHEMA,
                      collect: bool = False):
    """Validate a table of strings (from ``read_clinical_table``) against the schema.

    Returns a DataFrame indexed by ``patient_id`` (str) with one column per schema column, typed:
    int -> int64, float -> float64, binary -> int64 (0/1), category -> pandas Categorical with the
    schema's allowed values (NaN where an optional cell is empty). Extra columns are kept as text.

    Missing columns, empty required cells, unparsable or out-of-range numbers, disallowed
    categories, duplicate IDs and contradicting outcome cells (msom_organ given without MSOM or
    missing with it) are all collected; if any, raises ``ClinicalTableError`` with all of them.
    With ``collect=True`` it returns ``(frame, problems)`` instead, where ``frame`` holds only the
    rows without problems; a missing required column still raises (with every other problem).
    """
    df = raw.copy()
    lower_map = {c.lower(): c for c in df.columns}
    rename = {}
    problems: list[dict] = []
    for col in schema:
        src = lower_map.get(col.name.lower())
        if src is None:
            if col.required:
                problems.append({"row": None, "column": col.name, "value": None, "patient": None,
                                 "expected": f"a column {col.name!r} ({col.expected()})"})
            continue
        rename[src] = col.name
    missing_columns = [p["column"] for p in problems]
    df = df.rename(columns=rename)
    for col in schema:
        if col.name not in df.columns:
            df[col.name] = ""

    n = len(df)
    ids = [str(v).strip() for v in df["patient_id"].tolist()]
    typed: dict[str, list] = {c.name: [None] * n for c in schema}
    bad_rows: set[int] = set()
    for i in range(n):
        row_no = i + 2
        pid = ids[i] or None
        for col in schema:
            if col.name in missing_columns:
                continue
            text = str(df.at[df.index[i], col.name]).strip()
            if text.lower() in _EMPTY and col.kind != "id" or text == "":
                if col.required:
                    problems.append({"row": row_no, "column": col.name, "value": text, "patient": pid,
                                     "expected": col.expected() + " (the cell is empty)"})
                    bad_rows.add(i)
                continue
            ok, value = _check_cell(col, text)
            if not ok:
                problems.append({"row": row_no, "column": col.name, "value": text, "patient": pid,
                                 "expected": col.expected()})
                bad_rows.add(i)
            else:
                typed[col.name][i] = value
    # duplicate IDs: every row after the first of an ID is a problem, naming the first row
    first: dict[str, int] = {}
    for i, pid in enumerate(ids):
        if not pid:
            continue
        if pid in first:
            problems.append({"row": i + 2, "column": "patient_id", "value": pid, "patient": pid,
                             "expected": f"a unique patient ID (also in row {first[pid] + 2})"})
            bad_rows.add(i)
            bad_rows.add(first[pid])
        else:
            first[pid] = i
    # outcome consistency: the organ is given exactly for patients with MSOM
    names = {c.name for c in schema}
    if {"msom", "msom_organ"} <= names:
        for i in range(n):
            msom, organ = typed["msom"][i], typed["msom_organ"][i]
            if msom == 1 and organ is None and "msom_organ" in rename.values():
                problems.append({"row": i + 2, "column": "msom_organ", "value": "", "patient": ids[i] or None,
                                 "expected": "the organ of the metastasis (liver, lung or bone) when msom is 1"})
                bad_rows.add(i)
            elif msom == 0 and organ is not None:
                problems.append({"row": i + 2, "column": "msom_organ", "value": organ, "patient": ids[i] or None,
                                 "expected": "an empty cell when msom is 0"})
                bad_rows.add(i)
    problems.sort(key=lambda p: (p["row"] or 0, [c.name for c in schema].index(p["column"])
                                 if p["column"] in names else 99))
    # without a required column no row is usable: that stops even a collecting caller
    if problems and (not collect or missing_columns):
        raise ClinicalTableError(problems, file=file)

    keep = [i for i in range(n) if i not in bad_rows]
    out = pd.DataFrame(index=pd.Index([ids[i] for i in keep], name="patient_id", dtype=object))
    for col in schema:
        if col.kind == "id":
            continue
        vals = [typed[col.name][i] for i in keep]
        if col.kind == "category":
            out[col.name] = pd.Categorical(vals, categories=list(col.allowed))
        elif col.kind in ("int", "binary"):
            if any(v is None for v in vals):
                out[col.name] = pd.array(vals, dtype="Int64")
            else:
                out[col.name] = np.asarray(vals, dtype=np.int64)
        else:
            out[col.name] = np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
    extra = [c for c in df.columns if c not in names]
    for c in extra:
        out[c] = [str(df.at[df.index[i], c]) for i in keep]
    if collect:
        return out, problems
    return out


def load_clinical(path: str | Path, *, collect: bool = False, schema: tuple[Column, ...] = CLINICAL_SCHEMA):
    """Read and validate a clinical table; see ``validate_clinical``."""
    return validate_clinical(read_clinical_table(path), file=path, collect=collect, schema=schema)


def relaxed_schema(path: str | Path, keep_required: tuple[str, ...] = ("patient_id", "msom"),
                   schema: tuple[Column, ...] = CLINICAL_SCHEMA) -> tuple[tuple[Column, ...], list[str]]:
    """The schema with every column the table at ``path`` lacks made optional, except
    ``keep_required``; and the list of those lacking columns. For scoring a cohort with a frozen
    model (external validation), where a missing predictor only rules out the models that use it."""
    import dataclasses  # noqa: PLC0415
    present = {str(c).strip().lower() for c in read_clinical_table(path).columns}
    lacking = [c.name for c in schema if c.name.lower() not in present and c.name not in keep_required]
    return tuple(dataclasses.replace(c, required=False) if c.name in lacking else c for c in schema), lacking


def empty_clinical(schema: tuple[Column, ...] = CLINICAL_SCHEMA) -> pd.DataFrame:
    """A table with the schema's columns and no rows (a cohort without a clinical table)."""
    raw = pd.DataFrame({c.name: pd.Series([], dtype=object) for c in schema})
    return validate_clinical(raw)


def _plain(v):
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return None if math.isnan(float(v)) else float(v)
    return v


def clinical_record(table: pd.DataFrame, patient_id: str) -> dict | None:
    """One patient's row as a plain dict (Python scalars, None for empty cells), or None."""
    if patient_id not in table.index:
        return None
    row = table.loc[patient_id]
    rec = {"patient_id": patient_id}
    rec.update({k: _plain(v) for k, v in row.items()})
    return rec


def outcome_from_record(rec: dict | None) -> Outcome | None:
    """The patient's Outcome, or None if the outcome columns are not all filled in."""
    if rec is None:
        return None
    need = ("msom", "dmfs_months", "os_months", "os_event")
    if any(rec.get(k) is None for k in need):
        return None
    return Outcome(msom=bool(rec["msom"]), organ=rec.get("msom_organ"),
                   dmfs_months=float(rec["dmfs_months"]), os_months=float(rec["os_months"]),
                   os_event=bool(rec["os_event"]))
