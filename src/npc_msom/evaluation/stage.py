"""The evaluation stage: Table 3, Figure 3 (ROC), calibration and decision curves, Figure 4
(Kaplan–Meier by risk group) of a run folder, written under ``runs/NAME/evaluation/``.

Inputs are the ``patient_scores.csv`` files that stage 2 (``prediction/<sequence>/<mri|fusion>/``,
``prediction/combined/<mean|stack>/``) and the comparison models (``baselines/<model>/<sequence|all>/``)
wrote, ``cohort/clinical.csv`` (survival times) and, for a synthetic cohort, ``cohort/truth.csv``
(the oracle). Every number comes from ``npc_msom.evaluation`` and ``npc_msom.survival``; this module
only chooses the patients, the cut-offs and the files.

Honesty rules kept here:
* Everything is computed on the **validation** patients. Risk groups use the cut-off each model
  fitted on its training patients (the ``cutoff`` column of its patient_scores.csv).
* The study's own version of Figure 4 (all patients, Youden's cut-off chosen on the same data) is
  written only as ``figure4_optimistic`` and every row or title of it carries ``OPTIMISTIC_LABEL``.

``evaluation/evaluation.json`` records the settings and the sha1 of every input file; the stage
skips itself when they are unchanged and every artifact it lists exists.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.config import SEQUENCES, Config, to_dict
from npc_msom.errors import InputError
from npc_msom.evaluation import (calibration, decision_curve, median_cutoff, roc_auc, roc_curve,
                                 threshold_metrics, youden_cutoff)
from npc_msom.evaluation._result import jsonable
from npc_msom.runtime import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

EVALUATION_FORMAT = 3   # 2: time_to_event.csv; 3: saliency.csv
OPTIMISTIC_LABEL = "optimistic (training patients included)"
VALIDATION_LABEL = "validation patients, training cut-off"
STAGE2 = "stage 2"
COMPARISON = "comparison"
COMBINED = "combined"
ALL = "all"  # the folder of a comparison model that uses no image
# 46 validation patients in the study: 5 quantile bins keep ~9 patients (and a usable Wilson CI) per bin
CALIBRATION_BINS = 5

MODEL_LABELS = {
    "mri": "MRI", "fusion": "MRI + clinical", "mean": "Combined (mean of sequences)",
    "stack": "Combined (stacked)", "largest_slice": "Comparison: largest slice",
    "largest_slice_fusion": "Comparison: largest slice + clinical", "radiomics": "Radiomics",
    "clinical": "Clinical only", "n_stage": "N stage",
    "patient": "Tumour regions + burden (patient-level)",
    "patient_fusion": "Tumour regions + burden + clinical (patient-level)",
}
# the patient-level models are tested against what they must beat: the study's model of the same
# sequence (MRI only) and the clinical-only model (MRI + clinical: fusion must not lose its signal)
PATIENT_REFERENCE = {"patient": "{seq}/mri", "patient_fusion": "clinical/all"}
STAGE2_MODELS = ("mri", "fusion", "patient", "patient_fusion")
COMBINED_MODELS = ("mean", "stack", "patient", "patient_fusion")
# the study's comparison model (its reference 20) for each stage-2 model: same sequence, same inputs
REFERENCE_OF = {"mri": "largest_slice", "fusion": "largest_slice_fusion"}
# the combined models have no all-sequence comparison model; they are tested against the study's
# headline comparison (CE-T1WI with clinical data), and the table names the reference it used
COMBINED_REFERENCE = "largest_slice_fusion/CE-T1WI"
# legend names inside a Figure 3 panel, whose title already names the sequence and the inputs
ROC_LABELS = {
    "mri": "Stage 2", "fusion": "Stage 2", "mean": "Combined (mean)", "stack": "Combined (stacked)",
    "largest_slice": "Largest slice", "largest_slice_fusion": "Largest slice", "radiomics": "Radiomics",
    "clinical": "Clinical only", "n_stage": "N stage", "patient": "Regions + burden",
    "patient_fusion": "Regions + burden",
}
BASELINE_ORDER = ("largest_slice", "largest_slice_fusion", "radiomics", "clinical", "n_stage")

TABLE3_COLUMNS = (
    "group", "key", "model", "sequence", "label", "n_val", "n_scored", "n_pos", "n_neg",
    "auc", "auc_ci_low", "auc_ci_high", "auc_ci_method", "auc_text",
    "cutoff_median", "precision", "recall", "accuracy",
    "train_cutoff", "precision_train_cutoff", "recall_train_cutoff", "accuracy_train_cutoff",
    "delong_reference", "delong_n", "auc_diff", "delong_p",
    "oracle_auc", "oracle_ci_low", "oracle_ci_high", "scores_sha1", "note")

SURVIVAL_COLUMNS = (
    "key", "label", "population", "optimistic", "endpoint", "cutoff", "n_low", "n_high",
    "events_low", "events_high", "rate_time_months", "rate_low", "rate_low_ci_low", "rate_low_ci_high",
    "rate_high", "rate_high_ci_low", "rate_high_ci_high", "chi2", "df", "p_value", "p_text", "note")

ENDPOINTS = (("DMFS", "dmfs_months", ("dmfs_event", "msom"), "MSOM-free survival"),
             ("OS", "os_months", ("os_event",), "Overall survival"))


@dataclass(frozen=True)
class ScoreFile:
    """One model's patient_scores.csv: ``key`` "CE-T1WI/fusion", "combined/mean" (stage 2) or
    "largest_slice/CE-T1WI", "clinical/all" (comparison models)."""
    group: str
    model: str
    sequence: str
    path: Path

    @property
    def key(self) -> str:
        return f"{self.sequence}/{self.model}" if self.group == STAGE2 else f"{self.model}/{self.sequence}"

    @property
    def label(self) -> str:
        name = MODEL_LABELS.get(self.model, self.model)
        if self.sequence in (COMBINED, ALL):
            return name
        return f"{name}, {self.sequence}"


def sha1_file(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def find_score_files(run_dir: str | Path) -> list[ScoreFile]:
    """Every stage-2 and comparison model of a run, stage 2 first, in the study's order."""
    run_dir = Path(run_dir)
    out: list[ScoreFile] = []
    for seq in SEQUENCES:
        for model in STAGE2_MODELS:
            p = run_dir / "prediction" / seq / model / "patient_scores.csv"
            if p.is_file():
                out.append(ScoreFile(STAGE2, model, seq, p))
    for model in COMBINED_MODELS:
        p = run_dir / "prediction" / COMBINED / model / "patient_scores.csv"
        if p.is_file():
            out.append(ScoreFile(STAGE2, model, COMBINED, p))
    found = sorted((run_dir / "baselines").glob("*/*/patient_scores.csv")) if (run_dir / "baselines").is_dir() else []
    seq_rank = {s: i for i, s in enumerate((*SEQUENCES, ALL))}
    model_rank = {m: i for i, m in enumerate(BASELINE_ORDER)}
    found.sort(key=lambda f: (model_rank.get(f.parent.parent.name, 99), f.parent.parent.name,
                              seq_rank.get(f.parent.name, 99), f.parent.name))
    out += [ScoreFile(COMPARISON, f.parent.parent.name, f.parent.name, f) for f in found]
    return out


