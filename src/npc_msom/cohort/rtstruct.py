"""DICOM RTSTRUCT: reading, matching to an image series, ROI-name mapping and rasterisation.

Pixel-centre convention: a contour point is turned into a *continuous index* (x = column,
y = row) of the slice it lies on, where pixel (row j, column i) has its centre at index (i, j)
(the DICOM and ITK convention; ``synth.dicom_writer.mask_to_contours`` writes contours in the
same convention). A pixel belongs to a structure when its centre lies inside the contours of its
slice by the even-odd rule over all contours of that ROI on that slice, so a contour inside
another one cuts a hole (necrosis) and two separate contours make two islands. A pixel centre
lying exactly on a contour line counts as inside.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npc_msom.config import STRUCTURES, CohortConfig
from npc_msom.errors import RTStructError

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_EPS = 1e-3  # index units: DS values carry ~1e-4 mm rounding


# ---------------------------------------------------------------------------------------------
# ROI names
# ---------------------------------------------------------------------------------------------
def normalise_roi_name(name: str) -> str:
    """Lower case without spaces, '-' and '_': 'GTVnd_L 1' -> 'gtvndl1'."""
    return re.sub(r"[\s\-_]+", "", str(name)).lower()


def map_roi_name(name: str, config: CohortConfig) -> str | None:
    """The structure (GTV or GTVln) an ROI name stands for, or None.

    Structures are tried in the order of ``config.roi_patterns`` (GTVln first by default, since
    node names like 'GTVn' start like primary names like 'GTVnx').
    """
    norm = normalise_roi_name(name)
    for structure, patterns in config.roi_patterns.items():
        for pat in patterns:
            if re.search(pat, norm, flags=re.IGNORECASE):
                return structure
    return None


def map_roi_names(names, config: CohortConfig) -> tuple[dict[str, list[str]], list[str]]:
    """(structure -> ROI names that map to it, unmatched names), both in input order."""
    mapped: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for n in names:
        s = map_roi_name(n, config)
        if s is None:
            unmatched.append(n)
        else:
            mapped.setdefault(s, []).append(n)
    return mapped, unmatched


def looks_like_tumour(name: str) -> bool:
    """An unmatched name that starts like a GTV deserves a warning (likely a spelling to add)."""
    return normalise_roi_name(name).startswith("gtv")


# ---------------------------------------------------------------------------------------------
# Rasterisation (pure functions)
# ---------------------------------------------------------------------------------------------
def fill_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of closed polygons given in continuous index (x, y) onto a (rows, cols) grid.

    polygons: each (N, 2) float array of (x = column, y = row) vertices, closed implicitly.
    Returns bool (rows, cols): True where the pixel centre (integer x, y) is inside by the
    even-odd rule over all polygons together, or lies on a polygon's boundary.
    """
    ny, nx = int(shape[0]), int(shape[1])
    out = np.zeros((ny, nx), dtype=bool)
    polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    polys = [p for p in polys if len(p) >= 1]
    if not polys or ny == 0 or nx == 0:
        return out
    # A vertex within _EPS of a pixel row is put on it: contours drawn through pixel centres of an
    # oblique series come back a hair off the row (float and DS rounding), and an edge tilted by
    # 1e-9 px would otherwise be neither horizontal (boundary) nor crossed by its row (parity).
    ys_all = np.concatenate([p[:, 1] for p in polys])
    ys_row = np.round(ys_all)
    ys_all = np.where(np.abs(ys_all - ys_row) < _EPS, ys_row, ys_all)
    polys = [np.column_stack([p[:, 0], y]) for p, y in
             zip(polys, np.split(ys_all, np.cumsum([len(p) for p in polys])[:-1]))]
    x0 = np.concatenate([p[:, 0] for p in polys])
    y0 = np.concatenate([p[:, 1] for p in polys])
    x1 = np.concatenate([np.roll(p[:, 0], -1) for p in polys])
    y1 = np.concatenate([np.roll(p[:, 1], -1) for p in polys])
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    r_first = max(0, int(np.ceil(ylo.min() - _EPS)))
    r_last = min(ny - 1, int(np.floor(yhi.max() + _EPS)))
    if r_first > r_last:
        return out
    rows = np.arange(r_first, r_last + 1, dtype=np.float64)[:, None]      # (H, 1)
    dy = y1 - y0
    slanted = dy != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_slope = np.where(slanted, (x1 - x0) / np.where(slanted, dy, 1.0), 0.0)
    xcross = x0 + (rows - y0) * inv_slope                                 # (H, E)

    # interior: parity of the crossings left of each pixel centre, half-open in y so that a
    # vertex on a row is counted once
    half_open = slanted & (ylo <= rows) & (rows < yhi)
    hr, he = np.nonzero(half_open)
    first_col = np.clip(np.floor(xcross[hr, he]).astype(np.int64) + 1, 0, nx)
    toggles = np.zeros((rows.shape[0], nx + 1), dtype=np.int32)
    np.add.at(toggles, (hr, first_col), 1)
    inside = (np.cumsum(toggles[:, :nx], axis=1) % 2).astype(bool)

    # boundary: pixel centres on a slanted edge (closed range) or on a horizontal edge
    closed = slanted & (ylo - _EPS <= rows) & (rows <= yhi + _EPS)
    br, be = np.nonzero(closed)
    xb = xcross[br, be]
    xr = np.round(xb)
    on = (np.abs(xb - xr) < _EPS) & (xr >= 0) & (xr < nx)
    inside[br[on], xr[on].astype(np.int64)] = True
    flat = ~slanted
    if flat.any():
        for xa, xb_, yy in zip(x0[flat], x1[flat], y0[flat]):
            ry = round(yy)
            if abs(yy - ry) < _EPS and r_first <= ry <= r_last:
                lo = max(0, int(np.ceil(min(xa, xb_) - _EPS)))
                hi = min(nx - 1, int(np.floor(max(xa, xb_) + _EPS)))
                if lo <= hi:
                    inside[ry - r_first, lo:hi + 1] = True
    out[r_first:r_last + 1] = inside
    return out


