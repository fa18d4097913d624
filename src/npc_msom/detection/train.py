"""Training of the detector: a plain epoch loop with MMDetection's 2x schedule, resumable, DDP-ready.

Reproducibility: every epoch reseeds torch's generator from (seed, epoch, rank), shuffles with a
sampler seeded by (seed, epoch), and augments with generators seeded by (seed, epoch, index); so an
epoch depends only on the weights, optimiser and scheduler states at its start, and a run resumed
from ``checkpoint_last.pt`` reaches the same weights as an uninterrupted one (on CPU with
``detection.deterministic``).
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from npc_msom.config import Config, to_dict
from npc_msom.detection.data import CocoSlices, EpochTaggedSampler, SliceDataset, collate, read_coco
from npc_msom.detection.figures import detections_figure
from npc_msom.detection.infer import evaluate_detector
from npc_msom.detection.metrics import write_table2
from npc_msom.detection.model import amp_context, amp_dtype, build_model, model_meta, resolved_norm
from npc_msom.errors import ConfigError, InputError, TrainingError
from npc_msom.runtime import (atomic_path, check_settings, file_digest, progress, resolve_device, seed_everything,
                              settings_digest, worker_init_fn, write_json_atomic, write_text_atomic)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "npc-msom-detector/1"
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


@dataclass(frozen=True)
class DetectorResult:
    """Where a training run put its artifacts, and its validation metrics (last epoch).

    ``checkpoint_last`` is the one checkpoint every later stage reads: no checkpoint is chosen by
    validation AP, since the validation patients are the ones every later metric is reported on.
    """
    out_dir: Path
    checkpoint_last: Path
    history: Path
    metrics_path: Path
    table2: Path
    figure: Path | None
    metrics: dict
    epochs_run: int

    def to_dict(self) -> dict:
        return {f.name: (str(v) if isinstance(v, Path) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """DDP from torchrun's environment (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    log.info("DDP: rank %d of %d (%s)", rank, world, backend)
    return DistInfo(rank, world, local, True)


def convert_sync_bn(model: torch.nn.Module, det, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """The model with SyncBatchNorm in place of BatchNorm2d when ``det.sync_bn`` asks for it and it
    applies (several processes, BatchNorm in training mode), as torchvision's references do.

    Each process sees batch_size / world_size slices (1 or 2 at the study's batch 4), too few for
    batch statistics of their own. Raises ConfigError on CPU processes: PyTorch's SyncBatchNorm
    runs on GPUs only.
    """
    if not det.sync_bn:
        return model
    if not info.enabled:
        log.info("detection.sync_bn: one process, nothing to synchronise")
        return model
    if resolved_norm(det) != "batch":
        log.info("detection.sync_bn: BatchNorm statistics are frozen (loaded weights), nothing to synchronise")
        return model
    if device.type != "cuda":
        raise ConfigError(f"detection.sync_bn: PyTorch's SyncBatchNorm runs on GPUs only, these processes run "
                          f"on {device.type}; drop --sync-bn (or detection.sync_bn) for CPU training")
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    log.info("detection.sync_bn: BatchNorm statistics synchronised over %d processes", info.world_size)
    return model


def lr_factor(iteration: int, *, warmup_iters: int, warmup_ratio: float, milestones: list[int],
              gamma: float) -> float:
    """MMDetection's schedule: linear warm-up from ``warmup_ratio``, then x gamma at each milestone
    (milestones in iterations)."""
    f = gamma ** bisect.bisect_right(milestones, iteration)
    if iteration < warmup_iters:
        f *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return f


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank) % (2**63 - 1)


# Losses are copied to the host every this many iterations, not every iteration: a copy waits for
# the GPU, and the CPU could otherwise queue the next iteration's kernels meanwhile (MMDetection
# logs every 50 iterations). A non-finite loss is therefore caught up to this many iterations late,
# still before the epoch's checkpoint is written.
SYNC_EVERY = 20


