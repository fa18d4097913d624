"""The cheaper preprocessing paths give the same values as the plain ones they replace:
planes resampled one by one, masks resampled on their own bounding box, holes filled by one
labelling of the volume."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from npc_msom.preprocess.intensity import fill_holes_per_slice
from npc_msom.preprocess.resample import (isotropic_reference, native_plane_of, resample_mask,
                                          resample_planes, resample_series)

from test_preprocess import ellipsoid_series, rotation_x


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), rotation_x(12)])
def test_planes_equal_the_whole_volume_resampled(direction):
    s = ellipsoid_series(direction=direction, node_radius=3.0)
    image, masks, _ = resample_series(s, 1.0)
    ref = isotropic_reference(s.geometry, 1.0)
    z = [0, 7, 40, image.shape[0] - 1]
    np.testing.assert_allclose(resample_planes(s, ref, z), image[z], atol=1e-4)
    for name, m in s.masks.items():
        full = sitk.GetArrayFromImage(sitk.Resample(s.to_sitk(m.astype(np.float32)), ref, sitk.Transform(),
                                                    sitk.sitkLinear, 0.0, sitk.sitkFloat32)) >= 0.5
        got = resample_mask(m, s, ref)
        assert got.sum() > 0 and (got == masks[name]).all()
        assert (full <= got).all()  # the bounding-box resampling loses no voxel of the whole one


def test_native_plane_of_maps_each_1mm_plane_to_the_nearest_source_slice():
    s = ellipsoid_series(spacing=(0.7, 0.7, 5.0), size=(40, 40, 6))
    ref = isotropic_reference(s.geometry, 1.0)
    idx = native_plane_of(s, ref)
    assert len(idx) == ref.GetSize()[2] == 30
    # 1 mm planes with edges aligned to 5 mm slices: five planes per source slice
    assert list(idx) == [min(5, int(round((z + 0.5 - 2.5) / 5.0))) for z in range(30)]


def test_fill_holes_equals_scipy_slice_by_slice():
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = rng.random((3, 31, 29)) > rng.uniform(0.3, 0.8)
        ref = np.stack([ndimage.binary_fill_holes(s) for s in m])
        assert (fill_holes_per_slice(m) == ref).all()
        assert (fill_holes_per_slice(m[1]) == ndimage.binary_fill_holes(m[1])).all()
