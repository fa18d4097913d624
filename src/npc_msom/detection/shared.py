"""One detector for every sequence (``detection.shared: true``): trained once on the slices of all
sequences together, evaluated on each sequence's validation slices separately.

Why: training is the dearest part of stage 1 on a CPU, and the three sequences show the same
anatomy and the same tumours. One network trained on all of them costs a third of three networks
with the same number of iterations each, sees three times the variety, and stage 2 transfers from
it for every sequence (so the pooled features of the three sequences live in one space). Table 2
still reports AP@0.5 per sequence, each on its own validation slices; nothing is fitted on them.

Layout::

    detection/shared/   coco_train.json (the sequences' training slices, file names relative to
                        preprocessed/), checkpoint_last.pt, history.jsonl, metrics.json (training only)
    detection/<seq>/    metrics.json, table2.csv, figures/figure2.png: that sequence's validation
                        slices, evaluated with detection/shared/checkpoint_last.pt (its sha256 recorded)
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from npc_msom.config import Config
from npc_msom.errors import InputError
from npc_msom.runtime import write_json_atomic

log = logging.getLogger(__name__)

SHARED = "shared"


def detector_checkpoint(run_dir: str | Path, sequence: str) -> Path:
    """The detector a sequence uses downstream: its own ``detection/<seq>/checkpoint_last.pt`` when
    it was trained alone, else the shared one (``detection/shared/checkpoint_last.pt``). Never a
    checkpoint chosen on validation patients."""
    run_dir = Path(run_dir)
    own = run_dir / "detection" / sequence / "checkpoint_last.pt"
    shared = run_dir / "detection" / SHARED / "checkpoint_last.pt"
    if not own.is_file() and shared.is_file():
        return shared
    return own


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def merge_coco(run_dir: Path, sequences, split: str) -> dict:
    """The ``split`` COCO files of ``sequences`` as one document; file names relative to
    ``preprocessed/`` ("<seq>/images/..."), image and annotation ids renumbered."""
    images, annotations, categories = [], [], None
    for seq in sequences:
        path = run_dir / "preprocessed" / seq / f"coco_{split}.json"
        if not path.is_file():
            raise InputError(f"coco_{split}.json not found; run the preprocessing stage first", file=path,
                             expected=f"preprocessed slices of {seq}")
        doc = json.loads(path.read_text())
        categories = categories or doc["categories"]
        if [c["name"] for c in doc["categories"]] != [c["name"] for c in categories]:
            raise InputError("the sequences' COCO files have different categories", file=path,
                             expected=f"categories {[c['name'] for c in categories]}")
        new_id = {}
        for im in doc["images"]:
            new_id[im["id"]] = len(images) + 1
            images.append({**im, "id": new_id[im["id"]], "file_name": f"{seq}/{im['file_name']}",
                           "sequence": im.get("sequence", seq)})
        for a in doc["annotations"]:
            annotations.append({**a, "id": len(annotations) + 1, "image_id": new_id[a["image_id"]]})
    return {"info": {"description": f"npc-msom {'+'.join(sequences)} {split}", "version": "1.0"},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories or []}


def train_shared_detector_for_run(config: Config, run_dir: str | Path, sequences, *, resume: bool = True,
                                  device=None, force: bool = False) -> dict:
    """Train ``detection/shared/`` on the training slices of ``sequences``, then evaluate it on each
    sequence's validation slices (``detection/<seq>/metrics.json``). Returns {seq: metrics}."""
    from npc_msom.detection.train import train_detector  # noqa: PLC0415
    run_dir = Path(run_dir)
    sequences = [s for s in sequences if (run_dir / "preprocessed" / s / "coco_train.json").is_file()]
    if not sequences:
        raise InputError("no preprocessed sequence to train on", file=run_dir / "preprocessed",
                         expected="coco_train.json of at least one sequence")
    out = run_dir / "detection" / SHARED
    out.mkdir(parents=True, exist_ok=True)
    train_doc = merge_coco(run_dir, sequences, "train")
    # validation is done per sequence after training, never on the merged set during it: each
    # sequence's slices are evaluated once, and nothing (no checkpoint) is chosen on them
    val_doc = {**merge_coco(run_dir, sequences[:1], "val"), "images": [], "annotations": []}
    for name, doc in (("coco_train.json", train_doc), ("coco_val.json", val_doc)):
        text = json.dumps(doc)
        path = out / name
        if not path.is_file() or path.read_text() != text:
            write_json_atomic(path, doc)
    log.info("shared detector: %d training slices of %s", len(train_doc["images"]), ", ".join(sequences))
    train_detector(config, images_dir=run_dir / "preprocessed", coco_train=out / "coco_train.json",
                   coco_val=out / "coco_val.json", out_dir=out, resume=resume, device=device,
                   sequence="+".join(sequences), force=force)
    return {seq: evaluate_sequence(config, run_dir, seq, out / "checkpoint_last.pt", device)
            for seq in sequences}


