"""``npc-msom validate``: a trained run's frozen stage-2 models on a whole new cohort (external
validation, TRIPOD type 3).

The new cohort is read as ``run`` reads one (any DICOM layout, NIfTI, the public NPC dataset's
layout, ``--skip-bad``) and every patient goes through ``predict.predict_input`` with the run's
config: its preprocessing, its detector, its stage-2 models (the study's ``mri`` / ``fusion``, the
patient-level ``patient`` / ``patient_fusion`` per sequence and over the sequences, and the
combined mean). Nothing is refitted: the encoders, standardisations, penalties and cut-offs are
those stored in the run (a test changes the external patients and finds every file of the run
unchanged). A patient with contours is scored on its contoured slices (``slices: contours``, no
detector pass); one without, fully automatically on the detector's slices, as ``predict`` does.

Per model, ``<out>/<seq|combined>/<model>/patient_scores.csv`` (split ``external``) and
``metrics.json``: AUC with its DeLong CI, precision / recall / accuracy at the run's training
cut-off (Youden on the run's training patients' stored scores) and at the external median,
calibration intercept, slope and Brier; beside it the run's internal validation AUC. ``summary.json``
lists the run (path and the digest of its config.yaml), the patients scored, excluded and skipped;
``report.html`` shows internal against external side by side under an "External validation"
heading.

Resumable: each patient's scores are kept in ``<out>/.work/<pid>.json`` under the digest of the
run's models; a killed validation starts again where it stopped, and a changed run is not mixed in.

Overlap with the run's own patients: a PatientID the run also has is the same patient when its
preprocessed slices equal the run's pixel for pixel (excluded unless ``allow_overlap``); the same
ID with other images (two hospitals numbering from 1) is scored and listed. A patient under another
ID whose preprocessed slices equal a run patient's (a renamed or re-exported copy, found by the
digest of every slice the run wrote) is the same patient too, named and excluded likewise.

Beside the per-model files: ``survival.csv`` (Kaplan-Meier DMFS / OS by the run's training
cut-off, log-rank), ``time_to_event.csv`` (Cox of DMFS per SD of the score, alone and with N
stage, cox.zph's PH test, Harrell's and Uno's C, time-dependent AUC at 12 / 24 / 36 months), the
calibration figure and, with ``recalibrate``, the main models recalibrated on the external cohort
(labelled: fitted on its outcomes). A clinical table without a predictor column scores every model
that does not need it (the fusion models are left out and listed).

The run's comparison models (``baselines/``: clinical, N stage, largest slice, radiomics) are
scored frozen as well (``npc_msom.baselines.external``), into ``<out>/baselines/<model>/<seq|all>/``,
and ``comparison.csv`` holds the DeLong test of every stage-2 model against every comparison model
on the external patients both scored (the run's pairing rule); each stage-2 model's metrics.json
carries its rows.
"""
from __future__ import annotations

import dataclasses
import html
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.errors import InputError
from npc_msom.runtime import file_digest, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

SPLIT = "external"


def run_models_digest(run_dir: Path) -> str:
    """The digest of everything a score depends on: config.yaml and every model file of the run."""
    import hashlib  # noqa: PLC0415
    h = hashlib.sha256()
    files = [run_dir / "config.yaml"]
    files += sorted((run_dir / "detection").glob("*/checkpoint_last.pt"))
    for pattern in ("prediction/*/*/checkpoint.pt", "prediction/*/*/model.json", "prediction/*/*/metrics.json",
                    "baselines/*/*/checkpoint.pt", "baselines/*/*/selection.json", "baselines/*/*/metrics.json"):
        files += sorted(run_dir.glob(pattern))
    for f in files:
        h.update(str(f.relative_to(run_dir)).encode())
        h.update(file_digest(f).encode())
    return h.hexdigest()


def _run_ids(run_dir: Path) -> set[str]:
    p = run_dir / "preprocessed" / "split.json"
    if not p.is_file():
        return set()
    split = json.loads(p.read_text())
    return {str(x) for x in split.get("train", []) + split.get("val", [])}