def train_one_epoch(model, optimizer, scheduler, loader, device: torch.device, *, scaler=None,
                    dtype: torch.dtype | None = None, grad_clip: float = 0.0, epoch: int = 0, epochs: int = 1,
                    show_progress: bool = True, label: str = "") -> dict[str, float]:
    """One pass over ``loader``; the scheduler steps every iteration.

    dtype: autocast type (see :func:`amp_dtype`; None = full precision); ``scaler`` (a GradScaler)
    is used when given and enabled, as float16 needs.

    Returns summed losses (``loss`` and each of torchvision's five), the number of images and the
    seconds taken, for this process. Raises TrainingError on a non-finite loss.
    """
    model.train()
    names = ("loss",) + LOSS_KEYS
    sums = {k: 0.0 for k in names}
    n_images, n_iters = 0, 0
    scaling = scaler is not None and scaler.is_enabled()
    pending: list[tuple[torch.Tensor, int]] = []
    bar = progress(loader, desc=f"{label} epoch {epoch + 1}/{epochs}".strip(), total=len(loader), leave=False,
                   **({} if show_progress else {"disable": True}))

    def flush() -> None:
        rows = torch.stack([v for v, _ in pending]).cpu().tolist()
        first = n_iters - len(pending) + 1
        for i, (row, (_, n)) in enumerate(zip(rows, pending)):
            if not all(math.isfinite(v) for v in row):
                raise TrainingError(f"non-finite loss at epoch {epoch + 1}, iteration {first + i}: "
                                    f"{dict(zip(names, row))}; lower detection.lr or set detection.grad_clip")
            for k, v in zip(names, row):
                sums[k] += v * n
        pending.clear()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{rows[-1][0]:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)

    t0 = time.perf_counter()
    for images, targets in bar:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with amp_context(device, dtype):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        pending.append((torch.stack([loss.detach().float().sum()] + [
            loss_dict[k].detach().float().sum() if k in loss_dict else loss.new_zeros((), dtype=torch.float32)
            for k in LOSS_KEYS]), len(images)))
        optimizer.zero_grad(set_to_none=True)
        if scaling:
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        scheduler.step()
        n_images += len(images)
        n_iters += 1
        if len(pending) >= SYNC_EVERY:
            flush()
    if pending:
        flush()
    return {**sums, "images": float(n_images), "iterations": float(n_iters),
            "seconds": time.perf_counter() - t0}


def make_train_loader(train_set: CocoSlices, config: Config, batch_size: int, world_size: int = 1, rank: int = 0,
                      device: torch.device | None = None):
    """(dataset, sampler, loader) of the training loop: augmented samples, shuffled per epoch by a
    seeded sampler (the same one under DDP and in a single process)."""
    det = config.detection
    dataset = SliceDataset(train_set, augment=det.augment, seed=config.seed, flip_prob=det.flip_prob,
                           intensity_jitter=det.intensity_jitter)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed,
                                 drop_last=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=EpochTaggedSampler(sampler),
                        num_workers=det.workers, collate_fn=collate,
                        worker_init_fn=worker_init_fn if det.workers else None,
                        persistent_workers=det.workers > 0,
                        pin_memory=device is not None and device.type == "cuda")
    return dataset, sampler, loader


def lr_milestones(lr_steps, epochs: int, iters_per_epoch: int) -> list[int]:
    """``detection.lr_steps`` -> the iterations at which the lr falls by lr_gamma.

    A step in (0, 1) is a fraction of the ``epochs`` x ``iters_per_epoch`` schedule (rounded to an
    iteration), so that ``--set detection.epochs=20`` moves the steps with it; a whole number >= 1
    is an epoch and must lie below ``epochs``. Anything else raises ConfigError: a step past the
    end would silently never happen, and epoch steps kept from a longer schedule would cut the lr
    100x early.
    """
    out = []
    for s in lr_steps:
        s = float(s)
        if 0.0 < s < 1.0:
            out.append(int(round(s * epochs * iters_per_epoch)))
        elif s >= 1.0 and s == int(s) and s < epochs:
            out.append(int(s) * iters_per_epoch)
        else:
            raise ConfigError(f"detection.lr_steps: {s:g} does not fit a schedule of {epochs} epochs; give "
                              f"fractions of the schedule in (0, 1) (MMDetection's 2x: [0.6667, 0.9167]) or "
                              f"whole epochs from 1 to {epochs - 1}")
    if out != sorted(out):
        raise ConfigError(f"detection.lr_steps: {list(lr_steps)} must increase")
    return out


