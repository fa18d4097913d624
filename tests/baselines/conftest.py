"""Fixtures of the comparison-model tests: a run folder of our own holding a copy of the shared
``small_run``'s preprocessed slices and cohort manifest (6 synthetic patients, 96 px, 4 train /
2 validation), and a configuration whose models cost seconds (1 epoch at 48 px, original-image
radiomics in-process)."""
from __future__ import annotations

import dataclasses
import shutil

import pytest



@pytest.fixture(scope="session")
def bl_config(small_config):
    base = dataclasses.replace(small_config.baselines, slice_epochs=1, slice_batch_size=4, slice_size=48,
                               radiomics_params="radiomics_demo.yaml", radiomics_workers=1,
                               radiomics_cv_folds=2, radiomics_cs=5)
    return dataclasses.replace(small_config, device="cpu", baselines=base)


@pytest.fixture(scope="session")
def bl_cohort(synth_cohort_dir, small_config):
    from npc_msom.cohort import load_cohort
    return load_cohort(synth_cohort_dir, small_config.cohort, show_progress=False)


@pytest.fixture()
def bl_run(small_run, tmp_path):
    """A fresh copy of small_run's preprocessed/ and cohort/ (models write under it)."""
    root = tmp_path / "run"
    shutil.copytree(small_run / "preprocessed", root / "preprocessed")
    shutil.copytree(small_run / "cohort", root / "cohort")
    return root
