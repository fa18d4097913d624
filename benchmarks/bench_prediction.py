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
TARGETS = {"best_model_vs_oracle": "validation AUC within 0.05 of the oracle AUC"}


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
        if init == "detector":
            t0 = time.perf_counter()
            from npc_msom.prediction import cv_for_run
            cv = cv_for_run(cfg, bench_run, folds=5, repeats=2)
            out["cv_5x2"] = {k: {"mean": v["auc_mean"], "sd": v["auc_sd_repeats"]} for k, v in cv["models"].items()}
            out["cv_seconds"] = round(time.perf_counter() - t0, 1)

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
    }
    out["delong"] = claims
    best = max(out["detector"]["models"].items(), key=lambda kv: kv[1]["auc"] or 0)
    out["best_model"] = {"name": best[0], **best[1], "gap_to_oracle": round(oracle["auc"] - (best[1]["auc"] or 0), 3)}
    return out
