"""The study's report of a run: ``runs/NAME/report.html`` and ``runs/NAME/metrics.json``.

``report.html`` is one self-contained file (figures embedded as PNG data URIs, inline CSS, no
script, nothing fetched from the network), rendered by Jinja2 from ``templates/report.html.j2``.
The figure files are also copied beside it, under ``report/figures/``. ``metrics.json`` holds the
headline numbers for machines: detection AP per sequence and structure, every model's validation
AUC with its CI, the survival model's log-rank tests and rates.

The report computes nothing: it renders what the stages wrote (Table 1, Table 2, Figure 2,
``evaluation/``, CV summaries, the comparison table) and says "not run" for what is missing.
The study's same-data cut-off (Figure 4's optimistic version) appears only inside a block headed
by ``OPTIMISTIC_LABEL``; in ``metrics.json`` under a key that is that label.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd

from npc_msom.runtime import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

OPTIMISTIC_LABEL = "optimistic (training patients included)"  # = evaluation.stage.OPTIMISTIC_LABEL
SEQUENCES = ("T1WI", "T2WI", "CE-T1WI")
FIGURE_ORDER = ("figure3", "calibration", "decision_curve", "figure4", "figure4_optimistic", "saliency")


# ------------------------------------------------------------------------------------ formatting

def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def fmt(v, digits: int = 3) -> str:
    """A number with ``digits`` decimals; a dash for a missing value (NaN, None, empty)."""
    return f"{float(v):.{digits}f}" if _finite(v) else "\u2013"


def fmt_p(v) -> str:
    if not _finite(v):
        return "\u2013"
    return "<0.001" if float(v) < 0.001 else f"{float(v):.3f}"


def fmt_pct(v, digits: int = 1) -> str:
    return f"{100 * float(v):.{digits}f}%" if _finite(v) else "\u2013"


def fmt_ci(est, lo, hi, digits: int = 3) -> str:
    if not _finite(est):
        return "\u2013"
    if not (_finite(lo) and _finite(hi)):
        return f"{fmt(est, digits)} (CI not estimable)"
    return f"{fmt(est, digits)} ({fmt(lo, digits)}\u2013{fmt(hi, digits)})"


def _none(v):
    """NaN -> None for JSON."""
    return float(v) if _finite(v) else None


# ------------------------------------------------------------------------------------ reading

def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("report: %s is not valid JSON; shown as not run", path)
        return None


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"sequence": str})


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(run_dir: Path, src: Path, name: str, caption: str, optimistic: bool = False) -> dict | None:
    """Copies the PNG (and its SVG) to report/figures/ and returns the template's record of it."""
    if not src.is_file():
        return None
    dest_dir = run_dir / "report" / "figures"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}.png"
    shutil.copyfile(src, dest)
    svg = src.with_suffix(".svg")
    if svg.is_file():
        shutil.copyfile(svg, dest_dir / f"{name}.svg")
    return {"name": name, "uri": _data_uri(dest), "caption": caption, "file": str(dest.relative_to(run_dir)),
            "optimistic": optimistic}


# ------------------------------------------------------------------------------------ sections
def _saliency_section(run_dir: Path, evaluation: dict | None) -> dict | None:
    """The rows of evaluation/saliency.csv for the patients the figure shows, and the summary."""
    info = (evaluation or {}).get("saliency")
    df = _read_csv(run_dir / "evaluation" / "saliency.csv")
    if not info or df is None or df.empty:
        return None
    shown = df[df["shown_as"].fillna("") != ""]
    rows = [{"why": r.shown_as, "patient": r.patient_id, "label": "MSOM" if int(r.label) else "no MSOM",
             "score": fmt(r.score), "inside": fmt_pct(r.saliency_in_tumour, 0), "area": fmt_pct(r.tumour_area_share, 0)}
            for r in shown.itertuples()]
    return {"model": info.get("model"), "rows": rows, "n_patients": info.get("n_patients"),
            "inside": fmt_pct(info.get("saliency_in_tumour"), 0), "area": fmt_pct(info.get("tumour_area_share"), 0),
            "rho": fmt(info.get("randomised_weights_rank_correlation"), 2),
            "per_patient": info.get("slices_per_patient")}