@dataclass(frozen=True)
class SliceStack:
    """Where the slices of an image series lie: what rasterisation needs of a series.

    origins_mm: (K, 3) LPS position of pixel (0, 0) of each slice, sorted along the normal.
    row_dir / col_dir: unit vectors of increasing column (x) and row (y) index.
    spacing_xy_mm: (column spacing, row spacing) = size of a pixel along x and y.
    shape_yx: (rows, columns).
    """
    origins_mm: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing_xy_mm: tuple[float, float]
    shape_yx: tuple[int, int]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def positions_mm(self) -> np.ndarray:
        """(K,) distance of each slice along the normal."""
        return self.origins_mm @ self.normal


def stack_from_geometry(origin_mm, spacing_mm, direction, size) -> SliceStack:
    """The SliceStack of a regular grid given as SimpleITK-style geometry (x, y, z order)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    origin = np.asarray(origin_mm, dtype=np.float64)
    k = np.arange(int(size[2]))[:, None]
    origins = origin[None, :] + k * float(spacing_mm[2]) * d[:, 2][None, :]
    return SliceStack(origins_mm=origins, row_dir=d[:, 0], col_dir=d[:, 1],
                      spacing_xy_mm=(float(spacing_mm[0]), float(spacing_mm[1])),
                      shape_yx=(int(size[1]), int(size[0])))


@dataclass
class ContourPlacement:
    """Contours of one ROI assigned to slices: slice index -> list of (N, 2) index polygons."""
    on_slice: dict[int, list[np.ndarray]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def place_contours(contours: list[np.ndarray], stack: SliceStack, *, roi: str = "",
                   z_tolerance_mm: float | None = None, extra_positions_mm: np.ndarray | None = None,
                   patient: str | None = None, file: str | Path | None = None) -> tuple[ContourPlacement, dict]:
    """Assign each planar contour (N, 3) LPS mm to a slice and convert it to index (x, y).

    A contour goes to the slice whose plane it lies on (within ``z_tolerance_mm``, default a
    quarter of the median slice spacing). ``extra_positions_mm`` are further plane positions
    (e.g. of missing slices on the regular grid); a contour on one of those is returned in the
    second value, keyed by the position's index in that array.
    Raises RTStructError for a contour that is not planar, lies between or outside the slices,
    or lies entirely outside the image.
    """
    n = stack.normal
    pos = stack.positions_mm
    if len(pos) > 1:
        dz = float(np.median(np.diff(pos)))
    else:
        dz = 1.0
    tol = z_tolerance_mm if z_tolerance_mm is not None else max(0.25 * abs(dz), 1e-3)
    placement = ContourPlacement()
    extra: dict[int, list[np.ndarray]] = {}
    ny, nx = stack.shape_yx
    sx, sy = stack.spacing_xy_mm
    for ci, pts in enumerate(contours):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        d = pts @ n
        if np.ptp(d) > tol:
            raise RTStructError(
                f"contour {ci + 1} of ROI {roi!r} is not parallel to the image slices "
                f"(spans {np.ptp(d):.2f} mm along the slice normal)", patient=patient, file=file,
                expected="planar contours drawn on the slices of the referenced series")
        dm = float(d.mean())
        k = int(np.argmin(np.abs(pos - dm)))
        origin = None
        if abs(pos[k] - dm) <= tol:
            origin = stack.origins_mm[k]
            target = ("slice", k)
        elif extra_positions_mm is not None and len(extra_positions_mm):
            e = int(np.argmin(np.abs(extra_positions_mm - dm)))
            if abs(extra_positions_mm[e] - dm) <= tol:
                origin = stack.origins_mm[0] + (extra_positions_mm[e] - pos[0]) * n
                target = ("extra", e)
        if origin is None:
            where = ("outside the series" if dm < pos.min() - tol or dm > pos.max() + tol
                     else "between two slices")
            raise RTStructError(
                f"contour {ci + 1} of ROI {roi!r} lies at {dm:.2f} mm along the slice normal, "
                f"{where} (slices span {pos.min():.2f} to {pos.max():.2f} mm every {dz:.2f} mm)",
                patient=patient, file=file, expected="contours on the slice planes of the referenced series")
        rel = pts - origin[None, :]
        xy = np.stack([rel @ stack.row_dir / sx, rel @ stack.col_dir / sy], axis=1)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        if hi[0] < -0.5 or hi[1] < -0.5 or lo[0] > nx - 0.5 or lo[1] > ny - 0.5:
            raise RTStructError(
                f"contour {ci + 1} of ROI {roi!r} lies entirely outside the image "
                f"(index x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f}; image {nx} x {ny})",
                patient=patient, file=file, expected="contours inside the referenced series' field of view")
        if lo[0] < -0.5 or lo[1] < -0.5 or hi[0] > nx - 0.5 or hi[1] > ny - 0.5:
            placement.warnings.append(f"a contour of ROI {roi!r} extends past the image edge and was clipped")
        if target[0] == "slice":
            placement.on_slice.setdefault(target[1], []).append(xy)
        else:
            extra.setdefault(target[1], []).append(xy)
    return placement, extra


def rasterise(contours: list[np.ndarray], stack: SliceStack, **kwargs) -> np.ndarray:
    """bool (K, rows, cols) mask of one ROI's contours (LPS mm) on the slices of ``stack``."""
    placement, _ = place_contours(contours, stack, **kwargs)
    out = np.zeros((len(stack.origins_mm),) + tuple(stack.shape_yx), dtype=bool)
    for k, polys in placement.on_slice.items():
        out[k] = fill_polygons(polys, stack.shape_yx)
    return out


