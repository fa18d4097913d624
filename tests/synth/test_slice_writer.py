"""The synthetic MR writer's pre-encoded slices are the bytes pydicom's own save_as writes."""
import numpy as np
import pytest

from npc_msom.cohort.model import Geometry
from npc_msom.synth import dicom_writer as dw


class _PlainWriter:
    def __init__(self, template):
        pass

    def save(self, ds, path):
        dw._save(ds, path)


@pytest.mark.skipif(dw._PYDICOM_MAJOR < 3, reason="the pre-encoded writer needs pydicom 3")
def test_pre_encoded_slices_equal_pydicom_save_as(tmp_path, monkeypatch):
    img = (np.random.default_rng(0).random((4, 40, 36)) * 1000).astype(np.float32)
    g = Geometry((-20.0, -18.0, 3.5), (0.8, 0.8, 5.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (36, 40, 4))
    kw = dict(patient_id="P1", study_uid="1.2.3", frame_of_reference_uid="1.2.4", series_description="T1 FS AX +C",
              series_number=7, contrast_agent="Gadovist 1.0", patient_name="Test^Pätient",
              extra_tags={"Manufacturer": "SIEMENS", "RepetitionTime": "600"})
    fast = dw.write_mr_series(tmp_path / "fast", img, g, **kw)
    monkeypatch.setattr(dw, "_SliceWriter", _PlainWriter)
    plain = dw.write_mr_series(tmp_path / "plain", img, g, **kw)
    assert len(fast.paths) == len(plain.paths) == 4
    for a, b in zip(fast.paths, plain.paths):
        assert a.read_bytes() == b.read_bytes()
