"""COCO instance files of MR slices -> torch samples for Mask R-CNN.

A COCO file is read once into a :class:`CocoSlices` (plain lists); :class:`SliceDataset` turns its
images into ``(image, target)`` pairs as torchvision's detection models take them:
image (1, H, W) float32 in 0..1; target boxes (N, 4) float32 xyxy px, labels (N,) int64 in 1..K,
masks (N, H, W) uint8, image_id () int64. An image without annotations is a tumour-free negative
(N = 0). Augmentation draws from a generator seeded by (seed, epoch, index), so it is the same
with any number of DataLoader workers and after a resume.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.utils.data.distributed
from PIL import Image
from pycocotools import mask as mask_util

from npc_msom.config import STRUCTURES
from npc_msom.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoSlices:
    """A COCO instance file, with categories mapped to labels 1..K in ``class_names`` order.

    ``images``: dicts with at least id, file_name, width, height (extra fields kept: patient_id,
    sequence, slice_index, z_mm). ``annotations``: image id -> list of annotation dicts, each with
    ``label`` (1..K) added; crowd annotations are kept for evaluation but not trained on.
    """
    json_path: Path
    images_dir: Path
    class_names: tuple[str, ...]
    images: tuple[dict, ...]
    annotations: dict[int, list[dict]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.images[index]["file_name"]

    def patients(self) -> list[str]:
        return sorted({str(im.get("patient_id")) for im in self.images if im.get("patient_id") is not None})

    def sequence(self) -> str | None:
        seqs = {im.get("sequence") for im in self.images} - {None}
        return seqs.pop() if len(seqs) == 1 else None

    def subset(self, indices: Sequence[int]) -> "CocoSlices":
        images = tuple(self.images[i] for i in indices)
        ids = {im["id"] for im in images}
        return CocoSlices(self.json_path, self.images_dir, self.class_names, images,
                          {k: v for k, v in self.annotations.items() if k in ids})

    def image_size(self) -> int:
        """Side of the square model input: the largest width or height in the file."""
        if not self.images:
            raise InputError("COCO file has no images", file=self.json_path, expected="at least one image")
        return int(max(max(im["width"], im["height"]) for im in self.images))


def canonical_class_names(names: Sequence[str]) -> tuple[str, ...]:
    """Category names in label order: the study's (GTV, GTVln) when those are the categories."""
    lowered = {n.lower() for n in names}
    if lowered == {s.lower() for s in STRUCTURES}:
        return STRUCTURES
    return tuple(names)


def read_coco(json_path: str | Path, images_dir: str | Path | None = None,
              class_names: Sequence[str] | None = None) -> CocoSlices:
    """Reads a COCO instance file; categories are matched to ``class_names`` by name.

    images_dir: the folder that ``file_name`` is relative to (default: the json's folder).
    class_names: None = this file's categories (ordered by id; GTV, GTVln for the study's two).
    Names match case-insensitively; annotations of other categories are ignored with a warning.
    Raises InputError naming the file for a malformed file or a missing image.
    """
    json_path = Path(json_path)
    images_dir = Path(images_dir) if images_dir is not None else json_path.parent
    if not json_path.is_file():
        raise InputError("COCO file does not exist", file=json_path, expected="a COCO instance json")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON: {e}", file=json_path, expected="a COCO instance json") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"missing or malformed '{key}' list", file=json_path,
                             expected="COCO keys images, annotations, categories")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if class_names is None:
        class_names = canonical_class_names([c["name"] for c in cats])
        if not class_names:
            raise InputError("no categories", file=json_path, expected="at least one category")
    class_names = tuple(class_names)
    by_lower = {n.lower(): i + 1 for i, n in enumerate(class_names)}
    cat_to_label = {c["id"]: by_lower[c["name"].lower()] for c in cats if c["name"].lower() in by_lower}
    unknown = sorted(c["name"] for c in cats if c["name"].lower() not in by_lower)

    images: list[dict] = []
    seen: set[int] = set()
    for im in data["images"]:
        for key in ("id", "file_name", "width", "height"):
            if key not in im:
                raise InputError(f"image entry without '{key}': {im!r}", file=json_path,
                                 expected="COCO image fields id, file_name, width, height")
        if im["id"] in seen:
            raise InputError(f"duplicate image id {im['id']}", file=json_path, expected="unique image ids")
        seen.add(im["id"])
        images.append(dict(im))
    missing = [im["file_name"] for im in images if not (images_dir / im["file_name"]).is_file()]
    if missing:
        raise InputError(f"{len(missing)} image file(s) not found under {images_dir}, e.g. {missing[0]}",
                         file=json_path, expected="file_name relative to the images folder")

    annotations: dict[int, list[dict]] = {im["id"]: [] for im in images}
    ignored = 0
    for ann in data["annotations"]:
        label = cat_to_label.get(ann.get("category_id"))
        if label is None:
            ignored += 1
            continue
        if ann.get("image_id") not in annotations:
            raise InputError(f"annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}",
                             file=json_path, expected="image_id of an image in the file")
        if "bbox" not in ann or len(ann["bbox"]) != 4:
            raise InputError(f"annotation {ann.get('id')} without a bbox", file=json_path,
                             expected="bbox [x, y, w, h]")
        annotations[ann["image_id"]].append({**ann, "label": label})
    if ignored:
        log.warning("%s: %d annotation(s) of categories %s ignored (model classes: %s)", json_path,
                    ignored, unknown, list(class_names))
    return CocoSlices(json_path, images_dir, class_names, tuple(images), annotations)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (compressed / uncompressed RLE or polygons) -> (H, W) uint8 0/1."""
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = mask_util.frPyObjects(rle, height, width)
        elif isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    else:
        rles = mask_util.frPyObjects(segmentation, height, width)
        rle = mask_util.merge(rles)
    return np.ascontiguousarray(mask_util.decode(rle), dtype=np.uint8)


def load_slice(path: str | Path) -> np.ndarray:
    """A slice image file -> (H, W) float32 in 0..1 (8- or 16-bit grey; colour is converted)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "I;16", "I;16B", "I", "F"):
                img = img.convert("L")
            arr = np.asarray(img)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read image: {e}", file=path, expected="a PNG or JPEG slice") from e
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max() > 255):
        return arr.astype(np.float32) / 65535.0
    arr = arr.astype(np.float32)
    hi = float(arr.max()) if arr.size else 1.0
    return arr / hi if hi > 1.0 else arr


