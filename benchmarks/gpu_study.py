"""The whole GPU check in one go (issue 22): the `paper` preset on the 186-patient synthetic cohort,
stage by stage, each under its own timeout, into ``benchmarks/results/gpu_study.json``.

    python -m benchmarks.gpu_study [--budget-s 540] [--out benchmarks/results/gpu_study.json]
                                   [--set KEY=VALUE ...] [--device cuda] [--patients 186]

What it records:
- ``loop_overhead``: the detector's training step in our loop against the bare torchvision model,
  same batches, same device (``bench_detection._speed`` with the paper preset), and inference.
- per stage (synth, then cohort + preprocess .. report, as ``npc-msom run --stages``): wall seconds, exit code, and the peak
  GPU memory seen by ``nvidia-smi`` (polled every 0.5 s; the device's used memory, all processes),
  plus torch's own peak allocated memory from the stage's log where the stage reports it.
- ``headline``: every detector's AP@0.5 and every model's validation AUC (as bench_demo).
- ``finetune_head_vs_all``: stage 2 with `finetune: head` on the same run and split (AUC, seconds),
  when the budget leaves time for it.

The ImageNet file cannot be fetched on the GPU machine either: with it in the torch cache the preset
runs as written; without it the detector starts from ``weights: null`` (random, BatchNorm trained),
and the JSON says which. The preset's epochs are kept unless ``--set`` shrinks them; the default
``--set`` list is sized so that the whole study fits the 9-minute budget on one H100 (say so when
reporting: ``overrides`` in the JSON). A stage past its timeout is killed and recorded, and the
stages after it are skipped; the JSON is written after every stage, so a killed script still
leaves what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `run --stages preprocess` reads the cohort first (the cohort stage has no --stages name of its own)
STAGES = ("preprocess", "detection", "prediction", "baselines", "evaluation", "report")
# share of the budget each stage may take before it is killed (the rest is slack for the others)
STAGE_SHARE = {"synth": 0.12, "preprocess": 0.15, "detection": 0.45, "prediction": 0.25,
               "baselines": 0.15, "evaluation": 0.08, "report": 0.05}
# sized for one H100 within 9 minutes (detection ~ 3 x 2,800 slices per epoch at ~45 images/s)
DEFAULT_SETS = ("detection.epochs=2", "prediction.epochs=2", "synth.workers=12", "preprocess.workers=12",
                "baselines.slice_epochs=5")


class GpuPeak:
    """Polls nvidia-smi for the device's used memory (MiB) while a stage runs."""

    def __init__(self, period: float = 0.5):
        self.period, self.peak, self._stop = period, None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                used = max(float(v) for v in out) if out else None
                if used is not None:
                    self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return
            self._stop.wait(self.period)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=6)


def _timed(cmd: list[str], timeout: float, log_path: Path) -> dict:
    t0 = time.perf_counter()
    with GpuPeak() as gpu, open(log_path, "ab") as log:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=max(timeout, 1))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return {"wall_s": round(time.perf_counter() - t0, 1), "rc": rc, "timeout_s": round(timeout, 1),
            "gpu_peak_mib": gpu.peak}


