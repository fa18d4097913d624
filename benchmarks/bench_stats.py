"""Speed of the discrimination statistics: DeLong CI on 100,000 patients and a stratified
bootstrap CI (2,000 resamples) on 1,000 patients.

``run()`` returns timings (seconds, best of ``repeats`` after one warm-up call) and the values
computed, for ``make bench`` to write as JSON. It asserts nothing about time: the targets (under a
second for DeLong at 100k; seconds, not minutes, for the bootstrap) are read from the numbers.
"""
from __future__ import annotations

import time

import numpy as np

from npc_msom.evaluation import delong_test, roc_auc


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n patients, about 45% cases (the study's MSOM rate), two correlated scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.45).astype(np.int8)
    shared = rng.normal(size=n)
    a = 1 / (1 + np.exp(-(0.9 * y + shared + 0.5 * rng.normal(size=n))))
    b = 1 / (1 + np.exp(-(0.7 * y + shared + 0.5 * rng.normal(size=n))))
    return y, a, b


def _best_time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up: imports, first-touch allocations
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(repeats: int = 3) -> dict:
    y, a, b = _synthetic(100_000, seed=0)
    t_delong, auc = _best_time(lambda: roc_auc(y, a, ci="delong"), repeats)
    t_test, test = _best_time(lambda: delong_test(y, a, b), repeats)

    y1k, a1k, _ = _synthetic(1_000, seed=1)
    t_boot, boot = _best_time(lambda: roc_auc(y1k, a1k, ci="bootstrap", n_boot=2000, seed=0), repeats)
    return {
        "target": "DeLong CI on 100,000 patients < 1 s; bootstrap CI 2,000 x 1,000 patients < 10 s",
        "target_met": bool(t_delong < 1.0 and t_boot < 10.0),
        "delong_ci_100k_s": t_delong,
        "delong_ci_100k": auc.to_dict(),
        "delong_test_100k_s": t_test,
        "delong_test_100k": test.to_dict(),
        "bootstrap_ci_2000x1000_s": t_boot,
        "bootstrap_ci_2000x1000": boot.to_dict(),
        "repeats": repeats,
    }


if __name__ == "__main__":  # pragma: no cover - manual use
    import json
    print(json.dumps(run(), indent=2))
