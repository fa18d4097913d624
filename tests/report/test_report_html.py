"""report.html and metrics.json: every section, embedded images that decode, numbers equal to the
evaluation's, nothing fetched from the network, "not run" lines for missing parts, and no optimistic
number outside the block that carries its label."""
from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image
from report_fixtures import make_fake_run, stub_figures

from npc_msom.evaluation.stage import OPTIMISTIC_LABEL, evaluation_stage
from npc_msom.report.html import build_report, fmt, fmt_ci

SECTIONS = ("cohort", "table1", "table2", "figure2", "table3", "figure3", "figure4", "calibration",
            "comparison", "cv", "methods")


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.tags, self.urls = set(), [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])


def _parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


def test_every_section_present_and_images_embedded(evaluated_run):
    run, _, _, report = evaluated_run
    assert report == run / "report.html"
    text = report.read_text()
    p = _parse(text)
    assert set(SECTIONS) <= p.ids
    assert {"table3-data", "table2-data", "survival-validation", "survival-optimistic", "skipped",
            "calibration-data"} <= p.ids
    # figure 2, 3, calibration, decision curve, figure 4 and its optimistic version
    assert len(p.imgs) == 6
    for img in p.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as im:
            im.load()
            assert im.size[0] > 0 and im.size[1] > 0
    # self-contained: no script, no stylesheet link, nothing but data URIs as sources
    assert "script" not in p.tags and "link" not in p.tags
    assert all(u.startswith("data:") for u in p.urls), [u[:40] for u in p.urls if not u.startswith("data:")]
    assert "http://" not in text and "https://" not in text
    # the figure files sit beside the report
    for name in ("figure2", "figure3", "figure4", "figure4_optimistic", "calibration", "decision_curve"):
        assert (run / "report" / "figures" / f"{name}.png").is_file(), name
    assert (run / "report" / "figures" / "figure3.svg").is_file()


def test_table3_and_metrics_json_carry_the_evaluation_numbers(evaluated_run):
    run, _, _, report = evaluated_run
    text = report.read_text()
    t3 = pd.read_csv(run / "evaluation" / "table3.csv")
    table = text[text.index('id="table3-data"'):]
    table = table[:table.index("</table>")]
    for r in t3.to_dict(orient="records"):
        assert fmt_ci(r["auc"], r["auc_ci_low"], r["auc_ci_high"]) in table, r["key"]
        assert r["label"] in table
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["detection_ap50"]["CE-T1WI"]["GTV_ap50"] == pytest.approx(0.596)
    aucs = metrics["models_validation_auc"]
    assert len(aucs) == len(t3)
    for r in t3.to_dict(orient="records"):
        m = aucs[r["key"]]
        assert m["auc"] == pytest.approx(r["auc"]) and m["ci_low"] == pytest.approx(r["auc_ci_low"])
        assert m["oracle_auc"] == pytest.approx(r["oracle_auc"])
    sv = pd.read_csv(run / "evaluation" / "survival.csv")
    row = sv[(sv["key"] == "CE-T1WI/fusion") & (sv["endpoint"] == "DMFS") & ~sv["optimistic"]].iloc[0]
    assert metrics["survival"]["validation"]["DMFS"]["p_value"] == pytest.approx(row["p_value"])
    assert set(metrics["survival"]) == {"validation", OPTIMISTIC_LABEL}
    assert metrics["evaluation_settings"]["inputs"]["CE-T1WI/fusion"] == \
        pd.read_csv(run / "evaluation" / "table3.csv").set_index("key").loc["CE-T1WI/fusion", "scores_sha1"]
    # Table 2 and the cohort's skipped patient, escaped
    assert "59.6" in text and "55.6" in text
    assert "T1WI: no detector (not run)" in text and "T2WI: no detector (not run)" in text
    assert "NPC999" in text and "&lt;b&gt;bold&lt;/b&gt;" in text and "<b>bold</b>" not in text
    assert "NPC998" in text
    assert "Table 1. Patient characteristics" in text and "55 (48-62)" in text
    # methods from config.yaml and env.json
    methods = text[text.index('id="methods"'):]
    assert "resnet50-FPN" in methods and "torch 2.14.1" in methods and "lifelines 0.30.0" in methods


def _optimistic_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in
            re.finditer(r'<div class="optimistic".*?</div><!-- /optimistic -->', text, flags=re.S)]


