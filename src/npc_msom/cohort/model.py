"""What a cohort is, independent of the file format it came from.

Geometry follows SimpleITK and DICOM: patient millimetres in LPS. Arrays are indexed (z, y, x);
``Geometry`` tuples are in SimpleITK's (x, y, z) order. ``direction`` is the 3x3 direction matrix,
row-major, whose *columns* are the unit vectors of the x (column), y (row) and z (slice) axes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from npc_msom.config import SEQUENCES, STRUCTURES  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Geometry:
    origin_mm: tuple[float, float, float]      # LPS position of voxel (x=0, y=0, z=0)
    spacing_mm: tuple[float, float, float]     # (x, y, z)
    direction: tuple[float, ...]               # 9 values, row-major, columns = axis directions
    size: tuple[int, int, int]                 # (x, y, z) voxels

    def to_dict(self) -> dict:
        return {"origin_mm": list(self.origin_mm), "spacing_mm": list(self.spacing_mm),
                "direction": list(self.direction), "size": list(self.size)}


@dataclass
class Series:
    """One MR sequence of one patient with its structure masks on the same grid.

    image: float32 (z, y, x), scanner values after the DICOM rescale.
    masks: structure name -> bool (z, y, x); a structure absent from the contours is absent here.
    """
    sequence: str
    image: np.ndarray
    geometry: Geometry
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    series_uid: str = ""
    description: str = ""
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """The image (or another array on the same grid) as a SimpleITK image."""
        arr = self.image if array is None else array
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin(self.geometry.origin_mm)
        img.SetSpacing(self.geometry.spacing_mm)
        img.SetDirection(self.geometry.direction)
        return img


@dataclass(frozen=True)
class Outcome:
    msom: bool
    organ: str | None            # liver | lung | bone | None
    dmfs_months: float           # months to MSOM or to last follow-up
    os_months: float
    os_event: bool


@dataclass
class Patient:
    patient_id: str
    series: dict[str, Series] = field(default_factory=dict)
    clinical: dict | None = None
    outcome: Outcome | None = None


def geometry_from_sitk(img: sitk.Image) -> Geometry:
    return Geometry(origin_mm=tuple(float(v) for v in img.GetOrigin()),
                    spacing_mm=tuple(float(v) for v in img.GetSpacing()),
                    direction=tuple(float(v) for v in img.GetDirection()),
                    size=tuple(int(v) for v in img.GetSize()))
