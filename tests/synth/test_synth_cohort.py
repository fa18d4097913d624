"""The synthetic cohort: tables, outcome model, written DICOM, truth masks, reruns."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from npc_msom.cohort.model import Geometry
from npc_msom.cohort.schema import CLINICAL_SCHEMA
from npc_msom.config import SEQUENCES, CohortConfig, SynthConfig
from npc_msom.errors import ConfigError
from npc_msom.synth import (cohort_table, contours_to_mask, make_patient, write_cohort,
                            write_patient)
from npc_msom.synth import outcome as om
from npc_msom.synth import phantom as ph
from npc_msom.synth.cohort import ROI_STYLES, VENDORS, sample_latent


def skip_unless_ci(reason: str) -> None:
    """Skip locally; under CI (CI=true, set by .ci/run) a missing tool or reference file fails."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; under CI it must be present", pytrace=False)
    pytest.skip(reason)


SMALL = SynthConfig(patients=2, seed=11)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    write_cohort(out, SMALL, workers=1, show_progress=False)
    return out


@pytest.fixture(scope="module")
def table186():
    return cohort_table(SynthConfig(patients=186, seed=2024))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_series(folder: Path):
    """MR datasets sorted by InstanceNumber, and the RTSTRUCT dataset."""
    mr, rs = [], None
    for p in folder.iterdir():
        ds = pydicom.dcmread(p)
        if ds.Modality == "MR":
            mr.append(ds)
        elif ds.Modality == "RTSTRUCT":
            rs = ds
    return sorted(mr, key=lambda d: int(d.InstanceNumber)), rs


def _classify(text: str, patterns: dict[str, tuple[str, ...]]) -> str | None:
    for name, pats in patterns.items():
        if any(re.search(p, text, re.I) for p in pats):
            return name
    return None


# --------------------------------------------------------------------------- tables

def test_clinical_table_matches_schema(table186):
    df = table186.clinical
    assert list(df.columns) == [c.name for c in CLINICAL_SCHEMA]
    assert df["patient_id"].tolist() == [f"NPC{i:04d}" for i in range(1, 187)]
    for col in CLINICAL_SCHEMA:
        values = df[col.name]
        if col.kind == "category":
            present = values.dropna() if not col.required else values
            assert set(present) <= set(col.allowed), col.name
            if col.required:
                assert values.notna().all(), col.name
        elif col.kind == "binary":
            assert set(values) <= {0, 1}, col.name
        elif col.kind in ("int", "float"):
            assert values.between(col.low, col.high).all(), col.name
            if col.kind == "int":
                assert (values == values.round()).all(), col.name
    # stage group follows T and N (AJCC 8th)
    assert (df["clinical_stage"] == [om.clinical_stage(t, n) for t, n in zip(df["t_stage"], df["n_stage"])]).all()


def test_outcome_marginals_close_to_the_study(table186):
    df = table186.clinical
    assert df["msom"].sum() == round(85 / 186 * 186) == 85
    assert df["msom_organ"].value_counts().to_dict() == {"liver": 32, "bone": 28, "lung": 25}
    assert df.loc[df["msom"] == 0, "msom_organ"].isna().all()
    t = df.loc[df["msom"] == 1, "dmfs_months"]
    assert t.between(7, 36).all() and 11.0 <= t.median() <= 15.0
    assert (df.loc[df["msom"] == 0, "dmfs_months"] > 36).all()
    assert (df["os_months"] >= df["dmfs_months"] - 1e-9).all()
    # worse overall survival with MSOM
    assert df.loc[df["msom"] == 1, "os_event"].mean() > df.loc[df["msom"] == 0, "os_event"].mean() + 0.2
    # treatment shares of the study: ~32% targeted therapy, ~78% >= 70 Gy, ~65% >= 200 mg/m2
    assert 0.22 <= df["targeted_therapy"].mean() <= 0.42
    assert 0.68 <= (df["gtv_dose_gy"] >= 70).mean() <= 0.88
    assert 0.55 <= (df["cisplatin_mg_m2"] >= 200).mean() <= 0.75


def test_msom_fraction_follows_config():
    t = cohort_table(SynthConfig(patients=100, seed=3, msom_fraction=0.3))
    assert t.clinical["msom"].sum() == 30


def test_truth_oracle_and_features(table186):
    tr = table186.truth
    assert list(tr["patient_id"]) == list(table186.clinical["patient_id"])
    assert (tr["msom"] == table186.clinical["msom"]).all()
    assert tr["true_risk"].between(0, 1).all()
    # the oracle is strong but not perfect; imaging carries more signal than clinical data
    assert 0.82 <= table186.oracle_auc <= 0.95
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(tr["msom"], tr["eta_imaging"]) > roc_auc_score(tr["msom"], tr["eta_clinical"])
    np.testing.assert_allclose(tr["eta"], tr["eta_imaging"] + tr["eta_clinical"], atol=1e-9)
    # bigger tumours for higher T stage
    med = tr.groupby("t_stage")["gtv_volume_ml"].median()
    assert med["T1"] < med["T2"] < med["T3"] < med["T4"]
    assert tr["n_nodes"].between(0, 6).all()
    assert (tr.loc[tr["n_stage"] == "N0", "n_nodes"] == 0).all()


