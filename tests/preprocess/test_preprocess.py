import json
import math

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO

from npc_msom.cohort.model import Geometry, Patient, Series
from npc_msom.config import load_config
from npc_msom.preprocess import preprocess
from npc_msom.preprocess.intensity import normalise_to_uint8
from npc_msom.preprocess.resample import resample_series
from npc_msom.preprocess.slices import resize_instances, select_slices
from npc_msom.preprocess.split import repeated_kfold, train_val_split


def rotation_x(deg):
    a = math.radians(deg)
    return (1.0, 0.0, 0.0, 0.0, math.cos(a), -math.sin(a), 0.0, math.sin(a), math.cos(a))


def grid_points(g: Geometry):
    """Physical LPS coordinates (x, y, z arrays, each (z, y, x)) of every voxel centre."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in g.size[::-1]), indexing="ij")
    idx = np.stack([i, j, k], axis=-1) * np.asarray(g.spacing_mm)
    pts = idx @ np.asarray(g.direction).reshape(3, 3).T + np.asarray(g.origin_mm)
    return pts[..., 0], pts[..., 1], pts[..., 2]


def ellipsoid_series(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), centre=(5.0, -3.0, 2.0), axes=(12, 9, 15),
                     spacing=(0.7, 0.7, 5.0), size=(160, 160, 18), node_radius=None, sequence="T2WI",
                     seed=0):
    origin = (-56.0, -56.0, -45.0)
    g = Geometry(origin, spacing, tuple(float(v) for v in direction), size)
    x, y, z = grid_points(g)
    gtv = ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1
    masks = {"GTV": gtv}
    if node_radius is not None:
        # centred on a slice so the node is on the source grid at all
        zc = z[3, 0, 0]
        masks["GTVln"] = (x - 20) ** 2 + (y - 15) ** 2 + (z - zc) ** 2 <= node_radius ** 2
    rng = np.random.default_rng(seed)
    body = (x ** 2 + y ** 2) < 50 ** 2
    image = (100 + 400 * body + 300 * gtv + rng.normal(0, 20, gtv.shape)).astype(np.float32)
    return Series(sequence, image, g, masks)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), rotation_x(12)])
def test_lesion_keeps_position_and_volume_after_1mm_resampling(direction):
    centre, axes = (5.0, -3.0, 2.0), (12, 9, 15)
    s = ellipsoid_series(direction=direction, centre=centre, axes=axes)
    image, masks, g = resample_series(s, 1.0)
    assert g.spacing_mm == (1.0, 1.0, 1.0)
    assert image.shape == masks["GTV"].shape == tuple(reversed(g.size))
    volume = 4 / 3 * math.pi * np.prod(axes)
    assert abs(masks["GTV"].sum() * 1.0 - volume) / volume < 0.03
    x, y, z = grid_points(g)
    m = masks["GTV"]
    found = np.array([x[m].mean(), y[m].mean(), z[m].mean()])
    assert np.linalg.norm(found - np.asarray(centre)) < 1.0


def test_small_node_survives_resampling():
    s = ellipsoid_series(node_radius=0.9, spacing=(0.9, 0.9, 5.0))
    assert s.masks["GTVln"].sum() >= 1
    _, masks, _ = resample_series(s, 1.0)
    assert masks["GTVln"].sum() >= 1


def test_intensity_normalisation_removes_scanner_gain():
    rng = np.random.default_rng(1)
    img = rng.gamma(2.0, 50.0, size=(4, 64, 64)).astype(np.float32)
    img[:, :8] = 0.0  # air
    a = normalise_to_uint8(img)
    b = normalise_to_uint8(img * 3.7 + 12.0)
    assert a.min() >= 1 and a.max() == 255
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_select_slices_neighbours_step_and_negatives():
    m = np.zeros((40, 8, 8), bool)
    m[10:15, 3, 3] = True
    pos, neg = select_slices({"GTV": m}, neighbours=1, negatives=3, rng=np.random.default_rng(0))
    assert pos == list(range(9, 16))
    assert len(neg) == 3 and all(abs(z - 12) > 7 for z in neg)
    pos2, _ = select_slices({"GTV": m}, slice_step=2)
    assert pos2 == [10, 12, 14]


def test_touching_instances_resize_separately_and_tiny_ones_survive():
    m = np.zeros((200, 200), bool)
    m[50:80, 50:80] = True
    m[100, 100] = True  # one pixel: smaller than a pixel after shrinking to 64
    inst = resize_instances(m, 64)
    assert len(inst) == 2 and all(i.any() for i in inst)


def test_split_is_stratified_patient_level_and_seeded():
    ids = [f"P{i:03d}" for i in range(186)]
    y = [1] * 85 + [0] * 101
    s = train_val_split(ids, y, 46 / 186, seed=3)
    assert len(s["val"]) == 46 and not set(s["train"]) & set(s["val"])
    lab = dict(zip(ids, y))
    assert abs(np.mean([lab[p] for p in s["val"]]) - 85 / 186) < 0.03
    assert s == train_val_split(ids, y, 46 / 186, seed=3)
    folds = repeated_kfold(ids, y, folds=5, repeats=2, seed=0)
    assert len(folds) == 10
    for r in range(2):
        vals = [p for f in folds if f["repeat"] == r for p in f["val"]]
        assert sorted(vals) == sorted(ids)


class FakeCohort:
    """Stands in for npc_msom.cohort.Cohort: patient ids, a clinical table, lazy patients."""

    def __init__(self, n=6):
        self.patient_ids = [f"NPC{i:04d}" for i in range(n)]
        self.clinical = pd.DataFrame({"msom": [i % 2 for i in range(n)]}, index=self.patient_ids)
        self.loads = []

    def load_patient(self, pid):
        self.loads.append(pid)
        i = self.patient_ids.index(pid)
        p = Patient(pid)
        for seq in ("T1WI", "T2WI", "CE-T1WI"):
            p.series[seq] = ellipsoid_series(centre=(i - 3.0, 0.0, 0.0), node_radius=3.0,
                                             sequence=seq, size=(120, 100, 18), seed=i)
        return p


def test_preprocess_writes_coco_slices_and_resumes(tmp_path):
    cfg = load_config(None, ["preprocess.image_size=64", "preprocess.negatives_per_patient=1",
                             "preprocess.val_fraction=0.34", "preprocess.slice_step=3"])
    cohort = FakeCohort()
    res = preprocess(cfg, cohort, tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == cohort.patient_ids
    for seq in ("T1WI", "T2WI", "CE-T1WI"):
        d = tmp_path / seq
        train = COCO(str(d / "coco_train.json"))
        val = COCO(str(d / "coco_val.json"))
        assert {c["name"] for c in train.loadCats(train.getCatIds())} == {"GTV", "GTVln"}
        assert {im["patient_id"] for im in val.dataset["images"]} == set(split["val"])
        assert len(train.getAnnIds(catIds=[2])) > 0
        for ann in train.dataset["annotations"]:
            m = train.annToMask(ann)
            assert m.sum() == ann["area"] > 0
        slices = pd.read_csv(d / "slices.csv")
        assert len(slices) == res.n_images[seq] == len(train.dataset["images"]) + len(val.dataset["images"])
        assert slices["negative"].sum() == len(cohort.patient_ids)
        neg = slices[slices["negative"]]
        assert not neg["has_gtv"].any()
        from PIL import Image
        im = np.asarray(Image.open(d / slices["file_name"].iloc[0]))
        assert im.shape == (64, 64) and im.dtype == np.uint8 and im.min() >= 1

    # resume: a patient whose records are missing is redone, the others are not reloaded
    before = (tmp_path / "T2WI" / "coco_val.json").read_text()
    (tmp_path / "CE-T1WI" / "patients" / "NPC0002.json").unlink()
    cohort.loads.clear()
    preprocess(cfg, cohort, tmp_path)
    assert cohort.loads == ["NPC0002"]
    assert (tmp_path / "T2WI" / "coco_val.json").read_text() == before
    # changed settings: everything is redone
    cohort.loads.clear()
    preprocess(load_config(None, ["preprocess.image_size=48", "preprocess.val_fraction=0.34"]), cohort, tmp_path)
    assert len(cohort.loads) == len(cohort.patient_ids)


def test_body_mask_keeps_dark_tissue_beside_bright_fluid():
    """T2WI-like: a small, very bright fluid region must not push muscle out of the window."""
    from npc_msom.preprocess.intensity import body_mask
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    head = (yy - 64) ** 2 + (xx - 64) ** 2 < 50 ** 2
    fluid = (yy - 64) ** 2 + (xx - 80) ** 2 < 25 ** 2  # a quarter of the head: nodes, CSF, vessels
    airway = (yy - 64) ** 2 + (xx - 30) ** 2 < 6 ** 2
    img = np.where(head, 300.0, 5.0) + np.where(fluid, 2000.0, 0.0) + rng.normal(0, 4, head.shape)
    img[airway] = 5.0
    img = np.stack([img] * 3)
    body = body_mask(img)
    assert body[1][head].mean() > 0.99 and body[1][~head].mean() < 0.01  # airway hole filled
    u8 = normalise_to_uint8(img)
    assert np.median(u8[1][head & ~fluid]) > 20  # muscle visible, not crushed to black


def test_validation_patients_always_get_a_tumour_free_slice(tmp_path):
    """With no negatives asked for (the paper preset), validation still holds normal anatomy, so a
    false positive there lowers AP; training keeps none."""
    cfg = load_config(None, ["preprocess.image_size=48", "preprocess.negatives_per_patient=0",
                             "preprocess.val_fraction=0.34", "preprocess.slice_step=3"])
    preprocess(cfg, FakeCohort(), tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())
    slices = pd.read_csv(tmp_path / "T2WI" / "slices.csv")
    per = slices.groupby("patient_id")["negative"].sum()
    assert all(per[p] >= 1 for p in split["val"])
    assert all(per[p] == 0 for p in split["train"])
    neg = slices[slices["negative"]]
    assert not (neg["has_gtv"] | neg["has_gtvln"]).any()


def test_two_worker_processes_write_what_one_process_writes(tmp_path):
    class Unpicklable(FakeCohort):
        def __reduce__(self):
            raise AssertionError("the cohort must reach the workers by fork, not with each job")

    base = ["preprocess.image_size=48", "preprocess.val_fraction=0.34", "preprocess.slice_step=3"]
    preprocess(load_config(None, base + ["preprocess.workers=1"]), FakeCohort(), tmp_path / "one")
    preprocess(load_config(None, base + ["preprocess.workers=2"]), Unpicklable(), tmp_path / "two")
    for seq in ("T1WI", "T2WI", "CE-T1WI"):
        for name in ("coco_train.json", "coco_val.json", "slices.csv"):
            assert (tmp_path / "one" / seq / name).read_bytes() == (tmp_path / "two" / seq / name).read_bytes()
        images = sorted(p.name for p in (tmp_path / "one" / seq / "images").iterdir())
        assert images and images == sorted(p.name for p in (tmp_path / "two" / seq / "images").iterdir())
        for n in images:
            one, two = (tmp_path / d / seq / "images" / n for d in ("one", "two"))
            assert one.read_bytes() == two.read_bytes()
