"""Inference API, tumour-slice selection, Figure 2 and Table 2 of a run."""
import csv
import shutil

import numpy as np
import pytest
import torch

from npc_msom.detection import detect, figure2, load_detector, select_tumour_slices, table2_for_run
from npc_msom.detection.data import load_slice, read_coco
from npc_msom.detection.figures import Panel, draw_panels, pick_figure_slice

SEQ = "CE-T1WI"


def test_detect_returns_boxes_labels_scores_masks(trained_run, det_run):
    model, meta = load_detector(trained_run.checkpoint_last)
    coco = read_coco(det_run / "preprocessed" / SEQ / "coco_val.json")
    floats = [load_slice(coco.image_path(i)) for i in range(3)]
    uint8 = [np.rint(f * 255).astype(np.uint8) for f in floats]
    out = detect(model, floats, "cpu", score_threshold=0.0, batch_size=2)
    out8 = detect(model, uint8, "cpu", score_threshold=0.0)
    assert len(out) == 3
    for d, d8 in zip(out, out8):
        n = len(d["scores"])
        assert d["boxes_xyxy"].shape == (n, 4) and d["boxes_xyxy"].dtype == np.float32
        assert d["labels"].dtype == np.int64 and set(d["labels"]) <= {1, 2}
        assert d["masks"].shape == (n, 96, 96) and d["masks"].dtype == bool
        assert np.all(np.diff(d["scores"]) <= 0)
        assert np.all((d["boxes_xyxy"] >= 0) & (d["boxes_xyxy"] <= 96))
        np.testing.assert_allclose(d["scores"], d8["scores"], atol=1e-5)
    high = detect(model, floats, "cpu", score_threshold=0.5)
    assert all((d["scores"] >= 0.5).all() for d in high)
    assert sum(len(d["scores"]) for d in high) <= sum(len(d["scores"]) for d in out)


def _dets(*scores, label=1):
    return [{"boxes_xyxy": np.zeros((1 if s else 0, 4), np.float32), "labels": np.full(1 if s else 0, label),
             "scores": np.array([s] if s else [], np.float32)} for s in scores]


def test_select_tumour_slices():
    dets = _dets(0.9, 0.8, 0.0, 0.7, 0.2, 0.95)
    assert select_tumour_slices(dets) == [0, 1, 3, 5]
    # an isolated hit is dropped when runs must be at least 2 slices long
    assert select_tumour_slices(dets, min_run_slices=2) == [0, 1]
    # z order, not list order, decides which slices are neighbours
    z = [10.0, 11.0, 12.0, 13.0, 14.0, 9.0]
    assert select_tumour_slices(dets, z, min_run_slices=2) == [5, 0, 1]
    # only GTV (label 1) counted
    mixed = _dets(0.9) + _dets(0.9, label=2)
    assert select_tumour_slices(mixed, labels=[1]) == [0]
    # nothing above the threshold: the best slice, or nothing
    weak = _dets(0.1, 0.3, 0.2)
    assert select_tumour_slices(weak) == [1]
    assert select_tumour_slices(weak, fallback_top=0) == []
    assert select_tumour_slices([]) == []
    with pytest.raises(ValueError):
        select_tumour_slices(weak, [1.0, 2.0])


def test_figure_panels(tmp_path):
    img = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    boxes = np.array([[5, 5, 20, 20], [30, 30, 40, 40]], np.float32)
    panels = [Panel(img, "ground truth, T2WI", boxes, np.array([1, 2])),
              Panel(img, "detected, T2WI", boxes, np.array([1, 2]), np.array([0.97, 0.61])),
              Panel(img, "detected, T1WI", np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))]
    path = draw_panels(panels, ("GTV", "GTVln"), tmp_path / "f.png")
    from PIL import Image
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)
    blue = (rgb[..., 2] > 200) & (rgb[..., 0] < 80)
    assert red.sum() > 50 and yellow.sum() > 50 and blue.sum() > 50


def test_figure2_of_a_run(trained_run, det_run, tmp_path):
    # the CE-T1WI detector stands in for the T2WI one; T1WI has no detector
    run = tmp_path / "run"
    shutil.copytree(det_run / "preprocessed", run / "preprocessed")
    for seq in ("CE-T1WI", "T2WI"):
        (run / "detection" / seq).mkdir(parents=True)
        shutil.copy(trained_run.checkpoint_last, run / "detection" / seq / "checkpoint_last.pt")
        shutil.copy(trained_run.metrics_path, run / "detection" / seq / "metrics.json")
    ref = read_coco(run / "preprocessed" / "T2WI" / "coco_val.json")
    index = pick_figure_slice(ref)
    labels = [a["label"] for a in ref.annotations[ref.images[index]["id"]]]
    others = [[a["label"] for a in ref.annotations[im["id"]]] for im in ref.images]
    assert (len(set(labels)), len(labels)) == max((len(set(o)), len(o)) for o in others)
    path = figure2(run, device="cpu", score_threshold=0.3)
    assert path == run / "detection" / "figure2.png" and path.read_bytes()[:4] == b"\x89PNG"
    table = table2_for_run(run)
    rows = list(csv.DictReader(table.open()))
    assert [r["sequence"] for r in rows] == ["T2WI", "CE-T1WI"]


