"""Provenance of stage 1: every checkpoint and artifact records the settings and inputs it was made
with; a run resumes or is skipped only under the same ones, and --force redoes it."""
import csv
import json

import pytest
import torch

from npc_msom.detection import train_detector
from npc_msom.detection.train import detection_settings
from npc_msom.errors import StaleArtifactError
from npc_msom.runtime import check_settings, settings_digest

SEQ = "CE-T1WI"


@pytest.fixture()
def tiny_paths(toy_run, tmp_path):
    """Toy slices with an empty validation file (provenance needs no AP) and a copy of the training
    file that a test may change."""
    pre = toy_run / "preprocessed" / SEQ
    val = json.loads((pre / "coco_val.json").read_text()) | {"images": [], "annotations": []}
    (tmp_path / "val.json").write_text(json.dumps(val))
    (tmp_path / "train.json").write_text((pre / "coco_train.json").read_text())
    return dict(images_dir=pre, coco_train=tmp_path / "train.json", coco_val=tmp_path / "val.json",
                out_dir=tmp_path / "out")


def _cfg(tiny_config, **kw):
    return tiny_config(**{"epochs": 1, "max_train_images": 2, "batch_size": 2, "eval_every": 0,
                          "deterministic": False, **kw})


def test_settings_stored_and_a_change_refuses_to_resume_or_skip(tiny_config, tiny_paths):
    cfg = _cfg(tiny_config)
    first = train_detector(cfg, **tiny_paths)
    out = tiny_paths["out_dir"]
    ckpt = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    settings = ckpt["settings"]
    assert settings == detection_settings(cfg, tiny_paths["coco_train"], tiny_paths["coco_val"], 1)
    assert settings["detection"]["lr"] == 0.02 and settings["world_size"] == 1 and len(settings["coco_train"]) == 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"] == settings and metrics["settings_digest"] == settings_digest(settings)
    row = next(csv.DictReader((out / "table2.csv").open()))
    assert row["settings digest"] == settings_digest(settings) == first.metrics["settings_digest"]

    # the same settings: complete, so skipped
    assert train_detector(cfg, resume=True, **tiny_paths).epochs_run == 0
    # another lr, another schedule length: refused, naming both
    with pytest.raises(StaleArtifactError) as e:
        train_detector(_cfg(tiny_config, lr=0.03, epochs=2), resume=True, **tiny_paths)
    msg = str(e.value)
    assert "detection.lr: 0.02 -> 0.03" in msg and "detection.epochs: 1 -> 2" in msg and "--force" in msg
    # other training slices (one annotation fewer): refused, naming the file
    data = json.loads(tiny_paths["coco_train"].read_text())
    data["annotations"] = data["annotations"][1:]
    tiny_paths["coco_train"].write_text(json.dumps(data))
    with pytest.raises(StaleArtifactError, match="coco_train"):
        train_detector(cfg, resume=True, **tiny_paths)
    # the checkpoint was left as it was; --force trains from the start under the new settings
    assert torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)["settings"] == settings
    redone = train_detector(cfg, resume=True, force=True, **tiny_paths)
    assert redone.epochs_run == 1
    new = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)["settings"]
    assert new["coco_train"] != settings["coco_train"] and new["detection"] == settings["detection"]


def test_world_size_and_unrecorded_settings_are_differences(tiny_config, tiny_paths):
    cfg = _cfg(tiny_config)
    one = detection_settings(cfg, tiny_paths["coco_train"], tiny_paths["coco_val"], 1)
    two = detection_settings(cfg, tiny_paths["coco_train"], tiny_paths["coco_val"], 2)
    with pytest.raises(StaleArtifactError, match="world_size: 1 -> 2"):
        check_settings(one, two, where="x", force=False, how_to_force="--force detection")
    with pytest.raises(StaleArtifactError, match="no settings recorded"):
        check_settings(None, one, where="x", force=False, how_to_force="--force detection")
    assert check_settings(one, one, where="x", force=False, how_to_force="")
    assert not check_settings(one, two, where="x", force=True, how_to_force="")
    # DataLoader processes cannot change an output, so they are not a setting
    assert one == detection_settings(_cfg(tiny_config, workers=2), tiny_paths["coco_train"],
                                     tiny_paths["coco_val"], 1)
