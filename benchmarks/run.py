"""`make bench`: speed, memory and quality figures, one JSON file per benchmark.

Each benchmark module exposes ``run() -> dict``; nothing here asserts a time (targets are
recorded beside the figures so a reader sees whether they are met).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path

# explicit list, no discovery by name
BENCHMARKS = ("bench_preprocess", "bench_stats", "bench_detection", "bench_prediction", "bench_baselines",
              "bench_demo")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--only", nargs="*", help="names from %s" % (BENCHMARKS,))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    from npc_msom.runtime import environment_record
    for name in args.only or BENCHMARKS:
        t0 = time.perf_counter()
        try:
            result = importlib.import_module(f"benchmarks.{name}").run()
            status = "ok"
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            result = {"error": traceback.format_exc()}
            status = "error"
            failed += 1
        result = {"benchmark": name, "status": status, "seconds": round(time.perf_counter() - t0, 2),
                  "environment": environment_record(), **result}
        (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"{name}: {status} -> {out / (name + '.json')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
