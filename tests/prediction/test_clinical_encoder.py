"""The clinical encoder: standardised numbers, one-hot categories, missing-value indicators, fitted
on the rows it is given only, never an outcome column, and the same encoding after a round trip."""
import numpy as np
import pandas as pd
import pytest

from npc_msom.errors import InputError
from npc_msom.prediction.clinical import ClinicalEncoder


def _table():
    return pd.DataFrame({"age": [40, 50, 60, np.nan], "gender": ["M", "F", "M", "M"],
                         "t_stage": ["T1", "T3", None, "T4"], "targeted_therapy": [0, 1, 0, 1],
                         "msom": [0, 1, 0, 1]}, index=pd.Index(["p1", "p2", "p3", "p4"], name="patient_id"))


def test_encoding_of_numbers_categories_and_missing_values():
    t = _table()
    enc = ClinicalEncoder.fit(t.loc[["p1", "p2", "p3", "p4"]], ("age", "gender", "t_stage", "targeted_therapy"))
    assert enc.feature_names == ["age", "age_missing", "gender=F", "gender=M", "t_stage=T1", "t_stage=T3",
                                 "t_stage=T4", "t_stage_missing", "targeted_therapy"]
    x = enc.transform(t)
    assert x.dtype == np.float32 and x.shape == (4, 9)
    # age: mean 50, SD 10 (ddof 1) over the three known; the missing one imputed to the mean, flagged
    assert np.allclose(x[:, 0], [-1.0, 0.0, 1.0, 0.0]) and np.array_equal(x[:, 1], [0, 0, 0, 1])
    assert np.array_equal(x[:, 2:4], [[0, 1], [1, 0], [0, 1], [0, 1]])
    assert np.array_equal(x[2, 4:8], [0, 0, 0, 1])
    assert np.array_equal(x[:, 8], [0, 1, 0, 1])


def test_fitted_only_on_given_rows_and_round_trip():
    t = _table()
    enc = ClinicalEncoder.fit(t.loc[["p1", "p2"]], ("age", "gender"))
    changed = t.copy()
    changed.loc[["p3", "p4"], "age"] = 99
    assert ClinicalEncoder.fit(changed.loc[["p1", "p2"]], ("age", "gender")) == enc
    again = ClinicalEncoder.from_dict(enc.to_dict())
    assert np.array_equal(again.transform(t), enc.transform(t))


def test_default_columns_exclude_outcomes_and_outcomes_are_refused():
    t = _table()
    assert "msom" not in ClinicalEncoder.fit(t).feature_names
    with pytest.raises(InputError, match="msom"):
        ClinicalEncoder.fit(t, ("age", "msom"))
    with pytest.raises(InputError, match="pni"):
        ClinicalEncoder.fit(t, ("age", "pni"))


def test_unseen_level_is_no_level(caplog):
    t = _table()
    enc = ClinicalEncoder.fit(t.loc[["p1", "p3"]], ("gender",))
    assert enc.feature_names == ["gender=M"]
    assert enc.transform(t.loc[["p2"]]).tolist() == [[0.0]]
    assert "not seen in training" in caplog.text
