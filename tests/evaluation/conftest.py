import os
from pathlib import Path

import pandas as pd
import pytest

# the project's shared reference folder sits beside the checkout; NPC_MSOM_SHARED overrides it
SHARED = Path(os.environ.get("NPC_MSOM_SHARED", Path(__file__).resolve().parents[3] / "shared"))
ASAH = SHARED / "reference" / "pROC_aSAH" / "aSAH.csv"


def in_ci() -> bool:
    """True under CI (the CI variable, set by CI services and by .ci/run): no skips there."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def asah() -> pd.DataFrame:
    """pROC's aSAH example data (GPL-3, kept in shared/, not in the repo)."""
    if not ASAH.exists():
        # CI lays shared/ beside the clone, so there a missing file is a failure (this is the only
        # external check of DeLong); elsewhere a skip whose reason names the path
        msg = f"pROC reference data not found at {ASAH} (set NPC_MSOM_SHARED)"
        if in_ci():
            pytest.fail(msg + "; under CI the reference data must be present", pytrace=False)
        pytest.skip(msg)
    df = pd.read_csv(ASAH)
    df["y"] = (df["outcome"] == "Poor").astype(int)  # pROC levels: Good = control, Poor = case
    return df
