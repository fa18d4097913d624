"""Under CI the DICOM validation cannot turn into a skip (issue 10, item 12)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ci_run_fails_when_dciodvfy_cannot_be_installed(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    fake.chmod(0o755)
    for tool in ("dirname", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run(["/bin/bash", str(ROOT / ".ci" / "run")], capture_output=True, text=True,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, timeout=60)
    assert proc.returncode == 1, proc.stderr              # was: a warning, then make test
    assert "dciodvfy" in proc.stderr and "could not be installed" in proc.stderr


@pytest.mark.skipif(shutil.which("dciodvfy") is not None, reason="dciodvfy is installed here")
@pytest.mark.parametrize("ci, outcome", [("true", "1 failed"), ("", "1 skipped")])
def test_validation_without_dciodvfy_fails_under_ci(ci, outcome):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["CI"] = ci
    test = Path(__file__).with_name("test_dicom_writer.py")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{test}::test_write_series_and_rtstruct_read_back"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert outcome in proc.stdout, proc.stdout[-2000:]
    assert "dciodvfy" in proc.stdout
