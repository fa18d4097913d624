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


# ---- item 4: compressed transfer syntaxes that PACS exports use

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


def jpeg_lossless_sv1(img: np.ndarray, precision: int = 16) -> bytes:
    """Encode a 2-D unsigned image as JPEG Lossless, Process 14, first-order prediction (SV1),
    the transfer syntax 1.2.840.10008.1.2.4.70 that PACS exports most. No encoder for it exists
    in pydicom's plugins, so this small one (ITU T.81 Annex H) makes the test data: one Huffman
    table giving every difference category 0..16 a 5-bit code."""
    rows, cols = img.shape
    x = img.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    mod = 1 << 16
    diff = (x - pred) % mod
    diff = np.where(diff >= mod // 2, diff - mod, diff).ravel()
    out = bytearray()
    acc, nacc = 0, 0
    for d in diff.tolist():
        if d == 0:
            ssss, extra = 0, 0
        elif d == -32768:
            ssss, extra = 16, 0
        else:
            ssss = abs(d).bit_length()
            extra = d if d > 0 else d + (1 << ssss) - 1
        acc = (acc << 5) | ssss                     # canonical code of symbol s with 17 codes of length 5 is s
        nacc += 5
        if 0 < ssss < 16:
            acc = (acc << ssss) | extra
            nacc += ssss
        while nacc >= 8:
            nacc -= 8
            byte = (acc >> nacc) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)
        acc &= (1 << nacc) - 1
    if nacc:
        byte = ((acc << (8 - nacc)) | ((1 << (8 - nacc)) - 1)) & 0xFF
        out.append(byte)
        if byte == 0xFF:
            out.append(0x00)
    sof = bytes([0xFF, 0xC3, 0, 11, precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") \
        + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17
    dht = bytes([0xFF, 0xC4, 0, 36, 0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0])
    return b"\xFF\xD8" + sof + dht + sos + bytes(out) + b"\xFF\xD9"


def recompress(paths, syntax: str) -> None:
    """Rewrite each slice in ``syntax``: JPEG Lossless SV1 (own encoder), JPEG-LS or JPEG 2000
    lossless (pydicom's encoders)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless
    for p in paths:
        ds = pydicom.dcmread(p)
        if syntax == "jpeg-lossless":
            ds.PixelData = encapsulate([jpeg_lossless_sv1(ds.pixel_array, ds.BitsStored)])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            ds.file_meta.TransferSyntaxUID = JPEG_LOSSLESS_SV1
        else:
            ds.compress({"jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}[syntax])
        ds.save_as(p)


def test_own_jpeg_lossless_encoder_round_trips_through_pylibjpeg():
    img = np.random.default_rng(0).integers(0, 65536, (9, 13)).astype(np.uint16)
    img[0, :4] = [0, 65535, 0, 32768]          # extreme differences, including -32768
    from pydicom.pixels.decoders import JPEGLosslessSV1Decoder
    assert JPEGLosslessSV1Decoder.is_available
    from io import BytesIO
    from pydicom.dataset import Dataset, FileMetaDataset
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG_LOSSLESS_SV1
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 9, 13, 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    from pydicom.encaps import encapsulate
    ds.PixelData = encapsulate([jpeg_lossless_sv1(img)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    assert np.array_equal(ds.pixel_array, img)


def test_jpeg_lossless_jpeg_ls_and_jpeg2000_series_are_read(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1, random_names=False, shuffle_instances=False)
    for seq, syntax in (("T2WI", "jpeg-lossless"), ("T1WI", "jpeg-ls"), ("CE-T1WI", "jpeg2000")):
        recompress(wp.series[seq].paths, syntax)
    assert pydicom.dcmread(wp.series["T2WI"].paths[0]).file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    cohort = load_cohort(tmp_path, STRICT)
    p = cohort.load_patient("P001")
    for seq, s in p.series.items():
        np.testing.assert_allclose(s.image, wp.images[seq], atol=1e-3, err_msg=seq)   # lossless
        assert np.array_equal(s.masks["GTV"], wp.truth[seq]["GTV"])


def test_inspect_reports_a_series_it_cannot_decode(tmp_path):
    from pydicom.encaps import encapsulate
    write_patient(tmp_path, "P001", seed=1)
    bad = write_patient(tmp_path, "P002", seed=2)
    for p in bad.series["T2WI"].paths:
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])    # MPEG-2: no decoder
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.save_as(p)
    write_clinical(tmp_path / "clinical.csv", ["P001", "P002"])
    cohort, text = inspect_cohort(tmp_path)                     # was: P002 listed as usable
    assert cohort.patient_ids == ["P001"]
    (skip,) = cohort.manifest["skipped"]
    assert skip["patient"] == "P002" and "cannot read the pixel data" in skip["problem"]
    assert "MPEG2" in skip["problem"] and any(skip["file"] == str(p) for p in bad.series["T2WI"].paths)
    assert "P002" in text and "cannot read the pixel data" in text


# ---- DICOM SEG as a mask source

def test_seg_only_patient_gives_gtv_and_gtvln(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1, with_rtstruct=False)
    for seq in wp.series:
        write_seg(wp.folder / f"SEG_{seq}.dcm", wp.series[seq].paths,
                  {"GTVp": wp.truth[seq]["GTV"], "GTVnd": wp.truth[seq]["GTVln"], "Brainstem":
                   np.zeros_like(wp.truth[seq]["GTV"]) | wp.truth[seq]["GTV"]}, seed=f"seg{seq}")
    cohort = load_cohort(tmp_path, STRICT)
    info = cohort.manifest["patients"]["P001"]["sequences"]["T2WI"]
    assert info["mask_source"] == "SEG" and info["structures"] == {"GTV": ["GTVp"], "GTVln": ["GTVnd"]}
    assert info["unmatched_rois"] == ["Brainstem"] and info["segs"][0].endswith("SEG_T2WI.dcm")
    p = cohort.load_patient("P001")
    for seq, s in p.series.items():
        assert np.array_equal(s.masks["GTV"], wp.truth[seq]["GTV"]), seq
        assert np.array_equal(s.masks["GTVln"], wp.truth[seq]["GTVln"]), seq


def test_rtstruct_wins_over_seg_on_the_same_series(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    other = np.zeros_like(wp.truth["T2WI"]["GTV"])
    other[5:7, 10:20, 10:20] = True
    seg = write_seg(wp.folder / "SEG.dcm", wp.series["T2WI"].paths, {"GTV": other})
    cohort = load_cohort(tmp_path, STRICT)
    rec = cohort.manifest["patients"]["P001"]
    assert rec["sequences"]["T2WI"]["mask_source"] == "RTSTRUCT"
    (note,) = [n for n in rec["ignored_rtstructs"] if n["file"].endswith(seg.name)]
    assert "RTSTRUCT on the same series" in note["reason"] and "wins" in note["reason"]
    p = cohort.load_patient("P001")
    assert np.array_equal(p.series["T2WI"].masks["GTV"], wp.truth["T2WI"]["GTV"])


# ---- every one of those in one folder: inspect --skip-bad reads the good, names the bad

def test_inspect_skip_bad_on_everything_at_once(tmp_path, capsys):
    from npc_msom.cli import main
    from test_public_dataset import write_nifti_mask, write_public_patient

    write_patient(tmp_path, "P001", seed=1)                                     # plain
    wp = write_patient(tmp_path, "P002", seed=2)                                # RTSTRUCT on a CT, no study ref
    extra_series_with_rtstruct(wp, description="CT planning", modality="CT")
    wp = write_patient(tmp_path, "P003", seed=3)                                # 1-bit SEG beside RTSTRUCTs
    write_seg(wp.folder / "SEG.dcm", wp.series["T2WI"].paths, {"GTV": wp.truth["T2WI"]["GTV"]})
    wp = write_patient(tmp_path, "P004", seed=4, with_rtstruct=False)            # SEG only, JPEG Lossless
    for seq in wp.series:
        write_seg(wp.folder / f"SEG_{seq}.dcm", wp.series[seq].paths, {"GTV": wp.truth[seq]["GTV"]},
                  seed=f"P004{seq}")
    recompress(wp.series["T2WI"].paths, "jpeg-lossless")
    bad = write_patient(tmp_path, "P005", seed=5)                               # undecodable pixels
    ds = pydicom.dcmread(bad.series["CE-T1WI"].paths[6])
    from pydicom.encaps import encapsulate
    ds.PixelData = encapsulate([bytes(32)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.save_as(bad.series["CE-T1WI"].paths[6])
    bad_decode = bad.series["CE-T1WI"].paths[6]
    write_public_patient(tmp_path, "001", 1)                                   # public layout
    write_public_patient(tmp_path, "002", 2)
    bad_mask = tmp_path / "MRI-Segments" / "002" / "ROI-T1.nii"                 # mask off its series
    g = make_geometry(origin=(500.0, 0.0, 0.0))
    write_nifti_mask(bad_mask, truth_masks(g)["GTV"], g)

    assert main(["inspect", str(tmp_path), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    cohort, _ = inspect_cohort(tmp_path)
    assert cohort.patient_ids == ["001", "P001", "P002", "P003", "P004"]
    for pid in cohort.patient_ids:
        p = cohort.load_patient(pid)
        assert all("GTV" in s.masks for s in p.series.values()) and len(p.series) == 3, pid
    skipped = out.split("Skipped:")[1].splitlines()
    lines = [ln for ln in skipped if ln.startswith("  ") and not ln.startswith("      ")]
    assert len(lines) == 2
    assert "patient 002" in lines[0] and str(bad_mask) in lines[0]
    assert "patient P005" in lines[1] and str(bad_decode) in lines[1]


# ---- item 7: minor things real exports do

def test_series_without_description_is_named_by_number_and_folder(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    study = pydicom.dcmread(wp.series["T1WI"].paths[0]).StudyInstanceUID
    write_mr_series(wp.folder / "extra", make_image(), make_geometry(), patient_id="P001", study_uid=study,
                    frame_of_reference_uid=make_uid("x"), series_description="", series_number=41,
                    seed_uid="P001|nodesc")
    cohort, text = inspect_cohort(tmp_path)
    (ig,) = [i for i in cohort.manifest["patients"]["P001"]["ignored_series"] if i["series_number"] == 41]
    assert ig["description"] == "" and ig["folder"] == "P001/extra"          # was: '' only
    assert "ignored series series 41 (no description) in P001/extra" in text


def test_gzipped_files_are_listed_not_dropped(tmp_path):
    import gzip
    wp = write_patient(tmp_path, "P001", seed=1)
    gz = wp.folder / "IM_extra.dcm.gz"
    gz.write_bytes(gzip.compress(wp.series["T2WI"].paths[0].read_bytes()))
    cohort, text = inspect_cohort(tmp_path)
    (a,) = cohort.manifest["archives"]                                      # was: silently ignored
    assert a["file"] == "P001/IM_extra.dcm.gz" and "gunzip" in a["reason"]
    assert "Not read: P001/IM_extra.dcm.gz" in text


def test_magnitude_and_phase_in_one_series_are_split_by_image_type(tmp_path):
    wp = write_patient(tmp_path, "P001", seed=1)
    mag = wp.series["T2WI"]
    for p in mag.paths:
        ds = pydicom.dcmread(p)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.save_as(p)
    d0 = pydicom.dcmread(mag.paths[0])
    write_mr_series(mag.paths[0].parent, make_image(seed=99), wp.geometry["T2WI"], patient_id="P001",
                    study_uid=d0.StudyInstanceUID, frame_of_reference_uid=d0.FrameOfReferenceUID,
                    series_description=d0.SeriesDescription, series_number=int(d0.SeriesNumber),
                    seed_uid="P001|phase", file_name=lambda k, uid: f"PH{k:03d}",
                    extra_tags={"SeriesInstanceUID": d0.SeriesInstanceUID,
                                "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]})
    cohort = load_cohort(tmp_path, STRICT)                     # was: two slices at the same position
    rec = cohort.manifest["patients"]["P001"]
    assert rec["sequences"]["T2WI"]["n_files"] == 12
    (ig,) = [i for i in rec["ignored_series"] if "phase" in i["reason"]]
    assert ig["n_files"] == 12 and "magnitude images were used" in ig["reason"]
    s = cohort.load_patient("P001").series["T2WI"]
    np.testing.assert_allclose(s.image, wp.images["T2WI"], atol=1e-3)


def test_seg_whose_segments_map_to_nothing_names_the_file(tmp_path):
    from npc_msom.errors import DicomError
    wp = write_patient(tmp_path, "P001", seed=1, with_rtstruct=False)
    seg = write_seg(wp.folder / "SEG.dcm", wp.series["T1WI"].paths, {"Brainstem": wp.truth["T1WI"]["GTV"]})
    with pytest.raises(DicomError, match="none of the segments") as ei:
        load_cohort(tmp_path, STRICT)
    assert ei.value.patient == "P001" and ei.value.file == str(seg) and "'Brainstem'" in ei.value.problem