# ---------------------------------------------------------------------------------------------
# Reading an RTSTRUCT
# ---------------------------------------------------------------------------------------------
@dataclass
class RoiInfo:
    number: int
    name: str
    frame_of_reference_uid: str = ""
    structure: str | None = None
    contours: list[np.ndarray] = field(default_factory=list)   # closed planar, (N, 3) LPS mm
    skipped_contours: int = 0                                   # POINT / OPEN_PLANAR / < 3 points


@dataclass
class StructureSet:
    path: Path
    patient_id: str
    sop_instance_uid: str
    frame_of_reference_uids: list[str]
    referenced_series_uids: list[str]
    referenced_sop_uids: set[str]
    rois: list[RoiInfo]
    label: str = ""


def _get(ds, keyword, default=None):
    v = getattr(ds, keyword, None)
    return default if v is None or v == "" else v


def _contour_data(item):
    """ContourData of one contour item: the raw DS bytes split into an array of strings (numpy
    parses them to float in one call, ~20x faster than pydicom's DSfloat per value); the parsed
    values when the element was already converted; None when absent or empty."""
    from pydicom.dataelem import RawDataElement
    elem = item.get_item(0x30060050) if 0x30060050 in item else None
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if raw is None:
            return None
        raw = bytes(raw).strip(b" \0")
        return np.array(raw.split(b"\\")) if raw else None
    return _get(item, "ContourData", None)


