"""The embedded synthetic NPC cohort, written as real DICOM MR series + RTSTRUCT + CSV, with truth.

``write_cohort(out_dir, SynthConfig(...))`` writes the cohort; ``make_patient`` renders one
patient in memory; ``cohort_table`` gives the clinical and truth tables without images. The
generative model is documented in ``docs/synthetic_cohort.md``.
"""
from npc_msom.synth.cohort import (CohortTable, SynthPatient, SynthSeries, SynthSummary, cohort_table,
                                   make_patient, patient_id_of, write_cohort, write_patient)
from npc_msom.synth.dicom_writer import (WrittenSeries, contours_to_mask, mask_to_contours,
                                         write_mr_series, write_rtstruct)

__all__ = ["CohortTable", "SynthPatient", "SynthSeries", "SynthSummary", "WrittenSeries",
           "cohort_table", "contours_to_mask", "make_patient", "mask_to_contours", "patient_id_of",
           "write_cohort", "write_mr_series", "write_patient", "write_rtstruct"]
