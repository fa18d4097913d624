"""Grad-CAM of the slice models (npc_msom.explain): the maps are Captum's Grad-CAM of our head on
the slices' own pixels, the shares add up to the patient's score, the model-randomisation check
changes the maps, and a map comes back onto the patient's series where it lay on the slices."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npc_msom.config import DetectionConfig
from npc_msom.explain import (gradcam, inside_fraction, randomized_copy, rank_correlation, saliency_to_grid,
                              slice_shares)
from npc_msom.prediction.model import MSOMClassifier


def _net(size=64, n_clinical=0, seed=0):
    torch.manual_seed(seed)
    det = DetectionConfig(backbone="resnet18", fpn_channels=32, amp=False)
    net = MSOMClassifier(det, size, n_clinical=n_clinical).eval()
    torch.nn.init.normal_(net.head.fc.weight, std=0.5)
    return net


def _slices(n=3, size=64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size)).astype(np.float32) * 0.3
    x[:, 20:36, 24:40] += 0.6          # a bright block, as a tumour on CE-T1WI
    return np.clip(x, 0, 1)


def test_gradcam_is_the_class_activation_map_of_the_pooled_head():
    """With global average pooling and a linear head, Grad-CAM's channel weights are the FC weights
    over the fixed SDs divided by the map's size: ReLU(sum_c w_c A_c) up to that constant."""
    net, x = _net(), _slices()
    maps = gradcam(net, x)
    assert maps.shape == x.shape and (maps >= 0).all() and maps.max() > 0
    with torch.no_grad():
        a = net.level_map(torch.from_numpy(x)[:, None])            # (N, C, h, w) of the padded input
        w = net.head.fc.weight[0, :a.shape[1]] / net.head.feature_std
        cam = torch.relu((w[None, :, None, None] * a).sum(1, keepdim=True) / (a.shape[-1] * a.shape[-2]))
        side = net.net_size
        cam = F.interpolate(cam, size=(a.shape[-2] * 8, a.shape[-1] * 8), mode="bilinear",
                            align_corners=False)[..., :side, :side]
    np.testing.assert_allclose(maps, cam[:, 0].numpy(), rtol=1e-4, atol=1e-6 * float(cam.max()))


def test_fusion_model_needs_and_uses_its_clinical_vector():
    net, x = _net(n_clinical=2), _slices(2)
    with pytest.raises(ValueError, match="clinical"):
        gradcam(net, x)
    maps = gradcam(net, x, np.zeros((2, 2), np.float32))
    assert maps.shape == x.shape


def test_shares_add_up_to_the_patient_score():
    p = np.array([0.2, 0.6, 0.2])
    np.testing.assert_allclose(slice_shares(p), [0.2, 0.6, 0.2])
    np.testing.assert_allclose(slice_shares(p, "top_k", 2), [0.25, 0.75, 0.0])
    np.testing.assert_allclose(slice_shares(np.zeros(4)), [0.25] * 4)


def test_inside_fraction_of_a_blind_map_is_the_area_share():
    masks = np.zeros((2, 10, 10), bool)
    masks[:, :5] = True
    maps = np.ones((2, 10, 10))
    maps[1, 5:] = 0                       # all of the second map's mass inside the mask
    frac, area = inside_fraction(maps, masks)
    np.testing.assert_allclose(frac, [0.5, 1.0])
    np.testing.assert_allclose(area, [0.5, 0.5])
    assert np.isnan(inside_fraction(np.zeros((1, 10, 10)), masks[:1])[0][0])


def test_randomised_weights_change_the_maps():
    net, x = _net(), _slices(4)
    maps = gradcam(net, x)
    assert rank_correlation(maps, gradcam(net, x)) == pytest.approx(1.0)
    rnd = randomized_copy(net, seed=5)
    before = dict(net.named_parameters())
    kernels = [n for n, p in before.items() if p.dim() > 1]          # every conv and linear weight
    assert all(not torch.equal(dict(rnd.named_parameters())[n], before[n]) for n in kernels)
    assert rank_correlation(maps, gradcam(rnd, x)) < 0.8
    assert torch.equal(next(net.parameters()), before[next(iter(before))])     # the model itself untouched


