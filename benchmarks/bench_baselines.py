"""The comparison models on a finished run folder (default ``runs/s186``: the 186-patient synthetic
cohort, preprocessed): seconds per model on this machine, validation AUC beside stage 2's and the
oracle's (truth.csv's ``true_risk`` on the same validation patients), and the DeLong p of the best
stage-2 model against each comparison model.

Writes only under ``<run>/baselines/`` (via ``run_baselines``; outputs already there with the same
settings are reused and their recorded seconds reported). The models run with the demo's cost
settings (``OVERRIDES``), which a CPU can afford; the study's figures are recorded beside ours.

    python -m benchmarks.bench_baselines runs/s186      # -> benchmarks/results/baselines.json
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN = os.environ.get("NPC_MSOM_BENCH_RUN", str(ROOT / "runs" / "s186"))
# the demo's costs: ResNet-18 from scratch on 140 slices took ~38 s per epoch at 128 px and ~14 s
# at 64 px on 2 busy cores, so 5 epochs at 64 px; original-image radiomics, 2 processes
OVERRIDES = ("baselines.slice_epochs=5", "baselines.slice_size=64", "baselines.slice_batch_size=16",
             "baselines.radiomics_params=radiomics_demo.yaml", "baselines.radiomics_workers=2")
# the study's validation AUCs (STUDY.md): comparison model (reference 20) per sequence; radiomics (ref. 7)
STUDY = {"largest_slice": {"T1WI": 0.717, "T2WI": 0.685, "CE-T1WI": 0.620}, "radiomics": {"any": 0.792}}
TARGETS = {"all_comparison_models_s": "<= 120 on 2 cores (ARCHITECTURE.md demo budget)",
           "largest_slice_s_per_sequence": "< 60 on 2 cores"}


def _oracle(cohort_root: Path, ids: list[str]) -> float | None:
    import pandas as pd

    from npc_msom.evaluation import roc_auc
    truth_path = cohort_root / "truth.csv"
    if not truth_path.is_file() or not ids:
        return None
    truth = pd.read_csv(truth_path, dtype={"patient_id": str}).set_index("patient_id")
    ids = [p for p in ids if p in truth.index]
    y = truth.loc[ids, "msom"].to_numpy(dtype=int)
    if not 0 < y.sum() < y.size:
        return None
    return float(roc_auc(y, truth.loc[ids, "true_risk"].to_numpy(dtype=float)).auc)


def _stage2(run_dir: Path) -> dict:
    out = {}
    for m in sorted((run_dir / "prediction").glob("*/*/metrics.json")):
        d = json.loads(m.read_text())
        out[f"{m.parent.parent.name}/{m.parent.name}"] = {
            "auc": (d.get("auc") or {}).get("auc"), "n_scored": d.get("n_scored"), "file": str(m.parent)}
    return out


def _radiomics_timing(config, run_dir: Path, ids: list[str], n: int = 8) -> dict:
    """Fresh feature extraction of ``n`` patients (every sequence) into a temporary folder: seconds
    per patient whatever the run's cache holds."""
    import tempfile

    from npc_msom.baselines import _LazyCohort
    from npc_msom.baselines import radiomics as rad
    cfg = config.baselines
    stats: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        rad.extract_cohort(_LazyCohort(config, run_dir).get, ids[:n], list(config.preprocess.sequences), tmp,
                           params_file=rad.params_path(cfg.radiomics_params), spacing_mm=config.preprocess.spacing_mm,
                           margin_mm=cfg.radiomics_margin_mm, workers=cfg.radiomics_workers, stats=stats)
    k = max(stats.get("extracted_patients", 0), 1)
    return {**stats, "seconds_per_patient_all_sequences": stats.get("extract_seconds", 0.0) / k,
            "seconds_per_patient_sequence": stats.get("extract_seconds", 0.0) / (k * max(stats.get("sequences", 1), 1))}


def run(run_dir: str | Path | None = None) -> dict:
    import numpy as np
    import torch

    from npc_msom.baselines import run_baselines
    from npc_msom.baselines.comparison import paired_delong
    from npc_msom.config import load_config
    from npc_msom.prediction.scores import read_scores

    run_dir = Path(run_dir or DEFAULT_RUN)
    if not (run_dir / "preprocessed" / "split.json").is_file():
        return {"skipped": f"no preprocessed run folder at {run_dir} (expected preprocessed/split.json)"}
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    config = load_config(run_dir / "config.yaml" if (run_dir / "config.yaml").is_file() else None, list(OVERRIDES))
    manifest = json.loads((run_dir / "cohort" / "manifest.json").read_text())
    t0 = time.perf_counter()
    summary = run_baselines(config, run_dir)
    wall = time.perf_counter() - t0

    split = json.loads((run_dir / "preprocessed" / "split.json").read_text())
    cohort_root = Path(manifest["root"])
    oracle_val = _oracle(cohort_root, list(split["val"]))
    stage2 = _stage2(run_dir)
    best = max((k for k in stage2 if stage2[k]["auc"] is not None), key=lambda k: stage2[k]["auc"], default=None)
    best_scores = read_scores(Path(stage2[best]["file"]) / "patient_scores.csv") if best else None

    models: dict = {}
    total_s = 0.0
    for model, per_seq in summary.items():
        if model == "cv":
            continue
        for seq, s in per_seq.items():
            if s.get("status") == "skipped":
                models[f"{model}/{seq}"] = {"status": "skipped", "reason": s.get("reason")}
                continue
            d = Path(s["out_dir"])
            m = json.loads((d / "metrics.json").read_text())
            df = read_scores(d / "patient_scores.csv")
            val = df[(df["split"] == "val") & np.isfinite(df["score"].to_numpy(dtype=float))]
            row = {"status": s["status"], "seconds": m.get("seconds"), "auc": m.get("auc"),
                   "n_patients": m["n_patients"], "n_scored": m["n_scored"],
                   "oracle_auc_same_patients": _oracle(cohort_root, list(val["patient_id"]))}
            if model == "radiomics":
                row["extract_seconds_per_patient"] = m.get("extract_seconds_per_patient")
                row["n_selected"] = (m.get("selection") or {}).get("n_selected")
            study = STUDY.get(model.replace("_fusion", "") if model.startswith("largest") else model, {})
            if study:
                row["study_auc"] = study.get(seq, study.get("any"))
            if best_scores is not None:
                t = paired_delong(best_scores, df)
                row["delong_vs_best_stage2"] = {"stage2": best, **t}
            total_s += float(m.get("seconds") or 0.0)
            models[f"{model}/{seq}"] = row
    radiomics_timing = _radiomics_timing(config, run_dir, list(split["val"])) if "radiomics" in summary else None
    return {"run_dir": str(run_dir), "overrides": list(OVERRIDES), "targets": TARGETS,
            "radiomics_fresh_extraction": radiomics_timing,
            "torch_threads": torch.get_num_threads(), "wall_seconds_this_call": wall,
            "seconds_all_models_recorded": total_s, "n_val": len(split["val"]), "oracle_auc_val": oracle_val,
            "stage2": stage2, "best_stage2": best, "models": models}


if __name__ == "__main__":  # pragma: no cover - manual use
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from npc_msom.runtime import environment_record
    t = time.perf_counter()
    res = run(sys.argv[1] if len(sys.argv) > 1 else None)
    res = {"benchmark": "bench_baselines", "status": "ok", "seconds": round(time.perf_counter() - t, 2),
           "environment": environment_record(), **res}
    out = ROOT / "benchmarks" / "results" / "baselines.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from npc_msom.runtime import write_json_atomic
    write_json_atomic(out, res)
    print(out)
