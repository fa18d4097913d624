"""The ``npc-msom`` command: one sub-command per stage, no logic of its own."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from npc_msom.errors import NpcMsomError


def _config(args):
    from npc_msom.config import load_config
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "skip_bad", False):
        overrides.append("cohort.skip_bad=true")
    return load_config(getattr(args, "config", None), overrides)


def cmd_synth(args) -> int:
    import dataclasses
    from npc_msom.synth import write_cohort
    cfg = _config(args).synth
    changes = {k: v for k, v in (("patients", args.patients), ("seed", args.seed)) if v is not None}
    summary = write_cohort(Path(args.out), dataclasses.replace(cfg, **changes))
    print(summary.describe() if hasattr(summary, "describe") else summary)
    return 0


def cmd_inspect(args) -> int:
    from npc_msom.cohort import inspect_cohort
    _, text = inspect_cohort(args.dir, _config(args).cohort, clinical=args.clinical)
    print(text)
    return 0


def cmd_preprocess(args) -> int:
    from npc_msom import pipeline
    config = _config(args)
    run_dir = pipeline.start_run(config, args.out)
    cohort = pipeline.load_cohort_stage(config, args.cohort, run_dir, args.clinical)
    res = pipeline.preprocess_stage(config, cohort, run_dir, force=args.force)
    print(f"preprocessed {len(cohort.patient_ids)} patients into {res.out_dir}: images {res.n_images}")
    for s in res.skipped:
        print(f"  skipped: {s}")
    return 0


def cmd_train_detector(args) -> int:
    import dataclasses
    from npc_msom import detection
    config = _config(args)
    if args.sync_bn:
        config = dataclasses.replace(config, detection=dataclasses.replace(config.detection, sync_bn=True))
    if args.coco_train:
        if not (args.coco_images and args.coco_val and args.out):
            raise NpcMsomError("--coco-train needs --coco-images, --coco-val and --out")
        res = detection.train_detector(config, images_dir=Path(args.coco_images), coco_train=Path(args.coco_train),
                                       coco_val=Path(args.coco_val), out_dir=Path(args.out), resume=args.resume,
                                       force=args.force)
    else:
        if not (args.run and args.sequence):
            raise NpcMsomError("give --run DIR --sequence SEQ, or --coco-images/--coco-train/--coco-val/--out")
        res = detection.train_detector_for_run(config, Path(args.run), args.sequence, resume=args.resume,
                                               force=args.force)
    print(getattr(res, "metrics", res))
    return 0


def cmd_train_predictor(args) -> int:
    from npc_msom import prediction
    from npc_msom.runtime import resolve_device
    if not args.config and (Path(args.run) / "config.yaml").is_file():
        args.config = str(Path(args.run) / "config.yaml")  # the run's own settings, unless told otherwise
    config = _config(args)
    if args.cv:
        res = prediction.cv_for_run(config, Path(args.run), args.cv, args.repeats)
        for name, m in res["models"].items():
            sd = m["auc_sd_repeats"]
            print(f"CV {args.cv}x{args.repeats} {name}: AUC {m['auc_mean']:.3f}" + (f" +- {sd:.3f}" if sd else ""))
        return 0
    if not args.sequence:
        raise NpcMsomError("give --sequence SEQ (or --cv K for cross-validation of every sequence)")
    device = resolve_device(config.device)
    models = [args.model] if args.model else list(config.prediction.models)
    results = []
    for model in [m for m in models if m in prediction.MODELS]:
        results.append(prediction.train_predictor_for_run(config, Path(args.run), args.sequence, model,
                                                          device=device, force=args.force))
    if any(m in prediction.PATIENT_MODELS for m in models):
        import dataclasses  # noqa: PLC0415
        cfg = dataclasses.replace(config, prediction=dataclasses.replace(
            config.prediction, models=tuple(m for m in models if m in prediction.PATIENT_MODELS)))
        results += list(prediction.train_patient_models_for_run(cfg, Path(args.run), [args.sequence], device=device,
                                                                force=args.force).values())
    for r in results:
        model = r.model
        auc = r.metrics.get("auc") or {}
        text = f"AUC {auc['auc']:.3f} ({auc['ci_low']:.3f}-{auc['ci_high']:.3f})" if auc else "AUC n/a"
        print(f"{args.sequence} {model}: validation {text}, {r.metrics['n_scored']} patients"
              f"{' (up to date, skipped)' if r.skipped else ''} -> {r.out_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from npc_msom import pipeline
    if not args.config and (Path(args.run) / "config.yaml").is_file():
        args.config = str(Path(args.run) / "config.yaml")  # the run's own settings, unless told otherwise
    res = pipeline.evaluation_stage(_config(args), Path(args.run), force=args.force)
    print(f"evaluation: {res['status']}" + (f" ({res['reason']})" if res.get("reason") else "")
          + "".join(f"\n  {name}: {rec['png']}" for name, rec in res.get("figures", {}).items()))
    return 0


def cmd_report(args) -> int:
    from npc_msom import pipeline
    print(f"report: {pipeline.report_stage(Path(args.run))}")
    return 0


def cmd_weights_fetch(args) -> int:
    from npc_msom.detection.weights import cache_dir, fetch_imagenet_weights
    path = fetch_imagenet_weights(args.backbone)
    print(f"{path} (sha256 checked against torchvision's published hash)\n"
          f"copy it into the torch cache of the machine that trains: $TORCH_HOME/hub/checkpoints/ "
          f"(default ~/.cache/torch/hub/checkpoints/; here {cache_dir()}), then use detection.weights: imagenet")
    return 0


def cmd_run(args) -> int:
    from npc_msom import pipeline
    stages = tuple(args.stages.split(",")) if args.stages else pipeline.STAGES
    unknown = set(stages) - set(pipeline.STAGES)
    if unknown:
        raise NpcMsomError(f"--stages: unknown stage(s) {sorted(unknown)}; known: {', '.join(pipeline.STAGES)}")
    unknown = set(args.force or ()) - set(pipeline.FORCEABLE)
    if unknown:
        raise NpcMsomError(f"--force: unknown stage(s) {sorted(unknown)}; known: {', '.join(pipeline.FORCEABLE)}")
    res = pipeline.run(_config(args), args.cohort, args.out, clinical=args.clinical, stages=stages,
                       force=tuple(args.force or ()))
    print(f"run finished: {res.run_dir}")
    print(_headline(Path(res.run_dir), res.stages))
    return 0


def _headline(run_dir: Path, stages: dict) -> str:
    """The report's path and the numbers a reader looks for first (from ``metrics.json``)."""
    import json
    lines = []
    secs = stages.get("seconds") or {}
    if secs:
        lines.append("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items())
                     + f" (total {sum(secs.values()):.0f})")
    m_path = run_dir / "metrics.json"
    if m_path.is_file():
        m = json.loads(m_path.read_text())
        for seq, ap in (m.get("detection_ap50") or {}).items():
            if isinstance(ap, dict):
                lines.append(f"  detection {seq}: GTV AP@0.5 {ap.get('GTV_ap50')}, GTVln AP@0.5 {ap.get('GTVln_ap50')}")
        models = {k: v for k, v in (m.get("models_validation_auc") or {}).items() if v.get("auc") is not None}
        stage2 = {k: v for k, v in models.items() if v.get("group") != "comparison"} or models
        if stage2:
            k, v = max(stage2.items(), key=lambda kv: kv[1]["auc"])
            ci = f" ({v['ci_low']:.3f}-{v['ci_high']:.3f})" if v.get("ci_low") is not None else ""
            oracle = f"; oracle {v['oracle_auc']:.3f}" if v.get("oracle_auc") is not None else ""
            lines.append(f"  best MSOM model on the validation patients: {k}, AUC {v['auc']:.3f}{ci}{oracle}")
        for endpoint, r in ((m.get("survival") or {}).get("validation") or {}).items():
            if r.get("p_value") is not None:
                lines.append(f"  {m.get('survival_model')} risk groups, {endpoint}: log-rank p {r['p_value']:.3g} "
                             f"(validation patients, training cut-off)")
    report = run_dir / "report.html"
    lines.append(f"  report: {report}" if report.is_file() else "  no report yet (run the report stage)")
    return "\n".join(lines)


