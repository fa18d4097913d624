"""Training of the MSOM classifier: the head on cached features (``finetune: head``) or the whole
network on slices (``finetune: all``). Both train the one ``MSOMHead`` with binary
cross-entropy; nothing here sees a validation patient (the callers pass training slices only).

Reproducibility follows the detector's loop: each epoch reseeds from (seed, epoch), so a run
resumed from its checkpoint reaches the same weights as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from npc_msom.config import PredictionConfig
from npc_msom.detection.data import load_slice
from npc_msom.errors import TrainingError
from npc_msom.prediction.model import MSOMClassifier, MSOMHead
from npc_msom.runtime import atomic_path, progress, write_text_atomic

log = logging.getLogger(__name__)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def pos_weight_for(cfg: PredictionConfig, labels: np.ndarray) -> float | None:
    """BCE positive-class weight: ``prediction.pos_weight`` > 0 as given, < 0 = n_neg / n_pos
    of the training slices, 0 = none."""
    if cfg.pos_weight > 0:
        return float(cfg.pos_weight)
    if cfg.pos_weight < 0:
        n_pos = float(labels.sum())
        return float((labels.size - n_pos) / n_pos) if n_pos > 0 else None
    return None


def _bce(logits: torch.Tensor, y: torch.Tensor, pos_weight: float | None, weights: torch.Tensor | None):
    pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none")
    if weights is not None:
        return (loss * weights).sum() / weights.sum()
    return loss.mean()


def _check_finite(loss: torch.Tensor, epoch: int) -> None:
    if not math.isfinite(float(loss.detach())):
        raise TrainingError(f"non-finite loss {float(loss)} in epoch {epoch + 1}: lower prediction.lr")


def slice_weights(patient_ids: Sequence[str], per_patient: bool) -> np.ndarray:
    """1 per slice, or 1 / (that patient's number of slices) so every patient weighs the same."""
    if not per_patient:
        return np.ones(len(patient_ids), np.float32)
    ids = np.asarray(patient_ids)
    _, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return (1.0 / counts[inv]).astype(np.float32)


def train_head(head: MSOMHead, features: np.ndarray, labels: np.ndarray, cfg: PredictionConfig, *,
               clinical: np.ndarray | None = None, weights: np.ndarray | None = None, seed: int = 0,
               on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``head`` on cached pooled vectors of the training slices.

    features: (N, V, C) float32, V views per slice (original, mirrored): each epoch draws one view per
    slice (the cached form of the flip augmentation). labels: (N,) 0/1. clinical: (N, D) or None.
    The feature standardisation is fitted here on the original views. Returns the history.
    """
    if len(features) == 0:
        raise TrainingError("no training slice to train the MSOM head on")
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    c = None if clinical is None else torch.from_numpy(np.asarray(clinical, dtype=np.float32))
    w = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float32))
    with torch.no_grad():
        head.set_feature_stats(x[:, 0])
    params = list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    pw = pos_weight_for(cfg, labels)
    n, views = x.shape[0], x.shape[1]
    bs = max(1, cfg.batch_size)
    history = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=g)
        view = torch.randint(0, views, (n,), generator=g) if cfg.augment else torch.zeros(n, dtype=torch.long)
        total, count = 0.0, 0
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            logits = head(x[idx, view[idx]], None if c is None else c[idx])
            loss = _bce(logits, y[idx], pw, None if w is None else w[idx])
            _check_finite(loss, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        rec = {"epoch": epoch + 1, "loss": total / max(count, 1), "lr": cfg.lr,
               "seconds": round(time.perf_counter() - t0, 4), "slices": int(n)}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
    return history


@torch.inference_mode()
def head_probabilities(head: MSOMHead, features: np.ndarray, clinical: np.ndarray | None = None
                       ) -> np.ndarray:
    """(N,) probabilities from cached vectors (the original view)."""
    if len(features) == 0:
        return np.zeros(0)
    x = torch.from_numpy(np.ascontiguousarray(features[:, 0], dtype=np.float32))
    c = None if clinical is None else torch.from_numpy(np.asarray(clinical, dtype=np.float32))
    return torch.sigmoid(head(x, c)).double().numpy()


# ---- the whole network on slices (finetune: all) ------------------------------------------------

def augment_slice(image: np.ndarray, rng: np.random.Generator, cfg: PredictionConfig) -> np.ndarray:
    """Flip, small affine (rotation, scale, shift) and intensity jitter of an (H, W) 0..1 slice."""
    from scipy import ndimage  # noqa: PLC0415
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if cfg.affine_degrees > 0 or cfg.affine_scale > 0 or cfg.affine_shift > 0:
        h, w = image.shape
        a = np.deg2rad(rng.uniform(-cfg.affine_degrees, cfg.affine_degrees))
        s = rng.uniform(1 - cfg.affine_scale, 1 + cfg.affine_scale)
        shift = rng.uniform(-cfg.affine_shift, cfg.affine_shift, size=2) * np.array([h, w])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        offset = centre - rot @ (centre + shift)
        image = ndimage.affine_transform(image, rot, offset=offset, order=1, mode="constant",
                                         cval=float(image.min()))
    j = cfg.intensity_jitter
    if j > 0:
        gamma = float(np.exp(rng.uniform(-np.log1p(2 * j), np.log1p(2 * j))))
        image = np.clip(np.clip(image, 0, 1) ** gamma * rng.uniform(1 - j, 1 + j) + rng.uniform(-j / 2, j / 2), 0, 1)
    return np.ascontiguousarray(image, dtype=np.float32)


class SliceSet(torch.utils.data.Dataset):
    """(image (1, H, W), clinical (D,), label, weight) per training slice; augmented per (seed, epoch, index)."""

    def __init__(self, paths, labels, clinical, weights, cfg: PredictionConfig, seed: int, augment: bool):
        self.paths, self.labels, self.clinical, self.weights = list(paths), labels, clinical, weights
        self.cfg, self.seed, self.augment, self.epoch = cfg, seed, augment, 0

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = load_slice(self.paths[i])
        if self.augment:
            img = augment_slice(img, np.random.default_rng([self.seed, self.epoch, i]), self.cfg)
        c = self.clinical[i] if self.clinical is not None else np.zeros(0, np.float32)
        return (torch.from_numpy(img)[None], torch.from_numpy(np.asarray(c, np.float32)),
                torch.tensor(float(self.labels[i])), torch.tensor(float(self.weights[i])))


def finetune_all(model: MSOMClassifier, paths: Sequence[Path], labels: np.ndarray, cfg: PredictionConfig, *,
                 clinical: np.ndarray | None, weights: np.ndarray, seed: int, device: torch.device,
                 checkpoint: Path, history_path: Path, make_checkpoint: Callable[[dict], dict],
                 resume: dict | None = None) -> list[dict]:
    """Fine-tune the whole classifier (BatchNorm statistics kept frozen, as for a pretrained
    extractor with small batches), one checkpoint per epoch, resumable from ``resume``.

    The feature standardisation is fitted first from the initial extractor on the training slices
    (when not resuming). The extractor's parameters train at ``lr x backbone_lr_factor``.
    """
    from npc_msom.detection.train import DistInfo, init_distributed  # noqa: PLC0415
    from npc_msom.detection.model import amp_context, amp_dtype  # noqa: PLC0415
    info: DistInfo = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    model.to(device)
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr * cfg.backbone_lr_factor}, {"params": head, "lr": cfg.lr}],
                            weight_decay=cfg.weight_decay)
    history: list[dict] = []
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        start, history = int(resume["epoch"]), list(resume["history"])
        log.info("resuming MSOM fine-tuning from epoch %d of %d", start, cfg.epochs)
    else:
        from npc_msom.prediction.features import pooled_features  # noqa: PLC0415
        stats = pooled_features(model, list(paths), device, batch_size=max(8, cfg.batch_size), mirror=False)
        model.head.set_feature_stats(torch.from_numpy(stats[:, 0]).to(device))
    ddp = model
    if info.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    data = SliceSet(paths, labels, clinical, weights, cfg, seed, augment=cfg.augment)
    sampler = torch.utils.data.distributed.DistributedSampler(data, num_replicas=info.world_size, rank=info.rank,
                                                              shuffle=True, seed=seed)
    per_process = max(1, cfg.batch_size // info.world_size)
    loader = torch.utils.data.DataLoader(data, batch_size=per_process, sampler=sampler, num_workers=cfg.workers)
    pw = pos_weight_for(cfg, np.asarray(labels))
    dtype = amp_dtype(device, cfg.amp)
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(_epoch_seed(seed, epoch))
        sampler.set_epoch(epoch)
        data.epoch = epoch
        model.train()
        model.backbone.eval()  # frozen BatchNorm statistics
        t0, total, count = time.perf_counter(), 0.0, 0
        for img, c, y, w in progress(loader, desc=f"MSOM epoch {epoch + 1}/{cfg.epochs}", leave=False,
                                     disable=None if info.is_main else True):
            img, y, w = img.to(device), y.to(device), w.to(device)
            c = c.to(device) if model.n_clinical else None
            with amp_context(device, dtype):
                logits = ddp(img, c)
            loss = _bce(logits.float(), y, pw, w)
            _check_finite(loss, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        secs = time.perf_counter() - t0
        rec = {"epoch": epoch + 1, "loss": total / max(count, 1), "lr": cfg.lr, "seconds": round(secs, 3),
               "images_per_s": count * info.world_size / max(secs, 1e-9), "slices": len(data)}
        history.append(rec)
        if info.is_main:
            log.info("MSOM epoch %d/%d: loss %.4f, %.1f slices/s", epoch + 1, cfg.epochs, rec["loss"],
                     rec["images_per_s"])
            state = make_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "epoch": epoch + 1, "history": history})
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
            write_text_atomic(history_path, "".join(json.dumps(h) + "\n" for h in history))
        if info.enabled:
            torch.distributed.barrier()
    return history


@torch.inference_mode()
def slice_probabilities(model: MSOMClassifier, paths: Sequence[Path | np.ndarray], device: torch.device,
                        clinical: np.ndarray | None = None, batch_size: int = 32) -> np.ndarray:
    """(N,) probabilities of the full network on the slices at ``paths`` (no augmentation).

    paths: slice files, or slices already in memory as (H, W) float 0..1 arrays (``predict``)."""
    model.eval()
    out = []
    for s in range(0, len(paths), batch_size):
        batch = torch.from_numpy(np.stack([load_slice(p) if isinstance(p, (str, Path)) else np.asarray(p, np.float32)
                                           for p in paths[s:s + batch_size]]))[:, None].to(device)
        c = None if clinical is None else torch.from_numpy(np.asarray(clinical[s:s + batch_size], np.float32)).to(device)
        out.append(torch.sigmoid(model(batch, c)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