def target_for(coco: CocoSlices, index: int) -> dict[str, np.ndarray]:
    """Boxes (N, 4) xyxy float32, labels (N,) int64, masks (N, H, W) uint8 of image ``index``.

    Crowd annotations and boxes with no width or height are left out of training targets.
    """
    im = coco.images[index]
    h, w = int(im["height"]), int(im["width"])
    boxes, labels, masks = [], [], []
    for ann in coco.annotations.get(im["id"], []):
        if ann.get("iscrowd", 0):
            continue
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
        if x2 <= x1 or y2 <= y1:
            continue
        boxes.append((x1, y1, x2, y2))
        labels.append(ann["label"])
        if "segmentation" in ann and ann["segmentation"]:
            masks.append(segmentation_to_mask(ann["segmentation"], h, w))
        else:  # a box-only dataset: the box itself is the mask
            m = np.zeros((h, w), np.uint8)
            m[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = 1
            masks.append(m)
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "masks": np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)}


def augment_sample(image: np.ndarray, target: dict[str, np.ndarray], rng: np.random.Generator, *,
                   flip_prob: float, intensity_jitter: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Horizontal flip (as MMDetection's RandomFlip) and a mild random gamma / contrast / brightness.

    image (H, W) float32 0..1; returns new arrays. The head is close to left-right symmetric, so a
    flipped slice is still a plausible slice.
    """
    w = image.shape[1]
    if rng.random() < flip_prob:
        image = image[:, ::-1]
        b = target["boxes"]
        target = {**target, "boxes": np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
                  if len(b) else b, "masks": target["masks"][:, :, ::-1]}
    j = intensity_jitter
    if j > 0:
        gamma = float(np.exp(rng.uniform(-np.log1p(2 * j), np.log1p(2 * j))))
        contrast = rng.uniform(1 - j, 1 + j)
        brightness = rng.uniform(-j / 2, j / 2)
        image = np.clip(np.clip(image, 0, 1) ** gamma * contrast + brightness, 0.0, 1.0)
    return np.ascontiguousarray(image, dtype=np.float32), {k: np.ascontiguousarray(v) for k, v in target.items()}


# Decoded samples a SliceDataset keeps per process: 450 demo slices take ~40 MB, 1 GiB holds ~700
# slices of 512 px with their masks (the rest are decoded each time they are drawn).
CACHE_MB = 1024


class SliceDataset(torch.utils.data.Dataset):
    """Samples of a :class:`CocoSlices` for torchvision's Mask R-CNN (see the module docstring)."""

    def __init__(self, coco: CocoSlices, *, augment: bool = False, seed: int = 0,
                 flip_prob: float = 0.5, intensity_jitter: float = 0.1, cache_mb: float = CACHE_MB):
        self.coco = coco
        self.augment = augment
        self.seed = seed
        self.flip_prob = flip_prob
        self.intensity_jitter = intensity_jitter
        self.epoch = 0
        # decoded slices and masks, kept for the life of the process (of each DataLoader worker) up
        # to cache_mb: an epoch after the first decodes no PNG and no RLE
        self._cache: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        self._cache_left = int(cache_mb * 2**20)

    def decoded(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(image, target) of ``index`` before augmentation, from the cache when it holds them."""
        hit = self._cache.get(index)
        if hit is None:
            hit = (load_slice(self.coco.image_path(index)), target_for(self.coco, index))
            size = hit[0].nbytes + sum(v.nbytes for v in hit[1].values())
            if size <= self._cache_left:
                self._cache[index] = hit
                self._cache_left -= size
        image, target = hit
        return image.copy(), {k: v.copy() for k, v in target.items()}

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index) only; call before each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, key: int | tuple[int, int]):
        # (epoch, index) keys come from EpochTaggedSampler: persistent DataLoader workers hold copies
        # of the dataset, so set_epoch() would not reach them
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image, target = self.decoded(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, target = augment_sample(image, target, rng, flip_prob=self.flip_prob,
                                           intensity_jitter=self.intensity_jitter)
        t = {"boxes": torch.from_numpy(target["boxes"]), "labels": torch.from_numpy(target["labels"]),
             "masks": torch.from_numpy(target["masks"]),
             "image_id": torch.tensor(int(self.coco.images[index]["id"]), dtype=torch.int64)}
        return torch.from_numpy(image)[None], t


class EpochTaggedSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) from a DistributedSampler, so augmentation follows the epoch even in
    persistent worker processes."""

    def __init__(self, sampler: torch.utils.data.distributed.DistributedSampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def collate(batch):
    """List of (image, target) -> (list of images, list of targets), as torchvision's references."""
    return tuple(zip(*batch))
