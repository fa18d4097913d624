"""The sparse RoIAlign equals torchvision's kernel, forward and feature gradient."""
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from npc_msom.detection.roi_align import SparseMultiScaleRoIAlign, roi_align_sparse


def _rois(n, batch, size, gen):
    b = torch.randint(0, batch, (n, 1), generator=gen).float()
    # boxes partly outside the map, tiny ones (< 1 feature pixel) and large ones
    xy = torch.rand(n, 2, generator=gen) * (size * 1.2) - size * 0.1
    wh = torch.rand(n, 2, generator=gen) ** 2 * size * 0.8 + 0.2
    return torch.cat([b, xy, xy + wh], 1)


@pytest.mark.parametrize("sampling_ratio,aligned,out", [(1, False, 7), (2, False, 7), (2, True, 14), (3, False, 5)])
def test_equals_torchvision_forward_and_gradient(sampling_ratio, aligned, out):
    gen = torch.Generator().manual_seed(sampling_ratio * 10 + int(aligned))
    feat = torch.randn(3, 6, 17, 13, generator=gen, requires_grad=True)
    rois = _rois(60, 3, 64, gen)
    args = ((out, out), 0.25, sampling_ratio, aligned)
    ref = roi_align(feat, rois, *args)
    got = roi_align_sparse(feat, rois, *args)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(ref.shape, generator=gen)
    (g_ref,) = torch.autograd.grad(ref, feat, g)
    (g_got,) = torch.autograd.grad(got, feat, g)
    torch.testing.assert_close(g_got, g_ref, atol=1e-5, rtol=1e-5)


def test_no_rois():
    feat = torch.randn(2, 4, 8, 8)
    assert roi_align_sparse(feat, torch.zeros(0, 5), (7, 7), 0.5, 1).shape == (0, 4, 7, 7)


def test_multiscale_pooler_equals_torchvision():
    gen = torch.Generator().manual_seed(0)
    feats = {str(k): torch.randn(2, 8, 32 >> k, 32 >> k, generator=gen, requires_grad=True) for k in range(4)}
    boxes = [_rois(40, 1, 128, gen)[:, 1:].clamp(0, 128) for _ in range(2)]
    boxes = [torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2] + 0.5)], 1) for b in boxes]
    shapes = [(128, 128)] * 2
    ref = MultiScaleRoIAlign(list(feats), 7, 1, canonical_scale=56)(feats, boxes, shapes)
    got = SparseMultiScaleRoIAlign(list(feats), 7, 1, canonical_scale=56)(feats, boxes, shapes)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(ref.shape, generator=gen)
    grads_ref = torch.autograd.grad(ref, list(feats.values()), g, allow_unused=True, materialize_grads=True)
    grads_got = torch.autograd.grad(got, list(feats.values()), g, allow_unused=True, materialize_grads=True)
    for a, b in zip(grads_got, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # sums in another order


def test_adaptive_sampling_goes_to_torchvision():
    gen = torch.Generator().manual_seed(1)
    feats = {"0": torch.randn(1, 4, 16, 16, generator=gen)}
    boxes = [torch.tensor([[2.0, 3.0, 40.0, 50.0]])]
    ref = MultiScaleRoIAlign(["0"], 7, 0)(feats, boxes, [(64, 64)])
    got = SparseMultiScaleRoIAlign(["0"], 7, 0)(feats, boxes, [(64, 64)])
    torch.testing.assert_close(got, ref)