def test_feature_scales_are_close_to_the_cohort(table186):
    feats = pd.DataFrame([om.feature_vector(c, i) for c, i in zip(
        table186.clinical.to_dict("records"),
        table186.truth[["gtv_volume_ml", "n_nodes", "node_volume_ml", "n_necrotic_nodes", "heterogeneity"]]
        .to_dict("records"))])
    for k, (mean, sd) in om.FEATURE_SCALE.items():
        if sd == 1.0 and mean == 0.0:
            continue  # indicators, not standardised
        assert abs(feats[k].mean() - mean) < 0.3 * sd, k
        assert 0.6 < feats[k].std() / sd < 1.5, k


def test_table_is_deterministic_and_prefix_stable():
    a = cohort_table(SynthConfig(patients=20, seed=5))
    b = cohort_table(SynthConfig(patients=20, seed=5))
    pd.testing.assert_frame_equal(a.clinical, b.clinical)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    c = cohort_table(SynthConfig(patients=30, seed=5))
    # covariates and imaging latents of a patient do not depend on the cohort size
    cols = ["age", "gender", "t_stage", "n_stage", "pni", "hgb_g_l"]
    pd.testing.assert_frame_equal(a.clinical[cols], c.clinical[cols].iloc[:20])
    pd.testing.assert_series_equal(a.truth["gtv_volume_ml"], c.truth["gtv_volume_ml"].iloc[:20])
    d = cohort_table(SynthConfig(patients=20, seed=6))
    assert not a.truth["gtv_volume_ml"].equals(d.truth["gtv_volume_ml"])


# ---------------------------------------------------------------------------- lesions

def test_truth_mask_volume_matches_analytic_volume():
    lt = sample_latent(2024, 3)
    anat, les = lt.anatomy, lt.lesions
    for obj in (les.primary, *les.nodes[:2]):
        lo, hi = obj.bounds_mm()
        # a fine 0.4 mm grid around the lesion (patient frame -> LPS through the anatomy)
        x0, y0, z0 = anat.patient_to_lps(*lo)
        g = Geometry(origin_mm=(x0 - 20, y0 - 20, z0 - 2), spacing_mm=(0.4, 0.4, 0.4),
                     direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                     size=tuple(int((h - l + 40) / 0.4) for h, l in zip(hi, lo)))
        single = ph.Lesions(primary=obj if obj is les.primary else les.primary.with_volume(1e-6),
                            nodes=(obj,) if obj is not les.primary else (), heterogeneity=0.5,
                            hetero_waves=())
        labels, _core = ph.lesion_label_map(g, anat, single)
        value = 1 if obj is les.primary else 2
        vol_ml = (labels == value).sum() * 0.4 ** 3 / 1000.0
        assert vol_ml == pytest.approx(obj.volume_ml, rel=0.02)


def test_primary_volume_on_a_clinical_grid_is_close():
    cfg = SynthConfig(patients=4, seed=2024)
    table = cohort_table(cfg)
    p = make_patient("NPC0004", 2024, 3, clinical_row=table.clinical.iloc[3].to_dict(),
                     truth_row=table.truth.iloc[3].to_dict())
    for s in p.series.values():
        voxel_ml = np.prod(s.geometry.spacing_mm) / 1000.0
        assert s.masks["GTV"].sum() * voxel_ml == pytest.approx(p.latent.imaging["gtv_volume_ml"], rel=0.08)
        assert not (s.masks["GTV"] & s.masks["GTVln"]).any()
    # sequence-specific contrast: the tumour enhances on CE-T1WI far more than it stands out on T2WI
    def tumour_contrast(seq):
        s = p.series[seq]
        body = s.image > np.percentile(s.image, 60)
        return s.image[s.masks["GTV"]].mean() / np.median(s.image[body])
    assert tumour_contrast("CE-T1WI") > tumour_contrast("T2WI")
    ce = p.series["CE-T1WI"].image[p.series["CE-T1WI"].masks["GTV"]]
    t2 = p.series["T2WI"].image[p.series["T2WI"].masks["GTV"]]
    # enhancement heterogeneity shows most on CE-T1WI
    assert ce.std() / ce.mean() > t2.std() / t2.mean()


