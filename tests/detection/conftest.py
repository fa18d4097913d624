"""Fixtures of the detection tests: a tiny Mask R-CNN configuration; the project's synthetic
patients preprocessed (``small_run`` of tests/conftest.py) for training; one short training run
shared by several tests; and a toy COCO set of plain shapes (known geometry, made in 0.1 s) for the
data and pairing tests.
"""
from __future__ import annotations

import dataclasses
import shutil

import pytest

from npc_msom.config import Config, DetectionConfig
from npc_msom.detection.toydata import write_toy_coco

SEQUENCE = "CE-T1WI"



def tiny_config(**detection) -> Config:
    """ResNet-18 with a 32-channel FPN / mask head and 64 sampled RoIs: ~0.05 s per 64 px image."""
    base = DetectionConfig(backbone="resnet18", epochs=2, batch_size=4, lr=0.02, warmup_iters=5,
                           lr_steps=(), fpn_channels=32, box_batch_size=64, amp=False, deterministic=True,
                           workers=0, max_train_images=32)
    return Config(name="test", seed=0, device="cpu", detection=dataclasses.replace(base, **detection))


@pytest.fixture(name="tiny_config", scope="session")
def _tiny_config_fixture():
    """The factory :func:`tiny_config`, for tests (conftest modules are not importable by name)."""
    return tiny_config


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """A run folder with 8 patients (6 train, 2 validation), 4 tumour slices + 1 negative each,
    64 px, in all three sequences (the same geometry and z levels)."""
    root = tmp_path_factory.mktemp("toy_run")
    write_toy_coco(root, n_patients=8, val_patients=2, tumour_slices=4, negatives_per_patient=1,
                   image_size=64, sequences=("CE-T1WI", "T2WI", "T1WI"), seed=0)
    return root


@pytest.fixture(scope="session")
def det_run(small_run, tmp_path_factory):
    """A run folder of our own holding the preprocessed slices of the project's 6 synthetic
    patients (96 px, 4 train / 2 validation), so that training here never touches the shared one."""
    root = tmp_path_factory.mktemp("det_run")
    shutil.copytree(small_run / "preprocessed", root / "preprocessed")
    return root


@pytest.fixture(scope="session")
def trained_run(det_run):
    """Two epochs of tiny_config() (32 training slices) on CE-T1WI of det_run (about 10 s)."""
    from npc_msom.detection import train_detector_for_run
    return train_detector_for_run(tiny_config(), det_run, SEQUENCE)