def reference_key(sf: ScoreFile) -> str | None:
    """The study's comparison model that ``sf`` is DeLong-tested against (None for comparison models)."""
    if sf.group != STAGE2:
        return None
    if sf.model in PATIENT_REFERENCE:
        seq = "CE-T1WI" if sf.sequence == COMBINED else sf.sequence
        return PATIENT_REFERENCE[sf.model].format(seq=seq)
    if sf.sequence == COMBINED:
        return COMBINED_REFERENCE
    return f"{REFERENCE_OF[sf.model]}/{sf.sequence}" if sf.model in REFERENCE_OF else None


def _validation(df: pd.DataFrame) -> pd.DataFrame:
    """The validation rows with a finite score."""
    v = df[df["split"] == "val"]
    return v[np.isfinite(v["score"].to_numpy(dtype=float))]


def _both_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < int(y.sum()) < y.size


def table3_row(sf: ScoreFile, df: pd.DataFrame, ref: pd.DataFrame | None, ref_key: str | None,
               truth: pd.DataFrame | None, config: Config, digest: str) -> dict:
    """One row of Table 3: validation AUC with CI, metrics at the median and at the training
    cut-off, DeLong against the study's comparison model, the oracle AUC on the same patients."""
    from npc_msom.baselines.comparison import paired_delong  # one DeLong pairing for the whole project

    ec = config.evaluation
    v = _validation(df)
    y = v["label"].to_numpy(dtype=int)
    s = v["score"].to_numpy(dtype=float)
    row: dict = {c: math.nan for c in TABLE3_COLUMNS}
    row.update(group=sf.group, key=sf.key, model=sf.model, sequence=sf.sequence, label=sf.label,
               n_val=int((df["split"] == "val").sum()), n_scored=int(len(v)), n_pos=int(y.sum()),
               n_neg=int(y.size - y.sum()), auc_ci_method=ec.ci_method, auc_text="", delong_reference="",
               scores_sha1=digest, note="")
    notes = []
    if not _both_classes(y):
        notes.append("validation patients of one class only: no AUC")
    else:
        auc = roc_auc(y, s, ci=ec.ci_method, level=ec.level, n_boot=ec.bootstrap_resamples, seed=config.seed)
        row.update(auc=auc.auc, auc_ci_low=auc.ci_low, auc_ci_high=auc.ci_high, auc_text=auc.format())
        if auc.note:
            notes.append(auc.note)
        med = threshold_metrics(y, s, median_cutoff(s), "median", ec.level)
        row.update(cutoff_median=med.cutoff, precision=med.precision.estimate, recall=med.recall.estimate,
                   accuracy=med.accuracy.estimate)
        cut = pd.to_numeric(df["cutoff"], errors="coerce").dropna()
        if len(cut) and np.isfinite(cut.iloc[0]):
            tm = threshold_metrics(y, s, float(cut.iloc[0]), "given", ec.level)
            row.update(train_cutoff=tm.cutoff, precision_train_cutoff=tm.precision.estimate,
                       recall_train_cutoff=tm.recall.estimate, accuracy_train_cutoff=tm.accuracy.estimate)
        if truth is not None:
            missing = [p for p in v["patient_id"] if p not in truth.index]
            if missing:
                notes.append(f"no oracle AUC: {len(missing)} patient(s) missing from truth.csv, e.g. {missing[0]}")
            else:
                oracle = roc_auc(y, truth.loc[list(v["patient_id"]), "true_risk"].to_numpy(dtype=float),
                                 ci=ec.ci_method, level=ec.level, n_boot=ec.bootstrap_resamples, seed=config.seed)
                row.update(oracle_auc=oracle.auc, oracle_ci_low=oracle.ci_low, oracle_ci_high=oracle.ci_high)
    if ref_key is not None:
        row["delong_reference"] = ref_key
        if ref is None:
            notes.append(f"no DeLong test: comparison model {ref_key} not run")
        else:
            t = paired_delong(df, ref, level=ec.level, a_file=sf.path, b_file=ref_key)
            row["delong_n"] = t["n"]
            if t.get("note"):
                notes.append(f"no DeLong test: {t['note']}")
            else:
                row.update(auc_diff=t["auc_diff"], delong_p=t["p_value"])
    row["note"] = "; ".join(notes)
    return row