def test_slices_of_the_sequences_are_paired_by_patient_and_z(toy_run):
    from npc_msom.detection.figures import _match_slice
    t2 = read_coco(toy_run / "preprocessed" / "T2WI" / "coco_val.json")
    ce = read_coco(toy_run / "preprocessed" / "CE-T1WI" / "coco_val.json")
    for im in t2.images:
        j = _match_slice(ce, im["patient_id"], im["z_mm"])
        assert ce.images[j]["patient_id"] == im["patient_id"] and ce.images[j]["z_mm"] == im["z_mm"]
    assert _match_slice(ce, t2.images[0]["patient_id"], t2.images[0]["z_mm"] + 30) is None


def test_figure_slice_prefers_a_level_present_in_every_sequence(tmp_path):
    """Each sequence keeps every n-th slice on its own grid: the figure's slice must have a partner
    (within the tolerance) in the other sequences, even if a larger tumour is shown elsewhere."""
    from pathlib import Path

    from npc_msom.detection.data import CocoSlices

    def coco(zs, areas):
        images = tuple({"id": i + 1, "file_name": f"{i}.png", "width": 8, "height": 8,
                        "patient_id": "P1", "z_mm": z} for i, z in enumerate(zs))
        anns = {i + 1: [{"label": 1, "area": a, "iscrowd": 0}] for i, a in enumerate(areas)}
        return CocoSlices(Path("x.json"), Path("."), ("GTV", "GTVln"), images, anns)

    t2 = coco([10.0, 20.0], [500.0, 100.0])   # the bigger tumour is at z = 10
    t1 = coco([13.0, 21.0], [50.0, 50.0])      # but T1WI has no slice within 1.5 mm of 10
    assert pick_figure_slice(t2) == 0
    assert pick_figure_slice(t2, [t1], tol_mm=1.5) == 1
    assert pick_figure_slice(t2, [coco([40.0], [1.0])], tol_mm=1.5) == 0  # no common level: best alone


class _GroundTruthModel(torch.nn.Module):
    """A stub detector that returns each slice's ground truth (boxes, labels, masks), in order."""

    def __init__(self, coco):
        super().__init__()
        from pycocotools import mask as mask_util
        self.outputs = []
        for im in coco.images:
            anns = coco.annotations[im["id"]]
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                                 dtype=torch.float32).reshape(-1, 4)
            masks = torch.stack([torch.from_numpy(mask_util.decode(a["segmentation"]).astype(np.float32))
                                 for a in anns])[:, None] if anns else torch.zeros(0, 1, im["height"], im["width"])
            self.outputs.append({"boxes": boxes, "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64),
                                 "scores": torch.ones(len(anns)), "masks": masks})
        self.served = 0

    def forward(self, images):
        out = self.outputs[self.served:self.served + len(images)]
        self.served += len(images)
        return out


def test_evaluate_detector_gives_ap_one_for_the_ground_truth(det_run):
    from npc_msom.detection import evaluate_detector
    coco = read_coco(det_run / "preprocessed" / SEQ / "coco_val.json")
    metrics, preds = evaluate_detector(_GroundTruthModel(coco), coco, "cpu", batch_size=3, show_progress=False)
    assert metrics.ap50 == {"GTV": pytest.approx(1.0), "GTVln": pytest.approx(1.0)}
    assert metrics.mask_map50 == pytest.approx(1.0)
    present = {(c, z) for c, bins in metrics.n_gt_by_size.items() for z, n in bins.items() if n}
    assert len(present) >= 3  # the 96 px slices hold GTVs and nodes of several sizes
    for c, bins in metrics.ap50_by_size.items():
        for z, ap in bins.items():
            assert ap == (pytest.approx(1.0) if (c, z) in present else None), (c, z)
    assert sum(sum(b.values()) for b in metrics.n_gt_by_size.values()) == sum(metrics.n_gt.values())
    d = metrics.to_dict()
    assert d["ap50_by_size"]["GTV"] == metrics.ap50_by_size["GTV"]