def evaluate_sequence(config: Config, run_dir: Path, sequence: str, checkpoint: Path, device=None) -> dict:
    """AP of ``checkpoint`` on ``sequence``'s validation slices -> ``detection/<seq>/metrics.json``,
    ``table2.csv`` and ``figures/figure2.png``; skipped when done with the same checkpoint."""
    from npc_msom.detection.data import read_coco  # noqa: PLC0415
    from npc_msom.detection.figures import detections_figure  # noqa: PLC0415
    from npc_msom.detection.infer import evaluate_detector  # noqa: PLC0415
    from npc_msom.detection.metrics import write_table2  # noqa: PLC0415
    from npc_msom.detection.model import load_detector  # noqa: PLC0415
    device = device or "cpu"
    out = run_dir / "detection" / sequence
    metrics_path = out / "metrics.json"
    sha = _file_sha256(checkpoint)
    if metrics_path.is_file():
        old = json.loads(metrics_path.read_text())
        if old.get("checkpoint_sha256") == sha and old.get("val_masks", True) == config.detection.val_masks:
            log.info("%s: validation metrics of this detector already computed", sequence)
            return old
    val_set = read_coco(run_dir / "preprocessed" / sequence / "coco_val.json")
    model, meta = load_detector(checkpoint, device)
    if list(meta["class_names"]) != list(val_set.class_names):
        val_set = read_coco(run_dir / "preprocessed" / sequence / "coco_val.json", class_names=meta["class_names"])
    metrics, _ = evaluate_detector(model, val_set, device, batch_size=max(1, config.detection.batch_size),
                                   desc=f"{sequence} validation", masks=config.detection.val_masks)
    shared_summary = json.loads((checkpoint.parent / "metrics.json").read_text()) \
        if (checkpoint.parent / "metrics.json").is_file() else {}
    summary = {**metrics.to_dict(), "sequence": sequence, "detector": str(checkpoint.relative_to(run_dir)),
               "checkpoint_sha256": sha, "evaluated_checkpoint": "last", "epochs": meta.get("epoch"),
               "val_masks": config.detection.val_masks,
               "image_size": meta["image_size"], "backbone": meta["backbone"],
               "trained_on": shared_summary.get("sequence"),
               "settings_digest": shared_summary.get("settings_digest"),
               "n_train_images": shared_summary.get("n_train_images"),
               "n_val_images": len(val_set), "n_val_patients": len(val_set.patients()),
               "train_images_per_s": shared_summary.get("train_images_per_s")}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(metrics_path, summary)
    write_table2({sequence: summary}, out / "table2.csv")
    if len(val_set):
        detections_figure(model, val_set, out / "figures" / "figure2.png", device)
    log.info("%s: GTV AP@0.5 %s on %d validation slices (shared detector)", sequence,
             summary.get("ap50", {}).get("GTV") if isinstance(summary.get("ap50"), dict) else summary.get("ap50"),
             len(val_set))
    return summary
