"""Fixtures of the stage-2 tests: the 6 synthetic patients of ``small_run`` (96 px, 4 train /
2 validation) copied into a run folder of our own, with a detector checkpoint of a tiny ResNet-18
(32-channel FPN) for every sequence, written in train_detector's format."""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from npc_msom.config import Config, DetectionConfig, PredictionConfig, to_dict

SEQUENCES = ("T1WI", "T2WI", "CE-T1WI")



def tiny_prediction_config(**prediction) -> Config:
    det = DetectionConfig(backbone="resnet18", fpn_channels=32, box_batch_size=64, amp=False)
    pc = dataclasses.replace(PredictionConfig(finetune="head", epochs=5, batch_size=16, lr=0.01), **prediction)
    return Config(name="test", seed=0, device="cpu", detection=det, prediction=pc)


@pytest.fixture(name="tiny_prediction_config", scope="session")
def _tiny_prediction_config_fixture():
    return tiny_prediction_config


def write_detector_checkpoint(run_dir, sequence: str, config: Config, image_size: int = 96, seed: int = 0):
    """A detector checkpoint_last.pt as train_detector writes it (weights: a seeded random init)."""
    from npc_msom.detection.model import build_model, model_meta
    from npc_msom.detection.train import CHECKPOINT_FORMAT
    torch.manual_seed(seed)
    model = build_model(config.detection, num_classes=3, image_size=image_size)
    # BatchNorm statistics as a trained network has them, so that a copy is distinguishable from a fresh init
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = run_dir / "detection" / sequence / "checkpoint_last.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "epoch": 1, "config": to_dict(config),
                "meta": {**model_meta(config.detection, ("GTV", "GTVln"), image_size), "sequence": sequence}}, path)
    return path


@pytest.fixture()
def pred_run(small_run, tmp_path):
    """A fresh run folder per test: preprocessed slices, cohort/clinical.csv and tiny detectors."""
    root = tmp_path / "run"
    shutil.copytree(small_run / "preprocessed", root / "preprocessed")
    shutil.copytree(small_run / "cohort", root / "cohort")
    cfg = tiny_prediction_config()
    for i, seq in enumerate(SEQUENCES):
        write_detector_checkpoint(root, seq, cfg, seed=i)
    return root
