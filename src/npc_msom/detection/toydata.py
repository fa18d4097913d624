"""A tiny synthetic COCO set in the layout the preprocessing stage writes, for tests and benchmarks.

Shapes only, no anatomy: a textured head-like ellipse, a bright lobulated blob (GTV) and one or two
small round blobs (GTVln) on each tumour slice, and tumour-free slices as negatives. Layout:
``<root>/preprocessed/<sequence>/{images/, coco_train.json, coco_val.json, slices.csv}`` and
``<root>/preprocessed/split.json``, with the same patients and z levels in every sequence.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from scipy import ndimage

# tumour / tissue contrast per sequence (0..1 grey levels): enhancing tumour brightest on CE-T1WI
_CONTRAST = {"CE-T1WI": (0.38, 0.80), "T2WI": (0.32, 0.68), "T1WI": (0.40, 0.58)}


def _disc(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _patient_geometry(rng: np.random.Generator, size: int, n_tumour: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(GTV mask, GTVln mask) per tumour slice of one patient, same for every sequence."""
    cy, cx = size * (0.42 + rng.uniform(-0.04, 0.04)), size * (0.5 + rng.uniform(-0.04, 0.04))
    r0 = size * rng.uniform(0.09, 0.13)
    lobes = [(rng.uniform(-0.5, 0.5) * r0, rng.uniform(-0.5, 0.5) * r0, rng.uniform(0.55, 0.8))
             for _ in range(3)]
    sides = [-1, 1] if rng.random() < 0.5 else [int(rng.choice([-1, 1]))]
    nodes = [(size * (0.58 + rng.uniform(-0.03, 0.03)), size * (0.5 + s * rng.uniform(0.24, 0.3)),
              size * rng.uniform(0.045, 0.06)) for s in sides]
    out = []
    for k in range(n_tumour):
        # cross-sections of an ellipsoid: smaller towards the ends of the tumour
        t = (k + 0.5) / n_tumour * 2 - 1
        scale = max(0.55, float(np.sqrt(1 - 0.6 * t * t)))
        gtv = _disc((size, size), cy, cx, r0 * scale)
        for dy, dx, f in lobes:
            gtv |= _disc((size, size), cy + dy, cx + dx, r0 * f * scale)
        ln = np.zeros((size, size), bool)
        for ny, nx, nr in nodes:
            ln |= _disc((size, size), ny, nx, nr * (0.8 + 0.2 * scale))
        out.append((gtv, ln & ~gtv))
    return out


def _render(rng: np.random.Generator, size: int, gtv: np.ndarray, ln: np.ndarray, sequence: str,
            texture: np.ndarray) -> np.ndarray:
    tissue, tumour = _CONTRAST.get(sequence, (0.38, 0.75))
    head = np.zeros((size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size * 0.5) / (size * 0.46)) ** 2 + ((xx - size * 0.5) / (size * 0.4)) ** 2 <= 1
    img = np.full((size, size), 0.02)
    img[head] = tissue
    img = img + head * texture
    lesion = ndimage.gaussian_filter((gtv | ln).astype(float), 0.7)
    img = img * (1 - lesion) + lesion * (tumour + 0.3 * texture)
    img = img + rng.normal(0, 0.025, img.shape)
    return np.clip(np.rint(1 + 254 * np.clip(img, 0, 1)), 1, 255).astype(np.uint8)


def _annotations(mask: np.ndarray, category_id: int) -> list[dict]:
    """One annotation per connected component, compressed RLE with a str ``counts``."""
    labelled, n = ndimage.label(mask)
    anns = []
    for c in range(1, n + 1):
        comp = labelled == c
        ys, xs = np.nonzero(comp)
        rle = mask_util.encode(np.asfortranarray(comp.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"category_id": category_id, "segmentation": rle, "area": float(comp.sum()),
                     "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                              float(ys.max() - ys.min() + 1)], "iscrowd": 0})
    return anns


def write_toy_coco(root: str | Path, *, n_patients: int = 6, val_patients: int = 2, tumour_slices: int = 4,
                   negatives_per_patient: int = 1, image_size: int = 64,
                   sequences: Sequence[str] = ("CE-T1WI",), seed: int = 0) -> dict[str, Path]:
    """Writes the toy set under ``root``; returns paths of the first sequence (images_dir,
    coco_train, coco_val, slices_csv) and ``split``. Deterministic for a given seed."""
    root = Path(root)
    pre = root / "preprocessed"
    ids = [f"TOY{i:04d}" for i in range(1, n_patients + 1)]
    val_ids = ids[-val_patients:] if val_patients else []
    split = {"train": [p for p in ids if p not in val_ids], "val": val_ids}
    pre.mkdir(parents=True, exist_ok=True)
    (pre / "split.json").write_text(json.dumps(split, indent=2))
    geometry, textures = {}, {}
    for pi, pid in enumerate(ids):
        rng = np.random.default_rng([seed, pi])
        geometry[pid] = _patient_geometry(rng, image_size, tumour_slices)
        textures[pid] = ndimage.gaussian_filter(rng.normal(0, 1, (image_size, image_size)), image_size / 24) \
            * (0.12 * image_size / 24)
    first = None
    for si, seq in enumerate(sequences):
        out = pre / seq
        (out / "images").mkdir(parents=True, exist_ok=True)
        files = {"train": {"images": [], "annotations": []}, "val": {"images": [], "annotations": []}}
        rows = []
        image_id, ann_id = 0, 0
        for pi, pid in enumerate(ids):
            part = "val" if pid in val_ids else "train"
            rng = np.random.default_rng([seed, pi, si, 1])
            slices = [(k + 40, g, l) for k, (g, l) in enumerate(geometry[pid])]
            empty = np.zeros((image_size, image_size), bool)
            slices += [(40 + tumour_slices + 3 + j, empty, empty) for j in range(negatives_per_patient)]
            for z_index, gtv, ln in slices:
                image_id += 1
                name = f"images/{pid}_{seq}_z{z_index:04d}.png"
                Image.fromarray(_render(rng, image_size, gtv, ln, seq, textures[pid])).save(out / name)
                z_mm = -60.0 + z_index
                files[part]["images"].append({"id": image_id, "file_name": name, "width": image_size,
                                              "height": image_size, "patient_id": pid, "sequence": seq,
                                              "slice_index": z_index, "z_mm": z_mm})
                for ann in _annotations(gtv, 1) + _annotations(ln, 2):
                    ann_id += 1
                    files[part]["annotations"].append({"id": ann_id, "image_id": image_id, **ann})
                rows.append({"image_id": image_id, "file_name": name, "patient_id": pid, "sequence": seq,
                             "split": part, "slice_index": z_index, "z_mm": z_mm,
                             "has_gtv": int(gtv.any()), "has_gtvln": int(ln.any())})
        for part in ("train", "val"):
            coco = {"images": files[part]["images"], "annotations": files[part]["annotations"],
                    "categories": [{"id": 1, "name": "GTV"}, {"id": 2, "name": "GTVln"}]}
            (out / f"coco_{part}.json").write_text(json.dumps(coco))
        with open(out / "slices.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if first is None:
            first = {"images_dir": out, "coco_train": out / "coco_train.json", "coco_val": out / "coco_val.json",
                     "slices_csv": out / "slices.csv"}
    return {**first, "split": pre / "split.json", "root": root}
