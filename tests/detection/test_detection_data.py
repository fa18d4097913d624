"""Reading COCO files of slices and turning them into Mask R-CNN samples."""
import json

import numpy as np
import pytest
import torch

from npc_msom.detection.data import SliceDataset, read_coco
from npc_msom.errors import InputError

SEQ = "CE-T1WI"


def test_toy_set_has_the_contracted_layout(toy_run):
    pre = toy_run / "preprocessed"
    split = json.loads((pre / "split.json").read_text())
    assert len(split["train"]) == 6 and len(split["val"]) == 2
    coco = read_coco(pre / SEQ / "coco_train.json")
    assert coco.class_names == ("GTV", "GTVln")
    assert coco.image_size() == 64 and coco.sequence() == SEQ
    assert set(coco.patients()) == set(split["train"])
    negatives = [im for im in coco.images if not coco.annotations[im["id"]]]
    assert len(negatives) == 6  # one tumour-free slice per patient
    assert {"patient_id", "sequence", "slice_index", "z_mm"} <= set(coco.images[0])


def test_samples_match_their_annotations(toy_run):
    coco = read_coco(toy_run / "preprocessed" / SEQ / "coco_train.json")
    ds = SliceDataset(coco, augment=False)
    image, target = ds[0]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    n = len(coco.annotations[coco.images[0]["id"]])
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, 64, 64)
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    neg = next(i for i, im in enumerate(coco.images) if not coco.annotations[im["id"]])
    _, t = ds[neg]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 64, 64)


def test_flip_moves_boxes_with_masks_and_is_seeded(toy_run):
    coco = read_coco(toy_run / "preprocessed" / SEQ / "coco_train.json")
    ds = SliceDataset(coco, augment=True, seed=3, flip_prob=1.0, intensity_jitter=0.1)
    plain = SliceDataset(coco, augment=False)
    image, t = ds[1]
    image0, t0 = plain[1]
    assert torch.equal(t["masks"], t0["masks"].flip(-1))
    for box, mask in zip(t["boxes"], t["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert not torch.equal(image, image0.flip(-1))  # the intensity changed too
    again, _ = ds[1]
    assert torch.equal(image, again)  # same (seed, epoch, index): same augmentation
    ds.set_epoch(1)
    other, _ = ds[1]
    assert not torch.equal(image, other)


def test_decoded_samples_are_cached_and_unchanged_by_use(toy_run, monkeypatch):
    import npc_msom.detection.data as data
    coco = read_coco(toy_run / "preprocessed" / SEQ / "coco_train.json")
    uncached = [SliceDataset(coco, augment=True, seed=2, cache_mb=0)[(1, i)] for i in range(len(coco))]
    reads = []
    real = data.load_slice
    monkeypatch.setattr(data, "load_slice", lambda p: reads.append(p) or real(p))
    ds = SliceDataset(coco, augment=True, seed=2)
    for epoch in (0, 1, 1):
        samples = [ds[(epoch, i)] for i in range(len(coco))]
        for (im, t), (im0, t0) in zip(samples, uncached):
            if epoch == 1:  # the same augmentation as without the cache
                assert torch.equal(im, im0) and all(torch.equal(t[k], t0[k]) for k in t)
            im.mul_(0)  # a caller that changes its sample in place does not change the cache
            t["masks"].zero_()
    assert len(reads) == len(coco)  # each file decoded once
    small = SliceDataset(coco, cache_mb=0)
    small[0], small[0]
    assert len(reads) == len(coco) + 2  # no room in the cache: decoded each time


def test_categories_are_matched_by_name(toy_run, tmp_path):
    """A user's COCO files with other ids and spellings map onto the same labels."""
    src = json.loads((toy_run / "preprocessed" / SEQ / "coco_val.json").read_text())
    remap = {1: 7, 2: 3}
    user = {"images": src["images"],
            "annotations": [{**a, "category_id": remap[a["category_id"]]} for a in src["annotations"]]
            + [{**src["annotations"][0], "id": 9999, "category_id": 11}],
            "categories": [{"id": 3, "name": "gtvln"}, {"id": 7, "name": "GTV"}, {"id": 11, "name": "brainstem"}]}
    path = tmp_path / "user.json"
    path.write_text(json.dumps(user))
    coco = read_coco(path, images_dir=toy_run / "preprocessed" / SEQ, class_names=("GTV", "GTVln"))
    ref = read_coco(toy_run / "preprocessed" / SEQ / "coco_val.json")
    for im in ref.images:
        assert [a["label"] for a in coco.annotations[im["id"]]] == [a["label"] for a in ref.annotations[im["id"]]]
    # on its own, the file's categories keep their id order (two GTV-like names -> the study's order)
    user["categories"] = user["categories"][:2]
    user["annotations"] = user["annotations"][:-1]
    path.write_text(json.dumps(user))
    assert read_coco(path, images_dir=toy_run / "preprocessed" / SEQ).class_names == ("GTV", "GTVln")


def test_bad_coco_input_names_the_file(toy_run, tmp_path):
    src = json.loads((toy_run / "preprocessed" / SEQ / "coco_val.json").read_text())
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(src))
    with pytest.raises(InputError, match="not found") as e:
        read_coco(path)  # file_names are relative to the preprocessed folder, not tmp_path
    assert str(path) in str(e.value)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="annotations"):
        read_coco(path)
    with pytest.raises(InputError, match="does not exist"):
        read_coco(tmp_path / "nope.json")


def test_loader_workers_follow_the_epoch(tiny_config, toy_run):
    """Persistent worker processes see the epoch through (epoch, index) keys: the same samples as
    in the main process, and new augmentations each epoch."""
    from npc_msom.detection.train import make_train_loader
    coco = read_coco(toy_run / "preprocessed" / SEQ / "coco_train.json").subset(range(8))

    def epochs(workers):
        _, sampler, loader = make_train_loader(coco, tiny_config(workers=workers), batch_size=4)
        out = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            out.append([torch.stack(list(images)) for images, _ in loader])
        return out

    main, workers = epochs(0), epochs(2)
    for a, b in zip(main, workers):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.cat(main[0]).sort(0).values, torch.cat(main[1]).sort(0).values)
