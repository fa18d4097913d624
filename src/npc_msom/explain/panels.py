"""The report's view of where a slice model looks, on the run's validation patients.

For one model (the run's survival model when it is a slice model, else the first main slice
model): each validation patient's ``slices_per_patient`` highest-probability slices (the largest
shares of its score under the mean) get their Grad-CAM map. Across the validation patients the
fraction of the saliency inside the tumour regions (the contours: GTV and nodes) is set against the
fraction of the slice they cover, and the model-randomisation check gives the rank correlation of
the maps with those of a copy whose weights were drawn again. Four patients are shown, chosen by
rule: the highest- and the lowest-scored MSOM patient and non-MSOM patient.

Writes ``evaluation/saliency.csv`` (one row per validation patient) and
``evaluation/figures/saliency.png``; returns the summary for evaluation.json.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SALIENCY_COLUMNS = ("patient_id", "label", "score", "n_slices", "saliency_in_tumour", "tumour_area_share",
                    "shown_as")
SLICE_MODELS = ("fusion", "mri")
SANITY_SLICES = 48       # slices of the model-randomisation check


def choose_model(main_keys: list[str], survival_key: str | None) -> str | None:
    """The slice model to explain: the survival model if it is one, else the first main one."""
    keys = ([survival_key] if survival_key else []) + list(main_keys)
    return next((k for k in keys if k and k.split("/")[-1] in SLICE_MODELS and not k.startswith("combined/")), None)


def shown_patients(scores: pd.DataFrame) -> dict[str, str]:
    """{patient_id: why} of the highest- and lowest-scored MSOM and non-MSOM validation patients."""
    out: dict[str, str] = {}
    for label, name in ((1, "MSOM"), (0, "no MSOM")):
        d = scores[scores["label"] == label].sort_values(["score", "patient_id"], kind="mergesort")
        if d.empty:
            continue
        for pid, why in ((d["patient_id"].iloc[-1], f"{name}, highest score"),
                         (d["patient_id"].iloc[0], f"{name}, lowest score")):
            out.setdefault(str(pid), why)
    return out


def saliency_view(config, run_dir: str | Path, key: str, out_dir: str | Path, *, slices_per_patient: int = 2,
                  device="cpu") -> dict:
    """See the module docstring; ``key`` "<sequence>/<mri|fusion>"."""
    import torch  # noqa: PLC0415

    from npc_msom.detection.data import load_slice  # noqa: PLC0415
    from npc_msom.predict import RunModels, load_stage_model  # noqa: PLC0415
    from npc_msom.prediction.patient import contour_masks  # noqa: PLC0415
    from npc_msom.prediction.scores import read_scores  # noqa: PLC0415
    from npc_msom.runtime import write_text_atomic  # noqa: PLC0415

    from .saliency import gradcam, inside_fraction, randomized_copy, rank_correlation  # noqa: PLC0415
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    seq, model = key.split("/")
    folder = run_dir / "prediction" / seq / model
    # the run's models under the stage's own config (read_run would re-check config.yaml)
    sm = load_stage_model(RunModels(run_dir, config, [seq]), seq, model, torch.device(device))
    scores = read_scores(folder / "patient_scores.csv")
    scores = scores[(scores["split"] == "val") & np.isfinite(scores["score"].to_numpy(float))]
    slices = pd.read_csv(folder / "slice_scores.csv", dtype={"patient_id": str})
    slices = slices[slices["patient_id"].isin(set(scores["patient_id"]))]
    top = (slices.sort_values(["patient_id", "probability", "z_mm"], ascending=[True, False, True], kind="mergesort")
           .groupby("patient_id", sort=False).head(max(1, int(slices_per_patient))))
    if top.empty:
        return {"model": key, "note": "no validation slice"}
    masks = contour_masks(run_dir, seq, top)
    images = np.stack([load_slice(run_dir / "preprocessed" / seq / f) for f in top["file_name"]])
    tumour = np.stack([masks[f]["GTV"] | masks[f]["GTVln"] for f in top["file_name"]])
    clin = None
    if sm.encoder is not None:
        from npc_msom.evaluation.stage import read_clinical  # noqa: PLC0415
        table = read_clinical(run_dir)
        clin = sm.encoder.transform(table.loc[list(top["patient_id"])])
    maps = gradcam(sm.net, images, clin, device)
    # the sanity check on an even spread of at most SANITY_SLICES of those slices (half the cost)
    pick = np.unique(np.linspace(0, len(images) - 1, min(len(images), SANITY_SLICES)).round().astype(int))
    rnd = gradcam(randomized_copy(sm.net, seed=config.seed), images[pick], None if clin is None else clin[pick],
                  device)
    rho = rank_correlation(maps[pick], rnd)
    inside, area = inside_fraction(maps, tumour)
    top = top.assign(inside=inside, area=area)
    shown = shown_patients(scores)
    rows = []
    for r in scores.sort_values("patient_id").itertuples():
        d = top[top["patient_id"] == r.patient_id]
        ok = np.isfinite(d["inside"].to_numpy(float))
        rows.append({"patient_id": r.patient_id, "label": int(r.label), "score": float(r.score),
                     "n_slices": int(len(d)),
                     "saliency_in_tumour": float(d["inside"][ok].mean()) if ok.any() else np.nan,
                     "tumour_area_share": float(d["area"][ok].mean()) if ok.any() else np.nan,
                     "shown_as": shown.get(r.patient_id, "")})
    table = pd.DataFrame(rows, columns=list(SALIENCY_COLUMNS))
    write_text_atomic(out_dir / "saliency.csv", table.to_csv(index=False, float_format="%.6g"))
    fig = _figure(images, maps, tumour, top, shown, scores, out_dir / "figures" / "saliency.png", key)
    ok = np.isfinite(inside)
    with_tumour = ok & (area > 0)
    return {"model": key, "method": "Grad-CAM (Captum LayerGradCam) on the pooled FPN level, ReLU",
            "slices_per_patient": int(slices_per_patient), "n_patients": int(table["n_slices"].gt(0).sum()),
            "n_slices": int(len(top)),
            "saliency_in_tumour": float(inside[with_tumour].mean()) if with_tumour.any() else None,
            "tumour_area_share": float(area[with_tumour].mean()) if with_tumour.any() else None,
            "n_slices_with_tumour": int(with_tumour.sum()),
            "randomised_weights_rank_correlation": rho, "randomised_weights_slices": int(len(pick)),
            "shown": shown, "figure": fig}


def _figure(images, maps, tumour, top: pd.DataFrame, shown: dict, scores: pd.DataFrame, path: Path, key: str):
    """One panel per shown patient: its highest-probability slice, the map over it, contours in red."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from npc_msom.evaluation.figures import save_figure  # noqa: PLC0415
    pids = list(shown)
    if not pids:
        return None
    score = dict(zip(scores["patient_id"], scores["score"]))
    fig, axes = plt.subplots(1, len(pids), figsize=(2.6 * len(pids), 3.0), squeeze=False)
    positions = {pid: i for i, pid in reversed(list(enumerate(top["patient_id"])))}   # first slice of each
    for ax, pid in zip(axes[0], pids):
        i = positions[pid]
        peak = float(maps[i].max()) or 1.0
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(maps[i] / peak, cmap="jet", alpha=0.4, vmin=0, vmax=1, interpolation="bilinear")
        if tumour[i].any():
            ax.contour(tumour[i].astype(float), levels=[0.5], colors=["red"], linewidths=0.8)
        ax.set_title(f"{shown[pid]}\n{pid}: score {score[pid]:.2f}, p {top['probability'].iloc[i]:.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"Where {key} looks: Grad-CAM on each patient's highest-probability slice (contours red)",
                 fontsize=8)
    fig.tight_layout()
    png, svg = save_figure(fig, path)
    return [str(png), str(svg)]