def _fusion_columns(run_dir: Path) -> list[str]:
    """The clinical columns any fusion model of the run encodes."""
    cols: list[str] = []
    for f in sorted(run_dir.glob("prediction/*/patient_fusion/model.json")):
        cols += [c["name"] for c in json.loads(f.read_text()).get("encoder", {}).get("columns", [])]
    for f in sorted(run_dir.glob("prediction/*/fusion/checkpoint.pt")):
        import torch  # noqa: PLC0415
        enc = torch.load(f, map_location="cpu", weights_only=True).get("encoder") or {}
        cols += [c["name"] for c in enc.get("columns", [])]
    return list(dict.fromkeys(cols))


def _same_images(run_dir: Path, pred, pid: str) -> bool:
    """Whether the patient's preprocessed slices equal, pixel for pixel, the slices the run wrote
    for its patient of the same PatientID (one sequence is enough: a different patient differs)."""
    from PIL import Image  # noqa: PLC0415
    for seq, sp in pred.sequences.items():
        p = run_dir / "preprocessed" / seq / "slices.csv"
        if not p.is_file():
            continue
        sl = pd.read_csv(p, dtype={"patient_id": str})
        sl = sl[sl["patient_id"] == pid]
        if sl.empty:
            continue
        for r in sl.head(3).itertuples():
            z = int(r.slice_index)
            f = run_dir / "preprocessed" / seq / r.file_name
            if not f.is_file() or z >= len(sp.volume.images):
                return False
            if not np.array_equal(sp.volume.images[z], np.asarray(Image.open(f))):
                return False
        return True
    return False


def _slice_digest(image) -> str:
    import hashlib  # noqa: PLC0415
    a = np.ascontiguousarray(np.asarray(image))
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest()


def run_pixel_digests(run_dir: Path) -> dict[str, str]:
    """{digest of a preprocessed slice: PatientID} over every slice the run wrote (all sequences):
    finds a run patient under another PatientID (a renamed or re-exported copy)."""
    from PIL import Image  # noqa: PLC0415
    out: dict[str, str] = {}
    for p in sorted((run_dir / "preprocessed").glob("*/slices.csv")):
        sl = pd.read_csv(p, dtype={"patient_id": str})
        for r in sl.itertuples():
            f = p.parent / r.file_name
            if f.is_file():
                img = np.asarray(Image.open(f))
                if img.std() > 0:           # a blank slice says nothing about whose it is
                    out[_slice_digest(img)] = r.patient_id
    return out


def _renamed_from(pred, pid: str, digests: dict[str, str]) -> str | None:
    """The run's PatientID whose slices this patient's preprocessed slices equal, when it is not ``pid``."""
    for sp in pred.sequences.values():
        for img in sp.volume.images:
            other = digests.get(_slice_digest(img))
            if other is not None and other != pid:
                return other
    return None


def _patient_record(pred) -> dict:
    """{"<seq|combined>/<model>": {score, note}} of one patient's prediction."""
    out = {}
    for seq, sp in pred.sequences.items():
        for m, s in sp.scores.items():
            out[f"{seq}/{m}"] = {"score": s["score"], "note": f"{sp.slice_rule} slices"}
    if pred.combined:
        out["combined/mean"] = {"score": pred.combined["score"], "note": pred.combined.get("note", "")}
    for m, s in (pred.combined_patient or {}).items():
        out[f"combined/{m}"] = {"score": s["score"], "note": s.get("note", "")}
    return out


