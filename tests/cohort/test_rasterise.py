import numpy as np
import pytest

from npc_msom.cohort.rtstruct import (SliceStack, fill_polygons, place_contours, rasterise,
                                      stack_from_geometry)
from npc_msom.errors import RTStructError
from npc_msom.synth.dicom_writer import mask_to_contours

from cohort_fixtures import make_geometry, rotation


def square(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def test_pixel_centre_convention():
    # a square whose edges run between pixel centres covers exactly pixels 1..3
    m = fill_polygons([square(0.5, 0.5, 3.5, 3.5)], (6, 6))
    exp = np.zeros((6, 6), bool)
    exp[1:4, 1:4] = True
    assert np.array_equal(m, exp)
    # x is the column, y the row
    m = fill_polygons([square(0.5, 1.5, 4.5, 2.5)], (6, 6))
    assert m.sum() == 4 and m[2, 1:5].all()


def test_boundary_through_pixel_centres_counts_as_inside():
    m = fill_polygons([square(1, 1, 3, 3)], (5, 5))
    exp = np.zeros((5, 5), bool)
    exp[1:4, 1:4] = True
    assert np.array_equal(m, exp)
    tri = np.array([[2.0, 0.0], [4.0, 4.0], [0.0, 4.0]])
    m = fill_polygons([tri], (5, 5))
    assert m[0, 2] and m[4].all() and not m[0, 1] and not m[1, 0]


def test_even_odd_holes_and_islands():
    outer, hole = square(0.5, 0.5, 8.5, 8.5), square(3.5, 3.5, 5.5, 5.5)
    m = fill_polygons([outer, hole], (10, 10))
    assert m.sum() == 64 - 4 and not m[4:6, 4:6].any()
    m = fill_polygons([square(0.5, 0.5, 2.5, 2.5), square(5.5, 5.5, 7.5, 7.5)], (10, 10))
    assert m.sum() == 8 and m[1, 1] and m[6, 6] and not m[4, 4]


def test_clipping_at_the_image_edge():
    m = fill_polygons([square(-5.5, -5.5, 2.5, 2.5)], (4, 4))
    assert m.sum() == 9 and m[:3, :3].all()
    assert not fill_polygons([square(10.5, 10.5, 12.5, 12.5)], (4, 4)).any()


@pytest.mark.parametrize("direction", [None, rotation(25, 10)])
def test_mask_contours_mask_round_trip_is_exact(direction):
    g = make_geometry((6, 40, 36), spacing=(0.7, 0.9, 3.0), direction=direction)
    rng = np.random.default_rng(3)
    m = np.zeros((6, 40, 36), bool)
    z, y, x = np.indices(m.shape)
    for _ in range(6):   # random blobs, some touching, with holes cut out
        c = rng.uniform([0, 5, 5], [6, 35, 31])
        r = rng.uniform(3, 9)
        m |= ((y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r) & (np.abs(z - c[0]) < 2)
    m &= ~(((y - 20) ** 2 + (x - 18) ** 2) < 6)
    m[:, 0, :10] = True  # touching the border
    contours = mask_to_contours(m, g)
    got = rasterise(contours, stack_from_geometry(g.origin_mm, g.spacing_mm, g.direction, g.size))
    assert np.array_equal(got, m)


def _stack():
    g = make_geometry((5, 20, 20), spacing=(1.0, 1.0, 5.0))
    return g, stack_from_geometry(g.origin_mm, g.spacing_mm, g.direction, g.size)


def test_contour_between_slices_is_rejected():
    g, st = _stack()
    z = g.origin_mm[2] + 2.5 * 5.0
    poly = np.array([[-15, -10, z], [-10, -10, z], [-10, -5, z]], float)
    with pytest.raises(RTStructError, match="between two slices"):
        place_contours([poly], st, roi="GTV", patient="P1", file="rs.dcm")


def test_contour_outside_the_series_is_rejected():
    g, st = _stack()
    z = g.origin_mm[2] + 9 * 5.0
    poly = np.array([[-15, -10, z], [-10, -10, z], [-10, -5, z]], float)
    with pytest.raises(RTStructError, match="outside the series") as ei:
        place_contours([poly], st, roi="GTVnx", patient="P1", file="rs.dcm")
    assert ei.value.patient == "P1" and ei.value.file == "rs.dcm" and "GTVnx" in str(ei.value)


def test_contour_off_the_image_and_non_planar_are_rejected():
    g, st = _stack()
    z = g.origin_mm[2] + 5.0
    far = np.array([[500, 500, z], [510, 500, z], [510, 510, z]], float)
    with pytest.raises(RTStructError, match="entirely outside the image"):
        place_contours([far], st, roi="GTV")
    tilted = np.array([[-15, -10, z], [-10, -10, z + 4], [-10, -5, z]], float)
    with pytest.raises(RTStructError, match="not parallel"):
        place_contours([tilted], st, roi="GTV")


def test_sheared_source_slices_use_their_own_origin():
    # each slice has its own ImagePositionPatient: a contour is placed relative to its slice
    origins = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 3.0], [4.0, 0.0, 6.0]])
    st = SliceStack(origins_mm=origins, row_dir=np.array([1.0, 0, 0]), col_dir=np.array([0, 1.0, 0]),
                    spacing_xy_mm=(1.0, 1.0), shape_yx=(10, 10))
    poly = np.array([[2 + 1.5, 1.5, 3.0], [2 + 3.5, 1.5, 3.0], [2 + 3.5, 3.5, 3.0], [2 + 1.5, 3.5, 3.0]])
    m = rasterise([poly], st)
    assert m[1].sum() == 4 and m[1, 2:4, 2:4].all() and not m[0].any() and not m[2].any()
