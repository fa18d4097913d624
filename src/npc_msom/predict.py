"""``npc-msom predict``: one new patient through a trained run folder.

For every sequence the run has trained models of (``detection/<seq>/checkpoint_last.pt`` and
``prediction/<seq>/<mri|fusion>/checkpoint.pt`` or ``<patient|patient_fusion>/model.json``) and the
patient has a series of:

1. the series preprocessed as the run's preprocessing does (``preprocess.volume``: the run's
   config.yaml spacing, intensity window and image size), every slice, in memory;
2. the run's detector on every slice inside the body: GTV / GTVln detections and masks (those
   scoring >= ``score_threshold``, by default the run's ``prediction.detector_threshold``);
3. the slices scored: with contours, the run's rule (``prediction.slices``: the tumour slices
   preprocessing would keep, or those the detector picks among them and the negatives); without
   contours, fully automatic: the slices the detector picks on the whole volume
   (``detection.select_tumour_slices``, as stage 2's ``slices: detector``);
4. the stage-2 classifiers (``mri``; ``fusion`` with a clinical row) on those slices, aggregated to
   the patient as stage 2 does, and the risk group at the cut-off stage 2 fitted on the training
   patients (``risk_cutoff`` of its metrics.json);

5. the patient-level models (``patient``, ``patient_fusion``: ``prediction/<seq>/<model>/model.json``)
   on the same slices: tumour-burden descriptors and region vectors from the contours where the
   run's stage 2 used contours and the patient has them, else from the detector's masks (at the
   run's ``prediction.detector_threshold``), each with its training cut-off;

then the combined score (mean of the sequences' scores, as ``prediction/combined/mean``), the
multi-sequence patient models (``prediction/combined/patient*``; a sequence the patient lacks enters
as the training mean, as stage 2 scores such patients) and their risk groups. Written to ``--out`` (a temporary folder beside it, renamed when complete):
``summary.json``; per sequence ``overlay.png``, ``detections.csv``, ``slices.csv`` and the predicted
masks on the patient's own series: an RTSTRUCT (ROIs ``GTV_pred``, ``GTVln_pred``) for a DICOM
patient, a label NIfTI (1 = GTV, 2 = GTVln) for a NIfTI patient.

``predict`` reads and computes (no writes); ``write_prediction`` writes; ``predict_patient`` does both.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from npc_msom.cohort.model import Patient, Series
from npc_msom.config import Config, from_dict, load_config
from npc_msom.errors import DicomError, InputError
from npc_msom.runtime import resolve_device, write_json_atomic

log = logging.getLogger(__name__)

PRED_ROI_NAMES: dict[str, str] = {"GTV": "GTV_pred", "GTVln": "GTVln_pred"}
PRED_ROI_COLOURS: dict[str, list[int]] = {"GTV_pred": [255, 255, 0], "GTVln_pred": [30, 144, 255]}
NIFTI_LABELS: dict[str, int] = {"GTV": 1, "GTVln": 2}   # as the cohort's NIfTI label files
DETECT_MIN_SCORE = 0.05     # what stage 2's slices: detector keeps before choosing slices
DETECT_CHUNK = 16           # slices per detector call, so that only kept masks stay in memory


# ---- the run folder -----------------------------------------------------------------------------

@dataclass
class StageModel:
    """One trained stage-2 model of one sequence, ready to score slices."""
    model: str
    net: torch.nn.Module
    encoder: object | None
    cutoff: float
    config: Config
    checkpoint: Path


@dataclass
class RunModels:
    """What ``predict`` needs of a run folder; detectors and classifiers are loaded per sequence."""
    run_dir: Path
    config: Config
    sequences: list[str]                       # trained: a detector and an mri and/or fusion model
    untrained: dict[str, str] = field(default_factory=dict)   # sequence -> what is missing

    def detector_path(self, seq: str) -> Path:
        from npc_msom.detection.shared import detector_checkpoint  # noqa: PLC0415
        return detector_checkpoint(self.run_dir, seq)   # the sequence's own, or the shared one

    def model_dir(self, seq: str, model: str) -> Path:
        return self.run_dir / "prediction" / seq / model


def read_run(run_dir: str | Path) -> RunModels:
    """The run's config and which sequences have trained models; InputError when none has."""
    from npc_msom.prediction.patient import PATIENT_MODELS  # noqa: PLC0415
    from npc_msom.prediction.stage import MODELS  # noqa: PLC0415
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not run_dir.is_dir() or not cfg_path.is_file():
        raise InputError("not a run folder (no config.yaml)", file=cfg_path,
                         expected="a run folder made by npc-msom run, with trained models")
    config = load_config(cfg_path)
    _check_preprocessing(run_dir, config)
    trained, untrained = [], {}
    for seq in config.preprocess.sequences:
        from npc_msom.detection.shared import detector_checkpoint  # noqa: PLC0415
        det = detector_checkpoint(run_dir, seq)
        models = [m for m in MODELS if (run_dir / "prediction" / seq / m / "checkpoint.pt").is_file()]
        models += [m for m in PATIENT_MODELS if (run_dir / "prediction" / seq / m / "model.json").is_file()]
        if det.is_file() and models:
            trained.append(seq)
        else:
            untrained[seq] = ("no detector checkpoint" if not det.is_file() else "no stage-2 model")
    if not trained:
        raise InputError("the run folder has no trained models", file=run_dir,
                         expected="detection/<sequence>/checkpoint_last.pt (or detection/shared/checkpoint_last.pt) and prediction/<sequence>/"
                                  "<mri|fusion>/checkpoint.pt or <patient|patient_fusion>/model.json for at least one "
                                  "sequence (npc-msom run)")
    return RunModels(run_dir, config, trained, untrained)


def _check_preprocessing(run_dir: Path, config: Config) -> None:
    """config.yaml's preprocess settings must be those the run's slices were made with."""
    from npc_msom.preprocess.stage import settings_key  # noqa: PLC0415
    key = settings_key(config.preprocess, config.seed)
    for seq in config.preprocess.sequences:
        folder = run_dir / "preprocessed" / seq / "patients"
        first = next(iter(sorted(folder.glob("*.json"))), None) if folder.is_dir() else None
        if first is None:
            continue
        if json.loads(first.read_text()).get("key") != key:
            raise InputError("config.yaml's preprocess settings differ from those the run's slices were made with",
                             file=run_dir / "config.yaml",
                             expected=f"the settings recorded in {first} (do not edit a run's config.yaml)")
        return


