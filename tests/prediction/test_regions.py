"""Region pooling of a feature map: per-cell coverage weights (with the image's bottom/right padding),
the weighted mean against a hand computation, empty regions, the peritumoural ring and the three
region masks of a slice."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from npc_msom.prediction.regions import (REGIONS, cell_weights, masked_mean, pool_regions, ring_mask,
                                         slice_region_masks)


def _cells_mask(cells, size=64, stride=4):
    """An image mask that is the union of whole ``stride`` x ``stride`` cells (row, col)."""
    m = np.zeros((size, size), bool)
    for r, c in cells:
        m[r * stride:(r + 1) * stride, c * stride:(c + 1) * stride] = True
    return m


def test_pool_regions_of_whole_cells_is_the_mean_of_their_feature_vectors():
    g = torch.Generator().manual_seed(0)
    fmaps = torch.randn(2, 8, 16, 16, generator=g)
    cells = [
        {"GTV": [(2, 3), (2, 4), (3, 3)], "GTVln": [(10, 12)], "ring": [(0, 0), (15, 15), (7, 9), (8, 9)]},
        {"GTV": [(5, 5)], "GTVln": [(1, 14), (2, 14), (12, 1), (13, 1), (13, 2)], "ring": [(9, 0)]},
    ]
    masks = [{k: _cells_mask(v) for k, v in c.items()} for c in cells]
    vecs, areas = pool_regions(fmaps, masks)
    assert vecs.shape == (2, len(REGIONS), 8) and vecs.dtype == np.float32
    assert areas.shape == (2, len(REGIONS)) and areas.dtype == np.float32
    for i in range(2):
        for r, name in enumerate(REGIONS):
            expected = torch.stack([fmaps[i, :, y, x] for y, x in cells[i][name]]).mean(dim=0)
            assert torch.allclose(torch.from_numpy(vecs[i, r]), expected, atol=1e-5), (i, name)
            assert areas[i, r] == 16 * len(cells[i][name]) == masks[i][name].sum()
    # a region order of the caller's choosing
    v2, a2 = pool_regions(fmaps, masks, regions=("ring", "GTV"))
    assert np.allclose(v2[:, 0], vecs[:, 2]) and np.allclose(v2[:, 1], vecs[:, 0])
    assert np.array_equal(a2[:, 0], areas[:, 2])


def test_partial_cell_coverage_gives_fractional_weights_and_weighted_mean():
    m = np.zeros((64, 64), bool)
    m[8:12, 20:24] = True          # cell (2, 5): whole, 16 of 16 px
    m[40:42, 4:6] = True           # cell (10, 1): 4 of 16 px
    m[60:61, 60:63] = True         # cell (15, 15): 3 of 16 px
    w = cell_weights(m, (16, 16))
    assert w.shape == (16, 16)
    expected_w = np.zeros((16, 16), np.float32)
    expected_w[2, 5] = 1.0
    expected_w[10, 1] = 0.25
    expected_w[15, 15] = 3 / 16
    assert np.allclose(w.numpy(), expected_w, atol=1e-7)
    assert float(w[10, 1]) == pytest.approx(0.25)
    # the same from a torch mask
    assert torch.allclose(cell_weights(torch.from_numpy(m), (16, 16)), w)

    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(8, 16, 16, generator=g)
    v, total = masked_mean(fmap, w)
    f = fmap.numpy()
    by_hand = (1.0 * f[:, 2, 5] + 0.25 * f[:, 10, 1] + (3 / 16) * f[:, 15, 15]) / (1.0 + 0.25 + 3 / 16)
    assert total == pytest.approx(1.0 + 0.25 + 3 / 16)
    assert np.allclose(v.numpy(), by_hand, atol=1e-5)
    # the unweighted mean of the three cells would differ: the weights matter
    assert not np.allclose(by_hand, f[:, [2, 10, 15], [5, 1, 15]].mean(axis=1), atol=1e-3)
    # pool_regions uses the same weights, and the area is the pixel count, not the weight sum
    vecs, areas = pool_regions(fmap[None], [{"GTV": m}], regions=("GTV",))
    assert np.allclose(vecs[0, 0], by_hand, atol=1e-5) and areas[0, 0] == 16 + 4 + 3


def test_empty_region_gives_zero_vector_and_zero_area():
    fmaps = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(2)) + 5.0   # nowhere 0
    full = np.ones((64, 64), bool)
    masks = [{"GTV": np.zeros((64, 64), bool), "GTVln": full},          # ring absent
             {"GTV": full, "GTVln": np.zeros((64, 64), bool), "ring": np.zeros((64, 64), bool)}]
    vecs, areas = pool_regions(fmaps, masks)
    assert np.array_equal(vecs[0, 0], np.zeros(8)) and areas[0, 0] == 0
    assert np.array_equal(vecs[0, 2], np.zeros(8)) and areas[0, 2] == 0
    assert np.array_equal(vecs[1, 1], np.zeros(8)) and areas[1, 1] == 0
    assert np.array_equal(vecs[1, 2], np.zeros(8)) and areas[1, 2] == 0
    # the non-empty ones are the whole-map mean
    assert np.allclose(vecs[0, 1], fmaps[0].mean(dim=(1, 2)).numpy(), atol=1e-5) and areas[0, 1] == 64 * 64
    assert np.allclose(vecs[1, 0], fmaps[1].mean(dim=(1, 2)).numpy(), atol=1e-5)
    v, total = masked_mean(fmaps[0], torch.zeros(16, 16))
    assert torch.equal(v, torch.zeros(8)) and total == 0.0


def test_cell_weights_account_for_the_bottom_right_padding():
    # 60 px against 16 cells: stride ceil(60 / 16) = 4, the image zero-padded to 64; cells 0-14 hold
    # image rows 0-59, cell 15 only padding rows 60-63
    w = cell_weights(np.ones((60, 60), bool), (16, 16)).numpy()
    expected = np.zeros((16, 16), np.float32)
    expected[:15, :15] = 1.0
    assert np.array_equal(w, expected)
    # 62 px: cell 15 holds image rows 60, 61 and padding rows 62, 63 -> 2 / 4 along each axis
    w = cell_weights(np.ones((62, 62), bool), (16, 16)).numpy()
    expected = np.ones((16, 16), np.float32)
    expected[15, :] = 0.5
    expected[:, 15] = 0.5
    expected[15, 15] = 0.25
    assert np.array_equal(w, expected)
    # non-square: 62 rows, 60 columns
    w = cell_weights(np.ones((62, 60), bool), (16, 16)).numpy()
    assert np.array_equal(w[:15, :15], np.ones((15, 15)))
    assert np.array_equal(w[15, :15], np.full(15, 0.5)) and np.array_equal(w[:, 15], np.zeros(16))
    # a mask only in the last image row (row 59) of a 60 px image: cell row 14, one quarter
    m = np.zeros((60, 60), bool)
    m[59, :] = True
    w = cell_weights(m, (16, 16)).numpy()
    assert np.array_equal(w[14, :15], np.full(15, 0.25)) and w[14, 15] == 0
    assert w[15].sum() == 0 and w[:14].sum() == 0


def test_ring_mask_width_disjointness_and_zero_width():
    t = np.zeros((64, 64), bool)
    t[20:30, 25:40] = True
    t[45, 10] = True
    for ring_mm, pixel_mm in ((2.0, 0.5), (1.3, 0.5), (3.0, 1.0), (0.7, 1.0), (0.2, 1.0)):
        width = max(1, int(round(ring_mm / pixel_mm)))
        ring = ring_mask(t, ring_mm, pixel_mm)
        assert ring.dtype == bool and ring.shape == t.shape
        assert not (ring & t).any()
        # exactly the pixels within ``width`` steps (4-connected) of the tumour
        dist = ndimage.distance_transform_cdt(~t, metric="taxicab")
        assert np.array_equal(ring, (dist >= 1) & (dist <= width)), (ring_mm, pixel_mm)
        # along the row through the box the band is ``width`` px wide on the right
        assert ring[25, 40:40 + width].all() and not ring[25, 40 + width]
    assert not ring_mask(t, 0.0, 0.5).any()
    assert not ring_mask(np.zeros((64, 64), bool), 5.0, 0.5).any()


def test_slice_region_masks_separate_gtv_nodes_and_ring():
    g = np.zeros((48, 48), bool)
    g[10:20, 10:20] = True
    n = np.zeros((48, 48), bool)
    n[15:25, 15:30] = True                   # overlaps the GTV
    n[40:44, 40:44] = True
    r = slice_region_masks(g, n, 2.0, 1.0, (48, 48))
    assert set(r) == {"GTV", "GTVln", "ring"}
    assert np.array_equal(r["GTV"], g)
    assert np.array_equal(r["GTVln"], n & ~g) and not (r["GTVln"] & g).any() and r["GTVln"].any()
    assert np.array_equal(r["ring"], ring_mask(g | n, 2.0, 1.0))
    assert not (r["ring"] & (g | n)).any()
    assert r["ring"][38:46, 38:46].any()       # a ring around the separate node too
    # absent structures are empty
    r0 = slice_region_masks(None, None, 2.0, 1.0, (48, 48))
    assert all(v.shape == (48, 48) and not v.any() for v in r0.values())
    r1 = slice_region_masks(None, n, 2.0, 1.0, (48, 48))
    assert not r1["GTV"].any() and np.array_equal(r1["GTVln"], n)
