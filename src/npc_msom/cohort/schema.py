"""The clinical table's declared schema: name, type, unit and allowed values of every column.

``synth`` writes tables in this schema and ``cohort`` validates users' tables against it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    kind: str                       # "id" | "int" | "float" | "category" | "binary"
    unit: str = ""
    allowed: tuple[str, ...] = ()   # for "category"
    low: float | None = None        # inclusive range for numbers
    high: float | None = None
    required: bool = True
    outcome: bool = False           # outcomes are not model inputs
    label: str = ""

    def expected(self) -> str:
        if self.kind == "category":
            return "one of " + ", ".join(self.allowed)
        if self.kind == "binary":
            return "0 or 1"
        if self.kind in ("int", "float"):
            rng = f" in [{self.low:g}, {self.high:g}]" if self.low is not None and self.high is not None else ""
            unit = f" {self.unit}" if self.unit else ""
            return f"{'an integer' if self.kind == 'int' else 'a number'}{rng}{unit}"
        return "a non-empty patient ID"


CLINICAL_SCHEMA: tuple[Column, ...] = (
    Column("patient_id", "id", label="Patient ID"),
    Column("age", "int", "years", low=10, high=100, label="Age"),
    Column("gender", "category", allowed=("M", "F"), label="Gender"),
    Column("t_stage", "category", allowed=("T1", "T2", "T3", "T4"), label="T stage (AJCC 8th)"),
    Column("n_stage", "category", allowed=("N0", "N1", "N2", "N3"), label="N stage (AJCC 8th)"),
    Column("clinical_stage", "category", allowed=("I", "II", "III", "IVA"), label="Clinical stage"),
    Column("pathology", "category", allowed=("keratinizing", "non-keratinizing"),
           label="Pathology (WHO)"),
    Column("pni", "float", low=20, high=80, label="PNI"),
    Column("hgb_g_l", "float", "g/L", low=50, high=200, label="HGB (g/L)"),
    Column("induction_chemo", "binary", label="Induction chemotherapy"),
    Column("concurrent_chemo", "binary", label="Concurrent chemotherapy"),
    Column("adjuvant_chemo", "binary", label="Adjuvant chemotherapy"),
    Column("targeted_therapy", "binary", label="Targeted therapy"),
    Column("gtv_dose_gy", "float", "Gy", low=40, high=80, label="GTV dose (Gy)"),
    Column("cisplatin_mg_m2", "float", "mg/m2", low=0, high=600, label="Cumulative cisplatin (mg/m2)"),
    Column("chemo_cycles", "int", low=0, high=12, label="Chemotherapy cycles"),
    Column("msom", "binary", outcome=True, label="MSOM"),
    Column("msom_organ", "category", allowed=("liver", "lung", "bone"), required=False, outcome=True,
           label="MSOM organ"),
    Column("dmfs_months", "float", "months", low=0, high=240, outcome=True,
           label="Months to MSOM or last follow-up"),
    Column("os_months", "float", "months", low=0, high=240, outcome=True, label="OS (months)"),
    Column("os_event", "binary", outcome=True, label="Death"),
)

FEATURE_COLUMNS: tuple[str, ...] = tuple(c.name for c in CLINICAL_SCHEMA if c.kind != "id" and not c.outcome)