def test_a_map_on_the_slices_comes_back_onto_the_series(synth_cohort_dir, small_config):
    """A map equal to the GTV on the preprocessed slices lands on the GTV of the series' own grid."""
    from npc_msom.cohort import load_cohort
    from npc_msom.predict import contour_slice_masks
    from npc_msom.preprocess.volume import preprocess_volume
    cohort = load_cohort(synth_cohort_dir, small_config.cohort, show_progress=False)
    series = cohort.load_patient(cohort.patient_ids[0]).series["T1WI"]
    volume = preprocess_volume(series, small_config.preprocess)
    zs = [int(z) for z in np.flatnonzero(volume.masks["GTV"].reshape(len(volume.images), -1).any(1))]
    maps = {z: contour_slice_masks(volume, z)["GTV"].astype(np.float32) for z in zs}
    grid = saliency_to_grid(maps, volume, series)
    assert grid.shape == series.image.shape
    hot, gtv = grid >= 0.5, series.masks["GTV"]
    dice = 2 * (hot & gtv).sum() / (hot.sum() + gtv.sum())
    assert dice > 0.8, dice


def test_the_report_explains_a_slice_model_and_shows_patients_by_rule():
    import pandas as pd

    from npc_msom.explain.panels import choose_model, shown_patients
    assert choose_model(["T1WI/fusion", "combined/mean"], "CE-T1WI/fusion") == "CE-T1WI/fusion"
    assert choose_model(["T1WI/mri", "combined/mean"], "combined/patient") == "T1WI/mri"
    assert choose_model(["combined/mean"], "CE-T1WI/patient") is None
    scores = pd.DataFrame({"patient_id": ["a", "b", "c", "d", "e"], "label": [1, 1, 1, 0, 0],
                           "score": [0.9, 0.2, 0.5, 0.7, 0.1]})
    assert shown_patients(scores) == {"a": "MSOM, highest score", "b": "MSOM, lowest score",
                                      "d": "no MSOM, highest score", "e": "no MSOM, lowest score"}
    one = scores[scores["patient_id"].isin(["a", "d"])]
    assert shown_patients(one) == {"a": "MSOM, highest score", "d": "no MSOM, highest score"}


def test_patient_model_logit_is_the_sum_of_its_parts():
    """The patient-level model's logit splits exactly into burden descriptors and regions, and the
    fusion model's into the clinical vector and the imaging logit."""
    from types import SimpleNamespace

    from npc_msom.explain.patient import patient_contributions
    from npc_msom.prediction.burden import BURDEN_FEATURES
    from npc_msom.prediction.clinical import ClinicalEncoder
    from npc_msom.prediction.patient import PatientInputs
    from npc_msom.prediction.patient_model import FusionModel, GroupRidge, fit_fusion
    import pandas as pd
    rng = np.random.default_rng(0)
    n, c = 40, 4
    blocks = {"burden": rng.normal(size=(n, len(BURDEN_FEATURES))), "deep": rng.normal(size=(n, 3 * 2 * c))}
    y = (blocks["burden"][:, 0] + blocks["deep"][:, 0] + rng.normal(size=n) > 0).astype(int)
    image = GroupRidge(("burden", "deep"), {"burden": 1.0, "deep": 1.0}, 1.0).fit(blocks, y)
    table = pd.DataFrame({"age": rng.normal(50, 10, n)}, index=[f"p{i}" for i in range(n)])
    enc = ClinicalEncoder.fit(table, ("age",))
    fusion, _ = fit_fusion(image, blocks, enc.transform(table), y, folds=3)
    inp = PatientInputs("CE-T1WI", ["p0"], {g: b[:1] for g, b in blocks.items()}, pd.DataFrame())
    pm = SimpleNamespace(model="patient_fusion", image=image, fusion=fusion, encoder=enc)
    out = patient_contributions(pm, [inp], "p0", table.iloc[:1])
    assert set(out["regions"]) == {"GTV", "GTVln", "ring"} and set(out["burden"]) == set(BURDEN_FEATURES)
    total = out["intercept"] + sum(out["burden"].values()) + sum(out["regions"].values())
    assert total == pytest.approx(float(image.logit({g: b[:1] for g, b in blocks.items()})[0]), abs=1e-9)
    assert out["logit"] == pytest.approx(total)
    f = out["fusion"]
    p = float(fusion.proba({g: b[:1] for g, b in blocks.items()}, enc.transform(table.iloc[:1]))[0])
    assert 1 / (1 + np.exp(-f["logit"])) == pytest.approx(p, abs=1e-9)
    assert sum(out["share"].values()) == pytest.approx(1.0)
    assert isinstance(FusionModel.from_dict(fusion.to_dict()), FusionModel)
