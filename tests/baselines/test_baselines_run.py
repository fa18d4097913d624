"""run_baselines on the project's 6 synthetic patients: every model scores every validation
patient in stage 2's format, up-to-date outputs are skipped, and comparison.csv holds the DeLong
tests against stage 2's files."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from npc_msom.baselines import MODELS, compare_with_stage2, run_baselines, write_comparison
from npc_msom.evaluation import delong_test
from npc_msom.prediction.scores import PATIENT_COLUMNS, patient_table, read_scores, write_scores


def test_every_model_scores_every_validation_patient_and_reruns_only_what_changed(bl_run, bl_config, bl_cohort):
    split = json.loads((bl_run / "preprocessed" / "split.json").read_text())
    out = run_baselines(bl_config, bl_run, bl_cohort)
    assert set(out) == set(MODELS)
    seqs = ("T1WI", "T2WI", "CE-T1WI")
    expected = {"clinical": ("all",), "n_stage": ("all",), "largest_slice": seqs,
                "largest_slice_fusion": seqs, "radiomics": seqs}
    for model, wanted in expected.items():
        assert set(out[model]) == set(wanted), model
        for seq in wanted:
            d = bl_run / "baselines" / model / seq
            df = read_scores(d / "patient_scores.csv")
            assert list(df.columns) == list(PATIENT_COLUMNS)
            assert sorted(df.loc[df["split"] == "val", "patient_id"]) == sorted(split["val"])
            assert sorted(df.loc[df["split"] == "train", "patient_id"]) == sorted(split["train"])
            val = df[df["split"] == "val"]
            # every synthetic patient has a GTV and an N stage: every validation patient scored
            assert np.isfinite(val["score"]).all(), (model, seq, val)
            labels = bl_cohort.clinical.loc[df["patient_id"], "msom"].to_numpy(dtype=int)
            np.testing.assert_array_equal(df["label"].to_numpy(), labels)
            m = json.loads((d / "metrics.json").read_text())
            assert m["model"] == model and m["sequence"] == seq
            assert m["n_patients"] == len(split["val"]) == m["n_scored"]
            assert m["settings"]["split"] and m["settings"]["model"] == model
            assert out[model][seq]["status"] == "done"
    sel = json.loads((bl_run / "baselines" / "radiomics" / "CE-T1WI" / "selection.json").read_text())
    assert sel["n_selected"] == len(sel["coefficients"]) >= 1
    assert set(sel["selected"]) <= set(sel["after_correlation"])
    n_stage = read_scores(bl_run / "baselines" / "n_stage" / "all" / "patient_scores.csv")
    n_map = {"N0": 0, "N1": 1, "N2": 2, "N3": 3}
    assert n_stage["score"].tolist() == [n_map[bl_cohort.clinical.loc[p, "n_stage"]] for p in n_stage["patient_id"]]

    _frozen_models_give_the_runs_scores(bl_run, bl_config, bl_cohort)

    before = {p: p.stat().st_mtime_ns for p in (bl_run / "baselines").rglob("metrics.json")}
    again = run_baselines(bl_config, bl_run, bl_cohort)
    assert all(s["status"] == "up to date" for per in again.values() for s in per.values())
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # one setting of one model changed: that model alone is redone
    cfg2 = dataclasses.replace(bl_config, baselines=dataclasses.replace(bl_config.baselines, clinical_c=0.1,
                                                                        models=("clinical", "n_stage")))
    third = run_baselines(cfg2, bl_run, bl_cohort)
    assert third["clinical"]["all"]["status"] == "done" and third["n_stage"]["all"]["status"] == "up to date"


def test_unknown_model_is_refused(bl_run, bl_config, bl_cohort):
    from npc_msom.errors import ConfigError
    cfg = dataclasses.replace(bl_config, baselines=dataclasses.replace(bl_config.baselines, models=("resnet",)))
    with pytest.raises(ConfigError, match="resnet"):
        run_baselines(cfg, bl_run, bl_cohort)


def _scores(run, where, ids, splits, scores, labels, notes=None):
    df = patient_table(ids, splits, scores, labels, notes)
    write_scores(run / where, df, {"model": where})


def test_comparison_is_the_delong_test_on_patients_both_scored(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    ids = [f"P{i:02d}" for i in range(n)]
    splits = ["train"] * 10 + ["val"] * 30
    y = np.array([0, 1] * (n // 2))
    a = y + rng.normal(size=n)
    b = y + 2 * rng.normal(size=n)
    b_nan = b.copy()
    b_nan[12] = np.nan  # a validation patient the baseline could not score
    notes = [""] * n
    notes[12] = "empty GTV"
    _scores(tmp_path, "prediction/CE-T1WI/mri", ids, splits, a, y)
    _scores(tmp_path, "prediction/T2WI/fusion", ids, splits, a * 0.5, y)
    _scores(tmp_path, "baselines/radiomics/CE-T1WI", ids, splits, b_nan, y, notes)
    _scores(tmp_path, "baselines/clinical/all", ids, splits, b, y)
    path = write_comparison(tmp_path)
    df = pd.read_csv(path)
    pairs = set(zip(df["stage2_sequence"], df["stage2_model"], df["baseline"], df["baseline_sequence"]))
    # a stage-2 model meets the baselines of its own sequence and those without images
    assert pairs == {("CE-T1WI", "mri", "radiomics", "CE-T1WI"), ("CE-T1WI", "mri", "clinical", "all"),
                     ("T2WI", "fusion", "clinical", "all")}
    row = df[(df["stage2_model"] == "mri") & (df["baseline"] == "radiomics")].iloc[0]
    keep = np.array([i for i in range(10, n) if i != 12])
    ref = delong_test(y[keep], a[keep], b[keep])
    assert row["n"] == 29
    assert row["auc_diff"] == pytest.approx(ref.difference, rel=1e-5)
    assert row["p_value"] == pytest.approx(ref.p_value, rel=1e-5)
    assert row["diff_ci_low"] == pytest.approx(ref.ci_low, rel=1e-5)
    assert len(compare_with_stage2(tmp_path, all_pairs=True)) == 4


def test_comparison_refuses_files_that_disagree_on_labels(tmp_path):
    from npc_msom.errors import InputError
    ids = [f"P{i}" for i in range(8)]
    y = np.array([0, 1] * 4)
    _scores(tmp_path, "prediction/T1WI/mri", ids, ["val"] * 8, np.arange(8.0), y)
    _scores(tmp_path, "baselines/n_stage/all", ids, ["val"] * 8, np.arange(8.0), 1 - y)
    with pytest.raises(InputError, match="label"):
        compare_with_stage2(tmp_path)


def test_cross_validation_scores_every_patient_once_per_repeat(bl_run, bl_config, bl_cohort):
    pred = dataclasses.replace(bl_config.prediction, cv_folds=2, cv_repeats=2)
    cfg = dataclasses.replace(bl_config, prediction=pred,
                              baselines=dataclasses.replace(bl_config.baselines, models=("clinical", "n_stage", "radiomics")))
    out = run_baselines(cfg, bl_run, bl_cohort)
    cv = out["cv"]
    df = pd.read_csv(bl_run / "baselines" / "cv" / "cv_scores.csv", dtype={"patient_id": str})
    ids = sorted(bl_cohort.clinical.index)
    for (seq, model), g in df.groupby(["sequence", "model"]):
        for rep, r in g.groupby("repeat"):
            assert sorted(r["patient_id"]) == ids, (seq, model, rep)  # each patient once, out of fold
    assert {k.split("/")[0] for k in cv["models"]} == {"clinical", "n_stage", "radiomics"}
    # out-of-fold clinical scores differ from a fit that saw every patient
    from npc_msom.baselines.clinical import fit_clinical
    y = bl_cohort.clinical.loc[ids, "msom"].to_numpy(dtype=int)
    full = dict(zip(ids, fit_clinical(bl_cohort.clinical.loc[ids], ids, y).scores))
    oof = df[(df["model"] == "clinical") & (df["repeat"] == 0)].set_index("patient_id")["score"]
    assert not np.allclose([full[p] for p in oof.index], oof.to_numpy(), atol=1e-3)
    # n_stage has nothing to fit: its out-of-fold score is the N stage itself
    ns = df[df["model"] == "n_stage"]
    n_map = {"N0": 0, "N1": 1, "N2": 2, "N3": 3}
    assert ns["score"].tolist() == [n_map[bl_cohort.clinical.loc[p, "n_stage"]] for p in ns["patient_id"]]
    again = run_baselines(cfg, bl_run, bl_cohort)["cv"]
    assert again["seconds"] == cv["seconds"]  # read back, not recomputed


def test_patient_without_gtv_slice_keeps_its_row_with_the_reason(bl_run, bl_config):
    # no cohort given: the clinical table comes from the run folder, as stage 2 reads it
    coco_path = bl_run / "preprocessed" / "T1WI" / "coco_val.json"
    doc = json.loads(coco_path.read_text())
    victim = doc["images"][0]["patient_id"]
    ids = {im["id"] for im in doc["images"] if im["patient_id"] == victim}
    doc["annotations"] = [a for a in doc["annotations"] if not (a["image_id"] in ids and a["category_id"] == 1)]
    coco_path.write_text(json.dumps(doc))
    cfg = dataclasses.replace(bl_config, preprocess=dataclasses.replace(bl_config.preprocess, sequences=("T1WI",)),
                              baselines=dataclasses.replace(bl_config.baselines, models=("largest_slice",)))
    out = run_baselines(cfg, bl_run)
    assert set(out["largest_slice"]) == {"T1WI"}
    d = bl_run / "baselines" / "largest_slice" / "T1WI"
    df = read_scores(d / "patient_scores.csv").set_index("patient_id")
    assert np.isnan(df.loc[victim, "score"]) and "no slice with GTV" in df.loc[victim, "note"]
    assert df.loc[victim, "risk_group"] == ""
    m = json.loads((d / "metrics.json").read_text())
    assert m["n_scored"] == m["n_patients"] - 1 and victim in m["not_scored"]


def _frozen_models_give_the_runs_scores(run, config, cohort):
    """Every comparison model rebuilt from the run folder alone (npc-msom validate's path: stored
    weights, encoders and selections; the largest slice chosen again from the patient's own
    volume) gives each patient the score the baselines stage gave it."""
    from npc_msom.baselines.external import load_baselines, radiomics_scores, slice_scores, table_scores
    from npc_msom.preprocess.volume import preprocess_volume
    fb = load_baselines(config, run)
    assert fb.notes == {}
    assert set(fb.keys) == {f"baselines/{m}/{s}" for m, seqs in (("clinical", ("all",)), ("n_stage", ("all",)),
                            ("largest_slice", ("T1WI", "T2WI", "CE-T1WI")),
                            ("largest_slice_fusion", ("T1WI", "T2WI", "CE-T1WI")),
                            ("radiomics", ("T1WI", "T2WI", "CE-T1WI"))) for s in seqs}
    ids = list(cohort.patient_ids)
    got = table_scores(fb, cohort.clinical, ids)
    # the run's own feature cache: this checks the rebuilt selection and model, not the extraction
    got.update(radiomics_scores(fb, cohort, ids, run / "baselines" / "radiomics" / "cache"))
    for pid in ids:
        patient = cohort.load_patient(pid)
        for seq, series in patient.series.items():
            for k, v in slice_scores(fb, seq, preprocess_volume(series, config.preprocess),
                                     cohort.clinical.loc[[pid]]).items():
                got.setdefault(k, {})[pid] = v
    assert set(got) == set(fb.keys)
    for key, per in got.items():
        theirs = read_scores(run / key / "patient_scores.csv").set_index("patient_id")
        mine = np.array([per[p]["score"] for p in theirs.index])
        np.testing.assert_allclose(mine, theirs["score"].to_numpy(float), atol=1e-5, err_msg=key)
    # a run made before the weights were kept: named, not scored
    (run / "baselines" / "largest_slice" / "T2WI" / "checkpoint.pt").rename(run / "kept.pt")
    try:
        fb2 = load_baselines(config, run)
        assert "baselines/largest_slice/T2WI" not in fb2.keys
        assert "rerun the baselines stage" in fb2.notes["baselines/largest_slice/T2WI"]
    finally:
        (run / "kept.pt").rename(run / "baselines" / "largest_slice" / "T2WI" / "checkpoint.pt")
    # features extracted another way (another parameter file or PyRadiomics) are refused, not scored
    fb.radiomics_key = "0" * 16
    assert radiomics_scores(fb, cohort, ids, run / "baselines" / "radiomics" / "cache") == {}
    assert all("not the run's" in fb.notes[k] for k in fb.radiomics)
