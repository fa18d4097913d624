"""The demo's cost: `npc-msom synth` + `npc-msom run` with configs/demo.yaml, as `make demo` runs
them (the virtual environment already made), in a fresh folder. Records the wall time of each
command, the stages' seconds (run_summary.json), the peak memory of each command, and the headline
results (CE-T1WI GTV AP@0.5, the best MSOM model's validation AUC). Targets (issue 11): the whole
demo <= 15 min on 2 cores including the set-up (~1.5 min: recorded separately from `make demo` on a
fresh clone, not measurable here); CE-T1WI GTV AP@0.5 >= 0.75; best validation AUC >= 0.75.

NPC_MSOM_BENCH_DEMO_DIR: where to write the cohort and the run (default: a temporary folder, removed).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"command": " ".join(cmd), "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
            # ru_maxrss of the children: the largest single process so far (KiB on Linux)
            "peak_rss_mib": round(after.ru_maxrss / 1024, 1)}


def headline(run_dir: Path) -> dict:
    """CE-T1WI GTV AP@0.5 and every MSOM model's validation AUC from a finished run folder."""
    out: dict = {"detection_ap50": {}, "auc": {}}
    for m in sorted((run_dir / "detection").glob("*/metrics.json")):
        out["detection_ap50"][m.parent.name] = json.loads(m.read_text()).get("ap50")
    for m in sorted((run_dir / "prediction").glob("*/*/metrics.json")):
        d = json.loads(m.read_text())
        auc = d.get("auc") or {}
        out["auc"][f"{m.parent.parent.name}/{m.parent.name}"] = auc.get("auc") if isinstance(auc, dict) else auc
    for m in sorted((run_dir / "baselines").glob("*/*/metrics.json")):
        d = json.loads(m.read_text())
        auc = d.get("auc") or {}
        out["auc"][f"baseline {m.parent.parent.name}/{m.parent.name}"] = auc.get("auc") if isinstance(auc, dict) else auc
    vals = {k: v for k, v in out["auc"].items() if isinstance(v, (int, float)) and not k.startswith("baseline")}
    out["best_msom_model"] = max(vals, key=vals.get) if vals else None
    out["best_msom_auc"] = vals[out["best_msom_model"]] if vals else None
    return out


def run() -> dict:
    keep = os.environ.get("NPC_MSOM_BENCH_DEMO_DIR")
    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="npc-msom-demo-"))
    cohort, run_dir = base / "cohort", base / "run"
    exe = [sys.executable, "-m", "npc_msom.cli"]
    try:
        synth = _timed(exe + ["synth", "--out", str(cohort), "--config", "configs/demo.yaml"])
        run_ = _timed(exe + ["run", "--config", "configs/demo.yaml", "--cohort", str(cohort), "--out", str(run_dir)])
        summary = json.loads((run_dir / "run_summary.json").read_text())
        result = {"synth": synth, "run": run_, "stage_seconds": summary.get("stages", {}).get("seconds"),
                  "wall_s_without_setup": round(synth["wall_s"] + run_["wall_s"], 1),
                  "targets": {"demo_wall_s_with_setup": 900, "setup_s_assumed": 90,
                              "ce_t1wi_gtv_ap50": 0.75, "best_val_auc": 0.75},
                  "cpus": os.cpu_count(), **headline(run_dir)}
        if (base / "run" / "report.html").is_file():
            result["report"] = str(base / "run" / "report.html")
        return result
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
