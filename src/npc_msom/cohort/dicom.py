"""DICOM image series: header scan, grouping, sequence classification, slice order and geometry.

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on
the cross product of the ImageOrientationPatient row and column vectors), never by file name or
InstanceNumber. A series whose slices are not evenly spaced (a missing slice, uneven spacing) is
put on a regular grid at the median spacing: slices that lie on the grid are used as they are,
the others are interpolated linearly along the normal, and the manifest says so.
"""
from __future__ import annotations

import dataclasses

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from npc_msom.cohort.model import Geometry
from npc_msom.cohort.rtstruct import RTSTRUCT_SOP_CLASS, SliceStack
from npc_msom.cohort.seg import SEG_SOP_CLASS
from npc_msom.config import CohortConfig
from npc_msom.errors import DicomError

log = logging.getLogger(__name__)

# Storage classes that are images we could use; anything else (presentation states, reports,
# secondary captures with no geometry) is ignored with a note.
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "PatientID", "PatientName", "PatientBirthDate",
    "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ProtocolName",
    "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "Rows", "Columns", "ImageType", "ContrastBolusAgent", "InstanceNumber", "BitsAllocated",
    "SamplesPerPixel", "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "PixelRepresentation",
]
NON_DICOM_SUFFIXES = {".csv", ".xlsx", ".xls", ".json", ".txt", ".md", ".yaml", ".yml", ".png",
                      ".jpg", ".jpeg", ".pdf", ".html", ".htm", ".xml", ".py", ".zip", ".gz",
                      ".nii", ".nrrd", ".mha", ".mhd", ".log", ".ini", ".tsv", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                 "1.2.840.10008.1.2.1.99"}


@dataclass
class ImageFile:
    """Header facts of one image file (one slice)."""
    path: Path
    patient_id: str
    patient_name: str
    birth_date: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    frame_of_reference_uid: str
    description: str
    protocol: str
    series_number: int | None
    image_type: tuple[str, ...]
    contrast_agent: str
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float] | None   # (row spacing = y, column spacing = x)
    rows: int
    cols: int
    n_frames: int


@dataclass
class RTStructFile:
    path: Path
    patient_id: str
    patient_name: str
    birth_date: str
    sop_uid: str


@dataclass
class ScanResult:
    images: list[ImageFile] = field(default_factory=list)
    rtstructs: list[RTStructFile] = field(default_factory=list)
    segs: list[RTStructFile] = field(default_factory=list)             # DICOM SEG objects
    unreadable: list[tuple[Path, str]] = field(default_factory=list)   # (file, problem)
    other_files: list[Path] = field(default_factory=list)              # not DICOM, ignored
    other_dicom: list[tuple[Path, str, str]] = field(default_factory=list)  # (file, patient, what)


def _s(ds, keyword, default="") -> str:
    v = getattr(ds, keyword, None)
    if v is None:
        return default
    return str(v).strip()


