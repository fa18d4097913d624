"""split.json records what it depends on (fraction, folds, repeats, seed, patients and outcomes) and
is reused only under the same; a change is refused with the differences named, --force remakes it."""
import json

import pytest
from test_preprocess import FakeCohort  # tests/preprocess is on sys.path (pytest's rootdir-less import)

import npc_msom.preprocess.stage as stage
from npc_msom.config import load_config
from npc_msom.errors import StaleArtifactError
from npc_msom.preprocess import preprocess

BASE = ["preprocess.image_size=48", "preprocess.val_fraction=0.34", "preprocess.slice_step=6",
        "preprocess.sequences=[T2WI]"]


def _cfg(*extra):
    return load_config(None, BASE + list(extra))


def test_split_reused_only_under_its_settings(tmp_path, monkeypatch):
    cohort = FakeCohort()
    preprocess(_cfg(), cohort, tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["settings"]["val_fraction"] == 0.34 and split["settings"]["n_patients"] == 6
    assert split["settings"]["folds"] == 0 and split["settings"]["repeats"] is None  # no folds: repeats moot
    # unchanged settings: the same file is reused
    preprocess(_cfg(), cohort, tmp_path)
    assert json.loads((tmp_path / "split.json").read_text()) == split

    for override, named in ((["preprocess.val_fraction=0.5"], "val_fraction: 0.34 -> 0.5"),
                            (["preprocess.folds=3", "preprocess.repeats=2"], "folds: 0 -> 3"),
                            (["seed=5"], "seed: 0 -> 5")):
        with pytest.raises(StaleArtifactError) as e:
            preprocess(_cfg(*override), cohort, tmp_path)
        assert named in str(e.value) and "--force preprocess" in str(e.value), str(e.value)
    with pytest.raises(StaleArtifactError, match="n_patients: 6 -> 7"):
        preprocess(_cfg(), FakeCohort(7), tmp_path)
    relabelled = FakeCohort()
    relabelled.clinical.loc["NPC0000", "msom"] = 1  # outcomes stratify the split
    with pytest.raises(StaleArtifactError, match="labels"):
        preprocess(_cfg(), relabelled, tmp_path)
    assert json.loads((tmp_path / "split.json").read_text()) == split  # refusals change nothing

    # --force: a new split under the new settings (patients' slices are not what this test is about)
    monkeypatch.setattr(stage, "_patient_done", lambda *a: True)
    res = preprocess(_cfg("preprocess.val_fraction=0.5"), cohort, tmp_path, force=True)
    new = json.loads((tmp_path / "split.json").read_text())
    assert new["settings"]["val_fraction"] == 0.5 and len(new["val"]) == 3 and res.split == new


def test_split_of_an_older_version_kept_only_when_reproduced(tmp_path, monkeypatch):
    cohort = FakeCohort()
    preprocess(_cfg(), cohort, tmp_path)
    monkeypatch.setattr(stage, "_patient_done", lambda *a: True)
    path = tmp_path / "split.json"
    split = json.loads(path.read_text())
    legacy = {k: v for k, v in split.items() if k != "settings"}
    path.write_text(json.dumps(legacy))
    preprocess(_cfg(), cohort, tmp_path)  # these settings make exactly that split: upgraded in place
    assert json.loads(path.read_text()) == split
    legacy["train"], legacy["val"] = legacy["train"][1:] + legacy["val"][:1], legacy["val"][1:] + legacy["train"][:1]
    path.write_text(json.dumps(legacy))
    with pytest.raises(StaleArtifactError, match="no settings recorded"):
        preprocess(_cfg(), cohort, tmp_path)
