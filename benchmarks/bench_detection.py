"""Stage 1 speed and quality: our training loop against torchvision's bare forward + backward on the
same batches, inference slices/s, and the demo run's AP@0.5.

- CPU, always: the demo preset (ResNet-18-FPN at the demo image size) on synthetic slices.
- CUDA, when a GPU is present: the paper preset (ResNet-50-FPN, 512 px, batch 4, AMP as configured).
- Quality: AP@0.5 per class of ``runs/demo/detection/CE-T1WI/metrics.json`` when a demo run exists
  (``make demo``); not recomputed here.
- Anchor coverage of the demo, paper and default presets on a preprocessed synthetic cohort
  (``runs/s186``, else ``runs/demo``): the share of training boxes whose best anchor has IoU >= 0.5.

"Ours" is ``train_one_epoch`` over the real DataLoader (PNG decoding, RLE masks, augmentation,
schedule, loss bookkeeping, AMP scaler); "bare" is the same model from the same initial weights
running forward + backward + SGD step on the same batches already collated and on the device.
Nothing here asserts a time; targets are recorded beside the figures.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
# issue 9's goals for the demo's detector point
DEMO_AP50_GOAL = {"GTV": 0.85, "GTVln": 0.60}
TARGETS = {"train_overhead_pct": "<= 10 (ours vs bare, images/s)",
           "demo_ap50_CE-T1WI": {k: f">= {v}" for k, v in DEMO_AP50_GOAL.items()},
           "demo_train_cpu_min_per_sequence": "<= 3 (2 cores)",
           "cpu_train_speedup": ">= 1.5x (train images/s, torchvision's RoIAlign kernel before)"}


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _speed(config, device, *, n_train: int, n_infer: int, repeats: int) -> dict:
    import torch

    from npc_msom.detection import build_model, detect, train_one_epoch
    from npc_msom.detection.data import load_slice, read_coco
    from npc_msom.detection.toydata import write_toy_coco
    from npc_msom.detection.model import amp_context, amp_dtype
    from npc_msom.detection.train import make_scheduler, make_train_loader

    det = config.detection
    size = config.preprocess.image_size
    dtype = amp_dtype(device, det.amp)
    with tempfile.TemporaryDirectory() as tmp:
        per_patient = 5
        n_patients = -(-n_train // per_patient) + 2
        p = write_toy_coco(tmp, n_patients=n_patients, val_patients=2, tumour_slices=per_patient - 1,
                           negatives_per_patient=1, image_size=size, seed=1)
        train = read_coco(p["coco_train"])
        train = train.subset(range(min(n_train, len(train))))
        val = read_coco(p["coco_val"])
        infer_slices = [load_slice(val.image_path(i % len(val))) for i in range(n_infer)]

        torch.manual_seed(config.seed)
        model = build_model(det, num_classes=3, image_size=size).to(device)
        init = copy.deepcopy(model.state_dict())
        _, sampler, loader = make_train_loader(train, config, det.batch_size, device=device)
        sampler.set_epoch(0)
        batches = [([im.to(device) for im in ims], [{k: v.to(device) for k, v in t.items()} for t in tg])
                   for ims, tg in loader]
        n_images = sum(len(b[0]) for b in batches)

        def fresh():
            # same weights, optimiser, schedule and RoI sampling (torch's generator) in both loops, so
            # they compute the same thing and differ only by what the loop adds around the model
            model.load_state_dict(init)
            params = [q for q in model.parameters() if q.requires_grad]
            opt = torch.optim.SGD(params, lr=det.lr, momentum=det.momentum, weight_decay=det.weight_decay)
            torch.manual_seed(config.seed)
            return opt, make_scheduler(opt, det, len(batches)), torch.amp.GradScaler(
                "cuda", enabled=dtype == torch.float16)

        def ours() -> float:
            opt, sched, scaler = fresh()
            sampler.set_epoch(0)
            _sync(device)
            t0 = time.perf_counter()
            train_one_epoch(model, opt, sched, loader, device, scaler=scaler, dtype=dtype, show_progress=False)
            _sync(device)
            return time.perf_counter() - t0

        def bare() -> float:
            opt, sched, scaler = fresh()
            model.train()
            _sync(device)
            t0 = time.perf_counter()
            for ims, tg in batches:
                with amp_context(device, dtype):
                    loss = sum(model(ims, tg).values())
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
            _sync(device)
            return time.perf_counter() - t0

        ours(), bare()  # warm-up (allocator, cuDNN autotuning, first-call costs)
        t_ours, t_bare = [], []
        for _ in range(repeats):  # alternate, so drifts of a shared machine hit both alike
            t_ours.append(ours())
            t_bare.append(bare())
        amp = dtype is not None
        infer_batches = [[torch.from_numpy(x)[None].to(device) for x in infer_slices[i:i + det.batch_size]]
                         for i in range(0, n_infer, det.batch_size)]

        def infer_ours() -> float:
            _sync(device)
            t0 = time.perf_counter()
            found = detect(model, infer_slices, device, det.score_threshold, batch_size=det.batch_size, amp=amp)
            _sync(device)
            infer_ours.detections = sum(len(d["scores"]) for d in found) / len(found)
            return time.perf_counter() - t0

        @torch.inference_mode()
        def infer_bare() -> float:
            model.eval()
            _sync(device)
            t0 = time.perf_counter()
            for ims in infer_batches:
                with amp_context(device, dtype):
                    model(ims)
            _sync(device)
            return time.perf_counter() - t0

        infer_ours(), infer_bare()
        t_inf = statistics.median([infer_ours() for _ in range(repeats)])
        t_inf_bare = statistics.median([infer_bare() for _ in range(repeats)])
    mo, mb = statistics.median(t_ours), statistics.median(t_bare)
    out = {"backbone": det.backbone, "image_size": size, "batch_size": det.batch_size,
           "amp": None if dtype is None else str(dtype).replace("torch.", ""), "workers": det.workers,
           "device": str(device), "train_images": n_images, "repeats": repeats,
           "train_images_per_s_ours": round(n_images / mo, 3), "train_images_per_s_bare": round(n_images / mb, 3),
           "train_overhead_pct": round(100 * (mo / mb - 1), 2),
           "train_seconds_ours": [round(t, 3) for t in t_ours], "train_seconds_bare": [round(t, 3) for t in t_bare],
           "inference_slices": n_infer, "inference_slices_per_s": round(n_infer / t_inf, 3),
           "inference_slices_per_s_bare": round(n_infer / t_inf_bare, 3),
           "inference_detections_per_slice": round(infer_ours.detections, 1)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _demo_ap() -> dict | None:
    path = ROOT / "runs" / "demo" / "detection" / "CE-T1WI" / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    ap = m.get("ap50", {})
    return {"source": str(path.relative_to(ROOT)), "ap50": ap, "map50": m.get("map50"),
            "mask_map50": m.get("mask_map50"), "n_val_images": m.get("n_val_images"),
            "target_met": {k: (ap.get(k) or 0) >= goal for k, goal in DEMO_AP50_GOAL.items()}}


def _scaled_coco(coco: dict, factor: float) -> dict:
    """The COCO dict with every box and area scaled by ``factor`` (slices of another size, same
    field of view: an approximation, since a finer slice also draws small objects more finely)."""
    anns = [{**a, "bbox": [v * factor for v in a["bbox"]], "area": float(a.get("area", 0)) * factor ** 2}
            for a in coco["annotations"]]
    return {**coco, "annotations": anns}


def _anchor_coverage(presets: dict) -> dict | None:
    """Anchor coverage (share of training boxes whose best anchor has IoU >= 0.5) of each preset on
    each sequence of a preprocessed synthetic cohort (runs/s186, else runs/demo). A preset whose
    slice size differs from the cohort's is measured on the cohort's boxes scaled to its size."""
    from npc_msom.config import SEQUENCES
    from npc_msom.detection.anchors import anchor_coverage, format_coverage
    for name in ("s186", "demo"):
        pre = ROOT / "runs" / name / "preprocessed"
        if all((pre / s / "coco_train.json").is_file() for s in SEQUENCES):
            break
    else:
        return None
    out: dict = {"cohort": str(pre.relative_to(ROOT))}
    for seq in SEQUENCES:
        coco = json.loads((pre / seq / "coco_train.json").read_text())
        size = max(max(im["width"], im["height"]) for im in coco["images"])
        for preset, config in presets.items():
            target = config.preprocess.image_size
            cov = anchor_coverage(_scaled_coco(coco, target / size) if target != size else coco,
                                  config.detection, target)
            log.info("%s", format_coverage(cov, f"{preset} preset, {seq} ({size} px"
                                                f"{'' if target == size else f' scaled to {target} px'}): "))
            out.setdefault(preset, {})[seq] = {
                "image_size": target, "boxes_scaled_from": None if target == size else size,
                "coverage": cov["coverage"], "coverage_rpn": cov["coverage_rpn"],
                "by_structure": {k: v["coverage"] for k, v in cov["by_structure"].items()},
                "by_size": {k: v["coverage"] for k, v in cov["by_size"].items()}}
    return out


# Settings compared by AP@0.5 against CPU minutes (``--ap-vs-cost``): (name, --set overrides on the
# demo preset, the sequences trained on: "shared" = one detector for every sequence, else a tuple of
# sequences with a detector of their own). Each row states what it changes from the demo preset of
# before 2026-12-06 (1024-wide box head, 900 slices x 2 epochs) explicitly, so a row keeps its
# meaning when configs/demo.yaml moves. docs/detection.md has the measured table.
# Not settings: switches by which the bench puts back what issue 9 changed in the training loop, to
# time the loop as it was when the issue was filed on today's code and data.
TORCHVISION_ROI_ALIGN = "bench:torchvision_roi_align"  # torchvision's RoIAlign kernel, not roi_align.py's
NO_DECODE_CACHE = "bench:no_decode_cache"  # every PNG and every RLE decoded again each epoch
RGB_CONV1 = "bench:rgb_conv1"  # the grey slice fed to conv1 as three channels (3x conv1's cost)
BENCH_SWITCHES = frozenset({TORCHVISION_ROI_ALIGN, NO_DECODE_CACHE, RGB_CONV1})
_OLD_DEMO = ["detection.box_head_dim=1024", "detection.max_train_images=900", "detection.epochs=2"]
_DENSE = ["detection.anchor_density=2", "detection.anchor_sizes=[4,8,16,32,64]"]
AP_VS_COST = (
    ("demo (now): one detector for 3 sequences, 128 px, 256-wide box head, 1200 slices x 3 epochs", [], "shared"),
    ("former demo: 1024-wide box head (torchvision / MMDetection), 900 slices x 2 epochs", _OLD_DEMO, "shared"),
    ("former demo with a 256-wide box head", [*_OLD_DEMO, "detection.box_head_dim=256"], "shared"),
    ("one detector per sequence (CE-T1WI), 1024-wide head, 900 slices x 2 epochs",
     [*_OLD_DEMO, "detection.shared=false"], ("CE-T1WI",)),
    ("former demo, input_scale 2 (256 px seen; anchor coverage 92%)", [*_OLD_DEMO, "detection.input_scale=2.0"],
     "shared"),
    ("former demo with 64 RoIs per image for the box head (demo 128; MMDetection 512)",
     [*_OLD_DEMO, "detection.box_batch_size=64"], "shared"),
    ("one detector per sequence (CE-T1WI), 1024-wide head, 480 slices x 2 epochs",
     [*_OLD_DEMO, "detection.shared=false", "detection.max_train_images=480"], ("CE-T1WI",)),
    ("shared, 1024-wide head, 900 slices x 3 epochs", [*_OLD_DEMO, "detection.epochs=3"], "shared"),
    ("one detector per sequence (CE-T1WI), 256-wide head, 650 slices x 2 epochs",
     [*_OLD_DEMO, "detection.shared=false", "detection.box_head_dim=256", "detection.max_train_images=650"],
     ("CE-T1WI",)),
    # anchor densification (detection.anchor_density): input_scale 2's anchor grid at scale 1's cost
    ("former demo, anchors 4..64 px tiled 2 x 2 per cell (anchor_density 2; coverage 93%)", [*_OLD_DEMO, *_DENSE],
     "shared"),
    ("one detector per sequence (CE-T1WI), 1024-wide head, 480 x 2, anchor_density 2, anchors 4..64 px",
     [*_OLD_DEMO, "detection.shared=false", "detection.max_train_images=480", *_DENSE], ("CE-T1WI",)),
    ("demo (now) with anchor_density 2, anchors 4..64 px", _DENSE, "shared"),
    # the training loop's speed before and after (issue 9): the former demo point with torchvision's
    # own CPU RoIAlign kernel, which the code had when the issue was filed (row 1 with ours)
    ("former demo with torchvision's CPU RoIAlign kernel (before the sparse product)",
     [*_OLD_DEMO, TORCHVISION_ROI_ALIGN], "shared"),
    # run-to-run spread of the demo's point: another seed (weights' init, slice order, augmentation)
    ("demo (now), seed 1", ["seed=1"], "shared"),
    ("demo (now) at 2 epochs: 256-wide head, 1200 slices x 2 epochs", ["detection.epochs=2"], "shared"),
    # the loop before issue 9 as a whole: row 12 with its two other speed items also put back
    ("the loop before issue 9: former demo, torchvision's RoIAlign, PNG and RLE decoded every epoch, "
     "three-channel conv1", [*_OLD_DEMO, TORCHVISION_ROI_ALIGN, NO_DECODE_CACHE, RGB_CONV1], "shared"),
)
# the rows `make bench` trains (~30 min on 2 cores): the demo's point, the one before it, a detector
# for CE-T1WI alone, the network fed twice the slice's size, and the former point in the training
# loop as it was before issue 9 (its slices/s against row 0's is the speed-up)
SPEED_BEFORE_ROW, SPEED_AFTER_ROW = 15, 0
MAKE_BENCH_ROWS = (0, 1, 3, 4, 15)


def train_speedup(rows_by_index: dict) -> dict | None:
    """Train slices/s of the demo's point against the loop before issue 9 (``SPEED_BEFORE_ROW``),
    from rows of :func:`ap_versus_cost` keyed by their AP_VS_COST index; None without both."""
    before, after = rows_by_index.get(SPEED_BEFORE_ROW), rows_by_index.get(SPEED_AFTER_ROW)
    if not before or not after or not before.get("train_images_per_s"):
        return None
    b, a = float(before["train_images_per_s"]), float(after["train_images_per_s"])
    return {"before": {"row": SPEED_BEFORE_ROW, "variant": before.get("variant"), "train_images_per_s": round(b, 2)},
            "after": {"row": SPEED_AFTER_ROW, "variant": after.get("variant"), "train_images_per_s": round(a, 2)},
            "speedup": round(a / b, 2), "goal": ">= 1.5"}


def split_overrides(overrides) -> tuple[list[str], set[str]]:
    """A row's overrides as (--set settings for load_config, the bench's own "bench:" switches)."""
    settings = [o for o in overrides if not o.startswith("bench:")]
    return settings, set(overrides) - set(settings)


@contextlib.contextmanager
def bench_switches(switches):
    """Puts back, for the ``with`` block, what each of ``switches`` (of BENCH_SWITCHES) names:
    torchvision's RoIAlign kernel for every RoIAlign (roi_align.py's sparse product off), no decoded
    sample kept between epochs, conv1 run on three copies of the grey channel. The results are the
    same up to float rounding; only the cost changes."""
    import torch

    from npc_msom.detection import data, model, roi_align
    unknown = set(switches) - BENCH_SWITCHES
    if unknown:
        raise ValueError(f"unknown bench switches {sorted(unknown)}; known: {sorted(BENCH_SWITCHES)}")
    saved = (roi_align._fast_path, data.SliceDataset.decoded, model.GreyConv2d.forward)
    if TORCHVISION_ROI_ALIGN in switches:
        roi_align._fast_path = lambda *a, **k: False
    if NO_DECODE_CACHE in switches:
        def decoded(self, index):
            return data.load_slice(self.coco.image_path(index)), data.target_for(self.coco, index)
        data.SliceDataset.decoded = decoded
    if RGB_CONV1 in switches:
        def forward(self, x):
            if x.shape[1] == 1 and self.in_channels == 3:
                x = x.expand(-1, 3, -1, -1)
            return torch.nn.Conv2d.forward(self, x)
        model.GreyConv2d.forward = forward
    try:
        yield
    finally:
        roi_align._fast_path, data.SliceDataset.decoded, model.GreyConv2d.forward = saved


def inner_split(train_doc: dict, fraction: float, seed: int = 0) -> tuple[dict, set[str]]:
    """Holds ``fraction`` of the training patients of a COCO document out (a seeded draw of patient
    ids): the document of the others' slices, and the held-out patient ids. For choosing settings
    without the run's validation patients."""
    import numpy as np
    patients = sorted({str(im["patient_id"]) for im in train_doc["images"]})
    n_out = int(round(len(patients) * fraction))
    if not 0 < n_out < len(patients):
        raise ValueError(f"inner split: {fraction} of {len(patients)} training patients leaves a side empty")
    held = {patients[i] for i in np.random.default_rng(seed).permutation(len(patients))[:n_out]}
    images = [im for im in train_doc["images"] if str(im["patient_id"]) not in held]
    ids = {im["id"] for im in images}
    return {**train_doc, "images": images,
            "annotations": [a for a in train_doc["annotations"] if a["image_id"] in ids]}, held


