"""Every bad input gives an InputError naming patient and file, or a recorded skip with skip_bad."""
import dataclasses

import numpy as np
import pydicom
import pytest

from npc_msom.cohort import load_cohort
from npc_msom.config import CohortConfig
from npc_msom.errors import (ClinicalTableError, CohortError, DicomError, InputError, RTStructError)
from npc_msom.synth.dicom_writer import mask_to_contours, write_mr_series, write_rtstruct

from cohort_fixtures import clinical_row, make_geometry, make_image, write_clinical, write_patient

STRICT = CohortConfig()
SKIP = CohortConfig(skip_bad=True)


def two_patients(tmp_path, **kw_bad):
    """A good patient P001 and a patient P002 (made with ``kw_bad``), with a clinical table."""
    good = write_patient(tmp_path, "P001", seed=1)
    bad = write_patient(tmp_path, "P002", seed=2, **kw_bad)
    write_clinical(tmp_path / "clinical.csv", ["P001", "P002"])
    return good, bad


def assert_raises_then_skips(tmp_path, error, match, *, patient="P002", file_part=None):
    """Without skip_bad: the error names the patient and file; with it: P002 is skipped."""
    with pytest.raises(error, match=match) as ei:
        load_cohort(tmp_path, STRICT)
    e = ei.value
    assert e.patient == patient, str(e)
    assert e.file is not None and (file_part is None or file_part in e.file), str(e)
    assert f"patient {patient}" in str(e)
    cohort = load_cohort(tmp_path, SKIP)
    assert patient not in cohort.patient_ids and "P001" in cohort.patient_ids
    (rec,) = [s for s in cohort.manifest["skipped"] if s["patient"] == patient]
    assert rec["error"] == error.__name__ and rec["file"] == e.file and rec["problem"] == e.problem
    return e, cohort


def test_truncated_dicom_file(tmp_path):
    _, bad = two_patients(tmp_path)
    p = bad.series["T2WI"].paths[4]
    p.write_bytes(p.read_bytes()[:-1000])
    e, _ = assert_raises_then_skips(tmp_path, DicomError, "truncated", file_part=p.name)


def test_garbage_dicom_file(tmp_path):
    _, bad = two_patients(tmp_path)
    p = bad.series["T1WI"].paths[0].parent / "IM_broken.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + b"garbage" * 10)
    assert_raises_then_skips(tmp_path, DicomError, "DICOM file", file_part="IM_broken.dcm")


def test_corrupt_pixel_data_found_when_loading(tmp_path):
    _, bad = two_patients(tmp_path)
    p = bad.series["CE-T1WI"].paths[2]
    # claim RLE compression for raw pixel data: the header reads, the pixels do not decode
    raw = p.read_bytes()
    head = raw[:400].replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0", 1)
    assert head != raw[:400]
    p.write_bytes(head + raw[400:])
    cohort = load_cohort(tmp_path, STRICT)
    assert cohort.patient_ids == ["P001", "P002"]
    with pytest.raises(DicomError, match="cannot read the pixel data") as ei:
        cohort.load_patient("P002")
    assert ei.value.patient == "P002" and ei.value.file == str(p)
    cohort.load_patient("P001")


def test_inconsistent_slices_of_a_series(tmp_path):
    _, bad = two_patients(tmp_path)
    p = bad.series["CE-T1WI"].paths[2]
    ds = pydicom.dcmread(p)
    ds.Rows, ds.PixelData = 24, ds.PixelData[: 24 * 48 * 2]
    ds.save_as(p)
    assert_raises_then_skips(tmp_path, DicomError, "different sizes")


def test_corrupt_file_whose_patient_cannot_be_told(tmp_path):
    write_patient(tmp_path, "P001", seed=1, layout="flat")
    write_patient(tmp_path, "P002", seed=2, layout="flat")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all" * 50)
    with pytest.raises(DicomError, match="junk.dcm"):
        load_cohort(tmp_path, STRICT)
    cohort = load_cohort(tmp_path, SKIP)
    assert cohort.patient_ids == ["P001", "P002"]
    assert [u["file"] for u in cohort.manifest["unreadable_files"]] == ["junk.dcm"]
    assert cohort.manifest["skipped"][0]["patient"] is None


