"""The real chain on 6 synthetic patients: cohort (truth.csv copied into the run) -> preprocessing
(the session's ``small_run``) -> stage 2 with tiny detectors -> ``pipeline.run`` with the
evaluation and report stages. With 2 validation patients most intervals are not estimable; the
stages must say so rather than fail."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from npc_msom.evaluation import roc_auc
from npc_msom.prediction.scores import model_metrics, patient_table, read_scores, write_scores

_spec = importlib.util.spec_from_file_location(
    "prediction_fixtures", Path(__file__).parents[1] / "prediction" / "conftest.py")
_pred = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pred)


def test_truth_csv_travels_with_the_run(small_run, synth_cohort_dir):
    copied = pd.read_csv(small_run / "cohort" / "truth.csv", dtype={"patient_id": str})
    original = pd.read_csv(synth_cohort_dir / "truth.csv", dtype={"patient_id": str})
    pd.testing.assert_frame_equal(copied, original)


@pytest.mark.slow
def test_prediction_then_evaluation_and_report_stages(small_run, synth_cohort_dir, tmp_path):
    from npc_msom import pipeline
    from npc_msom.prediction import prediction_stage

    run = tmp_path / "run"
    shutil.copytree(small_run / "preprocessed", run / "preprocessed")
    shutil.copytree(small_run / "cohort", run / "cohort")
    cfg = _pred.tiny_prediction_config()
    # two sequences: enough for the combined model, a third of the feature extraction saved
    sequences = ("T1WI", "CE-T1WI")
    for i, seq in enumerate(sequences):
        _pred.write_detector_checkpoint(run, seq, cfg, seed=i)
    prediction_stage(cfg, run, sequences)
    # a comparison model for CE-T1WI (the real one trains a network: minutes)
    mri = read_scores(run / "prediction" / "CE-T1WI" / "mri" / "patient_scores.csv")
    df = patient_table(mri["patient_id"], mri["split"], np.clip(mri["score"] * 0.5 + 0.2, 0, 1), mri["label"])
    write_scores(run / "baselines" / "largest_slice" / "CE-T1WI", df, model_metrics(df))

    res = pipeline.run(cfg, synth_cohort_dir, run, stages=("evaluation", "report"))
    assert res.stages["evaluation"]["status"] == "done"
    assert res.stages["report"] == str(run / "report.html")
    t3 = pd.read_csv(run / "evaluation" / "table3.csv").set_index("key")
    assert "largest_slice/CE-T1WI" in t3.index and "combined/mean" in t3.index
    for key in ("CE-T1WI/fusion", "T1WI/mri"):
        sc = read_scores(run / "prediction" / key / "patient_scores.csv")
        v = sc[sc["split"] == "val"]
        if 0 < v["label"].sum() < len(v):
            assert t3.loc[key, "auc"] == pytest.approx(roc_auc(v["label"], v["score"]).auc, abs=1e-6)
        assert t3.loc[key, "n_scored"] == len(v)
    assert t3["oracle_auc"].notna().any()   # truth.csv came with the cohort
    text = (run / "report.html").read_text()
    assert 'id="table3-data"' in text and "Comparison models: not run" in text  # no comparison.csv
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models_validation_auc"]) == set(t3.index)

    # a second run finds everything up to date
    res = pipeline.run(cfg, synth_cohort_dir, run, stages=("evaluation", "report"))
    assert res.stages["evaluation"]["status"] == "up to date"
