"""finetune=all: the whole network trains on slices, checkpoints every epoch, and a run killed in
its second epoch resumes to the same weights as an uninterrupted one."""
import json
import shutil

import pytest
import torch

import npc_msom.prediction.train as train_mod
from npc_msom.prediction import train_predictor_for_run

SEQ = "CE-T1WI"


def _weights(run):
    return torch.load(run / "prediction" / SEQ / "fusion" / "checkpoint.pt", map_location="cpu",
                      weights_only=True)["model"]


def test_kill_and_resume_equals_uninterrupted(pred_run, tiny_prediction_config, monkeypatch, tmp_path):
    cfg = tiny_prediction_config(finetune="all", epochs=2, batch_size=4, lr=1e-3)
    other = tmp_path / "uninterrupted"
    shutil.copytree(pred_run, other)
    full = train_predictor_for_run(cfg, other, SEQ, "fusion")
    assert not full.skipped

    real = train_mod._check_finite

    def killed_in_second_epoch(loss, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        real(loss, epoch)

    monkeypatch.setattr(train_mod, "_check_finite", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_predictor_for_run(cfg, pred_run, SEQ, "fusion")
    out = pred_run / "prediction" / SEQ / "fusion"
    assert torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    assert not (out / "patient_scores.csv").exists()  # nothing half-written that a rerun would trust
    monkeypatch.setattr(train_mod, "_check_finite", real)
    resumed = train_predictor_for_run(cfg, pred_run, SEQ, "fusion")

    a, b = _weights(other), _weights(pred_run)
    assert set(a) == set(b)
    changed = 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the extractor itself was trained (not just the head), and away from the detector's weights
    det = torch.load(pred_run / "detection" / SEQ / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
    for k, v in a.items():
        if k.startswith("backbone.") and v.dtype.is_floating_point and not torch.equal(v, det[k]):
            changed += 1
    assert changed > 50
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert resumed.metrics["auc"] == full.metrics["auc"]
