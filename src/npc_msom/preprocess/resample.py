"""Resampling a series and its masks to an isotropic grid (1 mm in the study).

Images use linear interpolation. Masks are interpolated linearly as 0/1 floats and thresholded at
0.5 (as nnU-Net resamples segmentations), which keeps the voxel volume of the contours; a signed
distance (shape-based) interpolation was tried and cut the caps of ellipsoids on 5 mm slices,
losing ~4% of their volume. A connected component that would vanish (a node smaller than the new
spacing) keeps the voxel nearest its centre, so small nodes are never dropped.
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from npc_msom.cohort.model import Geometry, Series, geometry_from_sitk


def isotropic_reference(geometry: Geometry, spacing_mm: float) -> sitk.Image:
    """An empty image on the grid that covers the same extent at ``spacing_mm`` in every axis."""
    size = [max(1, int(math.floor(n * s / spacing_mm + 1e-6))) for n, s in zip(geometry.size, geometry.spacing_mm)]
    # keep the grid centred on the original extent: first new voxel centre shifted so that both
    # grids span the same physical box (voxel edges aligned at the start)
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    shift = np.array([(spacing_mm - s) / 2.0 for s in geometry.spacing_mm])
    origin = np.asarray(geometry.origin_mm) + direction @ shift
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing([spacing_mm] * 3)
    ref.SetDirection(geometry.direction)
    ref.SetOrigin(tuple(float(v) for v in origin))
    return ref


def resample_mask(mask: np.ndarray, series: Series, reference: sitk.Image) -> np.ndarray:
    """bool (z, y, x) on the series grid -> bool (z, y, x) on ``reference``'s grid."""
    out_shape = tuple(reversed(reference.GetSize()))
    if not mask.any():
        return np.zeros(out_shape, dtype=bool)
    sp = series.geometry.spacing_mm
    # work on the bounding box with a margin so the distance maps stay small
    # bounding box from the projections on each axis (cheaper than np.nonzero of the volume)
    ext = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    margin = 3
    lo = np.maximum([e[0] - margin for e in ext], 0)
    hi = np.minimum([e[-1] + margin + 1 for e in ext], mask.shape)
    crop = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    img = sitk.GetImageFromArray(crop.astype(np.float32))
    img.SetSpacing(sp)
    img.SetDirection(series.geometry.direction)
    direction = np.asarray(series.geometry.direction).reshape(3, 3)
    origin = np.asarray(series.geometry.origin_mm) + direction @ (np.array([lo[2], lo[1], lo[0]]) * np.asarray(sp))
    img.SetOrigin(tuple(float(v) for v in origin))
    # resample onto the part of the reference grid that the crop covers (+1 voxel), not the whole
    # volume: the same values at the same points, at the cost of the crop
    corners = np.array([[a, b, c] for a in (-0.5, crop.shape[2] - 0.5) for b in (-0.5, crop.shape[1] - 0.5)
                        for c in (-0.5, crop.shape[0] - 0.5)])
    phys = np.asarray(img.GetOrigin()) + (direction @ (corners * np.asarray(sp)).T).T
    ref_dir = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    ref_idx = ((np.linalg.inv(ref_dir) @ (phys - np.asarray(reference.GetOrigin())).T).T
               / np.asarray(reference.GetSpacing()))
    size_xyz = np.asarray(reference.GetSize())
    r_lo = np.clip(np.floor(ref_idx.min(axis=0)).astype(int) - 1, 0, size_xyz)
    r_hi = np.clip(np.ceil(ref_idx.max(axis=0)).astype(int) + 2, 0, size_xyz)
    out = np.zeros(out_shape, dtype=bool)
    if np.all(r_hi > r_lo):
        sub = sitk.Image([int(v) for v in r_hi - r_lo], sitk.sitkUInt8)
        sub.SetSpacing(reference.GetSpacing())
        sub.SetDirection(reference.GetDirection())
        sub.SetOrigin(tuple(float(v) for v in np.asarray(reference.GetOrigin())
                            + ref_dir @ (r_lo * np.asarray(reference.GetSpacing()))))
        res = sitk.Resample(img, sub, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out[r_lo[2]:r_hi[2], r_lo[1]:r_hi[1], r_lo[0]:r_hi[0]] = sitk.GetArrayFromImage(res) >= 0.5
    # components that vanished: keep the voxel nearest their centre of mass
    labels, n = ndimage.label(crop)
    for k in range(1, n + 1):
        comp = labels == k
        c_idx = np.array(ndimage.center_of_mass(comp)) + lo  # (z, y, x) on the source grid
        point = np.asarray(series.geometry.origin_mm) + direction @ (c_idx[::-1] * np.asarray(sp))
        idx = reference.TransformPhysicalPointToIndex(tuple(float(v) for v in point))
        zyx = tuple(reversed(idx))
        if not all(0 <= i < s for i, s in zip(zyx, out_shape)):
            continue
        # is this component represented near its centre already?
        r = max(1, int(math.ceil(max(sp) / reference.GetSpacing()[0])))
        sl = tuple(slice(max(0, i - r), i + r + 1) for i in zyx)
        if not out[sl].any():
            out[zyx] = True
    return out


def resample_series(series: Series, spacing_mm: float = 1.0) -> tuple[np.ndarray, dict[str, np.ndarray], Geometry]:
    """Image float32 (z, y, x) and masks bool (z, y, x) on an isotropic ``spacing_mm`` grid."""
    reference = isotropic_reference(series.geometry, spacing_mm)
    img = sitk.Resample(series.to_sitk(series.image.astype(np.float32, copy=False)), reference,
                        sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    image = sitk.GetArrayFromImage(img)
    masks = {name: resample_mask(m, series, reference) for name, m in series.masks.items()}
    return image, masks, geometry_from_sitk(reference)


def resample_planes(series: Series, reference: sitk.Image, z_indices) -> np.ndarray:
    """float32 (len(z_indices), y, x): the planes ``z_indices`` of ``reference``'s grid only.

    The same linear interpolation at the same physical points as resampling the whole volume
    (:func:`resample_series`), at the cost of the planes that are kept: the 1 mm volume of a 5 mm
    series is ~5x its voxels, and preprocessing keeps about one plane in ten.
    """
    source = series.to_sitk(series.image.astype(np.float32, copy=False))
    nx, ny, _ = reference.GetSize()
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin(), dtype=float)
    dz = reference.GetSpacing()[2]
    out = np.zeros((len(z_indices), ny, nx), dtype=np.float32)
    plane = sitk.Image([nx, ny, 1], sitk.sitkUInt8)
    plane.SetSpacing(reference.GetSpacing())
    plane.SetDirection(reference.GetDirection())
    for i, z in enumerate(z_indices):
        plane.SetOrigin(tuple(float(v) for v in origin + direction[:, 2] * (dz * int(z))))
        res = sitk.Resample(source, plane, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out[i] = sitk.GetArrayFromImage(res)[0]
    return out


def native_plane_of(series: Series, reference: sitk.Image) -> np.ndarray:
    """For each plane of ``reference`` (an isotropic grid over the series), the index of the
    series' own slice nearest to it (int, len = reference planes)."""
    g = series.geometry
    direction = np.asarray(g.direction, dtype=float).reshape(3, 3)
    normal = direction[:, 2]
    n_ref = reference.GetSize()[2]
    ref_dir = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    ref_z = np.asarray(reference.GetOrigin()) @ normal + np.arange(n_ref) * reference.GetSpacing()[2] * (ref_dir[:, 2] @ normal)
    src_z = np.asarray(g.origin_mm) @ normal + np.arange(g.size[2]) * g.spacing_mm[2]
    return np.clip(np.rint((ref_z - src_z[0]) / g.spacing_mm[2]).astype(int), 0, g.size[2] - 1)
