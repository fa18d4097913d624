"""The preprocessing stage: cohort -> per-sequence 1 mm slices, 8-bit images, COCO files, split.

Layout written under ``out_dir`` (``runs/<name>/preprocessed``)::

    split.json                      patient-level split (+ repeated k-fold when asked)
    <sequence>/images/*.png         uint8 1..255, square image_size
    <sequence>/patients/<id>.json   that patient's images and annotations (resume marker)
    <sequence>/coco_train.json  coco_val.json  slices.csv

Patients are processed one at a time (or by ``workers`` processes), so memory does not grow with
the cohort; each patient's records are written last and atomically, so a killed run restarts at the
first patient without them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from npc_msom.cohort.model import Series, geometry_from_sitk
from npc_msom.config import Config, PreprocessConfig, to_dict
from npc_msom.errors import InputError
from npc_msom.preprocess.coco import coco_document, instance_annotation
from npc_msom.preprocess.intensity import apply_window, body_mask, intensity_window
from npc_msom.preprocess.resample import isotropic_reference, native_plane_of, resample_mask, resample_planes
from npc_msom.preprocess.slices import pad_to_square, resize_image, resize_instances, select_slices
from npc_msom.preprocess.split import repeated_kfold, split_settings, train_val_split
from npc_msom.runtime import atomic_path, check_settings, imap_forked, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

SLICE_COLUMNS = ["image_id", "file_name", "patient_id", "sequence", "split", "slice_index", "z_mm",
                 "pixel_mm", "has_gtv", "has_gtvln", "negative"]


@dataclass(frozen=True)
class PreprocessResult:
    out_dir: Path
    split: dict
    n_images: dict[str, int]
    n_annotations: dict[str, int]
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "split": self.split, "n_images": self.n_images,
                "n_annotations": self.n_annotations, "skipped": self.skipped}


def settings_key(cfg: PreprocessConfig, seed: int) -> str:
    """A hash of everything that changes the output; a patient written under another key is redone."""
    text = json.dumps({"pre": to_dict(cfg), "seed": seed}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def process_series(series: Series, cfg: PreprocessConfig, patient_id: str,
                   rng: np.random.Generator, negatives: int | None = None) -> list[tuple[np.ndarray, dict, list[dict]]]:
    """One series -> [(image uint8 (s, s), image record, annotations)] for the kept slices
    (``negatives``: tumour-free slices to keep; default ``cfg.negatives_per_patient``).

    The masks are resampled to the isotropic grid whole (they choose the slices); the image only
    at the kept planes (:func:`resample_planes`, identical values). The body mask and the intensity
    window come from the series' own voxels, before interpolation.
    """
    reference = isotropic_reference(series.geometry, cfg.spacing_mm)
    geom = geometry_from_sitk(reference)
    masks = {name: resample_mask(m, series, reference) for name, m in series.masks.items()}
    native = series.image.astype(np.float32, copy=False)
    body = body_mask(native)
    lo, hi = intensity_window(native, cfg.intensity_percentiles, body)
    frac = body.reshape(body.shape[0], -1).mean(axis=1)[native_plane_of(series, reference)]
    if not masks:
        masks = {"GTV": np.zeros(tuple(reversed(reference.GetSize())), dtype=bool)}
    pos, neg = select_slices(masks, neighbours=cfg.neighbours, slice_step=cfg.slice_step,
                             negatives=cfg.negatives_per_patient if negatives is None else negatives,
                             body_fraction=frac, rng=rng)
    kept = sorted(set(pos) | set(neg))
    planes = apply_window(resample_planes(series, reference, kept), lo, hi) if kept else []
    direction = np.asarray(geom.direction).reshape(3, 3)
    centre_xy = np.array([(geom.size[0] - 1) / 2.0, (geom.size[1] - 1) / 2.0])
    out = []
    for z, plane in zip(kept, planes):
        square, _ = pad_to_square(plane, fill=1)
        size = cfg.image_size
        img = resize_image(square, size)
        anns = []
        for name in ("GTV", "GTVln"):
            if name in series.masks:
                sq_mask, _ = pad_to_square(masks[name][z], fill=False)
                anns += [instance_annotation(m, name) for m in resize_instances(sq_mask, size)]
        idx = np.array([centre_xy[0], centre_xy[1], z], dtype=float)
        point = np.asarray(geom.origin_mm) + direction @ (idx * np.asarray(geom.spacing_mm))
        rec = {"file_name": f"images/{patient_id}_{series.sequence}_z{z:04d}.{_ext(cfg)}",
               "width": size, "height": size, "patient_id": patient_id, "sequence": series.sequence,
               "slice_index": int(z), "z_mm": round(float(point[2]), 3),
               "pixel_mm": round(square.shape[0] * cfg.spacing_mm / size, 5),
               "has_gtv": any(a["category_id"] == 1 for a in anns),
               "has_gtvln": any(a["category_id"] == 2 for a in anns),
               "negative": z not in pos}
        out.append((img, rec, anns))
    return out


def _ext(cfg: PreprocessConfig) -> str:
    return "jpg" if cfg.image_format.lower() in ("jpg", "jpeg") else "png"


def _save_image(path: Path, img: np.ndarray, cfg: PreprocessConfig) -> None:
    buf = io.BytesIO()
    if _ext(cfg) == "jpg":
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(img).save(buf, format="PNG", compress_level=3)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _patient_done(out_dir: Path, sequences, pid: str, key: str) -> bool:
    for seq in sequences:
        p = out_dir / seq / "patients" / f"{pid}.json"
        if not p.is_file():
            return False
        try:
            if json.loads(p.read_text()).get("key") != key:
                return False
        except json.JSONDecodeError:
            return False
    return True


def _process_patient(cohort, args) -> list[dict]:
    """Worker (:func:`~npc_msom.runtime.imap_forked`): load one patient, write its images and
    per-patient records; returns skips."""
    pid, cfg, seed, out_dir, key, negatives = args
    skipped = []
    try:
        patient = cohort.load_patient(pid)
    except InputError as e:
        if not getattr(cohort, "skip_bad", False):
            raise
        log.warning("preprocess: patient %s skipped: %s", pid, e)
        return [{"patient": pid, "sequence": None, "reason": str(e)}]
    # one generator per patient, so results do not depend on the order or number of workers
    rng = np.random.default_rng([seed, int(hashlib.sha1(pid.encode()).hexdigest()[:8], 16)])
    for seq in cfg.sequences:
        series = patient.series.get(seq)
        items = []
        if series is None:
            skipped.append({"patient": pid, "sequence": seq, "reason": f"no {seq} series"})
        else:
            items = process_series(series, cfg, pid, rng, negatives)
            for img, rec, _ in items:
                _save_image(out_dir / seq / rec["file_name"], img, cfg)
        write_json_atomic(out_dir / seq / "patients" / f"{pid}.json",
                          {"key": key, "patient_id": pid, "present": series is not None,
                           "images": [{"record": rec, "annotations": anns} for _, rec, anns in items]})
    return skipped


def _labels(cohort, ids: list[str]) -> list[int]:
    clinical = getattr(cohort, "clinical", None)
    if clinical is None or "msom" not in getattr(clinical, "columns", []):
        return [0] * len(ids)
    return [int(clinical.loc[pid, "msom"]) if pid in clinical.index else 0 for pid in ids]


def make_split(config: Config, ids: list[str], labels: list[int]) -> dict:
    cfg = config.preprocess
    split = train_val_split(ids, labels, cfg.val_fraction, config.seed)
    split["seed"] = config.seed
    if cfg.folds > 1:
        split["folds"] = repeated_kfold(ids, labels, cfg.folds, cfg.repeats, config.seed)
    return split


def preprocess(config: Config, cohort, out_dir: str | Path, *, force: bool = False) -> PreprocessResult:
    """Run the preprocessing stage over ``cohort`` (an ``npc_msom.cohort.Cohort``).

    An existing ``split.json`` is reused only when made with the same split settings and patients
    (:func:`~npc_msom.preprocess.split.split_settings`); otherwise StaleArtifactError names what
    changed, unless ``force`` (``--force preprocess``) makes a new split."""
    out_dir = Path(out_dir)
    cfg = config.preprocess
    ids = list(cohort.patient_ids)
    if not ids:
        raise InputError("the cohort has no usable patient", expected="at least one patient with images")
    labels = _labels(cohort, ids)
    split_path = out_dir / "split.json"
    settings = split_settings(ids, labels, val_fraction=cfg.val_fraction, folds=cfg.folds, repeats=cfg.repeats,
                              seed=config.seed)
    split = None
    if split_path.is_file():
        old = json.loads(split_path.read_text())
        if "settings" not in old and _same_split(old, make_split(config, ids, labels)):
            old["settings"] = settings  # an older version's split that these settings reproduce exactly
            write_json_atomic(split_path, old)
        if check_settings(old.get("settings"), settings, where=split_path, force=force,
                          how_to_force="--force preprocess (npc-msom preprocess --force, or npc-msom run --force "
                                       "preprocess); every later stage then redoes its work"):
            split = old
    if split is None:
        split = {**make_split(config, ids, labels), "settings": settings}
        write_json_atomic(split_path, split)

    key = settings_key(cfg, config.seed)
    todo = [pid for pid in ids if not _patient_done(out_dir, cfg.sequences, pid, key)]
    if len(todo) < len(ids):
        log.info("preprocess: %d of %d patients already done, resuming", len(ids) - len(todo), len(ids))
    skipped: list[dict] = []
    val = set(split["val"])
    jobs = [(pid, cfg, config.seed, out_dir, key,
             max(cfg.negatives_per_patient, cfg.val_negatives) if pid in val else cfg.negatives_per_patient)
            for pid in todo]
    # the workers inherit the cohort at fork (imap_forked), it is not pickled with every patient
    for s in imap_forked(_process_patient, jobs, cohort, workers=cfg.workers, desc="preprocess"):
        skipped += s
    # a patient skipped while its pixels loaded (skip_bad) has no records: it is left out of the
    # COCO files and slices.csv (it stays in split.json, so the split does not change when it is
    # fixed) and is tried again by the next run
    failed = {s["patient"] for s in skipped if s["sequence"] is None}
    done_ids = [pid for pid in ids if pid not in failed]
    if not done_ids:
        raise InputError(f"no patient could be preprocessed: all {len(ids)} were skipped "
                         f"(first: {skipped[0]['reason']})", expected="at least one readable patient")
    n_images, n_anns = {}, {}
    for seq in cfg.sequences:
        n_images[seq], n_anns[seq] = _assemble(out_dir / seq, done_ids, split)
    # skips of patients done in an earlier (killed) run are read back from their records
    for seq in cfg.sequences:
        for pid in done_ids:
            rec = json.loads((out_dir / seq / "patients" / f"{pid}.json").read_text())
            if not rec["present"] and not any(s["patient"] == pid and s["sequence"] == seq for s in skipped):
                skipped.append({"patient": pid, "sequence": seq, "reason": f"no {seq} series"})
    result = PreprocessResult(out_dir, split, n_images, n_anns, skipped)
    write_json_atomic(out_dir / "summary.json", result.to_dict())
    return result


def _same_split(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("train", "val", "folds"))


def _assemble(seq_dir: Path, ids: list[str], split: dict) -> tuple[int, int]:
    """Per-patient records -> coco_train.json, coco_val.json and slices.csv (ids in patient order)."""
    which = {pid: s for s in ("train", "val") for pid in split[s]}
    docs = {"train": ([], []), "val": ([], [])}
    rows = []
    image_id = ann_id = 0
    for pid in ids:
        data = json.loads((seq_dir / "patients" / f"{pid}.json").read_text())
        s = which[pid]
        for item in data["images"]:
            image_id += 1
            rec = dict(item["record"], id=image_id, split=s)
            docs[s][0].append(rec)
            for a in item["annotations"]:
                ann_id += 1
                docs[s][1].append(dict(a, id=ann_id, image_id=image_id))
            rows.append({"image_id": image_id, **{k: rec[k] for k in SLICE_COLUMNS if k != "image_id"}})
    for s, (images, anns) in docs.items():
        write_json_atomic(seq_dir / f"coco_{s}.json",
                          coco_document(images, anns, f"npc-msom {seq_dir.name} {s}"))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SLICE_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(seq_dir / "slices.csv", buf.getvalue())
    return image_id, ann_id
