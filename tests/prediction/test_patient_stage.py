"""The patient-level models on a run folder (6 tiny synthetic patients): outputs, skip / refuse,
nothing fitted from validation patients, the multi-sequence model with a sequence missing."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from npc_msom.errors import StaleArtifactError
from npc_msom.prediction import prediction_stage, read_scores, train_patient_models_for_run
from npc_msom.prediction.burden import BURDEN_FEATURES

SEQ = "CE-T1WI"


def _cfg(tiny_prediction_config, **kw):
    return tiny_prediction_config(models=("patient", "patient_fusion"), inner_folds=2, **kw)


def test_patient_models_write_scores_descriptors_and_model(pred_run, tiny_prediction_config):
    cfg = _cfg(tiny_prediction_config)
    res = train_patient_models_for_run(cfg, pred_run, [SEQ])
    assert set(res) == {"patient", "patient_fusion"}
    out = pred_run / "prediction" / SEQ
    split = json.loads((pred_run / "preprocessed" / "split.json").read_text())
    for m in ("patient", "patient_fusion"):
        df = read_scores(out / m / "patient_scores.csv")
        assert sorted(df["patient_id"]) == sorted(split["train"] + split["val"])
        assert np.isfinite(df["score"]).all() and ((df["score"] > 0) & (df["score"] < 1)).all()
        metrics = json.loads((out / m / "metrics.json").read_text())
        assert metrics["selection"]["chosen"]["c"] in cfg.prediction.patient_cs
        assert set(metrics["group_norms"]) == {"burden", "deep"}
        assert (out / m / "model.json").is_file()
    desc = pd.read_csv(out / "patient" / "descriptors.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert list(desc.columns) == list(BURDEN_FEATURES)
    assert (desc["gtv_volume_ml"] > 0).all()
    # the region vectors were cached: a second model with other C grid reuses them
    assert any((out / "features").glob("regions-*.npz"))


def test_patient_models_skip_when_unchanged_and_refuse_other_settings(pred_run, tiny_prediction_config):
    cfg = _cfg(tiny_prediction_config)
    train_patient_models_for_run(cfg, pred_run, [SEQ])
    again = train_patient_models_for_run(cfg, pred_run, [SEQ])
    assert all(r.skipped for r in again.values())
    with pytest.raises(StaleArtifactError, match="ring_mm"):
        train_patient_models_for_run(_cfg(tiny_prediction_config, ring_mm=3.0), pred_run, [SEQ])
    redone = train_patient_models_for_run(_cfg(tiny_prediction_config, ring_mm=3.0), pred_run, [SEQ], force=True)
    assert not any(r.skipped for r in redone.values())


def test_nothing_fitted_changes_with_validation_patients_values(pred_run, tiny_prediction_config):
    cfg = _cfg(tiny_prediction_config)
    train_patient_models_for_run(cfg, pred_run, [SEQ])
    model_a = json.loads((pred_run / "prediction" / SEQ / "patient_fusion" / "model.json").read_text())
    split = json.loads((pred_run / "preprocessed" / "split.json").read_text())
    clin = pd.read_csv(pred_run / "cohort" / "clinical.csv", dtype={"patient_id": str})
    val = clin["patient_id"].isin(split["val"])
    clin.loc[val, "age"] = clin.loc[val, "age"] + 30
    clin.loc[val, "msom"] = 1 - clin.loc[val, "msom"]
    clin.to_csv(pred_run / "cohort" / "clinical.csv", index=False)
    # the validation patients' images change too: their slices are blanked
    from PIL import Image
    sl = pd.read_csv(pred_run / "preprocessed" / SEQ / "slices.csv", dtype={"patient_id": str})
    for f in sl.loc[sl["patient_id"].isin(split["val"]), "file_name"]:
        p = pred_run / "preprocessed" / SEQ / f
        Image.fromarray(np.full(np.asarray(Image.open(p)).shape, 7, np.uint8)).save(p)
    for p in (pred_run / "prediction" / SEQ / "features").glob("regions-*.npz"):
        p.unlink()
    train_patient_models_for_run(cfg, pred_run, [SEQ], force=True)
    model_b = json.loads((pred_run / "prediction" / SEQ / "patient_fusion" / "model.json").read_text())
    for part in ("image", "fusion", "encoder"):
        assert model_a[part] == model_b[part], part


def test_stage_runs_per_sequence_and_multi_sequence_with_a_missing_sequence(pred_run, tiny_prediction_config,
                                                                            monkeypatch):
    cfg = _cfg(tiny_prediction_config)
    # one patient loses its T2WI slices: the multi-sequence model still scores it, from the others
    sl = pd.read_csv(pred_run / "preprocessed" / "T2WI" / "slices.csv", dtype={"patient_id": str})
    gone = sl["patient_id"].iloc[0]
    sl[sl["patient_id"] != gone].to_csv(pred_run / "preprocessed" / "T2WI" / "slices.csv", index=False)
    out = prediction_stage(cfg, pred_run)
    assert {"T1WI/patient", "T2WI/patient_fusion", "CE-T1WI/patient", "combined/patient",
            "combined/patient_fusion"} <= set(out)
    t2 = read_scores(pred_run / "prediction" / "T2WI" / "patient" / "patient_scores.csv").set_index("patient_id")
    assert not np.isfinite(t2.loc[gone, "score"]) and "no scored slice" in t2.loc[gone, "note"]
    multi = read_scores(pred_run / "prediction" / "combined" / "patient" / "patient_scores.csv").set_index("patient_id")
    assert np.isfinite(multi.loc[gone, "score"]) and "missing sequences" in multi.loc[gone, "note"]
    groups = json.loads((pred_run / "prediction" / "combined" / "patient" / "metrics.json").read_text())["groups"]
    assert set(groups) == {f"{g}:{s}" for g in ("burden", "deep") for s in ("T1WI", "T2WI", "CE-T1WI")}

    # resumed with the same settings: every patient model is up to date, so no patient input is computed
    import npc_msom.prediction.patient as patient_mod

    def refuse(*a, **k):
        raise AssertionError("patient inputs recomputed on resume")
    monkeypatch.setattr(patient_mod, "patient_inputs", refuse)
    again = prediction_stage(cfg, pred_run)
    assert all(again[k].skipped for k in ("T1WI/patient", "combined/patient_fusion"))


def test_shared_pass_fills_the_study_cache_with_the_study_vectors(pred_run, tiny_prediction_config):
    """The region pass writes the study's P3 vectors too; they equal what the study's own pass computes."""
    import torch
    from npc_msom.prediction.features import pooled_features
    from npc_msom.prediction.patient import patient_inputs
    from npc_msom.prediction.stage import _digest, _extractor
    cfg = _cfg(tiny_prediction_config, feature_views=1)
    patient_inputs(cfg, pred_run, SEQ, torch.device("cpu"))
    net, key, _ = _extractor(cfg, pred_run, SEQ, 0, 96)
    cache = pred_run / "prediction" / SEQ / "features" / f"{_digest(key)}.npz"
    with np.load(cache) as z:
        names, feats = list(z["file_names"]), z["features"]
    assert feats.shape[1] == 1 and len(names) > 0
    own = pooled_features(net, [pred_run / "preprocessed" / SEQ / n for n in names[:4]], torch.device("cpu"),
                          mirror=False)
    np.testing.assert_allclose(feats[:4], own, rtol=1e-4, atol=1e-5)


def test_level_maps_equal_level_map(tiny_prediction_config):
    import torch
    from npc_msom.prediction.model import MSOMClassifier
    cfg = tiny_prediction_config()
    torch.manual_seed(0)
    net = MSOMClassifier(cfg.detection, 64, feature_level="P2").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        both = net.level_maps(x, ["P2", "P3"])
        p2 = net.level_map(x)
        net.feature_level = "P3"
        p3 = net.level_map(x)
    assert torch.allclose(both["P2"], p2, atol=1e-5) and torch.allclose(both["P3"], p3, atol=1e-5)


def test_automatic_mode_takes_masks_from_the_detector(pred_run, tiny_prediction_config):
    """slices: detector: the masks are the detector's own (an untrained one finds no GTV, where the
    contours have one in every patient), every patient is still scored, and the region cache of the
    detector's masks is another file than that of the contours."""
    import torch
    from npc_msom.prediction.patient import patient_inputs
    contours = patient_inputs(_cfg(tiny_prediction_config), pred_run, SEQ, torch.device("cpu")).burden
    cfg = _cfg(tiny_prediction_config, slices="detector", detector_threshold=0.5)
    res = train_patient_models_for_run(cfg, pred_run, [SEQ])
    df = read_scores(res["patient"].out_dir / "patient_scores.csv")
    assert np.isfinite(df["score"]).all()
    desc = pd.read_csv(pred_run / "prediction" / SEQ / "patient" / "descriptors.csv",
                       dtype={"patient_id": str}).set_index("patient_id")
    assert (contours["gtv_volume_ml"] > 0).all()
    assert (desc["gtv_volume_ml"] < contours.loc[desc.index, "gtv_volume_ml"]).all()
    assert len(list((pred_run / "prediction" / SEQ / "features").glob("regions-*.npz"))) == 2
    assert res["patient"].metrics["slices"] == "detector"
    # per validation patient: the descriptors from the detector's masks beside those from the contours
    split = json.loads((pred_run / "preprocessed" / "split.json").read_text())
    vs = pd.read_csv(pred_run / "prediction" / SEQ / "patient" / "descriptors_detector_vs_contours.csv",
                     dtype={"patient_id": str})
    assert set(vs["patient_id"]) == set(split["val"]) and set(vs["descriptor"]) == set(BURDEN_FEATURES)
    gtv = vs[vs["descriptor"] == "gtv_volume_ml"].set_index("patient_id")
    assert np.allclose(gtv["contours"], contours.loc[gtv.index, "gtv_volume_ml"], rtol=1e-4)
    agree = res["patient"].metrics["descriptor_agreement"]["descriptors"]["gtv_volume_ml"]
    assert agree["n"] == len(split["val"]) and agree["mean_difference"] < 0   # the untrained detector misses


def test_descriptor_agreement_by_hand():
    """detector - contours per descriptor over the patients the detector scored; a patient it missed
    keeps its contour value and a NaN detector value in the table."""
    from npc_msom.prediction.patient import descriptor_agreement
    ids = ["a", "b", "c", "d"]
    contours = pd.DataFrame({f: [1.0, 2.0, 3.0, 4.0] for f in BURDEN_FEATURES}, index=ids)
    detector = pd.DataFrame({f: [0.5, 2.0, 2.5] for f in BURDEN_FEATURES}, index=["a", "b", "c"])
    table, summary = descriptor_agreement(detector, contours, ids)
    assert len(table) == 4 * len(BURDEN_FEATURES)
    d = table[(table["descriptor"] == "n_nodes") & (table["patient_id"] == "d")].iloc[0]
    assert d["contours"] == 4.0 and np.isnan(d["detector"])
    s = summary["gtv_volume_ml"]
    assert s["n"] == 3 and s["mean_difference"] == pytest.approx(-1 / 3)
    assert s["mean_abs_difference"] == pytest.approx(1 / 3) and s["spearman"] == pytest.approx(1.0)
