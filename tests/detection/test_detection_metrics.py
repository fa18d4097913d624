"""AP@0.5 with pycocotools: perfect predictions give 1, boxes at IoU 0.4 give 0."""
import csv

import numpy as np
import pytest
from pycocotools import mask as mask_util

from npc_msom.detection.metrics import coco_metrics, table2_rows, write_table2

CLASSES = ("GTV", "GTVln")
IMAGES = [{"id": i, "width": 64, "height": 64} for i in (1, 2, 3)]


def _rle(x, y, w, h):
    m = np.zeros((64, 64), np.uint8)
    m[y:y + h, x:x + w] = 1
    r = mask_util.encode(np.asfortranarray(m))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _gt():
    # image 3 is a tumour-free negative
    boxes = [(1, 1, 10, 10, 20, 16), (1, 2, 40, 40, 8, 8), (2, 1, 5, 30, 24, 20), (2, 2, 44, 10, 6, 6)]
    return [{"image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
             "segmentation": _rle(x, y, w, h)} for i, c, x, y, w, h in boxes]


def test_perfect_predictions_give_ap_one():
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
              "segmentation": a["segmentation"]} for a in _gt()]
    m = coco_metrics(IMAGES, _gt(), preds, CLASSES)
    assert m.ap50 == {"GTV": pytest.approx(1.0), "GTVln": pytest.approx(1.0)}
    assert m.map50 == pytest.approx(1.0)
    assert m.map50_95 == pytest.approx(1.0)
    assert m.mask_map50 == pytest.approx(1.0)
    assert m.n_gt == {"GTV": 2, "GTVln": 2}


@pytest.mark.parametrize("iou, expected", [(0.4, 0.0), (0.6, 1.0)])
def test_ap50_counts_a_hit_only_from_iou_half(iou, expected):
    # same-height box cut to a share `iou` of the ground truth's width: IoU = iou exactly
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
              "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][2] * iou, a["bbox"][3]]} for a in _gt()]
    m = coco_metrics(IMAGES, _gt(), preds, CLASSES, with_masks=False)
    assert m.ap50["GTV"] == pytest.approx(expected)
    assert m.ap50["GTVln"] == pytest.approx(expected)
    assert m.map50 == pytest.approx(expected)
    assert m.mask_ap50 is None


def test_false_positives_on_negative_slice_lower_ap():
    gt = _gt()
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
             for a in gt]
    # a higher-scoring GTV box on the tumour-free slice ranks first and halves precision at low recall
    preds.append({"image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.99})
    m = coco_metrics(IMAGES, gt, preds, CLASSES, with_masks=False)
    assert m.ap50["GTVln"] == pytest.approx(1.0)
    assert 0.5 < m.ap50["GTV"] < 0.9


def test_class_without_ground_truth_is_none_and_left_out_of_map():
    gt = [a for a in _gt() if a["category_id"] == 1]
    preds = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in gt]
    m = coco_metrics(IMAGES, gt, preds, CLASSES, with_masks=False)
    assert m.ap50["GTVln"] is None
    assert m.map50 == pytest.approx(1.0)


def test_no_predictions_give_zero():
    m = coco_metrics(IMAGES, _gt(), [], CLASSES)
    assert m.ap50 == {"GTV": 0.0, "GTVln": 0.0}
    assert m.map50 == 0.0


def test_table2_in_percent(tmp_path):
    rows = table2_rows({"CE-T1WI": {"ap50": {"GTV": 0.596, "GTVln": 0.556}, "map50": 0.576, "n_images": 46}})
    assert rows[0]["GTV AP@0.5"] == "59.6" and rows[0]["mAP@0.5"] == "57.6"
    path = write_table2({"T1WI": {"ap50": {"GTV": 0.5, "GTVln": None}, "map50": 0.5}}, tmp_path / "t.csv")
    row = next(csv.DictReader(path.open()))
    assert row["sequence"] == "T1WI" and row["GTV AP@0.5"] == "50.0" and row["GTVln AP@0.5"] == ""


def test_size_bins_split_ap_by_object_size(tmp_path):
    from npc_msom.detection.metrics import SIZE_BINS, size_bin_of, size_ranges
    # the rule of docs/detection.md at 128 px: tiny < 4 px, small < 8, medium < 16, large >= 16
    assert [size_bin_of(a, 128) for a in (1, 15.9, 16, 63, 64, 255, 256, 1e6)] == [
        "tiny", "tiny", "small", "small", "medium", "medium", "large", "large"]
    assert size_ranges(512)["small"] == (16 ** 2, 32 ** 2) and [b[0] for b in SIZE_BINS] == list(size_ranges(64))
    gt = _gt()  # at 64 px: GTV 20x16 and 24x20 large; GTVln 8x8 large, 6x6 medium (tiny < 2 px)
    hit = [a for a in gt if a["bbox"][2] >= 8]  # the 6x6 node is missed
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
             for a in hit]
    m = coco_metrics(IMAGES, gt, preds, CLASSES, with_masks=False)
    assert m.n_gt_by_size["GTVln"] == {"tiny": 0, "small": 0, "medium": 1, "large": 1}
    assert m.ap50_by_size["GTVln"] == {"tiny": None, "small": None, "medium": 0.0, "large": pytest.approx(1.0)}
    assert m.ap50_by_size["GTV"]["large"] == pytest.approx(1.0)
    row = table2_rows({"CE-T1WI": m.to_dict()})[0]
    assert row["GTVln AP@0.5 medium"] == "0.0" and row["GTVln AP@0.5 large"] == "100.0"
    assert row["GTVln AP@0.5 tiny"] == ""
