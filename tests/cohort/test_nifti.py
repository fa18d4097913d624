import numpy as np
import pytest
import SimpleITK as sitk

from npc_msom.cohort import load_cohort
from npc_msom.cohort.nifti import label_name
from npc_msom.config import CohortConfig
from npc_msom.errors import CohortError, NiftiError

from cohort_fixtures import make_geometry, make_image, rotation, truth_masks, write_clinical, write_patient

NAMES = {"T1WI": "T1", "T2WI": "T2", "CE-T1WI": "T1C"}


def _sitk(arr, g):
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(g.origin_mm)
    img.SetSpacing(g.spacing_mm)
    img.SetDirection(g.direction)
    return img


def write_nifti_patient(root, pid, *, style="img", direction=None, labels=True, label_override=None):
    g = make_geometry(direction=direction)
    t = truth_masks(g)
    lab = np.zeros((12, 48, 48), np.uint8)
    lab[t["GTV"]] = 1
    lab[t["GTVln_L"] | t["GTVln_R"]] = 2
    if label_override is not None:
        lab = label_override
    folder = root / pid
    folder.mkdir(parents=True)
    images = {}
    for n, (seq, short) in enumerate(NAMES.items()):
        img = make_image(seed=n)
        name = f"{short}_img.nii.gz" if style == "img" else f"{pid}_{short}.nii.gz"
        sitk.WriteImage(_sitk(img, g), str(folder / name))
        if labels:
            sitk.WriteImage(_sitk(lab, g), str(folder / label_name(name, "_mask")))
        images[seq] = img
    return g, images, {"GTV": t["GTV"] & ~(t["GTVln_L"] | t["GTVln_R"]), "GTVln": t["GTVln_L"] | t["GTVln_R"]}


@pytest.mark.parametrize("style", ["img", "prefixed"])
def test_nifti_folders(tmp_path, style):
    g, images, truth = write_nifti_patient(tmp_path, "N01", style=style, direction=rotation(10, 5))
    write_nifti_patient(tmp_path, "N02", style=style)
    write_clinical(tmp_path / "clinical.csv", ["N01", "N02"])
    cohort = load_cohort(tmp_path, CohortConfig())
    assert cohort.patient_ids == ["N01", "N02"]
    rec = cohort.manifest["patients"]["N01"]
    assert rec["source"] == "nifti" and rec["sequences"]["T2WI"]["structures"] == {"GTV": ["label 1"],
                                                                                   "GTVln": ["label 2"]}
    assert rec["sequences"]["T2WI"]["orientation"].startswith("oblique")
    p = cohort.load_patient("N01")
    for seq, s in p.series.items():
        np.testing.assert_allclose(s.image, images[seq], atol=1e-5)
        np.testing.assert_allclose(s.geometry.direction, g.direction, atol=1e-6)
        np.testing.assert_allclose(s.geometry.origin_mm, g.origin_mm, atol=1e-4)
        assert np.array_equal(s.masks["GTV"], truth["GTV"]) and np.array_equal(s.masks["GTVln"], truth["GTVln"])
    assert p.outcome is not None


def test_label_names():
    assert label_name("T1_img.nii.gz", "_mask") == "T1_mask.nii.gz"
    assert label_name("P1_T1C.nii", "_mask") == "P1_T1C_mask.nii"


def test_missing_label_file_is_a_warning(tmp_path):
    write_nifti_patient(tmp_path, "N01", labels=False)
    cohort = load_cohort(tmp_path, CohortConfig())
    w = cohort.manifest["patients"]["N01"]["sequences"]["T1WI"]["warnings"]
    assert any("no label file T1_mask.nii.gz" in x for x in w)
    assert cohort.load_patient("N01").series["T1WI"].masks == {}


def test_bad_label_values(tmp_path):
    lab = np.zeros((12, 48, 48), np.uint8)
    lab[5, 10:20, 10:20] = 3
    write_nifti_patient(tmp_path, "N01", label_override=lab)
    write_nifti_patient(tmp_path, "N02")
    with pytest.raises(NiftiError, match="values 3") as ei:
        load_cohort(tmp_path, CohortConfig())
    assert ei.value.patient == "N01" and ei.value.file.endswith("_mask.nii.gz")
    cohort = load_cohort(tmp_path, CohortConfig(skip_bad=True))
    assert cohort.patient_ids == ["N02"] and cohort.manifest["skipped"][0]["error"] == "NiftiError"


def test_corrupt_nifti_and_label_on_another_grid(tmp_path):
    write_nifti_patient(tmp_path, "N01")
    (tmp_path / "N01" / "T2_img.nii.gz").write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(NiftiError, match="cannot read") as ei:
        load_cohort(tmp_path, CohortConfig())
    assert ei.value.file.endswith("T2_img.nii.gz") and ei.value.patient == "N01"
    write_nifti_patient(tmp_path, "N02")
    g2 = make_geometry(spacing=(1.0, 1.0, 4.0))
    sitk.WriteImage(_sitk(np.zeros((12, 48, 48), np.uint8), g2), str(tmp_path / "N02" / "T1_mask.nii.gz"))
    cohort = load_cohort(tmp_path, CohortConfig(skip_bad=True))
    assert cohort.patient_ids == []
    msgs = {s["patient"]: s["message"] for s in cohort.manifest["skipped"]}
    assert "cannot read" in msgs["N01"] and "differs from its image" in msgs["N02"]


def test_two_files_for_one_sequence(tmp_path):
    write_nifti_patient(tmp_path, "N01")
    sitk.WriteImage(_sitk(make_image(), make_geometry()), str(tmp_path / "N01" / "T1.nii.gz"))
    with pytest.raises(NiftiError, match="2 files match sequence T1WI"):
        load_cohort(tmp_path, CohortConfig())


def test_missing_nifti_sequence(tmp_path):
    write_nifti_patient(tmp_path, "N01")
    (tmp_path / "N01" / "T1C_img.nii.gz").unlink()
    with pytest.raises(CohortError, match="missing sequence.*CE-T1WI"):
        load_cohort(tmp_path, CohortConfig())


def test_same_patient_as_dicom_and_nifti(tmp_path):
    write_patient(tmp_path / "dicom", "P001", seed=1)
    write_nifti_patient(tmp_path / "nifti", "P001")
    with pytest.raises(CohortError, match="duplicate patient ID.*both DICOM files and a NIfTI folder"):
        load_cohort(tmp_path, CohortConfig())
