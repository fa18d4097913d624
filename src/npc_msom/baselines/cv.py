"""The comparison models under stage 2's repeated stratified cross-validation (``prediction.cv_folds``
> 1): the same folds (scikit-learn's RepeatedStratifiedKFold over the sorted patient ids of the
split, labels from the clinical table, ``random_state = seed``, as ``npc_msom.prediction.cv``), each
model refitted on every fold's training patients. Writes ``baselines/cv/cv_scores.csv`` (repeat,
fold, sequence, model, patient_id, score, label: stage 2's columns) and ``cv_metrics.json``.

``clinical``, ``n_stage`` and ``radiomics`` (on the cached features) are cross-validated; the
largest-slice networks are not (K x R trainings from scratch is a GPU job).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.evaluation import roc_auc
from npc_msom.runtime import write_json_atomic, write_text_atomic

from .common import ALL_SEQUENCES, frame_digest

log = logging.getLogger(__name__)

CV_MODELS = ("clinical", "n_stage", "radiomics")


def fold_assignments(ids, labels, folds: int, repeats: int, seed: int) -> list[tuple[int, int, np.ndarray]]:
    """[(repeat, fold, validation ids)] exactly as stage 2's cross-validation draws them (one
    function for both: ``preprocess.split.repeated_kfold``)."""
    from npc_msom.preprocess.split import repeated_kfold
    return [(d["repeat"], d["fold"], np.asarray(d["val"]))
            for d in repeated_kfold(list(ids), [int(v) for v in labels], folds, repeats, seed)]


def _radiomics_settings(config) -> dict:
    from . import radiomics as rad
    cfg = config.baselines
    params = rad.params_path(cfg.radiomics_params)
    return {"features": rad.cache_key(params, config.preprocess.spacing_mm, cfg.radiomics_margin_mm),
            "corr": cfg.radiomics_corr, "cv_folds": cfg.radiomics_cv_folds, "cs": cfg.radiomics_cs}


def cv_baselines(config, run_dir: str | Path, table: pd.DataFrame, images, sequences: list[str]) -> dict:
    """Out-of-fold scores of the cheap comparison models; returns the summary written to cv_metrics.json.

    table: clinical rows (indexed by patient_id, with msom) of every patient of the split;
    images: an object whose ``get()`` returns the cohort (read only if radiomics features are missing).
    """
    from .clinical import fit_clinical, n_stage_scores
    run_dir = Path(run_dir)
    cfg = config.baselines
    pc = config.prediction
    models = [m for m in cfg.models if m in CV_MODELS]
    if "radiomics" in models:
        try:
            import radiomics  # noqa: F401
        except ImportError as e:
            log.warning("baselines CV: radiomics left out, PyRadiomics cannot be imported (%s)", e)
            models.remove("radiomics")
    settings = {"folds": pc.cv_folds, "repeats": pc.cv_repeats, "seed": config.seed, "models": models,
                "clinical": frame_digest(table), "clinical_c": cfg.clinical_c, "sequences": list(sequences),
                "radiomics": _radiomics_settings(config) if "radiomics" in models else None}
    metrics_path = run_dir / "baselines" / "cv" / "cv_metrics.json"
    if metrics_path.is_file() and (run_dir / "baselines" / "cv" / "cv_scores.csv").is_file():
        try:
            old = json.loads(metrics_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("settings") == json.loads(json.dumps(settings)):
            log.info("baselines CV: up to date")
            return old
    t0 = time.perf_counter()
    ids = np.array(sorted(table.index))
    y = table.loc[ids, "msom"].to_numpy(dtype=int)
    label = dict(zip(ids, y))
    assignments = fold_assignments(ids, y, pc.cv_folds, pc.cv_repeats, config.seed)
    rows = []
    n_stage, _ = n_stage_scores(table.loc[ids]) if "n_stage" in models else (None, None)
    feats = {}
    if "radiomics" in models:
        from . import radiomics as rad
        from . import radiomics_features
        extracted = radiomics_features(config, run_dir, images, list(ids), list(sequences))
        feats = {seq: rad.feature_table(extracted[seq], list(ids)) for seq in sequences}
    for rep, fold, val_ids in assignments:
        val = set(val_ids)
        train = [p for p in ids if p not in val]
        if "clinical" in models:
            fit = fit_clinical(table.loc[list(ids)], train, [label[p] for p in train], c=cfg.clinical_c, seed=config.seed)
            rows += [(rep, fold, ALL_SEQUENCES, "clinical", p, s) for p, s in zip(ids, fit.scores) if p in val]
        if n_stage is not None:
            rows += [(rep, fold, ALL_SEQUENCES, "n_stage", p, s) for p, s in zip(ids, n_stage) if p in val]
        for seq, (f, notes) in feats.items():
            res = rad.fit_and_score(f, notes, list(val_ids), train, label, corr=cfg.radiomics_corr,
                                    cv_folds=cfg.radiomics_cv_folds, cs=cfg.radiomics_cs, seed=config.seed)
            rows += [(rep, fold, seq, "radiomics", p, s) for p, s in zip(val_ids, res.scores)]
    df = pd.DataFrame(rows, columns=["repeat", "fold", "sequence", "model", "patient_id", "score"])
    df["label"] = df["patient_id"].map(label).astype(int)
    summary = {}
    for (seq, model), g in df.groupby(["sequence", "model"], sort=False):
        g = g[np.isfinite(g["score"].to_numpy(dtype=float))]
        per_repeat = [roc_auc(r["label"], r["score"]).auc for _, r in g.groupby("repeat")
                      if 0 < r["label"].sum() < len(r)]
        per_fold = [roc_auc(f["label"], f["score"]).auc for _, f in g.groupby(["repeat", "fold"])
                    if 0 < f["label"].sum() < len(f)]
        summary[f"{model}/{seq}"] = {
            "sequence": seq, "model": model,
            "auc_mean": float(np.mean(per_repeat)) if per_repeat else None,
            "auc_sd_repeats": float(np.std(per_repeat, ddof=1)) if len(per_repeat) > 1 else None,
            "auc_fold_mean": float(np.mean(per_fold)) if per_fold else None,
            "auc_fold_sd": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else None,
            "auc_per_repeat": per_repeat, "n_patients": int(g["patient_id"].nunique())}
    out = {"folds": pc.cv_folds, "repeats": pc.cv_repeats, "seed": config.seed, "n_patients": int(len(ids)),
           "seconds": round(time.perf_counter() - t0, 2),
           "note": "the folds of npc_msom.prediction.cv; every fitted part (clinical encoder, logistic "
                   "regressions, radiomics feature selection) refitted on each fold's training patients",
           "models": summary, "settings": settings}
    out_dir = run_dir / "baselines" / "cv"
    write_text_atomic(out_dir / "cv_scores.csv", df.to_csv(index=False, float_format="%.6g"))
    write_json_atomic(out_dir / "cv_metrics.json", out)
    for k, v in summary.items():
        log.info("CV %dx%d %s: AUC %s", pc.cv_folds, pc.cv_repeats, k,
                 "n/a" if v["auc_mean"] is None else f"{v['auc_mean']:.3f}")
    return out
