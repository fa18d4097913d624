"""`npc-msom run` end to end on 6 synthetic patients with a tiny config: every stage, every
artifact of the run folder, the report in a browser, and a run killed during detection that,
started again, ends with the same numbers as one that was not."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from npc_msom.cli import main

_spec = importlib.util.spec_from_file_location(
    "report_chromium", Path(__file__).parent / "report" / "test_report_chromium.py")
_chrome = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_chrome)

SEQS = ("T1WI", "T2WI", "CE-T1WI")
TINY = {
    "name": "tiny", "seed": 0,
    "preprocess": {"image_size": 96, "slice_step": 3, "negatives_per_patient": 1, "val_fraction": 0.34},
    "detection": {"backbone": "resnet18", "shared": True, "epochs": 2, "batch_size": 2, "amp": False,
                  "fpn_channels": 32, "box_batch_size": 32, "max_train_images": 8, "warmup_iters": 2,
                  "rpn_proposals_train": 200, "rpn_proposals_test": 100, "roi_sampling_ratio": 1},
    "prediction": {"finetune": "head", "feature_views": 1, "epochs": 5, "batch_size": 16, "lr": 0.01},
    "baselines": {"models": ["clinical", "n_stage", "largest_slice"], "sequences": ["CE-T1WI"],
                  "slice_epochs": 1, "slice_size": 32, "slice_batch_size": 4},
}


def _run(config: Path, cohort: Path, out: Path, capsys) -> str:
    assert main(["run", "--config", str(config), "--cohort", str(cohort), "--out", str(out)]) == 0
    return capsys.readouterr().out


def _numbers(run: Path) -> dict:
    """What a reader of the run takes away: detection AP per sequence and every model's scores."""
    out = {}
    for seq in SEQS:
        m = json.loads((run / "detection" / seq / "metrics.json").read_text())
        out[f"ap50/{seq}"] = m["ap50"]
    for p in sorted((run / "prediction").glob("*/*/patient_scores.csv")):
        out[str(p.relative_to(run))] = pd.read_csv(p)["score"].round(6).tolist()
    return out


@pytest.mark.slow
def test_run_end_to_end_then_killed_during_detection_and_resumed(synth_cohort_dir, tmp_path, capsys, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    printed = _run(config, synth_cohort_dir, run, capsys)
    assert str(run / "report.html") in printed

    # every artifact of the run folder
    for rel in ["config.yaml", "env.json", "log.txt", "run_summary.json", "metrics.json", "report.html",
                "cohort/manifest.json", "cohort/clinical.csv", "cohort/truth.csv",
                "preprocessed/split.json", "report/table1.csv", "detection/table2.csv",
                "detection/shared/checkpoint_last.pt", "detection/shared/history.jsonl",
                "prediction/combined/mean/patient_scores.csv", "prediction/combined/stack/metrics.json",
                "baselines/clinical", "evaluation/table3.csv", "evaluation/evaluation.json"]:
        assert (run / rel).exists(), rel
    for seq in SEQS:
        for rel in ("coco_train.json", "coco_val.json", "slices.csv"):
            assert (run / "preprocessed" / seq / rel).is_file()
        assert (run / "detection" / seq / "metrics.json").is_file()
        for model in ("mri", "fusion"):
            for rel in ("checkpoint.pt", "patient_scores.csv", "slice_scores.csv", "metrics.json"):
                assert (run / "prediction" / seq / model / rel).is_file(), (seq, model, rel)
    assert list((run / "config_history").glob("*.yaml"))
    summary = json.loads((run / "run_summary.json").read_text())
    assert set(summary["stages"]["seconds"]) >= {"cohort", "preprocess", "detection", "prediction",
                                                "baselines", "evaluation", "report"}
    t3 = pd.read_csv(run / "evaluation" / "table3.csv")
    assert {"CE-T1WI/fusion", "combined/mean", "largest_slice/CE-T1WI"} <= set(t3["key"])

    # the report in a real browser: every image decoded, the tables there, no console error
    res = _chrome._render((run / "report.html").read_text(), tmp_path, "e2e")
    assert res["imgs"] and all(i["width"] > 0 for i in res["imgs"]), res["imgs"]
    assert len(res["tables"]) >= 4 and not res["errors"]
    assert "time-to-event-table" in res["tables"]
    # where the survival model looks: Grad-CAM of every validation patient's top slices, four shown
    ev = json.loads((run / "evaluation" / "evaluation.json").read_text())
    sal = ev["saliency"]
    assert sal["model"] == "CE-T1WI/fusion" and sal["n_slices"] >= sal["n_patients"] >= 1
    assert 0 <= sal["saliency_in_tumour"] <= 1 and -1 <= sal["randomised_weights_rank_correlation"] <= 1
    assert "saliency-table" in res["tables"] and "evaluation/figures/saliency.png" in ev["artifacts"]

    # external validation of the frozen run on a second cohort written with another seed
    import dataclasses

    from npc_msom.config import load_config
    from npc_msom.synth import write_cohort
    from npc_msom.runtime import file_digest
    other = tmp_path / "other_hospital"
    write_cohort(other, dataclasses.replace(load_config(None).synth, patients=5, seed=23, workers=1))
    before = {str(p.relative_to(run)): file_digest(p) for p in sorted(run.rglob("*")) if p.is_file()}
    ext = tmp_path / "external"
    assert main(["validate", "--run", str(run), "--cohort", str(other), "--out", str(ext),
                 "--recalibrate", "intercept+slope"]) == 0
    assert str(ext / "report.html") in capsys.readouterr().out
    assert {str(p.relative_to(run)): file_digest(p) for p in sorted(run.rglob("*")) if p.is_file()} == before
    vs = json.loads((ext / "summary.json").read_text())
    assert vs["n_scored"] == 5 and vs["excluded_overlap"] == []     # same PatientIDs, other images
    assert {"CE-T1WI/fusion", "CE-T1WI/patient", "combined/mean"} <= set(vs["models"])
    for rel in ("survival.csv", "time_to_event.csv", "CE-T1WI/fusion/metrics.json"):
        assert (ext / rel).is_file(), rel
    res = _chrome._render((ext / "report.html").read_text(), tmp_path, "external")
    assert not res["errors"] and res["imgs"] and all(i["width"] > 0 for i in res["imgs"]), res
    assert {"external-models", "external-time-to-event", "external-survival", "external-comparison-models",
            "external-delong"} <= set(res["tables"])
    assert set(vs["comparison_models"]) == {"baselines/clinical/all", "baselines/n_stage/all",
                                            "baselines/largest_slice/CE-T1WI"}
    assert any(r["stage2_model"] == "fusion" and r["baseline"] == "clinical" for r in vs["comparison"])

    # a second run killed in its detector's second epoch, then started again
    import npc_msom.detection.train as train_mod
    real = train_mod.train_one_epoch

    def killed(*args, **kwargs):
        if kwargs.get("epoch") == 1:
            raise KeyboardInterrupt("killed during detection")
        return real(*args, **kwargs)

    again = tmp_path / "again"
    monkeypatch.setattr(train_mod, "train_one_epoch", killed)
    # the CLI says how to continue and exits 130, as after Ctrl-C
    assert main(["run", "--config", str(config), "--cohort", str(synth_cohort_dir), "--out", str(again)]) == 130
    assert "rerun the same command" in capsys.readouterr().err
    assert (again / "detection" / "shared" / "checkpoint_last.pt").is_file()
    assert not (again / "prediction").exists()
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    _run(config, synth_cohort_dir, again, capsys)
    assert _numbers(again) == _numbers(run)