def load_stage_model(run: RunModels, seq: str, model: str, device: torch.device) -> StageModel:
    """A stage-2 checkpoint as a network on ``device``, its clinical encoder and its training cut-off.

    Head-only checkpoints (``finetune: head``) get their extractor back from the run's detector
    (``init: detector``; refused when the detector changed since stage 2) or from the seed
    (``init: scratch``), as stage 2 built it.
    """
    from npc_msom.prediction.clinical import ClinicalEncoder  # noqa: PLC0415
    from npc_msom.prediction.model import (classifier_from_meta, file_digest,  # noqa: PLC0415
                                           read_detector_checkpoint, transfer_from_detector)
    from npc_msom.prediction.stage import CHECKPOINT_FORMAT  # noqa: PLC0415
    out_dir = run.model_dir(seq, model)
    path = out_dir / "checkpoint.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError("not a stage-2 checkpoint", file=path, expected=f"a checkpoint of format {CHECKPOINT_FORMAT}")
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.is_file():
        raise InputError(f"the {seq} {model} model has no metrics.json (stage 2 did not finish)", file=metrics_path,
                         expected="metrics.json with the training-fitted risk_cutoff (rerun npc-msom run)")
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("settings") != ckpt.get("settings"):
        raise InputError(f"the {seq} {model} checkpoint and its scores were made with other settings", file=path,
                         expected="checkpoint.pt and metrics.json of the same stage-2 run (rerun with --force prediction)")
    cutoff = metrics.get("risk_cutoff")
    if cutoff is None or not np.isfinite(cutoff):
        raise InputError(f"the {seq} {model} model has no training cut-off", file=metrics_path,
                         expected="risk_cutoff fitted on the training patients")
    config = from_dict(Config, ckpt["config"], f"{path}: config")
    pc = config.prediction
    if not ckpt.get("head_only") and int(ckpt.get("epoch", 0)) < pc.epochs:
        raise InputError(f"the {seq} {model} model stopped after epoch {ckpt.get('epoch')} of {pc.epochs}",
                         file=path, expected="a finished stage-2 model (rerun npc-msom run to resume it)")
    if ckpt.get("head_only") and pc.init == "scratch":
        torch.manual_seed(config.seed)  # the scratch extractor stage 2 built and froze
    net = classifier_from_meta(ckpt["meta"])
    if ckpt.get("head_only"):
        if pc.init == "detector":
            det_path = run.detector_path(seq)
            if ckpt["settings"].get("detector") != file_digest(det_path):
                raise InputError(f"the {seq} detector changed after the stage-2 model was trained on it",
                                 file=det_path, expected="the detector stage 2 used (rerun npc-msom run --force prediction)")
            transfer_from_detector(net, read_detector_checkpoint(det_path), det_path)
        missing, unexpected = net.load_state_dict(ckpt["model"], strict=False)
        if unexpected or any(not k.startswith("backbone.") for k in missing):
            raise InputError("the head checkpoint does not fit the classifier", file=path,
                             expected="head tensors of the classifier its meta describes")
    else:
        net.load_state_dict(ckpt["model"])
    net.to(device).eval()
    encoder = ClinicalEncoder.from_dict(ckpt["encoder"]) if ckpt.get("encoder") else None
    return StageModel(model, net, encoder, float(cutoff), config, path)


# ---- the patient --------------------------------------------------------------------------------

@dataclass
class PatientInput:
    patient: Patient
    source: str            # "dicom" | "nifti"
    entry: object          # cohort.index.Entry: the DICOM files each series came from
    root: Path


def read_patient(patient_dir: str | Path, cohort_config) -> PatientInput:
    """One patient's folder (DICOM series [+ RTSTRUCT / SEG] or a NIfTI folder) through the cohort reader.

    Any sequence may be missing; more than one patient, or no usable MR series, is an InputError.
    A clinical table in the folder is neither required nor read here.
    """
    from npc_msom.cohort.clinical import empty_clinical, find_clinical_table  # noqa: PLC0415
    from npc_msom.cohort.index import index_dicom_patient, index_nifti_patient, scan_folder  # noqa: PLC0415
    from npc_msom.cohort.load import Cohort  # noqa: PLC0415
    root = Path(patient_dir)
    expected = "one patient's folder: DICOM MR series (T1WI, T2WI, CE-T1WI; an RTSTRUCT optional) or NIfTI images"
    if not root.is_dir():
        raise InputError("the patient folder does not exist", file=root, expected=expected)
    root = root.resolve()
    cfg = dataclasses.replace(cohort_config, required_sequences=(), skip_bad=False)
    found = scan_folder(root, cfg, find_clinical_table(root), show_progress=False)
    for exc, _ in found.problems:
        raise exc
    ids = found.patient_ids
    if not ids:
        raise InputError("no MR series found (no DICOM image and no NIfTI image named as expected)", file=root,
                         expected=expected)
    if len(ids) > 1:
        raise InputError(f"{len(ids)} patients found ({', '.join(ids[:5])})", file=root, expected=expected)
    pid = ids[0]
    if pid in found.unreadable:
        p, problem = found.unreadable[pid][0]
        raise DicomError(problem, patient=pid, file=p, expected="a complete, readable DICOM file")
    if pid in found.images or pid in found.rtstructs or pid in found.segs:
        entry, record = index_dicom_patient(pid, found.images.get(pid, []), found.rtstructs.get(pid, []), cfg,
                                            found.series_owner, root, found.notes.get(pid, []),
                                            found.segs.get(pid, []), found.nifti_masks.get(pid, {}))
        source, n = "dicom", len(entry.dicom)
    else:
        folder, names = found.nifti_folders[pid]
        entry, record = index_nifti_patient(pid, folder, names, cfg, root)
        source, n = "nifti", len(entry.nifti.sequences)
    if n == 0:
        ignored = "; ".join(f"{i.get('description') or i.get('series_uid')}: {i['reason']}"
                            for i in record.get("ignored_series", [])) or "none"
        raise InputError(f"no MR series of T1WI, T2WI or CE-T1WI (series ignored: {ignored})", patient=pid,
                         file=root, expected=expected)
    cohort = Cohort(root=root, config=cfg, patient_ids=[pid], clinical=empty_clinical(), manifest={"skipped": []},
                    _entries={pid: entry})
    return PatientInput(cohort.load_patient(pid), source, entry, root)


