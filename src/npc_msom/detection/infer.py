"""Inference: detections per slice, evaluation on a COCO set, tumour-slice selection."""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util

from npc_msom.detection.data import CocoSlices, load_slice
from npc_msom.detection.metrics import DetectionMetrics, coco_metrics
from npc_msom.detection.model import amp_context, amp_dtype
from npc_msom.runtime import progress

log = logging.getLogger(__name__)

MASK_THRESHOLD = 0.5  # Mask R-CNN's mask probabilities -> binary masks (MMDetection: mask_thr_binary 0.5)


def _as_tensor(slice_: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W) or (1|3, H, W) uint8 0..255 or float 0..1 -> (C, H, W) float32 0..1."""
    t = torch.as_tensor(slice_)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    else:
        t = t.float()
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"a slice must be (H, W) or (C, H, W), got shape {tuple(t.shape)}")
    return t


def _raw_batches(model, slices: Sequence, device: torch.device, batch_size: int, amp: bool,
                 score_threshold: float = 0.0, desc: str | None = None) -> Iterator[tuple[int, dict]]:
    """Yields (index, detections on the CPU) per slice: boxes, labels, scores and masks (bool).

    Filtering by score and binarising the masks happen on the device, so that only the kept
    detections' bit masks travel to the host (100 float masks of a 512 px slice are 100 MB).
    """
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    starts = range(0, len(slices), batch_size)
    if desc:
        starts = progress(starts, desc=desc, total=len(starts))
    for start in starts:
        batch = [_as_tensor(s).to(device, non_blocking=True) for s in slices[start:start + batch_size]]
        with amp_context(device, dtype):
            outputs = model(batch)
        for j, out in enumerate(outputs):
            keep = out["scores"] >= score_threshold
            yield start + j, {"boxes": out["boxes"][keep].float().cpu(), "labels": out["labels"][keep].cpu(),
                              "scores": out["scores"][keep].float().cpu(),
                              "masks": (out["masks"][keep, 0] > MASK_THRESHOLD).cpu() if "masks" in out else None}


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@torch.inference_mode()
def detect(model, slices: Sequence, device: torch.device | str = "cpu", score_threshold: float = 0.05, *,
           batch_size: int = 4, amp: bool = False) -> list[dict[str, np.ndarray]]:
    """Detections on each slice.

    slices: (H, W) arrays (uint8 0..255 or float 0..1) or tensors, of the model's input size.
    Returns one dict per slice: boxes_xyxy (N, 4) float32 px, labels (N,) int64 (1..K, index into
    the class names + 1), scores (N,) float32, masks (N, H, W) bool; sorted by score, descending.
    ``amp`` takes effect on CUDA only (bfloat16, or float16 where the GPU lacks it). The model is
    put back in its previous train/eval mode.
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    results: list[dict[str, np.ndarray]] = []
    try:
        for _, out in _raw_batches(model, slices, torch.device(device), batch_size, amp, score_threshold):
            results.append({"boxes_xyxy": out["boxes"].numpy().astype(np.float32),
                            "labels": out["labels"].numpy().astype(np.int64),
                            "scores": out["scores"].numpy().astype(np.float32),
                            "masks": out["masks"].numpy()})
    finally:
        model.train(was_training)
    return results


def coco_ground_truth(coco: CocoSlices) -> tuple[list[dict], list[dict]]:
    """(images, annotations) of a CocoSlices with category_id = label (1..K), for coco_metrics."""
    images = [{"id": im["id"], "width": im["width"], "height": im["height"]} for im in coco.images]
    anns = []
    for im in coco.images:
        for a in coco.annotations.get(im["id"], []):
            ann = {"image_id": im["id"], "category_id": a["label"], "bbox": [float(v) for v in a["bbox"]],
                   "iscrowd": int(a.get("iscrowd", 0))}
            ann["area"] = float(a.get("area", ann["bbox"][2] * ann["bbox"][3]))
            if a.get("segmentation"):
                ann["segmentation"] = a["segmentation"]
            anns.append(ann)
    return images, anns


