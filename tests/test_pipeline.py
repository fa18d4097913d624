"""End to end on the synthetic cohort: synth -> inspect -> cohort -> preprocess, and the CLI's errors."""
import json

import pandas as pd
from pycocotools.coco import COCO

from npc_msom.cli import main


def test_inspect_lists_three_sequences_and_both_structures(synth_cohort_dir, capsys):
    assert main(["inspect", str(synth_cohort_dir)]) == 0
    text = capsys.readouterr().out
    clinical = pd.read_csv(synth_cohort_dir / "clinical.csv").set_index("patient_id")
    blocks = {b.split()[0]: b for b in text.split("\n\n") if b.startswith("NPC")}
    assert sorted(blocks) == sorted(clinical.index)
    for pid, block in blocks.items():
        for seq in ("T1WI", "T2WI", "CE-T1WI"):
            line = next(ln for ln in block.splitlines() if ln.strip().startswith(seq + " "))
            assert "GTV (" in line, line
            # nodes are contoured for N+ patients; an N0 patient says so instead of dropping them
            expect = "GTVln: none contoured" if clinical.loc[pid, "n_stage"] == "N0" else "GTVln ("
            assert expect in line, line


def test_run_writes_manifest_preprocessed_slices_and_table1(small_run):
    manifest = json.loads((small_run / "cohort" / "manifest.json").read_text())
    assert manifest  # the reader's own tests check its content
    split = json.loads((small_run / "preprocessed" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 6 and not set(split["train"]) & set(split["val"])
    for seq in ("T1WI", "T2WI", "CE-T1WI"):
        d = small_run / "preprocessed" / seq
        coco = COCO(str(d / "coco_train.json"))
        names = {coco.cats[a["category_id"]]["name"] for a in coco.dataset["annotations"]}
        assert "GTV" in names
        slices = pd.read_csv(d / "slices.csv")
        assert set(slices["patient_id"]) == set(split["train"]) | set(split["val"])
    for f in ("config.yaml", "env.json", "log.txt", "report/table1.csv", "report/table1.html"):
        assert (small_run / f).is_file(), f
    t1 = pd.read_csv(small_run / "report" / "table1.csv")
    assert "Age" in " ".join(t1["Variable"].fillna("").astype(str))


def test_cli_reports_bad_clinical_table_without_traceback(synth_cohort_dir, tmp_path, capsys):
    table = pd.read_csv(synth_cohort_dir / "clinical.csv").drop(columns=["age"])
    table.loc[0, "gender"] = "X"
    bad = tmp_path / "bad.csv"
    table.to_csv(bad, index=False)
    code = main(["inspect", str(synth_cohort_dir), "--clinical", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert "age" in err and "gender" in err and str(bad) in err


def _record_bar_descriptions(monkeypatch) -> dict:
    """tqdm replaced by a list that keeps the description of the last bar opened in ``["desc"]``."""
    seen = {}

    class FakeBar(list):
        def __init__(self, iterable, desc=None, **kw):
            super().__init__(iterable)
            seen["desc"] = desc

    monkeypatch.setattr("tqdm.auto.tqdm", FakeBar)
    return seen


def test_stage_clock_places_each_stage_in_the_run(caplog, monkeypatch):
    import npc_msom.runtime as runtime
    from npc_msom.pipeline import StageClock
    seen = _record_bar_descriptions(monkeypatch)
    clock = StageClock(["cohort", "preprocess", "detection"])
    with caplog.at_level("INFO", logger="npc_msom.pipeline"):
        with clock("detection"):
            list(runtime.progress(range(3), desc="CE-T1WI epoch 1/4"))
    assert seen["desc"] == "[3/3 detection] CE-T1WI epoch 1/4"
    assert "stage 3/3 detection: started (run time 0:00)" in caplog.text
    assert "detection" in clock.seconds
    list(runtime.progress(range(2), desc="outside"))
    assert seen["desc"] == "outside"  # the label ends with its stage


def _finished_run(folder, name, seconds, env=None):
    import json

    from npc_msom.runtime import environment_record
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"name: {name}\n")
    (folder / "env.json").write_text(json.dumps(env or environment_record()))
    (folder / "run_summary.json").write_text(json.dumps({"run_dir": str(folder), "stages": {"seconds": seconds}}))


def test_the_run_eta_comes_from_an_earlier_run_of_the_preset_on_a_like_machine(tmp_path, caplog, monkeypatch):
    import os
    import time as time_mod

    import npc_msom.runtime as runtime
    from npc_msom.config import load_config
    from npc_msom.pipeline import StageClock, reference_seconds
    config = load_config(None, ["name=demo"])
    runs = tmp_path / "runs"
    planned = ["cohort", "preprocess", "detection"]
    assert reference_seconds(config, runs / "new", planned) is None  # a first run: no ETA
    _finished_run(runs / "other_preset", "paper", {"cohort": 1.0, "detection": 9.0})
    _finished_run(runs / "other_machine", "demo", {"cohort": 1.0, "detection": 9.0},
                  env={"cpu_count": (os.cpu_count() or 1) + 7, "cuda": False})
    assert reference_seconds(config, runs / "new", planned) is None
    _finished_run(runs / "old", "demo", {"cohort": 500.0, "preprocess": 1.0, "detection": 500.0})
    old = time_mod.time() - 3600
    os.utime(runs / "old" / "run_summary.json", (old, old))
    _finished_run(runs / "last", "demo", {"cohort": 30.0, "preprocess": 60.0, "detection": 240.0})
    # newer, but a subset of the stages (--stages report): not a reference for the whole run
    _finished_run(runs / "subset", "demo", {"cohort": 14.0, "report": 0.1})
    os.utime(runs / "subset" / "run_summary.json", (time_mod.time() + 60, time_mod.time() + 60))
    (runs / "broken").mkdir()
    (runs / "broken" / "run_summary.json").write_text("{not json")
    assert reference_seconds(config, runs / "new", ["cohort", "report"])[1] == runs / "subset"
    seconds, folder = reference_seconds(config, runs / "new", planned)
    assert folder == runs / "last" and seconds == {"cohort": 30.0, "preprocess": 60.0, "detection": 240.0}

    clock = StageClock(["cohort", "preprocess", "detection"], reference=seconds)
    assert clock.seconds_left("cohort") == 330.0 and clock.seconds_left("detection") == 240.0
    assert StageClock(["cohort", "baselines"], reference=seconds).seconds_left("cohort") is None
    seen = _record_bar_descriptions(monkeypatch)
    with caplog.at_level("INFO", logger="npc_msom.pipeline"):
        with clock("preprocess"):
            list(runtime.progress(range(2), desc="patients"))
    assert "about 5:00 left, the run ends ~" in caplog.text
    assert seen["desc"].startswith("[2/3 preprocess, run ends ~") and seen["desc"].endswith("] patients")
