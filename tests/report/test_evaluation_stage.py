"""The evaluation stage on a fake run folder: Table 3's numbers are the statistics functions' on the
patient_scores files, the Kaplan–Meier numbers are kaplan_meier's / logrank_test's on the
validation patients with the training cut-off, the optimistic version is labelled, and the stage
skips itself only while its inputs are unchanged."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from npc_msom.evaluation import delong_test, median_cutoff, roc_auc, threshold_metrics, youden_cutoff
from npc_msom.evaluation.stage import OPTIMISTIC_LABEL, evaluation_stage, find_score_files
from npc_msom.prediction.scores import read_scores
from npc_msom.survival import kaplan_meier, logrank_test

from report_fixtures import make_fake_run, stub_figures, with_evaluation


def _val(df):
    v = df[(df["split"] == "val") & np.isfinite(df["score"])]
    return v["label"].to_numpy(int), v["score"].to_numpy(float), v


def test_table3_numbers_are_the_statistics_of_the_score_files(evaluated_run):
    run, config, result, _ = evaluated_run
    t3 = pd.read_csv(run / "evaluation" / "table3.csv")
    files = {sf.key: sf.path for sf in find_score_files(run)}
    assert list(t3["key"]) == list(files)          # every model, stage 2 first
    assert len(t3) == 3 * 2 + 1 + 3 * 2 + 1
    truth = pd.read_csv(run / "cohort" / "truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    for r in t3.to_dict(orient="records"):
        df = read_scores(files[r["key"]])
        y, s, v = _val(df)
        auc = roc_auc(y, s)
        assert r["n_scored"] == len(y) == 24 and r["n_pos"] == y.sum()
        assert r["auc"] == pytest.approx(auc.auc, abs=1e-6)
        assert (r["auc_ci_low"], r["auc_ci_high"]) == pytest.approx((auc.ci_low, auc.ci_high), abs=1e-6)
        med = threshold_metrics(y, s, median_cutoff(s), "median")
        assert (r["precision"], r["recall"], r["accuracy"]) == pytest.approx(
            (med.precision.estimate, med.recall.estimate, med.accuracy.estimate), abs=1e-6)
        tm = threshold_metrics(y, s, float(df["cutoff"].iloc[0]), "given")
        assert r["accuracy_train_cutoff"] == pytest.approx(tm.accuracy.estimate, abs=1e-6)
        oracle = roc_auc(y, truth.loc[list(v["patient_id"]), "true_risk"].to_numpy(float))
        assert r["oracle_auc"] == pytest.approx(oracle.auc, abs=1e-6)
        if r["group"] == "stage 2":
            ref = read_scores(files[r["delong_reference"]])
            yr, sr, vr = _val(ref)
            assert list(vr["patient_id"]) == list(v["patient_id"])
            assert r["delong_p"] == pytest.approx(delong_test(y, s, sr).p_value, rel=1e-5)
        else:
            assert np.isnan(r["delong_p"])
    ref = t3.set_index("key")["delong_reference"]
    assert ref["T2WI/mri"] == "largest_slice/T2WI" and ref["CE-T1WI/fusion"] == "largest_slice_fusion/CE-T1WI"
    assert ref["combined/mean"] == "largest_slice_fusion/CE-T1WI"
    # the models differ: a table that repeated one model's numbers would fail here
    assert t3["auc"].nunique() > 8


def test_km_numbers_use_validation_patients_and_the_training_cutoff(evaluated_run):
    run, config, result, _ = evaluated_run
    assert result["survival_model"] == "CE-T1WI/fusion"
    sv = pd.read_csv(run / "evaluation" / "survival.csv")
    df = read_scores(run / "prediction" / "CE-T1WI" / "fusion" / "patient_scores.csv")
    clin = pd.read_csv(run / "cohort" / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    val = df[df["split"] == "val"]
    g = val["risk_group"].to_numpy()
    assert set(g) == {"low", "high"}
    assert (g == "high").tolist() == (val["score"] >= val["cutoff"]).tolist()
    for endpoint, tcol, ecol in (("DMFS", "dmfs_months", "msom"), ("OS", "os_months", "os_event")):
        row = sv[(sv["key"] == "CE-T1WI/fusion") & (sv["endpoint"] == endpoint) & ~sv["optimistic"]].iloc[0]
        t = clin.loc[list(val["patient_id"]), tcol].to_numpy(float)
        e = clin.loc[list(val["patient_id"]), ecol].to_numpy(int)
        km = kaplan_meier(t, e, g, groups=["low", "high"])
        lr = logrank_test(t, e, g, groups=["low", "high"])
        assert row["population"] == "validation patients, training cut-off"
        assert (row["n_low"], row["n_high"]) == ((g == "low").sum(), (g == "high").sum())
        assert row["events_high"] == e[g == "high"].sum()
        assert row["rate_low"] == pytest.approx(km.curve("low").survival_at(36).survival, abs=1e-6)
        assert row["rate_high"] == pytest.approx(km.curve("high").survival_at(36).survival, abs=1e-6)
        assert row["chi2"] == pytest.approx(lr.chi2, rel=1e-5) and row["p_value"] == pytest.approx(lr.p_value, rel=1e-4)
        assert row["cutoff"] == pytest.approx(df["cutoff"].iloc[0])

    # the study's version: every patient, Youden's cut-off on the same patients, and labelled so
    opt = sv[(sv["key"] == "CE-T1WI/fusion") & sv["optimistic"]]
    assert set(opt["population"]) == {OPTIMISTIC_LABEL}
    cut = youden_cutoff(df["label"], df["score"])
    r = opt[opt["endpoint"] == "DMFS"].iloc[0]
    assert r["cutoff"] == pytest.approx(cut, rel=1e-5)
    assert r["n_low"] + r["n_high"] == len(df) == 80
    assert r["n_high"] == (df["score"] >= cut).sum()
    # every optimistic figure says so in its record and caption
    figs = result["figures"]
    assert figs["figure4_optimistic"]["optimistic"] is True and OPTIMISTIC_LABEL in figs["figure4_optimistic"]["caption"]
    assert figs["figure4"]["optimistic"] is False and "optimistic" not in figs["figure4"]["caption"]


def test_time_to_event_view_is_score_survival_on_validation_patients(evaluated_run):
    from npc_msom.survival import score_survival
    run, config, result, _ = evaluated_run
    tte = pd.read_csv(run / "evaluation" / "time_to_event.csv")
    assert list(tte["key"]) == result["main_models"]
    row = tte[tte["key"] == "CE-T1WI/fusion"].iloc[0]
    df = read_scores(run / "prediction" / "CE-T1WI" / "fusion" / "patient_scores.csv")
    clin = pd.read_csv(run / "cohort" / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    y, s, val = _val(df)
    ids = list(val["patient_id"])
    v = score_survival(clin.loc[ids, "dmfs_months"], clin.loc[ids, "msom"], s, n_stage=clin.loc[ids, "n_stage"])
    assert row["n"] == len(ids) and row["events"] == clin.loc[ids, "msom"].sum()
    assert row["hr_per_sd"] == pytest.approx(v.cox_score.terms[0].hr, rel=1e-5)
    assert row["adj_hr_per_sd"] == pytest.approx(v.cox_score_n_stage.terms[0].hr, rel=1e-5)
    assert row["ph_p"] == pytest.approx(v.cox_score.terms[0].ph_p, rel=1e-5)
    assert row["harrell_c"] == pytest.approx(v.harrell_c, rel=1e-5)
    assert row["uno_c"] == pytest.approx(v.uno_c, rel=1e-5)
    assert row["auc_24m"] == pytest.approx(v.time_auc[1].auc, rel=1e-5, nan_ok=True)
    assert row["population"] == "validation patients, training cut-off"
    assert "evaluation/time_to_event.csv" in result["artifacts"]


def test_figures_png_and_svg_and_inputs_recorded(evaluated_run):
    run, config, result, _ = evaluated_run
    assert set(result["figures"]) == {"figure3", "calibration", "decision_curve", "figure4", "figure4_optimistic"}
    for rec in result["figures"].values():
        with Image.open(run / rec["png"]) as im:
            im.load()
            assert im.size[0] > 500 and im.size[1] > 300
        assert "<svg" in (run / rec["svg"]).read_text()[:2000]
    assert len(result["figures"]["figure3"]["models"]) == 14
    assert result["main_models"] == ["T1WI/fusion", "T2WI/fusion", "CE-T1WI/fusion", "combined/mean"]
    saved = json.loads((run / "evaluation" / "evaluation.json").read_text())
    inputs = saved["settings"]["inputs"]
    assert len(inputs["CE-T1WI/fusion"]) == 16 and inputs["cohort/truth.csv"] is not None
    assert saved["settings"]["evaluation"]["survival_model"] == "CE-T1WI/fusion"
    for a in saved["artifacts"]:
        assert (run / a).is_file(), a


def test_stage_skips_when_up_to_date_and_redoes_on_changed_input(fake_run, monkeypatch):
    stub_figures(monkeypatch)
    run, config = fake_run
    assert evaluation_stage(config, run)["status"] == "done"
    t3 = run / "evaluation" / "table3.csv"
    before = t3.stat().st_mtime_ns
    assert evaluation_stage(config, run)["status"] == "up to date"
    assert t3.stat().st_mtime_ns == before

    # one validation score changes -> the stage reruns and the AUC follows the file
    path = run / "prediction" / "T1WI" / "mri" / "patient_scores.csv"
    df = pd.read_csv(path, dtype={"patient_id": str})
    val = df.index[df["split"] == "val"]
    df.loc[val, "score"] = 1.0 - df.loc[val, "score"]
    df.to_csv(path, index=False)
    res = evaluation_stage(config, run)
    assert res["status"] == "done"
    new = pd.read_csv(t3).set_index("key").loc["T1WI/mri", "auc"]
    y, s, _ = _val(read_scores(path))
    assert new == pytest.approx(roc_auc(y, s).auc, abs=1e-6)

    # other settings or a lost figure also rerun it
    assert evaluation_stage(with_evaluation(config, survival_time_months=24.0), run)["status"] == "done"
    sv = pd.read_csv(run / "evaluation" / "survival.csv")
    assert set(sv["rate_time_months"]) == {24.0}
    os.remove(run / "evaluation" / "figure3.svg")
    assert evaluation_stage(with_evaluation(config, survival_time_months=24.0), run)["status"] == "done"
    assert (run / "evaluation" / "figure3.svg").is_file()


def test_missing_comparison_models_truth_and_survival_model(tmp_path, monkeypatch):
    stub_figures(monkeypatch)
    run, config = make_fake_run(tmp_path / "run", baselines=False, truth=False)
    res = evaluation_stage(with_evaluation(config, survival_model="T2WI/mri"), run)
    t3 = pd.read_csv(run / "evaluation" / "table3.csv").set_index("key")
    assert list(t3["group"].unique()) == ["stage 2"]
    assert t3["oracle_auc"].isna().all()
    assert "comparison model largest_slice/T1WI not run" in t3.loc["T1WI/mri", "note"]
    assert res["survival_model"] == "T2WI/mri"
    # a survival model that was not run: Figure 4 falls back to the first fusion model and says so
    res = evaluation_stage(with_evaluation(config, survival_model="PD/fusion"), run)
    assert res["survival_model"] == "T1WI/fusion"
    assert any("PD/fusion was not run" in n for n in res["notes"])


def test_nothing_to_evaluate(tmp_path):
    from npc_msom.config import Config
    assert evaluation_stage(Config(), tmp_path)["status"] == "not run"
