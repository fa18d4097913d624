"""NIfTI cohorts: a folder per patient with one image file per sequence and its label map.

File names follow ``CohortConfig.nifti_image_patterns`` (glob patterns per sequence); the label
file of ``T1_img.nii.gz`` is ``T1_mask.nii.gz`` (``_img`` replaced by ``nifti_label_suffix``; a
name without ``_img`` gets the suffix before ``.nii``). Label values: 0 background, 1 GTV,
2 GTVln. SimpleITK reads NIfTI into LPS, so the geometry matches the DICOM readers'.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from npc_msom.cohort.model import Geometry
from npc_msom.config import CohortConfig
from npc_msom.errors import NiftiError

LABELS: dict[int, str] = {1: "GTV", 2: "GTVln"}


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _stem(name: str) -> tuple[str, str]:
    low = name.lower()
    if low.endswith(".nii.gz"):
        return name[:-7], name[-7:]
    if low.endswith(".nii"):
        return name[:-4], name[-4:]
    return name, ""


def label_name(image_name: str, suffix: str) -> str:
    """'T1_img.nii.gz' -> 'T1_mask.nii.gz'; 't1.nii' -> 't1_mask.nii'."""
    stem, ext = _stem(image_name)
    if stem.endswith("_img"):
        return stem[: -len("_img")] + suffix + ext
    return stem + suffix + ext


def is_label_name(name: str, suffix: str) -> bool:
    stem, _ = _stem(name)
    return stem.endswith(suffix)


@dataclass
class NiftiSequence:
    sequence: str
    image_path: Path
    label_path: Path | None
    geometry: Geometry | None = None
    structures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class NiftiPatient:
    patient_id: str
    folder: Path
    sequences: dict[str, NiftiSequence] = field(default_factory=dict)
    unused_files: list[str] = field(default_factory=list)


def match_sequences(folder: Path, names: list[str], config: CohortConfig, *,
                    patient: str) -> tuple[dict[str, NiftiSequence], list[str]]:
    """Match the NIfTI file names of one folder to sequences; (sequences, unused names).

    Raises NiftiError if two files match the same sequence.
    """
    suffix = config.nifti_label_suffix
    images = [n for n in names if not is_label_name(n, suffix)]
    found: dict[str, NiftiSequence] = {}
    taken: set[str] = set()
    for seq, patterns in config.nifti_image_patterns.items():
        hits = sorted({n for n in images for p in patterns if fnmatch.fnmatchcase(n, p)} - taken)
        if len(hits) > 1:
            raise NiftiError(f"{len(hits)} files match sequence {seq}: {', '.join(hits)}", patient=patient,
                             file=folder / hits[0], expected=f"one image file per sequence "
                                                              f"(patterns {', '.join(patterns)})")
        if hits:
            lab = label_name(hits[0], suffix)
            found[seq] = NiftiSequence(sequence=seq, image_path=folder / hits[0],
                                       label_path=folder / lab if lab in names else None)
            taken.add(hits[0])
            if lab in names:
                taken.add(lab)
    unused = sorted(set(names) - taken)
    return found, unused


def read_header(path: Path, *, patient: str) -> Geometry:
    """Geometry of a NIfTI file without reading its voxels; NiftiError if unreadable or not 3-D."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise NiftiError(f"cannot read the NIfTI header ({_first_line(exc)})", patient=patient, file=path,
                         expected="a readable .nii or .nii.gz file") from None
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim == 4 and size[3] == 1:
        size = size[:3]
    elif dim != 3:
        raise NiftiError(f"a {dim}-D image of size {tuple(size)}", patient=patient, file=path,
                         expected="a 3-D image")
    sp = reader.GetSpacing()[:3]
    org = reader.GetOrigin()[:3]
    dirn = reader.GetDirection()
    if len(dirn) == 16:
        dirn = (dirn[0], dirn[1], dirn[2], dirn[4], dirn[5], dirn[6], dirn[8], dirn[9], dirn[10])
    return Geometry(origin_mm=tuple(float(v) for v in org), spacing_mm=tuple(float(v) for v in sp),
                    direction=tuple(float(v) for v in dirn), size=tuple(int(v) for v in size))


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with the source file and line; the last line says what went wrong
    return lines[-1] if lines else type(exc).__name__


