"""AP@0.5 per class and mAP@0.5 with pycocotools (plus AP@[.5:.95] and mask AP), and Table 2.

The study's metric is pycocotools' AP at IoU 0.5 (101-point interpolated precision, up to 100
detections per slice, all object sizes); mAP is the mean over the classes that have ground truth.
AP@0.5 is also given per object size (:data:`SIZE_BINS`, pycocotools' area ranges set to ours), so
that the tiny last slices of a lymph node, which no anchor of a 128 px slice can reach, show apart.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from npc_msom.runtime import atomic_path


# Size bins of an object, fixed before any result was seen (docs/detection.md, "Object sizes"):
# sqrt(area) of the ground truth (COCO's ``area``: its mask's pixel count) as a fraction of the
# slice's side, so that one anatomical size falls in the same bin at 128 and at 512 px (the
# preprocessing resamples one field of view to either). At 128 px: tiny < 4 px (the finest
# FPN stride, P2's 4 px: no anchor grid at scale 1 resolves such a box, e.g. a node's last
# slice), small 4-8 px, medium 8-16 px, large >= 16 px; at 512 px: 16 / 32 / 64 px (COCO's
# own small / medium boundary of 32 px falls on ours).
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("tiny", 0.0, 1 / 32), ("small", 1 / 32, 1 / 16), ("medium", 1 / 16, 1 / 8), ("large", 1 / 8, math.inf))


def size_ranges(image_size: int) -> dict[str, tuple[float, float]]:
    """Size bin -> [low, high) area range in px² of a square slice of ``image_size`` px."""
    return {name: ((lo * image_size) ** 2, (hi * image_size) ** 2 if math.isfinite(hi) else 1e10)
            for name, lo, hi in SIZE_BINS}


def size_bin_of(area_px: float, image_size: int) -> str:
    """The :data:`SIZE_BINS` name of an object of ``area_px`` px² on a slice of ``image_size`` px."""
    for name, (lo, hi) in size_ranges(image_size).items():
        if lo <= area_px < hi:
            return name
    return SIZE_BINS[-1][0]


@dataclass(frozen=True)
class DetectionMetrics:
    """Box (and mask) AP of one detector on one set of slices; None where a class has no ground truth.

    ap50 / ap50_95 / mask_*: class name -> AP in 0..1. n_gt: ground-truth objects per class.
    """
    class_names: tuple[str, ...]
    ap50: dict[str, float | None]
    map50: float | None
    ap50_95: dict[str, float | None]
    map50_95: float | None
    mask_ap50: dict[str, float | None] | None
    mask_map50: float | None
    mask_map50_95: float | None
    n_images: int
    n_gt: dict[str, int]
    n_detections: int
    # box AP@0.5 per class and size bin (SIZE_BINS; None where a bin has no ground truth of that
    # class), and the ground truths counted in each
    ap50_by_size: dict[str, dict[str, float | None]] | None = None
    n_gt_by_size: dict[str, dict[str, int]] | None = None

    def to_dict(self) -> dict:
        return {"class_names": list(self.class_names), "ap50": dict(self.ap50), "map50": self.map50,
                "ap50_95": dict(self.ap50_95), "map50_95": self.map50_95,
                "mask_ap50": None if self.mask_ap50 is None else dict(self.mask_ap50),
                "mask_map50": self.mask_map50, "mask_map50_95": self.mask_map50_95,
                "n_images": self.n_images, "n_gt": dict(self.n_gt), "n_detections": self.n_detections,
                "ap50_by_size": None if self.ap50_by_size is None else {k: dict(v) for k, v in self.ap50_by_size.items()},
                "n_gt_by_size": None if self.n_gt_by_size is None else {k: dict(v) for k, v in self.n_gt_by_size.items()}}


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _ap_from_precision(precision: np.ndarray) -> float | None:
    """Mean of valid entries of a pycocotools precision slice (-1 marks 'no ground truth')."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def _coco_eval(gt: dict, predictions: list[dict], iou_type: str, class_ids: list[int],
               area_ranges: Mapping[str, tuple[float, float]] | None = None):
    from pycocotools.coco import COCO  # noqa: PLC0415
    from pycocotools.cocoeval import COCOeval  # noqa: PLC0415
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.params.imgIds = [im["id"] for im in gt["images"]]
        ev.params.catIds = class_ids
        if area_ranges is not None:  # index 0 stays 'all', as pycocotools' default
            # pycocotools' ranges are closed [lo, hi]; ours [lo, hi), so that an object on a
            # boundary counts in one bin only (the one size_bin_of names)
            ev.params.areaRng = [[0.0, 1e10]] + [[lo, hi - 1e-6] for lo, hi in area_ranges.values()]
            ev.params.areaRngLbl = ["all"] + list(area_ranges)
        ev.evaluate()
        ev.accumulate()
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max dets]
    return ev.eval["precision"], list(ev.params.iouThrs)