def ap_versus_cost(run_dir: Path, variants=AP_VS_COST, out_dir: Path | None = None,
                   evaluate: list[str] | None = None, inner: float | None = None) -> dict:
    """Trains each variant on ``run_dir``'s preprocessed slices (the demo's 186-patient cohort) and
    evaluates it on each sequence's validation slices: AP@0.5 (GTV, GTVln) against the CPU minutes of
    training (process time, every thread) and of validation, per sequence. Nothing of the run is
    changed: detectors go to a temporary folder (or ``out_dir``). ``evaluate``: only these sequences'
    validation slices (default: every sequence trained on). ``inner``: train on the training
    patients but this fraction of them (:func:`inner_split`, the same for every row) and evaluate on
    that fraction's training slices instead: a choice among rows that never sees the run's
    validation patients."""
    import torch

    from npc_msom.config import SEQUENCES, load_config
    from npc_msom.detection.data import read_coco
    from npc_msom.detection.infer import evaluate_detector
    from npc_msom.detection.shared import merge_coco
    from npc_msom.detection.train import train_detector
    from npc_msom.runtime import write_json_atomic

    pre = run_dir / "preprocessed"
    seqs = [s for s in SEQUENCES if (pre / s / "coco_train.json").is_file()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(out_dir or tmp)
        for i, (name, overrides, trained_on) in enumerate(variants):
            settings, switches = split_overrides(overrides)
            config = load_config(ROOT / "configs" / "demo.yaml", ["detection.workers=0", *settings])
            on = seqs if trained_on == "shared" else [s for s in trained_on if s in seqs]
            work = base / f"variant{i}"
            work.mkdir(parents=True, exist_ok=True)
            train_doc, held = merge_coco(run_dir, on, "train"), None
            if inner is not None:
                train_doc, held = inner_split(train_doc, inner)
            write_json_atomic(work / "coco_train.json", train_doc)
            write_json_atomic(work / "coco_val.json", {**merge_coco(run_dir, on[:1], "val"), "images": [],
                                                       "annotations": []})
            with bench_switches(switches):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                res = train_detector(config, images_dir=pre, coco_train=work / "coco_train.json",
                                     coco_val=work / "coco_val.json", out_dir=work, resume=False,
                                     device=torch.device("cpu"), sequence="+".join(on))
                train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
                from npc_msom.detection.model import load_detector
                model, _ = load_detector(res.checkpoint_last, "cpu")
                per_seq = {}
                for seq in [s for s in on if evaluate is None or s in evaluate]:
                    if held is None:
                        val = read_coco(pre / seq / "coco_val.json")
                    else:
                        val = read_coco(pre / seq / "coco_train.json")
                        val = val.subset([k for k, im in enumerate(val.images) if str(im["patient_id"]) in held])
                    cpu0 = time.process_time()
                    metrics, _ = evaluate_detector(model, val, "cpu", batch_size=config.detection.batch_size,
                                                   show_progress=False, masks=config.detection.val_masks)
                    per_seq[seq] = {"ap50": metrics.ap50, "mask_map50": metrics.mask_map50,
                                    "ap50_by_size": metrics.ap50_by_size, "val_slices": len(val),
                                    "val_cpu_min": round((time.process_time() - cpu0) / 60, 2)}
            row = {"variant": name, "overrides": overrides, "trained_on": on,
                   "evaluated_on": "validation" if held is None else f"inner: {len(held)} training patients held out",
                   "train_slices": res.metrics.get("n_train_images"), "epochs": config.detection.epochs,
                   "train_cpu_min": round(train_cpu / 60, 2), "train_wall_min": round(train_wall / 60, 2),
                   "train_cpu_min_per_sequence": round(train_cpu / 60 / len(on), 2),
                   "train_images_per_s": res.metrics.get("train_images_per_s"), "sequences": per_seq}
            log.info("ap vs cost: %s", json.dumps(row))
            rows.append(row)
    return {"cohort": str(run_dir), "threads": torch.get_num_threads(), "rows": rows,
            "goal": "demo point: CE-T1WI GTV >= 0.85 and GTVln >= 0.60 within 3 CPU minutes per sequence"}


def run(quick: bool = False) -> dict:
    import torch

    from npc_msom.config import load_config

    out: dict = {"targets": TARGETS}
    threads = torch.get_num_threads()
    demo = load_config(ROOT / "configs" / "demo.yaml")
    demo = dataclasses.replace(demo, detection=dataclasses.replace(demo.detection, workers=0))
    out["cpu_demo_preset"] = _speed(demo, torch.device("cpu"), n_train=8 if quick else 24,
                                    n_infer=8 if quick else 24, repeats=1 if quick else 2)
    out["cpu_demo_preset"]["threads"] = threads
    if torch.cuda.is_available():
        paper = load_config(ROOT / "configs" / "paper.yaml")
        from npc_msom.detection.weights import IMAGENET, imagenet_file
        if paper.detection.weights == IMAGENET and not imagenet_file(paper.detection.backbone).is_file():
            # speed does not depend on the weights' values: the same frozen set-up without the file
            paper = dataclasses.replace(paper, detection=dataclasses.replace(
                paper.detection, weights=None, norm="frozen", trainable_layers=3))
        out["cuda_paper_preset"] = _speed(paper, torch.device("cuda"), n_train=16 if quick else 96,
                                          n_infer=32 if quick else 192, repeats=1 if quick else 3)
    else:
        out["cuda_paper_preset"] = None
    out["demo_ap50"] = _demo_ap()
    # AP@0.5 against CPU minutes on the demo run's 186-patient cohort (MAKE_BENCH_ROWS, ~30 min on 2 cores)
    demo_run = ROOT / "runs" / "demo"
    rows = [AP_VS_COST[i] for i in MAKE_BENCH_ROWS]
    ready = (demo_run / "preprocessed" / "split.json").is_file()
    out["ap_vs_cost"] = ap_versus_cost(demo_run, rows) if not quick and ready else None
    if not quick and not ready:
        out["ap_vs_cost_skipped"] = f"no {demo_run / 'preprocessed' / 'split.json'}: run `make demo` first"
        log.warning("AP against CPU minutes skipped: %s", out["ap_vs_cost_skipped"])
    out["cpu_train_speedup"] = (train_speedup(dict(zip(MAKE_BENCH_ROWS, out["ap_vs_cost"]["rows"])))
                                if out["ap_vs_cost"] else None)
    from npc_msom.config import Config
    out["anchor_coverage"] = _anchor_coverage({"demo": demo, "paper": load_config(ROOT / "configs" / "paper.yaml"),
                                               "defaults": Config()})
    return out


def main(argv=None) -> None:
    """``python -m benchmarks.bench_detection [--quick]``, or
    ``--ap-vs-cost RUN_DIR [VARIANT_INDEX ...] [--out FILE]`` (rows appended to FILE)."""
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_detection")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ap-vs-cost", metavar="RUN_DIR", type=Path,
                   help="train the AP_VS_COST variants on this run folder's preprocessed slices")
    p.add_argument("variants", nargs="*", type=int, help="indices into AP_VS_COST (default: all)")
    p.add_argument("--out", type=Path, help="JSON file the --ap-vs-cost rows are appended to")
    p.add_argument("--inner", type=float, metavar="FRACTION",
                   help="hold this fraction of the training patients out and evaluate on them, not on the "
                        "run's validation patients (to choose among rows)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.ap_vs_cost is None:
        if args.variants or args.out or args.inner is not None:
            p.error("variants, --out and --inner go with --ap-vs-cost")
        sys.stdout.write(json.dumps(run(quick=args.quick), indent=2) + "\n")
        return
    picked = [AP_VS_COST[i] for i in args.variants] or list(AP_VS_COST)
    result = ap_versus_cost(args.ap_vs_cost, picked, inner=args.inner)
    if args.out is not None:
        old = json.loads(args.out.read_text()) if args.out.is_file() else {}
        result["rows"] = old.get("rows", []) + result["rows"]
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
