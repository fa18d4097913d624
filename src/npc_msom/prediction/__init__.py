"""Stage 2: MSOM prediction by transfer from the detector, with clinical early fusion.

Public API::

    train_predictor_for_run(config, run_dir, sequence, model="mri"|"fusion", force=False) -> PredictorResult
    combine_for_run(config, run_dir) -> {"mean": PredictorResult, "stack": PredictorResult}
    cv_for_run(config, run_dir, folds, repeats) -> dict          (finetune=head)
    prediction_stage(config, run_dir, sequences=None, force=False) -> dict   (all of the above, in order)
    ClinicalEncoder, MSOMClassifier, MSOMHead, transfer_from_detector
    patient_table / model_metrics / write_scores / read_scores: the format every MSOM model writes

Where we differ from the study (and why) is in ``docs/prediction.md``.
"""
from __future__ import annotations

from pathlib import Path

from npc_msom.prediction.clinical import ClinicalEncoder
from npc_msom.prediction.combined import combine_for_run
from npc_msom.prediction.cv import cv_for_run
from npc_msom.prediction.model import MSOMClassifier, MSOMHead, transfer_from_detector
from npc_msom.prediction.patient import PATIENT_MODELS, train_patient_models_for_run
from npc_msom.prediction.scores import model_metrics, patient_table, read_scores, write_scores
from npc_msom.prediction.stage import MODELS, PredictorResult, train_predictor_for_run


def prediction_stage(config, run_dir: str | Path, sequences=None, *, force: bool = False, device=None) -> dict:
    """Every sequence with a trained detector (or any, with init=scratch) x every model, then the
    combined model, then CV when ``prediction.cv_folds`` > 1. Returns {name: PredictorResult | dict}."""
    run_dir = Path(run_dir)
    out: dict = {}
    from npc_msom.prediction.patient import patient_inputs, patient_models_done  # noqa: PLC0415
    from npc_msom.runtime import resolve_device  # noqa: PLC0415
    dev = resolve_device(config.device) if device is None else device
    inputs: dict = {}  # each sequence's patient vectors, computed once for its own and the combined models
    present = [s for s in (sequences or config.preprocess.sequences)
               if (run_dir / "preprocessed" / s / "slices.csv").is_file()]
    multi = [s for s in config.prediction.combine_sequences if s in present]
    for seq in present:
        needed = config.prediction.cv_folds > 1 or force or not patient_models_done(config, run_dir, [seq]) or (
            seq in multi and len(multi) > 1 and not patient_models_done(config, run_dir, multi))
        if any(m in PATIENT_MODELS for m in config.prediction.models) and needed:
            # first, so that the study's whole-slice vectors come from the same forward pass
            inputs[seq] = patient_inputs(config, run_dir, seq, dev)
        for model in config.prediction.models:
            if model in MODELS:
                out[f"{seq}/{model}"] = train_predictor_for_run(config, run_dir, seq, model, device=device,
                                                                force=force)
    for seq in present:
        for k, v in train_patient_models_for_run(config, run_dir, [seq], device=device, force=force,
                                                 cache=inputs).items():
            out[f"{seq}/{k}"] = v
    if len(multi) > 1:
        for k, v in train_patient_models_for_run(config, run_dir, multi, device=device, force=force,
                                                 cache=inputs).items():
            out[f"combined/{k}"] = v
    out.update({f"combined/{k}": v for k, v in combine_for_run(config, run_dir, force=force).items()})
    if config.prediction.cv_folds > 1:
        out["cv"] = cv_for_run(config, run_dir, config.prediction.cv_folds, config.prediction.cv_repeats, device,
                               patient_inputs=inputs)
    return out


__all__ = ["ClinicalEncoder", "MODELS", "PATIENT_MODELS", "train_patient_models_for_run", "MSOMClassifier", "MSOMHead", "PredictorResult", "combine_for_run",
           "cv_for_run", "model_metrics", "patient_table", "prediction_stage", "read_scores",
           "train_predictor_for_run", "transfer_from_detector", "write_scores"]