def read_clinical_row(path: str | Path, patient_id: str, columns: list[str]) -> pd.DataFrame:
    """The patient's row of a clinical table (CSV / XLSX in the cohort schema), validated on the
    columns the fusion models use; outcome columns are not needed. One row indexed by patient_id."""
    from npc_msom.cohort.clinical import read_clinical_table, validate_clinical  # noqa: PLC0415
    from npc_msom.cohort.schema import CLINICAL_SCHEMA  # noqa: PLC0415
    path = Path(path)
    raw = read_clinical_table(path)
    lower = {c.lower(): c for c in raw.columns}
    if "patient_id" not in lower:
        raise InputError("the clinical table has no patient_id column", patient=patient_id, file=path,
                         expected="a patient_id column and the columns " + ", ".join(columns))
    rows = raw[raw[lower["patient_id"]].astype(str).str.strip() == patient_id]
    if rows.empty:
        raise InputError(f"the clinical table has no row for patient {patient_id}", patient=patient_id, file=path,
                         expected=f"a row with patient_id {patient_id} (the PatientID of the images, or the "
                                  "NIfTI folder's name)")
    missing = [c for c in columns if c.lower() not in lower]
    if missing:
        raise InputError(f"the clinical table lacks column(s) {missing} that the fusion models use",
                         patient=patient_id, file=path, expected="the columns " + ", ".join(columns))
    # empty cells are allowed: the encoder imputes them as it did in training (with a warning)
    schema = tuple(dataclasses.replace(c, required=c.kind == "id") for c in CLINICAL_SCHEMA
                   if c.kind == "id" or c.name in columns)
    return validate_clinical(rows, file=path, schema=schema)


# ---- one sequence -------------------------------------------------------------------------------

@dataclass
class SequencePrediction:
    """The predictions of one sequence. Arrays: slices of the 1 mm grid (``volume``) unless said."""
    sequence: str
    slice_rule: str                       # contours | detector | automatic
    scored: list[int]                     # 1 mm slice indices scored
    probabilities: dict[str, np.ndarray]  # model -> (n_scored,)
    scores: dict[str, dict]               # model -> score, cutoff, risk_group, checkpoint
    detections: pd.DataFrame              # slice_index, z_mm, structure, score, box (px of the slice)
    searched: list[int]                   # slices the detector ran on
    masks: dict[str, np.ndarray]          # structure -> bool (z, y, x) on the patient's series grid
    masks_px: dict[str, np.ndarray]       # structure -> bool (Z, S, S) on the slices
    series: Series
    volume: object                        # preprocess.volume.VolumeSlices
    patient_inputs: object = None         # prediction.patient.PatientInputs of the patient-level models
    mask_source: str = ""                 # where the patient-level models' masks came from
    saliency: dict = field(default_factory=dict)   # model -> explain.explain_slices (maps on the scored slices)


