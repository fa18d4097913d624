"""The run's comparison models, frozen, on patients the run never saw (``npc-msom validate``).

Each model is rebuilt from what the baselines stage stored, never refitted:

- ``clinical``: the logistic regression and its ClinicalEncoder (``metrics.json``'s ``fit``);
- ``n_stage``: N0..N3 as 0..3 (nothing fitted);
- ``largest_slice`` / ``largest_slice_fusion``: the ResNet-18 weights (``checkpoint.pt``) on the
  patient's slice of largest GTV area among the tumour slices the preprocessing stage keeps (the
  stage's rule), and the stored encoder for the clinical vector;
- ``radiomics``: the selected features, their training mean / SD and the L1 model
  (``selection.json``), on PyRadiomics features extracted from the new patient with the run's
  parameter file, spacing and margin (refused when the extraction key differs: another PyRadiomics
  or parameter file would give other features).

A model that cannot score a patient (no GTV contour, no N stage, a clinical column missing) gives
NaN with the reason; a model the run did not keep enough of to rebuild is listed in ``notes``.
Keys are ``baselines/<model>/<sequence|all>``, the model's folder in the run.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.config import Config
from npc_msom.errors import ConfigError

from .common import ALL_SEQUENCES

log = logging.getLogger(__name__)

PREFIX = "baselines"
SLICE_MODELS = ("largest_slice", "largest_slice_fusion")
CHECKPOINT = "checkpoint.pt"       # the largest-slice models' weights, written by the baselines stage


def key_of(model: str, sequence: str) -> str:
    return f"{PREFIX}/{model}/{sequence}"


@dataclass
class SliceModel:
    net: object                     # largest_slice.SliceNet, eval mode
    settings: object                # largest_slice.SliceTrainSettings
    slice_size: int
    encoder: object | None          # ClinicalEncoder of the fusion variant


@dataclass
class FrozenBaselines:
    """The comparison models of a run, as stored (see the module docstring)."""
    run_dir: Path
    config: Config
    clinical: dict | None = None                            # ClinicalFit.to_dict()
    n_stage: bool = False
    slices: dict[str, SliceModel] = field(default_factory=dict)       # key -> model
    radiomics: dict[str, object] = field(default_factory=dict)        # key -> RadiomicsModel
    radiomics_key: str = ""                                 # the run's feature-extraction key
    notes: dict[str, str] = field(default_factory=dict)     # key -> why the model is not scored

    @property
    def keys(self) -> list[str]:
        out = ([key_of("clinical", ALL_SEQUENCES)] if self.clinical else []) + \
              ([key_of("n_stage", ALL_SEQUENCES)] if self.n_stage else [])
        return out + sorted(self.slices) + sorted(self.radiomics)

    @property
    def clinical_columns(self) -> list[str]:
        """The clinical columns the clinical-using models read."""
        cols = [c["name"] for c in (self.clinical or {}).get("encoder", {}).get("columns", [])]
        for m in self.slices.values():
            if m.encoder is not None:
                cols += [c.name for c in m.encoder.columns]
        return list(dict.fromkeys(cols))


def _metrics(folder: Path) -> dict | None:
    f = folder / "metrics.json"
    if not (f.is_file() and (folder / "patient_scores.csv").is_file()):
        return None
    return json.loads(f.read_text())


def load_baselines(config: Config, run_dir: str | Path, device=None) -> FrozenBaselines:
    """Every comparison model the run's baselines stage left complete (``notes`` say which not)."""
    import torch  # noqa: PLC0415

    from npc_msom.prediction.clinical import ClinicalEncoder  # noqa: PLC0415

    from .largest_slice import SliceNet, SliceTrainSettings  # noqa: PLC0415
    run_dir = Path(run_dir)
    root = run_dir / PREFIX
    fb = FrozenBaselines(run_dir, config)
    m = _metrics(root / "clinical" / ALL_SEQUENCES)
    if m is not None:
        if m.get("fit", {}).get("coefficients") is not None:
            fb.clinical = m["fit"]
        else:
            fb.notes[key_of("clinical", ALL_SEQUENCES)] = "its metrics.json keeps no fitted model"
    fb.n_stage = _metrics(root / "n_stage" / ALL_SEQUENCES) is not None
    for name in SLICE_MODELS:
        for folder in sorted((root / name).glob("*")) if (root / name).is_dir() else []:
            if _metrics(folder) is None:
                continue
            key = key_of(name, folder.name)
            ckpt = folder / CHECKPOINT
            if not ckpt.is_file():
                fb.notes[key] = f"the run kept no weights ({ckpt} is missing: rerun the baselines stage)"
                continue
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            net = SliceNet(int(state["n_clinical"]))
            net.load_state_dict(state["state_dict"])
            net.to(device or "cpu").eval()
            enc = ClinicalEncoder.from_dict(state["clinical_encoder"]) if state.get("clinical_encoder") else None
            fb.slices[key] = SliceModel(net, SliceTrainSettings(**state["settings"]), int(state["slice_size"]), enc)
    rad = root / "radiomics"
    for folder in sorted(p for p in rad.glob("*") if p.name != "cache") if rad.is_dir() else []:
        m = _metrics(folder)
        if m is None:
            continue
        key = key_of("radiomics", folder.name)
        sel = folder / "selection.json"
        if not sel.is_file():
            fb.notes[key] = f"no {sel.name}"
            continue
        from .radiomics import RadiomicsModel  # noqa: PLC0415
        fb.radiomics[key] = RadiomicsModel.from_dict(json.loads(sel.read_text()))
        fb.radiomics_key = str((m.get("settings") or {}).get("features", ""))
    return fb


