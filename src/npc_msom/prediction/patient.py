"""Stage 2 that sees the tumour: per patient, tumour-region features and burden descriptors, one
patient-level model per sequence and one over the three sequences, each alone (``patient``) and
fused with the clinical vector (``patient_fusion``).

Per sequence, from the slices stage 2 scores (the contoured tumour slices, or the detector's):

- **regions**: each slice's FPN map at ``prediction.region_level`` is pooled inside the GTV, inside
  the nodes (GTVln) and in a ``ring_mm`` peritumoural ring (``regions.py``); masks from the
  contours (``slices: contours``) or from the run's detector (``slices: detector``). Vectors are
  cached in ``prediction/<seq>/features/regions-<key>.npz`` keyed by the extractor, the level, the
  ring and the mask source.
- **aggregation** into one patient vector that keeps burden: per region the area-weighted mean over
  the patient's slices and the maximum over them (``pooling: slice`` pools the whole slice instead,
  the ablation).
- **burden** (``burden.py``): GTV volume, node count and volumes, short axis, necrosis,
  heterogeneity, from the same masks in millimetres.

The model (``patient_model.py``): a group-scaled ridge on the burden and deep groups, the deep
group's weight and the penalty chosen by inner CV on the training patients; fusion adds the
imaging model's out-of-fold logit to the clinical-only regression. Outputs per model folder:
patient_scores.csv, metrics.json (settings, the selection, seconds), model.json (the fitted
state) and, per sequence, descriptors.csv.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from npc_msom.config import Config, to_dict
from npc_msom.detection.data import load_slice, segmentation_to_mask
from npc_msom.errors import ConfigError, InputError
from npc_msom.prediction.burden import BURDEN_FEATURES, LOG_FEATURES, burden_descriptors, stack_planes
from npc_msom.prediction.clinical import ClinicalEncoder
from npc_msom.prediction.patient_model import (FusionModel, GroupRidge, fit_fusion, select_group_ridge)
from npc_msom.prediction.regions import REGIONS, pool_regions, slice_region_masks
from npc_msom.prediction.scores import model_metrics, patient_table, write_scores
from npc_msom.runtime import atomic_path, file_digest, progress, write_json_atomic, write_text_atomic
from npc_msom.runtime import settings_digest as _digest

log = logging.getLogger(__name__)

PATIENT_MODELS = ("patient", "patient_fusion")
FUSION_DESIGN = "clinical+raw-oof-logit, C by inner CV"
# the settings of the patient-level models only (the study's models do not depend on them)
PATIENT_SETTINGS = ("pooling", "region_level", "ring_mm", "burden", "deep", "inner_folds", "patient_cs",
                    "deep_weights")


@dataclass
class PatientInputs:
    """One sequence's patient vectors: ``ids`` (patients with at least one scored slice), groups
    {"burden": (P, len(BURDEN_FEATURES)), "deep": (P, D)}, the burden table (ids x features)."""
    sequence: str
    ids: list[str]
    blocks: dict[str, np.ndarray]
    burden: pd.DataFrame
    feature_seconds: float = 0.0
    contour_burden: pd.DataFrame | None = None   # slices: detector: the same descriptors from the contours


# ---- masks --------------------------------------------------------------------------------------

def contour_masks(run_dir: Path, sequence: str, slices: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """file_name -> {"GTV": (H, W) bool, "GTVln": ...} from the preprocessed annotations (the contours)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    wanted = set(slices["file_name"])
    names = {1: "GTV", 2: "GTVln"}
    for pid in dict.fromkeys(slices["patient_id"]):
        p = run_dir / "preprocessed" / sequence / "patients" / f"{pid}.json"
        if not p.is_file():
            raise InputError(f"the preprocessed record of patient {pid} is missing", patient=pid, file=p,
                             expected=f"preprocessed/{sequence}/patients/{pid}.json (rerun preprocessing)")
        for item in json.loads(p.read_text())["images"]:
            rec = item["record"]
            if rec["file_name"] not in wanted:
                continue
            h, w = int(rec["height"]), int(rec["width"])
            masks = {"GTV": np.zeros((h, w), bool), "GTVln": np.zeros((h, w), bool)}
            for ann in item["annotations"]:
                name = names.get(int(ann["category_id"]))
                if name and ann.get("segmentation"):
                    masks[name] |= segmentation_to_mask(ann["segmentation"], h, w).astype(bool)
            out[rec["file_name"]] = masks
    missing = wanted - set(out)
    if missing:
        raise InputError(f"{len(missing)} slice(s) of {sequence} have no preprocessed record, e.g. {sorted(missing)[0]}",
                         file=run_dir / "preprocessed" / sequence / "patients",
                         expected="one record per slice of slices.csv (rerun preprocessing)")
    return out


