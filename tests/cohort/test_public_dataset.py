"""The public NPC MRI dataset's layout (Li Y et al., Sci Data 2025; Zenodo 10.5281/zenodo.10900202):
MRI-Segments/<NNN>/{T1WI,T2WI,CE-T1WI}/ DICOM slices + ROI-T1.nii, ROI-T2.nii, ROI-CE-T1.nii,
PatientID emptied by the authors' de-identification, PatientName the folder number."""
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from npc_msom.cohort import inspect_cohort, load_cohort
from npc_msom.config import SEQUENCES, CohortConfig
from npc_msom.errors import NiftiError
from npc_msom.synth.dicom_writer import make_uid, write_mr_series

from cohort_fixtures import make_geometry, make_image, rotation, truth_masks

# descriptions that do not name the sequence (T2, CE) or name only "T1" (CE without contrast tag)
DESCRIPTIONS = {"T1WI": "Ax SE", "T2WI": "Ax FSE fs", "CE-T1WI": "Ax T1 SE"}
MASK_NAMES = {"T1WI": "ROI-T1.nii", "T2WI": "ROI-T2.nii", "CE-T1WI": "ROI-CE-T1.nii"}


def write_nifti_mask(path, mask_zyx: np.ndarray, g, *, flip_rows: bool = False) -> None:
    """A uint8 NIfTI of ``mask`` on ``g``; with ``flip_rows`` stored with the row axis reversed
    (as dcm2niix-style converters do), i.e. the same voxels on a grid of another direction."""
    arr = mask_zyx.astype(np.uint8)
    d = np.asarray(g.direction).reshape(3, 3).copy()
    origin = np.asarray(g.origin_mm, float)
    if flip_rows:
        arr = arr[:, ::-1, :]
        origin = origin + (g.size[1] - 1) * g.spacing_mm[1] * d[:, 1]
        d[:, 1] = -d[:, 1]
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetOrigin(tuple(origin))
    img.SetSpacing(tuple(g.spacing_mm))
    img.SetDirection(tuple(d.reshape(-1)))
    sitk.WriteImage(img, str(path))


def write_public_patient(root, number: str, seed: int, *, flip_rows=False, nodes_as_2=False, direction=None):
    folder = root / "MRI-Segments" / number
    study, frame = make_uid(number, seed, "study"), make_uid(number, seed, "for")
    truth = {}
    for n, seq in enumerate(SEQUENCES):
        g = make_geometry(direction=direction)
        write_mr_series(folder / seq, make_image(seed=seed * 10 + n), g, patient_id="", patient_name=number,
                        study_uid=study, frame_of_reference_uid=frame, series_description=DESCRIPTIONS[seq],
                        series_number=n + 1, seed_uid=f"{number}|{seq}")
        t = truth_masks(g)
        mask = t["GTV"].astype(np.uint8)
        if nodes_as_2:
            mask[t["GTVln_L"] | t["GTVln_R"]] = 2
        write_nifti_mask(folder / MASK_NAMES[seq], mask, g, flip_rows=flip_rows)
        truth[seq] = mask > 0
    return truth


def test_public_layout_three_sequences_and_a_gtv_each(tmp_path):
    truths = {"001": write_public_patient(tmp_path, "001", 1),
              "002": write_public_patient(tmp_path, "002", 2, flip_rows=True, direction=rotation(8, 5)),
              "003": write_public_patient(tmp_path, "003", 3, nodes_as_2=True)}
    assert pydicom.dcmread(next((tmp_path / "MRI-Segments" / "001" / "T2WI").iterdir())).PatientID == ""
    cohort, text = inspect_cohort(tmp_path)
    assert cohort.patient_ids == ["001", "002", "003"], cohort.manifest["skipped"]
    for pid in cohort.patient_ids:
        rec = cohort.manifest["patients"][pid]
        assert rec["patient_id_from"].startswith("folder name")
        assert sorted(rec["sequences"]) == sorted(SEQUENCES)
        for seq, info in rec["sequences"].items():
            assert info["mask_source"] == "NIfTI" and info["structures"] == {"GTV": [MASK_NAMES[seq]]}
            assert info["nifti_mask"].endswith(f"{pid}/{MASK_NAMES[seq]}")
            assert "folder name" in info["classified_by"] and seq in info["classified_by"]
        p = cohort.load_patient(pid)
        for seq, s in p.series.items():
            assert np.array_equal(s.masks["GTV"], truths[pid][seq]), (pid, seq)
            assert "GTVln" not in s.masks
    assert any("resampled" in w for w in cohort.manifest["patients"]["002"]["sequences"]["T2WI"]["warnings"])
    assert any("values [1, 2]" in w for w in cohort.manifest["patients"]["003"]["sequences"]["T1WI"]["warnings"])
    assert "GTV (ROI-CE-T1.nii)" in text and "003" in text
    assert cohort.manifest["unused_nifti_files"] == []


def test_mask_that_does_not_overlap_its_series_names_patient_and_file(tmp_path):
    write_public_patient(tmp_path, "001", 1)
    write_public_patient(tmp_path, "002", 2)
    bad = tmp_path / "MRI-Segments" / "002" / "ROI-T2.nii"
    g = make_geometry(origin=(400.0, 400.0, 400.0))
    write_nifti_mask(bad, truth_masks(g)["GTV"], g)
    with pytest.raises(NiftiError, match="does not overlap") as ei:
        load_cohort(tmp_path, CohortConfig())
    assert ei.value.patient == "002" and ei.value.file == str(bad)
    cohort = load_cohort(tmp_path, CohortConfig(skip_bad=True))
    assert cohort.patient_ids == ["001"]
    assert cohort.manifest["skipped"][0]["patient"] == "002"
