"""Stage 2 on a run folder: per sequence and model, train the MSOM classifier and write its scores.

Reads ``preprocessed/split.json``, ``preprocessed/<sequence>/slices.csv`` and images,
``cohort/clinical.csv`` and ``detection/<sequence>/checkpoint_last.pt`` (never a checkpoint chosen
on validation patients); writes ``prediction/<sequence>/<model>/``: checkpoint.pt,
slice_scores.csv, patient_scores.csv, metrics.json, history.jsonl, and the shared feature cache
``prediction/<sequence>/features/``.

Every output records a settings digest (the prediction settings, the model, the sequence, the
detector checkpoint's sha256, the slices, the split and the clinical table). A finished model with
the same digest is skipped; one made with other settings is refused with the differences named,
unless ``force`` (``--force``) asks to redo it.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from npc_msom.config import Config, PredictionConfig, to_dict
from npc_msom.errors import ConfigError, InputError
from npc_msom.prediction.clinical import ClinicalEncoder
from npc_msom.prediction.features import cached_features
from npc_msom.prediction.model import (MSOMClassifier, classifier_meta, detector_config_from_checkpoint,
                                       file_digest, read_detector_checkpoint, transfer_from_detector)
from npc_msom.prediction.scores import model_metrics, patient_table, write_scores
from npc_msom.prediction.train import (finetune_all, head_probabilities, slice_probabilities, slice_weights,
                                       train_head)
from npc_msom.runtime import resolve_device, seed_everything, write_text_atomic
from npc_msom.runtime import check_settings, settings_digest as _digest  # shared with stage 1

log = logging.getLogger(__name__)

MODELS = ("mri", "fusion")
CHECKPOINT_FORMAT = "npc-msom-predictor/1"


@dataclass(frozen=True)
class PredictorResult:
    out_dir: Path
    sequence: str
    model: str
    metrics: dict
    skipped: bool = False

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "sequence": self.sequence, "model": self.model,
                "skipped": self.skipped, "auc": (self.metrics.get("auc") or {}).get("auc")}


# ---- inputs of a run folder ----------------------------------------------------------------------

def read_split(run_dir: Path) -> dict:
    p = run_dir / "preprocessed" / "split.json"
    if not p.is_file():
        raise InputError("split.json not found; run the preprocessing stage first", file=p,
                         expected="the patient-level split of this run")
    return json.loads(p.read_text())


def read_clinical(run_dir: Path) -> pd.DataFrame:
    """The run's validated clinical table (written by the cohort stage), indexed by patient_id."""
    p = run_dir / "cohort" / "clinical.csv"
    if not p.is_file():
        raise InputError("clinical.csv not found in the run folder; rerun the cohort stage (npc-msom run)",
                         file=p, expected="the validated clinical table of this run's patients")
    df = pd.read_csv(p, dtype={"patient_id": str}).set_index("patient_id")
    if "msom" not in df.columns:
        raise InputError("the clinical table has no msom column", file=p, expected="msom (0/1) for every patient")
    return df


def read_slices(run_dir: Path, sequence: str) -> pd.DataFrame:
    p = run_dir / "preprocessed" / sequence / "slices.csv"
    if not p.is_file():
        raise InputError(f"slices.csv of {sequence} not found; run the preprocessing stage first", file=p,
                         expected=f"the preprocessed slices of {sequence}")
    return pd.read_csv(p, dtype={"patient_id": str, "file_name": str})


def labels_of(clinical: pd.DataFrame, ids) -> np.ndarray:
    missing = [p for p in ids if p not in clinical.index or pd.isna(clinical.loc[p, "msom"])]
    if missing:
        raise InputError(f"no MSOM outcome for {len(missing)} patient(s)", patient=missing[0],
                         expected="msom 0 or 1 in the clinical table for every patient with images")
    return clinical.loc[list(ids), "msom"].to_numpy(dtype=int)


def detector_checkpoint(run_dir: Path, sequence: str) -> Path:
    from npc_msom.detection.shared import detector_checkpoint as _path  # noqa: PLC0415
    return _path(run_dir, sequence)


