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
ID with other images (two hospitals numbering from 1) is scored and listed. A renamed copy of a run
patient (another ID, the same pixels) is not detected yet.

Not yet here (issue 20): the comparison models (baselines), the time-to-event view and the
recalibrated curves.
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
    for pattern in ("prediction/*/*/checkpoint.pt", "prediction/*/*/model.json", "prediction/*/*/metrics.json"):
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
                    device=None) -> dict:
    """Score every patient of ``cohort_dir`` with the run's frozen models and write the external
    validation (see the module docstring). Returns summary.json's content."""
    from npc_msom.cohort.load import load_cohort  # noqa: PLC0415
    from npc_msom.predict import PatientInput, predict_input, read_run  # noqa: PLC0415
    t0 = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_run(run_dir)
    cfg = run.config
    digest = run_models_digest(run_dir)
    ccfg = dataclasses.replace(cfg.cohort, skip_bad=bool(skip_bad or cfg.cohort.skip_bad), required_sequences=())
    cohort = load_cohort(cohort_dir, ccfg, clinical)
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
    for i, pid in enumerate(ids):
        cached = work / f"{pid}.json"
        if cached.is_file():
            rec = json.loads(cached.read_text())
            if rec.get("run_digest") == digest and rec.get("with_clinical") == with_clinical:
                records[pid] = rec["scores"]
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
        is_same = pid in collisions and _same_images(run_dir, pred, pid)
        if is_same:
            same.append(pid)
        elif pid in collisions:
            renamed.append(pid)
        write_json_atomic(cached, {"run_digest": digest, "with_clinical": with_clinical, "same_as_run": is_same,
                                   "scores": records[pid]})
        log.info("external %d/%d %s scored", i + 1, len(ids), pid)
    overlap = sorted(same)
    if overlap and not allow_overlap:
        log.warning("%d patient(s) of the external cohort are the run's own (same PatientID and pixels) and are "
                    "excluded: %s", len(overlap), ", ".join(overlap[:10]))
        records = {p: r for p, r in records.items() if p not in set(overlap)}
        if not records:
            raise InputError(f"every patient of the external cohort is in the run's own cohort ({', '.join(overlap[:5])})",
                             file=Path(cohort_dir), expected="patients the run never saw (or --allow-overlap)")
    if not records:
        raise InputError("no patient of the external cohort could be scored", file=Path(cohort_dir),
                         expected="at least one patient with a series of a sequence the run trained")

    models = sorted({k for r in records.values() for k in r})
    results = {}
    for key in models:
        where, model = key.split("/")
        results[key] = _write_model(run_dir, out_dir / where / model, where, model, records, table)
    summary = {"run": str(run_dir.resolve()), "run_digest": digest, "cohort": str(Path(cohort_dir).resolve()),
               "n_patients": len(ids), "n_scored": len(records), "excluded_overlap": overlap if not allow_overlap else [],
               "overlap_allowed": overlap if allow_overlap else [], "skipped": skipped,
               "same_patient_id_other_images": sorted(renamed),
               "fusion_clinical_columns_missing": lacking,
               "models": {k: {"internal_auc": v["internal"], "external_auc": (v["metrics"].get("auc") or {}),
                              "calibration": v["metrics"].get("calibration"), "n_scored": v["metrics"]["n_scored"]}
                          for k, v in results.items()},
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json_atomic(out_dir / "summary.json", summary)
    write_text_atomic(out_dir / "report.html", _report(summary))
    return summary


def _write_model(run_dir: Path, out: Path, where: str, model: str, records: dict, clinical: pd.DataFrame) -> dict:
    """patient_scores.csv and metrics.json of one model: the external rows, with the cut-off
    refitted from the run's stored training scores exactly as stage 2 fitted it."""
    from npc_msom.prediction.scores import model_metrics, patient_table, read_scores  # noqa: PLC0415
    internal_path = run_dir / "prediction" / where / model
    internal = json.loads((internal_path / "metrics.json").read_text()) if (internal_path / "metrics.json").is_file() else {}
    train = read_scores(internal_path / "patient_scores.csv") if (internal_path / "patient_scores.csv").is_file() \
        else pd.DataFrame(columns=["patient_id", "split", "score", "label", "note"])
    train = train[train["split"] == "train"]
    ext = [p for p in records if f"{where}/{model}" in records[p]]
    scores = [float(records[p][f"{where}/{model}"]["score"]) for p in ext]
    notes = [records[p][f"{where}/{model}"].get("note", "") for p in ext]
    labels = clinical.loc[ext, "msom"].astype(int).to_numpy()
    cutoff = internal.get("risk_cutoff")
    df = patient_table(list(train["patient_id"]) + ext, ["train"] * len(train) + [SPLIT] * len(ext),
                       list(train["score"].astype(float)) + scores,
                       list(train["label"].astype(int)) + list(labels),
                       list(train["note"].fillna("").astype(str)) + notes, cutoff=cutoff)
    metrics = model_metrics(df, evaluate_on=SPLIT, model=model, sequence=where,
                            extra={"validation": "external", "run": str(run_dir.resolve()),
                                   "internal_validation_auc": (internal.get("auc") or {}),
                                   "cutoff_source": "the run's stage-2 risk_cutoff (Youden on its training patients)"})
    ext_df = df[df["split"] == SPLIT]
    write_text_atomic(out / "patient_scores.csv", ext_df.to_csv(index=False, float_format="%.6g"))
    write_json_atomic(out / "metrics.json", metrics)
    return {"metrics": metrics, "internal": internal.get("auc") or {}}


def _fmt(auc: dict) -> str:
    if not auc or auc.get("auc") is None:
        return "n/a"
    lo, hi = auc.get("ci_low"), auc.get("ci_high")
    ci = f" ({lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""
    return f"{auc['auc']:.3f}{ci}"


def _report(summary: dict) -> str:
    rows = []
    for k, v in summary["models"].items():
        cal = v.get("calibration") or {}

        def num(x):
            return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"
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
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>External validation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px}}</style>
</head><body>
<h1>External validation</h1>
<p>Run: <code>{html.escape(summary['run'])}</code> (models digest <code>{summary['run_digest'][:16]}</code>).<br>
Cohort: <code>{html.escape(summary['cohort'])}</code>: {summary['n_scored']} of {summary['n_patients']} patients scored.
Nothing was refitted on these patients: the cut-offs, encoders and models are the run's.</p>
<table><tr><th>model</th><th>internal validation AUC (95% CI)</th><th>external AUC (95% CI, DeLong)</th>
<th>n external</th><th>calibration intercept</th><th>calibration slope</th><th>Brier</th></tr>
{''.join(rows)}
</table>
{''.join(f'<p>{n}</p>' for n in notes)}
</body></html>
"""