@torch.inference_mode()
def evaluate_detector(model, coco: CocoSlices, device: torch.device | str = "cpu", *,
                      batch_size: int = 4, amp: bool = False, show_progress: bool = True,
                      desc: str = "validation", masks: bool = True) -> tuple[DetectionMetrics, list[dict]]:
    """AP@0.5 etc. of ``model`` on every slice of ``coco`` (negatives included).

    Returns the metrics and the COCO-format predictions (image_id, category_id = label, bbox xywh,
    score, segmentation as compressed RLE with a str ``counts``). masks: False runs the detector
    without its mask branch (box AP only, ~40% cheaper on a CPU; ``detection.val_masks``).
    """
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    predictions: list[dict] = []
    heads = getattr(model, "roi_heads", None)
    mask_pool = getattr(heads, "mask_roi_pool", None)
    if not masks and heads is not None:
        heads.mask_roi_pool = None  # torchvision's RoIHeads: no pooler, no mask branch
    try:
        paths = [coco.image_path(i) for i in range(len(coco))]
        slices = _LazySlices(paths)
        for i, out in _raw_batches(model, slices, torch.device(device), batch_size, amp,
                                   desc=desc if show_progress else None):
            image_id = coco.images[i]["id"]
            boxes = out["boxes"].numpy()
            # every detection's mask in one pycocotools call: (H, W, N) in Fortran order
            rles = mask_util.encode(np.asfortranarray(out["masks"].numpy().astype(np.uint8).transpose(1, 2, 0))) \
                if len(boxes) and out["masks"] is not None else [None] * len(boxes)
            for k in range(len(boxes)):
                x1, y1, x2, y2 = (float(v) for v in boxes[k])
                pred = {"image_id": image_id, "category_id": int(out["labels"][k]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(out["scores"][k])}
                if rles[k] is not None:
                    pred["segmentation"] = {**rles[k], "counts": rles[k]["counts"].decode("ascii")}
                predictions.append(pred)
    finally:
        if heads is not None:
            heads.mask_roi_pool = mask_pool
        model.train(was_training)
    images, gt = coco_ground_truth(coco)
    return coco_metrics(images, gt, predictions, coco.class_names), predictions


class _LazySlices(Sequence):
    """Slices read from disk only when their batch is run (a validation set can be large)."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [load_slice(p) for p in self.paths[item]]
        return load_slice(self.paths[item])


def slice_scores(detections: Sequence[dict], labels: Sequence[int] | None = None) -> np.ndarray:
    """Highest detection score per slice (0 where nothing of ``labels`` was detected)."""
    out = np.zeros(len(detections), np.float64)
    for i, d in enumerate(detections):
        s = np.asarray(d["scores"], np.float64)
        if labels is not None:
            s = s[np.isin(np.asarray(d["labels"]), list(labels))]
        out[i] = s.max() if s.size else 0.0
    return out


def select_tumour_slices(detections: Sequence[dict], z_mm: Sequence[float] | None = None, *,
                         score_threshold: float = 0.5, labels: Sequence[int] | None = None,
                         min_run_slices: int = 1, fallback_top: int = 1) -> list[int]:
    """Indices of a patient's slices that bear tumour, judged from the detections alone.

    detections: the output of :func:`detect` for all slices of one patient and sequence.
    z_mm: each slice's position (default: the slices are consecutive, in order).
    A slice is tumour-bearing when a detection of ``labels`` (default: every class) scores at
    least ``score_threshold``. ``min_run_slices`` > 1 drops hits on fewer consecutive slices than
    that (a tumour spans several 1 mm slices, so a lone hit is more likely a false positive).
    When nothing qualifies, the ``fallback_top`` slices with the highest scores are returned, so
    that a patient can still be scored (0 = return nothing). Returned in z order.
    """
    n = len(detections)
    if n == 0:
        return []
    z = np.arange(n, dtype=np.float64) if z_mm is None else np.asarray(z_mm, np.float64)
    if len(z) != n:
        raise ValueError(f"z_mm has {len(z)} values for {n} slices")
    scores = slice_scores(detections, labels)
    order = np.argsort(z, kind="stable")
    hit = scores[order] >= score_threshold
    keep: list[int] = []
    if hit.any():
        steps = np.diff(z[order])
        step = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 1.0
        run: list[int] = []
        for pos, idx in enumerate(order):
            adjacent = pos > 0 and hit[pos - 1] and (z[idx] - z[order[pos - 1]]) <= 1.5 * step
            if hit[pos]:
                if run and not adjacent:
                    if len(run) >= min_run_slices:
                        keep.extend(run)
                    run = []
                run.append(int(idx))
        if len(run) >= min_run_slices:
            keep.extend(run)
    if not keep and fallback_top > 0:
        best = np.argsort(-scores, kind="stable")[:fallback_top]
        keep = [int(i) for i in best]
        log.info("no slice scored >= %.2f; falling back to the %d best-scoring slice(s)", score_threshold,
                 len(keep))
    return sorted(keep, key=lambda i: (z[i], i))
