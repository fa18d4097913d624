"""The radiomics comparison model: PyRadiomics on phantoms, the crop keeps geometry, selection
sees training rows only, and one bad patient neither stops the others nor goes unnamed."""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("radiomics")

from npc_msom.baselines import radiomics as rad  # noqa: E402
from npc_msom.cohort.model import Geometry, Patient, Series  # noqa: E402

DEMO = rad.params_path("radiomics_demo.yaml")


def _ball(radius_mm: float, n: int, axes=(1.0, 1.0, 1.0)) -> np.ndarray:
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2.0
    return (x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2 <= radius_mm ** 2


def test_sphere_phantom_volume_and_sphericity():
    r = 15.0
    mask = _ball(r, 41)
    image = np.random.default_rng(0).normal(100, 10, mask.shape).astype(np.float32)
    f = rad.extract_features(image, mask, 1.0, DEMO)
    volume = 4.0 / 3.0 * math.pi * r ** 3
    assert f["original_shape_MeshVolume"] == pytest.approx(volume, rel=0.02)
    assert f["original_shape_VoxelVolume"] == pytest.approx(volume, rel=0.02)
    # PyRadiomics documents sphericity = (36 pi V^2)^(1/3) / A (1 for a perfect sphere); on a
    # 1 mm voxelised sphere the marching-cubes surface is ~8% larger than the smooth one, so the
    # documented formula is checked on PyRadiomics' own area and volume, and the value near 1
    a, v = f["original_shape_SurfaceArea"], f["original_shape_MeshVolume"]
    assert f["original_shape_Sphericity"] == pytest.approx((36 * math.pi * v ** 2) ** (1 / 3) / a, rel=0.02)
    assert 0.9 < f["original_shape_Sphericity"] <= 1.0
    # an elongated ellipsoid is less spherical, with its volume (4/3 pi a b c) also within 2%
    ell = _ball(8.0, 61, axes=(1.0, 1.0, 3.0))
    noise = np.random.default_rng(1).normal(100, 10, ell.shape).astype(np.float32)
    g = rad.extract_features(noise, ell, 1.0, DEMO)
    assert g["original_shape_MeshVolume"] == pytest.approx(4 / 3 * math.pi * 8 * 8 * 24, rel=0.02)
    assert g["original_shape_Sphericity"] < f["original_shape_Sphericity"] - 0.1


def test_extract_refuses_an_empty_mask():
    with pytest.raises(ValueError, match="empty"):
        rad.extract_features(np.zeros((5, 5, 5), np.float32), np.zeros((5, 5, 5), bool), 1.0, DEMO)


def test_crop_keeps_the_physical_position_of_each_voxel():
    img = np.arange(20 * 30 * 40, dtype=np.float32).reshape(20, 30, 40)
    mask = np.zeros(img.shape, bool)
    mask[8:11, 10:14, 20:25] = True
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # x and y swapped: not the identity
    geom = Geometry(origin_mm=(-10.0, 5.0, 30.0), spacing_mm=(0.5, 0.8, 3.0), direction=direction, size=(40, 30, 20))
    s = Series("T1WI", img, geom, {"GTV": mask})
    c = rad.crop_series(s, "GTV", margin_mm=3.0)
    assert c.masks["GTV"].sum() == mask.sum()
    # margin 3 mm: 1 slice in z (3 mm), 4 rows in y (0.8 mm), 6 columns in x (0.5 mm)
    assert c.image.shape == (3 + 2, 4 + 8, 5 + 12)
    a, b = s.to_sitk(), c.to_sitk()
    idx_full = (20 - 6, 10 - 4, 8 - 1)  # (x, y, z) of the crop's first voxel in the full image
    assert np.allclose(a.TransformIndexToPhysicalPoint(idx_full), b.TransformIndexToPhysicalPoint((0, 0, 0)))
    assert c.image[0, 0, 0] == img[7, 6, 14]
    assert rad.crop_series(Series("T1WI", img, geom, {"GTV": np.zeros_like(mask)})) is None


def _features(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    signal = y + 0.6 * rng.normal(size=n)
    cols = {"f_signal": signal, "f_copy": 2 * signal + 0.01 * rng.normal(size=n),  # |r| > 0.9
            "f_const": np.ones(n), "f_rare": np.r_[np.zeros(n - 1), 1.0]}          # near-zero variance
    for k in range(8):
        cols[f"f_noise{k}"] = rng.normal(size=n)
    return pd.DataFrame(cols, index=[f"P{i:03d}" for i in range(n)]), y


def test_filters_drop_constant_rare_and_correlated_columns():
    x, _ = _features(60, 0)
    kept = rad.near_zero_variance(x)
    assert "f_const" not in kept and "f_rare" not in kept and "f_signal" in kept
    after = rad.correlation_filter(x[kept], 0.9)
    assert "f_signal" in after and "f_copy" not in after  # the earlier of the pair stays
    assert len(after) == len(kept) - 1


def test_selection_never_sees_validation_rows():
    x, y = _features(80, 1)
    ids = list(x.index)
    train, val = ids[:60], ids[60:]
    labels = dict(zip(ids, y.tolist()))
    res = rad.fit_and_score(x, {}, ids, train, labels, cv_folds=5, cs=10, seed=0)
    assert "f_signal" in res.model.selected
    assert set(res.model.selected) <= set(res.model.after_correlation)
    # validation rows replaced by anything (even a feature of another scale): same selection
    other = x.copy()
    rng = np.random.default_rng(9)
    other.loc[val] = rng.normal(size=(len(val), x.shape[1])) * 100
    res2 = rad.fit_and_score(other, {}, ids, train, labels, cv_folds=5, cs=10, seed=0)
    assert res2.model.selected == res.model.selected
    assert res2.model.coefficients == res.model.coefficients
    np.testing.assert_allclose(res2.scores[:60], res.scores[:60])
    assert not np.allclose(res2.scores[60:], res.scores[60:])


def test_unscorable_patients_keep_their_row_and_reason():
    x, y = _features(40, 2)
    ids = list(x.index) + ["EMPTY"]
    labels = dict(zip(x.index, y.tolist())) | {"EMPTY": 1}
    res = rad.fit_and_score(x.drop(index="P039"), {"EMPTY": "empty GTV on T1WI", "P039": "PyRadiomics error: boom"},
                            ids, list(x.index[:30]), labels, cv_folds=3, cs=5)
    assert len(res.scores) == len(ids)
    assert np.isnan(res.scores[-1]) and res.notes[-1] == "empty GTV on T1WI"
    assert np.isnan(res.scores[-2]) and "boom" in res.notes[-2]
    assert np.isfinite(res.scores[:-2]).all()


class _FakeCohort:
    """Three patients with a ball GTV on a 2 mm grid; one has an empty GTV, one breaks PyRadiomics."""

    def load_patient(self, pid, sequences=None):
        n = 24
        mask = _ball(6.0, n) if pid != "EMPTY" else np.zeros((n, n, n), bool)
        image = np.random.default_rng(0).normal(100, 10, (n, n, n)).astype(np.float32)
        if pid == "BAD":
            image[:] = np.nan
        geom = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (n, n, n))
        return Patient(pid, {"T1WI": Series("T1WI", image, geom, {"GTV": mask})})


def test_one_bad_patient_is_named_and_the_others_go_on(tmp_path, caplog, monkeypatch):
    real = rad.extract_features

    def flaky(image, mask, spacing, params):
        if np.isnan(image).any():
            raise RuntimeError("synthetic PyRadiomics failure")
        return real(image, mask, spacing, params)

    monkeypatch.setattr(rad, "extract_features", flaky)
    with caplog.at_level(logging.ERROR, logger="npc_msom.baselines.radiomics"):
        out = rad.extract_cohort(_FakeCohort(), ["GOOD", "EMPTY", "BAD"], ["T1WI"], tmp_path,
                                 params_file=DEMO, spacing_mm=1.0, workers=1)
    res = out["T1WI"]
    assert "features" in res["GOOD"] and res["GOOD"]["features"]["original_shape_VoxelVolume"] > 0
    assert res["EMPTY"]["note"] == "empty GTV on T1WI"
    assert "synthetic PyRadiomics failure" in res["BAD"]["note"]
    assert any("BAD" in r.getMessage() for r in caplog.records)
    # the good and the empty patient are cached, the failed one is not (a later run tries again)
    assert (tmp_path / "T1WI" / "GOOD.json").is_file() and (tmp_path / "T1WI" / "EMPTY.json").is_file()
    assert not (tmp_path / "T1WI" / "BAD.json").exists()
    monkeypatch.setattr(rad, "extract_features", lambda *a: pytest.fail("cache not used"))
    again = rad.extract_cohort(_FakeCohort(), ["GOOD", "EMPTY"], ["T1WI"], tmp_path, params_file=DEMO,
                               spacing_mm=1.0, workers=1)
    assert again["T1WI"]["GOOD"] == res["GOOD"]


def test_two_processes_give_the_features_of_one(tmp_path):
    ids = ["GOOD", "EMPTY", "OTHER"]
    stats: dict = {}
    two = rad.extract_cohort(_FakeCohort(), ids, ["T1WI"], tmp_path / "a", params_file=DEMO, workers=2, stats=stats)
    one = rad.extract_cohort(_FakeCohort(), ids, ["T1WI"], tmp_path / "b", params_file=DEMO, workers=1)
    assert stats["workers"] == 2 and stats["extracted_patients"] == 3
    assert two == one
    assert two["T1WI"]["EMPTY"]["note"] == "empty GTV on T1WI"
