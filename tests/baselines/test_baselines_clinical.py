"""The models without images: N stage as an ordinal score, and the clinical logistic regression
fitted on training patients only."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from npc_msom.baselines.clinical import fit_clinical, n_stage_scores
from npc_msom.config import load_config
from npc_msom.synth import cohort_table


@pytest.fixture(scope="module")
def table():
    t = cohort_table(dataclasses.replace(load_config(None).synth, patients=80, seed=5))
    return t.clinical.set_index("patient_id")


def test_n_stage_is_ordinal_and_unscorable_rows_say_why(table):
    t = table.iloc[:6].copy()
    t["n_stage"] = ["N0", "N3", "N1", None, "N2", "Nx"]
    scores, notes = n_stage_scores(t)
    np.testing.assert_array_equal(scores[[0, 1, 2, 4]], [0.0, 3.0, 1.0, 2.0])
    assert np.isnan(scores[3]) and notes[3] == "no N stage"
    assert np.isnan(scores[5]) and "Nx" in notes[5]
    assert notes[0] == notes[1] == ""


def test_clinical_model_learns_and_never_sees_validation_rows(table):
    ids = list(table.index)
    train, val = ids[:60], ids[60:]
    y = table.loc[train, "msom"].to_numpy(dtype=int)
    fit = fit_clinical(table, train, y, c=1.0)
    assert fit.scores.shape == (len(ids),)
    assert np.all((fit.scores > 0) & (fit.scores < 1))
    # PNI lowers the synthetic risk (outcome.COEFFICIENTS: -0.60 per SD): the fit must find that sign
    assert fit.coefficients["pni"] < 0
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y, fit.scores[:60]) > 0.7

    # scramble every validation patient's predictors: training fit and training scores unchanged
    other = table.copy()
    rng = np.random.default_rng(0)
    other.loc[val, "pni"] = rng.uniform(20, 80, len(val))
    other.loc[val, "age"] = rng.integers(10, 100, len(val))
    other.loc[val, "n_stage"] = "N3"
    fit2 = fit_clinical(other, train, y, c=1.0)
    assert fit2.coefficients == fit.coefficients
    assert fit2.encoder == fit.encoder
    np.testing.assert_allclose(fit2.scores[:60], fit.scores[:60])
    assert not np.allclose(fit2.scores[60:], fit.scores[60:])
