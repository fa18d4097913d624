"""Indexing in forked processes gives the same cohort as one process, and the same errors."""
import dataclasses
import json
import shutil

import pandas as pd
import pytest

from npc_msom.cohort import load as load_mod
from npc_msom.cohort import load_cohort
from npc_msom.config import CohortConfig
from npc_msom.errors import CohortError


def _manifest_text(cohort):
    """The manifest without the one setting that differs (cohort.workers)."""
    text = json.dumps(cohort.manifest, sort_keys=True, default=str)
    return text.replace('"workers": 1', '"workers": 2')


def test_two_processes_index_the_same_cohort(synth_cohort_dir, monkeypatch):
    monkeypatch.setattr(load_mod, "_PARALLEL_MIN", 2)
    one = load_cohort(synth_cohort_dir, dataclasses.replace(CohortConfig(), workers=1))
    two = load_cohort(synth_cohort_dir, dataclasses.replace(CohortConfig(), workers=2))
    assert one.patient_ids == two.patient_ids and len(one.patient_ids) == 6
    assert _manifest_text(one) == _manifest_text(two)
    pid = one.patient_ids[-1]
    a, b = one.load_patient(pid), two.load_patient(pid)
    for seq, s in a.series.items():
        assert (s.image == b.series[seq].image).all()
        assert all((m == b.series[seq].masks[k]).all() for k, m in s.masks.items())


def test_a_bad_patient_found_by_a_worker_raises_its_own_message(synth_cohort_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(load_mod, "_PARALLEL_MIN", 2)
    root = tmp_path / "cohort"
    shutil.copytree(synth_cohort_dir, root)
    table = pd.read_csv(root / "clinical.csv")
    dropped = table["patient_id"].iloc[2]
    table.drop(index=2).to_csv(root / "clinical.csv", index=False)
    with pytest.raises(CohortError, match=f"patient {dropped} has images but no row in the clinical table"):
        load_cohort(root, dataclasses.replace(CohortConfig(), workers=2))
    cohort = load_cohort(root, dataclasses.replace(CohortConfig(), workers=2, skip_bad=True))
    assert dropped not in cohort.patient_ids and len(cohort.patient_ids) == 5
    assert any(s.get("patient") == dropped for s in cohort.manifest["skipped"])
