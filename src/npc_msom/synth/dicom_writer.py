"""Low-level writers: an MR series as DICOM MR Image Storage (one file per slice) and an RTSTRUCT.

Geometry follows :class:`npc_msom.cohort.model.Geometry` (SimpleITK / DICOM, patient mm in LPS).
Arrays are indexed (z, y, x); ``Geometry`` tuples are (x, y, z). The direction matrix is row-major
and its *columns* are the unit vectors of the x (column), y (row) and z (slice) axes, so

- ImageOrientationPatient = first column + second column of the direction matrix,
- ImagePositionPatient of slice k = origin + k * spacing_z * third column,
- PixelSpacing = [row spacing (y), column spacing (x)].

Contours (``mask_to_contours``) use the pixel-centre convention: points live in continuous index
space where pixel (row i, column j) has its centre at index (i, j); a point (k, i, j) maps to
``origin + D @ (j * sx, i * sy, k * sz)``. The contour of a binary slice runs through the
mid-points between inside and outside pixel centres (marching squares at level 0.5), so
re-rasterising every contour of a slice with an even-odd rule (a pixel is inside when its centre is
inside an odd number of polygons) gives back the mask exactly, holes included.

Everything here is deterministic for a given ``seed_uid``: UIDs come from
``pydicom.uid.generate_uid(entropy_srcs=...)`` and dates default to fixed values, so the same
inputs give byte-identical files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RTStructureSetStorage, generate_uid

from npc_msom.cohort.model import Geometry

log = logging.getLogger(__name__)

# The Study Component Management class that RTReferencedStudySequence conventionally points at
# (PS3.3 C.8.8.5; retired but still what every planning system writes).
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_IMPLEMENTATION_VERSION = "NPCMSOM_SYNTH_1"
_PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])

_DEFAULT_COLORS = ([255, 0, 0], [0, 128, 255], [255, 255, 0], [0, 255, 0], [255, 0, 255],
                   [0, 255, 255], [255, 128, 0], [128, 0, 255])


@dataclass(frozen=True)
class WrittenSeries:
    """What ``write_mr_series`` wrote: UIDs and files, slice by slice in z-index order.

    positions_mm: ImagePositionPatient (LPS mm) of each slice, same order as paths.
    """
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    paths: tuple[Path, ...]
    positions_mm: tuple[tuple[float, float, float], ...]

    def to_dict(self) -> dict:
        return {"series_uid": self.series_uid, "study_uid": self.study_uid,
                "frame_of_reference_uid": self.frame_of_reference_uid,
                "patient_id": self.patient_id, "sop_class_uid": self.sop_class_uid,
                "sop_instance_uids": list(self.sop_instance_uids),
                "paths": [str(p) for p in self.paths],
                "positions_mm": [list(p) for p in self.positions_mm]}


# ----------------------------------------------------------------------------------- helpers

def make_uid(*parts: object) -> str:
    """A deterministic DICOM UID from any parts (strings, numbers)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    s = f"{value:.6g}"
    if len(s) > 16:  # pragma: no cover - only for absurd magnitudes
        s = f"{value:.8e}"
    return s


def _direction_columns(geometry: Geometry) -> np.ndarray:
    """3x3 array whose columns are the x, y, z axis unit vectors (LPS)."""
    return np.asarray(geometry.direction, dtype=float).reshape(3, 3)


def slice_positions_mm(geometry: Geometry) -> np.ndarray:
    """(z, 3) float64: ImagePositionPatient of every slice, LPS mm."""
    d = _direction_columns(geometry)
    k = np.arange(geometry.size[2], dtype=float)
    return np.asarray(geometry.origin_mm, dtype=float)[None, :] + (k * geometry.spacing_mm[2])[:, None] * d[:, 2][None, :]


