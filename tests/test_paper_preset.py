"""`configs/paper.yaml` end to end on the CPU: the preset's own code paths (512 px, ResNet-50-FPN
from ImageNet weights, every sequence with its own detector, `finetune: all` for the study's
models, AMP as configured) with only the sizes shrunk through `--set` (one sequence, slices per
patient, epochs, iterations, proposals), then `predict` on one patient with the run. One sequence
because a 512 px ResNet-50 costs ~1 s a slice on 2 cores; the combined models' code is the same
under every preset and runs in test_end_to_end.py. The ImageNet file cannot be
fetched here: a stand-in ResNet-50 state dict sits in a temporary TORCH_HOME under a torch.hub name
whose hash prefix is its own, so the hash check that guards the real file runs as well."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import npc_msom.detection.weights as weights
from npc_msom.cli import main
from npc_msom.runtime import file_digest

ROOT = Path(__file__).resolve().parents[1]
SEQS = ("CE-T1WI",)
# sizes only: how many slices and iterations, never which code runs
SHRINK = ["preprocess.sequences=[CE-T1WI]", "preprocess.slice_step=40", "preprocess.negatives_per_patient=1",
          "preprocess.val_fraction=0.34",
          "detection.epochs=1", "detection.max_train_images=2", "detection.warmup_iters=1",
          "detection.rpn_proposals_train=100", "detection.rpn_proposals_test=50", "detection.box_batch_size=32",
          "detection.workers=0", "prediction.epochs=1", "baselines.slice_epochs=1"]


@pytest.fixture()
def imagenet_standin(tmp_path, monkeypatch):
    """A ResNet-50 state dict in torchvision's file layout, installed as the imagenet weights."""
    from torchvision.models import resnet50
    torch.manual_seed(5)
    src = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), src)
    sha = file_digest(src)
    name = f"resnet50-{sha[:8]}.pth"
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(src, home / "hub" / "checkpoints" / name)
    src.unlink()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(weights, "imagenet_url", lambda backbone: f"https://download.pytorch.org/models/{name}")
    return sha


@pytest.mark.slow
def test_paper_preset_runs_every_stage_then_predicts(synth_cohort_dir, imagenet_standin, tmp_path, capsys):
    run = tmp_path / "paper_run"
    args = ["run", "--config", str(ROOT / "configs" / "paper.yaml"), "--cohort", str(synth_cohort_dir),
            "--out", str(run)]
    for s in SHRINK:
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    assert str(run / "report.html") in capsys.readouterr().out

    # the preset's settings reached the run, not the demo's
    summary = json.loads((run / "run_summary.json").read_text())
    assert set(summary["stages"]["seconds"]) >= {"cohort", "preprocess", "detection", "prediction", "baselines",
                                                 "evaluation", "report"}
    from PIL import Image
    some_png = sorted((run / "preprocessed" / "CE-T1WI" / "images").glob("*.png"))[0]
    assert Image.open(some_png).size == (512, 512)
    for seq in SEQS:  # a detector per sequence, initialised from the (stand-in) ImageNet file
        det = json.loads((run / "detection" / seq / "metrics.json").read_text())
        assert det["backbone"] == "resnet50" and det["image_size"] == 512
        assert det["settings"]["weights_sha256"] == imagenet_standin
        assert np.isfinite(det["map50"])
        for model in ("mri", "fusion", "patient", "patient_fusion"):
            m = json.loads((run / "prediction" / seq / model / "metrics.json").read_text())
            assert m["settings"]["prediction"]["finetune"] == "all"
            scores = pd.read_csv(run / "prediction" / seq / model / "patient_scores.csv")
            assert len(scores) == 6 and scores["score"].notna().all(), (seq, model)
        # finetune=all: the checkpoint holds the whole network, extractor included
        ckpt = torch.load(run / "prediction" / seq / "mri" / "checkpoint.pt", map_location="cpu", weights_only=False)
        keys = list(ckpt["model"] if "model" in ckpt else ckpt["state_dict"])
        assert any("body.layer4" in k for k in keys), keys[:5]
    html = (run / "report.html").read_text()
    assert "resnet50" in html.lower() or "ResNet-50" in html

    # predict: one patient of the cohort with the paper run's models, its CE-T1WI series as a NIfTI
    # cut to the tumour's slab (a 512 px ResNet-50 searching the whole 132-slice volume costs ~4 min)
    patient = _ce_slab_nifti(synth_cohort_dir, run, tmp_path / "nifti_patient")
    out = tmp_path / "predicted"
    assert main(["predict", "--run", str(run), "--patient", str(patient), "--out", str(out), "--device", "cpu",
                 "--clinical", str(run / "cohort" / "clinical.csv")]) == 0
    pred = json.loads((out / "summary.json").read_text())
    assert set(SEQS) <= set(pred["sequences"])
    for seq in SEQS:
        scores = pred["sequences"][seq]["models"]
        assert {"mri", "fusion"} <= set(scores), pred["sequences"][seq]
        assert all(0 <= s["score"] <= 1 for s in scores.values()), scores
        assert pred["sequences"][seq]["slice_rule"] == "automatic"
        assert (out / seq / "pred_mask.nii.gz").is_file()


def _ce_slab_nifti(cohort: Path, run: Path, dst: Path) -> Path:
    """The first patient's CE-T1WI series, cut to its tumour slices +- 5 mm, as dst/<id>/T1C_img.nii.gz."""
    import pydicom
    import SimpleITK as sitk
    patient = sorted((cohort / "dicom").iterdir())[0]
    for series in sorted(p for p in patient.iterdir() if p.is_dir()):
        first = sorted(series.glob("*.dcm"))[0]
        if pydicom.dcmread(first, stop_before_pixels=True).get("Modality") != "MR":
            continue
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(series))
        if "GD" not in str(pydicom.dcmread(files[0], stop_before_pixels=True).get("SeriesDescription", "")):
            continue
        img = sitk.ReadImage(files)
        break
    slices = pd.read_csv(run / "preprocessed" / "CE-T1WI" / "slices.csv", dtype={"patient_id": str})
    z = slices.loc[(slices["patient_id"] == patient.name) & ~slices["negative"].astype(bool), "z_mm"]
    zs = np.array([img.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(img.GetSize()[2])])
    keep = np.flatnonzero((zs >= z.min() - 5) & (zs <= z.max() + 5))
    slab = img[:, :, int(keep.min()):int(keep.max()) + 1]
    (dst / patient.name).mkdir(parents=True)
    sitk.WriteImage(slab, str(dst / patient.name / "T1C_img.nii.gz"))
    return dst / patient.name