def _detect_volume(detector, images: np.ndarray, indices: list[int], device, threshold: float, classes: list[str],
                   z_mm: np.ndarray):
    """Detections on ``images[indices]``: light per-slice dicts (for slice choice), a table of those
    scoring >= ``threshold`` and their masks per structure, (Z, S, S)."""
    from npc_msom.detection import detect  # noqa: PLC0415
    light: dict[int, dict] = {}
    masks = {c: np.zeros(images.shape, dtype=bool) for c in classes}
    rows = []
    for s in range(0, len(indices), DETECT_CHUNK):
        chunk = indices[s:s + DETECT_CHUNK]
        for z, d in zip(chunk, detect(detector, [images[z] for z in chunk], device, score_threshold=DETECT_MIN_SCORE)):
            light[z] = {"scores": d["scores"], "labels": d["labels"], "boxes_xyxy": d["boxes_xyxy"]}
            for k in np.flatnonzero(d["scores"] >= threshold):
                lab = int(d["labels"][k])
                name = classes[lab - 1] if 0 < lab <= len(classes) else str(lab)
                if name in masks:
                    masks[name][z] |= d["masks"][k]
                x1, y1, x2, y2 = (round(float(v), 1) for v in d["boxes_xyxy"][k])
                rows.append({"slice_index": int(z), "z_mm": float(z_mm[z]), "structure": name,
                             "score": round(float(d["scores"][k]), 4), "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                             "mask_px": int(d["masks"][k].sum())})
    cols = ["slice_index", "z_mm", "structure", "score", "x1", "y1", "x2", "y2", "mask_px"]
    return light, pd.DataFrame(rows, columns=cols), masks


def _to_series_grid(mask_1mm: np.ndarray, volume, series: Series) -> np.ndarray:
    """bool (Z, Y, X) on the 1 mm grid -> bool (z, y, x) on the series' own grid (the stage's mask
    resampling, the other way round)."""
    import SimpleITK as sitk  # noqa: PLC0415
    from npc_msom.preprocess.resample import resample_mask  # noqa: PLC0415
    g = series.geometry
    reference = sitk.Image([int(v) for v in g.size], sitk.sitkUInt8)
    reference.SetOrigin(g.origin_mm)
    reference.SetSpacing(g.spacing_mm)
    reference.SetDirection(g.direction)
    src = Series(sequence=series.sequence, image=np.zeros((0, 0, 0), np.float32), geometry=volume.geometry)
    return resample_mask(mask_1mm, src, reference)


def predict_sequence(run: RunModels, seq: str, series: Series, volume, models: dict[str, StageModel],
                     clinical_row: pd.DataFrame | None, contour_slices: tuple[list[int], list[int]] | None,
                     device: torch.device, score_threshold: float, patient_id: str,
                     patient_models: dict | None = None, need_inputs: bool = False,
                     detect: bool = True, explain: bool = False) -> SequencePrediction:
    """Detections, slice choice, slice probabilities and the patient's scores of one sequence.

    patient_models: {model: prediction.patient.PatientModel} of this sequence; need_inputs: compute
    the patient-level inputs (also when only the combined patient models use this sequence);
    explain: the Grad-CAM maps of the slice models on the scored slices (``npc_msom.explain``)."""
    from npc_msom.detection import load_detector, select_tumour_slices  # noqa: PLC0415
    patient_models = patient_models or {}
    need_inputs = need_inputs or bool(patient_models)
    pc = run.config.prediction
    pos, neg = contour_slices or ([], [])
    if not detect and pos and pc.slices == "contours":   # contours choose the slices and make the masks
        return _score_slices(run, seq, series, volume, models, clinical_row, device, patient_id, patient_models,
                             need_inputs, "contours", list(pos), score_threshold, [], pd.DataFrame(), {}, {},
                             explain=explain)
    detector, meta = load_detector(run.detector_path(seq), device)
    if int(meta["image_size"]) != volume.images.shape[-1]:
        raise InputError(f"the {seq} detector takes {meta['image_size']} px slices, the run's preprocessing makes "
                         f"{volume.images.shape[-1]} px", file=run.detector_path(seq),
                         expected="a detector trained on this run's preprocessed slices")
    classes = list(meta["class_names"])
    gtv = [classes.index("GTV") + 1] if "GTV" in classes else None
    pos, neg = contour_slices or ([], [])
    searched = sorted(set(np.flatnonzero(volume.body_fraction > 0).tolist()) | set(pos) | set(neg))
    light, table, masks_px = _detect_volume(detector, volume.images, searched, device, score_threshold, classes,
                                            volume.z_mm)
    model_masks = masks_px   # the patient-level models' detector masks: at the threshold stage 2 used
    if need_inputs and abs(score_threshold - pc.detector_threshold) > 1e-12:
        _, _, model_masks = _detect_volume(detector, volume.images, searched, device, pc.detector_threshold,
                                           classes, volume.z_mm)
    if not pos:
        rule, candidates = "automatic", searched
    elif pc.slices == "contours":
        rule, candidates = "contours", pos
    else:
        rule, candidates = "detector", sorted(set(pos) | set(neg))
    if rule == "contours":
        scored = list(pos)
    else:
        pick = select_tumour_slices([light[z] for z in candidates], volume.z_mm[candidates],
                                    score_threshold=pc.detector_threshold, labels=gtv)
        scored = sorted(candidates[i] for i in pick)   # slice order, as stage 2's table
    return _score_slices(run, seq, series, volume, models, clinical_row, device, patient_id, patient_models,
                         need_inputs, rule, scored, score_threshold, searched, table, masks_px, model_masks,
                         explain=explain)


def _score_slices(run: RunModels, seq: str, series: Series, volume, models: dict, clinical_row, device,
                  patient_id: str, patient_models: dict, need_inputs: bool, rule: str, scored: list[int],
                  score_threshold: float, searched: list[int], table: pd.DataFrame, masks_px: dict,
                  model_masks: dict, explain: bool = False) -> SequencePrediction:
    """The stage-2 models on the chosen slices (``rule``: contours | detector | automatic)."""
    from npc_msom.prediction.stage import aggregate  # noqa: PLC0415
    from npc_msom.prediction.train import slice_probabilities  # noqa: PLC0415
    pc = run.config.prediction
    if table.empty and not len(table.columns):
        table = pd.DataFrame(columns=["slice_index", "z_mm", "structure", "score", "x1", "y1", "x2", "y2", "mask_px"])
    images = [volume.images[z].astype(np.float32) / 255.0 for z in scored]   # as detection.data.load_slice
    ids = np.array([patient_id] * len(scored))
    probabilities, scores, saliency = {}, {}, {}
    tumour = None
    for name, sm in models.items():
        clin = None
        if sm.encoder is not None:
            clin = np.repeat(sm.encoder.transform(clinical_row), len(scored), axis=0)
        probs = slice_probabilities(sm.net, images, device, clin, pc.feature_batch_size) if scored else np.zeros(0)
        probabilities[name] = probs
        if explain and scored:
            from npc_msom.explain import explain_slices  # noqa: PLC0415
            if tumour is None:   # the tumour regions of the scored slices: the contours', else the detector's
                tumour = np.stack([_tumour_px(volume, z, masks_px, rule) for z in scored])
            saliency[name] = explain_slices(sm.net, np.stack(images), clin, probs, tumour, aggregate=pc.aggregate,
                                            top_k=pc.top_k, device=device)
        score = aggregate(ids, probs, pc).get(patient_id, float("nan"))
        scores[name] = {"score": score, "cutoff": sm.cutoff, "cutoff_method": "youden_train (stage 2)",
                        "risk_group": ("high" if score >= sm.cutoff else "low") if np.isfinite(score) else "",
                        "n_slices": len(scored)}
    inputs, mask_source = None, ""
    if need_inputs:
        from npc_msom.prediction.patient import new_patient_inputs, score_patients  # noqa: PLC0415
        # as stage 2: contour masks where the slices are the contours' (slices: contours), else the detector's
        mask_source = "contours" if rule == "contours" else "detector"
        if mask_source == "contours":
            slice_masks = [contour_slice_masks(volume, z) for z in scored]
        else:
            slice_masks = [{"GTV": model_masks["GTV"][z] if "GTV" in model_masks else np.zeros(images[0].shape, bool),
                            "GTVln": model_masks["GTVln"][z] if "GTVln" in model_masks
                            else np.zeros(images[0].shape, bool)} for z in scored]
        inputs = new_patient_inputs(run.config, run.run_dir, seq, patient_id, images, slice_masks,
                                    [float(volume.z_mm[z]) for z in scored], volume.pixel_mm, device)
        for name, pm in patient_models.items():
            score = float("nan")
            if inputs.ids:
                p_img, p_fus, _ = score_patients([inputs], [patient_id], pm.image, pm.fusion, pm.encoder,
                                                 clinical_row if pm.fusion is not None else None)
                score = float((p_fus if pm.fusion is not None else p_img)[0])
            scores[name] = {"score": score, "cutoff": pm.cutoff, "cutoff_method": "youden_train (stage 2)",
                            "risk_group": ("high" if score >= pm.cutoff else "low") if np.isfinite(score) else "",
                            "n_slices": len(scored), "masks": mask_source}
            if explain and inputs.ids:
                from npc_msom.explain.patient import patient_contributions  # noqa: PLC0415
                scores[name]["contributions"] = patient_contributions(
                    pm, [inputs], patient_id, clinical_row if pm.fusion is not None else None, pc.pooling)
    masks = {}
    for name, m in masks_px.items():
        grid = _to_series_grid(volume.to_grid(m), volume, series)
        masks[name] = grid
    return SequencePrediction(seq, rule, scored, probabilities, scores, table, searched, masks, masks_px, series,
                              volume, inputs, mask_source, saliency)


def _tumour_px(volume, z: int, masks_px: dict, rule: str) -> np.ndarray:
    """bool (S, S): GTV or nodes on 1 mm plane ``z``, from the contours (``rule`` contours) else
    from the detector's masks."""
    if rule == "contours":
        m = contour_slice_masks(volume, z)
        return m["GTV"] | m["GTVln"]
    size = volume.images.shape[-1]
    out = np.zeros((size, size), bool)
    for name in ("GTV", "GTVln"):
        if name in masks_px:
            out |= masks_px[name][z]
    return out


def contour_slice_masks(volume, z: int) -> dict[str, np.ndarray]:
    """{"GTV", "GTVln"} bool (S, S) of 1 mm plane ``z`` from the patient's contours, made as the
    stage makes its annotations and stage 2 reads them back (square canvas, per-instance resize,
    polygons, rasterised)."""
    from npc_msom.detection.data import segmentation_to_mask  # noqa: PLC0415
    from npc_msom.preprocess.coco import instance_annotation  # noqa: PLC0415
    from npc_msom.preprocess.slices import pad_to_square, resize_instances  # noqa: PLC0415
    size = int(volume.images.shape[-1])
    out = {}
    for name in ("GTV", "GTVln"):
        m = np.zeros((size, size), bool)
        if name in volume.masks:
            sq, _ = pad_to_square(volume.masks[name][z], fill=False)
            for inst in resize_instances(sq, size):
                seg = instance_annotation(inst, name).get("segmentation")
                if seg:
                    m |= segmentation_to_mask(seg, size, size).astype(bool)
        out[name] = m
    return out


# ---- the patient --------------------------------------------------------------------------------

@dataclass
class PatientPrediction:
    patient_id: str
    source: str
    run_dir: Path
    sequences: dict[str, SequencePrediction]
    missing: list[str]
    untrained: dict[str, str]
    combined: dict | None
    clinical_file: str | None
    score_threshold: float
    input: PatientInput
    seconds: float = 0.0
    combined_patient: dict = field(default_factory=dict)   # model -> the multi-sequence patient models' scores

    def summary(self) -> dict:
        """summary.json: what was scored, how, and the outputs' file names (relative to --out)."""
        seqs = {}
        for seq, sp in self.sequences.items():
            det = {}
            for structure, m in sp.masks.items():
                voxel_ml = float(np.prod(sp.series.geometry.spacing_mm)) / 1000.0
                hits = sp.detections[sp.detections["structure"] == structure]
                det[structure] = {"roi": PRED_ROI_NAMES.get(structure, structure), "n_detections": int(len(hits)),
                                  "n_slices": int(hits["slice_index"].nunique()),
                                  "max_score": float(hits["score"].max()) if len(hits) else None,
                                  "volume_ml": round(float(m.sum()) * voxel_ml, 3)}
            seqs[seq] = {"slice_rule": sp.slice_rule, "n_slices_scored": len(sp.scored),
                         "scored_z_mm": [float(sp.volume.z_mm[z]) for z in sp.scored],
                         "n_slices_searched": len(sp.searched), "detections": det,
                         "descriptors": _descriptors(sp), "descriptor_masks": sp.mask_source or None,
                         "models": {m: {k: (round(v, 6) if isinstance(v, float) else v) for k, v in s.items()}
                                    for m, s in sp.scores.items()},
                         "files": {**_files_of(seq, self.source),
                                   **{f"saliency_{m}": [f"{seq}/saliency_{m}.nii.gz", f"{seq}/saliency_{m}.png"]
                                      for m in sp.saliency}},
                         "saliency": _saliency_summary(sp)}
        return {"patient_id": self.patient_id, "source": self.source, "run": str(self.run_dir),
                "clinical_file": self.clinical_file, "score_threshold": self.score_threshold,
                "sequences": seqs, "missing_sequences": self.missing,
                "untrained_sequences": self.untrained, "combined": self.combined,
                "combined_patient_models": self.combined_patient,
                "seconds": round(self.seconds, 2)}


def _saliency_summary(sp: SequencePrediction) -> dict | None:
    """Per slice model: each scored slice's share of the score, its probability and the fraction of
    its Grad-CAM saliency inside the tumour regions against the fraction of the slice they cover."""
    if not sp.saliency:
        return None

    def r(v):
        return None if v is None or not np.isfinite(v) else round(float(v), 4)
    out = {}
    for model, e in sp.saliency.items():
        rows = [{"slice_index": int(z), "z_mm": round(float(sp.volume.z_mm[z]), 2),
                 "probability": r(sp.probabilities[model][i]), "share_of_score": r(e["shares"][i]),
                 "saliency_in_tumour": r(e["inside"][i]), "tumour_area_share": r(e["area"][i])}
                for i, z in enumerate(sp.scored)]
        ok = np.isfinite(e["inside"])
        w = e["shares"][ok]
        out[model] = {"method": "Grad-CAM (Captum LayerGradCam) on the pooled FPN level, ReLU",
                      "tumour_regions": "contours" if sp.slice_rule == "contours" else "detector masks",
                      "saliency_in_tumour": r(np.average(e["inside"][ok], weights=w) if ok.any() and w.sum() > 0
                                              else None),
                      "tumour_area_share": r(np.average(e["area"][ok], weights=w) if ok.any() and w.sum() > 0
                                             else None),
                      "slices": rows}
    return out


def _descriptors(sp: SequencePrediction) -> dict | None:
    """The tumour-burden descriptors the patient-level models used (mm, ml, counts)."""
    inp = sp.patient_inputs
    if inp is None or inp.burden.empty:
        return None
    row = inp.burden.iloc[0]
    return {k: (round(float(v), 4) if np.isfinite(v) else None) for k, v in row.items()}


def _files_of(seq: str, source: str) -> dict:
    files = {"overlay": f"{seq}/overlay.png", "detections": f"{seq}/detections.csv", "slices": f"{seq}/slices.csv"}
    files["masks"] = f"{seq}/RTSTRUCT_pred.dcm" if source == "dicom" else f"{seq}/pred_mask.nii.gz"
    return files


def _combined(run: RunModels, preds: dict[str, SequencePrediction]) -> dict | None:
    """The mean of the sequences' scores (fusion where every scored sequence has one, else mri) and
    its training cut-off: the one stage 2 stored in prediction/combined/mean when it combined the same
    model, else Youden on the training patients' mean of the stored scores of that model."""
    from npc_msom.prediction.combined import sequence_scores  # noqa: PLC0415
    from npc_msom.prediction.scores import training_cutoff  # noqa: PLC0415
    pc = run.config.prediction
    in_run = [s for s in pc.combine_sequences if s in run.sequences]
    if len(in_run) < 2:
        return None
    seqs = [s for s in in_run if s in preds]
    if not seqs:
        return None
    base = "fusion" if all("fusion" in preds[s].scores for s in seqs) else "mri"
    vals = [preds[s].scores[base]["score"] for s in seqs if base in preds[s].scores]
    vals = [v for v in vals if np.isfinite(v)]
    if not vals:
        return None
    score = float(np.mean(vals))
    stored = run.run_dir / "prediction" / "combined" / "mean" / "metrics.json"
    cutoff, method = None, ""
    if stored.is_file():
        m = json.loads(stored.read_text())
        if (m.get("settings") or {}).get("from") == base and m.get("risk_cutoff") is not None:
            cutoff, method = float(m["risk_cutoff"]), "youden_train (stage 2, prediction/combined/mean)"
    if cutoff is None:
        table = sequence_scores(run.run_dir, in_run, base)
        cols = [s for s in in_run if s in table.columns]
        train = table[table["split"] == "train"]
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(train[cols].to_numpy(dtype=float), axis=1) if cols else np.zeros(0)
        cutoff, how = training_cutoff(train["label"].astype(int).to_numpy(), mean)
        method = f"{how} (fitted here on the training patients' stage-2 {base} scores)"
    note = "" if len(vals) == len(in_run) else f"mean of {len(vals)} of {len(in_run)} sequences"
    return {"model": "mean", "from": base, "sequences": seqs, "score": round(score, 6), "cutoff": cutoff,
            "cutoff_method": method, "risk_group": "high" if score >= cutoff else "low", "note": note}


def predict(run_dir: str | Path, patient_dir: str | Path, clinical: str | Path | None = None, *,
            score_threshold: float | None = None, device: torch.device | str | None = None,
            saliency: bool = True) -> PatientPrediction:
    """Everything ``predict_patient`` writes, computed in memory (nothing is written)."""
    t0 = time.perf_counter()
    run = read_run(run_dir)
    pin = read_patient(patient_dir, run.config.cohort)
    return predict_input(run, pin, clinical, score_threshold=score_threshold, device=device, t0=t0,
                         explain=saliency)


def predict_input(run: RunModels, pin: PatientInput, clinical: str | Path | pd.DataFrame | None = None, *,
                  score_threshold: float | None = None, device: torch.device | str | None = None,
                  detect_contoured: bool = True, t0: float | None = None,
                  loaded: dict | None = None, explain: bool = False) -> PatientPrediction:
    """``predict`` on a patient already read: ``clinical`` is a table file or the patient's
    validated row (a DataFrame indexed by patient_id). detect_contoured=False: a patient with
    contours whose slices and masks come from the contours (``slices: contours``) is scored without
    running the detector (``npc-msom validate``: no predicted masks are written). loaded: models
    loaded by an earlier call (reused across the patients of a cohort). explain: Grad-CAM maps
    of the slice models (``SequencePrediction.saliency``)."""
    from npc_msom.preprocess.slices import select_slices  # noqa: PLC0415
    from npc_msom.preprocess.volume import preprocess_volume  # noqa: PLC0415
    t0 = time.perf_counter() if t0 is None else t0
    run_dir = run.run_dir
    cfg = run.config
    device = resolve_device(cfg.device if device is None else str(device))
    pid = pin.patient.patient_id
    present = [s for s in cfg.preprocess.sequences if s in pin.patient.series]
    usable = [s for s in run.sequences if s in pin.patient.series]
    missing = [s for s in run.sequences if s not in pin.patient.series]
    if not usable:
        raise InputError(f"none of the run's trained sequences ({', '.join(run.sequences)}) is among the "
                         f"patient's series ({', '.join(pin.patient.series) or 'none'})", patient=pid, file=pin.root,
                         expected=f"a series of {' or '.join(run.sequences)}")
    cache = {} if loaded is None else loaded
    key = ("models", tuple(usable), clinical is not None, str(device))
    if key not in cache:
        models = {s: {} for s in usable}
        for s in usable:
            for m in ("mri", "fusion"):
                if (run.model_dir(s, m) / "checkpoint.pt").is_file():
                    if m == "fusion" and clinical is None:
                        continue
                    models[s][m] = load_stage_model(run, s, m, device)
        cache[key] = (models, load_patient_models(run, usable, with_clinical=clinical is not None))
    models, pmodels = cache[key]
    clinical_row = None
    if clinical is not None:
        encoders = [mm.encoder for s in usable for mm in models[s].values() if mm.encoder is not None]
        encoders += [pm.encoder for d in pmodels.values() for pm in d.values() if pm.encoder is not None]
        if not encoders:
            log.warning("a clinical file was given but the run has no fusion model: it is not used")
        else:
            columns = list(dict.fromkeys(c.name for enc in encoders for c in enc.columns))
            if isinstance(clinical, pd.DataFrame):
                lacking = [c for c in columns if c not in clinical.columns]
                if lacking:
                    raise InputError(f"the clinical table lacks column(s) {lacking} that the fusion models use",
                                     patient=pid, expected="the columns " + ", ".join(columns))
                clinical_row = clinical.loc[[pid]]
            else:
                clinical_row = read_clinical_row(clinical, pid, columns)
    for s in usable:
        if not models[s] and not pmodels.get(s):
            raise InputError(f"the {s} model needs a clinical row (the run has only a fusion model)", patient=pid,
                             file=run.model_dir(s, "fusion"), expected="--clinical FILE with this patient's row")
    thr = float(cfg.prediction.detector_threshold if score_threshold is None else score_threshold)
    # the stage draws each patient's negative slices from one generator over its sequences in order
    rng = np.random.default_rng([cfg.seed, int(hashlib.sha1(pid.encode()).hexdigest()[:8], 16)])
    pp = cfg.preprocess
    # a validation patient of the run kept at least preprocess.val_negatives tumour-free slices
    negatives = pp.negatives_per_patient
    split_path = Path(run_dir) / "preprocessed" / "split.json"
    if split_path.is_file() and pid in set(json.loads(split_path.read_text()).get("val", [])):
        negatives = max(negatives, pp.val_negatives)
    preds = {}
    for s in present:
        series = pin.patient.series[s]
        volume = preprocess_volume(series, pp) if s in usable else None
        masks = volume.masks if volume is not None else _resampled_masks(series, pp)
        pos, neg = select_slices(masks, neighbours=pp.neighbours, slice_step=pp.slice_step,
                                 negatives=negatives,
                                 body_fraction=volume.body_fraction if volume is not None else _body(series, pp),
                                 rng=rng)
        if s not in usable:
            continue
        need = any(s in pm.sequences for pm in pmodels.get("combined", {}).values())
        preds[s] = predict_sequence(run, s, series, volume, models[s], clinical_row, (pos, neg), device, thr, pid,
                                    patient_models=pmodels.get(s, {}), need_inputs=need,
                                    detect=detect_contoured or not pos or cfg.prediction.slices != "contours",
                                    explain=explain)
        log.info("%s %s: %s slices, %s", pid, s, preds[s].slice_rule,
                 ", ".join(f"{m} {v['score']:.3f} ({v['risk_group']})" for m, v in preds[s].scores.items()))
    return PatientPrediction(pid, pin.source, Path(run_dir), preds, missing, run.untrained, _combined(run, preds),
                             str(clinical) if clinical is not None else None, thr, pin,
                             time.perf_counter() - t0,
                             _combined_patient(pmodels.get("combined", {}), preds, pid, clinical_row))


def load_patient_models(run: RunModels, usable: list[str], with_clinical: bool) -> dict[str, dict]:
    """{sequence | "combined": {model: PatientModel}} of the run's patient-level models that can
    score this patient (``patient_fusion`` only with a clinical row; the combined models when the
    patient has at least one of their sequences)."""
    from npc_msom.prediction.patient import PATIENT_MODELS, load_patient_model  # noqa: PLC0415
    out: dict[str, dict] = {}
    for where in [*usable, "combined"]:
        for m in PATIENT_MODELS:
            if m == "patient_fusion" and not with_clinical:
                continue
            if not (run.run_dir / "prediction" / where / m / "model.json").is_file():
                continue
            pm = load_patient_model(run.run_dir, where, m)
            if where == "combined" and not set(pm.sequences) & set(usable):
                continue
            out.setdefault(where, {})[m] = pm
    return out


def _combined_patient(pmodels: dict, preds: dict[str, SequencePrediction], pid: str,
                      clinical_row: pd.DataFrame | None) -> dict:
    """The multi-sequence patient models' scores: a sequence the patient lacks (or that scored no
    slice) enters as the training patients' mean, as stage 2 scores such patients."""
    from npc_msom.prediction.patient import PatientInputs, score_patients  # noqa: PLC0415
    out = {}
    for name, pm in pmodels.items():
        inputs, used = [], []
        for s in pm.sequences:
            sp = preds.get(s)
            if sp is not None and sp.patient_inputs is not None and sp.patient_inputs.ids:
                inputs.append(sp.patient_inputs)
                used.append(s)
            else:   # no rows: every group of the sequence is imputed with the training mean
                widths = {g.split(":")[0]: w for g, w in pm.image.widths.items() if g.endswith(f":{s}")}
                inputs.append(PatientInputs(s, [], {g: np.zeros((0, w)) for g, w in widths.items()}, pd.DataFrame()))
        if not used:
            continue
        p_img, p_fus, _ = score_patients(inputs, [pid], pm.image, pm.fusion, pm.encoder,
                                         clinical_row if pm.fusion is not None else None)
        score = float((p_fus if pm.fusion is not None else p_img)[0])
        out[name] = {"model": name, "sequences": used, "score": round(score, 6), "cutoff": pm.cutoff,
                     "cutoff_method": "youden_train (stage 2, prediction/combined/" + name + ")",
                     "risk_group": "high" if score >= pm.cutoff else "low",
                     "note": "" if len(used) == len(pm.sequences) else
                     f"scored from {'/'.join(used)}; {'/'.join(x for x in pm.sequences if x not in used)} "
                     "set to the training mean"}
    return out


def _resampled_masks(series: Series, pp) -> dict:
    """Contours on the 1 mm grid of a sequence that is not scored (only to draw the stage's negatives)."""
    if not series.masks:
        return {}
    from npc_msom.preprocess.resample import isotropic_reference, resample_mask  # noqa: PLC0415
    ref = isotropic_reference(series.geometry, pp.spacing_mm)
    return {k: resample_mask(m, series, ref) for k, m in series.masks.items()}


def _body(series: Series, pp):
    """(Z,) body fraction per 1 mm plane of a sequence that is not scored (to draw the stage's negatives)."""
    if not series.masks:
        return None
    from npc_msom.preprocess.volume import body_fraction_on_grid  # noqa: PLC0415
    return body_fraction_on_grid(series, pp)


# ---- writing ------------------------------------------------------------------------------------

def write_prediction(pred: PatientPrediction, out_dir: str | Path) -> dict:
    """Write every output into a temporary folder beside ``out_dir`` and rename it into place (an
    existing ``out_dir`` is replaced only once the new one is complete). Returns the summary."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for seq, sp in pred.sequences.items():
            d = tmp / seq
            d.mkdir()
            _csv(sp.detections, d / "detections.csv")
            slices = pd.DataFrame({"slice_index": sp.scored, "z_mm": [float(sp.volume.z_mm[z]) for z in sp.scored],
                                   **{f"probability_{m}": p for m, p in sp.probabilities.items()}})
            _csv(slices, d / "slices.csv")
            write_overlay(pred, sp, d / "overlay.png")
            for model in sp.saliency:
                write_saliency_nifti(sp, model, d / f"saliency_{model}.nii.gz")
                write_saliency_overlay(pred, sp, model, d / f"saliency_{model}.png")
            if pred.source == "dicom":
                write_rtstruct_prediction(pred, sp, d / "RTSTRUCT_pred.dcm")
            else:
                write_nifti_prediction(sp, d / "pred_mask.nii.gz")
        summary = pred.summary()
        write_json_atomic(tmp / "summary.json", summary)
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, float_format="%.6g")


def _grid_sop_uids(s) -> tuple[list[str], list[int]]:
    """Per slice of a DICOM series' regular grid: the SOPInstanceUID to reference, and the grid
    slices interpolated where the series has no slice (they must not get contours)."""
    uids, interpolated = [], []
    for g, (k0, k1, w) in enumerate(s.plan):
        if w == 0.0:
            uids.append(s.files[k0].sop_uid)
        else:
            uids.append(s.files[k0 if w < 0.5 else k1].sop_uid)
            interpolated.append(g)
    return uids, interpolated


def rtstruct_masks(pred: PatientPrediction, sp: SequencePrediction) -> dict[str, np.ndarray]:
    """The masks the RTSTRUCT holds: those of the series grid, without the interpolated slices."""
    _, interpolated = _grid_sop_uids(pred.input.entry.dicom[sp.sequence].series)
    out = {}
    for name, m in sp.masks.items():
        m = m.copy()
        m[interpolated] = False
        out[name] = m
    return out


def write_rtstruct_prediction(pred: PatientPrediction, sp: SequencePrediction, path: Path) -> Path:
    """The predicted masks as an RTSTRUCT on the patient's own series (``cohort.dicom_write``)."""
    from datetime import datetime  # noqa: PLC0415

    from npc_msom import __version__  # noqa: PLC0415
    from npc_msom.cohort.dicom import read_header  # noqa: PLC0415
    from npc_msom.cohort.dicom_write import WrittenSeries, mask_to_contours, write_rtstruct  # noqa: PLC0415
    s = pred.input.entry.dicom[sp.sequence].series
    uids, _ = _grid_sop_uids(s)
    hdr = read_header(s.files[0].path, patient=pred.patient_id)
    g = sp.series.geometry
    ws = WrittenSeries(series_uid=s.series_uid, study_uid=s.study_uid, frame_of_reference_uid=s.frame_of_reference_uid,
                       patient_id=str(getattr(hdr, "PatientID", "") or ""),
                       sop_class_uid=s.files[0].sop_class_uid, sop_instance_uids=tuple(uids),
                       paths=tuple(f.path for f in s.files), positions_mm=tuple(tuple(f.ipp) for f in s.files))
    rois = {PRED_ROI_NAMES[k]: mask_to_contours(m, g) for k, m in rtstruct_masks(pred, sp).items()
            if k in PRED_ROI_NAMES}
    now = datetime.now()
    tags = {"InstanceCreationDate": now.strftime("%Y%m%d"), "InstanceCreationTime": now.strftime("%H%M%S"),
            "StructureSetDate": now.strftime("%Y%m%d"), "StructureSetTime": now.strftime("%H%M%S"),
            "Manufacturer": "npc-msom", "StationName": "", "ManufacturerModelName": f"npc-msom predict {__version__}",
            "SeriesNumber": 9000 + list(pred.sequences).index(sp.sequence)}
    for key in ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "PatientBirthDate",
                "PatientSex"):
        value = getattr(hdr, key, None)
        tags[key] = "" if value is None else value
    seed = f"npc-msom-predict|{s.series_uid}|{pred.run_dir.resolve()}|{pred.score_threshold}|{now.isoformat()}"
    return write_rtstruct(path, ws, rois, geometry=g, seed_uid=seed, structure_set_label=f"{sp.sequence}_PRED"[:16],
                          colors=PRED_ROI_COLOURS, patient_name=str(getattr(hdr, "PatientName", "") or ""),
                          extra_tags=tags, roi_algorithm="AUTOMATIC", implementation_version="NPCMSOM_PRED_1")


def write_nifti_prediction(sp: SequencePrediction, path: Path) -> Path:
    """The predicted masks as one label image on the series' grid (1 = GTV, 2 = GTVln; GTV wins
    where both were predicted)."""
    import SimpleITK as sitk  # noqa: PLC0415
    labels = np.zeros(sp.masks[next(iter(sp.masks))].shape if sp.masks else
                      tuple(reversed(sp.series.geometry.size)), np.uint8)
    for name in ("GTVln", "GTV"):
        if name in sp.masks:
            labels[sp.masks[name]] = NIFTI_LABELS[name]
    sitk.WriteImage(sp.series.to_sitk(labels), str(path), useCompression=True)
    return path


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no screen needed)."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def _save_png(fig, path: Path) -> Path:
    """The overlays' PNG (tight layout, 110 dpi); the figure is closed."""
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    _pyplot().close(fig)
    return path