def index_to_lps(points_kij: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(N, 3) continuous indices (k=slice, i=row, j=column) -> (N, 3) LPS mm."""
    p = np.asarray(points_kij, dtype=float)
    d = _direction_columns(geometry)
    sx, sy, sz = geometry.spacing_mm
    scaled = np.stack([p[:, 2] * sx, p[:, 1] * sy, p[:, 0] * sz], axis=1)
    return np.asarray(geometry.origin_mm, dtype=float)[None, :] + scaled @ d.T


def lps_to_index(points_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(N, 3) LPS mm -> (N, 3) continuous indices (k, i, j)."""
    p = np.asarray(points_mm, dtype=float) - np.asarray(geometry.origin_mm, dtype=float)[None, :]
    d = _direction_columns(geometry)
    xyz = p @ np.linalg.inv(d).T / np.asarray(geometry.spacing_mm, dtype=float)[None, :]
    return xyz[:, ::-1]


def _save(ds: Dataset, path: Path) -> None:
    if _PYDICOM_MAJOR >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.4
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(path, write_like_original=False)


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


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    return meta


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


# ------------------------------------------------------------------------------ MR writer

def _patient_and_equipment(ds: Dataset, *, modality: str, patient_id: str, patient_name: str | None,
                           station: str, model: str, description: str) -> None:
    """Patient, series-description and equipment tags shared by the MR and RTSTRUCT writers; the
    default PatientName is the same for both, so a reader sees one patient."""
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "NPC-MSOM synthetic"
    ds.ReferringPhysicianName = ""
    ds.StationName = station
    ds.SeriesDescription = description
    ds.ManufacturerModelName = model
    ds.PatientName = patient_name if patient_name is not None else f"Synthetic^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""


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


# --------------------------------------------------------------------------------- contours

def _drop_collinear(poly: np.ndarray) -> np.ndarray:
    """Removes vertices of a closed polygon (N, 2) that lie exactly on the line of their
    neighbours; lossless for rasterisation. The input must not repeat its first point."""
    if len(poly) < 4:
        return poly
    prev = np.roll(poly, 1, axis=0)
    nxt = np.roll(poly, -1, axis=0)
    cross = (poly[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (poly[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
    keep = np.abs(cross) > 1e-9
    if keep.sum() < 3:
        return poly
    return poly[keep]


def mask_to_contours(mask: np.ndarray, geometry: Geometry) -> list[np.ndarray]:
    """Binary (z, y, x) mask -> closed planar polygons, each an (N, 3) float64 array of LPS mm.

    Per slice, ``skimage.measure.find_contours`` at level 0.5 on the slice padded with one row
    and column of zeros, so every contour is closed; outer boundaries and hole boundaries both
    come out as polygons, and an even-odd fill of all polygons of a slice gives back the mask.
    Points are pixel-centre based (see module docstring); the closing point is not repeated and
    exactly collinear points are dropped.
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D (z, y, x), got shape {mask.shape}")
    if tuple(geometry.size) != (mask.shape[2], mask.shape[1], mask.shape[0]):
        raise ValueError(f"geometry.size {geometry.size} does not match mask (x, y, z)")
    out: list[np.ndarray] = []
    for k in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]:
        ys, xs = np.nonzero(mask[k])
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = np.pad(mask[k, y0:y1, x0:x1].astype(np.float32), 1)
        for c in find_contours(crop, 0.5):
            if len(c) > 1 and np.allclose(c[0], c[-1]):
                c = c[:-1]
            c = _drop_collinear(c)
            if len(c) < 3:
                continue
            rows = c[:, 0] - 1 + y0
            cols = c[:, 1] - 1 + x0
            kij = np.stack([np.full(len(c), float(k)), rows, cols], axis=1)
            out.append(index_to_lps(kij, geometry))
    return out


def contours_to_mask(contours: Sequence[np.ndarray], geometry: Geometry) -> np.ndarray:
    """Even-odd rasterisation of LPS polygons onto ``geometry``: (z, y, x) bool.

    The inverse of :func:`mask_to_contours` (used in tests and for checks; the cohort reader
    has its own). A pixel is inside when its centre is inside an odd number of a slice's polygons.
    """
    from skimage.draw import polygon as draw_polygon

    nx, ny, nz = geometry.size
    mask = np.zeros((nz, ny, nx), dtype=bool)
    for poly in contours:
        kij = lps_to_index(poly, geometry)
        k = int(round(float(kij[:, 0].mean())))
        if not 0 <= k < nz:
            continue
        rr, cc = draw_polygon(kij[:, 1], kij[:, 2], shape=(ny, nx))
        filled = np.zeros((ny, nx), dtype=bool)
        filled[rr, cc] = True
        mask[k] ^= filled
    return mask


# --------------------------------------------------------------------------------- RTSTRUCT

def write_rtstruct(path: str | Path, series: WrittenSeries, rois: Mapping[str, Sequence[np.ndarray]], *,
                   geometry: Geometry, seed_uid: str | None = None,
                   structure_set_label: str = "RTSTRUCT",
                   colors: Mapping[str, Sequence[int]] | None = None,
                   patient_name: str | None = None,
                   extra_tags: Mapping[str, object] | None = None) -> Path:
    """Write an RT Structure Set for ``series``.

    patient_name: should equal the image series' PatientName (readers compare them to detect two
        patients sharing one ID); defaults to the same default as ``write_mr_series``.

    rois: ROI name -> list of closed planar polygons, each (N, 3) float LPS mm (N >= 3) lying on
        one slice of ``geometry``; each contour references that slice's SOP instance. An ROI
        with an empty list is written as an ROI without contours.
    colors: ROI name -> [r, g, b] 0..255; defaults cycle through a fixed palette.
    Returns ``path``. Raises ValueError for a polygon that is not on a slice of the series.
    """
    path = Path(path)
    if len(series.sop_instance_uids) != geometry.size[2]:
        raise ValueError(f"series has {len(series.sop_instance_uids)} slices, geometry {geometry.size[2]}")
    seed = seed_uid if seed_uid is not None else f"{series.series_uid}|rtstruct|{structure_set_label}"
    sop_uid = make_uid(seed, "sop")
    rt_series_uid = make_uid(seed, "series")
    sz = float(geometry.spacing_mm[2])

    ds = Dataset()
    ds.file_meta = _file_meta(RTStructureSetStorage, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = "20200101"
    ds.InstanceCreationTime = "120000"
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20200101"
    ds.StudyTime = "090000"
    _patient_and_equipment(ds, modality="RTSTRUCT", patient_id=series.patient_id, patient_name=patient_name,
                           station="SYNTHTPS", model="Synth TPS", description=structure_set_label)
    ds.OperatorsName = ""
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = rt_series_uid
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1000
    ds.InstanceNumber = 1
    ds.StructureSetLabel = structure_set_label[:16]
    ds.StructureSetName = structure_set_label[:64]
    ds.StructureSetDate = "20200101"
    ds.StructureSetTime = "120000"

    def image_ref(index: int) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = series.sop_class_uid
        item.ReferencedSOPInstanceUID = series.sop_instance_uids[index]
        return item

    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.series_uid
    rt_series.ContourImageSequence = DicomSequence([image_ref(k) for k in range(len(series.sop_instance_uids))])
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    rt_study.ReferencedSOPInstanceUID = series.study_uid
    rt_study.RTReferencedSeriesSequence = DicomSequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([rt_study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    roi_items, contour_items, observation_items = [], [], []
    for number, (name, polys) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi_items.append(roi)

        rc = Dataset()
        color = (colors or {}).get(name, _DEFAULT_COLORS[(number - 1) % len(_DEFAULT_COLORS)])
        rc.ROIDisplayColor = [int(c) for c in color]
        contours = []
        for cnum, poly in enumerate(polys, start=1):
            poly = np.asarray(poly, dtype=float)
            if poly.ndim != 2 or poly.shape[1] != 3 or len(poly) < 3:
                raise ValueError(f"ROI {name!r} contour {cnum}: expected (N>=3, 3) points, got {poly.shape}")
            kij = lps_to_index(poly, geometry)
            k_float = kij[:, 0]
            k = int(round(float(k_float.mean())))
            if not 0 <= k < geometry.size[2] or np.abs(k_float - k).max() * sz > 0.01 + 1e-3 * sz:
                raise ValueError(f"ROI {name!r} contour {cnum} is not on a slice of series "
                                 f"{series.series_uid} (slice index {k_float.min():.3f}..{k_float.max():.3f})")
            c = Dataset()
            c.ContourImageSequence = DicomSequence([image_ref(k)])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(poly)
            c.ContourNumber = cnum
            c.ContourData = [f"{v:.4f}" for v in poly.reshape(-1)]
            contours.append(c)
        if contours:
            rc.ContourSequence = DicomSequence(contours)
        rc.ReferencedROINumber = number
        contour_items.append(rc)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.ROIObservationLabel = name[:16]
        # tumour volumes are GTVs; anything else (e.g. a spinal cord) an organ at risk
        obs.RTROIInterpretedType = "GTV" if name.upper().startswith("GTV") else "ORGAN"
        obs.ROIInterpreter = ""
        observation_items.append(obs)

    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observation_items)
    ds.ApprovalStatus = "UNAPPROVED"
    for key, value in (extra_tags or {}).items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path)
    log.debug("wrote RTSTRUCT %s with ROIs %s", path, list(rois))
    return path
