"""What the patient-level models' score is made of, for one patient.

The patient-level model is a logistic regression on standardised groups (``patient_model.GroupRidge``),
so its logit splits exactly into one part per input: each burden descriptor, and for the deep group
each region (GTV, nodes, ring: the region-pooled FPN features, area-weighted mean and maximum over
the patient's slices). The fusion model's logit splits into the clinical vector's part and the
imaging logit's part. Parts are on the logit scale and add up, with the intercept, to the logit the
model scores (a test checks it); ``share`` is each part's absolute size over the sum of the
absolute sizes.
"""
from __future__ import annotations

import numpy as np


def _shares(parts: dict[str, float]) -> dict[str, float]:
    total = sum(abs(v) for v in parts.values())
    return {k: (abs(v) / total if total > 0 else 0.0) for k, v in parts.items()}


def patient_contributions(pm, inputs: list, patient_id: str, clinical_row=None, pooling: str = "region") -> dict:
    """The logit of ``pm`` (prediction.patient.PatientModel) for one patient split by input (see the
    module docstring); ``inputs``: the patient's PatientInputs of the model's sequences; ``pooling``:
    the run's ``prediction.pooling`` (region: GTV / GTVln / ring, slice: the whole slice)."""
    from npc_msom.prediction.burden import BURDEN_FEATURES  # noqa: PLC0415
    from npc_msom.prediction.patient import _rows  # noqa: PLC0415
    from npc_msom.prediction.regions import REGIONS  # noqa: PLC0415
    blocks = _rows(inputs, [patient_id])
    parts = pm.image.contributions(blocks)
    burden: dict[str, float] = {}
    regions: dict[str, float] = {}
    for g, c in parts.items():
        base, _, seq = g.partition(":")
        tag = f" ({seq})" if seq else ""
        row = c[0]
        if base == "burden":
            for name, v in zip(BURDEN_FEATURES, row):
                burden[name + tag] = float(v)
        elif base == "deep":
            names = REGIONS if pooling == "region" else ("slice",)   # the layout of aggregate_regions
            for name, v in zip(names, row.reshape(len(names), -1).sum(axis=1)):
                regions[name + tag] = float(v)
    logit = float(pm.image.intercept + sum(float(c.sum()) for c in parts.values()))
    out = {"model": pm.model, "logit": logit, "intercept": float(pm.image.intercept), "burden": burden,
           "regions": regions, "deep_weight": float(max((w for g, w in pm.image.weights.items()
                                                          if g.startswith("deep")), default=0.0)),
           "share": _shares({**{f"burden: {k}": v for k, v in burden.items()},
                             **{f"region: {k}": v for k, v in regions.items()}})}
    if pm.fusion is not None and clinical_row is not None:
        clin = pm.encoder.transform(clinical_row)
        f = pm.fusion.fusion
        fp = f.contributions({"clinical": clin, "imaging": np.array([[logit]])})
        clinical = {n: float(v) for n, v in zip(pm.encoder.feature_names, fp["clinical"][0])}
        imaging = float(fp["imaging"].sum())
        fused = float(f.intercept + sum(clinical.values()) + imaging)
        out["fusion"] = {"logit": fused, "intercept": float(f.intercept), "imaging": imaging, "clinical": clinical,
                         "share": _shares({"imaging": imaging, "clinical": sum(clinical.values())})}
    return out
