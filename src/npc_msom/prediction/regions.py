"""Tumour-region pooling of an FPN feature map: the mean feature vector inside the GTV, inside the
nodes (GTVln) and in a peritumoural ring, instead of over the whole slice.

Whole-slice average pooling gives a 1 cm node about 1% of the vector; pooling over the region
gives it all of it (Cancer Imaging 2023, doi 10.1186/s40644-023-00530-5: whole image 0.717 ->
region 0.739 -> region + margin 0.802). A mask at image resolution becomes per-cell weights at the
feature map's resolution by area averaging (the fraction of each cell the region covers), so a
region smaller than one cell still pools a weighted vector rather than nothing.

Pure functions on arrays / tensors: masks (H, W) bool at image resolution, maps (B, C, h, w).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from npc_msom.prediction.burden import ring_of  # the one ring rule (in-plane)

REGIONS: tuple[str, ...] = ("GTV", "GTVln", "ring")


def cell_weights(mask_hw: np.ndarray | torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """(h, w) float: the fraction of each feature cell covered by the mask (area averaging).

    The image is zero-padded at the bottom / right to the map's stride first, as the network's
    input is padded to a multiple of 32 (``MSOMClassifier.prepare``)."""
    m = torch.as_tensor(np.asarray(mask_hw, np.float32) if not torch.is_tensor(mask_hw) else mask_hw).float()
    h, w = out_hw
    H, W = m.shape
    sy, sx = max(1, int(np.ceil(H / h))), max(1, int(np.ceil(W / w)))
    m = F.pad(m, (0, sx * w - W, 0, sy * h - H))
    return F.avg_pool2d(m[None, None], kernel_size=(sy, sx)).reshape(h, w)


def masked_mean(fmap: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
    """fmap (C, h, w), weights (h, w) >= 0 -> (the weighted mean (C,), the total weight).
    Zeros and weight 0 for an empty region."""
    total = float(weights.sum())
    if total <= 0:
        return torch.zeros(fmap.shape[0], dtype=fmap.dtype), 0.0
    return (fmap * weights.to(fmap.dtype)).sum(dim=(1, 2)) / total, total


def ring_mask(tumour_hw: np.ndarray, ring_mm: float, pixel_mm: float) -> np.ndarray:
    """(H, W) bool: the band of width ``ring_mm`` around the tumour (GTV and nodes), outside it."""
    t = np.asarray(tumour_hw, bool)
    if ring_mm <= 0 or not t.any():
        return np.zeros_like(t)
    return ring_of(t[None], t[None], ring_mm, pixel_mm)[0]


def slice_region_masks(gtv: np.ndarray | None, gtvln: np.ndarray | None, ring_mm: float, pixel_mm: float,
                       shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The three region masks of one slice (absent structures are empty)."""
    g = np.zeros(shape, bool) if gtv is None else np.asarray(gtv, bool)
    n = np.zeros(shape, bool) if gtvln is None else np.asarray(gtvln, bool)
    return {"GTV": g, "GTVln": n & ~g, "ring": ring_mask(g | n, ring_mm, pixel_mm)}


def pool_regions(fmaps: torch.Tensor, masks: Sequence[Mapping[str, np.ndarray]],
                 regions: Sequence[str] = REGIONS) -> tuple[np.ndarray, np.ndarray]:
    """fmaps (B, C, h, w) and one {region: (H, W) mask} per slice -> (vectors (B, R, C) float32,
    areas (B, R) float32, each region's area in pixels of the image)."""
    b, c, h, w = fmaps.shape
    vecs = np.zeros((b, len(regions), c), np.float32)
    areas = np.zeros((b, len(regions)), np.float32)
    for i in range(b):
        for r, name in enumerate(regions):
            m = masks[i].get(name)
            if m is None or not np.any(m):
                continue
            v, _ = masked_mean(fmaps[i].float().cpu(), cell_weights(m, (h, w)))
            vecs[i, r] = v.numpy()
            areas[i, r] = float(np.count_nonzero(m))
    return vecs, areas
