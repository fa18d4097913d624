"""DeLong tests of every stage-2 model against every comparison model, on the validation patients
that both scored: ``runs/NAME/baselines/comparison.csv``.

Stage-2 models are found as ``prediction/<sequence>/<mri|fusion>/patient_scores.csv``; comparison
models as ``baselines/<model>/<sequence|all>/patient_scores.csv``. A stage-2 model is compared with
the comparison models of its own sequence and with those that use no image (``all``); stage 2's
``prediction/combined/<mean|stack>/`` (all sequences) and, with ``all_pairs``, every stage-2 model
with every comparison model.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.errors import InputError
from npc_msom.evaluation import delong_test
from npc_msom.prediction.scores import read_scores
from npc_msom.runtime import write_text_atomic

from .common import ALL_SEQUENCES

log = logging.getLogger(__name__)

COMBINED = "combined"  # prediction/combined/<mean|stack>/: stage 2 over all sequences

COMPARISON_COLUMNS = ("stage2_sequence", "stage2_model", "baseline", "baseline_sequence", "n", "n_pos",
                      "n_neg", "auc_stage2", "auc_baseline", "auc_diff", "diff_ci_low", "diff_ci_high",
                      "z", "p_value", "level", "note")


def _found(root: Path, depth_names: str) -> list[tuple[str, str, Path]]:
    """(sequence-or-model, model-or-sequence, file) of every patient_scores.csv two levels down."""
    out = []
    if root.is_dir():
        for f in sorted(root.glob(f"*/*/{depth_names}")):
            out.append((f.parent.parent.name, f.parent.name, f))
    return out


def paired_delong(a: pd.DataFrame, b: pd.DataFrame, *, level: float = 0.95,
                  a_file: str | Path = "", b_file: str | Path = "", split: str = "val") -> dict:
    """DeLong test of score ``a`` vs ``b`` (patient_scores tables) on the ``split`` patients
    (validation; ``external`` for npc-msom validate) both scored; a row of COMPARISON_COLUMNS'
    statistics (note says why a test is missing)."""
    va = a[(a["split"] == split) & np.isfinite(a["score"].to_numpy(dtype=float))].set_index("patient_id")
    vb = b[(b["split"] == split) & np.isfinite(b["score"].to_numpy(dtype=float))].set_index("patient_id")
    ids = sorted(set(va.index) & set(vb.index))
    y = va.loc[ids, "label"].to_numpy(dtype=int)
    yb = vb.loc[ids, "label"].to_numpy(dtype=int)
    if not np.array_equal(y, yb):
        bad = [p for p, u, v in zip(ids, y, yb) if u != v]
        raise InputError(f"two score files disagree on the MSOM label of {len(bad)} patient(s), "
                         f"e.g. {bad[0]}", patient=bad[0], file=f"{a_file} / {b_file}",
                         expected="the same labels (the same cohort and split)")
    row: dict = {"n": len(ids), "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()), "level": level, "note": ""}
    try:
        t = delong_test(y, va.loc[ids, "score"].to_numpy(dtype=float), vb.loc[ids, "score"].to_numpy(dtype=float),
                        level=level)
    except ValueError as e:
        row["note"] = str(e)
        return row
    row.update({"auc_stage2": t.auc_a, "auc_baseline": t.auc_b, "auc_diff": t.difference, "diff_ci_low": t.ci_low,
                "diff_ci_high": t.ci_high, "z": t.z, "p_value": t.p_value})
    return row


def compared(stage2_sequence: str, baseline_sequence: str) -> bool:
    """Whether a stage-2 model of one sequence is tested against a comparison model of another:
    the same sequence, a comparison model without images, or stage 2 over all sequences."""
    return stage2_sequence == COMBINED or baseline_sequence in (stage2_sequence, ALL_SEQUENCES)


def compare_with_stage2(run_dir: str | Path, *, level: float = 0.95, all_pairs: bool = False) -> pd.DataFrame:
    """The table of DeLong tests (COMPARISON_COLUMNS), one row per (stage-2 model, comparison model)."""
    run_dir = Path(run_dir)
    stage2 = _found(run_dir / "prediction", "patient_scores.csv")       # (sequence, mri|fusion, file)
    baselines = _found(run_dir / "baselines", "patient_scores.csv")     # (model, sequence, file)
    rows = []
    cache: dict[Path, pd.DataFrame] = {}

    def table(path: Path) -> pd.DataFrame:
        if path not in cache:
            cache[path] = read_scores(path)
        return cache[path]

    for seq, kind, f2 in stage2:
        for model, bseq, fb in baselines:
            if not all_pairs and not compared(seq, bseq):
                continue
            row = {"stage2_sequence": seq, "stage2_model": kind, "baseline": model, "baseline_sequence": bseq}
            row.update(paired_delong(table(f2), table(fb), level=level, a_file=f2, b_file=fb))
            rows.append(row)
    if not stage2:
        log.warning("comparison: no stage-2 patient_scores.csv under %s", run_dir / "prediction")
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def write_comparison(run_dir: str | Path, *, level: float = 0.95, all_pairs: bool = False) -> Path:
    """``baselines/comparison.csv`` (written atomically); returns its path."""
    df = compare_with_stage2(run_dir, level=level, all_pairs=all_pairs)
    out = Path(run_dir) / "baselines" / "comparison.csv"
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    write_text_atomic(out, buf.getvalue())
    log.info("comparison: %d DeLong test(s) -> %s", len(df), out)
    return out