def test_contrast_tables_follow_mr_physics():
    t1, t2, ce = ph.CONTRASTS["T1"], ph.CONTRASTS["T2"], ph.CONTRASTS["CET1FS"]
    assert t1["fat"] > t1["muscle"] and t1["csf"] < t1["muscle"]
    assert t2["csf"] == max(t2.values()) and t2["node_necrosis"] > t2["node"]
    assert ce["fat"] < ce["muscle"] < ce["tumour"] and ce["node_necrosis"] < ce["node"]
    assert ph.HETEROGENEITY_AMPLITUDE["CET1FS"] > ph.HETEROGENEITY_AMPLITUDE["T1"] > ph.HETEROGENEITY_AMPLITUDE["T2"]


# ------------------------------------------------------------------------ written files

def test_written_layout_and_tables(cohort_dir):
    clin = pd.read_csv(cohort_dir / "clinical.csv")
    assert list(clin.columns) == [c.name for c in CLINICAL_SCHEMA]
    truth = pd.read_csv(cohort_dir / "truth.csv")
    assert list(truth["patient_id"]) == list(clin["patient_id"]) == ["NPC0001", "NPC0002"]
    table = cohort_table(SMALL)
    pd.testing.assert_frame_equal(clin.fillna(""), table.clinical.fillna(""), check_dtype=False)
    patients = sorted(p.name for p in (cohort_dir / "dicom").iterdir())
    assert patients == ["NPC0001", "NPC0002"]
    import json
    meta = json.loads((cohort_dir / "synth.json").read_text())
    assert meta["complete"] and meta["seed"] == SMALL.seed and meta["summary"]["n_patients"] == 2
    for pid in patients:
        assert len([d for d in (cohort_dir / "dicom" / pid).iterdir() if d.is_dir()]) == 3


def test_written_geometry_uids_and_contours(cohort_dir):
    cfg = CohortConfig()
    for patient_dir in sorted((cohort_dir / "dicom").iterdir()):
        frames, series_uids, studies, seen = set(), set(), set(), set()
        for folder in sorted(patient_dir.iterdir()):
            mr, rs = _read_series(folder)
            assert rs is not None and len(mr) >= 15
            first = mr[0]
            seq = _classify(f"{first.SeriesDescription}", cfg.sequence_patterns)
            assert seq in SEQUENCES
            seen.add(seq)
            assert ("ContrastBolusAgent" in first) == (seq == "CE-T1WI")
            frames.add(first.FrameOfReferenceUID)
            series_uids.add(first.SeriesInstanceUID)
            studies.add(first.StudyInstanceUID)
            iop = np.array([float(v) for v in first.ImageOrientationPatient])
            normal = np.cross(iop[:3], iop[3:])
            ps = [float(v) for v in first.PixelSpacing]
            assert 0.4 <= ps[0] <= 0.9 and ps[0] == ps[1]
            assert 3.0 <= float(first.SliceThickness) <= 6.0
            gap = float(first.SpacingBetweenSlices)
            assert 3.0 <= gap <= 6.0 and gap >= float(first.SliceThickness) - 1e-6
            pos = np.array([[float(v) for v in d.ImagePositionPatient] for d in mr])
            steps = np.diff(pos @ normal)
            np.testing.assert_allclose(steps, gap, atol=1e-3)
            # in-plane position constant: positions move along the normal only
            np.testing.assert_allclose(pos - np.outer(pos @ normal, normal), np.tile(pos[0] - (pos[0] @ normal) * normal, (len(mr), 1)), atol=1e-3)
            assert all(d.SeriesInstanceUID == first.SeriesInstanceUID for d in mr)
            assert len({d.SOPInstanceUID for d in mr}) == len(mr)
            # RTSTRUCT: references, ROI names the reader understands, contours give the truth back
            ref = rs.ReferencedFrameOfReferenceSequence[0]
            assert ref.FrameOfReferenceUID == first.FrameOfReferenceUID
            ref_series = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
            assert ref_series.SeriesInstanceUID == first.SeriesInstanceUID
            sop_uids = {d.SOPInstanceUID for d in mr}
            names = {r.ROINumber: r.ROIName for r in rs.StructureSetROISequence}
            structures = {n: _classify(re.sub(r"[\s_\-]", "", name).lower(), cfg.roi_patterns)
                          for n, name in names.items()}
            assert "GTV" in structures.values()
            geom = Geometry(origin_mm=tuple(pos[0]), spacing_mm=(ps[1], ps[0], gap),
                            direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
                            size=(int(first.Columns), int(first.Rows), len(mr)))
            masks = {"GTV": np.zeros((len(mr), first.Rows, first.Columns), bool)}
            masks["GTVln"] = masks["GTV"].copy()
            for rc in rs.ROIContourSequence:
                structure = structures[rc.ReferencedROINumber]
                polys = []
                for c in rc.get("ContourSequence", []):
                    assert c.ContourImageSequence[0].ReferencedSOPInstanceUID in sop_uids
                    polys.append(np.array([float(v) for v in c.ContourData]).reshape(-1, 3))
                if structure is not None:
                    masks[structure] |= contours_to_mask(polys, geom)
            # compare with the generator's own truth masks
            idx = int(patient_dir.name[3:]) - 1
            p = _patient(idx)
            truth = p.series[seq]
            np.testing.assert_array_equal(masks["GTV"], truth.masks["GTV"])
            np.testing.assert_array_equal(masks["GTVln"], truth.masks["GTVln"])
            # pixel values: stored * slope + intercept = the generator's image
            img = np.stack([d.pixel_array for d in mr]).astype(np.float32) * float(first.RescaleSlope) \
                + float(first.RescaleIntercept)
            np.testing.assert_allclose(img, truth.image, rtol=1e-5, atol=1e-3)
        assert seen == set(SEQUENCES)
        assert len(frames) == 1 and len(studies) == 1 and len(series_uids) == 3