def _cohort_section(run_dir: Path) -> dict:
    manifest = _read_json(run_dir / "cohort" / "manifest.json")
    split = _read_json(run_dir / "preprocessed" / "split.json")
    out: dict = {"manifest": manifest is not None, "split": None}
    if manifest is not None:
        out.update(root=manifest.get("root"), n_patients=manifest.get("n_patients"),
                   clinical_table=manifest.get("clinical_table"),
                   skipped=[{"patient": s.get("patient") or "(unknown patient)", "error": s.get("error", ""),
                             "message": s.get("message", ""), "file": s.get("file") or ""}
                            for s in manifest.get("skipped", [])],
                   clinical_only=manifest.get("clinical_only", []), image_only=manifest.get("image_only", []),
                   unreadable=[u.get("file", "") for u in manifest.get("unreadable_files", [])],
                   archives=[f"{a.get('file')}: {a.get('reason')}" for a in manifest.get("archives", [])])
    if split is not None:
        counts = {"train": len(split.get("train", [])), "val": len(split.get("val", []))}
        clin = run_dir / "cohort" / "clinical.csv"
        if clin.is_file():
            c = pd.read_csv(clin, dtype={"patient_id": str}).set_index("patient_id")
            if "msom" in c.columns:
                for part in ("train", "val"):
                    ids = [p for p in split.get(part, []) if p in c.index]
                    counts[f"{part}_msom"] = int(c.loc[ids, "msom"].sum())
        out["split"] = counts
    return out


def _detection_section(run_dir: Path, sequences: tuple[str, ...]) -> dict:
    t2 = _read_csv(run_dir / "detection" / "table2.csv")
    if t2 is None:
        # detection/table2.csv is written once every sequence is trained; until then each
        # sequence's own table2.csv stands in
        parts = [df for seq in sequences if (df := _read_csv(run_dir / "detection" / seq / "table2.csv")) is not None]
        t2 = pd.concat(parts, ignore_index=True) if parts else None
    rows, headline = [], {}
    if t2 is not None:
        t2 = t2.fillna("")
        rows = t2.to_dict(orient="records")
    for seq in sequences:
        m = _read_json(run_dir / "detection" / seq / "metrics.json")
        if m is not None:
            ap = m.get("ap50") or {}
            headline[seq] = {"GTV_ap50": _none(ap.get("GTV")), "GTVln_ap50": _none(ap.get("GTVln")),
                             "map50": _none(m.get("map50")), "map50_95": _none(m.get("map50_95")),
                             "n_val_images": m.get("n_images", m.get("n_val_images"))}
    done = {str(r["sequence"]) for r in rows} | set(headline)
    return {"columns": list(t2.columns) if t2 is not None else [], "rows": rows,
            "not_run": [s for s in sequences if s not in done], "headline": headline}


def _table3_section(table3: pd.DataFrame | None) -> dict:
    if table3 is None:
        return {"rows": [], "has_oracle": False}
    rows = []
    for r in table3.to_dict(orient="records"):
        rows.append({
            "group": r["group"], "label": r["label"], "key": r["key"],
            "n": f"{int(r['n_scored'])} ({int(r['n_pos'])}/{int(r['n_neg'])})" if _finite(r["n_scored"]) else "\u2013",
            "auc": fmt_ci(r["auc"], r["auc_ci_low"], r["auc_ci_high"]),
            "precision": fmt(r["precision"]), "recall": fmt(r["recall"]), "accuracy": fmt(r["accuracy"]),
            "precision_t": fmt(r["precision_train_cutoff"]), "recall_t": fmt(r["recall_train_cutoff"]),
            "accuracy_t": fmt(r["accuracy_train_cutoff"]),
            "reference": r["delong_reference"] if isinstance(r["delong_reference"], str) else "",
            "delong_p": fmt_p(r["delong_p"]),
            "oracle": fmt_ci(r["oracle_auc"], r["oracle_ci_low"], r["oracle_ci_high"]),
            "note": r["note"] if isinstance(r["note"], str) else ""})
    return {"rows": rows, "has_oracle": bool(table3["oracle_auc"].notna().any())}


