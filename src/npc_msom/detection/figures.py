"""The study's Figure 2: ground truth in red on T2WI, then detections on T2WI, T1WI and CE-T1WI
(GTV yellow, GTVln blue, each with its confidence)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from npc_msom.detection.data import CocoSlices, load_slice, read_coco, target_for
from npc_msom.runtime import atomic_path

log = logging.getLogger(__name__)

GT_COLOUR = "red"
CLASS_COLOURS = {"GTV": "yellow", "GTVln": "#1e90ff"}  # as the study: GTV yellow, GTVln blue
OTHER_COLOURS = ("lime", "magenta", "cyan", "orange")


@dataclass(frozen=True)
class Panel:
    """One image with boxes. scores None = ground truth (drawn in red, no confidence)."""
    image: np.ndarray            # (H, W) float 0..1
    title: str
    boxes_xyxy: np.ndarray       # (N, 4) px
    labels: np.ndarray           # (N,) 1..K
    scores: np.ndarray | None = None


def _colour(name: str, k: int) -> str:
    return CLASS_COLOURS.get(name, OTHER_COLOURS[k % len(OTHER_COLOURS)])


def draw_panels(panels: Sequence[Panel], class_names: Sequence[str], path: str | Path, *,
                suptitle: str | None = None, panel_inches: float = 3.2) -> Path:
    """Draws panels side by side into a PNG at ``path`` (written atomically)."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    path = Path(path)
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_inches * len(panels), panel_inches + 0.4),
                             squeeze=False)
    for letter, ax, p in zip("ABCDEFGH", axes[0], panels):
        ax.imshow(p.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"({letter}) {p.title}", fontsize=9)
        ax.axis("off")
        for k, (box, lab) in enumerate(zip(np.asarray(p.boxes_xyxy).reshape(-1, 4), np.asarray(p.labels))):
            name = class_names[int(lab) - 1] if 0 < int(lab) <= len(class_names) else str(lab)
            colour = GT_COLOUR if p.scores is None else _colour(name, int(lab) - 1)
            x1, y1, x2, y2 = (float(v) for v in box)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
            text = name if p.scores is None else f"{name} {float(p.scores[k]):.2f}"
            ax.text(x1, max(0.0, y1 - 1.5), text, color=colour, fontsize=6, va="bottom",
                    bbox={"facecolor": "black", "alpha": 0.4, "pad": 0.5, "linewidth": 0})
        if p.scores is not None and len(p.labels) == 0:
            ax.text(0.5, 0.02, "no detection", color="white", fontsize=7, ha="center",
                    transform=ax.transAxes)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)
    return path


def _figure_key(coco: CocoSlices, i: int):
    anns = [a for a in coco.annotations.get(coco.images[i]["id"], []) if not a.get("iscrowd", 0)]
    if not anns:
        return None
    return (len({a["label"] for a in anns}), len(anns), sum(float(a.get("area", 0.0)) for a in anns))


def pick_figure_slice(coco: CocoSlices, others: Sequence[CocoSlices] = (), tol_mm: float = 1.5) -> int | None:
    """Index of the slice to show: most classes present, then most objects, then largest tumour
    area, then the first in file order (deterministic). None when nothing has ground truth.

    With ``others`` (the other sequences' validation slices), slices that have a partner within
    ``tol_mm`` in every other sequence come first: each sequence keeps its own slices (every n-th
    on its own grid), so an exact common z is the exception.
    """
    ranked = [(k, -i) for i in range(len(coco.images)) if (k := _figure_key(coco, i)) is not None]
    ranked.sort(reverse=True)
    for _, neg_i in ranked:
        im = coco.images[-neg_i]
        if all(_match_slice(o, im.get("patient_id"), float(im.get("z_mm", 0.0)), tol_mm) is not None
               for o in others):
            return -neg_i
    return -ranked[0][1] if ranked else None


def _gt_panel(coco: CocoSlices, index: int, title: str) -> Panel:
    t = target_for(coco, index)
    return Panel(load_slice(coco.image_path(index)), title, t["boxes"], t["labels"])


def _det_panel(model, coco: CocoSlices, index: int, title: str, device, score_threshold: float) -> Panel:
    from npc_msom.detection.infer import detect  # noqa: PLC0415
    image = load_slice(coco.image_path(index))
    d = detect(model, [image], device, score_threshold)[0]
    return Panel(image, title, d["boxes_xyxy"], d["labels"], d["scores"])


