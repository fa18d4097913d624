"""One series preprocessed in memory, every slice of it: what ``npc-msom predict`` feeds the
detector and the classifier of a trained run for a new patient.

The same steps as the stage (``stage.process_series``), in the same order and with the same
functions: 1 mm resampling, the body's percentile window to 1..255, each slice centred on a square
canvas and resized to ``image_size``, and (for JPEG runs) the stage's JPEG round trip, so that a
slice here equals the file the stage would write for it. Unlike the stage it keeps every slice (a
patient without contours has no tumour slices to choose from) and the way back from a slice's
pixels to the 1 mm grid (``to_grid``), so that predicted masks can be drawn on the patient's series.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from npc_msom.cohort.model import Geometry, Series
from npc_msom.config import PreprocessConfig
from npc_msom.preprocess.intensity import apply_window, body_mask, intensity_window
from npc_msom.preprocess.resample import isotropic_reference, native_plane_of, resample_series
from npc_msom.preprocess.slices import pad_to_square, resize_image


@dataclass(frozen=True)
class VolumeSlices:
    """Every slice of a series on the 1 mm grid, as the stage would write it.

    images: uint8 (Z, S, S), S = image_size; z_mm: (Z,) patient z of each slice's centre (as
    slices.csv); body: bool (Z, Y, X) the body mask of the stage; masks: structure -> bool
    (Z, Y, X) contours on the 1 mm grid; geometry: the 1 mm grid; square: side of the square canvas
    (px of the 1 mm grid); offset: (top, left) of the slice in the canvas.
    """
    images: np.ndarray
    z_mm: np.ndarray
    body_fraction: np.ndarray
    masks: dict
    geometry: Geometry
    square: int
    offset: tuple[int, int]

    @property
    def pixel_mm(self) -> float:
        return self.square * float(self.geometry.spacing_mm[0]) / self.images.shape[-1]

    def to_grid(self, masks_px: np.ndarray) -> np.ndarray:
        """bool (Z, S, S) masks on the slices' pixels -> bool (Z, Y, X) on the 1 mm grid.

        The inverse of pad-and-resize: bilinear back to the canvas (>= 0.5), then the canvas cropped.
        """
        nx, ny, nz = self.geometry.size
        top, left = self.offset
        out = np.zeros((nz, ny, nx), dtype=bool)
        for z in np.flatnonzero(masks_px.reshape(len(masks_px), -1).any(axis=1)):
            canvas = np.asarray(Image.fromarray(masks_px[z].astype(np.float32)).resize(
                (self.square, self.square), Image.BILINEAR)) >= 0.5
            out[z] = canvas[top:top + ny, left:left + nx]
        return out


def stored_like_stage(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 (S, S) as the stage's file of it reads back: JPEG (quality 95) for a JPEG run."""
    if cfg.image_format.lower() not in ("jpg", "jpeg"):
        return img
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"))


def preprocess_volume(series: Series, cfg: PreprocessConfig) -> VolumeSlices:
    """Every slice of ``series`` preprocessed as the stage does (see the module docstring)."""
    image, masks, geom = resample_series(series, cfg.spacing_mm)
    # the body mask and the window from the series' own voxels, as stage.process_series
    native = series.image.astype(np.float32, copy=False)
    body = body_mask(native)
    u8 = apply_window(image, *intensity_window(native, cfg.intensity_percentiles, body))
    frac = body_fraction_on_grid(series, cfg, body)
    direction = np.asarray(geom.direction).reshape(3, 3)
    centre_xy = np.array([(geom.size[0] - 1) / 2.0, (geom.size[1] - 1) / 2.0])
    images, z_mm = [], []
    square, offset = 0, (0, 0)
    for z in range(u8.shape[0]):
        sq, offset = pad_to_square(u8[z], fill=1)
        square = sq.shape[0]
        images.append(stored_like_stage(resize_image(sq, cfg.image_size), cfg))
        idx = np.array([centre_xy[0], centre_xy[1], z], dtype=float)
        point = np.asarray(geom.origin_mm) + direction @ (idx * np.asarray(geom.spacing_mm))
        z_mm.append(round(float(point[2]), 3))
    return VolumeSlices(images=np.stack(images) if images else np.zeros((0, cfg.image_size, cfg.image_size), np.uint8),
                        z_mm=np.asarray(z_mm, dtype=float),
                        body_fraction=frac,
                        masks=masks, geometry=geom, square=square, offset=offset)


def body_fraction_on_grid(series: Series, cfg: PreprocessConfig, body: np.ndarray | None = None) -> np.ndarray:
    """(Z,) the share of each 1 mm plane inside the body: the stage's rule (the body mask of the
    nearest source slice)."""
    body = body_mask(series.image.astype(np.float32, copy=False)) if body is None else body
    ref = isotropic_reference(series.geometry, cfg.spacing_mm)
    return body.reshape(body.shape[0], -1).mean(axis=1)[native_plane_of(series, ref)]
