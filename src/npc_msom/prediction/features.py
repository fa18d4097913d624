"""Pooled FPN vectors of every slice, computed once per (extractor, slice) and cached on disk.

With ``prediction.finetune: head`` the transferred extractor is frozen, so a slice's pooled vector
never changes: it is computed once (with its left-right mirror image, the head's augmentation) and
the head trains on the cache in seconds. The cache lives beside the models that use it,
``prediction/<sequence>/features/<key>.npz``, where ``key`` digests the extractor's weights (the
detector checkpoint's sha256, or the seed of a scratch extractor), the FPN level and the
preprocessing settings; inside, vectors are keyed by slice file name, so new slices are added
without recomputing the others.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from npc_msom.detection.data import load_slice
from npc_msom.runtime import atomic_path, progress

log = logging.getLogger(__name__)


@torch.inference_mode()
def pooled_features(model, paths: Sequence[Path], device: torch.device, batch_size: int = 32,
                    mirror: bool = True, desc: str | None = None) -> np.ndarray:
    """(N, 2 if mirror else 1, C) float32 pooled vectors of the slices at ``paths`` (original, mirrored)."""
    was = model.training
    model.eval()
    out = []
    try:
        starts = range(0, len(paths), batch_size)
        for s in progress(starts, desc=desc, total=len(starts), disable=None if desc else True):
            batch = torch.from_numpy(np.stack([load_slice(p) for p in paths[s:s + batch_size]]))[:, None]
            batch = batch.to(device)
            views = [model.pooled(batch)]
            if mirror:
                views.append(model.pooled(torch.flip(batch, dims=[-1])))
            out.append(torch.stack(views, dim=1).float().cpu().numpy())
    finally:
        model.train(was)
    if not out:
        return np.zeros((0, 2 if mirror else 1, model.channels), np.float32)
    return np.concatenate(out).astype(np.float32)


def cached_features(model, images_dir: Path, file_names: Sequence[str], cache_path: Path,
                    device: torch.device, batch_size: int = 32, views: int = 2) -> np.ndarray:
    """(N, views, C) for ``file_names`` (relative to ``images_dir``), computing only what the cache
    lacks; views 2 = the slice and its mirror image, 1 = the slice only."""
    if views not in (1, 2):
        raise ValueError(f"prediction.feature_views: expected 1 or 2, got {views}")
    have: dict[str, np.ndarray] = {}
    if cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            names, feats = z["file_names"], z["features"]
            if feats.ndim == 3 and feats.shape[1] == views and feats.shape[-1] == model.channels:
                have = {str(n): feats[i] for i, n in enumerate(names)}
    todo = [f for f in dict.fromkeys(file_names) if f not in have]
    if todo:
        log.info("features: %d slice(s) to compute, %d cached (%s)", len(todo), len(have), cache_path.name)
        new = pooled_features(model, [images_dir / f for f in todo], device, batch_size, mirror=views == 2,
                              desc=f"features {cache_path.parent.parent.name}")
        have.update(zip(todo, new))
        names = np.array(sorted(have))
        with atomic_path(cache_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, file_names=names, features=np.stack([have[n] for n in names]))
    else:
        log.info("features: all %d slice(s) cached (%s)", len(file_names), cache_path.name)
    return np.stack([have[f] for f in file_names]) if len(file_names) else np.zeros((0, views, model.channels), np.float32)


def add_to_cache(cache_path: Path, vectors: dict[str, np.ndarray]) -> None:
    """Merge {file name: (views, C)} into a feature cache (what :func:`cached_features` reads);
    entries of another shape than the cache's are not mixed in (the cache is rewritten from them)."""
    have: dict[str, np.ndarray] = {}
    first = next(iter(vectors.values()))
    if cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            names, feats = z["file_names"], z["features"]
        if feats.ndim == 3 and feats.shape[1:] == first.shape:
            have = {str(n): feats[i] for i, n in enumerate(names)}
    have.update(vectors)
    names = np.array(sorted(have))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, file_names=names, features=np.stack([have[n] for n in names]).astype(np.float32))