def validate_cohort(run_dir: str | Path, cohort_dir: str | Path, out_dir: str | Path,
                    clinical: str | Path | None = None, *, skip_bad: bool = False, allow_overlap: bool = False,
                    recalibrate: str | None = None, device=None) -> dict:
    """Score every patient of ``cohort_dir`` with the run's frozen models and write the external
    validation (see the module docstring). Returns summary.json's content."""
    from npc_msom.cohort.clinical import find_clinical_table, relaxed_schema  # noqa: PLC0415
    from npc_msom.cohort.load import load_cohort  # noqa: PLC0415
    from npc_msom.predict import PatientInput, predict_input, read_run  # noqa: PLC0415
    t0 = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_run(run_dir)
    cfg = run.config
    digest = run_models_digest(run_dir)
    from npc_msom.baselines.external import load_baselines, radiomics_scores, slice_scores, table_scores  # noqa: PLC0415
    frozen = load_baselines(cfg, run_dir, device)
    ccfg = dataclasses.replace(cfg.cohort, skip_bad=bool(skip_bad or cfg.cohort.skip_bad), required_sequences=())
    # a predictor column the table lacks rules out only the models that use it (checked below)
    table_path = Path(clinical) if clinical is not None else find_clinical_table(Path(cohort_dir))
    schema, absent_columns = relaxed_schema(table_path) if table_path is not None and table_path.is_file() \
        else (None, [])
    if absent_columns:
        log.warning("the external clinical table has no column(s) %s", ", ".join(absent_columns))
    cohort = load_cohort(cohort_dir, ccfg, clinical, clinical_schema=schema)
    ids = list(cohort.patient_ids)
    if not ids:
        raise InputError("the external cohort has no usable patient", file=Path(cohort_dir),
                         expected="DICOM or NIfTI MR series of at least one patient (see npc-msom inspect)")
    table = cohort.clinical
    if "msom" not in table.columns or table.reindex(ids)["msom"].isna().all():
        raise InputError("the external cohort's clinical table has no MSOM outcomes", file=Path(cohort_dir),
                         expected="a clinical table (clinical.csv in the cohort or --clinical) with msom 0/1 per patient")
    no_label = [p for p in ids if pd.isna(table.loc[p, "msom"])] if set(ids) <= set(table.index) else \
        [p for p in ids if p not in table.index]
    if no_label:
        raise InputError(f"{len(no_label)} patient(s) of the external cohort have no MSOM outcome", patient=no_label[0],
                         file=Path(cohort_dir), expected="msom 0 or 1 for every patient with images")
    # a PatientID the run also has: the same patient when the preprocessed pixels are the run's too
    collisions = set(ids) & _run_ids(run_dir)
    columns = _fusion_columns(run_dir)
    lacking = [c for c in columns if c not in table.columns or table.reindex(ids)[c].isna().all()]
    with_clinical = bool(columns) and not lacking
    if lacking:
        log.warning("the external clinical table lacks %s: the fusion models are not scored", lacking)

    work = out_dir / ".work"
    loaded: dict = {}
    records, skipped, same, renamed = {}, [], [], []
    copies: dict[str, str] = {}          # external PatientID -> the run's PatientID with the same pixels
    digests = None
    for i, pid in enumerate(ids):
        cached = work / f"{pid}.json"
        if cached.is_file():
            rec = json.loads(cached.read_text())
            if rec.get("run_digest") == digest and rec.get("with_clinical") == with_clinical:
                records[pid] = rec["scores"]
                if rec.get("copy_of"):
                    copies[pid] = rec["copy_of"]
                if rec.get("same_as_run"):
                    same.append(pid)
                elif pid in collisions:
                    renamed.append(pid)
                continue
        try:
            patient = cohort.load_patient(pid)
            entry = cohort._entries[pid]
            pin = PatientInput(patient, entry.source, entry, cohort.root)
            pred = predict_input(run, pin, table.loc[[pid]] if with_clinical else None, device=device,
                                 detect_contoured=False, loaded=loaded)
        except InputError as e:
            if not cohort.skip_bad:
                raise
            skipped.append({"patient": pid, "message": str(e)})
            log.warning("skipped: %s", e)
            continue
        records[pid] = _patient_record(pred)
        base_row = table.loc[[pid]] if all(c in table.columns for c in frozen.clinical_columns) else None
        for seq, sp in pred.sequences.items():
            records[pid].update(slice_scores(frozen, seq, sp.volume, base_row, device=device))
        is_same = pid in collisions and _same_images(run_dir, pred, pid)
        if digests is None:
            digests = run_pixel_digests(run_dir)
        copy_of = None if is_same else _renamed_from(pred, pid, digests)
        if is_same:
            same.append(pid)
        elif pid in collisions:
            renamed.append(pid)
        if copy_of:
            copies[pid] = copy_of
            log.warning("external patient %s has the same preprocessed pixels as the run's patient %s", pid, copy_of)
        write_json_atomic(cached, {"run_digest": digest, "with_clinical": with_clinical, "same_as_run": is_same,
                                   "copy_of": copy_of, "scores": records[pid]})
        log.info("external %d/%d %s scored", i + 1, len(ids), pid)
    overlap = sorted(set(same) | set(copies))
    if overlap and not allow_overlap:
        log.warning("%d patient(s) of the external cohort are the run's own (same pixels; same or another "
                    "PatientID) and are "
                    "excluded: %s", len(overlap), ", ".join(overlap[:10]))
        records = {p: r for p, r in records.items() if p not in set(overlap)}
        if not records:
            raise InputError(f"every patient of the external cohort is in the run's own cohort ({', '.join(overlap[:5])})",
                             file=Path(cohort_dir), expected="patients the run never saw (or --allow-overlap)")
    if not records:
        raise InputError("no patient of the external cohort could be scored", file=Path(cohort_dir),
                         expected="at least one patient with a series of a sequence the run trained")

    scored_ids = list(records)
    extra = table_scores(frozen, table, scored_ids)
    extra.update(radiomics_scores(frozen, cohort, scored_ids, work / "radiomics"))
    for key, per_patient in extra.items():
        for pid, rec in per_patient.items():
            records[pid][key] = rec
    models = sorted({k for r in records.values() for k in r})
    results, baselines = {}, {}
    for key in models:
        if key.startswith(BASELINES + "/"):
            _, model, where = key.split("/")
            baselines[key] = _write_model(run_dir, run_dir / key, out_dir / key, key, where, model, records, table)
        else:
            where, model = key.split("/")
            results[key] = _write_model(run_dir, run_dir / "prediction" / where / model, out_dir / where / model, key,
                                        where, model, records, table)
    comparison = _comparison(cfg, out_dir, results, baselines)
    from npc_msom.evaluation._result import jsonable  # noqa: PLC0415
    views = jsonable(_outcome_views(cfg, out_dir, results, table, recalibrate))
    summary = {"run": str(run_dir.resolve()), "run_digest": digest, "cohort": str(Path(cohort_dir).resolve()),
               "n_patients": len(ids), "n_scored": len(records), "excluded_overlap": overlap if not allow_overlap else [],
               "overlap_allowed": overlap if allow_overlap else [], "skipped": skipped,
               "same_patient_id_other_images": sorted(renamed),
               "same_images_other_patient_id": dict(sorted(copies.items())),
               "fusion_clinical_columns_missing": lacking, "clinical_columns_absent": absent_columns,
               **views,
               "models": {k: {"internal_auc": v["internal"], "external_auc": (v["metrics"].get("auc") or {}),
                              "calibration": v["metrics"].get("calibration"), "n_scored": v["metrics"]["n_scored"]}
                          for k, v in results.items()},
               "comparison_models": {k: {"internal_auc": v["internal"], "external_auc": (v["metrics"].get("auc") or {}),
                                         "n_scored": v["metrics"]["n_scored"]} for k, v in baselines.items()},
               "comparison_models_not_scored": dict(sorted(frozen.notes.items())),
               "comparison": jsonable(comparison),
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json_atomic(out_dir / "summary.json", summary)
    write_text_atomic(out_dir / "report.html", _report(summary, out_dir))
    return summary


def _write_model(run_dir: Path, internal_path: Path, out: Path, key: str, where: str, model: str, records: dict,
                 clinical: pd.DataFrame) -> dict:
    """patient_scores.csv and metrics.json of one model (``key`` in the records; ``internal_path``
    its folder in the run): the external rows, with the cut-off refitted from the run's stored
    training scores exactly as the stage fitted it."""
    from npc_msom.prediction.scores import model_metrics, patient_table, read_scores  # noqa: PLC0415
    internal = json.loads((internal_path / "metrics.json").read_text()) if (internal_path / "metrics.json").is_file() else {}
    train = read_scores(internal_path / "patient_scores.csv") if (internal_path / "patient_scores.csv").is_file() \
        else pd.DataFrame(columns=["patient_id", "split", "score", "label", "note"])
    train = train[train["split"] == "train"]
    ext = [p for p in records if key in records[p]]
    scores = [float(records[p][key]["score"]) for p in ext]
    notes = [records[p][key].get("note", "") for p in ext]
    labels = clinical.loc[ext, "msom"].astype(int).to_numpy()
    cutoff = internal.get("risk_cutoff")
    df = patient_table(list(train["patient_id"]) + ext, ["train"] * len(train) + [SPLIT] * len(ext),
                       list(train["score"].astype(float)) + scores,
                       list(train["label"].astype(int)) + list(labels),
                       list(train["note"].fillna("").astype(str)) + notes, cutoff=cutoff)
    metrics = model_metrics(df, evaluate_on=SPLIT, model=model, sequence=where,
                            extra={"validation": "external", "run": str(run_dir.resolve()),
                                   "internal_validation_auc": (internal.get("auc") or {}),
                                   "cutoff_source": "the run's risk_cutoff (Youden on its training patients)"})
    ext_df = df[df["split"] == SPLIT]
    write_text_atomic(out / "patient_scores.csv", ext_df.to_csv(index=False, float_format="%.6g"))
    write_json_atomic(out / "metrics.json", metrics)
    return {"metrics": metrics, "internal": internal.get("auc") or {}, "scores": ext_df, "where": where,
            "model": model, "path": out / "patient_scores.csv"}


EXTERNAL_LABEL = "external cohort, the run's training cut-off"
BASELINES = "baselines"


def _comparison(cfg, out_dir: Path, results: dict, baselines: dict) -> pd.DataFrame:
    """comparison.csv: DeLong of every stage-2 model against every comparison model (the run's
    pairing rule) on the external patients both scored; each stage-2 metrics.json gets its rows."""
    from npc_msom.baselines.comparison import COMPARISON_COLUMNS, compared, paired_delong  # noqa: PLC0415
    from npc_msom.evaluation._result import jsonable  # noqa: PLC0415
    rows = []
    for key, r in results.items():
        mine = []
        for bkey, b in baselines.items():
            if not compared(r["where"], b["where"]):
                continue
            row = {"stage2_sequence": r["where"], "stage2_model": r["model"], "baseline": b["model"],
                   "baseline_sequence": b["where"]}
            row.update(paired_delong(r["scores"], b["scores"], level=cfg.evaluation.level, a_file=r["path"],
                                     b_file=b["path"], split=SPLIT))
            mine.append(row)
        rows += mine
        r["metrics"]["delong_vs_comparison"] = jsonable(mine)
        write_json_atomic(Path(r["path"]).parent / "metrics.json", r["metrics"])
    df = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    write_text_atomic(out_dir / "comparison.csv", df.to_csv(index=False, float_format="%.6g"))
    return df.to_dict(orient="records")


def _outcome_views(cfg, out_dir: Path, results: dict, table: pd.DataFrame, recalibrate: str | None) -> dict:
    """survival.csv (Kaplan-Meier DMFS / OS by the run's cut-off, log-rank) and time_to_event.csv
    (Cox per SD, cox.zph, Harrell's / Uno's C, time-dependent AUC) of every model; the calibration
    figure of the main models, and optionally their recalibrated curves (fitted on the external
    cohort, labelled so); the Kaplan-Meier figure of the run's survival model."""
    from npc_msom.evaluation.calibration import calibration, recalibrate as _recalibrate  # noqa: PLC0415
    from npc_msom.evaluation.figures import plot_calibration  # noqa: PLC0415
    from npc_msom.evaluation.stage import (STAGE2, SURVIVAL_COLUMNS, ScoreFile, _km_figure,  # noqa: PLC0415
                                           _main_keys, survival_rows, time_to_event_rows)
    from npc_msom.survival.timedep import TIME_TO_EVENT_COLUMNS  # noqa: PLC0415
    files = [ScoreFile(STAGE2, v["model"], v["where"], v["path"]) for v in results.values()]
    by_key = {sf.key: sf for sf in files}
    figures, notes = {}, []
    level = cfg.evaluation.level
    km_key = cfg.evaluation.survival_model if cfg.evaluation.survival_model in by_key else \
        next(iter(_main_keys(files)), None)
    surv = []
    for sf in files:
        rows, panels = survival_rows(sf, results[sf.key]["scores"], table, cfg, split=SPLIT, population=EXTERNAL_LABEL)
        surv += rows
        if sf.key == km_key and panels:
            png, _ = _km_figure(panels, out_dir / "figures" / "km", cfg, "external cohort")
            figures["km"] = {"png": str(png.relative_to(out_dir)), "model": sf.label,
                             "caption": f"Kaplan-Meier DMFS and OS of the external cohort by {sf.label}'s risk group "
                                        "(the run's training cut-off), log-rank test"}
    write_text_atomic(out_dir / "survival.csv",
                      pd.DataFrame(surv, columns=list(SURVIVAL_COLUMNS)).to_csv(index=False, float_format="%.6g"))
    tte = pd.DataFrame(time_to_event_rows([(sf.key, sf.label, results[sf.key]["scores"]) for sf in files],
                                          table, EXTERNAL_LABEL, level=level), columns=list(TIME_TO_EVENT_COLUMNS))
    write_text_atomic(out_dir / "time_to_event.csv", tte.to_csv(index=False, float_format="%.6g"))

    cal, recal, recal_params = {}, {}, {}
    for key in _main_keys(files):
        d = results[key]["scores"]
        d = d[np.isfinite(d["score"].to_numpy(dtype=float))]
        y, s = d["label"].to_numpy(dtype=int), d["score"].to_numpy(dtype=float)
        if len(set(y.tolist())) < 2 or not np.all((s >= 0) & (s <= 1)):
            continue
        label = by_key[key].label
        bins = max(1, min(10, len(y) // 5))
        cal[label] = calibration(y, s, n_bins=bins, level=level)
        if recalibrate:
            try:
                p2, params = _recalibrate(y, s, recalibrate)
            except ValueError as exc:
                notes.append(f"{label}: not recalibrated ({exc})")
                continue
            recal[label] = calibration(y, p2, n_bins=bins, level=level)
            recal_params[key] = {**params, "brier": recal[label].brier, "calibration_intercept": recal[label].intercept,
                                 "calibration_slope": recal[label].slope,
                                 "fitted_on": "the external cohort itself: shows the drift, is not a validation"}
    if cal:
        png, _ = plot_calibration(cal, out_dir / "figures" / "calibration", title="Calibration, external cohort")
        figures["calibration"] = {"png": str(png.relative_to(out_dir)), "models": list(cal),
                                  "caption": "Calibration of the main models on the external cohort, as the run "
                                             "predicts (nothing refitted)"}
    if recal:
        png, _ = plot_calibration(recal, out_dir / "figures" / "calibration_recalibrated",
                                  title=f"Recalibrated on the external cohort ({recalibrate})")
        figures["calibration_recalibrated"] = {
            "png": str(png.relative_to(out_dir)), "models": list(recal),
            "caption": f"RECALIBRATED ON THE EXTERNAL COHORT ({recalibrate}): the same models after a logistic "
                       "recalibration fitted on these patients' outcomes; it shows how much of the miscalibration an "
                       "update would remove, and is not a validation of the recalibrated model"}
    return {"figures": figures, "recalibration": {"method": recalibrate, "models": recal_params} if recalibrate else None,
            "time_to_event": tte.to_dict(orient="records"), "outcome_notes": notes}


def _fmt(auc: dict) -> str:
    if not auc or auc.get("auc") is None:
        return "n/a"
    lo, hi = auc.get("ci_low"), auc.get("ci_high")
    ci = f" ({lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
    return f"{auc['auc']:.3f}{ci}"


def _report(summary: dict, out_dir: Path) -> str:
    from npc_msom.report.html import (TIME_TO_EVENT_HEADER, _data_uri, _survival_rows,  # noqa: PLC0415
                                      time_to_event_cells)

    def num(x):
        return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"

    rows = []
    for k, v in summary["models"].items():
        cal = v.get("calibration") or {}
        rows.append(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v['internal_auc'])}</td><td>{_fmt(v['external_auc'])}</td>"
                    f"<td>{v['n_scored']}</td><td>{num(cal.get('intercept'))}</td>"
                    f"<td>{num(cal.get('slope'))}</td><td>{num(cal.get('brier'))}</td></tr>")
    notes = []
    if summary["excluded_overlap"]:
        notes.append(f"Excluded (also in the run's own cohort): {html.escape(', '.join(summary['excluded_overlap']))}")
    if summary["skipped"]:
        notes.append("Skipped: " + html.escape("; ".join(f"{s['patient']}: {s['message']}" for s in summary["skipped"])))
    if summary["fusion_clinical_columns_missing"]:
        notes.append("Fusion models not scored: the clinical table lacks "
                     + html.escape(", ".join(summary["fusion_clinical_columns_missing"])))
    notes += [html.escape(n) for n in summary.get("outcome_notes", [])]

    def table(tid: str, header, cells) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in cells)
        return f'<table id="{tid}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    tte = time_to_event_cells(pd.DataFrame(summary.get("time_to_event") or []))
    sv_path = out_dir / "survival.csv"
    sv = pd.read_csv(sv_path) if sv_path.is_file() and sv_path.stat().st_size > 1 else pd.DataFrame()
    surv = _survival_rows(sv) if not sv.empty else []
    surv_cells = [[r["label"], r["endpoint"], r["n"], r["events"], r["rate_low"], r["rate_high"], r["chi2"], r["p"],
                   r["note"]] for r in surv]
    figs = []
    for name in ("km", "calibration", "calibration_recalibrated"):
        f = (summary.get("figures") or {}).get(name)
        if f and (out_dir / f["png"]).is_file():
            cls = ' class="recalibrated"' if name.endswith("recalibrated") else ""
            figs.append(f'<figure{cls} id="figure-{name}"><img src="{_data_uri(out_dir / f["png"])}" alt="{name}">'
                        f'<figcaption>{html.escape(f["caption"])}</figcaption></figure>')
    base_cells = [[k.split("/", 1)[1], _fmt(v["internal_auc"]), _fmt(v["external_auc"]), v["n_scored"]]
                  for k, v in (summary.get("comparison_models") or {}).items()]
    base_cells += [[k.split("/", 1)[1], "not scored", why, ""]
                   for k, why in (summary.get("comparison_models_not_scored") or {}).items()]

    def p_text(p):
        return "n/a" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")
    delong_cells = [[f"{r['stage2_sequence']}/{r['stage2_model']}", f"{r['baseline']}/{r['baseline_sequence']}",
                     r["n"], num(r.get("auc_stage2")), num(r.get("auc_baseline")), num(r.get("auc_diff")),
                     f"{num(r.get('diff_ci_low'))} to {num(r.get('diff_ci_high'))}", p_text(r.get("p_value")),
                     r.get("note") or ""] for r in summary.get("comparison") or []]
    recal = summary.get("recalibration") or {}
    recal_rows = [[k, v["method"], num(v["intercept"]), num(v["slope"]), num(v["brier"])]
                  for k, v in (recal.get("models") or {}).items()]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>External validation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #999;padding:4px 8px}}figure img{{max-width:100%}}
