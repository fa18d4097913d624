"""Preprocessing edges from issue 10: a patient skipped while its pixels load, a one-patient cohort."""
import json

import pandas as pd
import pytest
from pycocotools.coco import COCO

from npc_msom.config import load_config
from npc_msom.errors import DicomError, InputError
from npc_msom.preprocess import preprocess
from npc_msom.preprocess.split import repeated_kfold, train_val_split

from test_preprocess import FakeCohort

CFG = ["preprocess.image_size=48", "preprocess.val_fraction=0.34", "preprocess.slice_step=4"]


class CohortWithBadPixels(FakeCohort):
    """NPC0001's pixels do not decode; with skip_bad the stage records it and goes on."""
    skip_bad = True

    def load_patient(self, pid):
        if pid == "NPC0001":
            self.loads.append(pid)
            raise DicomError("cannot read the pixel data", patient=pid, file="/x/NPC0001/IM5",
                             expected="readable pixel data")
        return super().load_patient(pid)


def test_patient_skipped_while_its_pixels_load_does_not_crash(tmp_path):
    cohort = CohortWithBadPixels(n=4)
    res = preprocess(load_config(None, CFG), cohort, tmp_path)      # was: FileNotFoundError
    (skip,) = [s for s in res.skipped if s["patient"] == "NPC0001"]
    assert skip["sequence"] is None and "IM5" in skip["reason"] and "NPC0001" in skip["reason"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert any(s["patient"] == "NPC0001" for s in summary["skipped"])
    for seq in ("T1WI", "T2WI", "CE-T1WI"):
        pids = {im["patient_id"] for part in ("train", "val")
                for im in COCO(str(tmp_path / seq / f"coco_{part}.json")).dataset["images"]}
        assert pids == {"NPC0000", "NPC0002", "NPC0003"}
        assert set(pd.read_csv(tmp_path / seq / "slices.csv")["patient_id"]) == pids
    # the next run tries the skipped patient again and nobody else
    cohort.loads.clear()
    preprocess(load_config(None, CFG), cohort, tmp_path)
    assert cohort.loads == ["NPC0001"]


def test_without_skip_bad_the_error_names_the_patient(tmp_path):
    cohort = CohortWithBadPixels(n=3)
    cohort.skip_bad = False
    with pytest.raises(DicomError, match="NPC0001"):
        preprocess(load_config(None, CFG), cohort, tmp_path)


def test_every_patient_skipped_is_a_clear_error(tmp_path):
    cohort = CohortWithBadPixels(n=2)
    cohort.patient_ids = ["NPC0001"]
    with pytest.raises(InputError, match="no patient could be preprocessed"):
        preprocess(load_config(None, CFG), cohort, tmp_path)


def test_one_patient_cohort_preprocesses_with_an_empty_validation_set(tmp_path):
    cohort = FakeCohort(n=1)
    res = preprocess(load_config(None, CFG), cohort, tmp_path)      # was: ValueError in sklearn
    assert res.split["train"] == ["NPC0000"] and res.split["val"] == []
    assert "no validation set" in res.split["note"]
    assert res.n_images["T2WI"] > 0
    assert COCO(str(tmp_path / "T2WI" / "coco_val.json")).dataset["images"] == []


def test_split_sizes_at_the_edges():
    two = train_val_split(["a", "b"], [0, 1], 0.9, seed=0)       # 0.9 of 2 would leave no training patient
    assert len(two["train"]) == 1 and len(two["val"]) == 1
    with pytest.raises(InputError, match="5-fold cross-validation of a cohort of 3"):
        repeated_kfold(["a", "b", "c"], [0, 1, 0], folds=5, repeats=1, seed=0)
