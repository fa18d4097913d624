"""Low-level writers: an MR series as DICOM MR Image Storage (one file per slice) and an RTSTRUCT.

The RTSTRUCT writer, the geometry helpers and the mask <-> contour conversion live in
``npc_msom.cohort.dicom_write`` (``npc-msom predict`` writes its predicted contours with them too);
they are re-exported here, so this module keeps its interface. Geometry and contour conventions
are described there.

Everything here is deterministic for a given ``seed_uid``: UIDs come from
``pydicom.uid.generate_uid(entropy_srcs=...)`` and dates default to fixed values, so the same
inputs give byte-identical files.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from npc_msom.cohort.dicom_write import (WrittenSeries, _direction_columns, _ds, _file_meta,  # noqa: F401
                                         _patient_and_equipment, _save, contours_to_mask, index_to_lps,
                                         lps_to_index, make_uid, mask_to_contours, slice_positions_mm,
                                         write_rtstruct)
from npc_msom.cohort.model import Geometry

log = logging.getLogger(__name__)

__all__ = ["WrittenSeries", "contours_to_mask", "index_to_lps", "lps_to_index", "make_uid", "mask_to_contours",
           "slice_positions_mm", "write_mr_series", "write_rtstruct"]

_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])

# the elements of an MR slice that change from file to file
_PER_SLICE = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")


class _SliceWriter:
    """Writes the slices of one series: the constant elements of ``template`` are encoded once into
    byte runs, the per-slice ones (:data:`_PER_SLICE`) encoded per file and put between them in tag
    order. Explicit VR Little Endian, as ``save_as(enforce_file_format=True)`` writes."""

    def __init__(self, template: Dataset):
        from pydicom.datadict import tag_for_keyword
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset
        self._bytes_io, self._write_dataset = DicomBytesIO, write_dataset
        self.variable = sorted(tag_for_keyword(k) for k in _PER_SLICE)
        bounds = [-1, *self.variable, 0x1_0000_0000]
        self.runs: list[bytes] = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            part = Dataset()
            for elem in template:
                if lo < elem.tag < hi:
                    part.add(elem)
            self.runs.append(self._encode(part))

    def _encode(self, part: Dataset) -> bytes:
        fp = self._bytes_io()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        self._write_dataset(fp, part, "iso8859")  # the template's ISO_IR 100
        return fp.getvalue()

    def save(self, ds: Dataset, path: Path) -> None:
        from pydicom.filewriter import write_file_meta_info
        fp = self._bytes_io()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
        chunks = [fp.getvalue(), self.runs[0]]
        for tag, run in zip(self.variable, self.runs[1:]):
            part = Dataset()
            elem = ds[tag]
            if tag == 0x7FE00010:  # OB or OW: resolved from BitsAllocated, as save_as does
                part.add_new(tag, "OW" if int(ds.BitsAllocated) > 8 else "OB", elem.value)
            else:
                part.add(elem)
            chunks += [self._encode(part), run]
        with open(path, "wb") as f:
            f.write(b"".join(chunks))




def _to_stored(image: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """Stored pixel values, RescaleSlope, RescaleIntercept and PixelRepresentation.

    uint8/uint16 and int8/int16 are stored as they are (slope 1, intercept 0); anything else
    (float, wider integers) is mapped linearly onto 0..65535 with the slope and intercept that
    map it back (rounded to 6 significant digits, as DS allows).
    """
    if image.dtype in (np.uint8, np.uint16):
        return image.astype("<u2", copy=False), 1.0, 0.0, 0
    if image.dtype in (np.int8, np.int16):
        return image.astype("<i2", copy=False), 1.0, 0.0, 1
    arr = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("image has non-finite values")
    lo, hi = float(arr.min()), float(arr.max())
    intercept = float(_ds(lo))
    slope = float(_ds((hi - intercept) / 65535.0)) if hi > intercept else 1.0
    # DS rounding of the slope can push the top value a hair past 65535
    while hi > intercept and (hi - intercept) / slope > 65535.49:
        slope = float(_ds(slope * (1 + 1e-6)))
    stored = np.clip(np.rint((arr - intercept) / slope), 0, 65535).astype("<u2")
    return stored, slope, intercept, 0


def write_mr_series(out_dir: str | Path, image: np.ndarray, geometry: Geometry, *,
                    patient_id: str, study_uid: str, frame_of_reference_uid: str,
                    series_description: str, series_number: int,
                    protocol_name: str | None = None, contrast_agent: str | None = None,
                    file_name: Callable[[int, str], str] | None = None,
                    seed_uid: str | None = None, patient_name: str | None = None,
                    extra_tags: Mapping[str, object] | None = None) -> WrittenSeries:
    """Write ``image`` as an axial (or any-orientation) MR series, one file per slice.

    image: (z, y, x) stored values: uint16/int16 are written as they are; floats are mapped
        onto uint16 with RescaleSlope/RescaleIntercept so that stored * slope + intercept ~ image.
    geometry: the grid; ``geometry.size`` must equal (x, y, z) of ``image``.
    file_name: callable(index, sop_instance_uid) -> file name; default ``MR.<sop_uid>.dcm``.
    seed_uid: seeds every generated UID (series, SOP instances); default derived from the patient,
        study, description and series number, so a rerun gives the same UIDs.
    extra_tags: keyword -> value set on every slice last (overrides defaults), e.g.
        ``{"StudyDate": "20190312", "Manufacturer": "SIEMENS", "RepetitionTime": 3000}``.
    Returns the :class:`WrittenSeries`; files are in z-index order.
    """
    out_dir = Path(out_dir)
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be 3-D (z, y, x), got shape {image.shape}")
    nz, ny, nx = image.shape
    if tuple(geometry.size) != (nx, ny, nz):
        raise ValueError(f"geometry.size {geometry.size} does not match image (x, y, z) = {(nx, ny, nz)}")
    d = _direction_columns(geometry)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-5):
        raise ValueError("geometry.direction is not orthonormal")
    sx, sy, sz = (float(v) for v in geometry.spacing_mm)
    seed = seed_uid if seed_uid is not None else f"{patient_id}|{study_uid}|{series_description}|{series_number}"
    series_uid = make_uid(seed, "series")
    stored, slope, intercept, pixel_rep = _to_stored(image)
    positions = slice_positions_mm(geometry)
    normal = d[:, 2]
    out_dir.mkdir(parents=True, exist_ok=True)
    if file_name is None:
        file_name = lambda index, uid: f"MR.{uid}.dcm"  # noqa: E731

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = "20200101"
    ds.SeriesDate = "20200101"
    ds.AcquisitionDate = "20200101"
    ds.ContentDate = "20200101"
    ds.StudyTime = "090000"
    ds.SeriesTime = f"09{series_number % 60:02d}00"
    ds.AcquisitionTime = ds.SeriesTime
    ds.ContentTime = ds.SeriesTime
    _patient_and_equipment(ds, modality="MR", patient_id=patient_id, patient_name=patient_name,
                           station="SYNTH15T", model="Synth 1.5T", description=series_description)
    ds.InstitutionName = "Synthetic Hospital"
    ds.StudyDescription = "MR NASOPHARYNX"
    ds.BodyPartExamined = "HEADNECK"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = _ds(sz)
    ds.RepetitionTime = "500"
    ds.EchoTime = "10"
    ds.EchoTrainLength = "3"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = "1.5"
    ds.SpacingBetweenSlices = _ds(sz)
    if protocol_name is not None:
        ds.ProtocolName = protocol_name
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = int(series_number)
    ds.ImageOrientationPatient = [_ds(v) for v in (*d[:, 0], *d[:, 1])]
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_rep
    # display window from a subsample (a full percentile costs more than writing the files)
    sample = stored.reshape(-1)[:: max(1, stored.size // 200_000)].astype(np.float64) * slope + intercept
    lo, hi = np.percentile(sample, [1.0, 99.5]) if sample.size else (0.0, 1.0)
    ds.WindowCenter = _ds((lo + hi) / 2)
    ds.WindowWidth = _ds(max(hi - lo, 1.0))
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    if contrast_agent is not None:
        ds.ContrastBolusAgent = contrast_agent
        ds.ContrastBolusRoute = "IV"
    for key, value in (extra_tags or {}).items():
        setattr(ds, key, value)

    # One dataset for every slice: the elements that do not change are encoded once, and each file
    # is their bytes with the per-slice elements encoded between them (the bytes pydicom's
    # save_as writes, a test checks; ~5x cheaper than encoding ~70 elements per file).
    writer = _SliceWriter(ds) if _PYDICOM_MAJOR >= 3 else None
    sop_uids: list[str] = []
    paths: list[Path] = []
    pos_out: list[tuple[float, float, float]] = []
    for k in range(nz):
        sop_uid = make_uid(seed, "sop", k)
        pos = positions[k]
        ds.file_meta = _file_meta(MRImageStorage, sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.SliceLocation = _ds(float(pos @ normal))
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = out_dir / file_name(k, sop_uid)
        if writer is not None:
            writer.save(ds, path)
        else:  # pragma: no cover - pydicom 2.4
            _save(ds, path)
        sop_uids.append(sop_uid)
        paths.append(path)
        # what a reader gets back from the DS strings
        pos_out.append(tuple(float(_ds(v)) for v in pos))
    log.debug("wrote %d MR slices of %s (%s) to %s", nz, patient_id, series_description, out_dir)
    return WrittenSeries(series_uid=series_uid, study_uid=study_uid,
                         frame_of_reference_uid=frame_of_reference_uid, patient_id=patient_id,
                         sop_class_uid=str(MRImageStorage), sop_instance_uids=tuple(sop_uids),
                         paths=tuple(paths), positions_mm=tuple(pos_out))