def write_saliency_nifti(sp: SequencePrediction, model: str, path: Path) -> Path:
    """The model's Grad-CAM maps of the scored slices, on the series' own grid (float32, zero off
    the scored slices), scaled so that the patient's maximum is 1."""
    import SimpleITK as sitk  # noqa: PLC0415

    from npc_msom.explain import saliency_to_grid  # noqa: PLC0415
    maps = sp.saliency[model]["maps"]
    top = float(maps.max()) if maps.size else 0.0
    grid = saliency_to_grid({z: maps[i] / top if top > 0 else maps[i] for i, z in enumerate(sp.scored)},
                            sp.volume, sp.series)
    sitk.WriteImage(sp.series.to_sitk(grid.astype(np.float32)), str(path), useCompression=True)
    return path


def write_saliency_overlay(pred: PatientPrediction, sp: SequencePrediction, model: str, path: Path,
                           max_panels: int = 4) -> Path:
    """The slices with the largest shares of the model's score: Grad-CAM as a colour map over the
    MR slice, contours (red) and detections (yellow GTV, blue GTVln) drawn."""
    plt = _pyplot()
    from npc_msom.detection.figures import CLASS_COLOURS  # noqa: PLC0415
    e = sp.saliency[model]
    order = np.argsort(-e["shares"], kind="stable")[:max_panels]
    top = float(e["maps"].max()) or 1.0
    fig, axes = plt.subplots(1, max(1, len(order)), figsize=(3.0 * max(1, len(order)), 3.6), squeeze=False)
    for ax, i in zip(axes[0], order):
        z = sp.scored[i]
        ax.imshow(sp.volume.images[z], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.imshow(e["maps"][i] / top, cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear")
        if sp.slice_rule == "contours":
            m = contour_slice_masks(sp.volume, z)
            for name in ("GTV", "GTVln"):
                if m[name].any():
                    ax.contour(m[name].astype(float), levels=[0.5], colors=["red"], linewidths=0.8)
        for name, mp in sp.masks_px.items():
            if mp[z].any():
                ax.contour(mp[z].astype(float), levels=[0.5], colors=[CLASS_COLOURS.get(name, "lime")],
                           linewidths=0.8)
        inside = e["inside"][i]
        ax.set_title(f"z {sp.volume.z_mm[z]:.0f} mm, p {sp.probabilities[model][i]:.2f}\n"
                     f"share {e['shares'][i]:.0%}, in tumour {inside:.0%}" if np.isfinite(inside) else
                     f"z {sp.volume.z_mm[z]:.0f} mm, p {sp.probabilities[model][i]:.2f}", fontsize=7)
        ax.axis("off")
    for ax in axes[0][len(order):]:
        ax.axis("off")
    fig.suptitle(f"{pred.patient_id} {sp.sequence} {model}: Grad-CAM of the MSOM logit (slices with the largest "
                 f"shares of the score {sp.scores[model]['score']:.2f})", fontsize=8)
    return _save_png(fig, path)


def write_overlay(pred: PatientPrediction, sp: SequencePrediction, path: Path, max_panels: int = 4) -> Path:
    """The slices with the strongest detections (else the scored ones), predicted GTV in yellow and
    GTVln in blue (contours in red where the patient has them), scores in the titles."""
    plt = _pyplot()
    from npc_msom.detection.figures import CLASS_COLOURS  # noqa: PLC0415
    best = sp.detections.groupby("slice_index")["score"].max().sort_values(ascending=False)
    show = list(best.index[:max_panels])
    for z in sp.scored:
        if len(show) >= max_panels:
            break
        if z not in show:
            show.append(z)
    show = sorted(show)[:max_panels] or [int(len(sp.volume.images) // 2)]
    fig, axes = plt.subplots(1, len(show), figsize=(3.0 * len(show), 3.5), squeeze=False)
    first = next(iter(sp.probabilities), None)
    for ax, z in zip(axes[0], show):
        ax.imshow(sp.volume.images[z], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        for name, m in sp.masks_px.items():
            if m[z].any():
                ax.contour(m[z].astype(float), levels=[0.5], colors=[CLASS_COLOURS.get(name, "lime")], linewidths=1.0)
        title = f"z {sp.volume.z_mm[z]:.0f} mm"
        if z in best.index:
            title += f", det {best[z]:.2f}"
        if first is not None and z in sp.scored:
            title += f", p {sp.probabilities[first][sp.scored.index(z)]:.2f}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    risk = "; ".join(f"{m} {v['score']:.2f} ({v['risk_group']}, cut-off {v['cutoff']:.2f})"
                     for m, v in sp.scores.items() if np.isfinite(v["score"]))
    fig.suptitle(f"{pred.patient_id} {sp.sequence} ({sp.slice_rule} slices): MSOM risk {risk or 'n/a'}\n"
                 f"predicted GTV yellow, GTVln blue (score >= {pred.score_threshold:g})", fontsize=8)
    return _save_png(fig, path)


def predict_patient(run_dir: str | Path, patient_dir: str | Path, out_dir: str | Path,
                    clinical: str | Path | None = None, *, score_threshold: float | None = None,
                    device: torch.device | str | None = None, saliency: bool = True) -> dict:
    """Score one new patient with a trained run and write its outputs to ``out_dir``; returns the
    summary (summary.json). Bad input raises an InputError before anything is written.
    saliency: the slice models' Grad-CAM maps (NIfTI on the series grid and an overlay per model)."""
    pred = predict(run_dir, patient_dir, clinical, score_threshold=score_threshold, device=device, saliency=saliency)
    return write_prediction(pred, out_dir)
