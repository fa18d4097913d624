"""Stage 2 on a run folder: transfer, outputs, scores = mean of slices, cut-off from training
patients, caching = full path, settings digests, combined model, CV."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from npc_msom.errors import InputError, StaleArtifactError
from npc_msom.prediction import (MSOMClassifier, combine_for_run, cv_for_run, prediction_stage, read_scores,
                                 train_predictor_for_run, transfer_from_detector)
from npc_msom.prediction.features import pooled_features
from npc_msom.prediction.model import detector_config_from_checkpoint

SEQ = "CE-T1WI"


def test_transfer_copies_every_backbone_and_fpn_tensor(pred_run, tiny_prediction_config, caplog):
    path = pred_run / "detection" / SEQ / "checkpoint_last.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = MSOMClassifier(detector_config_from_checkpoint(ckpt), 96)
    with caplog.at_level(logging.INFO):
        n = transfer_from_detector(model, ckpt, path)
    theirs = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    own = model.backbone.state_dict()
    assert n == len(own) == len(theirs) > 100
    for k, v in own.items():
        assert torch.equal(v, theirs[k]), k
    assert f"transferred {n} backbone + FPN tensors" in caplog.text


def test_transfer_refuses_another_architecture_naming_both(pred_run, tiny_prediction_config):
    import dataclasses
    path = pred_run / "detection" / SEQ / "checkpoint_last.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    det = dataclasses.replace(detector_config_from_checkpoint(ckpt), backbone="resnet34")
    with pytest.raises(InputError) as e:
        transfer_from_detector(MSOMClassifier(det, 96), ckpt, path)
    assert "resnet18" in str(e.value) and "resnet34" in str(e.value) and str(path) in str(e.value)


def test_fusion_writes_outputs_and_patient_score_is_mean_of_slices(pred_run, tiny_prediction_config):
    cfg = tiny_prediction_config()
    r = train_predictor_for_run(cfg, pred_run, SEQ, "fusion")
    out = pred_run / "prediction" / SEQ / "fusion"
    for name in ("checkpoint.pt", "slice_scores.csv", "patient_scores.csv", "metrics.json", "history.jsonl"):
        assert (out / name).is_file(), name
    pat = read_scores(out / "patient_scores.csv")
    sl = pd.read_csv(out / "slice_scores.csv", dtype={"patient_id": str})
    split = json.loads((pred_run / "preprocessed" / "split.json").read_text())
    assert sorted(pat["patient_id"]) == sorted(split["train"] + split["val"])
    assert list(pat.columns) == ["patient_id", "split", "score", "label", "risk_group", "cutoff", "note"]
    for row in pat.itertuples():
        assert row.score == pytest.approx(sl.loc[sl["patient_id"] == row.patient_id, "probability"].mean(), rel=1e-5)
        assert row.risk_group == ("high" if row.score >= row.cutoff else "low")
    # tumour slices only (the study's rule): no preprocessed negative is scored
    slices = pd.read_csv(pred_run / "preprocessed" / SEQ / "slices.csv")
    assert set(sl["file_name"]) == set(slices.loc[~slices["negative"], "file_name"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_transferred_tensors"] > 100 and m["n_scored"] == len(split["val"])
    assert m["clinical_features"] and not any(c.startswith(("msom", "dmfs", "os_")) for c in m["clinical_features"])
    assert r.metrics["settings"]["model"] == "fusion"
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["encoder"]["feature_names"] == m["clinical_features"]
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == list(range(1, cfg.prediction.epochs + 1))


def test_cutoff_and_encoder_do_not_see_validation_patients(pred_run, tiny_prediction_config):
    cfg = tiny_prediction_config()
    out = pred_run / "prediction" / SEQ / "fusion"
    train_predictor_for_run(cfg, pred_run, SEQ, "fusion")
    before = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    cut_before = read_scores(out / "patient_scores.csv")["cutoff"].iloc[0]
    # change every validation patient's clinical values
    split = json.loads((pred_run / "preprocessed" / "split.json").read_text())
    clin = pd.read_csv(pred_run / "cohort" / "clinical.csv", dtype={"patient_id": str}).set_index("patient_id")
    clin.loc[split["val"], "age"] = 99
    clin.loc[split["val"], "pni"] = 21.0
    clin.loc[split["val"], "gender"] = "F"
    clin.to_csv(pred_run / "cohort" / "clinical.csv")
    train_predictor_for_run(cfg, pred_run, SEQ, "fusion", force=True)
    after = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert after["encoder"] == before["encoder"]
    for k in before["model"]:
        assert torch.equal(before["model"][k], after["model"][k]), k
    assert read_scores(out / "patient_scores.csv")["cutoff"].iloc[0] == cut_before


def test_cached_features_give_the_full_path_output(pred_run, tiny_prediction_config):
    cfg = tiny_prediction_config()
    path = pred_run / "detection" / SEQ / "checkpoint_last.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = MSOMClassifier(detector_config_from_checkpoint(ckpt), 96, n_clinical=3)
    transfer_from_detector(model, ckpt, path)
    torch.nn.init.normal_(model.head.fc.weight)
    model.eval()
    slices = pd.read_csv(pred_run / "preprocessed" / SEQ / "slices.csv")
    paths = [pred_run / "preprocessed" / SEQ / f for f in slices["file_name"][:6]]
    feats = pooled_features(model, paths, torch.device("cpu"), batch_size=4)
    clin = torch.randn(len(paths), 3)
    from npc_msom.detection.data import load_slice
    images = torch.from_numpy(np.stack([load_slice(p) for p in paths]))[:, None]
    with torch.no_grad():
        full = model(images, clin)
        cached = model.head(torch.from_numpy(feats[:, 0]), clin)
        mirrored = model(torch.flip(images, dims=[-1]), clin)
        cached_m = model.head(torch.from_numpy(feats[:, 1]), clin)
    assert torch.allclose(full, cached, atol=1e-5) and torch.allclose(mirrored, cached_m, atol=1e-5)
    assert not torch.allclose(full, mirrored, atol=1e-4)  # the mirror view is a real second view


def test_unchanged_settings_skip_and_changed_settings_refuse(pred_run, tiny_prediction_config):
    cfg = tiny_prediction_config()
    first = train_predictor_for_run(cfg, pred_run, SEQ, "mri")
    again = train_predictor_for_run(cfg, pred_run, SEQ, "mri")
    assert again.skipped and not first.skipped
    changed = tiny_prediction_config(lr=0.02)
    with pytest.raises(StaleArtifactError) as e:
        train_predictor_for_run(changed, pred_run, SEQ, "mri")
    assert "prediction.lr: 0.01 -> 0.02" in str(e.value) and "--force" in str(e.value)
    redone = train_predictor_for_run(changed, pred_run, SEQ, "mri", force=True)
    assert not redone.skipped and redone.metrics["settings"]["prediction"]["lr"] == 0.02


def test_stage_runs_every_sequence_model_and_combined(pred_run, tiny_prediction_config):
    cfg = tiny_prediction_config()
    out = prediction_stage(cfg, pred_run)
    assert {"T1WI/mri", "T1WI/fusion", "T2WI/mri", "T2WI/fusion", "CE-T1WI/mri", "CE-T1WI/fusion",
            "combined/mean", "combined/stack"} <= set(out)
    mean = read_scores(pred_run / "prediction" / "combined" / "mean" / "patient_scores.csv").set_index("patient_id")
    per_seq = [read_scores(pred_run / "prediction" / s / "fusion" / "patient_scores.csv").set_index("patient_id")["score"]
               for s in ("T1WI", "T2WI", "CE-T1WI")]
    expect = pd.concat(per_seq, axis=1).mean(axis=1)
    assert np.allclose(mean["score"].sort_index(), expect.sort_index(), rtol=1e-5)
    m = json.loads((pred_run / "prediction" / "combined" / "mean" / "metrics.json").read_text())
    assert m["n_scored"] == m["n_patients"] > 0


def test_cv_scores_every_patient_out_of_fold_once_per_repeat(pred_run, tiny_prediction_config):
    cfg = tiny_prediction_config(combine_sequences=("CE-T1WI", "T2WI"), epochs=2)
    res = cv_for_run(cfg, pred_run, folds=2, repeats=2)
    df = pd.read_csv(pred_run / "prediction" / "cv" / "cv_scores.csv", dtype={"patient_id": str})
    split = json.loads((pred_run / "preprocessed" / "split.json").read_text())
    everyone = sorted(split["train"] + split["val"])
    for (seq, model, rep), g in df.groupby(["sequence", "model", "repeat"]):
        assert sorted(g["patient_id"]) == everyone, (seq, model, rep)
    assert {"CE-T1WI/mri", "CE-T1WI/fusion", "T2WI/fusion", "combined/mean"} <= set(res["models"])
    assert len(res["models"]["CE-T1WI/fusion"]["auc_per_repeat"]) == 2


def test_detector_chosen_slices_score_every_patient(pred_run, tiny_prediction_config):
    cfg = tiny_prediction_config(slices="detector", detector_threshold=0.5)
    r = train_predictor_for_run(cfg, pred_run, SEQ, "mri")
    sl = pd.read_csv(pred_run / "prediction" / SEQ / "mri" / "slice_scores.csv", dtype={"patient_id": str})
    split = json.loads((pred_run / "preprocessed" / "split.json").read_text())
    # an untrained detector finds nothing above 0.5: each patient falls back to its best slice
    assert sorted(sl["patient_id"].unique()) == sorted(split["train"] + split["val"])
    assert r.metrics["slices"] == "detector" and r.metrics["n_scored"] == len(split["val"])


def test_top_k_aggregate_is_mean_of_the_k_highest():
    from npc_msom.config import PredictionConfig
    from npc_msom.prediction.stage import aggregate
    ids = np.array(["a", "a", "a", "a", "b"])
    p = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert aggregate(ids, p, PredictionConfig(aggregate="top_k", top_k=2)) == {"a": pytest.approx(0.8), "b": 0.3}
    assert aggregate(ids, p, PredictionConfig()) == {"a": pytest.approx(0.55), "b": 0.3}


@pytest.mark.parametrize("level", ["P2", "P3", "P4", "P5", "P6"])
def test_level_map_equals_the_full_fpn_output(level):
    from npc_msom.config import DetectionConfig
    from npc_msom.prediction.model import FPN_LEVELS
    torch.manual_seed(0)
    model = MSOMClassifier(DetectionConfig(backbone="resnet18", fpn_channels=16), 64, feature_level=level).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        full = model.backbone(model.prepare(x))[FPN_LEVELS[level]]
        assert torch.allclose(model.level_map(x), full, atol=1e-6)


def test_metrics_of_constant_training_scores_do_not_crash():
    from npc_msom.prediction.scores import model_metrics, patient_table
    df = patient_table(["a", "b", "c", "d", "e", "f"], ["train"] * 3 + ["val"] * 3,
                       [0.5, 0.5, 0.5, 0.2, 0.7, 0.4], [0, 1, 0, 0, 1, 1])
    assert (df["cutoff"] == 0.5).all()
    m = model_metrics(df)
    assert m["auc"]["auc"] == pytest.approx(1.0) and m["risk_groups"] == {"high": 1, "low": 2}
