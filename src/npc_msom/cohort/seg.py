"""DICOM Segmentation (SEG) objects: reading with highdicom, matching to a series, masks on its grid.

AI auto-segmentation tools export SEG rather than RTSTRUCT. A SEG's frames reference the image
slices they were drawn on (highdicom and the DICOM standard's Derivation/Source Image
references), so its masks are taken per source slice, with no geometry of our own; segment labels
are mapped to GTV / GTVln by the same rules as RTSTRUCT ROI names (``cohort.roi_patterns``).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npc_msom.cohort.rtstruct import REQUIRED_STRUCTURES, map_roi_name
from npc_msom.config import STRUCTURES, CohortConfig
from npc_msom.errors import DicomError

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class Segment:
    number: int
    label: str
    structure: str | None


@dataclass
class SegSet:
    """What indexing needs of a SEG: its references and its segments (no pixels)."""
    path: Path
    referenced_series_uids: list[str]
    referenced_sop_uids: set[str]
    segments: list[Segment] = field(default_factory=list)


def _read(path: Path, patient: str | None):
    import highdicom as hd
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - highdicom raises many types on a malformed SEG
        raise DicomError(f"cannot read the DICOM SEG ({type(exc).__name__}: {exc})", patient=patient, file=path,
                         expected="a valid DICOM Segmentation object") from None


def read_seg(path: str | Path, config: CohortConfig, *, patient: str | None = None) -> SegSet:
    """Parse a SEG's references and segment labels; DicomError (file named) if it cannot be read."""
    path = Path(path)
    seg = _read(path, patient)
    uids = seg.get_source_image_uids()
    series = list(dict.fromkeys(str(se) for _, se, _ in uids))
    sops = {str(sop) for _, _, sop in uids}
    segments = []
    for n in seg.get_segment_numbers():
        label = str(seg.get_segment_description(n).segment_label)
        segments.append(Segment(number=int(n), label=label, structure=map_roi_name(label, config)))
    return SegSet(path=path, referenced_series_uids=series, referenced_sop_uids=sops, segments=segments)


def structures_of_seg(ss: SegSet) -> tuple[dict[str, list[str]], list[str]]:
    """(structure -> segment labels merged into it, unmatched labels)."""
    mapped: dict[str, list[str]] = {}
    unmatched = []
    for s in ss.segments:
        if s.structure is None:
            unmatched.append(s.label)
        else:
            mapped.setdefault(s.structure, []).append(s.label)
    return {k: mapped[k] for k in STRUCTURES if k in mapped}, unmatched


def seg_masks_on_grid(ss: SegSet, sop_uids: list[str], shape_yx: tuple[int, int],
                      plan: list[tuple[int, int, float]], *, patient: str | None = None
                      ) -> tuple[dict[str, np.ndarray], dict[str, int], list[str]]:
    """The mapped segments of ``ss`` on a series' regular grid.

    sop_uids: the series' slices in the order of its source stack (sorted along the normal);
    plan: grid slice -> (k0, k1, w) as for RTSTRUCT masks (interpolated slices: >= 0.5).
    Slices the SEG has no frame for are empty. A FRACTIONAL SEG is thresholded at 0.5.
    Returns (structure -> bool (G, rows, cols), segment label -> voxels, warnings); raises
    DicomError when the frames do not match the series or the GTV ends up empty.
    """
    seg = _read(ss.path, patient)
    used = [s for s in ss.segments if s.structure is not None]
    if not used:
        return {}, {}, []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=list(sop_uids), segment_numbers=[s.number for s in used],
                combine_segments=False, assert_missing_frames_are_empty=True)
    except Exception as exc:  # noqa: BLE001
        raise DicomError(f"the SEG's frames cannot be placed on the series' slices "
                         f"({type(exc).__name__}: {exc})", patient=patient, file=ss.path,
                         expected="a SEG whose frames reference the slices of one image series") from None
    if arr.shape[1:3] != tuple(shape_yx):
        raise DicomError(f"SEG frames are {arr.shape[1]} x {arr.shape[2]}, the series' slices "
                         f"{shape_yx[0]} x {shape_yx[1]}", patient=patient, file=ss.path,
                         expected="a SEG on the pixel grid of the series it references")
    src_all = np.asarray(arr, dtype=np.float32) >= 0.5          # (K, rows, cols, S)
    masks: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    warn: list[str] = []
    for j, s in enumerate(used):
        src = src_all[..., j]
        grid = np.zeros((len(plan),) + tuple(shape_yx), dtype=bool)
        for g, (k0, k1, w) in enumerate(plan):
            grid[g] = src[k0] if w == 0.0 else ((1.0 - w) * src[k0] + w * src[k1]) >= 0.5
        n = int(grid.sum())
        if n == 0:
            warn.append(f"segment {s.label!r} of the SEG is empty")
            continue
        counts[s.label] = counts.get(s.label, 0) + n
        masks[s.structure] = masks[s.structure] | grid if s.structure in masks else grid
    for structure in REQUIRED_STRUCTURES:
        if structure not in masks:
            labels = [s.label for s in ss.segments]
            raise DicomError(f"the SEG has no non-empty segment mapped to {structure} (segments: "
                             f"{', '.join(repr(x) for x in labels) or 'none'})", patient=patient, file=ss.path,
                             expected=f"a segment labelled like the {structure} (see cohort.roi_patterns)")
    return {k: masks[k] for k in STRUCTURES if k in masks}, counts, warn