def detector_masks(model, meta: dict, images_dir: Path, slices: pd.DataFrame, threshold: float,
                   device: torch.device) -> dict[str, dict[str, np.ndarray]]:
    """file_name -> {"GTV", "GTVln"} masks of the detections scoring >= ``threshold`` (automatic mode)."""
    from npc_msom.detection import detect  # noqa: PLC0415
    label_of = {i + 1: n for i, n in enumerate(meta["class_names"])}
    out = {}
    files = list(slices["file_name"])
    for s in range(0, len(files), 64):
        batch = files[s:s + 64]
        dets = detect(model, [load_slice(images_dir / f) for f in batch], device, score_threshold=threshold)
        for f, d in zip(batch, dets):
            h, w = d["masks"].shape[-2:] if d["masks"].ndim == 3 and len(d["masks"]) else load_slice(images_dir / f).shape
            masks = {"GTV": np.zeros((h, w), bool), "GTVln": np.zeros((h, w), bool)}
            for lab, m in zip(d["labels"], d["masks"]):
                name = label_of.get(int(lab))
                if name in masks:
                    masks[name] |= np.asarray(m, bool).reshape(h, w)
            out[f] = masks
    return out


# ---- region vectors, cached ---------------------------------------------------------------------

def _region_masks(m: dict, shape: tuple[int, int], regions, ring_mm: float, pixel_mm: float) -> dict:
    """The pooling masks of one slice: the whole slice (``pooling: slice``) or the three regions."""
    if tuple(regions) == ("slice",):
        return {"slice": np.ones(shape, bool)}
    return slice_region_masks(m.get("GTV"), m.get("GTVln"), ring_mm, pixel_mm, shape)


def slice_vectors(net, images: list[np.ndarray], masks: list[dict], pixel_mm: float, *, regions, ring_mm: float,
                  device: torch.device, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (N, R, C), areas (N, R)) of slices held in memory (``npc-msom predict``): the
    computation of :func:`region_features` without its cache."""
    if not images:
        return np.zeros((0, len(regions), net.channels), np.float32), np.zeros((0, len(regions)), np.float32)
    net.eval()
    out_v, out_a = [], []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            imgs = images[s:s + batch_size]
            fmaps = net.level_maps(torch.from_numpy(np.stack(imgs))[:, None].to(device),
                                   [net.feature_level])[net.feature_level].float().cpu()
            rmasks = [_region_masks(m, img.shape, regions, ring_mm, pixel_mm)
                      for m, img in zip(masks[s:s + batch_size], imgs)]
            v, a = pool_regions(fmaps, rmasks, regions)
            out_v.append(v)
            out_a.append(a)
    return np.concatenate(out_v), np.concatenate(out_a)


def region_features(net, images_dir: Path, slices: pd.DataFrame, masks: dict, *, regions, ring_mm: float,
                    cache_path: Path, device: torch.device, batch_size: int = 32,
                    also_pooled: tuple[str, Path] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (N, R, C), areas (N, R)) of the slices of ``slices`` in its order, computing only
    what the cache lacks.

    also_pooled: (FPN level, path of the study model's feature cache, one view): the slices'
    whole-slice average vectors at that level are added to that cache from the same forward pass
    (the study's model then finds them computed)."""
    from npc_msom.prediction.features import add_to_cache  # noqa: PLC0415
    files = list(slices["file_name"])
    pixel = dict(zip(slices["file_name"], slices["pixel_mm"].astype(float)))
    have: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            names, vectors, areas_ = z["file_names"], z["vectors"], z["areas"]
        if vectors.ndim == 3 and vectors.shape[1] == len(regions):
            have = {str(n): (vectors[i], areas_[i]) for i, n in enumerate(names)}
    todo = [f for f in dict.fromkeys(files) if f not in have]
    if todo:
        log.info("region features: %d slice(s) to compute, %d cached (%s)", len(todo), len(have), cache_path.name)
        net.eval()
        starts = range(0, len(todo), batch_size)
        level = net.feature_level
        extra = [also_pooled[0]] if also_pooled and also_pooled[0] != level else []
        pooled: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for s in progress(starts, desc=f"regions {cache_path.parent.parent.name}", total=len(starts)):
                chunk = todo[s:s + batch_size]
                imgs = [load_slice(images_dir / f) for f in chunk]
                maps = net.level_maps(torch.from_numpy(np.stack(imgs))[:, None].to(device), [level, *extra])
                fmaps = maps[level].float().cpu()
                if also_pooled:
                    gap = maps[also_pooled[0]].float().mean(dim=(-2, -1)).cpu().numpy()
                    pooled.update({f: gap[i][None] for i, f in enumerate(chunk)})
                rmasks = [_region_masks(masks[f], img.shape, regions, ring_mm, pixel[f]) for f, img in zip(chunk, imgs)]
                vecs, areas = pool_regions(fmaps, rmasks, regions)
                have.update({f: (vecs[i], areas[i]) for i, f in enumerate(chunk)})
        if also_pooled and pooled:
            add_to_cache(also_pooled[1], pooled)
        names = np.array(sorted(have))
        with atomic_path(cache_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, file_names=names, vectors=np.stack([have[n][0] for n in names]),
                         areas=np.stack([have[n][1] for n in names]))
    if not files:
        return np.zeros((0, len(regions), net.channels), np.float32), np.zeros((0, len(regions)), np.float32)
    return np.stack([have[f][0] for f in files]), np.stack([have[f][1] for f in files])


