"""What real hospital and planning-system exports do that our own writer does not (issue 10).

Each test builds its files in the test (pydicom, the project's writer) and fails on the reader
as it was before the fix it covers.
"""
import numpy as np
import pydicom
import pytest

from npc_msom.cohort import inspect_cohort, load_cohort
from npc_msom.config import CohortConfig
from npc_msom.synth.dicom_writer import make_uid, mask_to_contours, write_mr_series, write_rtstruct

from cohort_fixtures import (make_geometry, make_image, truth_masks, write_clinical, write_patient)

STRICT = CohortConfig()


def drop_study_reference(rt_path):
    """Remove the optional RTReferencedStudySequence, as many planning systems do: the RTSTRUCT
    then names its images only through ContourImageSequence in each contour."""
    ds = pydicom.dcmread(rt_path)
    for fr in ds.ReferencedFrameOfReferenceSequence:
        del fr.RTReferencedStudySequence
    ds.save_as(rt_path)


def extra_series_with_rtstruct(wp, *, description, modality="MR", folder="extra"):
    """A further series of ``wp`` (same study and frame of reference) and an RTSTRUCT drawn on it
    without a study reference. Returns the RTSTRUCT path."""
    g = make_geometry()
    study = pydicom.dcmread(wp.series["T1WI"].paths[0]).StudyInstanceUID
    frame = pydicom.dcmread(wp.series["T1WI"].paths[0]).FrameOfReferenceUID
    extra = {"Modality": modality}
    if modality == "CT":
        extra["SOPClassUID"] = "1.2.840.10008.5.1.4.1.1.2"
    ws = write_mr_series(wp.folder / folder, make_image(seed=7), g, patient_id=wp.patient_id,
                         study_uid=study, frame_of_reference_uid=frame, series_description=description,
                         series_number=40, seed_uid=f"{wp.patient_id}|{folder}", extra_tags=extra)
    t = truth_masks(g)
    rt = wp.folder / f"RS_{folder}.dcm"
    write_rtstruct(rt, ws, {"GTV": mask_to_contours(t["GTV"], g)}, geometry=g,
                   seed_uid=f"{wp.patient_id}|{folder}|rt")
    drop_study_reference(rt)
    return rt


# ---- item 1: an RTSTRUCT without RTReferencedStudySequence on a series we do not use

@pytest.mark.parametrize("modality, description", [("CT", "CT planning"),
                                                   ("MR", "survey_unknown_weighting")])
def test_rtstruct_without_study_reference_on_an_ignored_series_is_noted(tmp_path, modality, description):
    good = write_patient(tmp_path, "P001", seed=1)
    wp = write_patient(tmp_path, "P002", seed=2)
    rt = extra_series_with_rtstruct(wp, description=description, modality=modality)
    write_clinical(tmp_path / "clinical.csv", ["P001", "P002"])
    cohort = load_cohort(tmp_path, STRICT)          # was: KeyError in _match_rtstruct
    assert cohort.patient_ids == ["P001", "P002"]
    rec = cohort.manifest["patients"]["P002"]
    (note,) = rec["ignored_rtstructs"]
    assert note["file"].endswith(rt.name) and description in note["reason"]
    assert rec["sequences"]["T1WI"]["structures"]["GTV"] == ["GTVnx"]
    p = cohort.load_patient("P002")
    assert np.array_equal(p.series["T2WI"].masks["GTV"], wp.truth["T2WI"]["GTV"])
    assert good.patient_id in cohort.patient_ids