def test_optimistic_numbers_only_inside_their_labelled_block(evaluated_run):
    run, _, _, report = evaluated_run
    text = report.read_text()
    spans = _optimistic_spans(text)
    assert len(spans) == 1
    block = text[spans[0][0]:spans[0][1]]
    assert block.count(OPTIMISTIC_LABEL) >= 3   # heading, figure caption's alt, every table row
    sv = pd.read_csv(run / "evaluation" / "survival.csv")
    opt = sv[(sv["key"] == "CE-T1WI/fusion") & sv["optimistic"]]
    val = sv[(sv["key"] == "CE-T1WI/fusion") & ~sv["optimistic"]]
    assert len(opt) == 2
    for r in opt.to_dict(orient="records"):
        chi2 = fmt(r["chi2"], 2)
        rate = fmt_ci(r["rate_high"], r["rate_high_ci_low"], r["rate_high_ci_high"])
        assert chi2 in block and rate in block
        if chi2 not in {fmt(x, 2) for x in sv.loc[~sv["optimistic"], "chi2"]}:
            # every place the number appears lies inside the labelled block
            for m in re.finditer(re.escape(chi2), text):
                assert any(a <= m.start() < b for a, b in spans), chi2
    # and the validation version is shown outside it
    outside = text[:spans[0][0]] + text[spans[0][1]:]
    for r in val.to_dict(orient="records"):
        assert fmt(r["chi2"], 2) in outside
    # the optimistic figure is inside the block, Figure 4 outside it
    fig_opt = re.search(r'<img src="data:image/png;base64,[^"]+" alt="Figure 4, optimistic', text)
    assert fig_opt and spans[0][0] < fig_opt.start() < spans[0][1]


def test_partial_run_reports_not_run_lines(tmp_path):
    run, config = make_fake_run(tmp_path / "run", baselines=False, detection=False, truth=False)
    report = build_report(run)   # no evaluation either
    text = report.read_text()
    for line in ("Table 3: not run", "Figure 3: not run", "Figure 4: not run", "Figure 2: not run",
                 "Comparison models: not run", "Cross-validation: not run",
                 "Calibration and decision curves: not run",
                 "T1WI: no detector (not run)", "CE-T1WI: no detector (not run)"):
        assert line in text, line
    body = text[text.index("<body>"):]
    assert OPTIMISTIC_LABEL not in body and "optimistic" not in body.lower()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["models_validation_auc"] == {} and metrics["detection_ap50"] == {}
    assert _parse(text).imgs == []


def test_cv_tables_when_cv_ran(tmp_path, monkeypatch):
    stub_figures(monkeypatch)
    run, config = make_fake_run(tmp_path / "run", baselines=False)
    cv = {"folds": 5, "repeats": 2, "n_patients": 80, "note": "refitted per fold",
          "models": {"CE-T1WI/fusion": {"auc_mean": 0.8123, "auc_sd_repeats": 0.0211, "auc_fold_mean": 0.805,
                                        "auc_fold_sd": 0.07, "n_patients": 80}}}
    (run / "prediction" / "cv").mkdir(parents=True)
    (run / "prediction" / "cv" / "cv_metrics.json").write_text(json.dumps(cv))
    evaluation_stage(config, run)
    text = build_report(run).read_text()
    cv_part = text[text.index('id="cv"'):text.index('id="methods"')]
    assert "5-fold, 2 repeat(s), 80 patients" in cv_part and "0.812" in cv_part and "0.021" in cv_part
    assert "Cross-validation: not run" not in text


def test_cli_evaluate_and_report(fake_run, monkeypatch, capsys):
    from npc_msom.cli import main
    stub_figures(monkeypatch)
    run, _ = fake_run
    assert main(["evaluate", "--run", str(run)]) == 0
    assert "evaluation: done" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(run)]) == 0
    assert "evaluation: up to date" in capsys.readouterr().out
    assert main(["report", "--run", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    assert 'id="table3-data"' in (run / "report.html").read_text()


def test_detection_of_some_sequences_only(tmp_path):
    # before every detector is trained there is no detection/table2.csv nor figure2.png: each
    # sequence's own stand in
    import shutil

    from npc_msom.detection.metrics import write_table2
    run, _ = make_fake_run(tmp_path / "run", baselines=False)
    (run / "detection" / "table2.csv").unlink()
    (run / "detection" / "figure2.png").unlink()
    m = json.loads((run / "detection" / "CE-T1WI" / "metrics.json").read_text())
    write_table2({"CE-T1WI": m}, run / "detection" / "CE-T1WI" / "table2.csv")
    (run / "detection" / "CE-T1WI" / "figures").mkdir()
    Image.new("RGB", (30, 20), (9, 9, 9)).save(run / "detection" / "CE-T1WI" / "figures" / "figure2.png")
    text = build_report(run).read_text()
    assert "59.6" in text and "T2WI: no detector (not run)" in text and "CE-T1WI: no detector" not in text
    imgs = _parse(text).imgs
    assert [i["alt"] for i in imgs] == ["figure2_CE-T1WI"]
    assert (run / "report" / "figures" / "figure2_CE-T1WI.png").is_file()
    shutil.rmtree(run / "detection")
    assert "Figure 2: not run" in build_report(run).read_text()
    assert not (run / "report" / "figures" / "figure2_CE-T1WI.png").exists()
