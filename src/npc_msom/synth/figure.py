"""The realism check: synthetic T2WI slices beside real NPC T2WI slices, each with its GTV outline.

Run ``python -m npc_msom.synth.figure [--reference DIR] [--out PNG]`` to redraw
``docs/figures/synth_vs_real_t2wi.png``. The real slices (512 x 512, 8-bit, GTV masks) are from
the Zenodo NPC dataset (doi 10.5281/zenodo.10900202, CC BY 4.0), see the reference folder's README.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from npc_msom.config import SynthConfig
from npc_msom.synth.cohort import cohort_table, make_patient

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "real_npc_t2wi"


def synthetic_t2_slice(seed: int, index: int, *, size: int = 512) -> tuple[np.ndarray, np.ndarray, dict]:
    """The T2WI slice with the largest GTV area of one synthetic patient, resampled (nearest
    mask, linear image) to ``size`` x ``size`` over its field of view and windowed to 0..255.

    Returns (image uint8 (size, size), GTV mask bool (size, size), info dict).
    """
    from scipy import ndimage

    table = cohort_table(SynthConfig(patients=index + 1, seed=seed))
    p = make_patient(table.clinical.at[index, "patient_id"], seed, index,
                     clinical_row=table.clinical.iloc[index].to_dict(), truth_row=table.truth.iloc[index].to_dict())
    s = p.series["T2WI"]
    k = int(np.argmax(s.masks["GTV"].sum(axis=(1, 2))))
    img, mask = s.image[k], s.masks["GTV"][k]
    zy, zx = size / img.shape[0], size / img.shape[1]
    img = ndimage.zoom(img, (zy, zx), order=1)
    mask = ndimage.zoom(mask.astype(np.uint8), (zy, zx), order=0).astype(bool)
    lo, hi = np.percentile(img, [0.5, 99.7])
    img8 = np.clip((img - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    info = {"patient_id": p.patient_id, "t_stage": p.clinical["t_stage"], "description": s.description,
            "spacing_mm": s.geometry.spacing_mm, "gtv_area_mm2": float(s.masks["GTV"][k].sum() *
                                                                     s.geometry.spacing_mm[0] * s.geometry.spacing_mm[1]),
            "gtv_volume_ml": p.latent.imaging["gtv_volume_ml"]}
    return img8, mask, info


def comparison_figure(out_path: str | Path, reference_dir: str | Path = DEFAULT_REFERENCE, *,
                      synthetic: tuple[tuple[int, int], ...] = ((2024, 10), (2024, 15))) -> Path:
    """Real T2WI slices (left) and synthetic ones (right), GTV outlined in red. Writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from skimage.measure import find_contours

    reference_dir = Path(reference_dir)
    panels = []
    for img_path in sorted(reference_dir.glob("*_image.jpg")):
        mask_path = img_path.with_name(img_path.name.replace("_image", "_gtv_mask"))
        img = np.asarray(Image.open(img_path).convert("L"))
        mask = np.asarray(Image.open(mask_path).convert("L")) > 127
        panels.append((img, mask, f"real {img_path.stem.split('_')[0]}"))
    for seed, index in synthetic:
        img, mask, info = synthetic_t2_slice(seed, index)
        panels.append((img, mask, f"synthetic {info['patient_id']} ({info['t_stage']}, "
                                  f"{info['gtv_volume_ml']:.0f} ml)\n{info['description']}, "
                                  f"{info['spacing_mm'][0]:.2f} mm"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), dpi=100)
    for ax, (img, mask, title) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        for c in find_contours(mask.astype(float), 0.5):
            ax.plot(c[:, 1], c[:, 0], color="red", linewidth=0.8)
        ax.set_title(title, fontsize=7)
        ax.set_axis_off()
    fig.suptitle("T2WI through the nasopharynx: real (Zenodo 10900202, CC BY 4.0) vs synthetic; GTV in red",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    log.info("wrote %s", out_path)
    return out_path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE))
    ap.add_argument("--out", default="docs/figures/synth_vs_real_t2wi.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    comparison_figure(args.out, args.reference)


if __name__ == "__main__":
    main()
