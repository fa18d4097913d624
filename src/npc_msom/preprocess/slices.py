"""Choosing the slices to keep and bringing each to a square ``image_size`` image.

All functions are pure: arrays in, arrays out. Arrays are (z, y, x); a slice is (y, x).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def select_slices(masks: dict[str, np.ndarray], *, neighbours: int = 0, slice_step: int = 1,
                  negatives: int = 0, body: np.ndarray | None = None,
                  rng: np.random.Generator | None = None, min_gap: int = 5,
                  body_fraction: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """Indices of tumour slices (holding GTV or GTVln, +- ``neighbours``, every ``slice_step``-th)
    and of up to ``negatives`` tumour-free slices at least ``min_gap`` slices from any tumour and
    inside the body (when ``body`` (z, y, x) or ``body_fraction`` (z,), the share of each slice
    inside the body, is given).
    """
    n_z = next(iter(masks.values())).shape[0] if masks else (body.shape[0] if body is not None else 0)
    has = np.zeros(n_z, dtype=bool)
    for m in masks.values():
        has |= m.reshape(n_z, -1).any(axis=1)
    tumour = np.flatnonzero(has)
    if tumour.size == 0:
        return [], []
    keep = set()
    for z in tumour[::max(1, slice_step)]:
        for dz in range(-neighbours, neighbours + 1):
            if 0 <= z + dz < n_z:
                keep.add(int(z + dz))
    pos = sorted(keep)
    neg: list[int] = []
    if negatives > 0:
        near = ndimage.binary_dilation(has, iterations=min_gap) if min_gap > 0 else has
        candidates = np.flatnonzero(~near)
        if (body is not None or body_fraction is not None) and candidates.size:
            # a negative should show anatomy, not the air above the head
            frac = body.reshape(n_z, -1).mean(axis=1) if body_fraction is None else np.asarray(body_fraction)
            candidates = candidates[frac[candidates] > 0.5 * frac.max()]
        if candidates.size:
            rng = rng or np.random.default_rng(0)
            neg = sorted(int(v) for v in rng.choice(candidates, size=min(negatives, candidates.size), replace=False))
    return pos, neg


def pad_to_square(slice_yx: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Centre the slice in a square canvas; returns the canvas and the (top, left) offset."""
    h, w = slice_yx.shape
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    out = np.full((n, n), fill, dtype=slice_yx.dtype)
    out[top:top + h, left:left + w] = slice_yx
    return out, (top, left)


def resize_image(slice_u8: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, n) -> uint8 (size, size), bilinear (antialiased when shrinking)."""
    return np.asarray(Image.fromarray(slice_u8).resize((size, size), Image.BILINEAR))


def resize_instances(mask_yx: np.ndarray, size: int) -> list[np.ndarray]:
    """bool (n, n) -> one bool (size, size) mask per connected component.

    Each component is resized on its own (bilinear, >= 0.5) so touching nodes stay separate
    instances and a node smaller than a pixel after shrinking keeps its centre pixel.
    """
    labels, n = ndimage.label(mask_yx)
    out = []
    scale = size / mask_yx.shape[0]
    for k in range(1, n + 1):
        comp = (labels == k).astype(np.float32)
        small = np.asarray(Image.fromarray(comp).resize((size, size), Image.BILINEAR)) >= 0.5
        if not small.any():
            cy, cx = ndimage.center_of_mass(comp)
            small[min(size - 1, int((cy + 0.5) * scale)), min(size - 1, int((cx + 0.5) * scale))] = True
        out.append(small)
    return out