def read_structure_set(ds, path: str | Path, config: CohortConfig, *, with_contours: bool = True,
                       patient: str | None = None) -> StructureSet:
    """Parse an RTSTRUCT dataset (pydicom) into a StructureSet; ROI names mapped via ``config``.

    Raises RTStructError for a structure set whose contours refer to ROIs it does not declare or
    whose contour data are malformed.
    """
    path = Path(path)
    pid = patient if patient is not None else str(_get(ds, "PatientID", ""))
    fors: list[str] = []
    ref_series: list[str] = []
    ref_sops: set[str] = set()
    for fr in _get(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        u = _get(fr, "FrameOfReferenceUID")
        if u:
            fors.append(str(u))
        for st in _get(fr, "RTReferencedStudySequence", []) or []:
            for se in _get(st, "RTReferencedSeriesSequence", []) or []:
                u = _get(se, "SeriesInstanceUID")
                if u:
                    ref_series.append(str(u))
                for im in _get(se, "ContourImageSequence", []) or []:
                    u = _get(im, "ReferencedSOPInstanceUID")
                    if u:
                        ref_sops.add(str(u))
    rois: dict[int, RoiInfo] = {}
    for item in _get(ds, "StructureSetROISequence", []) or []:
        try:
            num = int(item.ROINumber)
        except (AttributeError, TypeError, ValueError):
            raise RTStructError("an ROI in StructureSetROISequence has no valid ROINumber", patient=pid,
                                file=path, expected="every ROI with an ROINumber") from None
        name = str(_get(item, "ROIName", f"ROI {num}")).strip()
        rfor = str(_get(item, "ReferencedFrameOfReferenceUID", ""))
        if rfor and rfor not in fors:
            fors.append(rfor)
        rois[num] = RoiInfo(number=num, name=name, frame_of_reference_uid=rfor,
                            structure=map_roi_name(name, config))
    for rc in _get(ds, "ROIContourSequence", []) or []:
        try:
            num = int(rc.ReferencedROINumber)
        except (AttributeError, TypeError, ValueError):
            raise RTStructError("an item of ROIContourSequence has no valid ReferencedROINumber",
                                patient=pid, file=path, expected="ROI contours that name their ROI") from None
        if num not in rois:
            raise RTStructError(f"contours refer to ROI number {num}, which StructureSetROISequence does "
                                f"not declare (declared: {sorted(rois)})", patient=pid, file=path,
                                expected="every contoured ROI declared in StructureSetROISequence")
        roi = rois[num]
        for c in _get(rc, "ContourSequence", []) or []:
            for im in _get(c, "ContourImageSequence", []) or []:
                u = _get(im, "ReferencedSOPInstanceUID")
                if u:
                    ref_sops.add(str(u))
            gtype = str(_get(c, "ContourGeometricType", "CLOSED_PLANAR")).upper()
            data = _contour_data(c)
            if gtype != "CLOSED_PLANAR" or data is None:
                roi.skipped_contours += 1
                continue
            if not with_contours:
                n_pts = len(data) // 3 if hasattr(data, "__len__") else 0
                if n_pts >= 3:
                    roi.contours.append(np.empty((0, 3)))  # count only
                else:
                    roi.skipped_contours += 1
                continue
            try:
                arr = (data.astype(np.float64) if isinstance(data, np.ndarray)
                       else np.asarray([float(v) for v in data], dtype=np.float64))
            except (TypeError, ValueError):
                raise RTStructError(f"ROI {roi.name!r} has ContourData that are not numbers", patient=pid,
                                    file=path, expected="x, y, z triplets in mm") from None
            if arr.size % 3 or not np.all(np.isfinite(arr)):
                raise RTStructError(f"ROI {roi.name!r} has ContourData of {arr.size} values",
                                    patient=pid, file=path, expected="finite x, y, z triplets in mm")
            pts = arr.reshape(-1, 3)
            if len(pts) < 3:
                roi.skipped_contours += 1
                continue
            roi.contours.append(pts)
    label = str(_get(ds, "StructureSetLabel", "") or "")
    return StructureSet(path=path, patient_id=pid, sop_instance_uid=str(_get(ds, "SOPInstanceUID", "")),
                        frame_of_reference_uids=fors, referenced_series_uids=list(dict.fromkeys(ref_series)),
                        referenced_sop_uids=ref_sops, rois=list(rois.values()), label=label)


def structures_of(sets: list[StructureSet]) -> tuple[dict[str, list[str]], list[str]]:
    """(structure -> ROI names merged into it, unmatched ROI names) over several structure sets."""
    mapped: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for ss in sets:
        for roi in ss.rois:
            if roi.structure is None:
                unmatched.append(roi.name)
            else:
                mapped.setdefault(roi.structure, []).append(roi.name)
    return {s: mapped[s] for s in STRUCTURES if s in mapped}, unmatched


# Every NPC has a primary tumour, so a contoured series without any GTV voxel is bad input; an
# N0 patient has no nodes, and clinics often keep an empty node ROI for them, so an empty GTVln
# is only a warning.
REQUIRED_STRUCTURES: tuple[str, ...] = ("GTV",)


def masks_on_grid(sets: list[StructureSet], stack: SliceStack, plan: list[tuple[int, int, float]], *,
                  missing_positions_mm: np.ndarray | None = None, missing_grid_index: list[int] | None = None,
                  patient: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, int], list[str]]:
    """Rasterise the mapped ROIs of ``sets`` onto a series' regular grid.

    stack: the series' source slices; plan: grid slice -> (k0, k1, w) as made by the DICOM reader
    (w == 0: source slice k0 as it is; otherwise interpolated between k0 and k1).
    ROIs mapped to the same structure are merged (union); within one ROI the contours of a slice
    combine by the even-odd rule. A grid slice with no source slice takes the contours drawn on
    its plane if any, otherwise the linear interpolation of its neighbours' masks (>= 0.5).
    Returns (structure -> bool (G, rows, cols), ROI name -> voxel count, warnings).
    An empty ROI (no closed contour, or contours that enclose no pixel centre) is a warning
    when its structure gets voxels from another ROI or is not required; raises RTStructError
    when a structure of ``REQUIRED_STRUCTURES`` ends up empty.
    """
    missing_positions_mm = np.zeros(0) if missing_positions_mm is None else np.asarray(missing_positions_mm)
    missing_grid_index = missing_grid_index or []
    shape = (len(plan),) + tuple(stack.shape_yx)
    masks: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    warnings: list[str] = []
    empty: list[tuple[RoiInfo, StructureSet, str]] = []
    for ss in sets:
        for roi in ss.rois:
            if roi.structure is None:
                continue
            if not roi.contours:
                why = (f"its {roi.skipped_contours} contour(s) are points or open lines"
                       if roi.skipped_contours else "it has no contour")
                empty.append((roi, ss, why))
                continue
            if roi.skipped_contours:
                warnings.append(f"ROI {roi.name!r}: {roi.skipped_contours} point/open/degenerate contour(s) ignored")
            placement, extra = place_contours(roi.contours, stack, roi=roi.name,
                                              extra_positions_mm=missing_positions_mm, patient=patient,
                                              file=ss.path)
            warnings.extend(placement.warnings)
            src = np.zeros((len(stack.origins_mm),) + tuple(stack.shape_yx), dtype=bool)
            for k, polys in placement.on_slice.items():
                src[k] = fill_polygons(polys, stack.shape_yx)
            direct = {missing_grid_index[e]: fill_polygons(polys, stack.shape_yx) for e, polys in extra.items()}
            grid = np.zeros(shape, dtype=bool)
            for g, (k0, k1, w) in enumerate(plan):
                if g in direct:
                    grid[g] = direct[g]
                elif w == 0.0:
                    grid[g] = src[k0]
                else:
                    grid[g] = ((1.0 - w) * src[k0] + w * src[k1]) >= 0.5
            n = int(grid.sum())
            if n == 0:
                empty.append((roi, ss, "its contours enclose no pixel centre"))
                continue
            counts[roi.name] = counts.get(roi.name, 0) + n
            if roi.structure in masks:
                masks[roi.structure] |= grid
            else:
                masks[roi.structure] = grid
    for roi, ss, why in empty:
        if roi.structure in masks:
            warnings.append(f"ROI {roi.name!r} is empty ({why}); {roi.structure} comes from the other ROI(s)")
        elif roi.structure not in REQUIRED_STRUCTURES:
            warnings.append(f"ROI {roi.name!r} is empty ({why}): no {roi.structure} for this series")
        else:
            raise RTStructError(f"ROI {roi.name!r} (mapped to {roi.structure}) is empty: {why}",
                                patient=patient, file=ss.path,
                                expected=f"closed planar contours enclosing the {roi.structure}")
    if sets:
        for structure in REQUIRED_STRUCTURES:
            if structure not in masks and not any(r.structure == structure for ss in sets for r in ss.rois):
                unmatched = [r.name for ss in sets for r in ss.rois if r.structure is None]
                raise RTStructError(f"no ROI maps to {structure} (ROIs that match no pattern: "
                                    f"{', '.join(repr(n) for n in unmatched) or 'none'})", patient=patient,
                                    file=sets[0].path,
                                    expected=f"an ROI named like the {structure} (see cohort.roi_patterns)")
    return {s: masks[s] for s in STRUCTURES if s in masks}, counts, warnings
