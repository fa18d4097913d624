"""Preprocessing throughput (slices/s) and peak memory for 25 and 50 synthetic patients.

Each size runs in a fresh process so its peak resident memory (ru_maxrss) is its own; the
target is that the peak does not grow with the number of patients (patients are processed one
at a time).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from npc_msom.cohort import load_cohort
from npc_msom.config import load_config
from npc_msom.preprocess import preprocess
cohort_dir, out_dir = sys.argv[1], sys.argv[2]
cfg = load_config("configs/demo.yaml")
t0 = time.perf_counter()
cohort = load_cohort(cohort_dir, cfg.cohort)
res = preprocess(cfg, cohort, out_dir)
dt = time.perf_counter() - t0
n = sum(res.n_images.values())
print(json.dumps({"patients": len(cohort.patient_ids), "slices": n, "seconds": round(dt, 2),
                  "slices_per_s": round(n / dt, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def run() -> dict:
    import dataclasses
    from npc_msom.config import load_config
    from npc_msom.synth import write_cohort
    base = load_config("configs/demo.yaml").synth
    out = {"target": "peak_rss_mb at 50 patients within 10% of 25 patients", "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for n in (25, 50):
            dirs[str(n)] = Path(tmp) / f"cohort{n}"
            write_cohort(dirs[str(n)], dataclasses.replace(base, patients=n))
        for name, d in dirs.items():
            r = subprocess.run([sys.executable, "-c", CHILD, str(d), str(Path(tmp) / f"run{name}")],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"preprocessing {name} patients failed:\n{r.stderr[-4000:]}")
            out["sizes"].append(json.loads(r.stdout.strip().splitlines()[-1]))
    a, b = out["sizes"]
    out["peak_growth_ratio"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
    out["target_met"] = out["peak_growth_ratio"] <= 1.10
    return out