def coco_metrics(images: Sequence[Mapping], gt_annotations: Sequence[Mapping],
                 predictions: Sequence[Mapping], class_names: Sequence[str],
                 with_masks: bool | None = None) -> DetectionMetrics:
    """AP of ``predictions`` against ``gt_annotations`` on ``images``.

    images: dicts with id, width, height. gt_annotations: COCO annotations with ``category_id`` in
    1..K (K = len(class_names)), bbox [x, y, w, h] px, area, iscrowd, and optionally segmentation
    (RLE or polygons). predictions: dicts with image_id, category_id, bbox [x, y, w, h], score, and
    optionally segmentation (RLE). with_masks: None = when every ground truth and prediction has a
    segmentation.
    """
    class_names = tuple(class_names)
    ids = list(range(1, len(class_names) + 1))
    gt_anns = []
    for i, a in enumerate(gt_annotations):
        a = dict(a)
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
        gt_anns.append(a)
    for i, a in enumerate(gt_anns):  # pycocotools needs unique positive ids
        a["id"] = i + 1
    gt = {"images": [{"id": im["id"], "width": im["width"], "height": im["height"]} for im in images],
          "annotations": gt_anns, "categories": [{"id": i, "name": n} for i, n in zip(ids, class_names)]}
    n_gt = {n: sum(1 for a in gt_anns if a["category_id"] == i and not a["iscrowd"])
            for i, n in zip(ids, class_names)}
    preds = [dict(p) for p in predictions]
    if with_masks is None:
        with_masks = bool(gt_anns) and all(a.get("segmentation") for a in gt_anns) and \
            all(p.get("segmentation") for p in preds)

    # size bins on the slices' side (square slices; the largest side where they differ)
    image_size = max([max(int(im["width"]), int(im["height"])) for im in images] or [1])
    ranges = size_ranges(image_size)
    n_gt_by_size = {n: {z: sum(1 for a in gt_anns if a["category_id"] == i and not a["iscrowd"]
                           and size_bin_of(float(a["area"]), image_size) == z) for z in ranges}
                    for i, n in zip(ids, class_names)}

    def per_type(iou_type: str):
        if not preds:
            # nothing detected: AP 0 where there is ground truth (pycocotools cannot load no results)
            ap = {n: (0.0 if n_gt[n] else None) for n in class_names}
            by_size = {n: {z: (0.0 if n_gt_by_size[n][z] else None) for z in ranges} for n in class_names}
            return ap, dict(ap), by_size
        precision, thrs = _coco_eval(gt, preds, iou_type, ids, ranges)
        t50 = int(np.argmin(np.abs(np.asarray(thrs) - 0.5)))
        ap50 = {n: _ap_from_precision(precision[t50, :, k, 0, -1]) for k, n in enumerate(class_names)}
        ap = {n: _ap_from_precision(precision[:, :, k, 0, -1]) for k, n in enumerate(class_names)}
        by_size = {n: {z: _ap_from_precision(precision[t50, :, k, 1 + j, -1]) for j, z in enumerate(ranges)}
                   for k, n in enumerate(class_names)}
        return ap50, ap, by_size

    box50, box, box50_by_size = per_type("bbox")
    mask50 = mask = None
    if with_masks:
        mask50, mask, _ = per_type("segm")
    return DetectionMetrics(
        class_names=class_names, ap50=box50, map50=_mean(box50.values()), ap50_95=box,
        map50_95=_mean(box.values()), mask_ap50=mask50,
        mask_map50=None if mask50 is None else _mean(mask50.values()),
        mask_map50_95=None if mask is None else _mean(mask.values()),
        n_images=len(images), n_gt=n_gt, n_detections=len(preds), ap50_by_size=box50_by_size,
        n_gt_by_size=n_gt_by_size)


TABLE2_SIZE_COLUMNS = tuple(f"{c} AP@0.5 {z}" for c in ("GTV", "GTVln") for z, _, _ in SIZE_BINS)
TABLE2_COLUMNS = ("sequence", "GTV AP@0.5", "GTVln AP@0.5", "mAP@0.5", "mAP@[.5:.95]", "mask mAP@0.5",
                  "validation slices") + TABLE2_SIZE_COLUMNS
# provenance: the digest of the settings and inputs each row's detector was trained with (train.py)
TABLE2_COLUMNS += ("settings digest",)


def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.1f}"


def table2_rows(metrics_by_sequence: Mapping[str, Mapping]) -> list[dict[str, str]]:
    """The study's Table 2 (AP in percent, one decimal), one row per sequence.

    metrics_by_sequence: sequence -> a metrics dict (``DetectionMetrics.to_dict()`` or a
    ``metrics.json`` of train_detector). Classes other than GTV / GTVln are left out of the table.
    """
    rows = []
    for seq, m in metrics_by_sequence.items():
        ap50 = m.get("ap50", {})
        rows.append({"sequence": seq, "GTV AP@0.5": _pct(ap50.get("GTV")), "GTVln AP@0.5": _pct(ap50.get("GTVln")),
                     "mAP@0.5": _pct(m.get("map50")), "mAP@[.5:.95]": _pct(m.get("map50_95")),
                     "mask mAP@0.5": _pct(m.get("mask_map50")), "validation slices": str(m.get("n_images", "")),
                     **{f"{c} AP@0.5 {z}": _pct(((m.get("ap50_by_size") or {}).get(c) or {}).get(z))
                        for c in ("GTV", "GTVln") for z, _, _ in SIZE_BINS}})
        rows[-1]["settings digest"] = str(m.get("settings_digest") or "")
    return rows


def write_table2(metrics_by_sequence: Mapping[str, Mapping], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(TABLE2_COLUMNS))
            w.writeheader()
            w.writerows(table2_rows(metrics_by_sequence))
    return path
