"""Stage 2 quality and cost on a synthetic cohort of the study's size (186 patients, 140/46 split),
with the demo preset: the validation AUC of every model beside the oracle AUC of the same
validation patients, transfer vs scratch, 5-fold x 2 CV, the DeLong tests of the study's three
claims, and the CPU seconds of each model.

The run folder (``NPC_MSOM_BENCH_RUN``, default runs/demo, what ``make demo`` writes) must hold
preprocessed/ and detection/ of the cohort ``NPC_MSOM_BENCH_COHORT`` (default data/synthetic_demo);
when it does not, they are made first with ``npc-msom synth`` + ``run --stages preprocess,detection``.
Stage 2 runs in ``benchmarks/results/prediction_runs/{detector,scratch}``, which link to the
run's inputs, so the run folder itself is never changed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"mri_only_vs_imaging_oracle": "every MRI-only model within 0.07 of AUC(eta_imaging) on the validation "
                                         "patients and in CV (issue 19)",
           "best_model_vs_oracle": "the best model within 0.04 of AUC(true_risk) (issue 19)",
           "fusion_vs_clinical": "MRI + clinical >= clinical-only in CV (issue 19)"}
MRI_ONLY = ("mri", "patient")
CV_FOLDS, CV_REPEATS = 5, 5
# the patient-level models' input groups, switched off one at a time (CE-T1WI, the study's best sequence)
ABLATIONS = {"burden_only": {"deep": False}, "deep_only": {"burden": False}, "slice_pooling": {"pooling": "slice"},
             "level_P3": {"region_level": "P3"}}


def _ensure_run(config, cohort: Path, run: Path) -> None:
    from npc_msom import pipeline
    from npc_msom.synth import write_cohort
    from npc_msom.detection.shared import detector_checkpoint
    if all(detector_checkpoint(run, s).is_file() for s in config.preprocess.sequences) \
            and (run / "cohort" / "clinical.csv").is_file():
        if not (cohort / "truth.csv").is_file():
            raise FileNotFoundError(
                f"{run} holds a detector, but the synthetic cohort it was made from is not at {cohort} "
                f"(no truth.csv, the oracle's outcomes): set NPC_MSOM_BENCH_COHORT to that cohort's folder, "
                f"or run `make demo`, which writes both")
        return
    write_cohort(cohort, dataclasses.replace(config.synth, patients=186))
    pipeline.run(config, cohort, run, stages=("preprocess", "detection"))


def _linked_run(run: Path, out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("preprocessed", "cohort", "detection"):
        (out / name).symlink_to((run / name).resolve())
    return out


def _auc_row(m: dict) -> dict:
    a = m.get("auc") or {}
    return {"auc": a.get("auc"), "ci": [a.get("ci_low"), a.get("ci_high")], "n": m.get("n_scored"),
            "seconds": m.get("seconds")}


def run() -> dict:
    import numpy as np
    import pandas as pd

    from npc_msom.config import load_config
    from npc_msom.evaluation import delong_test, roc_auc
    from npc_msom.prediction import prediction_stage, read_scores

    config = load_config(ROOT / "configs" / "demo.yaml", ["synth.patients=186"])
    cohort = Path(os.environ.get("NPC_MSOM_BENCH_COHORT", ROOT / "data" / "synthetic_demo"))
    run_dir = Path(os.environ.get("NPC_MSOM_BENCH_RUN", ROOT / "runs" / "demo"))
    _ensure_run(config, cohort, run_dir)
    split = json.loads((run_dir / "preprocessed" / "split.json").read_text())
    truth = pd.read_csv(cohort / "truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    val = sorted(split["val"])
    oracle = roc_auc(truth.loc[val, "msom"], truth.loc[val, "true_risk"]).to_dict()
    out: dict = {"cohort": str(cohort), "run": str(run_dir), "n_train": len(split["train"]), "n_val": len(val),
                 "oracle_val_auc": oracle, "targets": TARGETS, "preset": "demo"}
    scores: dict[str, pd.DataFrame] = {}
    for init in ("detector", "scratch"):
        cfg = dataclasses.replace(config, prediction=dataclasses.replace(config.prediction, init=init))
        bench_run = _linked_run(run_dir, ROOT / "benchmarks" / "results" / "prediction_runs" / init)
        t0 = time.perf_counter()
        res = prediction_stage(cfg, bench_run)
        rows = {k: _auc_row(v.metrics) for k, v in res.items() if hasattr(v, "metrics")}
        out[init] = {"models": rows, "stage_seconds": round(time.perf_counter() - t0, 1)}
        for k in rows:
            seq, model = k.split("/")
            folder = bench_run / "prediction" / seq / model
            scores[f"{init}:{k}"] = read_scores(folder / "patient_scores.csv").set_index("patient_id")

    # every model's validation AUC beside its oracle: AUC(eta_imaging) for the MRI-only models,
    # AUC(true_risk) for the others, on the same validation patients
    eta_img = roc_auc(truth.loc[val, "msom"], truth.loc[val, "eta_imaging"]).auc
    out["imaging_oracle_val_auc"] = eta_img
    gaps = {}
    for k, row in out["detector"]["models"].items():
        model = k.split("/")[1]
        ref = eta_img if model in MRI_ONLY else oracle["auc"]
        gaps[k] = {"auc": row["auc"], "oracle": "eta_imaging" if model in MRI_ONLY else "true_risk",
                   "gap": None if row["auc"] is None else round(ref - row["auc"], 3)}
    out["validation_gaps"] = gaps

    # repeated CV on the whole cohort, with both oracles and the clinical-only model on the same folds
    from npc_msom.baselines.clinical import fit_clinical
    from npc_msom.prediction import cv_for_run
    from npc_msom.prediction.stage import read_clinical
    t0 = time.perf_counter()
    bench_run = ROOT / "benchmarks" / "results" / "prediction_runs" / "detector"
    cv = cv_for_run(config, bench_run, folds=CV_FOLDS, repeats=CV_REPEATS)
    df = pd.read_csv(bench_run / "prediction" / "cv" / "cv_scores.csv", dtype={"patient_id": str})
    clinical = read_clinical(bench_run)
    folds = df[["repeat", "fold", "patient_id"]].drop_duplicates()
    ids = sorted(folds["patient_id"].unique())
    clin_rows = []
    for (rep, fold), g in folds.groupby(["repeat", "fold"]):
        tr = [p for p in ids if p not in set(g["patient_id"])]
        fit = fit_clinical(clinical.loc[tr + list(g["patient_id"])], tr, clinical.loc[tr, "msom"].astype(int),
                           c=config.baselines.clinical_c, seed=config.seed)
        clin_rows += [{"repeat": rep, "patient_id": p, "score": s}
                      for p, s in zip(g["patient_id"], fit.scores[len(tr):])]
    clin = pd.DataFrame(clin_rows)

    def per_repeat(frame: pd.DataFrame) -> list[float]:
        return [roc_auc(truth.loc[r["patient_id"], "msom"], r["score"]).auc for _, r in frame.groupby("repeat")]

    oracle_cv = {name: float(np.mean(per_repeat(folds.assign(score=truth.loc[folds["patient_id"], col].to_numpy()))))
                 for name, col in (("true_risk", "true_risk"), ("eta_imaging", "eta_imaging"))}
    clin_cv = float(np.mean(per_repeat(clin)))
    cv_rows = {}
    for k, v in cv["models"].items():
        model = k.split("/")[1]
        ref = oracle_cv["eta_imaging" if model in MRI_ONLY else "true_risk"]
        cv_rows[k] = {"mean": v["auc_mean"], "sd": v["auc_sd_repeats"], "gap": round(ref - v["auc_mean"], 3)}
    cv_rows["clinical/all"] = {"mean": clin_cv, "gap": round(oracle_cv["true_risk"] - clin_cv, 3)}
    out[f"cv_{CV_FOLDS}x{CV_REPEATS}"] = {"models": cv_rows, "oracle": oracle_cv,
                                          "seconds": round(time.perf_counter() - t0, 1), "note": cv["note"]}

    # ablations of the patient-level model's inputs, each chosen nowhere near the validation patients
    from npc_msom.prediction import train_patient_models_for_run
    abl = {}
    for name, change in ABLATIONS.items():
        cfg = dataclasses.replace(config, prediction=dataclasses.replace(config.prediction, **change))
        r = _linked_run(run_dir, ROOT / "benchmarks" / "results" / "prediction_runs" / f"ablation_{name}")
        res = train_patient_models_for_run(cfg, r, ["CE-T1WI"])
        abl[name] = {m: (v.metrics.get("auc") or {}).get("auc") for m, v in res.items()}
    abl["full"] = {m: out["detector"]["models"].get(f"CE-T1WI/{m}", {}).get("auc") for m in ("patient", "patient_fusion")}
    out["ablations_ce_t1wi"] = abl

    mri_val = [g["gap"] for k, g in gaps.items() if k.split("/")[1] in MRI_ONLY and g["gap"] is not None]
    mri_cv = [r["gap"] for k, r in cv_rows.items() if k.split("/")[1] in MRI_ONLY]
    new_mri_val = [g["gap"] for k, g in gaps.items() if k.split("/")[1] == "patient" and g["gap"] is not None]
    new_mri_cv = [r["gap"] for k, r in cv_rows.items() if k.split("/")[1] == "patient"]
    best_val = min(g["gap"] for g in gaps.values() if g["gap"] is not None)
    fusion_cv = {k: r["mean"] for k, r in cv_rows.items() if k.split("/")[1] == "patient_fusion"}
    out["goals"] = {
        "patient_mri_within_0.07_val": bool(max(new_mri_val) <= 0.07), "patient_mri_max_gap_val": max(new_mri_val),
        "patient_mri_within_0.07_cv": bool(max(new_mri_cv) <= 0.07), "patient_mri_max_gap_cv": max(new_mri_cv),
        "every_mri_only_within_0.07_val": bool(max(mri_val) <= 0.07),
        "every_mri_only_within_0.07_cv": bool(max(mri_cv) <= 0.07),
        "best_within_0.04_val": bool(best_val <= 0.04), "best_gap_val": best_val,
        "patient_fusion_ge_clinical_cv": {k: bool(v >= clin_cv) for k, v in fusion_cv.items()}}

    def test(a: str, b: str) -> dict:
        da, db = scores[a].loc[val], scores[b].loc[val]
        ok = np.isfinite(da["score"]) & np.isfinite(db["score"])
        r = delong_test(da.loc[ok, "label"], da.loc[ok, "score"], db.loc[ok, "score"])
        return {"a": a, "b": b, "auc_a": r.auc_a, "auc_b": r.auc_b, "difference_ci": [r.ci_low, r.ci_high],
                "p": r.p_value}

    claims = {
        "transfer_helps": [test(f"detector:{s}/fusion", f"scratch:{s}/fusion") for s in ("T1WI", "T2WI", "CE-T1WI")],
        "clinical_fusion_helps": [test(f"detector:{s}/fusion", f"detector:{s}/mri") for s in ("T1WI", "T2WI", "CE-T1WI")],
        "ce_t1wi_best": [test("detector:CE-T1WI/fusion", f"detector:{s}/fusion") for s in ("T1WI", "T2WI")],
        "combined_vs_ce_t1wi": [test("detector:combined/mean", "detector:CE-T1WI/fusion")],
        "patient_vs_study_mri": [test(f"detector:{s}/patient", f"detector:{s}/mri") for s in ("T1WI", "T2WI", "CE-T1WI")],
        "patient_transfer_vs_scratch": [test(f"detector:{s}/patient", f"scratch:{s}/patient")
                                        for s in ("T1WI", "T2WI", "CE-T1WI")],
    }
    out["delong"] = claims
    best = max(out["detector"]["models"].items(), key=lambda kv: kv[1]["auc"] or 0)
    out["best_model"] = {"name": best[0], **best[1], "gap_to_oracle": round(oracle["auc"] - (best[1]["auc"] or 0), 3)}
    return out