def settings_for(config: Config, run_dir: Path, sequence: str, model: str) -> dict:
    """Everything an output of this model depends on, as plain values (digests for files)."""
    pc = config.prediction
    ckpt = detector_checkpoint(run_dir, sequence)
    split = read_split(run_dir)
    from npc_msom.prediction.patient import PATIENT_SETTINGS  # noqa: PLC0415
    return {"prediction": {k: v for k, v in to_dict(pc).items() if k not in ("cv_folds", "cv_repeats",
                                                                           "combine_sequences", "models",
                                                                           *PATIENT_SETTINGS)},
            "model": model, "sequence": sequence, "seed": config.seed,
            "detector": file_digest(ckpt) if pc.init == "detector" or pc.slices == "detector" else None,
            "detection": to_dict(config.detection) if pc.init == "scratch" else None,
            "slices": file_digest(run_dir / "preprocessed" / sequence / "slices.csv"),
            "split": _digest({"train": split["train"], "val": split["val"]}),
            "clinical": file_digest(run_dir / "cohort" / "clinical.csv") if model == "fusion" else None}


def check_stale(out_dir: Path, settings: dict, force: bool) -> bool:
    """True when ``out_dir`` holds finished outputs of exactly ``settings`` (skip); raise when it
    holds outputs of other settings (unless ``force``)."""
    m = out_dir / "metrics.json"
    if not m.is_file() or not (out_dir / "patient_scores.csv").is_file():
        return False
    return check_settings(json.loads(m.read_text()).get("settings"), settings, where=out_dir, force=force,
                          how_to_force="--force prediction")


# ---- slice selection and aggregation -------------------------------------------------------------

def choose_slices(slices: pd.DataFrame, pc: PredictionConfig, run_dir: Path, sequence: str,
                  device: torch.device) -> pd.DataFrame:
    """The slices scored per patient: the tumour slices (contours) or those the detector finds."""
    if pc.slices == "contours":
        return slices[~slices["negative"].astype(bool)].reset_index(drop=True)
    if pc.slices != "detector":
        raise ConfigError(f"prediction.slices: expected contours or detector, got {pc.slices!r}")
    from npc_msom.detection import detect, load_detector, select_tumour_slices  # noqa: PLC0415
    from npc_msom.detection.data import load_slice  # noqa: PLC0415
    model, meta = load_detector(detector_checkpoint(run_dir, sequence), device)
    gtv = [meta["class_names"].index("GTV") + 1] if "GTV" in meta["class_names"] else None
    keep = []
    images_dir = run_dir / "preprocessed" / sequence
    for _, rows in slices.groupby("patient_id", sort=False):
        dets = detect(model, [load_slice(images_dir / f) for f in rows["file_name"]], device, score_threshold=0.05)
        idx = select_tumour_slices(dets, rows["z_mm"].to_numpy(), score_threshold=pc.detector_threshold,
                                   labels=gtv)
        keep += list(rows.index[idx])
    log.info("%s: the detector chose %d of %d slices", sequence, len(keep), len(slices))
    return slices.loc[sorted(keep)].reset_index(drop=True)


def aggregate(slice_ids: np.ndarray, probs: np.ndarray, pc: PredictionConfig) -> dict[str, float]:
    """Patient score from its slice probabilities: the mean (the study) or the mean of the top k."""
    out = {}
    for pid in dict.fromkeys(slice_ids):
        p = probs[slice_ids == pid]
        if pc.aggregate == "top_k":
            p = np.sort(p)[::-1][:max(1, pc.top_k)]
        elif pc.aggregate != "mean":
            raise ConfigError(f"prediction.aggregate: expected mean or top_k, got {pc.aggregate!r}")
        out[str(pid)] = float(np.mean(p))
    return out


# ---- one model ----------------------------------------------------------------------------------

