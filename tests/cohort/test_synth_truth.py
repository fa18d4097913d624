"""The synthetic generator's patients, written as DICOM + RTSTRUCT, read back against its truth."""
import numpy as np
import pandas as pd

from npc_msom.cohort import load_cohort
from npc_msom.cohort.schema import CLINICAL_SCHEMA
from npc_msom.config import SEQUENCES, CohortConfig
from npc_msom.synth import make_patient, patient_id_of, write_patient

from cohort_fixtures import dice, independent_masks

SEED = 5


def test_synthetic_patients_read_back_match_the_generator_truth(tmp_path):
    patients = [make_patient(patient_id_of(i), SEED, i) for i in (0, 3)]
    rows = []
    for p in patients:
        write_patient(p, tmp_path / "dicom")
        rows.append({c.name: p.clinical.get(c.name) for c in CLINICAL_SCHEMA})
    pd.DataFrame(rows).to_csv(tmp_path / "clinical.csv", index=False)
    cohort = load_cohort(tmp_path, CohortConfig())
    assert cohort.patient_ids == sorted(p.patient_id for p in patients)
    for sp in patients:
        got = cohort.load_patient(sp.patient_id)
        assert got.outcome.msom == bool(sp.clinical["msom"])
        assert got.clinical["age"] == int(sp.clinical["age"])
        for seq in SEQUENCES:
            s, truth = got.series[seq], sp.series[seq]
            assert s.geometry.size == truth.geometry.size
            np.testing.assert_allclose(s.geometry.origin_mm, truth.geometry.origin_mm, atol=1e-3)
            np.testing.assert_allclose(s.geometry.spacing_mm, truth.geometry.spacing_mm, atol=1e-4)
            np.testing.assert_allclose(s.image, truth.image, rtol=1e-5, atol=1e-3)
            for k in ("GTV", "GTVln"):
                if not truth.masks[k].any():
                    assert k not in s.masks
                    continue
                d = dice(s.masks[k], truth.masks[k])
                print(f"{sp.patient_id} {seq} {k}: Dice vs generator truth {d:.4f}")
                assert d >= 0.95, (sp.patient_id, seq, k, d)
    # the same masks against an independent reader (SimpleITK geometry + matplotlib fill)
    sp = patients[0]
    info = cohort.manifest["patients"][sp.patient_id]["sequences"]["CE-T1WI"]
    ind = independent_masks(tmp_path / info["folder"], tmp_path / info["rtstructs"][0], info["structures"])
    s = cohort.load_patient(sp.patient_id).series["CE-T1WI"]
    for k, m in ind.items():
        d = dice(s.masks[k], m)
        print(f"{sp.patient_id} CE-T1WI {k}: Dice vs independent rasterisation {d:.4f}")
        assert d >= 0.98
