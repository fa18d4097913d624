"""Run folders for the evaluation and report tests, made in milliseconds.

``fake_run`` writes what the earlier stages would have written for 80 synthetic patients (the
clinical and truth tables of the project's own generator, no images): the split, the manifest
(with one skipped patient), Table 1, a detector for CE-T1WI only (Table 2, Figure 2), stage-2 scores
of every sequence x model plus the combined mean, and the comparison models largest_slice /
largest_slice_fusion / clinical. Scores are the true risk plus seeded noise, so AUCs are real
numbers between chance and the oracle.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

from npc_msom.config import Config, EvaluationConfig, dump_config

SEQUENCES = ("T1WI", "T2WI", "CE-T1WI")
N_PATIENTS = 80


def _scores(true_risk: np.ndarray, noise_sd: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logit = np.log(true_risk / (1 - true_risk)) + rng.normal(0.0, noise_sd, true_risk.size)
    return 1.0 / (1.0 + np.exp(-logit))


def write_model(run, rel: str, ids, splits, scores, labels, model: str, sequence: str) -> None:
    from npc_msom.prediction.scores import model_metrics, patient_table, write_scores
    df = patient_table(ids, splits, scores, labels)
    write_scores(run / rel, df, model_metrics(df, model=model, sequence=sequence))


def make_fake_run(root, *, baselines: bool = True, detection: bool = True, truth: bool = True):
    from PIL import Image

    from npc_msom.config import SynthConfig
    from npc_msom.synth import cohort_table

    table = cohort_table(SynthConfig(patients=N_PATIENTS, seed=5))
    clin, tr = table.clinical, table.truth
    ids = clin["patient_id"].astype(str).tolist()
    labels = clin["msom"].to_numpy(dtype=int)
    # stratified, seeded split: 30% of each class to validation
    rng = np.random.default_rng(0)
    val = set()
    for c in (0, 1):
        members = [p for p, y in zip(ids, labels) if y == c]
        val |= set(rng.choice(members, size=round(0.3 * len(members)), replace=False).tolist())
    splits = ["val" if p in val else "train" for p in ids]

    root.mkdir(parents=True, exist_ok=True)
    config = Config(name="fake", seed=0, device="cpu", evaluation=EvaluationConfig())
    (root / "config.yaml").write_text(dump_config(config))
    (root / "env.json").write_text(json.dumps({"python": "3.11.2", "torch": "2.14.1", "numpy": "2.0.0",
                                               "lifelines": "0.30.0", "cuda": False}))
    (root / "cohort").mkdir()
    clin.to_csv(root / "cohort" / "clinical.csv", index=False)
    if truth:
        tr.to_csv(root / "cohort" / "truth.csv", index=False)
    manifest = {"version": 1, "root": "/data/cohort", "clinical_table": "/data/cohort/clinical.csv",
                "n_patients": len(ids), "patient_ids": ids, "patients": {},
                "skipped": [{"patient": "NPC999", "error": "DicomError", "file": "/data/cohort/NPC999/x.dcm",
                             "message": "[patient NPC999] pixel data cannot be decoded <b>bold</b>",
                             "problem": "pixel data cannot be decoded", "expected": "a decodable image"}],
                "clinical_only": ["NPC998"], "image_only": [], "clinical_problems": [],
                "unreadable_files": [], "unused_nifti_files": [], "ignored_files": [], "archives": []}
    (root / "cohort" / "manifest.json").write_text(json.dumps(manifest))
    (root / "preprocessed").mkdir()
    (root / "preprocessed" / "split.json").write_text(json.dumps(
        {"train": [p for p, s in zip(ids, splits) if s == "train"], "val": sorted(val)}))
    (root / "report").mkdir()
    (root / "report" / "table1.csv").write_text("Variable,Level,MSOM\nAge,,55 (48-62)\n")
    (root / "report" / "table1.html").write_text(
        '<table class="table1"><caption>Table 1. Patient characteristics</caption>'
        "<tr><th>Variable</th><th>MSOM</th></tr><tr><td>Age</td><td>55 (48-62)</td></tr></table>")
    if detection:
        from npc_msom.detection.metrics import write_table2
        m = {"ap50": {"GTV": 0.596, "GTVln": 0.556}, "map50": 0.576, "map50_95": 0.3, "n_images": 120}
        (root / "detection" / "CE-T1WI").mkdir(parents=True)
        (root / "detection" / "CE-T1WI" / "metrics.json").write_text(json.dumps(m))
        write_table2({"CE-T1WI": m}, root / "detection" / "table2.csv")
        Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(root / "detection" / "figure2.png")

    risk = tr["true_risk"].to_numpy(dtype=float)
    seed = 10
    for seq in SEQUENCES:
        for model, sd in (("mri", 1.6), ("fusion", 1.0)):
            seed += 1
            write_model(root, f"prediction/{seq}/{model}", ids, splits, _scores(risk, sd, seed), labels, model, seq)
    fusion = [np.asarray(pd.read_csv(root / f"prediction/{s}/fusion/patient_scores.csv")["score"])
              for s in SEQUENCES]
    write_model(root, "prediction/combined/mean", ids, splits, np.mean(fusion, axis=0), labels, "mean", "combined")
    if baselines:
        for seq in SEQUENCES:
            for model, sd in (("largest_slice", 2.5), ("largest_slice_fusion", 2.0)):
                seed += 1
                write_model(root, f"baselines/{model}/{seq}", ids, splits, _scores(risk, sd, seed), labels,
                            model, seq)
        write_model(root, "baselines/clinical/all", ids, splits, _scores(risk, 2.2, 99), labels, "clinical", "all")
    return root, config


def with_evaluation(config: Config, **changes) -> Config:
    return dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, **changes))


def _stub_plot(*args, **kwargs):
    """Stands in for a plotting function: a 4 x 3 px PNG and a tiny SVG at the requested path."""
    from pathlib import Path

    from PIL import Image
    path = Path(args[1] if len(args) > 1 else kwargs["path"])
    base = path.with_suffix("") if path.suffix else path
    base.parent.mkdir(parents=True, exist_ok=True)
    png, svg = base.parent / f"{base.name}.png", base.parent / f"{base.name}.svg"
    Image.fromarray(np.zeros((3, 4), np.uint8)).save(png)
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="3"></svg>')
    return png, svg


def stub_figures(monkeypatch) -> None:
    """Replaces the matplotlib figures by stubs: for tests of the stage's logic, not of its figures
    (each real figure costs seconds on 2 shared cores)."""
    import npc_msom.evaluation.figures as ef
    import npc_msom.survival.figures as sf
    for name in ("plot_roc_grid", "plot_calibration", "plot_decision_curve"):
        monkeypatch.setattr(ef, name, _stub_plot)
    monkeypatch.setattr(sf, "plot_km_grid", _stub_plot)