def make_scheduler(optimizer, det, iters_per_epoch: int):
    """Per-iteration LambdaLR with MMDetection's warm-up (``warmup_iters`` iterations) and steps
    (``lr_steps``: fractions of ``epochs``, or whole epochs; see :func:`lr_milestones`)."""
    milestones = lr_milestones(det.lr_steps, det.epochs, iters_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(
        it, warmup_iters=det.warmup_iters, warmup_ratio=det.warmup_ratio, milestones=milestones,
        gamma=det.lr_gamma))


# Settings that cannot change the trained weights: DataLoader processes (every sample's augmentation
# is seeded by (seed, epoch, index), not by the worker that draws it) and whether validation computes
# mask AP (metrics made with another val_masks are recomputed from the checkpoint, not retrained).
NO_EFFECT = ("workers", "val_masks")
FORCE_HINT = "--force (npc-msom train-detector --force, or npc-msom run --force detection)"


def detection_settings(config: Config, coco_train: str | Path, coco_val: str | Path, world_size: int) -> dict:
    """Everything a trained detector and its metrics depend on, as plain values (sha256 for files).

    Stored in ``checkpoint_last.pt`` and ``metrics.json`` (and its digest in Table 2); a run resumes or
    is skipped only under equal settings (see :func:`npc_msom.runtime.check_settings`). The images
    are covered through the COCO files that list them (names, sizes, annotations); their pixels are
    not hashed.
    """
    det = {k: v for k, v in to_dict(config.detection).items() if k not in NO_EFFECT}
    weights = _weights_file(config.detection)
    return {"detection": det, "seed": config.seed, "world_size": int(world_size),
            "coco_train": file_digest(coco_train), "coco_val": file_digest(coco_val),
            "weights_sha256": file_digest(weights) if weights is not None else None}


def _weights_file(det) -> Path | None:
    """The initial weights file the config names (``imagenet``: the checked torch-cache file), when
    it exists (else None: a missing file is reported by build_model, with what to do)."""
    if not det.weights:
        return None
    from npc_msom.detection.weights import resolve_weights  # noqa: PLC0415
    p = resolve_weights(det.weights, det.backbone)
    return p if p.is_file() else None


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_history(path: Path, history: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(h) + "\n" for h in history))


