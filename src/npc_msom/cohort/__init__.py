"""What a cohort is, and reading one: DICOM series + RTSTRUCT / SEG / NIfTI mask, NIfTI folders,
the clinical table (layouts: docs/datasets.md).

``load_cohort(path, config)`` indexes a folder (headers only) and returns a ``Cohort`` whose
``load_patient(id)`` reads one patient's images and masks; ``inspect_cohort`` describes a
folder for people.

The manifest (``Cohort.manifest``, written as ``cohort/manifest.json`` in a run) is a dict:
``version``, ``root``, ``clinical_table``, ``config``, ``n_patients``, ``patient_ids``;
``patients``: id -> {``source`` ("dicom" | "nifti"), ``clinical`` (has a clinical row),
``sequences``: sequence -> {series_uid, study_uid, description, protocol, series_number,
frame_of_reference_uid, n_files, folder, n_slices, size, spacing_mm, origin_mm, direction,
orientation, classified_by, rtstructs, segs, nifti_mask, mask_source ("RTSTRUCT" | "SEG" |
"NIfTI" | None: RTSTRUCT wins over SEG, SEG over a NIfTI mask), structures (GTV/GTVln -> ROI,
segment or mask names merged into it), roi_voxels, unmatched_rois, warnings} (NIfTI: image, label, n_slices, size, spacing_mm, origin_mm,
direction, orientation, structures, warnings), ``ignored_series`` [{series_uid, description,
n_files, reason}], ``ignored_rtstructs`` [{file, reason}], ``ignored_files`` [{file, reason}],
``warnings``, ``patient_id_from`` (only when PatientID was empty and the folder named the
patient)}; ``skipped`` [{patient, file, problem, expected, message, error, and ``found``
(sequence -> description) when the images were fine}];
``clinical_only`` and ``image_only`` (patient IDs); ``clinical_problems`` (bad cells, with
skip_bad); ``unreadable_files`` [{file, problem}] whose patient could not be told;
``unused_nifti_files``; ``ignored_files`` (non-DICOM files).
"""
from npc_msom.cohort.clinical import load_clinical, validate_clinical
from npc_msom.cohort.load import Cohort, format_manifest, inspect_cohort, load_cohort
from npc_msom.cohort.model import Geometry, Outcome, Patient, Series, geometry_from_sitk

__all__ = ["Cohort", "Geometry", "Outcome", "Patient", "Series", "format_manifest", "geometry_from_sitk",
           "inspect_cohort", "load_clinical", "load_cohort", "validate_clinical"]
