"""``npc-msom validate``: the run's frozen models on a whole cohort (fixtures: tests/predict/conftest.py)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from npc_msom.cli import main
from npc_msom.prediction.scores import read_scores
from npc_msom.runtime import file_digest


def _digests(run):
    return {str(p.relative_to(run)): file_digest(p) for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_with_baselines(trained_run, run_config, tmp_path_factory):
    """trained_run with every comparison model on T1WI (config.yaml's baselines settings)."""
    from npc_msom.baselines import run_baselines
    root = tmp_path_factory.mktemp("with_baselines") / "run"
    shutil.copytree(trained_run, root)
    run_baselines(run_config, root)
    return root


BASELINE_KEYS = ("baselines/clinical/all", "baselines/n_stage/all", "baselines/largest_slice/T1WI",
                 "baselines/largest_slice_fusion/T1WI", "baselines/radiomics/T1WI")


@pytest.mark.slow
def test_run_validated_on_its_own_cohort_gives_the_runs_scores_and_refits_nothing(run_with_baselines,
                                                                                  synth_cohort_dir, tmp_path, capsys):
    trained_run = run_with_baselines
    before = _digests(trained_run)
    out = tmp_path / "ext"
    assert main(["validate", "--run", str(trained_run), "--cohort", str(synth_cohort_dir), "--out", str(out),
                 "--allow-overlap", "--recalibrate", "intercept", "--device", "cpu"]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    assert _digests(trained_run) == before          # nothing of the run was refitted or rewritten
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 6 and summary["overlap_allowed"]
    for key in ("T1WI/mri", "T1WI/fusion", "T2WI/patient", "T2WI/patient_fusion", "combined/patient",
                "combined/patient_fusion", "combined/mean"):
        where, model = key.split("/")
        mine = read_scores(out / where / model / "patient_scores.csv").set_index("patient_id")
        run = read_scores(trained_run / "prediction" / where / model / "patient_scores.csv").set_index("patient_id")
        assert set(mine.index) == set(run.index), key
        assert np.allclose(mine["score"], run.loc[mine.index, "score"], atol=1e-5), key
        assert (mine["risk_group"] == run.loc[mine.index, "risk_group"]).all(), key
        m = json.loads((out / where / model / "metrics.json").read_text())
        assert m["evaluated_on"] == "external" and m["risk_cutoff"] == pytest.approx(
            json.loads((trained_run / "prediction" / where / model / "metrics.json").read_text())["risk_cutoff"])
        assert m["auc"] is None or 0 <= m["auc"]["auc"] <= 1
    html = (out / "report.html").read_text()
    assert "<h1>External validation</h1>" in html and "internal validation AUC" in html
    _check_outcome_views(out, synth_cohort_dir, summary, html)
    _check_comparison_models(out, trained_run, summary, html)

    # resumable: a second call reuses every patient's cached scores
    import npc_msom.predict as predict_mod

    def refuse(*a, **k):
        raise AssertionError("a patient was scored again")
    mp = pytest.MonkeyPatch()
    mp.setattr(predict_mod, "predict_input", refuse)
    try:
        assert main(["validate", "--run", str(trained_run), "--cohort", str(synth_cohort_dir), "--out", str(out),
                     "--allow-overlap", "--device", "cpu"]) == 0
    finally:
        mp.undo()


def _check_comparison_models(out, run, summary, html):
    """The comparison models, rebuilt from what the run stored, give the run's own scores; the
    DeLong table pairs them with stage 2 as the run's comparison.csv does."""
    from npc_msom.baselines.comparison import compared, paired_delong
    assert summary["comparison_models_not_scored"] == {}
    assert set(summary["comparison_models"]) == set(BASELINE_KEYS)
    for key in BASELINE_KEYS:
        mine = read_scores(out / key / "patient_scores.csv").set_index("patient_id")
        theirs = read_scores(run / key / "patient_scores.csv").set_index("patient_id")
        assert set(mine.index) == set(theirs.index), key
        a, b = mine["score"].to_numpy(float), theirs.loc[mine.index, "score"].to_numpy(float)
        assert np.array_equal(np.isfinite(a), np.isfinite(b)), key
        assert np.isfinite(a).sum() >= 5, key                      # every model scored (nearly) every patient
        assert np.allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=1e-5), key
        assert (mine["risk_group"] == theirs.loc[mine.index, "risk_group"]).all(), key
    cmp = pd.read_csv(out / "comparison.csv")
    pairs = {(f"{r.stage2_sequence}/{r.stage2_model}", f"baselines/{r.baseline}/{r.baseline_sequence}")
             for r in cmp.itertuples()}
    want = {(k, b) for k in summary["models"] for b in BASELINE_KEYS if compared(k.split("/")[0], b.split("/")[2])}
    assert pairs == want and ("T2WI/mri", "baselines/largest_slice/T1WI") not in pairs
    assert ("T1WI/mri", "baselines/radiomics/T1WI") in pairs and ("combined/mean", "baselines/radiomics/T1WI") in pairs
    m = json.loads((out / "T1WI" / "mri" / "metrics.json").read_text())
    rows = {r["baseline"] + "/" + r["baseline_sequence"]: r for r in m["delong_vs_comparison"]}
    assert set(rows) == {"clinical/all", "n_stage/all", "largest_slice/T1WI", "largest_slice_fusion/T1WI",
                         "radiomics/T1WI"}
    again = paired_delong(read_scores(out / "T1WI" / "mri" / "patient_scores.csv"),
                          read_scores(out / "baselines/clinical/all/patient_scores.csv"), split="external")
    assert again["n"] == rows["clinical/all"]["n"] == 6
    for k in ("auc_stage2", "auc_baseline", "p_value"):
        assert rows["clinical/all"][k] == pytest.approx(again[k], nan_ok=True)
    assert rows["clinical/all"]["auc_baseline"] == pytest.approx(summary["comparison_models"][
        "baselines/clinical/all"]["external_auc"]["auc"])
    assert 'id="external-comparison-models"' in html and 'id="external-delong"' in html


def _check_outcome_views(out, cohort_dir, summary, html):
    """survival.csv, time_to_event.csv and the figures are the survival functions' on the external rows."""
    from npc_msom.survival import kaplan_meier, logrank_test, score_survival
    from npc_msom.survival.timedep import TIME_TO_EVENT_COLUMNS
    from npc_msom.validate import EXTERNAL_LABEL
    clin = pd.read_csv(cohort_dir / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    tte = pd.read_csv(out / "time_to_event.csv")
    assert list(tte.columns) == list(TIME_TO_EVENT_COLUMNS)
    assert set(tte["key"]) == set(summary["models"]) and set(tte["population"]) == {EXTERNAL_LABEL}
    sc = read_scores(out / "T1WI" / "fusion" / "patient_scores.csv")
    ids = list(sc["patient_id"])
    t, e = clin.loc[ids, "dmfs_months"].to_numpy(float), clin.loc[ids, "msom"].to_numpy(int)
    row = tte[tte["key"] == "T1WI/fusion"].iloc[0]
    assert (row["n"], row["events"]) == (len(ids), e.sum())
    assert e.sum() > 0                      # the 6 patients hold events: the comparisons below run
    v = score_survival(t, e, sc["score"].to_numpy(float), n_stage=clin.loc[ids, "n_stage"])
    assert row["harrell_c"] == pytest.approx(v.harrell_c, rel=1e-5, nan_ok=True)
    hr = v.cox_score.terms[0].hr if v.cox_score is not None else np.nan
    assert row["hr_per_sd"] == pytest.approx(hr, rel=1e-4, nan_ok=True)
    sv = pd.read_csv(out / "survival.csv")
    r = sv[(sv["key"] == "T1WI/fusion") & (sv["endpoint"] == "DMFS")].iloc[0]
    assert r["population"] == EXTERNAL_LABEL and r["n_low"] + r["n_high"] == len(ids)
    g = sc["risk_group"].to_numpy()
    assert r["n_high"] == (g == "high").sum() and r["events_high"] == e[g == "high"].sum()
    assert set(g) == {"low", "high"}        # both risk groups: the log-rank and KM checks run
    assert r["chi2"] == pytest.approx(logrank_test(t, e, g, groups=["low", "high"]).chi2, rel=1e-5)
    km = kaplan_meier(t, e, g, groups=["low", "high"])
    assert r["rate_low"] == pytest.approx(km.curve("low").survival_at(36).survival, abs=1e-6)
    figs = summary["figures"]
    assert (out / figs["calibration"]["png"]).is_file()
    rec = summary["recalibration"]
    assert rec["method"] == "intercept" and rec["models"]
    for k, m in rec["models"].items():
        assert m["slope"] == 1.0 and "not a validation" in m["fitted_on"]
        assert abs(m["calibration_intercept"]) < 1e-4        # fitted on these very outcomes
    assert (out / figs["calibration_recalibrated"]["png"]).is_file()
    assert "RECALIBRATED ON THE EXTERNAL COHORT" in figs["calibration_recalibrated"]["caption"]
    assert 'id="external-time-to-event"' in html and 'id="external-survival"' in html
    assert 'id="figure-calibration_recalibrated"' in html


def _fails(capsys, args, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err


def test_bad_external_cohorts(trained_run, synth_cohort_dir, new_cohort, tmp_path, capsys):
    # only the run's own patients, without --allow-overlap: excluded, so nothing is left
    out = tmp_path / "a"
    _fails(capsys, ["validate", "--run", str(trained_run), "--cohort", str(synth_cohort_dir), "--out", str(out)],
           "every patient of the external cohort is in the run's own cohort")
    assert not (out / "summary.json").exists()
    # a folder with no image
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["validate", "--run", str(trained_run), "--cohort", str(empty), "--out", str(tmp_path / "b")]) == 2
    capsys.readouterr()
    # a cohort without outcomes
    cohort_dir, _ = new_cohort
    bare = tmp_path / "bare"
    shutil.copytree(cohort_dir, bare)
    clin = pd.read_csv(bare / "clinical.csv")
    clin.drop(columns=["msom"]).to_csv(bare / "clinical.csv", index=False)
    _fails(capsys, ["validate", "--run", str(trained_run), "--cohort", str(bare), "--out", str(tmp_path / "c")],
           "msom")
    # a run folder without models
    _fails(capsys, ["validate", "--run", str(tmp_path), "--cohort", str(cohort_dir), "--out", str(tmp_path / "d")],
           "not a run folder")


def test_new_patient_scored_without_refitting(trained_run, new_cohort, tmp_path, capsys):
    """A patient the run never saw (another seed, whose PatientID the run also has with other images):
    every model scores it. A clinical table with a predictor column emptied is refused by the cohort
    reader, naming the column (as npc-msom run refuses it); one without that column scores every
    model that does not need it."""
    from npc_msom.validate import validate_cohort
    cohort_dir, _ = new_cohort
    s = validate_cohort(trained_run, cohort_dir, tmp_path / "ext", device="cpu")
    assert s["n_scored"] == 1 and {"T1WI/mri", "T1WI/fusion", "combined/patient_fusion"} <= set(s["models"])
    assert s["same_patient_id_other_images"] == ["NPC0001"] and s["excluded_overlap"] == []
    cut = tmp_path / "cut"
    shutil.copytree(cohort_dir, cut)
    clin = pd.read_csv(cut / "clinical.csv")
    clin["n_stage"] = ""
    clin.to_csv(cut / "clinical.csv", index=False)
    _fails(capsys, ["validate", "--run", str(trained_run), "--cohort", str(cut), "--out", str(tmp_path / "ext2")],
           "n_stage")
    assert not (tmp_path / "ext2" / "summary.json").exists()

    gone = tmp_path / "gone"
    shutil.copytree(cohort_dir, gone)
    pd.read_csv(gone / "clinical.csv").drop(columns=["n_stage"]).to_csv(gone / "clinical.csv", index=False)
    s3 = validate_cohort(trained_run, gone, tmp_path / "ext3", device="cpu")
    assert s3["clinical_columns_absent"] == ["n_stage"] and "n_stage" in s3["fusion_clinical_columns_missing"]
    assert {"T1WI/mri", "T1WI/patient", "combined/patient"} <= set(s3["models"])
    assert not any(k.endswith("fusion") for k in s3["models"])
    assert "Fusion models not scored" in (tmp_path / "ext3" / "report.html").read_text()


def _rename_patient(src, dst, new_id):
    import pydicom
    shutil.copytree(src, dst)
    for f in dst.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.PatientName = new_id, new_id
        ds.save_as(f)


def test_a_renamed_copy_of_a_run_patient_is_found_by_its_pixels(trained_run, synth_cohort_dir, new_cohort, tmp_path):
    from npc_msom.validate import validate_cohort
    cohort_dir, new_patient = new_cohort
    mixed = tmp_path / "mixed"
    (mixed / "dicom").mkdir(parents=True)
    shutil.copytree(new_patient, mixed / "dicom" / new_patient.name)
    _rename_patient(synth_cohort_dir / "dicom" / "NPC0002", mixed / "dicom" / "HOSP0002", "HOSP0002")
    run_clin = pd.read_csv(synth_cohort_dir / "clinical.csv", dtype={"patient_id": str})
    copy = run_clin[run_clin["patient_id"] == "NPC0002"].assign(patient_id="HOSP0002")
    pd.concat([pd.read_csv(cohort_dir / "clinical.csv", dtype={"patient_id": str}), copy]).to_csv(
        mixed / "clinical.csv", index=False)
    s = validate_cohort(trained_run, mixed, tmp_path / "ext", device="cpu")
    assert s["same_images_other_patient_id"] == {"HOSP0002": "NPC0002"}
    assert s["excluded_overlap"] == ["HOSP0002"] and s["n_scored"] == 1
    scored = read_scores(tmp_path / "ext" / "T1WI" / "mri" / "patient_scores.csv")
    assert list(scored["patient_id"]) == [new_patient.name]


def _shift_intensity(src, dst, gamma):
    """The cohort with every MR pixel through a gamma curve (another scanner's contrast)."""
    import pydicom
    shutil.copytree(src, dst)
    n = 0
    for f in (dst / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        if ds.Modality != "MR":
            continue
        n += 1
        a = ds.pixel_array.astype(np.float64)
        top = max(float(a.max()), 1.0)
        ds.PixelData = np.round(top * (a / top) ** gamma).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(f)
    assert n > 0


@pytest.mark.slow
def test_an_intensity_shift_is_scored_without_refitting_and_its_drift_shows(trained_run, synth_cohort_dir,
                                                                            tmp_path):
    """The run's own patients through another contrast curve: scored by the same frozen models (no
    file of the run changes), and the scores, and so the calibration, move away from the unshifted
    cohort's."""
    from npc_msom.validate import validate_cohort
    before = _digests(trained_run)
    plain = validate_cohort(trained_run, synth_cohort_dir, tmp_path / "plain", allow_overlap=True, device="cpu")
    shifted_dir = tmp_path / "shifted"
    _shift_intensity(synth_cohort_dir, shifted_dir, gamma=0.5)
    shifted = validate_cohort(trained_run, shifted_dir, tmp_path / "ext", device="cpu")
    assert _digests(trained_run) == before
    # other pixels under the same PatientIDs: not the run's patients, so scored, not excluded
    assert shifted["excluded_overlap"] == [] and len(shifted["same_patient_id_other_images"]) == 6
    moved = {}
    for key in ("T1WI/mri", "T1WI/patient", "T2WI/mri", "T2WI/patient", "combined/patient"):
        where, model = key.split("/")
        a = read_scores(tmp_path / "plain" / where / model / "patient_scores.csv").set_index("patient_id")["score"]
        b = read_scores(tmp_path / "ext" / where / model / "patient_scores.csv").set_index("patient_id")["score"]
        moved[key] = float(np.abs(a - b.loc[a.index]).mean())
    assert max(moved.values()) > 0.01, moved
    key = max(moved, key=moved.get)
    cal_a = plain["models"][key]["calibration"] or {}
    cal_b = shifted["models"][key]["calibration"] or {}
    assert cal_a.get("brier") != pytest.approx(cal_b.get("brier"), abs=1e-4), (key, cal_a, cal_b)