def test_rtstruct_without_study_reference_on_a_used_series_is_matched_by_its_images(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    for rt in wp.rtstructs.values():
        drop_study_reference(rt)
    cohort = load_cohort(tmp_path, STRICT)
    p = cohort.load_patient("P001")
    for seq, s in p.series.items():
        assert np.array_equal(s.masks["GTV"], wp.truth[seq]["GTV"]), seq


# ---- DICOM SEG, written with highdicom as AI auto-segmentation tools do

def write_seg(path, series_paths, masks: dict, *, seed: str = "seg"):
    """A BINARY (1-bit) DICOM SEG on the slices ``series_paths`` (z order): one segment per
    label -> (z, y, x) bool mask. Empty frames are omitted, as highdicom does by default."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    sources = [pydicom.dcmread(p) for p in series_paths]
    labels = list(masks)
    stack = np.stack([np.asarray(masks[k], bool) for k in labels], axis=-1).astype(np.uint8)
    descs = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=k,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type="MANUAL") for i, k in enumerate(labels)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=stack, segmentation_type="BINARY", segment_descriptions=descs,
        series_instance_uid=make_uid(seed, "series"), series_number=300, sop_instance_uid=make_uid(seed, "sop"),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
        device_serial_number="1")
    seg.save_as(path)
    return path


# ---- item 2: a valid 1-bit SEG is not a truncated file

def test_one_bit_seg_is_not_called_truncated(tmp_path):
    write_patient(tmp_path, "P001", seed=1)
    wp = write_patient(tmp_path, "P002", seed=2)
    seg = write_seg(wp.folder / "SEG.dcm", wp.series["T2WI"].paths, {"GTV": wp.truth["T2WI"]["GTV"]})
    ds = pydicom.dcmread(seg)
    assert ds.BitsAllocated == 1 and ds.Modality == "SEG"
    write_clinical(tmp_path / "clinical.csv", ["P001", "P002"])
    cohort = load_cohort(tmp_path, CohortConfig(skip_bad=True))
    assert cohort.patient_ids == ["P001", "P002"], cohort.manifest["skipped"]   # was: P002 dropped
    assert cohort.manifest["unreadable_files"] == [] and cohort.manifest["skipped"] == []
    load_cohort(tmp_path, STRICT)


# ---- item 5: contours through pixel centres of an oblique series

def test_tilted_square_through_pixel_centres_fills_every_pixel():
    from npc_msom.cohort.rtstruct import fill_polygons
    tilt = 1e-9
    square = np.array([[2, 2], [8, 2 + tilt], [8, 8], [2, 8 - tilt]], float)
    got = fill_polygons([square], (12, 12))
    want = np.zeros((12, 12), bool)
    want[2:9, 2:9] = True
    assert got.sum() == 49 and np.array_equal(got, want)                 # was: 39
    # a hole whose edges run through pixel centres keeps its border pixels (on a contour = inside)
    hole = np.array([[4, 4 - tilt], [6, 4], [6, 6 + tilt], [4, 6]], float)
    got = fill_polygons([square, hole], (12, 12))
    want[5, 5] = False
    assert np.array_equal(got, want)


def test_oblique_series_contours_through_pixel_centres_dice_one(tmp_path):
    from npc_msom.synth.dicom_writer import index_to_lps
    from cohort_fixtures import dice, rotation
    g = make_geometry(direction=rotation(17, 11))
    nz, ny, nx = 12, 48, 48
    truth = np.zeros((nz, ny, nx), bool)
    contours = []
    for k in range(3, 9):
        # an L shape with vertices on pixel centres: rows 10..30 x cols 12..35 minus rows 21..30 x cols 25..35
        r0, r1, c0, c1, rm, cm = 10 + k % 3, 30, 12, 35 - k % 2, 20, 24
        truth[k, r0:r1 + 1, c0:c1 + 1] = True
        truth[k, rm + 1:r1 + 1, cm + 1:c1 + 1] = False
        rc = np.array([[r0, c0], [r0, c1], [rm, c1], [rm, cm], [r1, cm], [r1, c0]], float)
        kij = np.column_stack([np.full(len(rc), float(k)), rc])
        contours.append(index_to_lps(kij, g))
    study, frame = make_uid("obl", "study"), make_uid("obl", "for")
    rts = {}
    for n, (seq, desc) in enumerate({"T1WI": "T1_TSE_TRA", "T2WI": "T2_TSE_TRA",
                                     "CE-T1WI": "T1_TSE_TRA_POST"}.items()):
        ws = write_mr_series(tmp_path / "OBL" / seq, make_image(seed=n), g, patient_id="OBL", study_uid=study,
                             frame_of_reference_uid=frame, series_description=desc, series_number=n + 1)
        rts[seq] = write_rtstruct(tmp_path / "OBL" / f"RS_{seq}.dcm", ws, {"GTV": contours}, geometry=g)
    p = load_cohort(tmp_path, STRICT).load_patient("OBL")
    for seq, s in p.series.items():
        assert dice(s.masks["GTV"], truth) == 1.0, seq                  # was: about 0.99