def cmd_validate(args) -> int:
    from npc_msom.runtime import setup_logging
    from npc_msom.validate import validate_cohort
    # the validation's own log (and never the validated run's log.txt, which stays untouched)
    setup_logging(log_file=Path(args.out) / "log.txt")
    s = validate_cohort(args.run, args.cohort, args.out, clinical=args.clinical, skip_bad=args.skip_bad,
                        allow_overlap=args.allow_overlap, recalibrate=args.recalibrate, device=args.device)
    for k, v in s["models"].items():
        auc = (v["external_auc"] or {}).get("auc")
        print(f"{k}: external AUC {'n/a' if auc is None else f'{auc:.3f}'} (n {v['n_scored']})")
    print(Path(args.out) / "report.html")
    return 0


def cmd_predict(args) -> int:
    from npc_msom.predict import predict_patient
    s = predict_patient(args.run, args.patient, args.out, clinical=args.clinical,
                        score_threshold=args.score_threshold, device=args.device, saliency=not args.no_saliency)
    for seq, info in s["sequences"].items():
        risk = ", ".join(f"{m} {v['score']:.3f} ({v['risk_group']}, cut-off {v['cutoff']:.3f})"
                         for m, v in info["models"].items())
        print(f"{s['patient_id']} {seq}: {info['slice_rule']} slices ({info['n_slices_scored']}): {risk}")
    c = s["combined"]
    if c:
        print(f"{s['patient_id']} combined ({c['from']}, {'+'.join(c['sequences'])}): {c['score']:.3f} "
              f"({c['risk_group']}, cut-off {c['cutoff']:.3f})")
    if s["missing_sequences"]:
        print(f"missing sequence(s): {', '.join(s['missing_sequences'])}")
    print(f"written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npc-msom", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, cohort=False):
        sp.add_argument("--config", help="YAML preset, e.g. configs/demo.yaml")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. preprocess.image_size=256")
        if cohort:
            sp.add_argument("--clinical", help="clinical table (CSV/XLSX); default: clinical.csv/.xlsx in the cohort folder")
            sp.add_argument("--skip-bad", action="store_true", help="record bad patients as skipped instead of stopping")

    sp = sub.add_parser("synth", help="write the synthetic cohort (DICOM + RTSTRUCT + clinical.csv + truth.csv)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--patients", type=int)
    sp.add_argument("--seed", type=int)
    common(sp)
    sp.set_defaults(func=cmd_synth)

    sp = sub.add_parser("inspect", help="list, per patient, the sequences and structures found and what was skipped")
    sp.add_argument("dir")
    common(sp, cohort=True)
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("preprocess", help="cohort -> 1 mm slices, COCO files and split in a run folder")
    sp.add_argument("--cohort", required=True)
    sp.add_argument("--out", required=True, help="run folder, e.g. runs/demo")
    sp.add_argument("--force", action="store_true", help="make a new split.json when the split settings or "
                    "patients changed")
    common(sp, cohort=True)
    sp.set_defaults(func=cmd_preprocess)

    sp = sub.add_parser("train-detector", help="train and evaluate Mask R-CNN for one sequence")
    sp.add_argument("--run", help="run folder holding preprocessed/<sequence>/")
    sp.add_argument("--sequence", choices=["T1WI", "T2WI", "CE-T1WI"])
    sp.add_argument("--coco-images", help="folder that the COCO file names are relative to")
    sp.add_argument("--coco-train")
    sp.add_argument("--coco-val")
    sp.add_argument("--out", help="output folder (with --coco-*)")
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint (only one made "
                    "with the same settings and inputs)")
    sp.add_argument("--force", action="store_true", help="with --resume: train from the start when the last "
                    "checkpoint was made with other settings")
    sp.add_argument("--sync-bn", action="store_true",
                    help="under torchrun on GPUs: BatchNorm statistics over all processes (detection.sync_bn)")
    common(sp)
    sp.set_defaults(func=cmd_train_detector)

    sp = sub.add_parser("train-predictor", help="stage 2: MSOM classifier(s) of one sequence, transferred from its detector")
    sp.add_argument("--run", required=True, help="run folder with preprocessed/ and detection/ "
                    "(its config.yaml is the default --config)")
    sp.add_argument("--sequence", choices=["T1WI", "T2WI", "CE-T1WI"])
    sp.add_argument("--model", choices=["mri", "fusion", "patient", "patient_fusion"],
                    help="default: every model of prediction.models")
    sp.add_argument("--force", action="store_true", help="redo a model made with other settings")
    sp.add_argument("--cv", type=int, default=0, metavar="K", help="repeated K-fold CV of every sequence x model")
    sp.add_argument("--repeats", type=int, default=1, metavar="R")
    common(sp)
    sp.set_defaults(func=cmd_train_predictor)

    sp = sub.add_parser("evaluate", help="Table 3, ROC, calibration, decision and Kaplan-Meier figures of a run")
    sp.add_argument("--run", required=True, help="run folder (its config.yaml is the default --config)")
    sp.add_argument("--force", action="store_true", help="redo it even when up to date")
    common(sp)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("report", help="report.html (self-contained) and metrics.json of a run")
    sp.add_argument("--run", required=True, help="run folder")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("weights", help="backbone weights files (the only command that downloads)")
    wsub = sp.add_subparsers(dest="weights_command", required=True)
    wp = wsub.add_parser("fetch", help="download torchvision's ImageNet weights of a backbone into the torch "
                         "cache (hash checked), for detection.weights: imagenet")
    wp.add_argument("backbone", choices=["resnet18", "resnet34", "resnet50"])
    wp.set_defaults(func=cmd_weights_fetch)


    sp = sub.add_parser("predict", help="score one new patient with a trained run: detections, MSOM risk, "
                        "overlays, predicted contours as RTSTRUCT (DICOM) or NIfTI")
    sp.add_argument("--run", required=True, help="trained run folder (config.yaml, detection/, prediction/)")
    sp.add_argument("--patient", required=True, help="the patient's folder: DICOM MR series (+ RTSTRUCT) or NIfTI")
    sp.add_argument("--clinical", help="clinical table (CSV/XLSX) with the patient's row: adds the fusion models")
    sp.add_argument("--out", required=True, help="output folder (written complete or not at all)")
    sp.add_argument("--score-threshold", type=float, help="detections kept in the masks (default: the run's "
                    "prediction.detector_threshold)")
    sp.add_argument("--device", help="cpu, cuda, ... (default: the run's device setting)")
    sp.add_argument("--no-saliency", action="store_true", help="skip the Grad-CAM maps of the slice models")
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("validate", help="external validation: score a whole new cohort with a trained run's "
                        "frozen models (nothing refitted) and report internal against external")
    sp.add_argument("--run", required=True, help="trained run folder")
    sp.add_argument("--cohort", required=True, help="the new cohort (any layout npc-msom run reads)")
    sp.add_argument("--clinical", help="its clinical table with msom outcomes (default: clinical.csv/.xlsx in the cohort)")
    sp.add_argument("--out", required=True, help="output folder (resumable: a rerun continues where it stopped)")
    sp.add_argument("--skip-bad", action="store_true", help="skip (and list) bad patients instead of stopping")
    sp.add_argument("--allow-overlap", action="store_true", help="score patients that are also in the run's own "
                    "cohort (by PatientID) instead of excluding them")
    sp.add_argument("--recalibrate", choices=["intercept", "intercept+slope"],
                    help="also show the main models recalibrated on the external cohort (labelled as such: fitted "
                         "on its outcomes, so not a validation)")
    sp.add_argument("--device", help="cpu, cuda, ... (default: the run's device setting)")
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("run", help="run every stage in order (resumable)")
    sp.add_argument("--cohort", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--stages", help="comma-separated subset, e.g. preprocess,detection (default: all)")
    sp.add_argument("--force", action="append", metavar="STAGE", help="redo a stage whose artifacts were made "
                    "with other settings (preprocess: the split; detection; prediction; evaluation); repeatable")
    common(sp, cohort=True)
    sp.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except NpcMsomError as e:
        print(f"npc-msom {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