def aggregate_regions(pids: np.ndarray, vecs: np.ndarray, areas: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per patient and region: the area-weighted mean of its slices' region vectors and their
    maximum (over the slices where the region is present) -> (ids, (P, R * 2 * C)). A region
    absent from all of a patient's slices gives NaN (imputed by the model)."""
    ids = list(dict.fromkeys(str(p) for p in pids))
    n_r, c = vecs.shape[1], vecs.shape[2]
    out = np.full((len(ids), n_r, 2, c), np.nan, np.float32)
    for i, pid in enumerate(ids):
        sel = pids == pid
        for r in range(n_r):
            a = areas[sel, r]
            if a.sum() <= 0:
                continue
            v = vecs[sel, r][a > 0]
            out[i, r, 0] = (v * a[a > 0, None]).sum(0) / a.sum()
            out[i, r, 1] = v.max(0)
    return ids, out.reshape(len(ids), -1)


def patient_burden(slices: pd.DataFrame, masks: dict, images_dir: Path, thickness_mm: float,
                   ring_mm: float) -> pd.DataFrame:
    """BURDEN_FEATURES per patient (index patient_id) from its scored slices' masks and images."""
    rows = {}
    for pid, rows_p in slices.groupby("patient_id", sort=False):
        planes = {}
        for r in rows_p.itertuples():
            m = masks[r.file_name]
            planes[float(r.z_mm)] = {"GTV": m["GTV"], "GTVln": m["GTVln"],
                                     "image": load_slice(images_dir / r.file_name)}
        rows[str(pid)] = planes_burden(planes, thickness_mm, float(rows_p["pixel_mm"].astype(float).median()),
                                       ring_mm)
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(BURDEN_FEATURES)).rename_axis("patient_id")


def planes_burden(planes: dict[float, dict[str, np.ndarray]], thickness_mm: float, pixel_mm: float,
                  ring_mm: float) -> dict[str, float]:
    """BURDEN_FEATURES of one patient from its scored slices: {z_mm: {"GTV", "GTVln", "image"}}."""
    vol, _ = stack_planes(planes, thickness_mm)
    return burden_descriptors(vol["GTV"], vol["GTVln"], (thickness_mm, pixel_mm, pixel_mm), vol["image"],
                              ring_mm=ring_mm)


def burden_matrix(table: pd.DataFrame) -> np.ndarray:
    """The model's burden group: log1p of volumes and counts, the rest as they are."""
    x = table[list(BURDEN_FEATURES)].to_numpy(dtype=float).copy()
    for j, name in enumerate(BURDEN_FEATURES):
        if name in LOG_FEATURES:
            x[:, j] = np.log1p(np.clip(x[:, j], 0, None))
    return x


def slice_thickness_mm(config: Config) -> float:
    """The z distance a kept slice stands for: every slice_step-th 1 mm plane (no neighbours)."""
    pp = config.preprocess
    return float(pp.spacing_mm * (max(1, pp.slice_step) if pp.neighbours == 0 else 1))


