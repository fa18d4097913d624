import json
import pickle

import numpy as np
import pydicom
import pytest

import npc_msom.cohort.dicom as dcm
from npc_msom.cohort import load_cohort
from npc_msom.config import SEQUENCES, CohortConfig
from npc_msom.synth.dicom_writer import write_mr_series

from cohort_fixtures import make_geometry, make_image, rotation, write_clinical, write_patient


def _check_patient(cohort, wp, *, exact_masks=True):
    p = cohort.load_patient(wp.patient_id)
    assert sorted(p.series) == sorted(SEQUENCES)
    for seq, s in p.series.items():
        g = wp.geometry[seq]
        assert s.image.dtype == np.float32 and s.image.shape == (12, 48, 48)
        np.testing.assert_allclose(s.image, wp.images[seq], atol=1e-3)
        np.testing.assert_allclose(s.geometry.origin_mm, g.origin_mm, atol=1e-3)
        np.testing.assert_allclose(s.geometry.spacing_mm, g.spacing_mm, atol=1e-4)
        np.testing.assert_allclose(s.geometry.direction, g.direction, atol=1e-5)
        assert s.geometry.size == g.size
        assert set(s.masks) == {"GTV", "GTVln"}
        for k, m in s.masks.items():
            assert m.dtype == bool and m.shape == s.image.shape
            if exact_masks:
                assert np.array_equal(m, wp.truth[seq][k]), (seq, k)
    return p


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_any_layout_random_names_shuffled_instance_numbers(tmp_path, layout):
    a = write_patient(tmp_path, "P001", seed=1, layout=layout)
    b = write_patient(tmp_path, "P002", seed=2, layout=layout)
    write_clinical(tmp_path / "clinical.csv", ["P001", "P002"])
    cohort = load_cohort(tmp_path, CohortConfig())
    assert cohort.patient_ids == ["P001", "P002"]
    assert list(cohort.clinical.index) == ["P001", "P002"]
    for wp in (a, b):
        p = _check_patient(cohort, wp)
        assert p.clinical["patient_id"] == wp.patient_id and p.outcome is not None
    info = cohort.manifest["patients"]["P001"]["sequences"]["CE-T1WI"]
    assert info["description"] == "T1_TSE_FS_TRA_POST" and info["n_slices"] == 12
    assert info["structures"] == {"GTV": ["GTVnx"], "GTVln": ["GTVnd_L", "GTVnd_R"]}
    assert info["orientation"] == "axial" and info["unmatched_rois"] == []
    json.dumps(cohort.manifest)
    # the index travels to worker processes
    again = pickle.loads(pickle.dumps(cohort))
    assert again.load_patient("P002").series["T1WI"].masks["GTV"].sum() == b.truth["T1WI"]["GTV"].sum()


def test_oblique_orientation(tmp_path):
    wp = write_patient(tmp_path, "P010", seed=3, direction=rotation(20, 15))
    cohort = load_cohort(tmp_path, CohortConfig())
    _check_patient(cohort, wp)
    assert cohort.manifest["patients"]["P010"]["sequences"]["T2WI"]["orientation"].startswith("oblique axial")


def test_indexing_decodes_one_slice_per_series_only(tmp_path, monkeypatch):
    # indexing reads headers, plus one test-decoded slice per series used (so that `inspect`
    # reports pixel data it cannot decode); volumes are read only by load_patient
    write_patient(tmp_path, "P001", seed=1)
    calls = []
    real = dcm.read_slice

    def counting(f, **k):
        calls.append(f.path)
        return real(f, **k)
    monkeypatch.setattr(dcm, "read_slice", counting)
    cohort = load_cohort(tmp_path, CohortConfig())
    assert cohort.patient_ids == ["P001"]
    assert len(calls) == 3 and len({p.parent for p in calls}) == 3
    calls.clear()
    cohort.load_patient("P001")
    assert len(calls) == 3 * 12


