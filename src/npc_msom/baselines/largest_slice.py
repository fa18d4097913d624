"""The study's comparison method (its reference 20): one slice per patient and sequence, the one
with the largest GTV area, into a ResNet-18 trained from scratch (no detection stage, no
pretrained weights) -> global average pool -> [clinical vector] -> FC -> sigmoid.

The slice is chosen among the preprocessed slices (``preprocessed/<seq>/coco_*.json``): the image
whose GTV annotations have the largest summed area (pixels at the preprocessed size), ties -> the
lower slice index. Training sees the training patients' slices only, for a fixed number of epochs
(no early stopping on the validation patients), with left-right flips as augmentation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from npc_msom.config import STRUCTURES
from npc_msom.errors import InputError, TrainingError

log = logging.getLogger(__name__)

GTV_CATEGORY = STRUCTURES.index("GTV") + 1  # COCO category ids are 1..K in STRUCTURES order


def largest_gtv_slices(coco_docs: list[dict]) -> pd.DataFrame:
    """Per patient, the image of largest GTV area in COCO documents of one sequence.

    Returns a table indexed by patient_id with image_id, file_name, slice_index, gtv_area_px;
    a patient none of whose images has a GTV annotation is absent. Ties -> the lower slice_index.
    """
    rows = []
    for doc in coco_docs:
        area: dict[int, float] = {}
        for a in doc.get("annotations", []):
            if a.get("category_id") == GTV_CATEGORY and not a.get("iscrowd", 0):
                area[a["image_id"]] = area.get(a["image_id"], 0.0) + float(a["area"])
        for im in doc.get("images", []):
            if area.get(im["id"], 0.0) > 0:
                rows.append({"patient_id": str(im["patient_id"]), "image_id": im["id"],
                             "file_name": im["file_name"], "slice_index": int(im["slice_index"]),
                             "gtv_area_px": area[im["id"]]})
    cols = ["patient_id", "image_id", "file_name", "slice_index", "gtv_area_px"]
    if not rows:
        return pd.DataFrame(columns=cols).set_index("patient_id")
    df = pd.DataFrame(rows, columns=cols)
    df = df.sort_values(["patient_id", "gtv_area_px", "slice_index"], ascending=[True, False, True],
                        kind="mergesort")
    return df.drop_duplicates("patient_id", keep="first").set_index("patient_id")


class SliceNet(nn.Module):
    """ResNet-18 (weights=None, 1 input channel) -> global average pool -> [clinical] -> FC (1 logit).

    forward(images (B, 1, H, W) float32 normalised, clinical (B, n_clinical) float32) -> (B,) logits.
    """

    def __init__(self, n_clinical: int = 0):
        super().__init__()
        from torchvision.models import resnet18
        net = resnet18(weights=None)
        # one grey channel instead of repeating it three times: same network from scratch, a third
        # of the first layer's work
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.backbone = net
        self.n_clinical = int(n_clinical)
        self.fc = nn.Linear(512 + self.n_clinical, 1)

    def forward(self, images: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.backbone(images)
        if self.n_clinical:
            feats = torch.cat([feats, clinical.to(feats.dtype)], dim=1)
        return self.fc(feats).squeeze(1)


@dataclass(frozen=True)
class SliceTrainSettings:
    epochs: int
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    pixel_mean: float = 0.15      # the detector's grey-level statistics of MR slices (config.py)
    pixel_std: float = 0.2
    seed: int = 0


def load_slices(paths: list[Path], size: int = 0) -> torch.Tensor:
    """Slice files -> (N, 1, S, S) float32 in 0..1; ``size`` 0 = as stored, else resized (bilinear)."""
    from npc_msom.detection.data import load_slice
    arrs = [torch.from_numpy(load_slice(p))[None, None] for p in paths]
    if size:
        arrs = [F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                if a.shape[-1] != size or a.shape[-2] != size else a for a in arrs]
    shapes = {tuple(a.shape[-2:]) for a in arrs}
    if len(shapes) > 1:
        raise InputError(f"slices of different sizes {sorted(shapes)}", file=paths[0].parent,
                         expected="one image size per sequence (or set baselines.slice_size)")
    return torch.cat(arrs) if arrs else torch.zeros((0, 1, max(size, 1), max(size, 1)))


def train_slice_model(images: torch.Tensor, clinical: torch.Tensor, labels: np.ndarray,
                      s: SliceTrainSettings, device: torch.device) -> tuple[SliceNet, list[dict]]:
    """Train a SliceNet from scratch on (N, 1, H, W) 0..1 images, (N, k) clinical, (N,) 0/1 labels.

    Returns the model (eval mode, on ``device``) and one history row per epoch (mean loss).
    """
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    model = SliceNet(clinical.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    n = images.shape[0]
    history = []
    for epoch in range(s.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        total, count = 0.0, 0
        for start in range(0, n, s.batch_size):
            idx = order[start:start + s.batch_size]
            if idx.numel() < 2 and n >= 2:
                continue  # BatchNorm cannot train on a batch of one
            x = images[idx].clone()
            f = flips[idx]
            x[f] = x[f].flip(-1)  # left-right: the head and neck are near-symmetric
            x = ((x - s.pixel_mean) / s.pixel_std).to(device)
            loss = F.binary_cross_entropy_with_logits(model(x, clinical[idx].to(device)), y[idx].to(device))
            if not torch.isfinite(loss):
                raise TrainingError(f"largest-slice model: non-finite loss {loss.item()} at epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.item()) * idx.numel()
            count += idx.numel()
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1)})
        log.debug("largest slice epoch %d: loss %.4f", epoch + 1, history[-1]["loss"])
    model.eval()
    return model, history


@torch.no_grad()
def predict_slices(model: SliceNet, images: torch.Tensor, clinical: torch.Tensor, s: SliceTrainSettings,
                   device: torch.device, batch_size: int = 64) -> np.ndarray:
    """(N,) P(MSOM) float64 of (N, 1, H, W) 0..1 images."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = ((images[start:start + batch_size] - s.pixel_mean) / s.pixel_std).to(device)
        out.append(torch.sigmoid(model(x, clinical[start:start + batch_size].to(device))).float().cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)