def _extractor(config: Config, run_dir: Path, sequence: str, n_clinical: int, image_size: int,
               level: str | None = None):
    """A classifier with the transferred (or scratch) extractor at FPN ``level`` (default
    ``prediction.feature_level``), and the feature-cache key."""
    pc = config.prediction
    level = level or pc.feature_level
    if pc.init == "detector":
        path = detector_checkpoint(run_dir, sequence)
        ckpt = read_detector_checkpoint(path)
        det = detector_config_from_checkpoint(ckpt)
        if ckpt["meta"]["image_size"] != image_size:
            raise InputError(f"the detector was trained on {ckpt['meta']['image_size']} px slices, these are "
                             f"{image_size} px", file=path, expected="a detector of this run's preprocessing")
        from npc_msom.prediction.model import architecture_of  # noqa: PLC0415
        if architecture_of(config.detection) != architecture_of(det):
            raise InputError(f"this run's detection settings {architecture_of(config.detection)} differ from the "
                             f"detector checkpoint's {architecture_of(det)}", file=path,
                             expected="the detector trained with this run's config (retrain it, or fix the config)")
        model = MSOMClassifier(det, image_size, feature_level=level, n_clinical=n_clinical)
        n = transfer_from_detector(model, ckpt, path)
        key = {"init": "detector", "sha256": file_digest(path), "level": level, "views": pc.feature_views}
        return model, key, n
    if pc.init != "scratch":
        raise ConfigError(f"prediction.init: expected detector or scratch, got {pc.init!r}")
    torch.manual_seed(config.seed)
    model = MSOMClassifier(config.detection, image_size, feature_level=level, n_clinical=n_clinical)
    key = {"init": "scratch", "seed": config.seed, "detection": to_dict(config.detection), "level": level,
           "views": pc.feature_views}
    return model, key, 0


def _image_size(path: Path) -> int:
    from PIL import Image  # noqa: PLC0415
    with Image.open(path) as im:
        return int(max(im.size))