def test_non_dicom_files_are_listed_not_errors(tmp_path):
    write_patient(tmp_path, "P001", seed=1)
    (tmp_path / "P001" / "README").write_text("exported by PACS")
    cohort = load_cohort(tmp_path, STRICT)
    assert cohort.manifest["ignored_files"] == ["P001/README"]


def test_missing_sequence(tmp_path):
    two_patients(tmp_path, sequences=("T1WI", "CE-T1WI"))
    e, _ = assert_raises_then_skips(tmp_path, CohortError, "missing sequence")
    assert "T2WI" in str(e) and "T1_TSE_TRA" in str(e)


def test_rtstruct_of_a_series_not_in_the_cohort(tmp_path):
    good, bad = two_patients(tmp_path, with_rtstruct=False)
    g = bad.geometry["T2WI"]
    # an RTSTRUCT drawn on another T2 series of P002 that was not exported
    other = write_mr_series(tmp_path.parent / f"{tmp_path.name}_elsewhere", make_image(), g, patient_id="P002",
                            study_uid=bad.series["T2WI"].study_uid, series_description="T2 other",
                            frame_of_reference_uid=bad.series["T2WI"].frame_of_reference_uid, series_number=30)
    rt = tmp_path / "P002" / "RS_other.dcm"
    write_rtstruct(rt, other, {"GTV": mask_to_contours(bad.truth["T2WI"]["GTV"], g)}, geometry=g)
    e, _ = assert_raises_then_skips(tmp_path, RTStructError, "not in this cohort", file_part="RS_other.dcm")
    assert other.series_uid in str(e)


def test_rtstruct_referencing_another_patients_series(tmp_path):
    good, bad = two_patients(tmp_path, with_rtstruct=False)
    g = good.geometry["T1WI"]
    ws = dataclasses.replace(good.series["T1WI"], patient_id="P002")   # P001's series, P002's ID
    rt = tmp_path / "P002" / "RS_swapped.dcm"
    write_rtstruct(rt, ws, {"GTV": mask_to_contours(good.truth["T1WI"]["GTV"], g)}, geometry=g)
    e, _ = assert_raises_then_skips(tmp_path, RTStructError, "another patient", file_part="RS_swapped.dcm")
    assert "P001" in str(e)


def test_rtstruct_with_another_frame_of_reference(tmp_path):
    _, bad = two_patients(tmp_path, with_rtstruct=False)
    g = bad.geometry["T1WI"]
    ws = dataclasses.replace(bad.series["T1WI"], frame_of_reference_uid="1.2.3.4.5.6")
    write_rtstruct(tmp_path / "P002" / "RS.dcm", ws, {"GTV": mask_to_contours(bad.truth["T1WI"]["GTV"], g)},
                   geometry=g)
    assert_raises_then_skips(tmp_path, RTStructError, "frame of reference", file_part="RS.dcm")


def test_empty_gtv_roi(tmp_path):
    two_patients(tmp_path, extra_rois={"GTVnx": []})     # the primary ROI without contours
    e, _ = assert_raises_then_skips(tmp_path, RTStructError, "empty")
    assert "'GTVnx' (mapped to GTV) is empty: it has no contour" in str(e) and "RS_" in e.file


def test_empty_node_roi_is_a_warning(tmp_path):
    # N0: clinics keep an empty node ROI; another empty node ROI beside drawn ones is noted too
    write_patient(tmp_path, "P001", seed=1, extra_rois={"GTVnd_L": [], "GTVnd_R": []})
    write_patient(tmp_path, "P002", seed=2, extra_rois={"GTVnd_R2": []})
    cohort = load_cohort(tmp_path, STRICT)
    w1 = cohort.manifest["patients"]["P001"]["sequences"]["T2WI"]["warnings"]
    assert any("'GTVnd_L' is empty (it has no contour): no GTVln" in w for w in w1), w1
    assert set(cohort.load_patient("P001").series["T2WI"].masks) == {"GTV"}
    w2 = cohort.manifest["patients"]["P002"]["sequences"]["T2WI"]["warnings"]
    assert any("'GTVnd_R2' is empty" in w and "comes from the other ROI" in w for w in w2), w2
    assert set(cohort.load_patient("P002").series["T2WI"].masks) == {"GTV", "GTVln"}
    # one sequence read alone is the same series
    alone = cohort.load_patient("P002", ["T2WI"])
    assert list(alone.series) == ["T2WI"] and set(alone.series["T2WI"].masks) == {"GTV", "GTVln"}
    np.testing.assert_array_equal(alone.series["T2WI"].image, cohort.load_patient("P002").series["T2WI"].image)


