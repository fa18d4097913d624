"""Writing DICOM that references existing images: geometry helpers, binary masks <-> planar
contours, and the RT Structure Set writer.

Shared by the synthetic cohort (``npc_msom.synth.dicom_writer``, which adds the MR image writer)
and ``npc-msom predict`` (predicted GTV / GTVln contours on a patient's own series).

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
from typing import Mapping, Sequence

import numpy as np
import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

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
    """An image series that an RTSTRUCT can reference: UIDs and files, slice by slice in z-index
    order. What ``synth.dicom_writer.write_mr_series`` wrote, or an existing series as the cohort
    reader indexed it (``npc-msom predict``).

    positions_mm: ImagePositionPatient (LPS mm) of each slice, same order as paths.
    sop_instance_uids: one per slice of the grid; a UID may repeat (a grid slice interpolated where
        the series lacks one carries a neighbour's UID and must not get contours).
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


def _file_meta(sop_class_uid: str, sop_instance_uid: str,
               implementation_version: str = _IMPLEMENTATION_VERSION) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = implementation_version
    return meta



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

_CONTOUR_DATA = Tag(0x30060050)


def _raw_ds(tag: Tag, values: Sequence[str]) -> RawDataElement:
    """A DS element holding ``values`` as the bytes the file will contain.

    pydicom builds and validates one DS object per number when a list is assigned; a structure set's
    ContourData holds tens of thousands of them (0.4 s of the 0.5 s that writing a synthetic
    patient's three structure sets took). The raw element is written as is: the same bytes as
    assigning the strings (tests/cohort/test_dicom_write.py)."""
    data = "\\".join(values).encode("ascii")
    if len(data) % 2:
        data += b" "
    return RawDataElement(tag, "DS", len(data), data, 0, False, True)


def write_rtstruct(path: str | Path, series: WrittenSeries, rois: Mapping[str, Sequence[np.ndarray]], *,
                   geometry: Geometry, seed_uid: str | None = None,
                   structure_set_label: str = "RTSTRUCT",
                   colors: Mapping[str, Sequence[int]] | None = None,
                   patient_name: str | None = None,
                   extra_tags: Mapping[str, object] | None = None,
                   roi_algorithm: str = "MANUAL",
                   implementation_version: str = _IMPLEMENTATION_VERSION) -> Path:
    """Write an RT Structure Set for ``series``.

    patient_name: should equal the image series' PatientName (readers compare them to detect two
        patients sharing one ID); defaults to the same default as ``write_mr_series``.

    rois: ROI name -> list of closed planar polygons, each (N, 3) float LPS mm (N >= 3) lying on
        one slice of ``geometry``; each contour references that slice's SOP instance. An ROI
        with an empty list is written as an ROI without contours.
    colors: ROI name -> [r, g, b] 0..255; defaults cycle through a fixed palette.
    extra_tags: keyword -> value set last (patient, study and equipment tags of a real series).
    roi_algorithm: ROIGenerationAlgorithm of every ROI (MANUAL, SEMIAUTOMATIC or AUTOMATIC).
    implementation_version: the file meta's ImplementationVersionName (the default is kept so that
        the synthetic cohort's files stay byte-identical).
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
    ds.file_meta = _file_meta(RTStructureSetStorage, sop_uid, implementation_version)
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
    first = {uid: k for k, uid in reversed(list(enumerate(series.sop_instance_uids)))}
    rt_series.ContourImageSequence = DicomSequence([image_ref(k) for k in sorted(first.values())])
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
        roi.ROIGenerationAlgorithm = roi_algorithm
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
            c[_CONTOUR_DATA] = _raw_ds(_CONTOUR_DATA, [f"{v:.4f}" for v in poly.reshape(-1)])
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
    # the contour items "were read" in the file's encoding, so their raw ContourData is written as is
    encoding = convert_encodings(ds.SpecificCharacterSet) if "SpecificCharacterSet" in ds else default_encoding
    for rc in contour_items:
        for c in rc.get("ContourSequence", []):
            c.set_original_encoding(False, True, encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path)
    log.debug("wrote RTSTRUCT %s with ROIs %s", path, list(rois))
    return path
