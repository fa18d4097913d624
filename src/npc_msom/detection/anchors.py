"""Anchor coverage: can the RPN's anchors reach the ground-truth boxes at all?

The RPN learns only from anchors matched to a box (IoU >= 0.7, or the best anchor of each box
when none reaches that); a box whose best anchor has a low IoU gives the RPN a poor target and
often yields no proposal. :func:`anchor_coverage` measures, with torchvision's own
``AnchorGenerator`` built exactly as :func:`npc_msom.detection.model.build_model` builds it, the
share of ground-truth boxes whose best anchor has IoU >= 0.5 (and >= 0.7, the RPN's positive
threshold), per structure and per size bin (:data:`npc_msom.detection.metrics.SIZE_BINS`), and
which FPN level the RoI heads pool each box from.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from npc_msom.config import DetectionConfig
from npc_msom.detection.metrics import size_bin_of
from npc_msom.detection.model import FPN_STRIDES, make_anchor_generator, roi_canonical_scale

# The FPN pads its input to a multiple of the coarsest backbone stride (torchvision's
# GeneralizedRCNNTransform, size_divisible=32).
_SIZE_DIVISIBLE = 32


def _boxes_from(source: Any) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(boxes xywh (N, 4) float64 slice px, structure name per box, area per box) of a COCO file,
    a loaded COCO dict, or an (N, 4) array of xywh boxes (structure 'all', area = w x h)."""
    if isinstance(source, (str, Path)):
        source = json.loads(Path(source).read_text())
    if isinstance(source, Mapping):
        names = {c["id"]: c["name"] for c in source.get("categories", [])}
        anns = [a for a in source.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        labels = [names.get(a["category_id"], str(a["category_id"])) for a in anns]
        area = np.asarray([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns], np.float64)
        return boxes, labels, area
    boxes = np.asarray(source, np.float64).reshape(-1, 4)
    return boxes, ["all"] * len(boxes), boxes[:, 2] * boxes[:, 3]


def network_anchors(config: DetectionConfig, net_size: int) -> torch.Tensor:
    """Every anchor (A, 4) xyxy float32 in the network's input pixels for a square input of
    ``net_size`` px, from the model's own generator (P2..P6 grids as the FPN makes them)."""
    padded = int(math.ceil(net_size / _SIZE_DIVISIBLE) * _SIZE_DIVISIBLE)
    grids = [int(math.ceil(padded / s)) for s in FPN_STRIDES[:4]]
    grids.append(int(math.ceil(grids[-1] / 2)))  # P6: max-pool with stride 2 on P5
    gen = make_anchor_generator(config, net_size)

    class _Images:  # the two attributes AnchorGenerator reads of an ImageList
        tensors = torch.empty(1, 1, padded, padded)
        image_sizes = [(net_size, net_size)]

    feats = [torch.empty(1, 1, g, g) for g in grids]
    return gen(_Images(), feats)[0]


def anchor_coverage(coco_json_or_boxes: Any, detection_config: DetectionConfig, image_size: int, *,
                    iou_threshold: float = 0.5) -> dict:
    """Share of ground-truth boxes whose best anchor has IoU >= ``iou_threshold``.

    coco_json_or_boxes: a COCO file (path), a loaded COCO dict, or an (N, 4) array of xywh boxes in
    the slice's pixels. image_size: the slice's side in px (the network sees it x
    ``detection_config.input_scale``, and the boxes with it).
    Returns a plain dict: ``coverage`` (0..1), ``coverage_rpn`` (best IoU >= 0.7, the RPN's
    positive threshold), ``median_best_iou``, ``n_boxes``, ``anchor_sizes`` (px, per level),
    ``roi_levels`` (share of boxes pooled from P2..P5), and the same figures under ``by_structure``
    (name -> dict), ``by_size`` (size bin -> dict) and ``by_structure_size``.
    """
    boxes_xywh, labels, area = _boxes_from(coco_json_or_boxes)
    scale = float(detection_config.input_scale)
    net_size = int(round(image_size * scale))
    anchors = network_anchors(detection_config, net_size).double()
    b = torch.as_tensor(boxes_xywh, dtype=torch.float64) * scale
    b = torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)
    best = torch.zeros(len(b), dtype=torch.float64)
    for start in range(0, len(b), 512):  # bounds memory at 512 px (65k anchors)
        chunk = b[start:start + 512]
        if len(chunk):
            best[start:start + 512] = box_iou(chunk, anchors).max(dim=1).values
    best_np = best.numpy()
    # the RoI heads' level of each box (torchvision's LevelMapper, FPN eq. 1, clamped to P2..P5)
    side = np.sqrt(np.maximum((boxes_xywh[:, 2] * boxes_xywh[:, 3]) * scale * scale, 1e-12))
    level = np.clip(np.floor(4 + np.log2(side / roi_canonical_scale(detection_config, net_size)) + 1e-6), 2, 5)
    bins = [size_bin_of(a, image_size) for a in area]

    def summary(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        if n == 0:
            return {"n": 0, "coverage": None, "coverage_rpn": None, "median_best_iou": None}
        return {"n": n, "coverage": float((best_np[mask] >= iou_threshold).mean()),
                "coverage_rpn": float((best_np[mask] >= 0.7).mean()),
                "median_best_iou": float(np.median(best_np[mask])),
                "roi_levels": {f"P{k}": float((level[mask] == k).mean()) for k in (2, 3, 4, 5)}}

    labels_np = np.asarray(labels, dtype=object)
    bins_np = np.asarray(bins, dtype=object)
    structures = sorted(set(labels))
    size_names = [n for n in ("tiny", "small", "medium", "large") if n in set(bins)]
    out = {"image_size": int(image_size), "net_size": net_size, "iou_threshold": iou_threshold,
           "anchor_sizes": [list(s) for s in make_anchor_generator(detection_config, net_size).sizes],
           "roi_canonical_scale": roi_canonical_scale(detection_config, net_size),
           "n_boxes": int(len(b)), **{k: v for k, v in summary(np.ones(len(b), bool)).items() if k != "n"},
           "by_structure": {s: summary(labels_np == s) for s in structures},
           "by_size": {z: summary(bins_np == z) for z in size_names},
           "by_structure_size": {s: {z: summary((labels_np == s) & (bins_np == z)) for z in size_names}
                                 for s in structures}}
    return out


def format_coverage(cov: Mapping, label: str = "") -> str:
    """One line per structure of :func:`anchor_coverage`'s result, for logs and benchmarks."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"{label}anchor coverage (IoU >= {cov['iou_threshold']}): {pct(cov['coverage'])} of "
             f"{cov['n_boxes']} boxes (RPN >= 0.7: {pct(cov['coverage_rpn'])}); anchors "
             f"{cov['anchor_sizes']} px at {cov['net_size']} px"]
    for name, s in cov["by_structure"].items():
        sizes = ", ".join(f"{z} {pct(v['coverage'])} (n={v['n']})"
                          for z, v in cov["by_structure_size"][name].items() if v["n"])
        lines.append(f"  {name}: {pct(s['coverage'])} (n={s['n']}; {sizes})")
    return "\n".join(lines)


__all__: Sequence[str] = ("anchor_coverage", "format_coverage", "network_anchors")