def _survival_rows(df: pd.DataFrame) -> list[dict]:
    out = []
    for r in df.to_dict(orient="records"):
        out.append({
            "label": r["label"], "key": r["key"], "endpoint": r["endpoint"], "population": r["population"],
            "optimistic": bool(r["optimistic"]),
            "n": f"{int(r['n_low']) if _finite(r['n_low']) else 0} / {int(r['n_high']) if _finite(r['n_high']) else 0}",
            "events": (f"{int(r['events_low']) if _finite(r['events_low']) else 0} / "
                       f"{int(r['events_high']) if _finite(r['events_high']) else 0}"),
            "rate_low": fmt_ci(r["rate_low"], r["rate_low_ci_low"], r["rate_low_ci_high"], 3),
            "rate_high": fmt_ci(r["rate_high"], r["rate_high_ci_low"], r["rate_high_ci_high"], 3),
            "chi2": fmt(r["chi2"], 2), "p": r["p_text"] if isinstance(r["p_text"], str) and r["p_text"] else fmt_p(r["p_value"]),
            "note": r["note"] if isinstance(r["note"], str) else ""})
    return out


TIME_TO_EVENT_HEADER = ("Model", "n (events)", "HR per SD (95% CI)", "p", "PH test p",
                        "HR per SD with N stage (95% CI)", "p", "Harrell's C", "Uno's C",
                        "AUC 12 mo", "AUC 24 mo", "AUC 36 mo", "Note")


def time_to_event_cells(df: pd.DataFrame | None) -> list[list[str]]:
    """The time-to-event table's cells (TIME_TO_EVENT_HEADER order) from time_to_event.csv rows."""
    if df is None or df.empty:
        return []
    out = []
    for r in df.to_dict(orient="records"):
        n = f"{int(r['n'])} ({int(r['events'])})" if _finite(r.get("n")) and _finite(r.get("events")) else "-"
        out.append([str(r.get("label", r.get("key", ""))), n,
                    fmt_ci(r["hr_per_sd"], r["hr_ci_low"], r["hr_ci_high"], 2), fmt_p(r["hr_p"]), fmt_p(r["ph_p"]),
                    fmt_ci(r["adj_hr_per_sd"], r["adj_hr_ci_low"], r["adj_hr_ci_high"], 2), fmt_p(r["adj_hr_p"]),
                    fmt(r["harrell_c"]), fmt(r["uno_c"]), fmt(r["auc_12m"]), fmt(r["auc_24m"]), fmt(r["auc_36m"]),
                    r["note"] if isinstance(r.get("note"), str) else ""])
    return out


def _cv_section(run_dir: Path) -> list[dict]:
    out = []
    for source, path in (("stage 2", run_dir / "prediction" / "cv" / "cv_metrics.json"),
                         ("comparison models", run_dir / "baselines" / "cv" / "cv_metrics.json")):
        m = _read_json(path)
        if m is None:
            continue
        rows = [{"model": k, "auc_mean": fmt(v.get("auc_mean")), "sd_repeats": fmt(v.get("auc_sd_repeats")),
                 "fold_mean": fmt(v.get("auc_fold_mean")), "fold_sd": fmt(v.get("auc_fold_sd")),
                 "n": v.get("n_patients", "")} for k, v in (m.get("models") or {}).items()]
        out.append({"source": source, "folds": m.get("folds"), "repeats": m.get("repeats"),
                    "n_patients": m.get("n_patients"), "note": m.get("note", ""), "rows": rows})
    return out


