"""Session fixtures: a few patients written by the project's own synthetic generator, read back
through the real cohort reader and preprocessed, shared by the integration and detection tests."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from npc_msom.config import load_config


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    # the machine's 2 cores; a fixed thread count also keeps CPU results bitwise repeatable
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_cohort_dir(tmp_path_factory):
    from npc_msom.synth import write_cohort
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, dataclasses.replace(load_config(None).synth, patients=6, seed=11))
    return out


@pytest.fixture(scope="session")
def small_config():
    return load_config(None, ["preprocess.image_size=96", "preprocess.slice_step=3",
                              "preprocess.negatives_per_patient=1", "preprocess.val_fraction=0.34",
                              "detection.backbone=resnet18", "detection.batch_size=2",
                              "detection.epochs=1", "detection.amp=false"])


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, synth_cohort_dir, small_config):
    """A run folder with cohort/manifest.json and preprocessed/ for 6 synthetic patients (96 px)."""
    from npc_msom import pipeline
    run_dir = tmp_path_factory.mktemp("run")
    pipeline.run(small_config, synth_cohort_dir, run_dir, stages=("preprocess",))
    return run_dir


@pytest.fixture(scope="session")
def bench_detection():
    """benchmarks/bench_detection.py as a module (benchmarks/ is not a package on the test path)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_detection.py"
    spec = importlib.util.spec_from_file_location("bench_detection", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