def patient_inputs(config: Config, run_dir: Path, sequence: str, device: torch.device) -> PatientInputs | None:
    """The burden and deep groups of one sequence's patients (None when the sequence was not preprocessed)."""
    from npc_msom.prediction.stage import _extractor, _image_size, choose_slices, read_slices  # noqa: PLC0415
    pc = config.prediction
    if pc.pooling not in ("region", "slice"):
        raise ConfigError(f"prediction.pooling: expected region or slice, got {pc.pooling!r}")
    if not (run_dir / "preprocessed" / sequence / "slices.csv").is_file():
        return None
    t0 = time.perf_counter()
    slices = read_slices(run_dir, sequence)
    if slices.empty:
        return None
    images_dir = run_dir / "preprocessed" / sequence
    slices = choose_slices(slices, pc, run_dir, sequence, device)
    if pc.slices == "detector":
        from npc_msom.detection import load_detector  # noqa: PLC0415
        from npc_msom.prediction.stage import detector_checkpoint  # noqa: PLC0415
        ckpt = detector_checkpoint(run_dir, sequence)
        det, meta = load_detector(ckpt, device)
        masks = detector_masks(det, meta, images_dir, slices, pc.detector_threshold, device)
        mask_key = {"source": "detector", "sha256": file_digest(ckpt), "threshold": pc.detector_threshold}
    else:
        masks = contour_masks(run_dir, sequence, slices)
        mask_key = {"source": "contours"}
    mask_key["slices"] = file_digest(run_dir / "preprocessed" / sequence / "slices.csv")
    burden = patient_burden(slices, masks, images_dir, slice_thickness_mm(config), pc.ring_mm)
    contour_burden = None
    if pc.slices == "detector":   # what the detector's masks measure against what the contours measure
        tumour = read_slices(run_dir, sequence)
        tumour = tumour[~tumour["negative"].astype(bool)].reset_index(drop=True)
        contour_burden = patient_burden(tumour, contour_masks(run_dir, sequence, tumour), images_dir,
                                        slice_thickness_mm(config), pc.ring_mm)
    ids = list(burden.index)
    blocks = {"burden": burden_matrix(burden)}
    if pc.deep:
        net, key, _ = _extractor(config, run_dir, sequence, 0, _image_size(images_dir / slices["file_name"].iloc[0]),
                                 level=pc.region_level)
        net.to(device)
        regions = REGIONS if pc.pooling == "region" else ("slice",)
        cache = run_dir / "prediction" / sequence / "features" / (
            f"regions-{_digest({**key, 'level': pc.region_level, 'regions': list(regions), 'ring_mm': pc.ring_mm, 'masks': mask_key})}.npz")
        # the study's whole-slice vectors (head mode, one view, the same slices) from the same pass
        share = None
        if pc.finetune == "head" and pc.feature_views == 1 and pc.slices == "contours":
            share = (pc.feature_level, run_dir / "prediction" / sequence / "features" /
                     f"{_digest({**key, 'level': pc.feature_level})}.npz")
        vecs, areas = region_features(net, images_dir, slices, masks, regions=regions, ring_mm=pc.ring_mm,
                                      cache_path=cache, device=device, batch_size=pc.feature_batch_size,
                                      also_pooled=share)
        deep_ids, deep = aggregate_regions(slices["patient_id"].to_numpy().astype(str), vecs, areas)
        if deep_ids != ids:
            deep = pd.DataFrame(deep, index=deep_ids).loc[ids].to_numpy()
        blocks["deep"] = deep
    if not pc.burden:
        blocks.pop("burden")
    if not blocks:
        raise ConfigError("prediction.burden and prediction.deep are both off: the patient model has no input")
    return PatientInputs(sequence, ids, blocks, burden, time.perf_counter() - t0, contour_burden)


