"""Tumour-burden descriptors of one patient and sequence, from its masks in patient millimetres.

What every staging system is built on (T and N of the AJCC 8th edition, and the volumes that
beat deep models on RADCURE): how much primary tumour, how many nodes and how large, and two
things radiologists read on the images themselves: central necrosis of a node (a core darker than
its enhancing rim on CE-T1WI, a strong adverse sign in NPC) and the heterogeneity of the primary.

All functions are pure. Arrays are (z, y, x) with ``spacing_zyx_mm`` the distance between voxel
centres along each axis; a plane of a sparse stack (every k-th 1 mm slice) stands for k mm of
tumour, and that is the z spacing to pass (a systematic sample: Cavalieri's volume estimator).
Nodes are the 3-D connected components of the GTVln mask (26-connectivity), so a node drawn on
several slices counts once. Intensities are those of the preprocessed 8-bit slices (a per-series
percentile window), so only within-patient contrasts (core against rim, primary against its ring)
are used, never absolute values, which differ between scanners.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import ndimage

# names and order of the descriptor columns; the volumes and counts are log1p-transformed by the
# model (LOG_FEATURES), sizes in mm and ratios are used as they are
BURDEN_FEATURES: tuple[str, ...] = (
    "gtv_volume_ml", "gtv_max_area_cm2", "n_nodes", "node_volume_ml", "largest_node_volume_ml",
    "largest_node_short_axis_mm", "node_dark_fraction", "n_dark_nodes", "gtv_dark_fraction",
    "gtv_heterogeneity", "gtv_ring_contrast", "node_ring_contrast")
LOG_FEATURES: tuple[str, ...] = ("gtv_volume_ml", "gtv_max_area_cm2", "n_nodes", "node_volume_ml",
                                 "largest_node_volume_ml", "n_dark_nodes")
# a voxel of a region is "dark" when below this fraction of the median of the region's own rim
# (its outer RIM_MM): the usual reading of central necrosis (low core, enhancing rim)
DARK_RATIO = 0.8
RIM_MM = 2.0
# a node is "necrotic" when at least this fraction of it is dark
DARK_NODE_FRACTION = 0.1
RING_MM = 5.0


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=np.ones((3, 3, 3), bool))


def short_axis_mm(plane_yx: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """Short-axis diameter (mm) of one 2-D region: the minor axis of the ellipse with its second
    moments (4 sqrt(smallest eigenvalue)), the RECIST reading of a node; 0 for an empty plane."""
    ys, xs = np.nonzero(plane_yx)
    if ys.size == 0:
        return 0.0
    if ys.size < 3:
        return float(min(pixel_mm))
    pts = np.stack([ys * pixel_mm[0], xs * pixel_mm[1]], axis=1)
    cov = np.cov(pts, rowvar=False) + np.eye(2) * (np.prod(pixel_mm) / 12.0)  # a pixel's own extent
    return float(4.0 * np.sqrt(max(np.linalg.eigvalsh(cov)[0], 0.0)))


def _erode_plane(plane: np.ndarray, r_px: int) -> np.ndarray:
    if r_px <= 0:
        return plane
    return ndimage.binary_erosion(plane, structure=ndimage.generate_binary_structure(2, 1), iterations=r_px)


def dark_voxels(mask: np.ndarray, image: np.ndarray, pixel_mm: float) -> np.ndarray:
    """(z, y, x) bool: voxels of ``mask`` darker than DARK_RATIO x the median of the region's rim
    (its outer RIM_MM in the plane), plane by plane (the z sampling of a sparse stack is too coarse)."""
    out = np.zeros_like(mask, dtype=bool)
    r = max(1, int(round(RIM_MM / max(pixel_mm, 1e-6))))
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        lab, n = ndimage.label(mask[z])
        for k in range(1, n + 1):
            reg = lab == k
            core = _erode_plane(reg, r)
            rim = reg & ~core
            if not core.any() or not rim.any():
                continue
            out[z] |= core & (image[z] < DARK_RATIO * float(np.median(image[z][rim])))
    return out


def ring_of(mask: np.ndarray, avoid: np.ndarray, ring_mm: float, pixel_mm: float) -> np.ndarray:
    """(z, y, x) bool: the in-plane band of width ``ring_mm`` around ``mask``, outside ``avoid``."""
    r = max(1, int(round(ring_mm / max(pixel_mm, 1e-6))))
    st = np.zeros((1, 3, 3), bool)
    st[0] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(mask, structure=st, iterations=r) & ~avoid


def burden_descriptors(gtv: np.ndarray | None, gtvln: np.ndarray | None,
                       spacing_zyx_mm: tuple[float, float, float], image: np.ndarray | None = None,
                       ring_mm: float = RING_MM) -> dict[str, float]:
    """The BURDEN_FEATURES of one patient's masks (bool (z, y, x), either may be None = absent).

    image: the same grid's intensities (any scale); without it the intensity descriptors are NaN.
    Volumes in ml, areas in cm2, sizes in mm. A patient with no node has 0 nodes and 0 node
    volume, and NaN for the node intensity descriptors (the model imputes them, with an indicator).
    """
    shape = next((m.shape for m in (gtv, gtvln) if m is not None), None)
    if shape is None:
        raise ValueError("burden_descriptors needs at least one mask")
    g = np.zeros(shape, bool) if gtv is None else np.asarray(gtv, bool)
    n = np.zeros(shape, bool) if gtvln is None else np.asarray(gtvln, bool)
    if g.shape != n.shape or (image is not None and image.shape != g.shape):
        raise ValueError(f"masks and image must share one grid, got {g.shape}, {n.shape}"
                         f"{'' if image is None else ', ' + str(image.shape)}")
    dz, dy, dx = (float(v) for v in spacing_zyx_mm)
    voxel_ml = dz * dy * dx / 1000.0
    out = {k: float("nan") for k in BURDEN_FEATURES}
    out["gtv_volume_ml"] = float(g.sum() * voxel_ml)
    out["gtv_max_area_cm2"] = float(g.reshape(g.shape[0], -1).sum(axis=1).max(initial=0) * dy * dx / 100.0)
    lab, n_nodes = _components(n)
    out["n_nodes"] = float(n_nodes)
    out["node_volume_ml"] = float(n.sum() * voxel_ml)
    sizes = ndimage.sum_labels(n, lab, index=np.arange(1, n_nodes + 1)) if n_nodes else np.zeros(0)
    out["largest_node_volume_ml"] = float(sizes.max(initial=0) * voxel_ml)
    axes = []
    for k, sl in enumerate(ndimage.find_objects(lab) if n_nodes else [], start=1):
        node = lab[sl] == k
        areas = node.reshape(node.shape[0], -1).sum(axis=1)
        axes.append(short_axis_mm(node[int(np.argmax(areas))], (dy, dx)))
    out["largest_node_short_axis_mm"] = float(max(axes, default=0.0))
    if image is not None:
        img = np.asarray(image, np.float32)
        pix = float(np.sqrt(dy * dx))
        tumour = g | n
        if n_nodes:
            dark = dark_voxels(n, img, pix)
            out["node_dark_fraction"] = float(dark.sum() / max(n.sum(), 1))
            dark_per = ndimage.sum_labels(dark, lab, index=np.arange(1, n_nodes + 1))
            out["n_dark_nodes"] = float(np.sum(dark_per >= DARK_NODE_FRACTION * sizes))
            ring_n = ring_of(n, tumour, ring_mm, pix)
            if ring_n.any():
                out["node_ring_contrast"] = float(img[n].mean() / max(float(img[ring_n].mean()), 1e-6))
        else:
            out["n_dark_nodes"] = 0.0
        if g.any():
            out["gtv_dark_fraction"] = float(dark_voxels(g, img, pix).sum() / g.sum())
            vals = img[g]
            out["gtv_heterogeneity"] = float(vals.std() / max(float(vals.mean()), 1e-6))
            ring_g = ring_of(g, tumour, ring_mm, pix)
            if ring_g.any():
                out["gtv_ring_contrast"] = float(vals.mean() / max(float(img[ring_g].mean()), 1e-6))
    return out


def stack_planes(planes: Mapping[float, dict[str, np.ndarray]], thickness_mm: float
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A sparse stack of planes -> (z, y, x) volumes, one plane per kept slice in z order, with an
    empty plane inserted where two kept slices are farther apart than 1.5 x ``thickness_mm`` (so
    that structures on either side of a gap are not joined into one node).

    planes: z_mm -> {"GTV": (H, W) bool, "GTVln": ..., "image": (H, W) float}; keys absent on a
    plane are empty there. Returns ({name: volume}, z_mm of each plane, NaN for inserted ones).
    """
    zs = sorted(planes)
    if not zs:
        raise ValueError("no plane to stack")
    first = next(iter(planes[zs[0]].values()))
    h, w = first.shape
    names = sorted({k for p in planes.values() for k in p})
    layers: dict[str, list[np.ndarray]] = {k: [] for k in names}
    z_out: list[float] = []
    for i, z in enumerate(zs):
        if i and (z - zs[i - 1]) > 1.5 * thickness_mm:
            for k in names:
                layers[k].append(np.zeros((h, w), np.float32 if k == "image" else bool))
            z_out.append(float("nan"))
        for k in names:
            v = planes[z].get(k)
            layers[k].append(np.zeros((h, w), np.float32 if k == "image" else bool) if v is None else v)
        z_out.append(float(z))
    return {k: np.stack(v) for k, v in layers.items()}, np.asarray(z_out)
