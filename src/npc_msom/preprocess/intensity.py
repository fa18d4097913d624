"""Intensity normalisation: robust percentiles inside the body mapped to 1..255 (uint8)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu


def body_mask(image: np.ndarray) -> np.ndarray:
    """bool, same shape: the body against the air around it.

    Otsu's threshold on log intensities, then holes filled slice by slice (airway, sinuses). On
    linear intensities Otsu splits bright fluid from the rest on T2WI and leaves muscle and fat
    outside the "body", which pushed the window so high that soft tissue went black.
    """
    finite = image[np.isfinite(image)]
    if finite.size == 0 or finite.min() == finite.max():
        return np.ones(image.shape, dtype=bool)
    shifted = np.log1p(np.clip(image - finite.min(), 0, None))
    body = shifted > threshold_otsu(shifted[np.isfinite(shifted)])
    if body.ndim == 3:
        return np.stack([ndimage.binary_fill_holes(s) for s in body])
    return ndimage.binary_fill_holes(body)


def normalise_to_uint8(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """float (any shape) -> uint8 in 1..255; the window is the body's [p_low, p_high] percentiles.

    0 is left unused so that padding added later (value 0) stays distinguishable from tissue.
    """
    body = body_mask(image)
    values = image[body]
    lo, hi = np.percentile(values, percentiles) if values.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    scaled = (np.clip(image, lo, hi) - lo) / (hi - lo)
    return (1 + np.round(scaled * 254)).astype(np.uint8)