_PATIENTS: dict[int, object] = {}


def _patient(idx: int):
    if idx not in _PATIENTS:
        t = cohort_table(SMALL)
        _PATIENTS[idx] = make_patient(t.clinical.at[idx, "patient_id"], SMALL.seed, idx,
                                      clinical_row=t.clinical.iloc[idx].to_dict(),
                                      truth_row=t.truth.iloc[idx].to_dict())
    return _PATIENTS[idx]


def test_every_written_file_passes_dciodvfy(cohort_dir):
    if shutil.which("dciodvfy") is None:
        skip_unless_ci("dciodvfy (dicom3tools) not installed")
    patient_dir = cohort_dir / "dicom" / "NPC0001"
    files = [p for p in patient_dir.rglob("*") if p.is_file()]
    assert len(files) > 40
    bad = {}
    for f in files:
        proc = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]
        if errors:
            bad[str(f)] = errors
    assert not bad


def test_same_seed_gives_identical_bytes_and_rerun_skips(cohort_dir, tmp_path):
    # render patient 1 again into another folder: byte-identical files
    write_patient(_patient(0), tmp_path / "again")
    assert _digest(tmp_path / "again" / "NPC0001") == _digest(cohort_dir / "dicom" / "NPC0001")
    # rerun on a copy with one patient removed and a stale temporary folder: only that patient
    # is written again, identical to before, and the tables are unchanged
    copy = tmp_path / "copy"
    shutil.copytree(cohort_dir, copy)
    before = _digest(copy)
    shutil.rmtree(copy / "dicom" / "NPC0002")
    (copy / "dicom" / ".tmp-NPC0002-999").mkdir()
    (copy / "dicom" / ".tmp-NPC0002-999" / "half.dcm").write_bytes(b"partial")
    summary = write_cohort(copy, SMALL, workers=1, show_progress=False)
    assert summary.written == 1 and summary.n_patients == 2
    assert "oracle AUC" in summary.describe()
    assert _digest(copy) == before
    with pytest.raises(ConfigError):
        write_cohort(copy, SynthConfig(patients=2, seed=12), workers=1, show_progress=False)


def test_names_vary_and_are_understood_by_the_default_reader_patterns():
    cfg = CohortConfig()
    for vendor in VENDORS.values():
        for seq, descs in vendor["desc"].items():
            for d in descs:
                assert _classify(d, cfg.sequence_patterns) == seq, d
    names = set()
    for primary, nodes, split in ROI_STYLES:
        names.add(primary)
        names.update({"merged": [nodes], "side": [f"{nodes}_L", f"{nodes}_R"],
                      "each": [f"{nodes}{i}" for i in range(1, 7)]}[split])
    for n in names:
        key = re.sub(r"[\s_\-]", "", n).lower()
        assert _classify(key, cfg.roi_patterns) in ("GTV", "GTVln"), n
    assert _classify("spinalcord", cfg.roi_patterns) is None


def test_comparison_figure(tmp_path):
    from npc_msom.synth.figure import DEFAULT_REFERENCE, comparison_figure, synthetic_t2_slice
    img, mask, info = synthetic_t2_slice(2024, 1, size=256)
    assert img.shape == mask.shape == (256, 256) and img.dtype == np.uint8
    assert mask.any() and info["description"]
    # the GTV is brighter than the image's dark half and sits in the middle third left-right
    assert img[mask].mean() > np.median(img)
    cols = np.nonzero(mask.any(axis=0))[0]
    assert 256 / 4 < cols.mean() < 3 * 256 / 4
    if not Path(DEFAULT_REFERENCE).is_dir():
        skip_unless_ci(f"reference slices not present at {DEFAULT_REFERENCE}")
    out = comparison_figure(tmp_path / "fig.png", DEFAULT_REFERENCE, synthetic=((2024, 1),))
    assert 0 < out.stat().st_size < 500_000