def _floats(ds, keyword, n) -> np.ndarray | None:
    v = getattr(ds, keyword, None)
    if v is None:
        return None
    try:
        arr = np.asarray([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _int(ds, keyword, default=None):
    v = getattr(ds, keyword, None)
    try:
        return int(v) if v is not None and str(v).strip() != "" else default
    except (TypeError, ValueError):
        return default


def is_probably_dicom(path: Path) -> bool:
    """DICM magic at byte 128 (a Part 10 file)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_header(path: Path, *, patient: str | None = None):
    """pydicom header without pixel data; raises DicomError (file named) if unreadable."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise DicomError(f"not a readable DICOM file ({exc})", patient=patient, file=path,
                         expected="a DICOM Part 10 file") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a corrupt file for us
        raise DicomError(f"corrupt DICOM file ({type(exc).__name__}: {exc})", patient=patient, file=path,
                         expected="a complete, readable DICOM file") from None


def _expected_pixel_bytes(ds) -> int | None:
    try:
        ts = str(ds.file_meta.TransferSyntaxUID)
    except AttributeError:
        return None
    if ts not in _UNCOMPRESSED:
        return None
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    bits = _int(ds, "BitsAllocated", 16)
    spp = _int(ds, "SamplesPerPixel", 1)
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if not rows or not cols:
        return None
    if bits == 1:
        # 1-bit pixels (DICOM SEG, overlays) are packed 8 to a byte across frames (PS3.5 8.1.1)
        return (rows * cols * spp * frames + 7) // 8
    return rows * cols * spp * frames * max(bits, 8) // 8


def scan_dicom(paths: Iterable[Path]) -> ScanResult:
    """Read the headers of ``paths`` (no pixel data) and sort them into images and RTSTRUCTs.

    A file that is not DICOM (no DICM magic, no DICOM-like suffix) is listed in ``other_files``.
    A file that looks like DICOM but cannot be parsed, or whose pixel data are shorter than its
    header promises (a truncated copy), is listed in ``unreadable`` with the problem.
    """
    res = ScanResult()
    # pydicom warns about every odd value of a broken file; we report the file ourselves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            _scan_one(path, res)
    return res


def _scan_chunk(paths: list[Path]) -> ScanResult:
    return scan_dicom(paths)


def scan_dicom_parallel(paths: list[Path], workers: int = 0, chunk: int = 64) -> ScanResult:
    """:func:`scan_dicom` over forked processes (``workers``: 0 = up to 2), in the order of ``paths``.
    A cohort of 186 patients has ~14,000 files; each header read costs ~3 ms of CPU in pydicom."""
    import multiprocessing as mp
    import os
    n = workers or min(2, os.cpu_count() or 1)
    paths = list(paths)
    if n <= 1 or len(paths) < 2 * chunk or "fork" not in mp.get_all_start_methods():
        return scan_dicom(paths)
    from npc_msom.runtime import progress  # noqa: PLC0415
    out = ScanResult()
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    log.info("reading %d DICOM headers (%d processes)", len(paths), n)
    with mp.get_context("fork").Pool(n) as pool:
        for part in progress(pool.imap(_scan_chunk, chunks), total=len(chunks), desc="DICOM headers",
                             unit=f"x{chunk} files"):
            for f in dataclasses.fields(ScanResult):
                getattr(out, f.name).extend(getattr(part, f.name))
    return out


def _scan_one(path: Path, res: ScanResult) -> None:
    import pydicom
    from pydicom.errors import InvalidDicomError
    looks_dicom = path.suffix.lower() in DICOM_SUFFIXES or is_probably_dicom(path)
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            # the read stops right before the (7FE0,0010) element: where the pixels start
            pixel_offset = fp.tell()
    except InvalidDicomError as exc:
        if looks_dicom:
            res.unreadable.append((path, f"not a readable DICOM file ({exc})"))
        else:
            res.other_files.append(path)
        return
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt files
        res.unreadable.append((path, f"corrupt DICOM file ({type(exc).__name__}: {exc})"))
        return
    sop_class = _s(ds, "SOPClassUID")
    modality = _s(ds, "Modality").upper()
    pid = _s(ds, "PatientID")
    if not sop_class and not _s(ds, "SOPInstanceUID"):
        res.unreadable.append((path, "corrupt DICOM file: no SOPClassUID or SOPInstanceUID could be read"))
        return
    if sop_class == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
        res.rtstructs.append(RTStructFile(path=path, patient_id=pid, patient_name=_s(ds, "PatientName"),
                                          birth_date=_s(ds, "PatientBirthDate"),
                                          sop_uid=_s(ds, "SOPInstanceUID")))
        return
    if sop_class == SEG_SOP_CLASS or modality == "SEG":
        res.segs.append(RTStructFile(path=path, patient_id=pid, patient_name=_s(ds, "PatientName"),
                                     birth_date=_s(ds, "PatientBirthDate"), sop_uid=_s(ds, "SOPInstanceUID")))
        return
    if not _s(ds, "SeriesInstanceUID") or getattr(ds, "Rows", None) is None:
        res.other_dicom.append((path, pid, f"a DICOM object without image geometry "
                                           f"(modality {modality or '?'}, SOP class {sop_class or '?'})"))
        return
    need = _expected_pixel_bytes(ds)
    if need is not None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            res.unreadable.append((path, f"cannot read the file ({exc})"))
            return
        # the pixel element's own tag and length take 8 (implicit VR) or 12 bytes
        if size < pixel_offset + 8 + need:
            res.unreadable.append((path, f"truncated DICOM file: {size} bytes, but its header "
                                         f"({pixel_offset} bytes) and pixel data ({need} bytes) "
                                         f"need at least {pixel_offset + 8 + need}"))
            return
    ps = _floats(ds, "PixelSpacing", 2)
    res.images.append(ImageFile(
        path=path, patient_id=pid, patient_name=_s(ds, "PatientName"),
        birth_date=_s(ds, "PatientBirthDate"), study_uid=_s(ds, "StudyInstanceUID"),
        series_uid=_s(ds, "SeriesInstanceUID"), sop_uid=_s(ds, "SOPInstanceUID"),
        sop_class_uid=sop_class, modality=modality,
        frame_of_reference_uid=_s(ds, "FrameOfReferenceUID"),
        description=_s(ds, "SeriesDescription"), protocol=_s(ds, "ProtocolName"),
        series_number=_int(ds, "SeriesNumber"),
        image_type=tuple(str(v).upper() for v in (getattr(ds, "ImageType", None) or [])),
        contrast_agent=_s(ds, "ContrastBolusAgent"),
        ipp=_floats(ds, "ImagePositionPatient", 3), iop=_floats(ds, "ImageOrientationPatient", 6),
        pixel_spacing=tuple(float(v) for v in ps) if ps is not None else None,
        rows=_int(ds, "Rows", 0), cols=_int(ds, "Columns", 0),
        n_frames=_int(ds, "NumberOfFrames", 1) or 1))


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------
def _normalise_text(text: str) -> str:
    # '_' is a word character for \b, but scanners use it as a separator ("AX_T1_TSE")
    return re.sub(r"[_]+", " ", text.lower())


def classify_series(description: str, protocol: str, config: CohortConfig, *,
                    contrast_agent: str = "", image_type: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """(sequence or None, why) for a series from its description, protocol and contrast tag.

    Ignore patterns and a LOCALIZER image type are checked first; then the sequences in the
    order of ``config.sequence_patterns``; a T1 series with a contrast agent tag is CE-T1WI.
    """
    text = _normalise_text(f"{description} | {protocol}")
    if any("LOCALIZER" in t for t in image_type):
        return None, "localizer (ImageType LOCALIZER)"
    for pat in config.ignore_patterns:
        if re.search(pat, text, flags=re.IGNORECASE):
            return None, f"ignored sequence (description/protocol matches {pat!r})"
    for seq, patterns in config.sequence_patterns.items():
        for pat in patterns:
            if re.search(pat, text, flags=re.IGNORECASE):
                if seq == "T1WI" and contrast_agent:
                    return "CE-T1WI", f"T1 description {pat!r} with contrast agent {contrast_agent!r}"
                return seq, f"description/protocol matches {pat!r}"
    return None, "unrecognised sequence (no pattern of cohort.sequence_patterns matches " \
                 f"description {description!r}, protocol {protocol!r})"


# ---------------------------------------------------------------------------------------------
# A series: sorted slices, regular grid, geometry
# ---------------------------------------------------------------------------------------------
@dataclass
class SeriesIndex:
    """One image series, header facts only; enough to read its pixels later."""
    patient_id: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    description: str
    protocol: str
    series_number: int | None
    contrast_agent: str
    files: list[ImageFile]                 # sorted along the normal
    sequence: str | None = None
    reason: str = ""
    geometry: Geometry | None = None
    stack: SliceStack | None = None        # the source slices (sorted)
    # grid slice g -> (k0, k1, w): value = (1 - w) * slice k0 + w * slice k1 (k1 == k0, w == 0
    # for a slice used as it is)
    plan: list[tuple[int, int, float]] = field(default_factory=list)
    missing_positions_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    missing_grid_index: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return len(self.files)

    def sop_uids(self) -> set[str]:
        return {f.sop_uid for f in self.files}


def orientation_label(direction) -> str:
    """'axial', 'coronal' or 'sagittal', with the angle when oblique (> 0.5 degrees)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    n = d[:, 2]
    axis = int(np.argmax(np.abs(n)))
    name = ("sagittal", "coronal", "axial")[axis]
    angle = float(np.degrees(np.arccos(min(1.0, abs(n[axis])))))
    # an in-plane rotation also makes a series oblique
    inplane = float(np.degrees(np.arccos(min(1.0, max(abs(d[:, 0]))))))
    worst = max(angle, inplane)
    return name if worst <= 0.5 else f"oblique {name} ({worst:.1f} deg)"


def build_series(files: list[ImageFile], config: CohortConfig, *, patient: str) -> SeriesIndex:
    """Check a series' slices for consistency, sort them along the normal, plan a regular grid.

    Raises DicomError (patient and file named) for slices without geometry, with different
    orientation, size or pixel spacing, or two slices at the same position.
    """
    f0 = files[0]
    s = SeriesIndex(patient_id=patient, series_uid=f0.series_uid, study_uid=f0.study_uid,
                    frame_of_reference_uid=f0.frame_of_reference_uid, description=f0.description,
                    protocol=f0.protocol, series_number=f0.series_number,
                    contrast_agent=next((f.contrast_agent for f in files if f.contrast_agent), ""),
                    files=list(files))
    for f in files:
        for what, val in (("ImagePositionPatient", f.ipp), ("ImageOrientationPatient", f.iop),
                          ("PixelSpacing", f.pixel_spacing)):
            if val is None:
                raise DicomError(f"slice of series {f.description!r} has no valid {what}", patient=patient,
                                 file=f.path, expected=f"MR slices with {what}")
        if f.n_frames > 1:
            raise DicomError(f"multi-frame image ({f.n_frames} frames) in series {f.description!r}",
                             patient=patient, file=f.path, expected="one slice per file (classic MR storage)")
    iop = files[0].iop
    for f in files[1:]:
        if np.abs(f.iop - iop).max() > 1e-3:
            raise DicomError(f"slices of series {f.description!r} have different orientations "
                             f"({np.round(iop, 4).tolist()} vs {np.round(f.iop, 4).tolist()})",
                             patient=patient, file=f.path, expected="one ImageOrientationPatient per series")
        if (f.rows, f.cols) != (files[0].rows, files[0].cols):
            raise DicomError(f"slices of series {f.description!r} have different sizes "
                             f"({files[0].rows}x{files[0].cols} vs {f.rows}x{f.cols})",
                             patient=patient, file=f.path, expected="one Rows x Columns per series")
        if np.abs(np.subtract(f.pixel_spacing, files[0].pixel_spacing)).max() > 1e-3:
            raise DicomError(f"slices of series {f.description!r} have different pixel spacings",
                             patient=patient, file=f.path, expected="one PixelSpacing per series")
    r = iop[:3] / np.linalg.norm(iop[:3])
    c = iop[3:] / np.linalg.norm(iop[3:])
    if abs(float(r @ c)) > 1e-3:
        raise DicomError(f"ImageOrientationPatient of series {f0.description!r} is not orthogonal",
                         patient=patient, file=f0.path, expected="orthonormal row and column directions")
    c = c - (r @ c) * r
    c /= np.linalg.norm(c)
    n = np.cross(r, c)
    pos = np.asarray([f.ipp @ n for f in files])
    order = np.argsort(pos, kind="stable")
    s.files = [files[i] for i in order]
    pos = pos[order]
    ipps = np.stack([f.ipp for f in s.files])
    row_sp, col_sp = s.files[0].pixel_spacing
    s.stack = SliceStack(origins_mm=ipps, row_dir=r, col_dir=c, spacing_xy_mm=(col_sp, row_sp),
                         shape_yx=(s.files[0].rows, s.files[0].cols))
    if len(files) < 2:
        raise DicomError(f"series {f0.description!r} has a single slice", patient=patient, file=f0.path,
                         expected="a 3-D series of several slices")
    gaps = np.diff(pos)
    dup = np.nonzero(gaps < 1e-3 * max(1.0, float(np.median(gaps)) if len(gaps) else 1.0))[0]
    if len(dup):
        a, b = s.files[dup[0]], s.files[dup[0] + 1]
        raise DicomError(f"two slices of series {f0.description!r} lie at the same position "
                         f"({pos[dup[0]]:.2f} mm): {a.path.name} and {b.path.name}", patient=patient,
                         file=b.path, expected="one slice per position (no repeated or multi-echo slices)")
    dz = float(np.median(gaps))
    # in-plane shift between slices (gantry tilt / shear): the grid assumes a straight stack
    rel = ipps - ipps[0]
    shear = float(np.abs(np.stack([rel @ r, rel @ c], axis=1)).max())
    if shear > 0.1 * min(row_sp, col_sp):
        s.warnings.append(f"slices are not stacked straight along the normal (in-plane shift up to "
                          f"{shear:.2f} mm); treated as a straight stack")
    n_grid = int(round((pos[-1] - pos[0]) / dz)) + 1
    grid = pos[0] + dz * np.arange(n_grid)
    tol = 0.1 * dz
    plan: list[tuple[int, int, float]] = []
    missing_pos, missing_idx = [], []
    used = set()
    for g, zg in enumerate(grid):
        k = int(np.argmin(np.abs(pos - zg)))
        if abs(pos[k] - zg) <= tol:
            plan.append((k, k, 0.0))
            used.add(k)
            continue
        k1 = int(np.searchsorted(pos, zg))
        k0 = max(0, k1 - 1)
        k1 = min(len(pos) - 1, k1)
        w = 0.0 if k1 == k0 else float((zg - pos[k0]) / (pos[k1] - pos[k0]))
        plan.append((k0, k1, w))
        missing_pos.append(zg)
        missing_idx.append(g)
    s.plan = plan
    s.missing_positions_mm = np.asarray(missing_pos)
    s.missing_grid_index = missing_idx
    big = np.nonzero(gaps > config.max_gap_factor * dz)[0]
    regular_gaps = gaps[gaps <= config.max_gap_factor * dz]
    resampled = len(used) < len(pos)
    uneven = resampled or (len(regular_gaps) > 0 and np.abs(regular_gaps - dz).max() > 0.02 * dz)
    for i in big:
        n_miss = int(round(gaps[i] / dz)) - 1
        s.warnings.append(f"missing slice(s): a gap of {gaps[i]:.2f} mm between slices at {pos[i]:.2f} and "
                          f"{pos[i + 1]:.2f} mm (spacing {dz:.2f} mm); {max(n_miss, 1)} slice(s) interpolated")
    if uneven:
        how = (f"resampled to a regular {dz:.2f} mm grid by linear interpolation along the normal"
               if resampled else f"each slice used at the nearest position of a regular {dz:.2f} mm grid")
        s.warnings.append(f"uneven slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm); {how}")
    direction = (r[0], c[0], n[0], r[1], c[1], n[1], r[2], c[2], n[2])
    s.geometry = Geometry(origin_mm=tuple(float(v) for v in ipps[0]),
                          spacing_mm=(float(col_sp), float(row_sp), dz),
                          direction=tuple(float(v) for v in direction),
                          size=(int(s.files[0].cols), int(s.files[0].rows), n_grid))
    return s


def series_summary(s: SeriesIndex) -> dict:
    """JSON-ready description of a series for the manifest."""
    out = {"series_uid": s.series_uid, "study_uid": s.study_uid, "description": s.description,
           "protocol": s.protocol, "series_number": s.series_number,
           "frame_of_reference_uid": s.frame_of_reference_uid, "n_files": s.n_files,
           "folder": _common_folder([f.path for f in s.files])}
    if s.geometry is not None:
        g = s.geometry
        out.update({"n_slices": g.size[2], "size": list(g.size),
                    "spacing_mm": [round(v, 4) for v in g.spacing_mm],
                    "origin_mm": [round(v, 4) for v in g.origin_mm],
                    "direction": [round(v, 6) for v in g.direction],
                    "orientation": orientation_label(g.direction)})
    return out


def _common_folder(paths: list[Path]) -> str:
    if not paths:
        return ""
    try:
        return os.path.commonpath([str(p.parent) for p in paths])
    except ValueError:
        return str(paths[0].parent)


# ---------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------
def read_slice(f: ImageFile, *, patient: str) -> np.ndarray:
    """float32 (rows, cols) of one slice after RescaleSlope/Intercept; DicomError if unreadable."""
    import pydicom
    ds = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(f.path))
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoding failures of any kind are a bad file
        ts = ""
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            ts = f" (transfer syntax {meta.TransferSyntaxUID.name})"
        raise DicomError(f"cannot read the pixel data{ts}: {type(exc).__name__}: {exc}", patient=patient,
                         file=f.path, expected="readable pixel data: uncompressed, RLE, JPEG (baseline, "
                                               "lossless), JPEG-LS or JPEG 2000 (decoded by pylibjpeg "
                                               "with its libjpeg and openjpeg plugins)") from None
    if arr.shape != (f.rows, f.cols):
        raise DicomError(f"pixel data of shape {arr.shape}", patient=patient, file=f.path,
                         expected=f"one {f.rows} x {f.cols} grey-level slice")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def read_volume(s: SeriesIndex) -> np.ndarray:
    """float32 (z, y, x) on the series' regular grid (interpolated slices where planned)."""
    src = np.stack([read_slice(f, patient=s.patient_id) for f in s.files])
    return resample_to_grid(src, s.plan)


def resample_to_grid(src: np.ndarray, plan: list[tuple[int, int, float]]) -> np.ndarray:
    """(K, y, x) source slices -> (G, y, x) following ``plan`` (linear along the normal)."""
    out = np.empty((len(plan),) + src.shape[1:], dtype=np.float32)
    for g, (k0, k1, w) in enumerate(plan):
        out[g] = src[k0] if w == 0.0 else (1.0 - w) * src[k0] + w * src[k1]
    return out