def test_no_roi_for_the_primary(tmp_path):
    two_patients(tmp_path, roi_names=("Tumour", "GTVnd_L", "GTVnd_R"))
    e, _ = assert_raises_then_skips(tmp_path, RTStructError, "no ROI maps to GTV")
    assert "'Tumour'" in str(e)


def test_unmatched_rois_are_listed(tmp_path):
    g = make_geometry()
    box = np.zeros((12, 48, 48), bool)
    box[3:5, 10:14, 10:14] = True
    write_patient(tmp_path, "P001", seed=1, extra_rois={"Brainstem": mask_to_contours(box, g),
                                                         "GTV_total": mask_to_contours(box, g)})
    cohort = load_cohort(tmp_path, STRICT)
    info = cohort.manifest["patients"]["P001"]["sequences"]["T1WI"]
    assert info["unmatched_rois"] == ["Brainstem", "GTV_total"]
    assert any("GTV_total" in w and "looks like a tumour" in w for w in info["warnings"])
    assert "Brainstem" in cohort.summary()


def test_only_unmatched_rois_is_an_error_until_configured(tmp_path):
    two_patients(tmp_path, roi_names=("Tumour", "Node_a", "Node_b"))
    e, _ = assert_raises_then_skips(tmp_path, RTStructError, "maps to GTV or GTVln")
    assert "'Tumour'" in str(e) and "roi_patterns" in str(e)
    d = CohortConfig().roi_patterns
    cfg = CohortConfig(roi_patterns={"GTVln": d["GTVln"] + (r"^node\w*$",), "GTV": d["GTV"] + (r"^tumou?r$",)})
    p = load_cohort(tmp_path, cfg).load_patient("P002")
    assert set(p.series["T1WI"].masks) == {"GTV", "GTVln"}


def test_contour_off_the_grid(tmp_path):
    _, bad = two_patients(tmp_path, with_rtstruct=False)
    g = bad.geometry["T1WI"]
    big = make_geometry(shape=(16, 48, 48))           # 4 slices past the series' end
    m = np.zeros((16, 48, 48), bool)
    m[14, 10:20, 10:20] = True
    ws = bad.series["T1WI"]
    ws16 = dataclasses.replace(ws, sop_instance_uids=ws.sop_instance_uids + ws.sop_instance_uids[:4])
    write_rtstruct(tmp_path / "P002" / "RS.dcm", ws16, {"GTV": mask_to_contours(m, big)}, geometry=big)
    assert g.size[2] == 12
    assert_raises_then_skips(tmp_path, RTStructError, "outside the series", file_part="RS.dcm")


def test_duplicate_patient_id(tmp_path):
    write_patient(tmp_path / "site_a", "P001", seed=1, patient_name="Chan^Tai Man")
    write_patient(tmp_path / "site_b", "P001", seed=7, patient_name="Wong^Siu Ming")
    write_patient(tmp_path, "P002", seed=2)
    write_clinical(tmp_path / "clinical.csv", ["P001", "P002"])
    with pytest.raises(CohortError, match="duplicate patient ID") as ei:
        load_cohort(tmp_path, STRICT)
    assert ei.value.patient == "P001" and "CHAN TAI MAN" in str(ei.value) and "WONG SIU MING" in str(ei.value)
    cohort = load_cohort(tmp_path, SKIP)
    assert cohort.patient_ids == ["P002"] and cohort.manifest["skipped"][0]["patient"] == "P001"


