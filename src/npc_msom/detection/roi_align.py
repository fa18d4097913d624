"""RoIAlign on the CPU as one sparse matrix product: the same numbers as torchvision's kernel, ~6x
cheaper to train through.

torchvision's CPU ``roi_align`` backward scatters every sample point of every RoI and channel one
by one on one thread: at the demo's 512 box RoIs x 128 channels x 7 x 7 bins it took 135 ms of a
640 ms training iteration (2 cores), more than the forward pass of the whole backbone. RoIAlign is
linear in the feature map: each output bin is a fixed weighted sum of at most 4 x
``sampling_ratio``\\ :sup:`2` feature pixels. Written as a sparse matrix ``S`` (RoI bins x feature
pixels, bilinear weights / samples per bin), the forward pass is ``S @ F`` and the backward pass
``S^T @ dY``, both multi-threaded sparse x dense products (forward 17 ms, backward 10 ms at that
size, against 22 ms and 135 ms). The weights follow torchvision's ``roi_align`` kernel exactly
(``aligned`` offset, the 1-px minimum RoI side when not aligned, samples outside
[-1, H] x [-1, W] counted as zero, clamping at the last row / column), so the output and the
feature gradient equal torchvision's to float rounding (tests/detection/test_roi_align.py).

Used only where it is exact and faster: CPU float32 feature maps with a fixed ``sampling_ratio``
(> 0; the adaptive grid of ``sampling_ratio = 0`` varies per RoI). Anything else (a GPU, autocast
dtypes, adaptive sampling) goes to torchvision's kernel. No gradient flows to the boxes, as in
torchvision's (Mask R-CNN detaches its proposals).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import poolers as _poolers


def _axis(v: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bilinear neighbours along one axis of length ``n`` as torchvision's kernel takes them:
    (low index, high index, weight of low, weight of high, inside [-1, n])."""
    inside = (v >= -1.0) & (v <= n)
    v = v.clamp(min=0.0)
    lo = v.floor().long()
    top = lo >= n - 1
    lo = torch.where(top, torch.full_like(lo, n - 1), lo)
    hi = torch.where(top, lo, lo + 1)
    frac = torch.where(top, torch.zeros_like(v), v - lo.to(v.dtype))
    return lo, hi, 1.0 - frac, frac, inside


def interpolation_matrix(rois: Tensor, shape: tuple[int, int, int], output_size: tuple[int, int],
                         spatial_scale: float, sampling_ratio: int, aligned: bool = False) -> Tensor:
    """The sparse CSR matrix (R x ph x pw, B x H x W) of RoIAlign's weights.

    rois: (R, 5) float (batch index, x1, y1, x2, y2) in image pixels; shape: (B, H, W) of the
    feature map; row r * ph * pw + i * pw + j is bin (i, j) of RoI r, column b * H * W + y * W + x
    is feature pixel (b, y, x).
    """
    if sampling_ratio <= 0:
        raise ValueError("interpolation_matrix needs a fixed sampling_ratio > 0")
    b_count, h, w = shape
    ph, pw = output_size
    s = sampling_ratio
    r = rois.shape[0]
    rois = rois.detach().float()
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    rw = rois[:, 3] * spatial_scale - offset - x1
    rh = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision: a RoI is at least 1 feature pixel wide when not aligned
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    ys = (torch.arange(ph, dtype=torch.float32)[:, None] + grid[None, :]).reshape(-1)  # ph * s
    xs = (torch.arange(pw, dtype=torch.float32)[:, None] + grid[None, :]).reshape(-1)  # pw * s
    y = y1[:, None] + ys[None, :] * (rh / ph)[:, None]  # (R, ph * s)
    x = x1[:, None] + xs[None, :] * (rw / pw)[:, None]  # (R, pw * s)
    ylo, yhi, wy0, wy1, iny = _axis(y, h)
    xlo, xhi, wx0, wx1, inx = _axis(x, w)
    base = rois[:, 0].long()[:, None, None] * (h * w)
    yl, yh = (ylo * w)[:, :, None], (yhi * w)[:, :, None]
    xl, xh = xlo[:, None, :], xhi[:, None, :]
    cols = torch.stack([base + yl + xl, base + yl + xh, base + yh + xl, base + yh + xh], -1)
    inside = (iny[:, :, None] & inx[:, None, :]).float() / (s * s)
    a, c = wy0[:, :, None], wy1[:, :, None]
    bb, d = wx0[:, None, :], wx1[:, None, :]
    vals = torch.stack([a * bb, a * d, c * bb, c * d], -1) * inside[..., None]
    # (R, ph*s, pw*s, 4) -> (R, ph, pw, s, s, 4): each bin's samples together, one CSR row per bin
    order = (r, ph, s, pw, s, 4)
    cols = cols.reshape(order).permute(0, 1, 3, 2, 4, 5).reshape(-1)
    vals = vals.reshape(order).permute(0, 1, 3, 2, 4, 5).reshape(-1)
    per_row = 4 * s * s
    crow = torch.arange(r * ph * pw + 1, dtype=torch.int64) * per_row
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": CSR x dense is what we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, (r * ph * pw, b_count * h * w), check_invariants=False)


def roi_align_sparse(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                     sampling_ratio: int, aligned: bool = False) -> Tensor:
    """torchvision's ``roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
    aligned)`` as a sparse x dense product (see the module docstring); (R, C, ph, pw)."""
    b_count, ch, h, w = features.shape
    ph, pw = output_size
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros((0, ch, ph, pw))
    with torch.no_grad():
        weights = interpolation_matrix(rois, (b_count, h, w), (ph, pw), spatial_scale, sampling_ratio, aligned)
    flat = features.permute(0, 2, 3, 1).reshape(b_count * h * w, ch)
    return (weights @ flat).view(r, ph, pw, ch).permute(0, 3, 1, 2)


def _fast_path(x: list[Tensor], sampling_ratio: int) -> bool:
    return (sampling_ratio > 0 and len(x) > 0 and all(t.device.type == "cpu" and t.dtype == torch.float32
                                                        for t in x))


class SparseMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (same levels, scales and level mapper) that pools CPU float32
    feature maps with :func:`roi_align_sparse`; other inputs go to torchvision's kernel."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        x_filtered = _poolers._filter_input(x, self.featmap_names)
        if not _fast_path(x_filtered, self.sampling_ratio) or torch.jit.is_scripting():
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _poolers._setup_scales(
                x_filtered, image_shapes, self.canonical_scale, self.canonical_level)
        out_size = tuple(self.output_size)
        rois = _poolers._convert_to_roi_format(boxes)
        if len(x_filtered) == 1:
            return roi_align_sparse(x_filtered[0], rois, out_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = x_filtered[0].new_zeros((rois.shape[0], x_filtered[0].shape[1]) + out_size)
        for level, (feature, scale) in enumerate(zip(x_filtered, self.scales)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                result[idx] = roi_align_sparse(feature, rois[idx], out_size, scale, self.sampling_ratio)
        return result