def train_predictor_for_run(config: Config, run_dir: str | Path, sequence: str, model: str = "fusion", *,
                            device: torch.device | str | None = None, force: bool = False) -> PredictorResult:
    """Train one MSOM model (``mri`` or ``fusion``) of one sequence on a run folder and write its outputs."""
    if model not in MODELS:
        raise ConfigError(f"model: expected one of {MODELS}, got {model!r}")
    pc = config.prediction
    if pc.finetune not in ("all", "head"):
        raise ConfigError(f"prediction.finetune: expected all or head, got {pc.finetune!r}")
    run_dir = Path(run_dir)
    device = resolve_device(config.device) if device is None else torch.device(device)
    out_dir = run_dir / "prediction" / sequence / model
    settings = settings_for(config, run_dir, sequence, model)
    if check_stale(out_dir, settings, force):
        log.info("%s %s: up to date, skipped", sequence, model)
        return PredictorResult(out_dir, sequence, model, json.loads((out_dir / "metrics.json").read_text()), True)
    t_start = time.perf_counter()
    seed_everything(config.seed)
    split = read_split(run_dir)
    split_of = {p: "train" for p in split["train"]} | {p: "val" for p in split["val"]}
    clinical = read_clinical(run_dir)
    all_slices = read_slices(run_dir, sequence)
    all_slices = all_slices[all_slices["patient_id"].isin(split_of)].reset_index(drop=True)
    if all_slices.empty:
        raise InputError(f"no preprocessed slice of {sequence}", file=run_dir / "preprocessed" / sequence / "slices.csv",
                         expected="tumour slices of the split's patients")
    image_size = _image_size(run_dir / "preprocessed" / sequence / all_slices["file_name"].iloc[0])

    encoder = None
    n_clin = 0
    if model == "fusion":
        train_ids = [p for p in split["train"] if p in clinical.index]
        encoder = ClinicalEncoder.fit(clinical.loc[train_ids], pc.clinical_columns or None)
        n_clin = encoder.n_features
    net, cache_key, n_transferred = _extractor(config, run_dir, sequence, n_clin, image_size)
    net.to(device)
    slices = choose_slices(all_slices, pc, run_dir, sequence, device)
    pids = slices["patient_id"].to_numpy()
    y_slice = labels_of(clinical, pids)
    clin_slice = encoder.transform(clinical.loc[pids]) if encoder else None
    is_train = np.array([split_of[p] == "train" for p in pids])
    weights = slice_weights(pids[is_train], pc.patient_weighting)
    images_dir = run_dir / "preprocessed" / sequence
    seq_dir = run_dir / "prediction" / sequence
    meta_extra = {"n_transferred_tensors": n_transferred, "init": pc.init, "finetune": pc.finetune}

    if pc.finetune == "head":
        cache = seq_dir / "features" / f"{_digest(cache_key)}.npz"
        t0 = time.perf_counter()
        feats = cached_features(net, images_dir, list(slices["file_name"]), cache, device, pc.feature_batch_size,
                                pc.feature_views)
        feature_seconds = time.perf_counter() - t0
        net.cpu()
        history = train_head(net.head, feats[is_train], y_slice[is_train], pc,
                             clinical=None if clin_slice is None else clin_slice[is_train], weights=weights,
                             seed=config.seed)
        probs = head_probabilities(net.head, feats, clin_slice)
        meta_extra["feature_seconds"] = round(feature_seconds, 2)
        state = {"model": net.state_dict(), "epoch": pc.epochs, "history": history}
    else:
        ckpt_path = out_dir / "checkpoint.pt"
        resume = None
        if ckpt_path.is_file():
            old = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            if old.get("format") == CHECKPOINT_FORMAT and old.get("settings") == settings and "optimizer" in old:
                resume = old
        paths = [images_dir / f for f in slices["file_name"][is_train]]
        base = {"format": CHECKPOINT_FORMAT, "settings": settings, "config": to_dict(config),
                "meta": classifier_meta(net), "encoder": encoder.to_dict() if encoder else None}
        if resume is not None and resume["epoch"] >= pc.epochs:
            net.load_state_dict(resume["model"])
            history = list(resume["history"])
        else:
            history = finetune_all(net, paths, y_slice[is_train], pc,
                                   clinical=None if clin_slice is None else clin_slice[is_train], weights=weights,
                                   seed=config.seed, device=device, checkpoint=ckpt_path,
                                   history_path=out_dir / "history.jsonl",
                                   make_checkpoint=lambda s: {**base, **s}, resume=resume)
        probs = slice_probabilities(net, [images_dir / f for f in slices["file_name"]], device, clin_slice,
                                    pc.feature_batch_size)
        state = None

    # per patient: every patient of the split gets a row; one without slices here is not scored
    scores = aggregate(pids, probs, pc)
    ids = list(split["train"]) + list(split["val"])
    notes = ["" if p in scores else f"no {'tumour' if pc.slices == 'contours' else 'detected'} slice of {sequence}"
             for p in ids]
    table = patient_table(ids, [split_of[p] for p in ids], [scores.get(p, np.nan) for p in ids],
                          labels_of(clinical, ids), notes)
    slice_table = pd.DataFrame({"patient_id": pids, "split": [split_of[p] for p in pids],
                                "file_name": slices["file_name"], "z_mm": slices["z_mm"], "probability": probs,
                                "label": y_slice})
    seconds = time.perf_counter() - t_start
    metrics = model_metrics(table, level=config.evaluation.level, model=model, sequence=sequence,
                            extra={"settings": settings, "seconds": round(seconds, 2), **meta_extra,
                                   "n_train_slices": int(is_train.sum()), "n_val_slices": int((~is_train).sum()),
                                   "clinical_features": encoder.feature_names if encoder else [],
                                   "aggregate": pc.aggregate, "slices": pc.slices})
    if state is not None:
        ckpt = {"format": CHECKPOINT_FORMAT, "settings": settings, "config": to_dict(config),
                "meta": classifier_meta(net), "encoder": encoder.to_dict() if encoder else None,
                "head_only": True, "model": {k: v for k, v in state["model"].items() if not k.startswith("backbone.")},
                "epoch": state["epoch"], "history": state["history"], "cutoff": float(table["cutoff"].iloc[0])}
        from npc_msom.runtime import atomic_path  # noqa: PLC0415
        with atomic_path(out_dir / "checkpoint.pt") as tmp:
            torch.save(ckpt, tmp)
        write_text_atomic(out_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in state["history"]))
    write_scores(out_dir, table, metrics, slice_table)
    auc = metrics.get("auc") or {}
    log.info("%s %s: validation AUC %s on %d patients (%.1f s)", sequence, model,
             f"{auc.get('auc'):.3f}" if auc else "n/a", metrics["n_scored"], seconds)
    return PredictorResult(out_dir, sequence, model, metrics)
