"""Imported masks against the truth, and against an independent rasterisation.

The contours here are analytic ellipse cross-sections (polygons in patient mm), not traced from
a voxel mask, so their vertices fall anywhere between pixel centres and the reader's geometry
(LPS -> index) and filling are both exercised.
"""
import numpy as np

from npc_msom.cohort import load_cohort
from npc_msom.config import CohortConfig

from cohort_fixtures import dice, independent_masks, write_analytic_patient


def test_imported_masks_match_the_analytic_truth_and_an_independent_rasterisation(tmp_path):
    written = write_analytic_patient(tmp_path)
    cohort = load_cohort(tmp_path, CohortConfig())
    p = cohort.load_patient("A01")
    for seq, (g, truth, ws, rt) in written.items():
        s = p.series[seq]
        np.testing.assert_allclose(s.geometry.direction, g.direction, atol=1e-5)
        ind = independent_masks(ws.paths[0].parent, rt, {"GTV": ["GTVp"], "GTVln": ["GTVnd_L", "GTVnd_R"]})
        for k in ("GTV", "GTVln"):
            assert truth[k].sum() > 200
            d_truth = dice(s.masks[k], truth[k])
            d_ind = dice(s.masks[k], ind[k])
            print(f"{seq} {k}: Dice vs truth {d_truth:.4f}, vs independent {d_ind:.4f}")
            assert d_truth >= 0.95, (seq, k, d_truth)
            assert d_ind >= 0.98, (seq, k, d_ind)
        # the necrotic core inside the GTV contour is a hole (even-odd fill)
        core = truth["core"]
        assert core.sum() > 20 and s.masks["GTV"][core].mean() < 0.05