def test_clinical_row_without_images(tmp_path):
    write_patient(tmp_path, "P001", seed=1)
    write_clinical(tmp_path / "clinical.csv", ["P001", "P009"])
    with pytest.raises(CohortError, match="no images") as ei:
        load_cohort(tmp_path, STRICT)
    assert ei.value.patient == "P009" and ei.value.file.endswith("clinical.csv")
    cohort = load_cohort(tmp_path, SKIP)
    assert cohort.patient_ids == ["P001"] and cohort.manifest["clinical_only"] == ["P009"]
    assert list(cohort.clinical.index) == ["P001"]


def test_images_without_clinical_row(tmp_path):
    write_patient(tmp_path, "P001", seed=1)
    write_patient(tmp_path, "P002", seed=2)
    write_clinical(tmp_path / "clinical.csv", ["P001"])
    e, cohort = assert_raises_then_skips(tmp_path, CohortError, "no row in the clinical table",
                                         file_part="clinical.csv")
    assert cohort.manifest["image_only"] == ["P002"]
    assert cohort.manifest["skipped"][0]["found"]["T2WI"] == "t2_tse_fs_tra"
    assert "images found: T1WI 'T1_TSE_TRA'" in cohort.summary()


def test_bad_clinical_cells(tmp_path):
    write_patient(tmp_path, "P001", seed=1)
    write_patient(tmp_path, "P002", seed=2)
    rows = [clinical_row("P001", 0), clinical_row("P002", 1)]
    rows[1]["age"] = "old"
    rows[1]["gender"] = "?"
    write_clinical(tmp_path / "clinical.csv", None, rows)
    with pytest.raises(ClinicalTableError) as ei:
        load_cohort(tmp_path, STRICT)
    assert {(p["row"], p["column"]) for p in ei.value.problems} == {(3, "age"), (3, "gender")}
    cohort = load_cohort(tmp_path, SKIP)
    assert cohort.patient_ids == ["P001"]
    (rec,) = cohort.manifest["skipped"]
    assert rec["patient"] == "P002" and rec["error"] == "ClinicalTableError" and "'age'" in rec["message"]


def test_missing_folder_and_unknown_patient(tmp_path):
    with pytest.raises(CohortError, match="does not exist"):
        load_cohort(tmp_path / "nope", STRICT)
    write_patient(tmp_path, "P001", seed=1)
    cohort = load_cohort(tmp_path, STRICT)
    with pytest.raises(CohortError, match="not a usable patient"):
        cohort.load_patient("P404")


def test_errors_are_input_errors_with_a_dict():
    e = RTStructError("x", patient="P1", file="f.dcm", expected="y")
    assert isinstance(e, InputError) and e.to_dict()["file"] == "f.dcm"


def test_truncated_rtstruct(tmp_path):
    _, bad = two_patients(tmp_path)
    rt = bad.rtstructs["T1WI"]
    raw = rt.read_bytes()
    rt.write_bytes(raw[: len(raw) // 2])
    # pydicom reads what is there; the cut-off contour item is what gives it away
    assert_raises_then_skips(tmp_path, RTStructError, "ROIContourSequence", file_part=rt.name)


def test_a_broken_extra_series_is_ignored_when_another_gives_the_sequence(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    g = make_geometry((4, 48, 48))
    ws = write_mr_series(tmp_path / "P001" / "t2_cor", make_image((4, 48, 48)), g, patient_id="P001",
                         study_uid=wp.series["T2WI"].study_uid, series_description="T2_TSE_COR",
                         frame_of_reference_uid=wp.series["T2WI"].frame_of_reference_uid, series_number=40)
    ds = pydicom.dcmread(ws.paths[1])
    ds.ImagePositionPatient = pydicom.dcmread(ws.paths[0]).ImagePositionPatient  # a repeated slice
    ds.save_as(ws.paths[1])
    cohort = load_cohort(tmp_path, STRICT)
    (ign,) = cohort.manifest["patients"]["P001"]["ignored_series"]
    assert ign["description"] == "T2_TSE_COR" and "not usable" in ign["reason"] and "same position" in ign["reason"]


def test_slice_without_a_required_tag(tmp_path):
    _, bad = two_patients(tmp_path)
    p = bad.series["T1WI"].paths[6]
    ds = pydicom.dcmread(p)
    del ds.ImagePositionPatient
    ds.save_as(p)
    e, _ = assert_raises_then_skips(tmp_path, DicomError, "no valid ImagePositionPatient", file_part=p.name)