def table_scores(fb: FrozenBaselines, table: pd.DataFrame, ids: list[str]) -> dict[str, dict[str, dict]]:
    """{key: {pid: {score, note}}} of the models without images (clinical, n_stage)."""
    from npc_msom.prediction.clinical import ClinicalEncoder  # noqa: PLC0415

    from .clinical import n_stage_scores  # noqa: PLC0415
    out: dict[str, dict[str, dict]] = {}
    rows = table.reindex(ids)
    if fb.clinical:
        key = key_of("clinical", ALL_SEQUENCES)
        enc = ClinicalEncoder.from_dict(fb.clinical["encoder"])
        lacking = [c.name for c in enc.columns if c.name not in table.columns or rows[c.name].isna().all()]
        if lacking:
            fb.notes[key] = f"the external clinical table lacks {', '.join(lacking)}"
        else:
            coef = np.array([fb.clinical["coefficients"][n] for n in enc.feature_names], dtype=float)
            eta = fb.clinical["intercept"] + enc.transform(rows).astype(float) @ coef
            from scipy.special import expit  # noqa: PLC0415
            out[key] = {p: {"score": float(s), "note": ""} for p, s in zip(ids, expit(eta))}
    if fb.n_stage:
        key = key_of("n_stage", ALL_SEQUENCES)
        if "n_stage" not in table.columns:
            fb.notes[key] = "the external clinical table has no n_stage column"
        else:
            scores, notes = n_stage_scores(rows)
            out[key] = {p: {"score": float(s), "note": n} for p, s, n in zip(ids, scores, notes)}
    return out


def largest_gtv_plane(volume, config: Config) -> tuple[int, float] | None:
    """(1 mm slice index, GTV area px) of the tumour slice of largest GTV area, the slices and
    areas as the preprocessing stage makes them (ties -> the lower index); None without a GTV."""
    from npc_msom.preprocess.slices import pad_to_square, resize_instances, select_slices  # noqa: PLC0415
    gtv = volume.masks.get("GTV")
    if gtv is None or not gtv.any():
        return None
    pp = config.preprocess
    pos, _ = select_slices(volume.masks, neighbours=pp.neighbours, slice_step=pp.slice_step, negatives=0)
    size = int(volume.images.shape[-1])
    best = None
    for z in pos:
        if not gtv[z].any():
            continue
        square, _ = pad_to_square(gtv[z], fill=False)
        area = float(sum(m.sum() for m in resize_instances(square, size)))
        if area > 0 and (best is None or area > best[1]):
            best = (int(z), area)
    return best