.recalibrated{{border:3px solid #c60;padding:.5em}}</style>
</head><body>
<h1>External validation</h1>
<p>Run: <code>{html.escape(summary['run'])}</code> (models digest <code>{summary['run_digest'][:16]}</code>).<br>
Cohort: <code>{html.escape(summary['cohort'])}</code>: {summary['n_scored']} of {summary['n_patients']} patients scored.
Nothing was refitted on these patients: the cut-offs, encoders and models are the run's.</p>
<h2>Discrimination and calibration: internal validation against external</h2>
<table id="external-models"><tr><th>model</th><th>internal validation AUC (95% CI)</th><th>external AUC (95% CI, DeLong)</th>
<th>n external</th><th>calibration intercept</th><th>calibration slope</th><th>Brier</th></tr>
{''.join(rows)}
</table>
<h2>The comparison models on the external cohort</h2>
<p>The run's comparison models, frozen as the run stored them (nothing refitted).</p>
{table("external-comparison-models", ("Model", "internal validation AUC (95% CI)", "external AUC (95% CI, DeLong)",
                                      "n external"), base_cells) if base_cells else '<p>The run has no comparison models.</p>'}
{('<h3>DeLong tests, stage 2 against the comparison models (external patients both scored)</h3>'
  + table("external-delong", ("Stage-2 model", "Comparison model", "n", "AUC stage 2", "AUC comparison",
                              "Difference", "95% CI", "p", "Note"), delong_cells)) if delong_cells else ''}
<h2>The risk score over time (DMFS, external cohort)</h2>
<p>Cox models of MSOM-free survival on each score per SD, alone and with N stage (ordinal N0&ndash;N3); PH test: R
<code>cox.zph</code>'s score test; Uno's C truncated at the last of 12/24/36 months within follow-up; cumulative /
dynamic AUCs with censoring weights.</p>
{table("external-time-to-event", TIME_TO_EVENT_HEADER, tte) if tte else '<p>Not run.</p>'}
<h2>Survival by risk group (the run's training cut-off)</h2>
{table("external-survival", ("Model", "Endpoint", "n low / high", "Events low / high", "Rate, low risk",
                              "Rate, high risk", "Log-rank chi2", "p", "Note"), surv_cells) if surv_cells else '<p>Not run.</p>'}
{''.join(figs)}
{('<h2>Recalibrated on the external cohort (labelled: fitted on these outcomes)</h2>'
  + table("external-recalibration", ("Model", "Method", "Intercept", "Slope", "Brier after"), recal_rows)) if recal_rows else ''}
{''.join(f'<p>{n}</p>' for n in notes)}
</body></html>
"""