def _overhead(sets: list[str], device: str, timeout: float, out: Path, n_train: int = 64) -> dict:
    """bench_detection._speed with the paper preset, in a subprocess under ``timeout``."""
    code = (
        "import json, sys, torch, dataclasses, importlib.util\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from benchmarks.bench_detection import _speed\n"
        "from npc_msom.config import load_config\n"
        "from npc_msom.detection.weights import IMAGENET, imagenet_file\n"
        f"cfg = load_config({str(ROOT / 'configs' / 'paper.yaml')!r}, {sets!r})\n"
        "if cfg.detection.weights == IMAGENET and not imagenet_file(cfg.detection.backbone).is_file():\n"
        "    cfg = dataclasses.replace(cfg, detection=dataclasses.replace(cfg.detection, weights=None))\n"
        f"r = _speed(cfg, torch.device({device!r}), n_train={n_train}, n_infer={max(4, n_train // 2)}, repeats=3)\n"
        "if torch.cuda.is_available(): r['torch_peak_allocated_mib'] = round(torch.cuda.max_memory_allocated() / 2**20, 1)\n"
        f"open({str(out)!r}, 'w').write(json.dumps(r))\n")
    res = _timed([sys.executable, "-c", code], timeout, out.with_suffix(".log"))
    if out.is_file():
        res.update(json.loads(out.read_text()))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-s", type=float, default=540.0, help="the whole script's wall-time budget")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_study.json"))
    p.add_argument("--work", default=str(ROOT / "runs" / "gpu_study"), help="cohort and run folder")
    p.add_argument("--patients", type=int, default=186)
    p.add_argument("--device", default="cuda")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help=f"override the paper preset (default: {' '.join(DEFAULT_SETS)})")
    p.add_argument("--skip-head-comparison", action="store_true")
    p.add_argument("--overhead-images", type=int, default=64, help="training images of the loop-overhead check")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    out_path, work = Path(args.out), Path(args.work)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    sets = list(DEFAULT_SETS if args.set is None else args.set) + [f"synth.patients={args.patients}",
                                                                   f"device={args.device}"]
    from npc_msom.config import load_config
    from npc_msom.detection.weights import IMAGENET, imagenet_file
    from npc_msom.runtime import environment_record
    cfg = load_config(ROOT / "configs" / "paper.yaml", sets)
    if cfg.detection.weights == IMAGENET and not imagenet_file(cfg.detection.backbone).is_file():
        sets.append("detection.weights=null")
        weights_note = f"no {imagenet_file(cfg.detection.backbone).name} in the torch cache: weights=null (random)"
    else:
        weights_note = f"detection.weights={cfg.detection.weights}"
    result: dict = {"preset": "paper", "overrides": sets, "weights": weights_note, "budget_s": args.budget_s,
                    "environment": environment_record(), "stages": {}, "status": "running"}

    def save() -> None:
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    cli = [sys.executable, "-m", "npc_msom.cli"]
    setargs = [a for s in sets for a in ("--set", s)]
    log_path = work / "gpu_study.log"
    result["loop_overhead"] = _overhead(sets, args.device, min(90.0, 0.15 * args.budget_s), work / "overhead.json",
                                        args.overhead_images)
    save()
    cohort, run = work / "cohort", work / "run"
    steps = [("synth", cli + ["synth", "--out", str(cohort), "--config", str(ROOT / "configs" / "paper.yaml")]
              + setargs)]
    steps += [(s, cli + ["run", "--config", str(ROOT / "configs" / "paper.yaml"), "--cohort", str(cohort),
                         "--out", str(run), "--stages", s] + setargs) for s in STAGES]
    for name, cmd in steps:
        timeout = min(STAGE_SHARE[name] * args.budget_s, left() - 5)
        if timeout <= 1:
            result["stages"][name] = {"rc": "skipped: no budget left"}
            continue
        result["stages"][name] = _timed(cmd, timeout, log_path)
        save()
        if result["stages"][name]["rc"] != 0:
            result["status"] = f"stopped at {name} ({result['stages'][name]['rc']}); log: {log_path}"
            break
    else:
        result["status"] = "ok"
    if (run / "run_summary.json").is_file():
        result["run_summary_seconds"] = json.loads((run / "run_summary.json").read_text()).get("stages", {}).get("seconds")
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_demo import headline
    if run.is_dir():
        result["headline"] = headline(run)
    result["study_wall_s"] = round(sum(v.get("wall_s", 0) for v in result["stages"].values()
                                       if isinstance(v, dict)), 1)
    save()
    # stage 2 with finetune=head on the same run and split: the demo's mode against the study's
    if result["status"] == "ok" and not args.skip_head_comparison and left() > 60:
        head_run = work / "run_head"
        if head_run.exists():
            shutil.rmtree(head_run)
        head_run.mkdir()
        for d in ("cohort", "preprocessed", "detection"):
            (head_run / d).symlink_to((run / d).resolve())
        r = _timed(cli + ["run", "--config", str(ROOT / "configs" / "paper.yaml"), "--cohort", str(cohort),
                          "--out", str(head_run), "--stages", "prediction", "--set", "prediction.finetune=head"]
                   + setargs, left() - 5, log_path)
        result["finetune_head_vs_all"] = {"head": {**r, **(headline(head_run) if r["rc"] == 0 else {})},
                                          "all_prediction_wall_s": result["stages"]["prediction"].get("wall_s")}
    save()
    print(f"gpu_study: {result['status']} in {result['wall_s']} s -> {out_path}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
