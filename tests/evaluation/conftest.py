import os
from pathlib import Path

import pandas as pd
import pytest

# the project's shared reference folder sits beside the checkout; NPC_MSOM_SHARED overrides it
SHARED = Path(os.environ.get("NPC_MSOM_SHARED", Path(__file__).resolve().parents[3] / "shared"))
ASAH = SHARED / "reference" / "pROC_aSAH" / "aSAH.csv"


@pytest.fixture(scope="module")
def asah() -> pd.DataFrame:
    """pROC's aSAH example data (GPL-3, kept in shared/, not in the repo)."""
    if not ASAH.exists():
        # CI lays shared/ beside the clone, so these run there; the skip reason names the path
        pytest.skip(f"pROC reference data not found at {ASAH} (set NPC_MSOM_SHARED)")
    df = pd.read_csv(ASAH)
    df["y"] = (df["outcome"] == "Poor").astype(int)  # pROC levels: Good = control, Poor = case
    return df
