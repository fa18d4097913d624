"""One detector for every sequence: trained once on all sequences' training slices, evaluated on
each sequence's validation slices on its own, and used by stage 2 for every sequence."""
import dataclasses
import json
import shutil

import pandas as pd
import torch

from npc_msom import pipeline
from npc_msom.detection.shared import detector_checkpoint, merge_coco

SEQS = ("T1WI", "T2WI", "CE-T1WI")


def test_merged_coco_keeps_every_slice_and_annotation(small_run):
    doc = merge_coco(small_run, SEQS, "train")
    n_img = n_ann = 0
    for seq in SEQS:
        one = json.loads((small_run / "preprocessed" / seq / "coco_train.json").read_text())
        n_img += len(one["images"])
        n_ann += len(one["annotations"])
    assert len(doc["images"]) == n_img and len(doc["annotations"]) == n_ann
    assert len({im["id"] for im in doc["images"]}) == n_img
    ids = {im["id"] for im in doc["images"]}
    assert all(a["image_id"] in ids for a in doc["annotations"])
    for im in doc["images"][:5]:
        assert (small_run / "preprocessed" / im["file_name"]).is_file()
        assert im["file_name"].startswith(im["sequence"] + "/")


def test_shared_detector_trains_once_and_reports_every_sequence(small_run, small_config, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run / "preprocessed", run / "preprocessed")
    det = dataclasses.replace(small_config.detection, shared=True, fpn_channels=32, box_batch_size=32,
                              max_train_images=6, rpn_proposals_train=200, rpn_proposals_test=100)
    cfg = dataclasses.replace(small_config, detection=det)
    torch.manual_seed(0)
    out = pipeline.detection_stage(cfg, run)
    assert set(out) == set(SEQS)
    shared = run / "detection" / "shared" / "checkpoint_last.pt"
    assert shared.is_file()
    assert not any((run / "detection" / s / "checkpoint_last.pt").exists() for s in SEQS)
    for seq in SEQS:
        m = json.loads((run / "detection" / seq / "metrics.json").read_text())
        val = json.loads((run / "preprocessed" / seq / "coco_val.json").read_text())
        assert m["n_val_images"] == m["n_images"] == len(val["images"]) > 0
        assert m["detector"] == "detection/shared/checkpoint_last.pt" and len(m["checkpoint_sha256"]) == 64
        assert m["settings_digest"]  # what the shared detector was trained with (train.py)
        assert set(m["ap50"]) == {"GTV", "GTVln"}
        assert detector_checkpoint(run, seq) == shared
    table2 = pd.read_csv(run / "detection" / "table2.csv")
    assert len(table2) >= 3
    # a second run finds everything done: same metrics, nothing retrained
    before = {s: (run / "detection" / s / "metrics.json").read_text() for s in SEQS}
    mtime = shared.stat().st_mtime_ns
    pipeline.detection_stage(cfg, run)
    assert shared.stat().st_mtime_ns == mtime
    assert before == {s: (run / "detection" / s / "metrics.json").read_text() for s in SEQS}
    # box AP only (detection.val_masks: false): the sequences are evaluated again, with the same
    # box AP and no mask AP; the detector is not retrained
    cfg_boxes = dataclasses.replace(cfg, detection=dataclasses.replace(det, val_masks=False))
    pipeline.detection_stage(cfg_boxes, run)
    assert shared.stat().st_mtime_ns == mtime
    for seq in SEQS:
        m = json.loads((run / "detection" / seq / "metrics.json").read_text())
        old = json.loads(before[seq])
        assert m["ap50"] == old["ap50"] and m["map50"] == old["map50"]
        assert m["mask_map50"] is None and old["mask_map50"] is not None and m["val_masks"] is False
