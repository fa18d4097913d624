"""Grad-CAM of the study's slice models (``prediction.model.MSOMClassifier``): which pixels of a
slice raised its MSOM logit, and each slice's share of the patient's score.

- **Grad-CAM** (Selvaraju et al. 2017) on the extractor's FPN level that the model pools (the
  feature level of ``prediction.feature_level``), with Captum's ``LayerGradCam``: the channel weights
  are the gradients of the slice's logit averaged over the map, the map is ReLU(sum_c w_c A_c). Captum
  is the PyTorch team's attribution library; it takes any layer of any module, so the same code will
  serve other extractors. With the study's head (global average pool -> fixed standardisation -> FC)
  Grad-CAM equals CAM: the weights are the FC weights over the channels' SDs, spread over the map.
  The map covers the network's padded input; it is brought back to the slice's pixels (bilinear)
  and cropped, so it lies on the preprocessed slice exactly.
- **Slice shares**: the patient's score is the mean of its slices' probabilities (or of the top k,
  ``prediction.aggregate``); a slice's share is its part of that sum.
- **Sanity check** (Adebayo et al. 2018, "Sanity checks for saliency maps"): the maps of a copy of
  the model with every weight drawn again (``randomized_copy``) must differ from the trained
  model's; ``rank_correlation`` (Spearman per slice, then the mean) says by how much.
"""
from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from npc_msom.prediction.model import SIZE_DIVISIBLE   # the network's input is padded to a multiple of it

log = logging.getLogger(__name__)


class _LevelMap(nn.Module):
    """The classifier's pooled FPN level as a module of its own (Captum hooks a module's output)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.level_map(images)


class _SliceLogit(nn.Module):
    """images (B, 1, S, S) 0..1 [, clinical (B, D)] -> the classifier's logits (B,), through ``level``."""

    def __init__(self, net):
        super().__init__()
        self.level = _LevelMap(net)
        self.head = net.head

    def forward(self, images: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.level(images).mean(dim=(-2, -1)), clinical)


def gradcam(net, images: np.ndarray, clinical: np.ndarray | None = None, device="cpu",
            batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps (N, S, S) float32 >= 0 of an MSOMClassifier on slices (N, S, S) in 0..1
    (``clinical`` (N, D) for a fusion model); on the slices' own pixels."""
    from captum.attr import LayerAttribution, LayerGradCam  # noqa: PLC0415
    images = np.asarray(images, dtype=np.float32)
    n, size = len(images), int(images.shape[-1]) if len(images) else 0
    out = np.zeros((n, size, size), np.float32)
    if not n:
        return out
    device = torch.device(device)
    model = _SliceLogit(net).to(device).eval()
    cam = LayerGradCam(model, model.level)
    side = int(net.net_size)
    padded = side + (-side) % SIZE_DIVISIBLE
    with torch.enable_grad():
        for start in range(0, n, batch_size):
            x = torch.from_numpy(images[start:start + batch_size])[:, None].to(device).requires_grad_(True)
            extra = None
            if getattr(net, "n_clinical", 0):
                if clinical is None:
                    raise ValueError("a fusion model's saliency needs the clinical vector")
                extra = (torch.from_numpy(np.asarray(clinical[start:start + batch_size], np.float32)).to(device),)
            a = cam.attribute(x, additional_forward_args=extra, relu_attributions=True)     # (B, 1, h, w)
            a = LayerAttribution.interpolate(a, (padded, padded), interpolate_mode="bilinear")[..., :side, :side]
            if side != size:
                a = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False)
            out[start:start + len(x)] = a[:, 0].detach().float().cpu().numpy()
    return out      # ReLU'd by Captum; bilinear resizing keeps it >= 0


def slice_shares(probabilities: np.ndarray, aggregate: str = "mean", top_k: int = 1) -> np.ndarray:
    """Each slice's share (sums to 1) of the patient score made by ``aggregate`` of its slices'
    probabilities (``mean``, or ``top_k``: the mean of the k highest, the others share nothing)."""
    p = np.asarray(probabilities, dtype=float)
    if p.size == 0:
        return p
    w = p.copy()
    if aggregate == "top_k":
        keep = np.argsort(-p, kind="stable")[:max(1, int(top_k))]
        w = np.zeros_like(p)
        w[keep] = p[keep]
    total = w.sum()
    return w / total if total > 0 else np.full(p.size, 1.0 / p.size)


def inside_fraction(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: the fraction of the saliency inside ``masks`` (N, S, S) bool, and the fraction of
    the slice the masks cover (the share a map blind to the tumour would put there). NaN where a
    map is all zero."""
    maps = np.asarray(maps, dtype=float)
    masks = np.asarray(masks, dtype=bool)
    total = maps.reshape(len(maps), -1).sum(axis=1)
    inside = (maps * masks).reshape(len(maps), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, inside / total, np.nan)
    return frac, masks.reshape(len(masks), -1).mean(axis=1)


def randomized_copy(net, seed: int = 0):
    """A copy of ``net`` with every learnt weight drawn again (PyTorch's initialisation; frozen
    batch-norm layers reset to the identity): the model-randomisation test's null model."""
    out = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in out.modules():
            if m is out:
                continue
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            elif type(m).__name__ == "FrozenBatchNorm2d":
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return out.eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over slices of the Spearman correlation of two sets of maps (N, S, S); slices where
    either map is constant are left out (NaN when none is left)."""
    from scipy.stats import spearmanr  # noqa: PLC0415
    vals = []
    for x, y in zip(np.asarray(a), np.asarray(b)):
        x, y = x.ravel(), y.ravel()
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        vals.append(float(spearmanr(x, y).statistic))
    return float(np.mean(vals)) if vals else math.nan


def explain_slices(net, images: np.ndarray, clinical: np.ndarray | None, probabilities: np.ndarray,
                   tumour_masks: np.ndarray, *, aggregate: str = "mean", top_k: int = 1, device="cpu") -> dict:
    """Grad-CAM maps of one model on one patient's scored slices, each slice's share of the score
    and the saliency inside the tumour regions (``tumour_masks`` (N, S, S): GTV and nodes)."""
    maps = gradcam(net, images, clinical, device)
    shares = slice_shares(probabilities, aggregate, top_k)
    inside, area = inside_fraction(maps, tumour_masks)
    return {"maps": maps, "shares": shares, "inside": inside, "area": area}


def saliency_to_grid(maps_px: dict[int, np.ndarray], volume, series) -> np.ndarray:
    """{1 mm slice index: (S, S) map} on the preprocessed slices -> float32 (z, y, x) on the
    series' own grid (the inverse of pad-and-resize, bilinear, then the 1 mm grid resampled onto
    the series linearly; zero off the scored slices)."""
    import SimpleITK as sitk  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    nx, ny, nz = volume.geometry.size
    top, left = volume.offset
    grid = np.zeros((nz, ny, nx), np.float32)
    for z, m in maps_px.items():
        canvas = np.asarray(Image.fromarray(np.asarray(m, np.float32)).resize((volume.square, volume.square),
                                                                               Image.BILINEAR))
        grid[int(z)] = canvas[top:top + ny, left:left + nx]
    src = sitk.GetImageFromArray(grid)
    g = volume.geometry
    src.SetOrigin(g.origin_mm)
    src.SetSpacing(g.spacing_mm)
    src.SetDirection(g.direction)
    ref = series.to_sitk(np.zeros(tuple(reversed(series.geometry.size)), np.float32))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)
