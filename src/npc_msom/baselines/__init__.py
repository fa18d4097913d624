"""The comparison models, scored on exactly stage 2's patients and split.

``run_baselines(config, run_dir, cohort)`` runs every model of ``config.baselines.models`` for every
sequence preprocessed, and writes ``runs/NAME/baselines/<model>/<sequence or all>/`` with
``patient_scores.csv`` and ``metrics.json`` in stage 2's format (``npc_msom.prediction.scores``).
A model whose outputs exist and whose recorded ``settings`` (in metrics.json) match is skipped.

Models: ``clinical`` (logistic regression on stage 2's clinical vector), ``n_stage`` (N0..N3 as
0..3), ``largest_slice`` / ``largest_slice_fusion`` (ResNet-18 from scratch on the slice of largest
GTV area, without / with the clinical vector) and ``radiomics`` (PyRadiomics + selection + L1
logistic regression). ``write_comparison(run_dir)`` adds ``baselines/comparison.csv``: the DeLong
test of each stage-2 model against each comparison model.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.config import Config, to_dict
from npc_msom.errors import ConfigError, InputError

from .common import ALL_SEQUENCES, file_digest, frame_digest, labels_for, read_split, up_to_date, write_model
from .comparison import compare_with_stage2, write_comparison
from .external import CHECKPOINT

log = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("clinical", "n_stage", "largest_slice", "largest_slice_fusion", "radiomics")

__all__ = ["MODELS", "compare_with_stage2", "run_baselines", "write_comparison"]


def _cohort_from_manifest(config: Config, run_dir: Path):
    from npc_msom.cohort import load_cohort
    path = run_dir / "cohort" / "manifest.json"
    if not path.is_file():
        raise InputError("no cohort given and the run has no cohort manifest", file=path,
                         expected="cohort/manifest.json (written by the cohort stage) or a Cohort argument")
    m = json.loads(path.read_text())
    return load_cohort(m["root"], config.cohort, clinical=m.get("clinical_table"), show_progress=False)


def _clinical_table(config: Config, run_dir: Path, cohort) -> pd.DataFrame:
    """The clinical table stage 2 uses: the cohort's, else the run's cohort/clinical.csv, else the
    cohort read again from cohort/manifest.json."""
    if cohort is not None:
        return cohort.clinical
    if (run_dir / "cohort" / "clinical.csv").is_file():
        from npc_msom.prediction.stage import read_clinical
        return read_clinical(run_dir)
    return _cohort_from_manifest(config, run_dir).clinical


class _LazyCohort:
    """The cohort, read from cohort/manifest.json only when a model needs the images."""

    def __init__(self, config: Config, run_dir: Path, cohort=None):
        self._config, self._run_dir, self._cohort = config, run_dir, cohort

    def get(self):
        if self._cohort is None:
            self._cohort = _cohort_from_manifest(self._config, self._run_dir)
        return self._cohort


def _sequences(config: Config, run_dir: Path) -> list[str]:
    wanted = config.baselines.sequences or config.preprocess.sequences
    return [s for s in config.preprocess.sequences if s in wanted
            if (run_dir / "preprocessed" / s / "coco_train.json").is_file()
            and (run_dir / "preprocessed" / s / "coco_val.json").is_file()]


def run_baselines(config: Config, run_dir: str | Path, cohort=None) -> dict:
    """Run every comparison model; returns {model: {sequence or "all": summary dict}}, plus "cv":
    the cv_metrics.json summary when ``prediction.cv_folds`` > 1.

    summary: status ("done" | "up to date" | "skipped"), out_dir, seconds, auc (validation), n_scored,
    n_patients, and ``reason`` when skipped. ``cohort`` (npc_msom.cohort.Cohort) gives the clinical
    table and, for radiomics, the images; None = read again from cohort/manifest.json's folder.
    """
    run_dir = Path(run_dir)
    cfg = config.baselines
    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown:
        raise ConfigError(f"baselines.models: unknown model(s) {unknown}; known: {list(MODELS)}")
    split = read_split(run_dir)
    sequences = _sequences(config, run_dir)
    clinical = _clinical_table(config, run_dir, cohort)
    ids = split.patient_ids
    missing = [p for p in ids if p not in clinical.index]
    if missing:
        raise InputError(f"{len(missing)} patient(s) of the split have no clinical row, e.g. {missing[0]}",
                         patient=missing[0], file=run_dir / "preprocessed" / "split.json",
                         expected="a clinical row (with msom) for every patient of the split")
    table = clinical.loc[ids]
    labels = labels_for(table, ids)
    images = _LazyCohort(config, run_dir, cohort)
    base = {"seed": config.seed, "split": split.digest(), "labels": frame_digest(table[["msom"]]),
            "level": config.evaluation.level}
    out: dict = {}
    for model in cfg.models:
        if model == "clinical":
            out[model] = {ALL_SEQUENCES: _run_clinical(config, run_dir, split, table, labels, base)}
        elif model == "n_stage":
            out[model] = {ALL_SEQUENCES: _run_n_stage(config, run_dir, split, table, labels, base)}
        elif model in ("largest_slice", "largest_slice_fusion"):
            out[model] = {seq: _run_largest_slice(config, run_dir, seq, split, table, labels, base,
                                                  fusion=model.endswith("_fusion")) for seq in sequences}
        elif model == "radiomics":
            out[model] = _run_radiomics(config, run_dir, sequences, split, images, labels, base)
    if config.prediction.cv_folds > 1:
        from .cv import cv_baselines
        out["cv"] = cv_baselines(config, run_dir, table, images, sequences)
    return out


def _summary(status: str, out_dir: Path, seconds: float, metrics: dict | None = None) -> dict:
    if metrics is None and (out_dir / "metrics.json").is_file():
        metrics = json.loads((out_dir / "metrics.json").read_text())
    metrics = metrics or {}
    return {"status": status, "out_dir": str(out_dir), "seconds": round(seconds, 3),
            "auc": (metrics.get("auc") or {}).get("auc"), "n_scored": metrics.get("n_scored"),
            "n_patients": metrics.get("n_patients")}


def _run_clinical(config, run_dir, split, table, labels, base) -> dict:
    from .clinical import fit_clinical
    out_dir = run_dir / "baselines" / "clinical" / ALL_SEQUENCES
    settings = {**base, "model": "clinical", "c": config.baselines.clinical_c, "clinical": frame_digest(table)}
    if up_to_date(out_dir, settings):
        return _summary("up to date", out_dir, 0.0)
    t0 = time.perf_counter()
    n_train = len(split.train)
    fit = fit_clinical(table, list(split.train), labels[:n_train], c=config.baselines.clinical_c, seed=config.seed)
    secs = time.perf_counter() - t0
    m = write_model(out_dir, model="clinical", sequence=ALL_SEQUENCES, split=split, scores=fit.scores,
                    labels=labels, settings=settings, level=config.evaluation.level,
                    extra={"seconds": secs, "fit": fit.to_dict()})
    return _summary("done", out_dir, secs, m)


def _run_n_stage(config, run_dir, split, table, labels, base) -> dict:
    from .clinical import n_stage_scores
    out_dir = run_dir / "baselines" / "n_stage" / ALL_SEQUENCES
    settings = {**base, "model": "n_stage", "clinical": frame_digest(table)}
    if up_to_date(out_dir, settings):
        return _summary("up to date", out_dir, 0.0)
    t0 = time.perf_counter()
    scores, notes = n_stage_scores(table)
    secs = time.perf_counter() - t0
    m = write_model(out_dir, model="n_stage", sequence=ALL_SEQUENCES, split=split, scores=scores, labels=labels,
                    notes=notes, settings=settings, level=config.evaluation.level,
                    extra={"seconds": secs, "score": "N stage N0..N3 as 0..3 (no fitting)"})
    return _summary("done", out_dir, secs, m)


def _run_largest_slice(config, run_dir, seq, split, table, labels, base, *, fusion: bool) -> dict:
    import torch

    from npc_msom.prediction.clinical import ClinicalEncoder
    from npc_msom.runtime import resolve_device

    from .largest_slice import SliceTrainSettings, largest_gtv_slices, load_slices, predict_slices, train_slice_model
    name = "largest_slice_fusion" if fusion else "largest_slice"
    cfg = config.baselines
    seq_dir = run_dir / "preprocessed" / seq
    out_dir = run_dir / "baselines" / name / seq
    coco = [seq_dir / "coco_train.json", seq_dir / "coco_val.json"]
    s = SliceTrainSettings(epochs=cfg.slice_epochs, batch_size=cfg.slice_batch_size, lr=cfg.slice_lr,
                           weight_decay=cfg.slice_weight_decay, pixel_mean=config.detection.pixel_mean,
                           pixel_std=config.detection.pixel_std, seed=config.seed)
    settings = {**base, "model": name, "sequence": seq, "train": to_dict(s), "slice_size": cfg.slice_size,
                "coco": file_digest(*coco), **({"clinical": frame_digest(table)} if fusion else {})}
    if up_to_date(out_dir, settings) and (out_dir / CHECKPOINT).is_file():
        return _summary("up to date", out_dir, 0.0)
    t0 = time.perf_counter()
    largest = largest_gtv_slices([json.loads(p.read_text()) for p in coco])
    ids = split.patient_ids
    have = [p for p in ids if p in largest.index]
    train_have = [p for p in split.train if p in largest.index]
    if not train_have:
        raise InputError(f"no training patient has a slice with GTV in {seq}", file=coco[0],
                         expected="GTV annotations in the training slices")
    images = load_slices([seq_dir / largest.loc[p, "file_name"] for p in have], cfg.slice_size)
    if fusion:
        enc = ClinicalEncoder.fit(table.loc[list(split.train)])
        clin = torch.from_numpy(enc.transform(table.loc[have]))
    else:
        enc = None
        clin = torch.zeros((len(have), 0))
    pos = {p: i for i, p in enumerate(have)}
    lab = dict(zip(ids, labels))
    tr = [pos[p] for p in train_have]
    device = resolve_device(config.device)
    model, history = train_slice_model(images[tr], clin[tr], np.array([lab[p] for p in train_have]), s, device)
    probs = predict_slices(model, images, clin, s, device)
    scores = [float(probs[pos[p]]) if p in pos else float("nan") for p in ids]
    notes = ["" if p in pos else f"no slice with GTV among the preprocessed {seq} slices" for p in ids]
    secs = time.perf_counter() - t0
    extra = {"seconds": secs, "device": str(device), "n_train_slices": len(tr), "history": history,
             "slices": {p: {"slice_index": int(largest.loc[p, "slice_index"]),
                            "gtv_area_px": float(largest.loc[p, "gtv_area_px"])} for p in have}}
    if enc is not None:
        extra["clinical_encoder"] = enc.to_dict()
    # the weights, so that ``npc-msom validate`` can score the model on another cohort
    from npc_msom.runtime import atomic_path
    with atomic_path(out_dir / CHECKPOINT) as tmp:
        torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                    "n_clinical": int(clin.shape[1]), "settings": to_dict(s), "slice_size": int(cfg.slice_size),
                    "sequence": seq, "model": name, "clinical_encoder": enc.to_dict() if enc is not None else None},
                   tmp)
    m = write_model(out_dir, model=name, sequence=seq, split=split, scores=scores, labels=labels, notes=notes,
                    settings=settings, level=config.evaluation.level, extra=extra)
    return _summary("done", out_dir, secs, m)


def radiomics_features(config: Config, run_dir: Path, images: _LazyCohort, ids: list[str],
                       sequences: list[str], stats: dict | None = None) -> dict[str, dict[str, dict]]:
    """{sequence: {patient_id: {"features": ...} | {"note": ...}}}, from the cache where it can."""
    from . import radiomics as rad
    cfg = config.baselines
    params = rad.params_path(cfg.radiomics_params)
    cache = run_dir / "baselines" / "radiomics" / "cache"
    return rad.extract_cohort(images.get, ids, sequences, cache, params_file=params,
                              spacing_mm=config.preprocess.spacing_mm, margin_mm=cfg.radiomics_margin_mm,
                              workers=cfg.radiomics_workers, stats=stats)


def _run_radiomics(config, run_dir, sequences, split, images, labels, base) -> dict:
    from npc_msom.runtime import write_json_atomic

    cfg = config.baselines
    try:
        from . import radiomics as rad
        rad.radiomics_version()
    except ImportError as e:
        log.warning("radiomics model skipped: PyRadiomics cannot be imported (%s); "
                    "install the pyradiomics-bhklab distribution", e)
        return {seq: {"status": "skipped", "reason": f"PyRadiomics not importable: {e}"} for seq in sequences}
    params = rad.params_path(cfg.radiomics_params)
    spacing = config.preprocess.spacing_mm
    key = rad.cache_key(params, spacing, cfg.radiomics_margin_mm)
    root = run_dir / "baselines" / "radiomics"
    settings = {seq: {**base, "model": "radiomics", "sequence": seq, "features": key,
                      "params_file": params.name, "corr": cfg.radiomics_corr, "cv_folds": cfg.radiomics_cv_folds,
                      "cs": cfg.radiomics_cs} for seq in sequences}
    out = {seq: _summary("up to date", root / seq, 0.0) for seq in sequences if up_to_date(root / seq, settings[seq])}
    todo = [seq for seq in sequences if seq not in out]
    if not todo:
        return out
    ids = split.patient_ids
    t0 = time.perf_counter()
    stats: dict = {}
    extracted = radiomics_features(config, run_dir, images, ids, todo, stats)
    t_extract = time.perf_counter() - t0
    n_new = stats.get("extracted_patients", 0)
    # wall seconds per patient and sequence newly extracted (all processes together)
    per_patient = stats["extract_seconds"] / (n_new * len(todo)) if n_new else None
    lab = dict(zip(ids, (int(v) for v in labels)))
    for seq in todo:
        t1 = time.perf_counter()
        feats, notes = rad.feature_table(extracted[seq], ids)
        res = rad.fit_and_score(feats, notes, ids, list(split.train), lab, corr=cfg.radiomics_corr,
                                cv_folds=cfg.radiomics_cv_folds, cs=cfg.radiomics_cs, seed=config.seed)
        secs = t_extract / len(todo) + time.perf_counter() - t1
        write_json_atomic(root / seq / "selection.json", {"sequence": seq, "params_file": str(params), **res.model.to_dict()})
        m = write_model(root / seq, model="radiomics", sequence=seq, split=split, scores=res.scores, labels=labels,
                        notes=res.notes, settings=settings[seq], level=config.evaluation.level,
                        extra={"seconds": secs, "extract_seconds_per_patient": per_patient, "extraction": stats,
                               "n_with_features": int(len(feats)), "selection": res.model.to_dict()})
        out[seq] = _summary("done", root / seq, secs, m)
    return out
