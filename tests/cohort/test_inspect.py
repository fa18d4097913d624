import json

import numpy as np

from npc_msom.cohort import inspect_cohort, load_cohort
from npc_msom.config import CohortConfig
from npc_msom.synth.dicom_writer import mask_to_contours, write_mr_series

from cohort_fixtures import make_geometry, make_image, write_clinical, write_patient


def test_inspect_lists_found_ignored_and_skipped(tmp_path):
    g = make_geometry()
    box = np.zeros((12, 48, 48), bool)
    box[3:5, 10:14, 10:14] = True
    wp = write_patient(tmp_path, "P001", seed=1, extra_rois={"Brainstem": mask_to_contours(box, g)})
    write_mr_series(tmp_path / "P001" / "loc", make_image((3, 48, 48)), make_geometry((3, 48, 48)),
                    patient_id="P001", study_uid=wp.series["T1WI"].study_uid,
                    frame_of_reference_uid=wp.series["T1WI"].frame_of_reference_uid,
                    series_description="3-plane localizer", series_number=1)
    write_patient(tmp_path, "P002", seed=2, sequences=("T1WI", "T2WI"))
    write_clinical(tmp_path / "clinical.csv", ["P001", "P002", "P003"])
    # strict loading stops at the first problem; inspect shows them all
    cohort, text = inspect_cohort(tmp_path, CohortConfig())
    assert cohort.patient_ids == ["P001"]
    for expected in ("1 usable patient(s), 2 skipped", "P001  [dicom]", "T1WI     'T1_TSE_TRA': 12 slices",
                     "GTV (GTVnx), GTVln (GTVnd_L, GTVnd_R)", "unmatched ROIs (not used): Brainstem",
                     "ignored series '3-plane localizer' (3 files)", "P002: CohortError",
                     "missing sequence(s) CE-T1WI", "P003: CohortError", "Clinical rows without images: P003"):
        assert expected in text, (expected, text)
    path = tmp_path / "run" / "cohort" / "manifest.json"
    cohort.write_manifest(path)
    m = json.loads(path.read_text())
    assert m["patient_ids"] == ["P001"] and m["clinical_only"] == ["P003"]
    assert [s["patient"] for s in m["skipped"]] == ["P002", "P003"]
    assert "found" not in m["skipped"][0]
    seq = m["patients"]["P001"]["sequences"]["T2WI"]
    assert seq["n_slices"] == 12 and seq["spacing_mm"] == [0.9, 0.9, 4.0] and seq["series_uid"]
    assert seq["roi_voxels"]["GTVnx"] == int(wp.truth["T2WI"]["GTV"].sum())


def test_a_single_patient_folder_without_clinical_table(tmp_path):
    # `predict --patient DIR`: one patient, no table, no clinical checks
    write_patient(tmp_path, "P042", seed=4)
    cohort = load_cohort(tmp_path / "P042", CohortConfig())
    assert cohort.patient_ids == ["P042"] and cohort.manifest["clinical_table"] is None
    p = cohort.load_patient("P042")
    assert p.clinical is None and p.outcome is None and len(p.series) == 3