def train_detector(config: Config, *, images_dir: str | Path, coco_train: str | Path, coco_val: str | Path,
                   out_dir: str | Path, resume: bool = False, device: torch.device | str | None = None,
                   sequence: str | None = None, force: bool = False) -> DetectorResult:
    """Trains Mask R-CNN on a COCO set of slices and evaluates it on another.

    images_dir: the folder that the files' ``file_name`` entries are relative to. Category names of
    the validation file are matched to the training file's. Writes to ``out_dir``:
    checkpoint_last.pt (every epoch; the detector every later stage uses), history.jsonl,
    metrics.json (last epoch's validation AP), table2.csv, figures/figure2.png.
    resume: continue from out_dir/checkpoint_last.pt when it exists (or skip training when it is
    complete), but only when it was made with the same settings (:func:`detection_settings`): other
    settings raise StaleArtifactError naming them, unless ``force``, which trains from the start.
    Under torchrun (WORLD_SIZE > 1) trains with DistributedDataParallel; rank 0 writes the files.
    """
    det = config.detection
    out_dir = Path(out_dir)
    device = resolve_device(config.device) if device is None else torch.device(device)
    info = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        return _train(config, det, Path(images_dir), Path(coco_train), Path(coco_val), out_dir, resume,
                      device, info, sequence, force)
    finally:
        if info.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def _train(config, det, images_dir, coco_train, coco_val, out_dir, resume, device, info, sequence, force):
    lr_milestones(det.lr_steps, det.epochs, 1)  # a step that does not fit fails before any work
    seed_everything(config.seed, deterministic=det.deterministic)
    train_set = read_coco(coco_train, images_dir)
    val_set = read_coco(coco_val, images_dir, class_names=train_set.class_names)
    if len(train_set) == 0:
        raise InputError("no training images", file=coco_train, expected="at least one image")
    if det.max_train_images and len(train_set) > det.max_train_images:
        rng = np.random.default_rng(config.seed)
        train_set = train_set.subset(sorted(rng.choice(len(train_set), det.max_train_images, replace=False)))
    image_size = train_set.image_size()
    sequence = sequence or train_set.sequence() or "dataset"
    class_names = train_set.class_names

    model = build_model(det, num_classes=len(class_names) + 1, image_size=image_size).to(device)
    meta = model_meta(det, class_names, image_size)

    per_process = max(1, det.batch_size // info.world_size)
    total_batch = per_process * info.world_size
    # linear scaling rule when the global batch cannot be split evenly over the processes
    base_lr = det.lr * total_batch / det.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=det.momentum, weight_decay=det.weight_decay)

    _, sampler, loader = make_train_loader(train_set, config, per_process, info.world_size, info.rank, device)
    iters_per_epoch = len(loader)
    scheduler = make_scheduler(optimizer, det, iters_per_epoch)
    dtype = amp_dtype(device, det.amp)
    use_amp = dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    last_path = out_dir / "checkpoint_last.pt"
    history_path, metrics_path = out_dir / "history.jsonl", out_dir / "metrics.json"
    table2_path, figure_path = out_dir / "table2.csv", out_dir / "figures" / "figure2.png"
    start_epoch, history, last_metrics = 0, [], None
    settings = detection_settings(config, coco_train, coco_val, info.world_size)
    ckpt = None
    if resume and last_path.is_file():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ckpt:
            raise TrainingError(f"cannot resume from {last_path}: not a checkpoint_last.pt of this version "
                                f"({CHECKPOINT_FORMAT}); move it away to train from the start")
        if not check_settings(ckpt.get("settings"), settings, where=last_path, force=force,
                              how_to_force=FORCE_HINT):
            ckpt = None  # --force: other settings, so train from the start
    if ckpt is not None:
        for key in ("backbone", "class_names", "image_size", "norm", "fpn_channels"):
            if ckpt["meta"][key] != meta[key]:
                raise TrainingError(f"cannot resume from {last_path}: it has {key}={ckpt['meta'][key]!r}, "
                                    f"this run {meta[key]!r}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler.is_enabled() and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        history = list(ckpt.get("history", []))
        last_metrics = ckpt.get("metrics")
        log.info("resuming %s from epoch %d of %d", out_dir, start_epoch, det.epochs)
    elif resume and not last_path.is_file():
        log.info("no %s: training from the start", last_path)

    model = convert_sync_bn(model, det, info, device)
    ddp_model = model
    if info.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    config_dict = to_dict(config)
    if info.is_main:
        log.info("training %s detector (%s, %d px) on %d slices (%d patients), validating on %d slices; "
                 "%d epochs x %d iterations, batch %d x %d process(es), %s%s", sequence, det.backbone,
                 image_size, len(train_set), len(train_set.patients()), len(val_set), det.epochs,
                 iters_per_epoch, per_process, info.world_size, device, ", AMP" if use_amp else "")

    for epoch in range(start_epoch, det.epochs):
        torch.manual_seed(_epoch_seed(config.seed, epoch, info.rank))
        sampler.set_epoch(epoch)
        stats = train_one_epoch(ddp_model, optimizer, scheduler, loader, device, scaler=scaler, dtype=dtype,
                                grad_clip=det.grad_clip, epoch=epoch, epochs=det.epochs,
                                show_progress=info.is_main, label=sequence)
        if info.enabled:
            keys = sorted(stats)
            t = torch.tensor([stats[k] for k in keys], dtype=torch.float64,
                             device=device if device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            stats = dict(zip(keys, t.tolist()))
            stats["seconds"] /= info.world_size
        is_last = epoch + 1 == det.epochs
        if info.is_main:
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            for k in ("loss",) + LOSS_KEYS:
                record[k] = stats[k] / max(stats["images"], 1.0)
            record.update(images=int(stats["images"]), seconds=round(stats["seconds"], 3),
                          images_per_s=stats["images"] / max(stats["seconds"], 1e-9))
            metrics = None
            if len(val_set) and (is_last or (det.eval_every > 0 and (epoch + 1) % det.eval_every == 0)):
                metrics, _ = evaluate_detector(model, val_set, device, batch_size=per_process, amp=det.amp,
                                               masks=det.val_masks)
                record.update(val_ap50=metrics.ap50, val_map50=metrics.map50, val_map50_95=metrics.map50_95,
                              val_mask_map50=metrics.mask_map50)
                last_metrics = {**metrics.to_dict(), "val_masks": det.val_masks}
            history.append(record)
            log.info("epoch %d/%d: loss %.4f, %.1f images/s%s", epoch + 1, det.epochs, record["loss"],
                     record["images_per_s"],
                     "" if metrics is None else f", val mAP@0.5 {metrics.map50}")
            ckpt = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "epoch": epoch + 1,
                    "config": config_dict, "meta": {**meta, "sequence": sequence}, "history": history,
                    "metrics": last_metrics, "settings": settings}
            _save({**ckpt, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict() if scaler.is_enabled() else {}}, last_path)
            _write_history(history_path, history)
        if info.enabled:
            dist.barrier()

    figure = None
    if info.is_main and len(val_set) and last_metrics is not None \
            and last_metrics.get("val_masks", True) != det.val_masks:
        log.info("%s: validation metrics recomputed with val_masks=%s", out_dir, det.val_masks)
        metrics, _ = evaluate_detector(model, val_set, device, batch_size=per_process, amp=det.amp,
                                       masks=det.val_masks)
        last_metrics = {**metrics.to_dict(), "val_masks": det.val_masks}
    if info.is_main:
        train_speed = [h["images_per_s"] for h in history]
        summary = {**(last_metrics or {}), "sequence": sequence, "evaluated_checkpoint": "last",
                   "epochs": det.epochs, "image_size": image_size, "settings": settings,
                   "settings_digest": settings_digest(settings),
                   "backbone": det.backbone, "n_train_images": len(train_set), "n_val_images": len(val_set),
                   "n_train_patients": len(train_set.patients()), "n_val_patients": len(val_set.patients()),
                   "device": str(device), "world_size": info.world_size,
                   "amp": str(dtype).replace("torch.", "") if use_amp else None,
                   "train_images_per_s": float(np.median(train_speed)) if train_speed else None}
        write_json_atomic(metrics_path, summary)
        write_table2({sequence: summary}, table2_path)
        if len(val_set):
            figure = detections_figure(model, val_set, figure_path, device)
        _write_history(history_path, history)
    else:
        summary = {}
    if info.enabled:
        dist.barrier()
    return DetectorResult(out_dir=out_dir, checkpoint_last=last_path, history=history_path,
                          metrics_path=metrics_path, table2=table2_path, figure=figure, metrics=summary,
                          epochs_run=max(0, det.epochs - start_epoch))


def train_detector_for_run(config: Config, run_dir: str | Path, sequence: str, *, resume: bool = False,
                           device: torch.device | str | None = None, force: bool = False) -> DetectorResult:
    """:func:`train_detector` on a run folder: reads ``<run>/preprocessed/<sequence>/`` and writes
    ``<run>/detection/<sequence>/``."""
    run_dir = Path(run_dir)
    pre = run_dir / "preprocessed" / sequence
    for name in ("coco_train.json", "coco_val.json"):
        if not (pre / name).is_file():
            raise InputError(f"{name} not found; run the preprocessing stage first", file=pre / name,
                             expected=f"preprocessed slices of {sequence} under {pre}")
    return train_detector(config, images_dir=pre, coco_train=pre / "coco_train.json",
                          coco_val=pre / "coco_val.json", out_dir=run_dir / "detection" / sequence,
                          resume=resume, device=device, sequence=sequence, force=force)


def table2_for_run(run_dir: str | Path, out_path: str | Path | None = None) -> Path | None:
    """Table 2 over every sequence trained in a run -> ``<run>/detection/table2.csv`` (default)."""
    from npc_msom.config import SEQUENCES  # noqa: PLC0415
    run_dir = Path(run_dir)
    found = {}
    for seq in SEQUENCES:
        p = run_dir / "detection" / seq / "metrics.json"
        if p.is_file():
            found[seq] = json.loads(p.read_text())
    if not found:
        return None
    return write_table2(found, out_path or run_dir / "detection" / "table2.csv")
