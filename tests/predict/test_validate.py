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


@pytest.mark.slow
def test_run_validated_on_its_own_cohort_gives_the_runs_scores_and_refits_nothing(trained_run, synth_cohort_dir,
                                                                                  tmp_path, capsys):
    before = _digests(trained_run)
    out = tmp_path / "ext"
    assert main(["validate", "--run", str(trained_run), "--cohort", str(synth_cohort_dir), "--out", str(out),
                 "--allow-overlap", "--device", "cpu"]) == 0
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
    reader, naming the column (as npc-msom run refuses it)."""
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
