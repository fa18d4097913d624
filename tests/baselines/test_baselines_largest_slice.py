"""The largest-slice comparison model: the slice chosen is the one of maximal GTV area, and the
ResNet-18 from scratch trains on it (with and without the clinical vector)."""
from __future__ import annotations

import numpy as np
import torch

from npc_msom.baselines.largest_slice import (SliceNet, SliceTrainSettings, largest_gtv_slices,
                                              predict_slices, train_slice_model)
from npc_msom.preprocess.coco import coco_document, instance_annotation


def _phantom_doc(pid: str, masks_zyx: dict[str, np.ndarray], first_id: int) -> tuple[list, list]:
    """COCO images + annotations of every slice of a (z, y, x) phantom, as preprocessing writes them."""
    images, anns = [], []
    n = next(iter(masks_zyx.values())).shape[0]
    for z in range(n):
        iid = first_id + z
        images.append({"id": iid, "file_name": f"images/{pid}_z{z:04d}.png", "patient_id": pid,
                       "slice_index": z, "width": 64, "height": 64})
        for name, m in masks_zyx.items():
            if m[z].any():
                anns.append(dict(instance_annotation(m[z], name), id=len(anns) + 1000 * first_id, image_id=iid))
    return images, anns


def test_largest_slice_is_the_one_of_maximal_gtv_area():
    z, y, x = np.mgrid[:20, :64, :64]
    # ellipsoid GTV centred off the middle slice (z = 12), and a node that is larger on z = 4
    gtv = ((z - 12) / 6.0) ** 2 + ((y - 30) / 14.0) ** 2 + ((x - 28) / 10.0) ** 2 <= 1
    node = ((z - 4) / 3.0) ** 2 + ((y - 50) / 12.0) ** 2 + ((x - 50) / 12.0) ** 2 <= 1
    # patient B: two GTV pieces on z = 7 (areas add up) beat the single larger piece on z = 3;
    # patient C: equal areas on z = 14 and z = 15
    b = np.zeros((20, 64, 64), bool)
    b[3, 10:20, 10:20] = True            # 100 px
    b[7, 10:18, 10:18] = True            # 64 px
    b[7, 40:48, 40:48] = True            # + 64 px = 128 px, the largest
    c = np.zeros((20, 64, 64), bool)
    c[15, 5:15, 5:15] = True             # 100 px
    c[14, 30:40, 30:40] = True           # 100 px: tie -> the lower slice, 14
    nothing = np.zeros((20, 64, 64), bool)
    docs = []
    for k, (pid, masks) in enumerate([("A", {"GTV": gtv, "GTVln": node}), ("B", {"GTV": b}),
                                      ("C", {"GTV": c}), ("D", {"GTV": nothing, "GTVln": node})]):
        imgs, anns = _phantom_doc(pid, masks, first_id=100 * (k + 1))
        docs.append(coco_document(imgs, anns, "phantom"))
    got = largest_gtv_slices(docs)
    areas = gtv.sum(axis=(1, 2))
    assert got.loc["A", "slice_index"] == int(np.argmax(areas)) == 12
    assert got.loc["A", "gtv_area_px"] == areas.max()
    assert got.loc["B", "slice_index"] == 7 and got.loc["B", "gtv_area_px"] == 128
    assert got.loc["C", "slice_index"] == 14
    assert "D" not in got.index  # no GTV at all: not scorable by this model


def test_slice_net_shapes_with_and_without_clinical():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 48, 48)
    assert SliceNet(0).eval()(x, torch.zeros(3, 0)).shape == (3,)
    net = SliceNet(5).eval()
    assert net.fc.in_features == 512 + 5
    out1 = net(x, torch.zeros(3, 5))
    out2 = net(x, torch.ones(3, 5))
    assert out1.shape == (3,) and not torch.allclose(out1, out2)  # the clinical vector is used


def test_training_separates_a_trivial_task():
    # cases carry a bright square, controls do not: a few epochs must rank them
    g = torch.Generator().manual_seed(0)
    n = 16
    labels = np.array([0, 1] * (n // 2))
    imgs = torch.rand(n, 1, 32, 32, generator=g) * 0.2
    imgs[labels == 1, :, 8:24, 8:24] += 0.8
    s = SliceTrainSettings(epochs=6, batch_size=8, lr=3e-3, seed=0)
    model, history = train_slice_model(imgs, torch.zeros(n, 0), labels, s, torch.device("cpu"))
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    p = predict_slices(model, imgs, torch.zeros(n, 0), s, torch.device("cpu"))
    assert p.shape == (n,) and np.all((p >= 0) & (p <= 1))
    assert p[labels == 1].min() > p[labels == 0].max()
