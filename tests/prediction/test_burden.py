"""Tumour-burden descriptors from 3-D masks in millimetres: volumes against analytic shapes, nodes as
26-connected components (and a sparse stack's gaps), the short axis, central necrosis, the ring
contrast, and the errors of a bad call."""
import math

import numpy as np
import pytest
from scipy import ndimage

from npc_msom.prediction.burden import (BURDEN_FEATURES, burden_descriptors, dark_voxels, ring_of,
                                        short_axis_mm, stack_planes)

INTENSITY_KEYS = ("node_dark_fraction", "n_dark_nodes", "gtv_dark_fraction", "gtv_heterogeneity",
                  "gtv_ring_contrast", "node_ring_contrast")


def _ellipsoid(semi_zyx_mm, spacing_zyx_mm, offset_vox=(0.3, 0.1, 0.7)):
    """A voxelised ellipsoid centred (off the grid, so no lucky alignment) in a grid with margin."""
    axes = []
    for s, d, o in zip(semi_zyx_mm, spacing_zyx_mm, offset_vox):
        n = 2 * int(math.ceil(s / d)) + 7
        axes.append((np.arange(n) - n // 2 + o) * d)
    z, y, x = np.meshgrid(*axes, indexing="ij")
    a, b, c = semi_zyx_mm
    return (z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1.0


def _sphere(shape, centre, radius):
    """Ball of ``radius`` voxels (1 mm grid) around ``centre`` (voxel coordinates)."""
    g = np.indices(shape).astype(float)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= radius ** 2


def _ball_ml(r_mm):
    return 4.0 / 3.0 * math.pi * r_mm ** 3 / 1000.0


def test_ellipsoid_volume_area_and_one_node_on_an_anisotropic_grid():
    semi = (9.0, 14.0, 20.0)           # z, y, x semi-axes in mm
    spacing = (2.0, 0.8, 0.8)          # thick planes, fine pixels
    m = _ellipsoid(semi, spacing)
    expected_ml = 4.0 / 3.0 * math.pi * semi[0] * semi[1] * semi[2] / 1000.0   # 10.56 ml
    d = burden_descriptors(m, None, spacing)
    assert set(d) == set(BURDEN_FEATURES)
    assert d["gtv_volume_ml"] == pytest.approx(expected_ml, rel=0.03)
    # a wrong voxel volume (e.g. an isotropic 0.8 mm voxel: 2.5 x too small) would be far off
    assert d["gtv_volume_ml"] == pytest.approx(m.sum() * 2.0 * 0.8 * 0.8 / 1000.0)
    # the largest cross-section: the central ellipse, pi * 14 * 20 mm2 = 8.80 cm2
    assert d["gtv_max_area_cm2"] == pytest.approx(math.pi * semi[1] * semi[2] / 100.0, rel=0.03)
    assert d["n_nodes"] == 0 and d["node_volume_ml"] == 0
    # the same shape as the nodal mask: one node, with the same volume
    dn = burden_descriptors(None, m, spacing)
    assert dn["n_nodes"] == 1
    assert dn["node_volume_ml"] == pytest.approx(expected_ml, rel=0.03)
    assert dn["largest_node_volume_ml"] == pytest.approx(dn["node_volume_ml"])
    assert dn["gtv_volume_ml"] == 0


def test_two_separate_spheres_are_two_nodes_with_their_volumes_and_short_axis():
    shape = (30, 30, 60)
    big = _sphere(shape, (14.5, 14.5, 15.3), 8.0)
    small = _sphere(shape, (14.2, 15.1, 42.6), 6.0)
    assert not (big & small).any()
    d = burden_descriptors(None, big | small, (1.0, 1.0, 1.0))
    assert d["n_nodes"] == 2
    assert d["node_volume_ml"] == pytest.approx(_ball_ml(8) + _ball_ml(6), rel=0.03)
    assert d["largest_node_volume_ml"] == pytest.approx(_ball_ml(8), rel=0.03)
    # short axis of the larger node (its largest cross-section: a disc of diameter 16 mm)
    assert d["largest_node_short_axis_mm"] == pytest.approx(16.0, rel=0.10)
    # the pixel spacing scales the short axis: 0.5 mm pixels halve it
    d_half = burden_descriptors(None, big | small, (1.0, 0.5, 0.5))
    assert d_half["largest_node_short_axis_mm"] == pytest.approx(8.0, rel=0.10)


def test_short_axis_of_an_elongated_region_is_its_minor_diameter():
    yy, xx = np.mgrid[0:80, 0:80]
    ellipse = ((yy - 40.2) / 6.0) ** 2 + ((xx - 39.7) / 25.0) ** 2 <= 1.0   # 12 mm x 50 mm
    assert short_axis_mm(ellipse, (1.0, 1.0)) == pytest.approx(12.0, rel=0.10)
    assert short_axis_mm(np.zeros((5, 5), bool), (1.0, 1.0)) == 0.0


def test_diagonally_touching_spheres_are_one_node_and_one_voxel_apart_are_two():
    shape = (30, 20, 20)
    a = _sphere(shape, (8, 8, 8), 3.0)
    # B's lowest plane is the plane above A's highest; their only contact: A's top voxel (11, 8, 8)
    # and B's bottom voxel (12, 9, 9), a corner across planes
    b = _sphere(shape, (15, 9, 9), 3.0)
    assert not (a & b).any()
    assert np.flatnonzero(a.any(axis=(1, 2))).max() + 1 == np.flatnonzero(b.any(axis=(1, 2))).min()
    assert ndimage.label(a | b)[1] == 2          # not face-connected ...
    assert burden_descriptors(None, a | b, (1.0, 1.0, 1.0))["n_nodes"] == 1   # ... but 26-connected
    # one more plane apart: two nodes
    b2 = _sphere(shape, (16, 9, 9), 3.0)
    assert burden_descriptors(None, a | b2, (1.0, 1.0, 1.0))["n_nodes"] == 2


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def test_stack_planes_inserts_an_empty_plane_at_a_gap_so_nodes_across_it_stay_apart():
    h = w = 32
    blob_a = _disc(h, w, 15, 15, 5)
    blob_b = _disc(h, w, 16, 17, 5)            # overlaps blob_a in the plane
    assert (blob_a & blob_b).any()
    img = np.full((h, w), 7.0, np.float32)
    t = 3.0                                    # every 3rd 1 mm slice kept
    # kept slices 0, 3, 6 | gap of 9 mm (> 1.5 x 3) | 15, 18
    planes = {0.0: {"GTVln": blob_a, "image": img}, 3.0: {"GTVln": blob_a, "image": img},
              6.0: {"GTVln": blob_a, "image": img}, 15.0: {"GTVln": blob_b, "image": img},
              18.0: {"GTVln": blob_b, "GTV": _disc(h, w, 3, 3, 2), "image": img}}
    vols, z = stack_planes(planes, t)
    assert set(vols) == {"GTV", "GTVln", "image"}
    assert vols["GTVln"].shape == (6, h, w) and vols["GTVln"].dtype == bool
    assert np.isnan(z[3]) and np.array_equal(np.delete(z, 3), [0.0, 3.0, 6.0, 15.0, 18.0])
    assert not vols["GTVln"][3].any() and not vols["image"][3].any() and not vols["GTV"][3].any()
    # a key absent on a plane is empty there
    assert not vols["GTV"][:5].any() and vols["GTV"][5].any()
    assert vols["image"].dtype == np.float32
    assert burden_descriptors(vols["GTV"], vols["GTVln"], (t, 1.0, 1.0))["n_nodes"] == 2

    # adjacent kept slices (no gap): the same blobs, overlapping in the plane, are one node
    planes = {0.0: {"GTVln": blob_a}, 3.0: {"GTVln": blob_a}, 6.0: {"GTVln": blob_a},
              9.0: {"GTVln": blob_b}, 12.0: {"GTVln": blob_b}}
    vols, z = stack_planes(planes, t)
    assert vols["GTVln"].shape == (5, h, w) and not np.isnan(z).any()
    d = burden_descriptors(None, vols["GTVln"], (t, 1.0, 1.0))
    assert d["n_nodes"] == 1
    assert d["node_volume_ml"] == pytest.approx((3 * blob_a.sum() + 2 * blob_b.sum()) * t / 1000.0)

    # a spacing of exactly 1.5 x thickness is not a gap; one just above it is
    assert stack_planes({0.0: {"GTVln": blob_a}, 4.5: {"GTVln": blob_a}}, t)[0]["GTVln"].shape[0] == 2
    assert stack_planes({0.0: {"GTVln": blob_a}, 4.6: {"GTVln": blob_a}}, t)[0]["GTVln"].shape[0] == 3
    with pytest.raises(ValueError):
        stack_planes({}, t)


def test_central_necrosis_dark_core_with_bright_rim_and_uniform_node():
    shape = (26, 26, 60)
    node = _sphere(shape, (12.5, 12.5, 14.0), 10.0)
    core = _sphere(shape, (12.5, 12.5, 14.0), 5.0)
    assert (core <= node).all()
    img = np.full(shape, 100.0, np.float32)
    img[node] = 200.0
    img[core] = 60.0
    d = burden_descriptors(None, node, (1.0, 1.0, 1.0), image=img)
    assert d["n_nodes"] == 1
    assert d["node_dark_fraction"] > 0.05
    # the dark voxels are exactly the core (rim median 200, 60 < 0.8 x 200, the core inside the
    # 2 mm rim): a fraction of about (5/10)^3 = 1/8
    assert d["node_dark_fraction"] == pytest.approx(core.sum() / node.sum())
    assert d["n_dark_nodes"] == 1
    assert np.array_equal(dark_voxels(node, img, 1.0), core)

    uniform = np.full(shape, 100.0, np.float32)
    uniform[node] = 200.0
    du = burden_descriptors(None, node, (1.0, 1.0, 1.0), image=uniform)
    assert du["node_dark_fraction"] == 0
    assert du["n_dark_nodes"] == 0

    # two nodes, one necrotic and one uniform: one dark node
    other = _sphere(shape, (12.5, 12.5, 45.0), 8.0)
    img2 = img.copy()
    img2[other] = 200.0
    d2 = burden_descriptors(None, node | other, (1.0, 1.0, 1.0), image=img2)
    assert d2["n_nodes"] == 2 and d2["n_dark_nodes"] == 1
    assert d2["node_dark_fraction"] == pytest.approx(core.sum() / (node.sum() + other.sum()))

    # without an image every intensity descriptor is NaN (the geometric ones are not)
    dn = burden_descriptors(node, node, (1.0, 1.0, 1.0))
    assert all(math.isnan(dn[k]) for k in INTENSITY_KEYS)
    assert dn["n_nodes"] == 1 and not math.isnan(dn["gtv_volume_ml"])


def test_no_nodes_gives_zero_count_and_volume():
    shape = (20, 20, 20)
    gtv = _sphere(shape, (10, 10, 10), 5.0)
    img = np.where(gtv, 200.0, 100.0).astype(np.float32)
    for gtvln in (None, np.zeros(shape, bool)):
        d = burden_descriptors(gtv, gtvln, (1.0, 1.0, 1.0), image=img)
        assert d["n_nodes"] == 0 and d["node_volume_ml"] == 0
        assert d["largest_node_volume_ml"] == 0 and d["largest_node_short_axis_mm"] == 0
        assert d["n_dark_nodes"] == 0
        assert math.isnan(d["node_dark_fraction"]) and math.isnan(d["node_ring_contrast"])
        assert d["gtv_volume_ml"] > 0


def test_ring_contrast_and_heterogeneity():
    shape = (12, 40, 80)
    gtv = _sphere(shape, (6, 20, 20), 5.0)
    node = _sphere(shape, (6, 20, 60), 4.0)
    img = np.full(shape, 100.0, np.float32)
    img[gtv] = 200.0
    img[node] = 300.0
    d = burden_descriptors(gtv, node, (1.0, 1.0, 1.0), image=img)
    assert d["gtv_ring_contrast"] == pytest.approx(2.0, rel=0.05)
    assert d["node_ring_contrast"] == pytest.approx(3.0, rel=0.05)
    assert d["gtv_heterogeneity"] == pytest.approx(0.0, abs=1e-6)
    assert d["gtv_dark_fraction"] == 0
    # a heterogeneous primary: half its voxels at 100, half at 300 -> SD / mean = 100 / 200
    het = img.copy()
    idx = np.flatnonzero(gtv.ravel())
    het.ravel()[idx[::2]] = 100.0
    het.ravel()[idx[1::2]] = 300.0
    vals = het[gtv]
    dh = burden_descriptors(gtv, node, (1.0, 1.0, 1.0), image=het)
    assert dh["gtv_heterogeneity"] == pytest.approx(vals.std() / vals.mean(), rel=1e-5)
    assert dh["gtv_heterogeneity"] == pytest.approx(0.5, rel=0.02)


def test_ring_of_is_an_in_plane_band_outside_the_tumour():
    m = np.zeros((3, 30, 30), bool)
    m[1, 10:20, 10:20] = True
    ring = ring_of(m, m, 5.0, 1.0)
    assert not (ring & m).any()
    assert not ring[0].any() and not ring[2].any()           # in the plane only
    # the band reaches 5 px from the square along each axis, not 6
    assert ring[1, 15, 20:25].all() and not ring[1, 15, 25]
    assert ring[1, 5:10, 15].all() and not ring[1, 4, 15]


def test_errors_for_bad_calls():
    a = np.zeros((4, 8, 8), bool)
    b = np.zeros((4, 8, 9), bool)
    with pytest.raises(ValueError):
        burden_descriptors(a, b, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        burden_descriptors(None, None, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        burden_descriptors(a, a, (1.0, 1.0, 1.0), image=np.zeros((4, 8, 9), np.float32))