def descriptor_agreement(detector: pd.DataFrame, contours: pd.DataFrame, ids: list[str]) -> tuple[pd.DataFrame, dict]:
    """Per patient of ``ids`` and descriptor: the value from the detector's masks beside the one
    from the contours (long table), and per descriptor the agreement over those patients: mean
    difference (detector - contours), mean absolute difference, Spearman rho. A patient the
    detector found no slice for has NaN detector values."""
    from scipy.stats import spearmanr  # noqa: PLC0415
    ids = [p for p in ids if p in contours.index]
    rows, summary = [], {}
    for f in BURDEN_FEATURES:
        d = np.array([detector.loc[p, f] if p in detector.index else np.nan for p in ids], float)
        c = contours.loc[ids, f].to_numpy(float)
        rows += [{"patient_id": p, "descriptor": f, "contours": cv, "detector": dv} for p, cv, dv in zip(ids, c, d)]
        ok = np.isfinite(d) & np.isfinite(c)
        rho = float("nan")
        if ok.sum() >= 3 and np.ptp(d[ok]) > 0 and np.ptp(c[ok]) > 0:
            rho = float(spearmanr(d[ok], c[ok]).statistic)
        summary[f] = {"n": int(ok.sum()), "mean_difference": float(np.mean(d[ok] - c[ok])) if ok.any() else None,
                      "mean_abs_difference": float(np.mean(np.abs(d[ok] - c[ok]))) if ok.any() else None,
                      "spearman": None if not np.isfinite(rho) else round(rho, 4)}
    return pd.DataFrame(rows, columns=["patient_id", "descriptor", "contours", "detector"]), summary


# ---- fitting and scoring ------------------------------------------------------------------------

def _rows(inputs: list[PatientInputs], ids: list[str]) -> dict[str, np.ndarray]:
    """The groups of ``inputs`` for ``ids`` (a patient missing from a sequence: NaN rows, which the
    model's standardisation imputes with the training mean, so that sequence adds nothing for it).
    With several sequences each group is named group:sequence."""
    out = {}
    for inp in inputs:
        pos = {p: i for i, p in enumerate(inp.ids)}
        for g, b in inp.blocks.items():
            rows = np.full((len(ids), b.shape[1]), np.nan)
            for i, p in enumerate(ids):
                if p in pos:
                    rows[i] = b[pos[p]]
            out[g if len(inputs) == 1 else f"{g}:{inp.sequence}"] = rows
    return out


def fit_patient_models(inputs: list[PatientInputs], train_ids: list[str], y_train: np.ndarray, config: Config,
                       clinical: pd.DataFrame | None = None, seed: int | None = None
                       ) -> tuple[GroupRidge, dict, FusionModel | None, ClinicalEncoder | None, dict]:
    """The imaging model (and the fusion model when ``clinical`` is given) fitted on ``train_ids``."""
    pc = config.prediction
    seed = config.seed if seed is None else seed
    blocks = _rows(inputs, train_ids)
    tunable = [g for g in blocks if g.startswith("deep")]
    image, sel = select_group_ridge(blocks, y_train, tunable=tunable, weights_grid=pc.deep_weights,
                                    cs=pc.patient_cs, folds=pc.inner_folds, seed=seed)
    fusion = enc = None
    fsel: dict = {}
    if clinical is not None:
        enc = ClinicalEncoder.fit(clinical.loc[train_ids], pc.clinical_columns or None)
        fusion, fsel = fit_fusion(image, blocks, enc.transform(clinical.loc[train_ids]), y_train,
                                  cs=pc.patient_cs, folds=pc.inner_folds, seed=seed)
    return image, sel, fusion, enc, fsel


