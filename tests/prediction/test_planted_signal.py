"""The whole of stage 2 learns a real signal from real pixels: on a synthetic cohort whose MSOM labels
follow the primary tumour's volume (what CE-T1WI shows on every tumour slice), the chain synth
(DICOM) -> cohort -> preprocess -> detector training -> transfer -> head reaches a high validation AUC.

Measured (seed 3, 60 patients: 20 train the detector and the head, 40 are validation): AUC 0.942
(DeLong 95% CI from 0.860) with this set-up, 0.886 (from 0.787) without warm-up or clipping
(2026-12-01, AMD EPYC, 2 cores); 0.884 on an Intel Xeon with AMX (2026-12-06, 2 cores, 114 s). With 20 validation patients the same chain swung between 0.71 and
0.91 across learning rates, gradient clipping and CPUs (a small detector trained from scratch is
chaotic: the same code diverged at lr 0.02 on one CPU and not on another), so the cohort was
enlarged rather than the test loosened: 40 validation patients leave a chance AUC of 0.5 +- 0.09,
and 0.80 is more than 3 of those above it and still well under the oracle (~0.95).
"""
import dataclasses

import pytest

from npc_msom.config import DetectionConfig, load_config


@pytest.mark.slow
def test_planted_tumour_volume_signal_reaches_validation_auc_080(tmp_path, monkeypatch):
    import npc_msom.synth.outcome as om
    from npc_msom import pipeline
    from npc_msom.prediction import train_predictor_for_run
    from npc_msom.synth import write_cohort

    # the labels follow ln(GTV volume) x 6 (per SD); every other coefficient is off
    for k in om.COEFFICIENTS:
        monkeypatch.setitem(om.COEFFICIENTS, k, 6.0 if k == "log_gtv_volume" else 0.0)
    config = load_config(None, ["preprocess.image_size=64", "preprocess.slice_step=2",
                                "preprocess.sequences=[CE-T1WI]", "preprocess.val_fraction=0.667", "device=cpu",
                                "prediction.finetune=head", "prediction.epochs=30", "prediction.batch_size=64",
                                "prediction.lr=0.003"])
    # 100 test proposals keep the validation pass cheap
    config = dataclasses.replace(config, detection=DetectionConfig(
        backbone="resnet18", fpn_channels=32, box_batch_size=64, epochs=6, batch_size=4, lr=0.01,
        warmup_iters=50, lr_steps=(), amp=False, max_train_images=64, eval_every=0, rpn_proposals_test=100,
        grad_clip=10.0))
    cohort = tmp_path / "cohort"
    write_cohort(cohort, dataclasses.replace(config.synth, patients=60, seed=3))
    run = tmp_path / "run"
    pipeline.run(config, cohort, run, stages=("preprocess", "detection"))
    r = train_predictor_for_run(config, run, "CE-T1WI", "mri")
    assert r.metrics["n_transferred_tensors"] > 100
    assert r.metrics["n_scored"] == 40
    assert r.metrics["auc"]["auc"] >= 0.80, r.metrics["auc"]