def test_missing_slice_is_detected_and_interpolated(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    ws = wp.series["T2WI"]
    ws.paths[5].unlink()          # the RTSTRUCT still has the contours of that slice
    cohort = load_cohort(tmp_path, CohortConfig())
    info = cohort.manifest["patients"]["P001"]["sequences"]["T2WI"]
    assert any("missing slice" in w and "1 slice(s) interpolated" in w for w in info["warnings"]), info["warnings"]
    assert info["n_files"] == 11 and info["n_slices"] == 12
    s = cohort.load_patient("P001").series["T2WI"]
    img = wp.images["T2WI"]
    assert s.image.shape == img.shape
    np.testing.assert_allclose(s.image[5], 0.5 * (img[4] + img[6]), atol=1e-3)
    np.testing.assert_allclose(np.delete(s.image, 5, axis=0), np.delete(img, 5, axis=0), atol=1e-3)
    # contours drawn on the missing slice's plane are rasterised there
    assert np.array_equal(s.masks["GTV"], wp.truth["T2WI"]["GTV"])


def test_uneven_spacing_is_detected_and_resampled(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1, with_rtstruct=False)
    ws = wp.series["T1WI"]
    # move slices 6.. by +1.5 mm along z: the spacing is 4 mm except one 5.5 mm gap
    for k in range(6, 12):
        ds = pydicom.dcmread(ws.paths[k])
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [f"{ipp[0]:g}", f"{ipp[1]:g}", f"{ipp[2] + 1.5:g}"]
        ds.save_as(ws.paths[k])
    cohort = load_cohort(tmp_path, CohortConfig())
    info = cohort.manifest["patients"]["P001"]["sequences"]["T1WI"]
    assert any(w.startswith("uneven slice spacing (4.00 to 5.50 mm)") for w in info["warnings"]), info["warnings"]
    assert any("no RTSTRUCT" in w for w in info["warnings"])
    s = cohort.load_patient("P001").series["T1WI"]
    assert s.geometry.spacing_mm[2] == pytest.approx(4.0) and s.masks == {}
    np.testing.assert_allclose(s.image[:6], wp.images["T1WI"][:6], atol=1e-3)
    # grid slice 6 lies at 24 mm, between source slices at 20 mm (k=5) and 25.5 mm (k=6)
    w = 4.0 / 5.5
    np.testing.assert_allclose(s.image[6], (1 - w) * wp.images["T1WI"][5] + w * wp.images["T1WI"][6], atol=1e-2)


def test_localizer_and_other_series_are_ignored_with_a_note(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    g = make_geometry((3, 48, 48), spacing=(1.0, 1.0, 10.0))
    kw = dict(patient_id="P001", study_uid=wp.series["T1WI"].study_uid,
              frame_of_reference_uid=wp.series["T1WI"].frame_of_reference_uid)
    write_mr_series(tmp_path / "P001" / "loc", make_image((3, 48, 48)), g, series_description="localizer",
                    series_number=1, **kw)
    write_mr_series(tmp_path / "P001" / "dwi", make_image((3, 48, 48)), g, series_description="ep2d_diff_DWI",
                    series_number=9, **kw)
    write_mr_series(tmp_path / "P001" / "mpr", make_image((3, 48, 48)), g, series_description="MPR_COR",
                    series_number=10, **kw)
    (tmp_path / "P001" / "notes.txt").write_text("not an image")
    cohort = load_cohort(tmp_path, CohortConfig())
    rec = cohort.manifest["patients"]["P001"]
    reasons = {i["description"]: i["reason"] for i in rec["ignored_series"]}
    assert set(reasons) == {"localizer", "ep2d_diff_DWI", "MPR_COR"}
    assert "ignored sequence" in reasons["localizer"] and "unrecognised" in reasons["MPR_COR"]
    assert sorted(rec["sequences"]) == sorted(SEQUENCES)
    _check_patient(cohort, wp)


def test_series_with_contours_is_preferred_over_a_second_series(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    g = make_geometry((20, 48, 48), spacing=(0.9, 0.9, 2.0))
    write_mr_series(tmp_path / "P001" / "t2b", make_image((20, 48, 48)), g, patient_id="P001",
                    study_uid=wp.series["T2WI"].study_uid, series_description="T2_TSE_TRA_repeat",
                    frame_of_reference_uid=wp.series["T2WI"].frame_of_reference_uid, series_number=20)
    cohort = load_cohort(tmp_path, CohortConfig())
    rec = cohort.manifest["patients"]["P001"]
    assert rec["sequences"]["T2WI"]["series_uid"] == wp.series["T2WI"].series_uid
    (ign,) = rec["ignored_series"]
    assert ign["description"] == "T2_TSE_TRA_repeat" and "has contours" in ign["reason"]


def test_contrast_tag_makes_a_t1_series_ce_t1wi(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1,
                       descriptions={"T1WI": "T1 SE AX", "T2WI": "T2 FSE AX", "CE-T1WI": "T1 SE AX"})
    cohort = load_cohort(tmp_path, CohortConfig())
    seqs = cohort.manifest["patients"]["P001"]["sequences"]
    assert seqs["CE-T1WI"]["series_uid"] == wp.series["CE-T1WI"].series_uid
    assert "contrast agent" in seqs["CE-T1WI"]["classified_by"]
    assert seqs["T1WI"]["series_uid"] == wp.series["T1WI"].series_uid


def test_duplicate_copy_of_a_slice_is_ignored(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    src = wp.series["T1WI"].paths[3]
    (tmp_path / "P001" / "copy").mkdir()
    (tmp_path / "P001" / "copy" / "dup.dcm").write_bytes(src.read_bytes())
    cohort = load_cohort(tmp_path, CohortConfig())
    assert any("duplicate copy" in w for w in cohort.manifest["patients"]["P001"]["warnings"])
    _check_patient(cohort, wp)


def test_required_sequences_are_configurable(tmp_path):
    write_patient(tmp_path, "P001", seed=1, sequences=("T2WI",))
    cohort = load_cohort(tmp_path, CohortConfig(required_sequences=("T2WI",)))
    assert cohort.patient_ids == ["P001"] and list(cohort.load_patient("P001").series) == ["T2WI"]
    assert cohort.clinical.empty and cohort.load_patient("P001").clinical is None


def _strip_references(rt_path):
    """An RTSTRUCT that names no series and no image, only its frame of reference."""
    ds = pydicom.dcmread(rt_path)
    for fr in ds.ReferencedFrameOfReferenceSequence:
        del fr.RTReferencedStudySequence
    for rc in ds.ROIContourSequence:
        for c in rc.ContourSequence:
            del c.ContourImageSequence
    ds.save_as(rt_path)


def test_rtstruct_without_references_is_matched_by_frame_of_reference(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1, sequences=("T2WI",))
    _strip_references(wp.rtstructs["T2WI"])
    cohort = load_cohort(tmp_path, CohortConfig(required_sequences=("T2WI",)))
    assert any("frame of reference only" in w for w in cohort.manifest["patients"]["P001"]["warnings"])
    assert np.array_equal(cohort.load_patient("P001").series["T2WI"].masks["GTV"], wp.truth["T2WI"]["GTV"])


def test_rtstruct_without_references_and_several_candidates_is_an_error(tmp_path):
    from npc_msom.errors import RTStructError
    wp = write_patient(tmp_path, "P001", seed=1)      # three series share one frame of reference
    _strip_references(wp.rtstructs["T1WI"])
    with pytest.raises(RTStructError, match="matches 3 series") as ei:
        load_cohort(tmp_path, CohortConfig())
    assert ei.value.file == str(wp.rtstructs["T1WI"])


def test_rtstruct_drawn_on_an_ignored_series_is_noted(tmp_path):
    from npc_msom.synth.dicom_writer import write_rtstruct
    wp = write_patient(tmp_path, "P001", seed=1)
    g = make_geometry((3, 48, 48), spacing=(1.0, 1.0, 10.0))
    loc = write_mr_series(tmp_path / "P001" / "loc", make_image((3, 48, 48)), g, patient_id="P001",
                          study_uid=wp.series["T1WI"].study_uid, series_description="localizer",
                          frame_of_reference_uid=wp.series["T1WI"].frame_of_reference_uid, series_number=1)
    square = np.array([[-10, -10, -30.0], [0, -10, -30.0], [0, 0, -30.0]])
    write_rtstruct(tmp_path / "P001" / "RS_loc.dcm", loc, {"GTV": [square]}, geometry=g)
    cohort = load_cohort(tmp_path, CohortConfig())
    (note,) = cohort.manifest["patients"]["P001"]["ignored_rtstructs"]
    assert note["file"] == "P001/RS_loc.dcm" and "ignored series 'localizer'" in note["reason"]


def test_symlinked_patient_folders_are_followed_without_loops(tmp_path):
    store = tmp_path / "share"
    wp = write_patient(store, "P020", seed=4)
    root = tmp_path / "cohort"
    root.mkdir()
    (root / "P020").symlink_to(store, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # must not recurse forever
    write_clinical(root / "clinical.csv", ["P020"])
    cohort = load_cohort(root, CohortConfig())
    assert cohort.patient_ids == ["P020"]
    _check_patient(cohort, wp)
