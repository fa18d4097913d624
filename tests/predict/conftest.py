"""Fixtures of the predict tests: a trained run folder (the 6 synthetic patients of ``small_run``
with tiny random detectors, and stage-2 heads and patient-level models of T1WI and T2WI (and
the two together) trained in seconds; CE-T1WI has a
detector only) and a patient the run never saw (one more synthetic patient, another seed)."""
from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import pydicom
import pytest

from npc_msom.config import dump_config

_spec = importlib.util.spec_from_file_location("prediction_fixtures",
                                               Path(__file__).parents[1] / "prediction" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
tiny_prediction_config = _fixtures.tiny_prediction_config
write_detector_checkpoint = _fixtures.write_detector_checkpoint

TRAINED = ("T1WI", "T2WI")


@pytest.fixture(scope="module")
def run_config(small_config):
    tiny = tiny_prediction_config()
    # the comparison models at test size (run by the validate tests' run_with_baselines)
    baselines = dataclasses.replace(small_config.baselines, sequences=("T1WI",), slice_epochs=1, slice_size=32,
                                    radiomics_params="radiomics_demo.yaml", radiomics_workers=1,
                                    radiomics_cv_folds=2, radiomics_cs=5)
    return dataclasses.replace(small_config, device="cpu", detection=tiny.detection, prediction=tiny.prediction,
                               baselines=baselines)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_run, run_config):
    from npc_msom.prediction import combine_for_run, train_predictor_for_run
    root = tmp_path_factory.mktemp("trained_run")
    shutil.copytree(small_run / "preprocessed", root / "preprocessed")
    shutil.copytree(small_run / "cohort", root / "cohort")
    (root / "config.yaml").write_text(dump_config(run_config))
    for i, seq in enumerate(("T1WI", "T2WI", "CE-T1WI")):
        write_detector_checkpoint(root, seq, run_config, seed=i)
    from npc_msom.prediction.patient import train_patient_models_for_run
    cache: dict = {}
    for seq in TRAINED:
        for model in ("mri", "fusion"):
            train_predictor_for_run(run_config, root, seq, model, device="cpu")
        train_patient_models_for_run(run_config, root, [seq], device="cpu", cache=cache)
    train_patient_models_for_run(run_config, root, list(TRAINED), device="cpu", cache=cache)
    combine_for_run(run_config, root)
    return root


@pytest.fixture(scope="module")
def new_cohort(tmp_path_factory):
    """One synthetic patient that is not in the run (seed 99): (cohort folder, patient folder)."""
    from npc_msom.config import load_config
    from npc_msom.synth import write_cohort
    out = tmp_path_factory.mktemp("new_patient")
    write_cohort(out, dataclasses.replace(load_config(None).synth, patients=1, seed=99, workers=1))
    (patient,) = sorted((out / "dicom").iterdir())
    return out, patient


@pytest.fixture(scope="module")
def new_patient_without_contours(tmp_path_factory, new_cohort):
    """The new patient's DICOM folder with its RTSTRUCTs removed."""
    _, patient = new_cohort
    dst = tmp_path_factory.mktemp("no_contours") / patient.name
    shutil.copytree(patient, dst)
    for f in dst.rglob("*"):
        if f.is_file() and pydicom.dcmread(f, stop_before_pixels=True).Modality == "RTSTRUCT":
            f.unlink()
    return dst
