"""Degenerate evaluation data (issue 10, item 11): results that say what is odd about them."""
import math

import numpy as np
import pytest

from npc_msom.evaluation.calibration import calibration
from npc_msom.evaluation.roc import roc_auc

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("ci", ["delong", "bootstrap"])
def test_perfect_separation_zero_width_ci_is_noted(ci):
    r = roc_auc(Y, np.arange(8.0), ci=ci, n_boot=200)
    assert r.auc == 1.0 and r.ci_low == r.ci_high == 1.0
    assert "zero-width CI" in r.note and "perfectly" in r.note       # was: 1.000-1.000, no note
    assert r.format().endswith("[" + r.note + "]")


def test_all_equal_scores_zero_width_ci_is_noted():
    r = roc_auc(Y, np.full(8, 0.3))
    assert r.auc == 0.5 and r.ci_low == r.ci_high == 0.5
    assert "tied" in r.note


def test_ordinary_auc_has_no_note():
    r = roc_auc(Y, [0.1, 0.5, 0.2, 0.7, 0.6, 0.9, 0.3, 0.8])
    assert r.note == "" and r.ci_low < r.auc < r.ci_high and "[" not in r.format()


def test_too_few_cases_for_delong_is_noted():
    r = roc_auc([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4])
    assert math.isnan(r.ci_low) and "2 cases" in r.note


def test_calibration_says_it_clipped_zeros_and_ones():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    p = np.array([0.0, 0.1, 1.0, 0.8, 0.65, 0.6, 0.2, 0.9, 0.7, 0.4])   # not separable
    r = calibration(y, p, n_bins=2)
    note = r.notes[0]
    assert note.startswith("2 prediction(s) of exactly 0 or 1")      # was: silent
    assert r.to_dict()["notes"][0] == note
    inside = calibration(y, np.clip(p, 0.05, 0.95), n_bins=2)
    assert inside.notes == ()