def slice_scores(fb: FrozenBaselines, sequence: str, volume, clinical_row: pd.DataFrame | None,
                 device=None) -> dict[str, dict]:
    """{key: {score, note, slice_index}} of the largest-slice models of ``sequence`` for one patient
    (``volume``: predict's preprocess.volume.VolumeSlices of the sequence)."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    from .largest_slice import predict_slices  # noqa: PLC0415
    out = {}
    todo = {k: m for k, m in fb.slices.items() if k.endswith(f"/{sequence}")}
    if not todo:
        return out
    plane = largest_gtv_plane(volume, fb.config)
    for key, m in todo.items():
        if plane is None:
            out[key] = {"score": float("nan"), "note": f"no GTV contour on {sequence} (the model needs one)"}
            continue
        if m.encoder is not None:
            if clinical_row is None:
                out[key] = {"score": float("nan"), "note": "no clinical row"}
                continue
            clin = torch.from_numpy(m.encoder.transform(clinical_row))
        else:
            clin = torch.zeros((1, 0))
        z, _ = plane
        img = torch.from_numpy(volume.images[z].astype(np.float32) / 255.0)[None, None]
        if m.slice_size and img.shape[-1] != m.slice_size:
            img = F.interpolate(img, size=(m.slice_size, m.slice_size), mode="bilinear", align_corners=False,
                                antialias=True)
        p = predict_slices(m.net, img, clin, m.settings, torch.device(device or "cpu"))
        out[key] = {"score": float(p[0]), "note": "", "slice_index": z}
    return out


def radiomics_scores(fb: FrozenBaselines, cohort, ids: list[str], cache_dir: Path) -> dict[str, dict[str, dict]]:
    """{key: {pid: {score, note}}} of the radiomics models: features of the external patients
    (cached in ``cache_dir``) with the run's extraction settings, scored by the stored selection."""
    if not fb.radiomics:
        return {}
    from . import radiomics as rad  # noqa: PLC0415
    cfg = fb.config.baselines
    try:
        params = rad.params_path(cfg.radiomics_params)
        key = rad.cache_key(params, fb.config.preprocess.spacing_mm, cfg.radiomics_margin_mm)
    except (ImportError, ConfigError) as e:      # PyRadiomics missing, or its parameter file gone
        for k in fb.radiomics:
            fb.notes[k] = f"features cannot be extracted here: {e}"
        return {}
    if fb.radiomics_key and key != fb.radiomics_key:
        for k in fb.radiomics:
            fb.notes[k] = (f"the feature extraction here (key {key}) is not the run's ({fb.radiomics_key}): "
                           "another PyRadiomics version or parameter file")
        return {}
    seqs = [k.rsplit("/", 1)[1] for k in fb.radiomics]
    extracted = rad.extract_cohort(cohort, ids, seqs, cache_dir, params_file=params,
                                   spacing_mm=fb.config.preprocess.spacing_mm, margin_mm=cfg.radiomics_margin_mm,
                                   workers=cfg.radiomics_workers)
    out = {}
    for k, model in fb.radiomics.items():
        seq = k.rsplit("/", 1)[1]
        feats, notes = rad.feature_table(extracted[seq], ids)
        scores = dict(zip(feats.index, model.score(feats))) if len(feats) else {}
        out[k] = {}
        for p in ids:
            s = scores.get(p, float("nan"))
            out[k][p] = {"score": float(s), "note": "" if np.isfinite(s) else
                         notes.get(p, "a selected feature is missing or not finite")}
    return out
