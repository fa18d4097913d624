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
    res = pipeline.preprocess_stage(config, cohort, run_dir)
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
                                       coco_val=Path(args.coco_val), out_dir=Path(args.out), resume=args.resume)
    else:
        if not (args.run and args.sequence):
            raise NpcMsomError("give --run DIR --sequence SEQ, or --coco-images/--coco-train/--coco-val/--out")
        res = detection.train_detector_for_run(config, Path(args.run), args.sequence, resume=args.resume)
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
    for model in ([args.model] if args.model else config.prediction.models):
        r = prediction.train_predictor_for_run(config, Path(args.run), args.sequence, model, device=device,
                                               force=args.force)
        auc = r.metrics.get("auc") or {}
        text = f"AUC {auc['auc']:.3f} ({auc['ci_low']:.3f}-{auc['ci_high']:.3f})" if auc else "AUC n/a"
        print(f"{args.sequence} {model}: validation {text}, {r.metrics['n_scored']} patients"
              f"{' (up to date, skipped)' if r.skipped else ''} -> {r.out_dir}")
    return 0


def cmd_run(args) -> int:
    from npc_msom import pipeline
    stages = tuple(args.stages.split(",")) if args.stages else pipeline.STAGES
    unknown = set(stages) - set(pipeline.STAGES)
    if unknown:
        raise NpcMsomError(f"--stages: unknown stage(s) {sorted(unknown)}; known: {', '.join(pipeline.STAGES)}")
    res = pipeline.run(_config(args), args.cohort, args.out, clinical=args.clinical, stages=stages,
                       force=tuple(args.force or ()))
    print(f"run finished: {res.run_dir}")
    for stage, info in res.stages.items():
        print(f"  {stage}: {info}")
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
    common(sp, cohort=True)
    sp.set_defaults(func=cmd_preprocess)

    sp = sub.add_parser("train-detector", help="train and evaluate Mask R-CNN for one sequence")
    sp.add_argument("--run", help="run folder holding preprocessed/<sequence>/")
    sp.add_argument("--sequence", choices=["T1WI", "T2WI", "CE-T1WI"])
    sp.add_argument("--coco-images", help="folder that the COCO file names are relative to")
    sp.add_argument("--coco-train")
    sp.add_argument("--coco-val")
    sp.add_argument("--out", help="output folder (with --coco-*)")
    sp.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    sp.add_argument("--sync-bn", action="store_true",
                    help="under torchrun on GPUs: BatchNorm statistics over all processes (detection.sync_bn)")
    common(sp)
    sp.set_defaults(func=cmd_train_detector)

    sp = sub.add_parser("train-predictor", help="stage 2: MSOM classifier(s) of one sequence, transferred from its detector")
    sp.add_argument("--run", required=True, help="run folder with preprocessed/ and detection/ "
                    "(its config.yaml is the default --config)")
    sp.add_argument("--sequence", choices=["T1WI", "T2WI", "CE-T1WI"])
    sp.add_argument("--model", choices=["mri", "fusion"], help="default: every model of prediction.models")
    sp.add_argument("--force", action="store_true", help="redo a model made with other settings")
    sp.add_argument("--cv", type=int, default=0, metavar="K", help="repeated K-fold CV of every sequence x model")
    sp.add_argument("--repeats", type=int, default=1, metavar="R")
    common(sp)
    sp.set_defaults(func=cmd_train_predictor)

    sp = sub.add_parser("run", help="run every stage in order (resumable)")
    sp.add_argument("--cohort", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--stages", help="comma-separated subset, e.g. preprocess,detection (default: all)")
    sp.add_argument("--force", action="append", metavar="STAGE", help="redo a stage whose artifacts were made "
                    "with other settings (prediction)")
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
