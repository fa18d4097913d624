"""A NIfTI mask drawn on a DICOM series (DICOM images + ``ROI-*.nii``, as in the public NPC MRI
dataset of Li Y et al., Sci Data 2025), put on the series' regular grid.

The mask is read with SimpleITK (which turns NIfTI's RAS into DICOM's LPS). On the series' grid
already (within 0.01 mm and 1e-4 in direction) it is used voxel for voxel; on another grid (a
different orientation, a crop, another spacing) it is resampled by nearest neighbour in patient
millimetres, after checking that the two overlap. Every non-zero voxel is taken as
``CohortConfig.dicom_mask_structure`` (GTV by default): the dataset's masks are binary.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from npc_msom.cohort.model import Geometry
from npc_msom.cohort.nifti import _first_line, _same_grid, read_header
from npc_msom.errors import NiftiError

log = logging.getLogger(__name__)


def _extent_overlaps(a: Geometry, b: Geometry) -> bool:
    """Whether the voxel-centre boxes of two grids overlap (tested on b's axes, both ways)."""
    def corners(g: Geometry) -> np.ndarray:
        d = np.asarray(g.direction).reshape(3, 3)
        n = np.asarray(g.size) - 1
        idx = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])], float)
        return np.asarray(g.origin_mm) + (idx * np.asarray(g.spacing_mm)) @ d.T

    for g1, g2 in ((a, b), (b, a)):
        d = np.asarray(g1.direction).reshape(3, 3)
        p1, p2 = corners(g1) @ d, corners(g2) @ d
        tol = 0.5 * np.asarray(g1.spacing_mm)
        if np.any(p2.max(0) < p1.min(0) - tol) or np.any(p2.min(0) > p1.max(0) + tol):
            return False
    return True


def mask_on_series(path: str | Path, geometry: Geometry, structure: str, *, patient: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, int], list[str]]:
    """A NIfTI mask on the DICOM series' grid ``geometry``.

    Returns ({structure: bool (z, y, x)}, {file name: voxels}, warnings); raises NiftiError (patient
    and file named) when the file cannot be read, the grids do not overlap, or the mask is empty
    on the series.
    """
    path = Path(path)
    g = read_header(path, patient=patient)
    if not _extent_overlaps(g, geometry):
        raise NiftiError(f"the mask's grid (origin {np.round(g.origin_mm, 1).tolist()} mm, size {list(g.size)}) "
                         f"does not overlap the series' (origin {np.round(geometry.origin_mm, 1).tolist()} mm, "
                         f"size {list(geometry.size)})", patient=patient, file=path,
                         expected="a mask drawn on the DICOM series beside it")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise NiftiError(f"cannot read the NIfTI mask ({_first_line(exc)})", patient=patient, file=path,
                         expected="a readable .nii or .nii.gz file") from None
    if img.GetDimension() == 4:
        img = img[:, :, :, 0]
    arr = sitk.GetArrayFromImage(img)
    values = np.unique(arr[np.isfinite(arr)]) if arr.dtype.kind == "f" else np.unique(arr)
    warnings: list[str] = []
    nonzero = [v for v in values.tolist() if v != 0]
    if len(nonzero) > 1:
        warnings.append(f"mask {path.name} holds the values {nonzero[:6]}; every non-zero voxel is taken as "
                        f"{structure} (cohort.dicom_mask_structure)")
    binary = sitk.Cast(sitk.NotEqual(img, 0), sitk.sitkUInt8)
    if _same_grid(g, geometry):
        out = sitk.GetArrayFromImage(binary).astype(bool)
    else:
        ref = sitk.Image([int(v) for v in geometry.size], sitk.sitkUInt8)
        ref.SetOrigin(tuple(geometry.origin_mm))
        ref.SetSpacing(tuple(geometry.spacing_mm))
        ref.SetDirection(tuple(geometry.direction))
        out = sitk.GetArrayFromImage(sitk.Resample(binary, ref, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                   0, sitk.sitkUInt8)).astype(bool)
        before = float(np.count_nonzero(arr)) * float(np.prod(g.spacing_mm))
        after = float(out.sum()) * float(np.prod(geometry.spacing_mm))
        warnings.append(f"mask {path.name} is on another grid than the series; resampled onto it "
                        f"(nearest neighbour): {before:.0f} mm3 -> {after:.0f} mm3")
        if before > 0 and after > 0 and abs(after - before) > 0.25 * before:
            warnings.append(f"mask {path.name}: only {after / before:.0%} of its volume lies on the series")
    n = int(out.sum())
    if n == 0:
        raise NiftiError(f"the mask has no non-zero voxel on the series' grid "
                         f"({int(np.count_nonzero(arr))} in the file)", patient=patient, file=path,
                         expected=f"a non-empty {structure} mask on the series it was drawn on")
    return {structure: out}, {path.name: n}, warnings