def _comparison_section(run_dir: Path) -> list[dict]:
    df = _read_csv(run_dir / "baselines" / "comparison.csv")
    if df is None or df.empty:
        return []
    return [{"stage2": f"{r['stage2_sequence']}/{r['stage2_model']}", "baseline": f"{r['baseline']}/{r['baseline_sequence']}",
             "n": r["n"], "auc_stage2": fmt(r["auc_stage2"]), "auc_baseline": fmt(r["auc_baseline"]),
             "diff": fmt_ci(r["auc_diff"], r["diff_ci_low"], r["diff_ci_high"]), "p": fmt_p(r["p_value"]),
             "note": r["note"] if isinstance(r["note"], str) else ""} for r in df.to_dict(orient="records")]


def methods_text(config: dict | None, env: dict | None) -> list[str]:
    """The methods paragraphs, generated from the run's resolved config.yaml and env.json."""
    if config is None:
        return ["The run folder has no config.yaml: methods cannot be described."]
    pp, det, pr = config.get("preprocess", {}), config.get("detection", {}), config.get("prediction", {})
    ev, bl = config.get("evaluation", {}), config.get("baselines", {})
    seqs = ", ".join(pp.get("sequences", SEQUENCES))
    paras = [
        f"Each MR sequence ({seqs}) was resampled to {pp.get('spacing_mm', 1.0):g} mm, its intensities "
        f"rescaled to 1\u2013255 between the {pp.get('intensity_percentiles', [0.5, 99.5])[0]:g}th and "
        f"{pp.get('intensity_percentiles', [0.5, 99.5])[-1]:g}th percentiles, and the axial slices with tumour "
        f"(every {pp.get('slice_step', 1)} slice(s)) resized to {pp.get('image_size')} \u00d7 {pp.get('image_size')} px. "
        f"Patients were split once into training and validation sets (validation fraction "
        f"{pp.get('val_fraction', 0):.2f}, stratified by MSOM, seed {config.get('seed')}).",
        f"Stage 1: a Mask R-CNN with a {det.get('backbone')}-FPN backbone ({det.get('fpn_channels')} FPN channels) "
        f"was trained per sequence to find GTV and GTVln for {det.get('epochs')} epochs (batch {det.get('batch_size')}, "
        f"SGD, learning rate {det.get('lr')}, steps at epochs {', '.join(str(s) for s in det.get('lr_steps', []))}), "
        f"and evaluated by AP@0.5 on the validation slices with the last epoch's weights.",
        f"Stage 2: an MSOM classifier whose extractor was initialised from "
        f"{'the trained detector' if pr.get('init') == 'detector' else 'scratch (' + str(pr.get('init')) + ')'} "
        f"scored each slice from the {pr.get('feature_level')} map (global average pooling, fully connected layer, "
        f"sigmoid; fine-tuning: {pr.get('finetune')}, {pr.get('epochs')} epochs, batch {pr.get('batch_size')}, "
        f"learning rate {pr.get('lr')}); the clinical variables joined the pooled features in the fusion model. "
        f"A patient's score is the {pr.get('aggregate')} of its slice probabilities. The risk cut-off is Youden's "
        f"on the training patients' scores, applied unchanged to the validation patients.",
        f"Comparison models: {', '.join(bl.get('models', []))} (largest slice: {bl.get('slice_epochs')} epochs; "
        f"radiomics parameters {bl.get('radiomics_params')}).",
        f"Statistics on the validation patients: AUC with {int(round(100 * ev.get('level', 0.95)))}% "
        f"{ev.get('ci_method')} confidence intervals"
        + (f" ({ev.get('bootstrap_resamples')} stratified resamples)" if ev.get("ci_method") == "bootstrap" else "")
        + "; paired DeLong tests against the study's comparison model; precision, recall and accuracy at the "
          "median score (the study's choice) and at the training cut-off; calibration (intercept, slope, Brier) "
          "and decision curves; Kaplan\u2013Meier estimates with log-rank tests (R's survdiff) and "
          f"{ev.get('survival_time_months', 36):g}-month rates (R's log confidence intervals) by risk group.",
    ]
    if env:
        libs = ", ".join(f"{k} {v}" for k, v in env.items()
                         if k in ("python", "numpy", "torch", "torchvision", "SimpleITK", "pydicom", "pycocotools",
                                  "lifelines", "sklearn", "pandas") and v)
        hw = f"; CUDA GPU {env.get('gpu')}" if env.get("cuda") and env.get("gpu") else " on CPU" if env.get("cuda") is False else ""
        paras.append(f"Software: {libs}{hw}.")
    return paras