def detections_figure(model, coco: CocoSlices, path: str | Path, device="cpu", *,
                      index: int | None = None, score_threshold: float = 0.5) -> Path | None:
    """Figure 2 for one sequence: (A) ground truth in red, (B) detections, on one validation slice."""
    index = pick_figure_slice(coco) if index is None else index
    if index is None:
        log.warning("no validation slice with ground truth: figure %s not drawn", path)
        return None
    im = coco.images[index]
    seq = coco.sequence() or "slice"
    where = f"{im.get('patient_id', '')} z={im['z_mm']:.0f} mm" if "z_mm" in im else im["file_name"]
    panels = [_gt_panel(coco, index, f"ground truth, {seq}"),
              _det_panel(model, coco, index, f"detected, {seq}", device, score_threshold)]
    return draw_panels(panels, coco.class_names, path, suptitle=where)


FIGURE2_SEQUENCES = ("T2WI", "T1WI", "CE-T1WI")


def _match_slice(coco: CocoSlices, patient_id, z_mm: float, tol_mm: float = 0.5) -> int | None:
    best, best_dz = None, None
    for i, im in enumerate(coco.images):
        if str(im.get("patient_id")) != str(patient_id) or "z_mm" not in im:
            continue
        dz = abs(float(im["z_mm"]) - z_mm)
        if dz <= tol_mm and (best_dz is None or dz < best_dz):
            best, best_dz = i, dz
    return best


def figure2(run_dir: str | Path, out_path: str | Path | None = None, device="cpu", *,
            patient_id: str | None = None, z_mm: float | None = None,
            score_threshold: float = 0.5, match_tol_mm: float = 1.5) -> Path | None:
    """The study's Figure 2 for a run: (A) ground truth in red on T2WI, (B-D) detections of each
    sequence's detector on T2WI, T1WI and CE-T1WI at the same patient and z.

    Reads ``<run>/preprocessed/<seq>/coco_val.json`` and ``<run>/detection/<seq>/checkpoint_last.pt``;
    writes ``<run>/detection/figure2.png`` by default. The slice is the T2WI validation slice
    chosen by :func:`pick_figure_slice` unless ``patient_id`` and ``z_mm`` are given; slices of the
    other sequences are matched by patient and z (within ``match_tol_mm``; the sequences share a frame of
    reference). A sequence without a detector or without that slice gets a panel saying so.
    Returns the path, or None when no sequence has validation data.
    """
    from npc_msom.detection.model import load_detector  # noqa: PLC0415
    run_dir = Path(run_dir)
    out_path = Path(out_path) if out_path is not None else run_dir / "detection" / "figure2.png"
    cocos: dict[str, CocoSlices] = {}
    for seq in FIGURE2_SEQUENCES:
        p = run_dir / "preprocessed" / seq / "coco_val.json"
        if p.is_file():
            cocos[seq] = read_coco(p)
    if not cocos:
        log.warning("no validation COCO file under %s: Figure 2 not drawn", run_dir / "preprocessed")
        return None
    ref_seq = "T2WI" if "T2WI" in cocos else next(iter(cocos))
    ref = cocos[ref_seq]
    if patient_id is not None and z_mm is not None:
        index = _match_slice(ref, patient_id, z_mm)
    else:
        index = pick_figure_slice(ref, [c for s, c in cocos.items() if s != ref_seq], tol_mm=match_tol_mm)
    if index is None:
        log.warning("no suitable %s validation slice: Figure 2 not drawn", ref_seq)
        return None
    pid, z = ref.images[index].get("patient_id"), float(ref.images[index].get("z_mm", 0.0))
    panels = [_gt_panel(ref, index, f"ground truth, {ref_seq}")]
    class_names = ref.class_names
    for seq in FIGURE2_SEQUENCES:
        from npc_msom.detection.shared import detector_checkpoint  # noqa: PLC0415
        ckpt = detector_checkpoint(run_dir, seq)
        coco = cocos.get(seq)
        i = None if coco is None else (index if seq == ref_seq else _match_slice(coco, pid, z, match_tol_mm))
        if coco is None or i is None or not ckpt.is_file():
            blank = np.zeros_like(panels[0].image)
            why = "no detector" if not ckpt.is_file() else "no matching slice"
            panels.append(Panel(blank, f"{seq}: {why}", np.zeros((0, 4)), np.zeros(0, np.int64)))
            continue
        model, _ = load_detector(ckpt, device)
        panels.append(_det_panel(model, coco, i, f"detected, {seq}", device, score_threshold))
    return draw_panels(panels, class_names, out_path, suptitle=f"patient {pid}, z = {z:.0f} mm")
