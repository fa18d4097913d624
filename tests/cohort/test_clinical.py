import pandas as pd
import pytest

from npc_msom.cohort.clinical import (clinical_record, load_clinical, outcome_from_record,
                                      read_clinical_table, validate_clinical)
from npc_msom.cohort.schema import CLINICAL_SCHEMA
from npc_msom.errors import ClinicalTableError

from cohort_fixtures import clinical_row, write_clinical


def test_valid_table_is_typed_per_schema(tmp_path):
    path = write_clinical(tmp_path / "clinical.csv", ["P1", "P2", "P3"])
    df = load_clinical(path)
    assert list(df.index) == ["P1", "P2", "P3"] and df.index.name == "patient_id"
    assert df["age"].dtype == "int64" and df["pni"].dtype == "float64"
    assert df["induction_chemo"].dtype == "int64"
    assert isinstance(df["gender"].dtype, pd.CategoricalDtype)
    assert list(df["t_stage"].cat.categories) == ["T1", "T2", "T3", "T4"]
    assert pd.isna(df.loc["P1", "msom_organ"]) and df.loc["P2", "msom_organ"] == "liver"
    rec = clinical_record(df, "P2")
    assert rec["age"] == 41 and isinstance(rec["age"], int) and rec["msom_organ"] == "liver"
    out = outcome_from_record(rec)
    assert out.msom is True and out.organ == "liver" and out.dmfs_months == 13.0
    assert outcome_from_record(clinical_record(df, "P1")).organ is None


def test_every_bad_cell_is_reported_at_once(tmp_path):
    rows = [clinical_row(f"P{i}", i) for i in range(6)]
    rows[0]["age"] = "abc"                 # not a number  (row 2)
    rows[1]["age"] = 150                   # out of range  (row 3)
    rows[1]["gender"] = "X"                # not allowed   (row 3)
    rows[2]["pni"] = ""                    # empty         (row 4)
    rows[3]["induction_chemo"] = 2         # not binary    (row 5)
    rows[4]["patient_id"] = "P0"           # duplicate ID  (row 6)
    rows[5]["msom_organ"] = ""             # MSOM without organ (row 7; P5 has msom=1)
    rows[5]["chemo_cycles"] = 2.5          # not an integer
    path = write_clinical(tmp_path / "clinical.csv", None, rows)
    with pytest.raises(ClinicalTableError) as ei:
        load_clinical(path)
    got = {(p["row"], p["column"]) for p in ei.value.problems}
    assert got == {(2, "age"), (3, "age"), (3, "gender"), (4, "pni"), (5, "induction_chemo"),
                   (6, "patient_id"), (7, "msom_organ"), (7, "chemo_cycles")}
    by = {(p["row"], p["column"]): p for p in ei.value.problems}
    assert by[(3, "age")]["value"] == "150" and "[10, 100]" in by[(3, "age")]["expected"]
    assert "M, F" in by[(3, "gender")]["expected"]
    assert "row 2" in by[(6, "patient_id")]["expected"]
    msg = str(ei.value)
    assert "8 bad cell(s)" in msg and "clinical.csv" in msg and "'gender'" in msg


def test_missing_column_is_named(tmp_path):
    path = write_clinical(tmp_path / "c.csv", ["P1"])
    df = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=["hgb_g_l", "age"])
    df.loc[0, "gender"] = "X"
    df.to_csv(path, index=False)
    for collect in (False, True):   # a missing column stops even a collecting caller
        with pytest.raises(ClinicalTableError) as ei:
            load_clinical(path, collect=collect)
        assert [(p["row"], p["column"]) for p in ei.value.problems] == [(None, "age"), (None, "hgb_g_l"),
                                                                         (2, "gender")]


def test_excel_table_and_header_case(tmp_path):
    rows = [clinical_row(f"P{i}", i) for i in range(3)]
    rows[2]["t_stage"] = "T5"
    df = pd.DataFrame(rows)
    df.columns = [c.upper() if c == "age" else c for c in df.columns]   # 'AGE' still matches
    df.to_excel(tmp_path / "clinical.xlsx", index=False)
    with pytest.raises(ClinicalTableError) as ei:
        load_clinical(tmp_path / "clinical.xlsx")
    assert [(p["row"], p["column"], p["value"]) for p in ei.value.problems] == [(4, "t_stage", "T5")]
    good, problems = load_clinical(tmp_path / "clinical.xlsx", collect=True)
    assert list(good.index) == ["P0", "P1"] and good.loc["P1", "age"] == 41 and len(problems) == 1


def test_unreadable_table_is_a_clear_error(tmp_path):
    bad = tmp_path / "clinical.xlsx"
    bad.write_bytes(b"\x00\x01not a spreadsheet" * 20)
    with pytest.raises(ClinicalTableError, match="readable CSV or Excel"):
        read_clinical_table(bad)


def test_schema_columns_all_present_in_output(tmp_path):
    df = load_clinical(write_clinical(tmp_path / "c.csv", ["A"]))
    assert set(c.name for c in CLINICAL_SCHEMA if c.kind != "id") <= set(df.columns)
    assert validate_clinical(pd.DataFrame({c.name: [] for c in CLINICAL_SCHEMA}, dtype=object)).empty