# ------------------------------------------------------------------------------------- survival

def _event_column(clinical: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in clinical.columns), None)


def survival_rows(sf: ScoreFile, df: pd.DataFrame, clinical: pd.DataFrame, config: Config,
                  optimistic: bool = False, split: str = "val",
                  population: str = VALIDATION_LABEL) -> tuple[list[dict], list]:
    """Kaplan–Meier curves and log-rank tests of DMFS and OS by risk group (low / high).

    Default: the ``split`` patients (validation; ``external`` in an external validation), grouped by
    the model's training-fitted cut-off (its risk_group column), labelled ``population``. ``optimistic``: every scored patient (training included), grouped by Youden's cut-off
    chosen on those same patients, the study's analysis; its rows say so.
    Returns (rows of SURVIVAL_COLUMNS, KMPanel-ready tuples (endpoint, title, km, logrank)).
    """
    from npc_msom.survival import kaplan_meier, logrank_test

    ec = config.evaluation
    scored = df[np.isfinite(df["score"].to_numpy(dtype=float))]
    if optimistic:
        pats = scored.copy()
        y = pats["label"].to_numpy(dtype=int)
        cut = youden_cutoff(y, pats["score"].to_numpy(dtype=float)) if _both_classes(y) else median_cutoff(pats["score"])
        pats["risk_group"] = np.where(pats["score"].to_numpy(dtype=float) >= cut, "high", "low")
        population = OPTIMISTIC_LABEL
    else:
        pats = scored[scored["split"] == split].copy()
        c = pd.to_numeric(pats["cutoff"], errors="coerce").dropna()
        cut = float(c.iloc[0]) if len(c) else math.nan
    missing = [p for p in pats["patient_id"] if p not in clinical.index]
    if missing:
        raise InputError("a scored patient has no row in the run's clinical table", patient=missing[0],
                         file="cohort/clinical.csv", expected="every patient of the split")
    rows, panels = [], []
    for endpoint, time_col, event_cols, title in ENDPOINTS:
        row = {c: math.nan for c in SURVIVAL_COLUMNS}
        row.update(key=sf.key, label=sf.label, population=population, optimistic=optimistic, endpoint=endpoint,
                   cutoff=cut, rate_time_months=ec.survival_time_months, p_text="", note="")
        ev_col = _event_column(clinical, event_cols)
        if time_col not in clinical.columns or ev_col is None:
            row["note"] = f"not run: the clinical table has no {time_col} or {'/'.join(event_cols)} column"
            rows.append(row)
            continue
        sub = clinical.loc[list(pats["patient_id"]), [time_col, ev_col]].apply(pd.to_numeric, errors="coerce")
        ok = sub.notna().all(axis=1).to_numpy()
        t = sub[time_col].to_numpy(dtype=float)[ok]
        e = sub[ev_col].to_numpy(dtype=float)[ok].astype(int)
        g = pats["risk_group"].to_numpy()[ok]
        notes = [] if ok.all() else [f"{int((~ok).sum())} patient(s) without {time_col}/{ev_col} left out"]
        groups = [x for x in ("low", "high") if x in set(g.tolist())]
        for x in ("low", "high"):
            row[f"n_{x}"] = int((g == x).sum())
            row[f"events_{x}"] = int(e[g == x].sum())
        if not groups:
            row["note"] = "; ".join(notes + ["not run: no patient with a risk group and a survival time"])
            rows.append(row)
            continue
        km = kaplan_meier(t, e, g, groups=groups, level=ec.level)
        for x, r in km.survival_at(ec.survival_time_months).items():
            row[f"rate_{x}"], row[f"rate_{x}_ci_low"], row[f"rate_{x}_ci_high"] = r.survival, r.ci_low, r.ci_high
        lr = None
        if len(groups) == 2:
            lr = logrank_test(t, e, g, groups=groups)
            row.update(chi2=lr.chi2, df=lr.df, p_value=lr.p_value, p_text=lr.format_p())
            if lr.note:
                notes.append(lr.note)
        else:
            row["p_text"] = "no test (one risk group only)"
            notes.append(f"every patient is in the {groups[0]} risk group: no log-rank test")
        row["note"] = "; ".join(notes)
        rows.append(row)
        panels.append((endpoint, title, km, lr))
    return rows, panels


