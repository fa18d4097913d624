"""Fixtures of the evaluation and report tests: fake run folders (see report_fixtures.py)."""
from __future__ import annotations

import pytest
from report_fixtures import make_fake_run


@pytest.fixture()
def fake_run(tmp_path):
    """(run folder, its Config) with every input of the evaluation stage and the report."""
    return make_fake_run(tmp_path / "run")


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory):
    """A fake run after evaluation_stage and build_report (shared: the tests only read it)."""
    from npc_msom.evaluation.stage import evaluation_stage
    from npc_msom.report.html import build_report
    run, config = make_fake_run(tmp_path_factory.mktemp("ev") / "run")
    result = evaluation_stage(config, run)
    report = build_report(run)
    return run, config, result, report
