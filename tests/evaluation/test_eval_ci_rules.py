"""Under CI a missing pROC reference file fails the run instead of skipping (issue 10, item 12)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _run(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NPC_MSOM_SHARED")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(HERE / "test_roc.py::test_delong_ci_ndka_matches_pROC")],
                          capture_output=True, text=True, env=env, cwd=HERE.parents[1], timeout=120)


@pytest.mark.parametrize("ci, outcome", [("true", "1 error"), ("", "1 skipped")])   # error: in the fixture
def test_missing_reference_fails_under_ci_and_skips_elsewhere(tmp_path, ci, outcome):
    proc = _run({"NPC_MSOM_SHARED": str(tmp_path / "nowhere"), "CI": ci})
    out = proc.stdout + proc.stderr
    assert outcome in out, out[-2000:]
    assert str(tmp_path / "nowhere") in out          # the message names the path
    assert (proc.returncode == 1) == (ci == "true")
