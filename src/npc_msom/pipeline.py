"""The stages in order, each reading the previous stage's artifacts from the run folder.

``run`` is resumable: the cohort manifest is rewritten (cheap), preprocessing skips the patients it
has finished, and detection resumes from its last checkpoint or is skipped when complete.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from npc_msom.config import Config, dump_config
from npc_msom.runtime import (environment_record, setup_logging, stage_label, write_json_atomic,
                              write_text_atomic)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    stages: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "stages": self.stages}


def start_run(config: Config, run_dir: str | Path) -> Path:
    """Create the run folder with config.yaml, env.json and a log file.

    ``config.yaml`` is this start's config; every start also keeps it as
    ``config_history/<UTC time>.yaml``, never overwritten, so that a folder resumed under several
    configs says which ones (each artifact records the settings it was made with).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = dump_config(config)
    write_text_atomic(run_dir / "config.yaml", text)
    _keep_in_history(run_dir / "config_history", text)
    write_json_atomic(run_dir / "env.json", environment_record())
    setup_logging(log_file=run_dir / "log.txt")
    return run_dir


def _keep_in_history(folder: Path, text: str) -> Path:
    """Writes ``folder/<UTC time>.yaml`` atomically without ever replacing a file. Names sort in time
    order (microseconds; a start in the same microsecond gets ``-1``, ``-2``, ...)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%S.%fZ")
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{stamp}.", suffix=".tmp", dir=folder)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        for n in range(1000):
            path = folder / f"{stamp}{'' if n == 0 else f'-{n}'}.yaml"
            try:
                os.link(tmp, path)  # the complete file under a new name, or FileExistsError: never a replace
                return path
            except FileExistsError:
                continue
        raise FileExistsError(f"{folder}: no free name for {stamp}")
    finally:
        tmp.unlink()


def load_cohort_stage(config: Config, cohort_dir: str | Path, run_dir: Path, clinical: str | Path | None = None):
    """Read the cohort (headers only) and write ``cohort/manifest.json``."""
    from npc_msom.cohort import load_cohort
    cohort = load_cohort(cohort_dir, config.cohort, clinical=clinical)
    write_json_atomic(run_dir / "cohort" / "manifest.json", cohort.manifest)
    # the validated table travels with the run, so that later stages never reopen the cohort folder
    table = cohort.clinical.loc[[p for p in cohort.patient_ids if p in cohort.clinical.index]]
    write_text_atomic(run_dir / "cohort" / "clinical.csv", table.to_csv(index_label="patient_id"))
    # a synthetic cohort's oracle risk travels too: the report gives each model's ceiling beside it
    truth = Path(cohort_dir) / "truth.csv"
    if truth.is_file():
        write_text_atomic(run_dir / "cohort" / "truth.csv", truth.read_text())
    log.info("cohort: %d usable patients from %s", len(cohort.patient_ids), cohort_dir)
    return cohort


def preprocess_stage(config: Config, cohort, run_dir: Path, force: bool = False):
    from npc_msom.preprocess import preprocess
    return preprocess(config, cohort, run_dir / "preprocessed", force=force)


def table1_stage(cohort, split: dict, run_dir: Path) -> Path:
    """Table 1 (clinical variables by MSOM and by training/validation) as CSV and HTML."""
    from npc_msom.cohort.schema import CLINICAL_SCHEMA
    from npc_msom.report.table1 import Comparison, Variable, make_table1, render_table1_html, write_table1_csv
    df = cohort.clinical.loc[[p for p in cohort.patient_ids if p in cohort.clinical.index]].copy()
    df["split"] = ["train" if p in set(split["train"]) else "val" for p in df.index]
    variables = [Variable(c.name, "continuous" if c.kind in ("int", "float") else "categorical", c.label,
                          levels=c.allowed or ((0, 1) if c.kind == "binary" else None))
                 for c in CLINICAL_SCHEMA if c.kind != "id" and not c.outcome and c.name in df.columns]
    table = make_table1(df, variables, [Comparison("msom", (1, 0), ("MSOM", "non-MSOM")),
                                        Comparison("split", ("train", "val"), ("Training", "Validation"))])
    out = run_dir / "report" / "table1.csv"
    write_table1_csv(table, out)
    write_text_atomic(run_dir / "report" / "table1.html",
                      render_table1_html(table, title="Table 1. Patient characteristics"))
    return out


def detection_stage(config: Config, run_dir: Path, sequences=None, resume: bool = True, force: bool = False) -> dict:
    """Train (or resume, or skip when complete) one detector per sequence, then Table 2 and Figure 2.

    A detector made with other settings or inputs is refused (StaleArtifactError) unless ``force``."""
    from npc_msom.detection import figure2, table2_for_run, train_detector_for_run
    from npc_msom.runtime import resolve_device
    device = resolve_device(config.device)
    out = {}
    if config.detection.shared:
        from npc_msom.detection.shared import train_shared_detector_for_run
        out = train_shared_detector_for_run(config, run_dir, sequences or config.preprocess.sequences,
                                            resume=resume, device=device, force=force)
    else:
        for seq in sequences or config.preprocess.sequences:
            out[seq] = train_detector_for_run(config, run_dir, seq, resume=resume, device=device, force=force)
    table2_for_run(run_dir)
    figure2(run_dir, device=device)
    return out


def prediction_stage(config: Config, run_dir: Path, sequences=None, force: bool = False) -> dict:
    """Stage 2: every sequence x model (mri, fusion), the combined model, CV when configured."""
    from npc_msom.prediction import prediction_stage as _stage
    from npc_msom.runtime import resolve_device
    return _stage(config, run_dir, sequences, force=force, device=resolve_device(config.device))


def baselines_stage(config: Config, run_dir: Path, cohort=None) -> dict:
    """The comparison models on the same patients and split, then their DeLong tests against stage 2."""
    from npc_msom.baselines import run_baselines, write_comparison
    out = run_baselines(config, run_dir, cohort)
    if (run_dir / "prediction").is_dir():
        out["comparison"] = str(write_comparison(run_dir, level=config.evaluation.level))
    return out


def evaluation_stage(config: Config, run_dir: Path, force: bool = False) -> dict:
    """Table 3, Figures 3 and 4, calibration and decision curves on the validation patients."""
    from npc_msom.evaluation.stage import evaluation_stage as _stage
    return _stage(config, run_dir, force=force)


def report_stage(run_dir: Path) -> Path:
    """``report.html`` (self-contained) and ``metrics.json`` from whatever the run holds."""
    from npc_msom.report.html import build_report
    return build_report(run_dir)


STAGES: tuple[str, ...] = ("preprocess", "detection", "prediction", "baselines", "evaluation", "report")
# the stages that refuse artifacts made with other settings, and so take --force
FORCEABLE: tuple[str, ...] = ("preprocess", "detection", "prediction", "evaluation")


class StageClock:
    """Logs each stage's start and end with its place in the run and the run's time so far, keeps
    its wall seconds (``run_summary.json``: seconds) and prefixes the stage's progress bars with
    "[i/n stage]".

    ``reference``: the stage seconds of an earlier finished run of the same preset on a machine like
    this one (:func:`reference_seconds`); with it, each stage's start also gives the run's expected
    end, as remaining reference seconds from now, in the log and in the bars' prefix
    ("[3/7 detection, run ends ~18:42]"). A first run has no reference: each loop's bar has its own ETA.
    """

    def __init__(self, planned: Sequence[str] = (), reference: dict[str, float] | None = None):
        self.seconds: dict[str, float] = {}
        self.planned = list(planned)
        self.reference = dict(reference or {})
        self.t_start = time.perf_counter()

    def seconds_left(self, name: str) -> float | None:
        """Reference seconds of ``name`` and of the planned stages after it; None without a reference
        (or when one of them is missing from it)."""
        todo = self.planned[self.planned.index(name):] if name in self.planned else [name]
        if not self.reference or any(s not in self.reference for s in todo):
            return None
        return float(sum(self.reference[s] for s in todo))

    @contextlib.contextmanager
    def __call__(self, name: str):
        where = f"{self.planned.index(name) + 1}/{len(self.planned)} " if name in self.planned else ""
        left = self.seconds_left(name)
        eta = "" if left is None else (datetime.now() + timedelta(seconds=left)).strftime("%H:%M")
        log.info("stage %s%s: started (run time %s%s)", where, name, _clock(time.perf_counter() - self.t_start),
                 "" if left is None else f"; about {_clock(left)} left, the run ends ~{eta} by an earlier run's "
                                         "stage seconds")
        t0 = time.perf_counter()
        with stage_label(f"[{where}{name}{'' if left is None else f', run ends ~{eta}'}]"):
            yield
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        log.info("stage %s%s: done in %.1f s (run time %s)", where, name, self.seconds[name],
                 _clock(time.perf_counter() - self.t_start))


def reference_seconds(config: Config, run_dir: Path, stages: Sequence[str]) -> tuple[dict[str, float], Path] | None:
    """The stage seconds (``run_summary.json``) of the newest finished run among ``run_dir`` and its
    sibling folders that ran every one of ``stages`` with the same preset (``name`` in its
    ``config.yaml``) on a machine like this one (the same CPU count and CUDA or not in ``env.json``),
    and that run's folder; None when there is none. Only an estimate for the ETA: nothing is skipped
    or reused from it."""
    import json

    import yaml
    here = environment_record()
    found = []
    for summary in Path(run_dir).parent.glob("*/run_summary.json"):
        folder = summary.parent
        try:
            name = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("name")
            env = json.loads((folder / "env.json").read_text())
            seconds = json.loads(summary.read_text())["stages"]["seconds"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
            continue
        if name == config.name and env.get("cpu_count") == here.get("cpu_count") and \
                env.get("cuda") == here.get("cuda") and isinstance(seconds, dict) and set(stages) <= set(seconds):
            found.append((summary.stat().st_mtime, folder, {k: float(v) for k, v in seconds.items()}))
    if not found:
        return None
    _, folder, seconds = max(found, key=lambda t: t[0])
    return seconds, folder


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def run(config: Config, cohort_dir: str | Path, run_dir: str | Path, *,
        clinical: str | Path | None = None, stages: tuple[str, ...] = STAGES,
        force: tuple[str, ...] = ()) -> RunResult:
    """Every stage in order: cohort -> preprocess -> detection -> prediction -> baselines -> evaluation
    -> report."""
    run_dir = Path(run_dir)
    # read before this start rewrites the folder's config.yaml and env.json
    planned = ["cohort"] + [s for s in STAGES if s in stages]
    ref = reference_seconds(config, run_dir, planned)
    run_dir = start_run(config, run_dir)
    if ref is not None:
        log.info("run: the ETA is estimated from the stage seconds of %s", ref[1])
    done: dict = {}
    clock = StageClock(planned, reference=ref[0] if ref else None)
    with clock("cohort"):
        cohort = load_cohort_stage(config, cohort_dir, run_dir, clinical)
    done["cohort"] = {"patients": len(cohort.patient_ids)}
    if "preprocess" in stages:
        with clock("preprocess"):
            res = preprocess_stage(config, cohort, run_dir, force="preprocess" in force)
            done["preprocess"] = {"images": res.n_images, "annotations": res.n_annotations}
            done["table1"] = str(table1_stage(cohort, res.split, run_dir))
    if "detection" in stages:
        with clock("detection"):
            det = detection_stage(config, run_dir, force="detection" in force)
        done["detection"] = {seq: r if isinstance(r, dict) else getattr(r, "metrics", None) for seq, r in det.items()}
    if "prediction" in stages:
        with clock("prediction"):
            pred = prediction_stage(config, run_dir, force="prediction" in force)
        done["prediction"] = {k: (v.to_dict() if hasattr(v, "to_dict") else
                                  {m: s["auc_mean"] for m, s in v["models"].items()}) for k, v in pred.items()}
    if "baselines" in stages:
        with clock("baselines"):
            done["baselines"] = baselines_stage(config, run_dir, cohort)
    if "evaluation" in stages:
        with clock("evaluation"):
            ev = evaluation_stage(config, run_dir, force="evaluation" in force)
        done["evaluation"] = {"status": ev["status"], "figures": sorted(ev.get("figures", {}))}
    if "report" in stages:
        with clock("report"):
            done["report"] = str(report_stage(run_dir))
    done["seconds"] = clock.seconds
    result = RunResult(run_dir, done)
    write_json_atomic(run_dir / "run_summary.json", result.to_dict())
    return result