def score_patients(inputs: list[PatientInputs], ids: list[str], image: GroupRidge, fusion: FusionModel | None = None,
                   enc: ClinicalEncoder | None = None, clinical: pd.DataFrame | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(imaging probabilities, fusion probabilities or None, notes) of ``ids``; a patient with no
    scored slice in any of ``inputs`` gets NaN and a note."""
    have = set().union(*[set(i.ids) for i in inputs])
    blocks = _rows(inputs, ids)
    p_img = image.proba(blocks)
    p_fus = fusion.proba(blocks, enc.transform(clinical.loc[ids])) if fusion is not None else None
    notes = []
    for k, p in enumerate(ids):
        seqs = [i.sequence for i in inputs if p in set(i.ids)]
        if p not in have:
            p_img[k] = np.nan
            if p_fus is not None:
                p_fus[k] = np.nan
            notes.append(f"no scored slice of {'/'.join(i.sequence for i in inputs)}")
        elif len(inputs) > 1 and len(seqs) < len(inputs):
            notes.append(f"scored from {'/'.join(seqs)} (missing sequences set to the training mean)")
        else:
            notes.append("")
    return p_img, p_fus, notes


def patient_settings(config: Config, run_dir: Path, sequences: list[str]) -> dict:
    pc = config.prediction
    from npc_msom.prediction.stage import detector_checkpoint, read_split  # noqa: PLC0415
    split = read_split(run_dir)
    det = {s: file_digest(detector_checkpoint(run_dir, s)) for s in sequences
           if pc.deep and pc.init == "detector" or pc.slices == "detector"}
    return {"prediction": {k: v for k, v in to_dict(pc).items() if k not in ("cv_folds", "cv_repeats", "models",
                                                                           "combine_sequences")},
            "sequences": sequences, "seed": config.seed, "detector": det,
            "detection": to_dict(config.detection) if pc.init == "scratch" else None,
            "slices": {s: file_digest(run_dir / "preprocessed" / s / "slices.csv") for s in sequences},
            "split": _digest({"train": split["train"], "val": split["val"]}),
            "clinical": file_digest(run_dir / "cohort" / "clinical.csv"),
            "preprocess": to_dict(config.preprocess),
            # the fusion design: raw imaging OOF logit beside the clinical vector, C by inner CV
            "fusion": FUSION_DESIGN}


def patient_models_done(config: Config, run_dir: Path, sequences: list[str]) -> bool:
    """True when every patient-level model of ``sequences`` holds finished outputs of this run's
    settings (nothing to fit: their inputs need not be computed)."""
    from npc_msom.errors import StaleArtifactError  # noqa: PLC0415
    from npc_msom.prediction.stage import check_stale  # noqa: PLC0415
    wanted = [m for m in PATIENT_MODELS if m in config.prediction.models]
    where = Path(run_dir) / "prediction" / (sequences[0] if len(sequences) == 1 else "combined")
    try:
        settings = patient_settings(config, Path(run_dir), sequences)
        return all(check_stale(where / m, {**settings, "model": m}, False) for m in wanted)
    except (StaleArtifactError, InputError, FileNotFoundError):
        return False   # the training call says what is wrong


def train_patient_models_for_run(config: Config, run_dir: str | Path, sequences: list[str], *,
                                 device: torch.device | str | None = None, force: bool = False,
                                 cache: dict | None = None) -> dict:
    """The ``patient`` and ``patient_fusion`` models of one sequence (``[seq]``) or of several
    together (written under ``prediction/combined/``). Returns {model: PredictorResult}."""
    from npc_msom.prediction.stage import (PredictorResult, check_stale, labels_of, read_clinical,  # noqa: PLC0415
                                           read_split)
    from npc_msom.runtime import resolve_device  # noqa: PLC0415
    run_dir = Path(run_dir)
    device = resolve_device(config.device) if device is None else torch.device(device)
    pc = config.prediction
    wanted = [m for m in PATIENT_MODELS if m in pc.models]
    if not wanted:
        return {}
    where = run_dir / "prediction" / (sequences[0] if len(sequences) == 1 else "combined")
    settings = patient_settings(config, run_dir, sequences)
    results = {}
    todo = []
    for m in wanted:
        out_dir = where / m
        if check_stale(out_dir, {**settings, "model": m}, force):
            results[m] = PredictorResult(out_dir, where.name, m, json.loads((out_dir / "metrics.json").read_text()), True)
        else:
            todo.append(m)
    if not todo:
        return results
    t0 = time.perf_counter()
    cache = {} if cache is None else cache
    inputs = []
    for s in sequences:
        if s not in cache:
            cache[s] = patient_inputs(config, run_dir, s, device)
        if cache[s] is not None:
            inputs.append(cache[s])
    if not inputs:
        return results
    split = read_split(run_dir)
    split_of = {p: "train" for p in split["train"]} | {p: "val" for p in split["val"]}
    clinical = read_clinical(run_dir)
    ids = list(split["train"]) + list(split["val"])
    scored = set().union(*[set(i.ids) for i in inputs])
    train_ids = [p for p in split["train"] if p in scored]
    y_train = labels_of(clinical, train_ids)
    image, sel, fusion, enc, fsel = fit_patient_models(inputs, train_ids, y_train, config,
                                                       clinical if "patient_fusion" in todo else None)
    p_img, p_fus, notes = score_patients(inputs, ids, image, fusion, enc, clinical if fusion else None)
    labels = labels_of(clinical, ids)
    seconds = time.perf_counter() - t0
    agreement = None
    if len(sequences) == 1:
        write_text_atomic(where / "patient" / "descriptors.csv", inputs[0].burden.to_csv(float_format="%.6g"))
        if inputs[0].contour_burden is not None:   # automatic mode: the validation patients' masks vs contours
            table_a, agreement = descriptor_agreement(inputs[0].burden, inputs[0].contour_burden, list(split["val"]))
            write_text_atomic(where / "patient" / "descriptors_detector_vs_contours.csv",
                              table_a.to_csv(index=False, float_format="%.6g"))
    for m in todo:
        out_dir = where / m
        probs = p_img if m == "patient" else p_fus
        table = patient_table(ids, [split_of[p] for p in ids], probs, labels, notes)
        state = {"image": image.to_dict()} if m == "patient" else {**fusion.to_dict(), "encoder": enc.to_dict()}
        write_json_atomic(out_dir / "model.json", {"settings": {**settings, "model": m}, **state})
        extra = {"settings": {**settings, "model": m}, "seconds": round(seconds, 2),
                 "feature_seconds": round(sum(i.feature_seconds for i in inputs), 2),
                 "selection": sel, "group_norms": image.group_norms(), "groups": {g: w for g, w in image.widths.items()},
                 "pooling": pc.pooling, "region_level": pc.region_level, "ring_mm": pc.ring_mm, "slices": pc.slices,
                 "n_train_patients": len(train_ids)}
        if agreement is not None:
            extra["descriptor_agreement"] = {"patients": "validation", "masks": "detector vs contours",
                                             "file": "patient/descriptors_detector_vs_contours.csv",
                                             "descriptors": agreement}
        if m == "patient_fusion":
            extra["fusion"] = fsel
            extra["clinical_features"] = enc.feature_names
        metrics = model_metrics(table, level=config.evaluation.level, model=m, sequence="+".join(sequences),
                                extra=extra)
        write_scores(out_dir, table, metrics)
        auc = metrics.get("auc") or {}
        log.info("%s %s: validation AUC %s (deep weight %s, C %s)", where.name, m,
                 f"{auc.get('auc'):.3f}" if auc else "n/a", sel["chosen"]["weight"], sel["chosen"]["c"])
        results[m] = PredictorResult(out_dir, where.name, m, metrics)
    return results


def patient_cv_rows(config: Config, run_dir: Path, assignments, clinical: pd.DataFrame, ids: list[str],
                    device: torch.device, cache: dict | None = None) -> list[dict]:
    """Out-of-fold scores of the patient-level models of every sequence and of the sequences
    together: in each fold the burden / deep standardisation, the penalty, the deep group's weight,
    the clinical encoder and the fusion regression are fitted on that fold's training patients only.
    The region vectors come from the run's extractor (the detector, trained on the contours of the
    run's training split; no outcome)."""
    from npc_msom.prediction.stage import labels_of  # noqa: PLC0415
    pc = config.prediction
    wanted = [m for m in PATIENT_MODELS if m in pc.models]
    if not wanted:
        return []
    cache = {} if cache is None else cache
    present = []
    for s in pc.combine_sequences:
        if s not in cache:
            cache[s] = patient_inputs(config, run_dir, s, device)
        if cache[s] is not None:
            present.append(s)
    groups = [[s] for s in present] + ([present] if len(present) > 1 else [])
    label = dict(zip(ids, labels_of(clinical, ids)))
    rows = []
    for seqs in groups:
        inputs = [cache[s] for s in seqs]
        scored = set().union(*[set(i.ids) for i in inputs])
        name = seqs[0] if len(seqs) == 1 else "combined"
        for rep, fold, val_ids in assignments:
            val = [p for p in val_ids if p in scored]
            tr = [p for p in ids if p not in set(val_ids) and p in scored]
            y = np.array([label[p] for p in tr])
            image, _, fusion, enc, _ = fit_patient_models(inputs, tr, y, config,
                                                          clinical if "patient_fusion" in wanted else None,
                                                          seed=config.seed + 1000 * rep + fold)
            p_img, p_fus, _ = score_patients(inputs, val, image, fusion, enc, clinical if fusion else None)
            for m in wanted:
                probs = p_img if m == "patient" else p_fus
                rows += [{"repeat": rep, "fold": fold, "sequence": name, "model": m, "patient_id": p,
                          "score": float(v)} for p, v in zip(val, probs)]
    return rows


# ---- one new patient (``npc-msom predict``) -----------------------------------------------------

@dataclass
class PatientModel:
    """A fitted patient-level model read back from its folder (``model.json`` + ``metrics.json``)."""
    model: str                   # patient | patient_fusion
    where: str                   # the sequence, or "combined"
    sequences: list[str]
    image: GroupRidge
    fusion: FusionModel | None
    encoder: ClinicalEncoder | None
    cutoff: float
    settings: dict
    path: Path


def load_patient_model(run_dir: Path, where: str, model: str) -> PatientModel:
    """prediction/<where>/<model>/model.json with its training cut-off; InputError when it is
    incomplete, when its scores were made with other settings, or when the detector it used changed."""
    from npc_msom.prediction.stage import detector_checkpoint  # noqa: PLC0415
    out_dir = Path(run_dir) / "prediction" / where / model
    path, metrics_path = out_dir / "model.json", out_dir / "metrics.json"
    if not metrics_path.is_file():
        raise InputError(f"the {where} {model} model has no metrics.json (stage 2 did not finish)", file=metrics_path,
                         expected="metrics.json with the training-fitted risk_cutoff (rerun npc-msom run)")
    state = json.loads(path.read_text())
    metrics = json.loads(metrics_path.read_text())
    if state.get("settings") != metrics.get("settings"):
        raise InputError(f"the {where} {model} model and its scores were made with other settings", file=path,
                         expected="model.json and metrics.json of the same stage-2 run (rerun with --force prediction)")
    cutoff = metrics.get("risk_cutoff")
    if cutoff is None or not np.isfinite(cutoff):
        raise InputError(f"the {where} {model} model has no training cut-off", file=metrics_path,
                         expected="risk_cutoff fitted on the training patients")
    settings = state["settings"]
    for seq, digest in (settings.get("detector") or {}).items():
        det = detector_checkpoint(Path(run_dir), seq)
        if not det.is_file() or file_digest(det) != digest:
            raise InputError(f"the {seq} detector changed after the {where} {model} model was fitted on it", file=det,
                             expected="the detector stage 2 used (rerun npc-msom run --force prediction)")
    if model == "patient":
        image, fusion, enc = GroupRidge.from_dict(state["image"]), None, None
    else:
        fusion = FusionModel.from_dict(state)
        image, enc = fusion.image, ClinicalEncoder.from_dict(state["encoder"])
    return PatientModel(model, where, list(settings["sequences"]), image, fusion, enc, float(cutoff), settings, path)


def new_patient_inputs(config: Config, run_dir: Path, sequence: str, patient_id: str, images: list[np.ndarray],
                       masks: list[dict], z_mm: list[float], pixel_mm: float, device: torch.device) -> PatientInputs:
    """One new patient's groups of one sequence, as :func:`patient_inputs` makes them for the run's
    patients: ``images`` float (S, S) in [0, 1] (as ``load_slice``), ``masks`` per slice
    {"GTV", "GTVln"} (contours, or the detector's in automatic mode), ``z_mm`` per slice."""
    pc = config.prediction
    t0 = time.perf_counter()
    planes = {float(z): {"GTV": m["GTV"], "GTVln": m["GTVln"], "image": img}
              for z, m, img in zip(z_mm, masks, images)}
    if not planes:
        return PatientInputs(sequence, [], {}, pd.DataFrame(columns=list(BURDEN_FEATURES)).rename_axis("patient_id"))
    burden = pd.DataFrame.from_dict({patient_id: planes_burden(planes, slice_thickness_mm(config), pixel_mm,
                                                               pc.ring_mm)},
                                    orient="index", columns=list(BURDEN_FEATURES)).rename_axis("patient_id")
    blocks = {"burden": burden_matrix(burden)}
    if pc.deep:
        from npc_msom.prediction.stage import _extractor  # noqa: PLC0415
        net, _, _ = _extractor(config, run_dir, sequence, 0, int(images[0].shape[-1]), level=pc.region_level)
        net.to(device)
        regions = REGIONS if pc.pooling == "region" else ("slice",)
        vecs, areas = slice_vectors(net, images, masks, pixel_mm, regions=regions, ring_mm=pc.ring_mm, device=device,
                                    batch_size=pc.feature_batch_size)
        _, deep = aggregate_regions(np.array([patient_id] * len(images)), vecs, areas)
        blocks["deep"] = deep
    if not pc.burden:
        blocks.pop("burden")
    return PatientInputs(sequence, [patient_id], blocks, burden, time.perf_counter() - t0)