def read_array(path: Path, *, patient: str, pixel_type=sitk.sitkFloat32) -> np.ndarray:
    """(z, y, x) voxels of a NIfTI file; NiftiError if unreadable."""
    try:
        img = sitk.ReadImage(str(path), pixel_type)
    except RuntimeError as exc:
        raise NiftiError(f"cannot read the NIfTI image ({_first_line(exc)})", patient=patient, file=path,
                         expected="a readable .nii or .nii.gz file") from None
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _same_grid(a: Geometry, b: Geometry) -> bool:
    return (tuple(a.size) == tuple(b.size)
            and np.allclose(a.spacing_mm, b.spacing_mm, atol=1e-3, rtol=1e-4)
            and np.allclose(a.origin_mm, b.origin_mm, atol=1e-2)
            and np.allclose(a.direction, b.direction, atol=1e-4))


def read_label_structures(seq: NiftiSequence, *, patient: str) -> dict[str, np.ndarray]:
    """structure -> bool (z, y, x) from the label map; NiftiError for values other than 0, 1, 2."""
    if seq.label_path is None:
        return {}
    lab = read_array(seq.label_path, patient=patient, pixel_type=sitk.sitkFloat32)
    if not np.all(np.isfinite(lab)):
        raise NiftiError("label map has non-finite values", patient=patient, file=seq.label_path,
                         expected="labels 0 (background), 1 (GTV), 2 (GTVln)")
    values = np.unique(lab)
    bad = [v for v in values.tolist() if v not in (0.0, 1.0, 2.0)]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:8])
        raise NiftiError(f"label map has values {shown}", patient=patient, file=seq.label_path,
                         expected="labels 0 (background), 1 (GTV), 2 (GTVln)")
    return {name: lab == value for value, name in LABELS.items() if np.any(lab == value)}


def index_patient(folder: Path, names: list[str], config: CohortConfig, *, patient: str) -> NiftiPatient:
    """Headers of one patient folder, label maps checked (values and grid); no image voxels kept."""
    p = NiftiPatient(patient_id=patient, folder=folder)
    p.sequences, p.unused_files = match_sequences(folder, names, config, patient=patient)
    for seq in p.sequences.values():
        seq.geometry = read_header(seq.image_path, patient=patient)
        if seq.label_path is None:
            seq.warnings.append(f"no label file {label_name(seq.image_path.name, config.nifti_label_suffix)}; "
                                "no structures for this sequence")
            continue
        lg = read_header(seq.label_path, patient=patient)
        if not _same_grid(seq.geometry, lg):
            raise NiftiError(f"label map grid (size {lg.size}, spacing {lg.spacing_mm}, origin {lg.origin_mm}) "
                             f"differs from its image's (size {seq.geometry.size}, spacing "
                             f"{seq.geometry.spacing_mm}, origin {seq.geometry.origin_mm})",
                             patient=patient, file=seq.label_path, expected="a label map on the image's grid")
        seq.structures = list(read_label_structures(seq, patient=patient))
        if not seq.structures:
            seq.warnings.append("label map is empty (no GTV or GTVln voxels)")
    return p


def load_sequence(seq: NiftiSequence, *, patient: str) -> tuple[np.ndarray, Geometry, dict[str, np.ndarray]]:
    """(image float32 (z, y, x), geometry, masks) of one sequence."""
    image = read_array(seq.image_path, patient=patient).astype(np.float32, copy=False)
    masks = read_label_structures(seq, patient=patient)
    geometry = seq.geometry if seq.geometry is not None else read_header(seq.image_path, patient=patient)
    if image.shape != tuple(reversed(geometry.size)):
        raise NiftiError(f"image of shape {image.shape}", patient=patient, file=seq.image_path,
                         expected=f"the shape its header declares {tuple(reversed(geometry.size))}")
    return image, geometry, masks
