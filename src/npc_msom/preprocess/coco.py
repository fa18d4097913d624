"""COCO instance annotations from masks (pycocotools RLE) and the COCO file layout."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from npc_msom.config import STRUCTURES

CATEGORIES = [{"id": i + 1, "name": name, "supercategory": "tumour"} for i, name in enumerate(STRUCTURES)]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}


def instance_annotation(mask_yx: np.ndarray, category: str) -> dict:
    """One COCO annotation (without ids) for a bool (h, w) instance mask."""
    rle = mask_utils.encode(np.asfortranarray(mask_yx.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {"category_id": CATEGORY_ID[category], "segmentation": rle, "bbox": [x, y, w, h],
            "area": float(mask_yx.sum()), "iscrowd": 0}


def coco_document(images: list[dict], annotations: list[dict], description: str) -> dict:
    """A COCO instances document; ``images``/``annotations`` already carry their ids."""
    return {"info": {"description": description, "version": "1.0"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": CATEGORIES}
