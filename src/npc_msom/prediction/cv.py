"""Repeated patient-level stratified cross-validation of the stage-2 heads (``finetune: head``).

One 46-patient validation set cannot separate models whose AUCs differ by 0.05; K-fold CV repeated
R times scores every patient out of fold R times. In each fold the clinical encoder, the feature
standardisation and the head are fitted on that fold's training patients only. The extractor stays
the run's detector, trained on the contours (never the outcomes) of the run's training split: no
MSOM label of a held-out patient reaches any fitted part, but the extractor has seen the contours
of some held-out patients, and the output says so.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from npc_msom.config import Config
from npc_msom.errors import ConfigError
from npc_msom.evaluation import roc_auc
from npc_msom.prediction.clinical import ClinicalEncoder
from npc_msom.prediction.features import cached_features
from npc_msom.prediction.model import MSOMHead
from npc_msom.prediction.stage import (_digest, _extractor, _image_size, aggregate, choose_slices, labels_of,
                                       read_clinical, read_slices, read_split)
from npc_msom.preprocess.split import repeated_kfold
from npc_msom.prediction.train import head_probabilities, slice_weights, train_head
from npc_msom.runtime import resolve_device, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def cv_for_run(config: Config, run_dir: str | Path, folds: int, repeats: int = 1,
               device: torch.device | str | None = None, patient_inputs: dict | None = None) -> dict:
    """Out-of-fold scores of every (sequence, model) and of the combined mean; writes
    ``prediction/cv/cv_scores.csv`` and ``cv_metrics.json``; returns the metrics.

    patient_inputs: {sequence: PatientInputs} already computed for this run's settings (the stage's),
    filled in where missing."""
    pc = config.prediction
    if pc.finetune != "head":
        raise ConfigError("cross-validation retrains the head per fold; it needs prediction.finetune=head "
                          "(fine-tuning the whole network K x R times is a GPU job: run it fold by fold)")
    if folds < 2:
        raise ConfigError(f"--cv: expected at least 2 folds, got {folds}")
    run_dir = Path(run_dir)
    device = resolve_device(config.device) if device is None else torch.device(device)
    t0 = time.perf_counter()
    split = read_split(run_dir)
    clinical = read_clinical(run_dir)
    ids = np.array(sorted(split["train"] + split["val"]))
    y = labels_of(clinical, ids)
    assignments = [(d["repeat"], d["fold"], np.asarray(d["val"]))
                   for d in repeated_kfold(list(ids), [int(v) for v in y], folds, repeats, config.seed)]
    rows = []
    for seq in pc.combine_sequences:
        if not (run_dir / "preprocessed" / seq / "slices.csv").is_file():
            continue
        slices = read_slices(run_dir, seq)
        slices = slices[slices["patient_id"].isin(set(ids))].reset_index(drop=True)
        if slices.empty:
            continue
        net, key, _ = _extractor(config, run_dir, seq, 0, _image_size(run_dir / "preprocessed" / seq /
                                                                       slices["file_name"].iloc[0]))
        net.to(device)
        slices = choose_slices(slices, pc, run_dir, seq, device)
        feats = cached_features(net, run_dir / "preprocessed" / seq, list(slices["file_name"]),
                                run_dir / "prediction" / seq / "features" / f"{_digest(key)}.npz", device,
                                pc.feature_batch_size, pc.feature_views)
        pids = slices["patient_id"].to_numpy()
        ys = labels_of(clinical, pids)
        for model in [m for m in pc.models if m in ("mri", "fusion")]:
            for rep, fold, val_ids in assignments:
                val = np.isin(pids, val_ids)
                tr = ~val
                enc = ClinicalEncoder.fit(clinical.loc[sorted(set(ids) - set(val_ids))],
                                          pc.clinical_columns or None) if model == "fusion" else None
                clin = enc.transform(clinical.loc[pids]) if enc else None
                head = MSOMHead(net.channels, enc.n_features if enc else 0)
                train_head(head, feats[tr], ys[tr], pc, clinical=None if clin is None else clin[tr],
                           weights=slice_weights(pids[tr], pc.patient_weighting), seed=config.seed + 1000 * rep + fold)
                probs = head_probabilities(head, feats[val], None if clin is None else clin[val])
                for pid, score in aggregate(pids[val], probs, pc).items():
                    rows.append({"repeat": rep, "fold": fold, "sequence": seq, "model": model, "patient_id": pid,
                                 "score": score})
    from npc_msom.prediction.patient import patient_cv_rows  # noqa: PLC0415
    rows += patient_cv_rows(config, run_dir, assignments, clinical, list(ids), device, cache=patient_inputs)
    df = pd.DataFrame(rows)
    if df.empty:
        raise ConfigError("cross-validation found no preprocessed sequence to run on")
    base = "fusion" if "fusion" in pc.models else "mri"
    comb = (df[(df["model"] == base) & (df["sequence"] != "combined")].groupby(["repeat", "fold", "patient_id"], as_index=False)["score"].mean()
            .assign(sequence="combined", model="mean"))
    df = pd.concat([df, comb], ignore_index=True)
    label = dict(zip(ids, y))
    df["label"] = df["patient_id"].map(label).astype(int)
    summary = {}
    for (seq, model), g in df.groupby(["sequence", "model"], sort=False):
        per_repeat = [roc_auc(r["label"], r["score"]).auc for _, r in g.groupby("repeat")
                      if 0 < r["label"].sum() < len(r)]
        per_fold = [roc_auc(f["label"], f["score"]).auc for _, f in g.groupby(["repeat", "fold"])
                    if 0 < f["label"].sum() < len(f)]
        summary[f"{seq}/{model}"] = {
            "sequence": seq, "model": model, "auc_mean": float(np.mean(per_repeat)),
            "auc_sd_repeats": float(np.std(per_repeat, ddof=1)) if len(per_repeat) > 1 else None,
            "auc_fold_mean": float(np.mean(per_fold)), "auc_fold_sd": float(np.std(per_fold, ddof=1)),
            "auc_per_repeat": per_repeat, "n_patients": int(g["patient_id"].nunique())}
    out = {"folds": folds, "repeats": repeats, "seed": config.seed, "n_patients": int(len(ids)),
           "seconds": round(time.perf_counter() - t0, 2),
           "note": "clinical encoder, feature standardisation and head (patient-level models: standardisation, "
                   "penalty, deep group's weight, fusion) fitted per fold on its training patients; the extractor "
                   "is the run's detector, trained on the contours (no outcome) of the run's training split",
           "models": summary}
    out_dir = run_dir / "prediction" / "cv"
    write_text_atomic(out_dir / "cv_scores.csv", df.to_csv(index=False, float_format="%.6g"))
    write_json_atomic(out_dir / "cv_metrics.json", out)
    for k, v in summary.items():
        log.info("CV %dx%d %s: AUC %.3f +- %s", folds, repeats, k, v["auc_mean"],
                 "n/a" if v["auc_sd_repeats"] is None else f"{v['auc_sd_repeats']:.3f}")
    return out