# ------------------------------------------------------------------------------------ build

def _template():
    import jinja2
    env = jinja2.Environment(loader=jinja2.PackageLoader("npc_msom.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2")


def build_report(run_dir: str | Path) -> Path:
    """Writes ``report.html``, ``metrics.json`` and ``report/figures/`` of a run; returns report.html's path.

    Works on a partial run: every section whose inputs are missing says "not run".
    """
    import yaml
    from markupsafe import Markup

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    config = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
    env = _read_json(run_dir / "env.json")
    sequences = tuple((config or {}).get("preprocess", {}).get("sequences", SEQUENCES))

    # the figures of an earlier build must not outlive the stage that drew them
    shutil.rmtree(run_dir / "report" / "figures", ignore_errors=True)
    cohort = _cohort_section(run_dir)
    t1 = run_dir / "report" / "table1.html"
    # Table 1's HTML is the project's own output (render_table1_html escapes every cell)
    table1 = Markup(t1.read_text()) if t1.is_file() else None
    detection = _detection_section(run_dir, sequences)
    fig2_caption = ("Figure 2. One validation slice per sequence: ground truth in red, predicted GTV in yellow "
                    "and GTVln in blue, each with its confidence.")
    figure2 = [f for f in [_figure(run_dir, run_dir / "detection" / "figure2.png", "figure2", fig2_caption)] if f]
    if not figure2:
        # the all-sequence figure is drawn after the last detector; before that, each sequence's own
        figure2 = [f for seq in sequences if (f := _figure(
            run_dir, run_dir / "detection" / seq / "figures" / "figure2.png", f"figure2_{seq}",
            f"Figure 2, {seq}: a validation slice with ground truth in red, predicted GTV in yellow and GTVln "
            "in blue, each with its confidence."))]

    evaluation = _read_json(run_dir / "evaluation" / "evaluation.json")
    table3_df = _read_csv(run_dir / "evaluation" / "table3.csv")
    survival_df = _read_csv(run_dir / "evaluation" / "survival.csv")
    time_to_event = time_to_event_cells(_read_csv(run_dir / "evaluation" / "time_to_event.csv"))
    figures: dict = {name: None for name in FIGURE_ORDER}   # the template asks for each by name
    captions = {"figure3": "Figure 3. ROC curves on the validation patients: each panel's stage-2 model (first "
                           "curve) with its comparison model(s); legends give AUC (95% CI).",
                "calibration": "Calibration of the main models on the validation patients (observed proportion "
                               "per quantile bin with Wilson CIs).",
                "decision_curve": "Decision curves of the main models on the validation patients.",
                "figure4": "Figure 4. Kaplan\u2013Meier curves of MSOM-free survival (DMFS) and overall survival "
                           "(OS) by risk group on the validation patients; the cut-off was fitted on the training "
                           "patients. Numbers at risk under each panel.",
                "figure4_optimistic": f"{OPTIMISTIC_LABEL[0].upper()}{OPTIMISTIC_LABEL[1:]}: the study's analysis, "
                                      "all patients with Youden's cut-off chosen on those same patients. Shown "
                                      "for comparison with the paper only; the numbers are biased upwards."}
    for name in FIGURE_ORDER:
        rec = (evaluation or {}).get("figures", {}).get(name)
        if rec:
            fig = _figure(run_dir, run_dir / rec["png"], name, captions.get(name) or rec.get("caption", ""),
                          optimistic=name.endswith("optimistic"))
            if fig:
                figures[name] = fig
    surv_model = (evaluation or {}).get("survival_model")
    survival = {"validation": [], "optimistic": [], "all_models": []}
    if survival_df is not None and not survival_df.empty:
        rows = _survival_rows(survival_df)
        survival["validation"] = [r for r in rows if r["key"] == surv_model and not r["optimistic"]]
        survival["optimistic"] = [r for r in rows if r["key"] == surv_model and r["optimistic"]]
        survival["all_models"] = [r for r in rows if not r["optimistic"]]
    surv_label = next((r["label"] for r in survival["validation"]), surv_model)
    cal = (evaluation or {}).get("calibration", {})
    calibration_rows = [{"label": v["label"], "brier": fmt(v["brier"]), "brier_null": fmt(v["brier_null"]),
                         "intercept": fmt(v["intercept"], 2), "slope": fmt(v["slope"], 2)} for v in cal.values()]

    name = (config or {}).get("name", run_dir.name)
    ctx = {
        "title": f"npc-msom report: {name}", "run_name": name, "run_dir": str(run_dir),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cohort": cohort, "table1": table1, "detection": detection, "figure2": figure2,
        "evaluation_run": evaluation is not None, "table3": _table3_section(table3_df),
        "evaluation_notes": (evaluation or {}).get("notes", []), "figures": figures,
        "survival": survival, "survival_label": surv_label, "optimistic_label": OPTIMISTIC_LABEL,
        "rate_months": ((config or {}).get("evaluation") or {}).get("survival_time_months", 36),
        "time_to_event": time_to_event, "time_to_event_header": TIME_TO_EVENT_HEADER,
        "saliency": _saliency_section(run_dir, evaluation),
        "calibration": calibration_rows, "comparison": _comparison_section(run_dir), "cv": _cv_section(run_dir),
        "methods": methods_text(config, env),
    }
    html = _template().render(**ctx)
    out = run_dir / "report.html"
    write_text_atomic(out, html)
    metrics = headline_metrics(run_dir, config, detection, table3_df, survival_df, surv_model)
    # what the numbers were computed from: the evaluation's settings with the sha1 of every score file
    metrics["evaluation_settings"] = (evaluation or {}).get("settings")
    write_json_atomic(run_dir / "metrics.json", metrics)
    log.info("report: %s (%d figure(s) embedded)", out, len(figure2) + sum(f is not None for f in figures.values()))
    return out


def headline_metrics(run_dir: Path, config: dict | None, detection: dict, table3: pd.DataFrame | None,
                     survival: pd.DataFrame | None, survival_model: str | None) -> dict:
    """metrics.json: the numbers a reader (or a benchmark) looks for first, NaN as null."""
    models = {}
    if table3 is not None:
        for r in table3.to_dict(orient="records"):
            models[r["key"]] = {"group": r["group"], "label": r["label"], "n": int(r["n_scored"]),
                                "n_pos": int(r["n_pos"]), "auc": _none(r["auc"]), "ci_low": _none(r["auc_ci_low"]),
                                "ci_high": _none(r["auc_ci_high"]), "ci_method": r["auc_ci_method"],
                                "delong_reference": r["delong_reference"] if isinstance(r["delong_reference"], str) else None,
                                "delong_p": _none(r["delong_p"]), "oracle_auc": _none(r["oracle_auc"])}
    surv: dict = {}
    if survival is not None and survival_model is not None:
        for r in survival[survival["key"] == survival_model].to_dict(orient="records"):
            part = OPTIMISTIC_LABEL if r["optimistic"] else "validation"
            surv.setdefault(part, {})[r["endpoint"]] = {
                "chi2": _none(r["chi2"]), "p_value": _none(r["p_value"]),
                "n_low": int(r["n_low"]) if _finite(r["n_low"]) else None,
                "n_high": int(r["n_high"]) if _finite(r["n_high"]) else None, "rate_time_months": _none(r["rate_time_months"]),
                "rate_low": _none(r["rate_low"]), "rate_high": _none(r["rate_high"]), "cutoff": _none(r["cutoff"])}
    return {"run": (config or {}).get("name", run_dir.name), "detection_ap50": detection["headline"],
            "models_validation_auc": models, "survival_model": survival_model, "survival": surv,
            "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