def dmfs_arrays(clinical: pd.DataFrame, patient_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(time, event, ok, n_stage) of DMFS for ``patient_ids``: ``ok`` marks the patients with both
    a time and an event (dmfs_event, else msom); raises InputError naming a patient without a row."""
    _, time_col, event_cols, _ = ENDPOINTS[0]
    ids = list(patient_ids)
    missing = [p for p in ids if p not in clinical.index]
    if missing:
        raise InputError("a scored patient has no row in the clinical table", patient=missing[0],
                         expected="every scored patient, with dmfs_months and msom")
    ev_col = _event_column(clinical, event_cols)
    if time_col not in clinical.columns or ev_col is None:
        raise InputError(f"the clinical table has no {time_col} or {'/'.join(event_cols)} column",
                         expected="dmfs_months and msom (or dmfs_event) for the time-to-event view")
    sub = clinical.loc[ids, [time_col, ev_col]].apply(pd.to_numeric, errors="coerce")
    ok = sub.notna().all(axis=1).to_numpy()
    n_stage = (clinical.loc[ids, "n_stage"].astype(str).tolist() if "n_stage" in clinical.columns
               else [""] * len(ids))
    return sub[time_col].to_numpy(dtype=float), sub[ev_col].fillna(0).to_numpy(dtype=int), ok, n_stage


def time_to_event_rows(named: list[tuple[str, str, pd.DataFrame]], clinical: pd.DataFrame, population: str,
                       level: float = 0.95) -> list[dict]:
    """Rows of TIME_TO_EVENT_COLUMNS: for each (key, label, scores with patient_id and score) the
    DMFS Cox per SD (alone and with N stage), cox.zph, Harrell's and Uno's C, time-dependent AUC."""
    from npc_msom.survival.timedep import score_survival, time_to_event_row

    rows = []
    for key, label, df in named:
        d = df[np.isfinite(df["score"].to_numpy(dtype=float))]
        try:
            t, e, ok, ns = dmfs_arrays(clinical, d["patient_id"])
        except InputError as exc:
            rows.append({"key": key, "label": label, "population": population, "endpoint": "DMFS",
                         "note": f"not run: {exc}"})
            continue
        s = d["score"].to_numpy(dtype=float)[ok]
        v = score_survival(t[ok], e[ok], s, n_stage=[n for n, k in zip(ns, ok) if k], endpoint="DMFS", level=level)
        row = time_to_event_row(v, key=key, label=label, population=population)
        if not ok.all():
            row["note"] = "; ".join(x for x in (f"{int((~ok).sum())} patient(s) without DMFS left out",
                                                row["note"]) if x)
        rows.append(row)
    return rows


def _saliency(config: Config, run_dir: Path, out_dir: Path, files: list[ScoreFile], surv_key: str | None,
              by_key: dict, figures: dict, notes: list[str]) -> dict | None:
    """Where the survival model (or the first main slice model) looks on the validation patients
    (``explain.panels``); None when switched off or no slice model has its checkpoint."""
    from npc_msom.explain.panels import choose_model, saliency_view
    from npc_msom.runtime import resolve_device
    n = config.evaluation.saliency_slices_per_patient
    key = choose_model(_main_keys(files), surv_key)
    if n <= 0 or key is None:
        return None
    folder = run_dir / "prediction" / key
    if not ((folder / "checkpoint.pt").is_file() and (folder / "slice_scores.csv").is_file()):
        notes.append(f"saliency: {key} has no checkpoint.pt or slice_scores.csv")
        return None
    out = saliency_view(config, run_dir, key, out_dir, slices_per_patient=n, device=resolve_device(config.device))
    if out.get("figure"):
        png, svg = (Path(p) for p in out.pop("figure"))
        inside, area = out.get("saliency_in_tumour"), out.get("tumour_area_share")
        figures["saliency"] = {
            "png": str(png.relative_to(run_dir)), "svg": str(svg.relative_to(run_dir)), "models": [by_key[key].label],
            "caption": (f"Where {by_key[key].label} looks: Grad-CAM of its MSOM logit on the highest-probability slice "
                        "of the highest- and lowest-scored MSOM and non-MSOM validation patients; contours in red. "
                        + (f"Across {out['n_patients']} validation patients ({n} slices each), "
                           f"{inside:.0%} of the saliency lies inside GTV and nodes, which cover {area:.0%} of "
                           "the slice; " if inside is not None and area is not None else "")
                        + f"rank correlation with the maps of the same network with its weights drawn again: "
                          f"{out['randomised_weights_rank_correlation']:.2f} (Adebayo et al. 2018).")}
    return out


def _km_figure(panels: list, path: Path, config: Config, heading: str) -> list[Path]:
    from npc_msom.survival.figures import KMPanel, plot_km_grid

    t = config.evaluation.survival_time_months
    rate_label = f"{t / 12:g}-year" if t % 12 == 0 else f"{t:g}-month"
    kp = [KMPanel(f"{endpoint}, {heading}", km, lr, ylabel=title, rate_time=t,
                  rate_label=rate_label, labels={"high": "High risk", "low": "Low risk"})
          for endpoint, title, km, lr in panels]
    return list(plot_km_grid(kp, path))


# ------------------------------------------------------------------------------------ the stage

def _main_keys(files: list[ScoreFile]) -> list[str]:
    """The models of the calibration and decision curves: with clinical data per sequence (MRI alone
    where a sequence has no fusion model) and the combined mean."""
    keys = {sf.key for sf in files}
    out = []
    for seq in SEQUENCES:
        for k in (f"{seq}/fusion", f"{seq}/mri"):
            if k in keys:
                out.append(k)
                break
    for k in (f"{COMBINED}/mean", f"{COMBINED}/patient_fusion"):
        if k in keys:
            out.append(k)
    return out


def _survival_key(files: list[ScoreFile], config: Config) -> tuple[str | None, str]:
    keys = [sf.key for sf in files if sf.group == STAGE2]
    wanted = config.evaluation.survival_model
    if wanted in keys:
        return wanted, ""
    main = _main_keys(files)
    if not main:
        return None, "no stage-2 model was run"
    # prefer a single-sequence model, as the configured one is
    chosen = next((k for k in main if not k.startswith(COMBINED)), main[0])
    why = f"{wanted} was not run; Figure 4 shows {chosen} instead"
    log.warning("evaluation: %s", why)
    return chosen, why


def _settings(config: Config, run_dir: Path, files: list[ScoreFile]) -> dict:
    inputs = {sf.key: sha1_file(sf.path) for sf in files}
    for name in ("clinical.csv", "truth.csv"):
        p = run_dir / "cohort" / name
        inputs[f"cohort/{name}"] = sha1_file(p) if p.is_file() else None
    return {"format": EVALUATION_FORMAT, "evaluation": to_dict(config.evaluation), "seed": config.seed,
            "inputs": inputs}


def _plain(obj):
    return json.loads(json.dumps(jsonable(obj), sort_keys=True, default=str))


def _csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def read_clinical(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "cohort" / "clinical.csv"
    if not path.is_file():
        raise InputError("the run has no clinical table; run the cohort stage first", file=path,
                         expected="cohort/clinical.csv with the outcome columns")
    return pd.read_csv(path, dtype={"patient_id": str}).set_index("patient_id")


def read_truth(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "cohort" / "truth.csv"
    if not path.is_file():
        return None
    t = pd.read_csv(path, dtype={"patient_id": str}).set_index("patient_id")
    if "true_risk" not in t.columns:
        raise InputError("truth.csv has no true_risk column", file=path, expected="patient_id, true_risk, ...")
    return t


def evaluation_stage(config: Config, run_dir: str | Path, force: bool = False) -> dict:
    """Table 3, Figure 3, calibration / decision curves and Figure 4 of a run -> ``evaluation/``.

    Returns evaluation.json's content plus ``status`` ("done" | "up to date" | "not run").
    """
    from npc_msom.evaluation.figures import ROCEntry, ROCPanel, plot_calibration, plot_decision_curve, plot_roc_grid
    from npc_msom.prediction.scores import read_scores

    run_dir = Path(run_dir)
    out_dir = run_dir / "evaluation"
    files = find_score_files(run_dir)
    if not files:
        log.warning("evaluation: no patient_scores.csv under %s; nothing to evaluate", run_dir)
        return {"status": "not run", "reason": "no model scores (run the prediction stage first)"}
    settings = _settings(config, run_dir, files)
    summary_path = out_dir / "evaluation.json"
    if not force and summary_path.is_file():
        try:
            old = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("settings") == _plain(settings) and all((run_dir / p).is_file() for p in old.get("artifacts", [])):
            log.info("evaluation: up to date (%s)", summary_path)
            return {**old, "status": "up to date"}

    ec = config.evaluation
    tables = {sf.key: read_scores(sf.path) for sf in files}
    by_key = {sf.key: sf for sf in files}
    truth = read_truth(run_dir)
    notes: list[str] = []
    figures: dict[str, dict] = {}

    # Table 3
    rows = []
    for sf in files:
        rk = reference_key(sf)
        rows.append(table3_row(sf, tables[sf.key], tables.get(rk) if rk else None, rk, truth, config,
                               settings["inputs"][sf.key]))
    table3 = pd.DataFrame(rows, columns=list(TABLE3_COLUMNS))
    write_text_atomic(out_dir / "table3.csv", _csv(table3))

    # Figure 3: the study's six panels (sequence x MRI alone / with clinical data, each with its
    # comparison model), then one panel for the models over all sequences or none
    def entry(key: str, panel_sequence: str | None = None):
        v = _validation(tables[key])
        y, s = v["label"].to_numpy(dtype=int), v["score"].to_numpy(dtype=float)
        if not _both_classes(y):
            return None
        sf = by_key[key]
        name = ROC_LABELS.get(sf.model, sf.model)
        if panel_sequence is not None and sf.sequence not in (panel_sequence, ALL, COMBINED):
            name = sf.label
        auc = roc_auc(y, s, ci=ec.ci_method, level=ec.level, n_boot=ec.bootstrap_resamples, seed=config.seed)
        # the note (why a CI is missing or of zero width) is in Table 3; in a legend it squeezes the panel away
        return ROCEntry(name, roc_curve(y, s), dataclasses.replace(auc, note=""))

    layout = []
    for kind, title in (("mri", "MRI"), ("fusion", "MRI + clinical")):
        for seq in SEQUENCES:
            keys = [f"{seq}/{kind}", f"{seq}/{'patient' if kind == 'mri' else 'patient_fusion'}",
                    f"{REFERENCE_OF[kind]}/{seq}"] + (
                [f"radiomics/{seq}"] if kind == "mri" else [])
            layout.append((f"{seq}, {title}", seq, keys))
    layout.append(("All sequences / no image", None, [f"{COMBINED}/mean", f"{COMBINED}/stack",
                                                       f"{COMBINED}/patient", f"{COMBINED}/patient_fusion",
                                                       f"clinical/{ALL}",
                                                       f"n_stage/{ALL}"]))
    panels, shown = [], []
    for title, seq, keys in layout:
        entries = [e for e in (entry(k, seq) for k in keys if k in tables) if e is not None]
        if entries:
            panels.append(ROCPanel(title, entries))
            shown += [k for k in keys if k in tables]
    left_out = [sf.key for sf in files if sf.key not in shown]
    if left_out:
        # a model outside the panels above (another sequence name, a new comparison model) still gets a panel
        extra = [e for e in (entry(k, "") for k in left_out) if e is not None]
        if extra:
            panels.append(ROCPanel("Other models", extra))
    if panels:
        png, svg = plot_roc_grid(panels, out_dir / "figure3", ncols=3)
        figures["figure3"] = {"png": str(png.relative_to(run_dir)), "svg": str(svg.relative_to(run_dir)),
                              "models": [k for k in shown + left_out if _both_classes(
                                  _validation(tables[k])["label"].to_numpy(dtype=int))],
                              "caption": "ROC curves of every model on the validation patients"}
    else:
        notes.append("Figure 3 not drawn: no model has validation patients of both classes")

    # calibration and decision curves of the main models (probabilities only)
    cal, dca, cal_summary = {}, {}, {}
    for key in _main_keys(files):
        v = _validation(tables[key])
        y, s = v["label"].to_numpy(dtype=int), v["score"].to_numpy(dtype=float)
        if not _both_classes(y) or not np.all((s >= 0) & (s <= 1)):
            continue
        label = by_key[key].label
        cal[label] = calibration(y, s, n_bins=max(1, min(CALIBRATION_BINS, len(y) // 5)), level=ec.level)
        dca[label] = decision_curve(y, s)
        cal_summary[key] = {"label": label, "brier": cal[label].brier, "brier_null": cal[label].brier_null,
                            "intercept": cal[label].intercept, "slope": cal[label].slope,
                            "slope_ci": [cal[label].slope_ci_low, cal[label].slope_ci_high], "n": cal[label].n}
    if cal:
        png, svg = plot_calibration(cal, out_dir / "calibration", title="Calibration, validation patients")
        figures["calibration"] = {"png": str(png.relative_to(run_dir)), "svg": str(svg.relative_to(run_dir)),
                                  "models": list(cal), "caption": "Calibration of the main models (validation)"}
        png, svg = plot_decision_curve(dca, out_dir / "decision_curve", title="Decision curve, validation patients")
        figures["decision_curve"] = {"png": str(png.relative_to(run_dir)), "svg": str(svg.relative_to(run_dir)),
                                     "models": list(dca), "caption": "Net benefit of the main models (validation)"}
    else:
        notes.append("calibration and decision curves not drawn: no main model with validation patients of "
                     "both classes and probability scores")

    # survival: every stage-2 model in the table; Figure 4 for the survival model
    clinical = read_clinical(run_dir)
    surv_key, why = _survival_key(files, config)
    if why:
        notes.append(why)
    surv_rows = []
    for sf in files:
        if sf.group != STAGE2:
            continue
        for optimistic in (False, True):
            r, km_panels = survival_rows(sf, tables[sf.key], clinical, config, optimistic=optimistic)
            surv_rows += r
            if sf.key == surv_key and km_panels:
                name = "figure4_optimistic" if optimistic else "figure4"
                heading = OPTIMISTIC_LABEL if optimistic else "validation patients"
                png, svg = _km_figure(km_panels, out_dir / name, config, heading)
                figures[name] = {
                    "png": str(png.relative_to(run_dir)), "svg": str(svg.relative_to(run_dir)),
                    "models": [sf.label], "optimistic": optimistic,
                    "caption": (f"Kaplan–Meier curves by risk group of {sf.label}: "
                                + (f"{OPTIMISTIC_LABEL}: all patients, Youden's cut-off chosen on the same "
                                   "patients (the study's analysis)" if optimistic else
                                   "validation patients, cut-off fitted on the training patients"))}
    survival = pd.DataFrame(surv_rows, columns=list(SURVIVAL_COLUMNS))
    write_text_atomic(out_dir / "survival.csv", _csv(survival))

    # the time-to-event view of the main models' scores (validation patients, DMFS)
    from npc_msom.survival.timedep import TIME_TO_EVENT_COLUMNS
    tte = pd.DataFrame(time_to_event_rows([(k, by_key[k].label, _validation(tables[k])) for k in _main_keys(files)],
                                          clinical, VALIDATION_LABEL, level=ec.level),
                       columns=list(TIME_TO_EVENT_COLUMNS))
    write_text_atomic(out_dir / "time_to_event.csv", _csv(tte))

    artifacts = ["evaluation/table3.csv", "evaluation/survival.csv", "evaluation/time_to_event.csv"]
    saliency = _saliency(config, run_dir, out_dir, files, surv_key, by_key, figures, notes)
    if saliency and saliency.get("n_slices"):
        artifacts.append("evaluation/saliency.csv")
    artifacts += [f[k] for f in figures.values() for k in ("png", "svg")]
    result = {"settings": settings, "artifacts": artifacts, "figures": figures,
              "survival_model": surv_key, "main_models": _main_keys(files), "calibration": cal_summary,
              "table3": table3.to_dict(orient="records"), "survival": survival.to_dict(orient="records"),
              "time_to_event": tte.to_dict(orient="records"), "saliency": saliency,
              "notes": notes}
    result = jsonable(result)
    write_json_atomic(summary_path, result)
    log.info("evaluation: %d model(s), %d figure(s) -> %s", len(files), len(figures), out_dir)
    return {**result, "status": "done"}
