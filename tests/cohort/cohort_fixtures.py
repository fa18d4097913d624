"""Helpers for the cohort reader's tests: tiny cohorts written with the project's own DICOM writer.

(A module of its own rather than conftest.py, whose name other test folders use too.)
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from matplotlib.path import Path as MplPath

from npc_msom.cohort.model import Geometry
from npc_msom.cohort.schema import CLINICAL_SCHEMA
from npc_msom.config import SEQUENCES
from npc_msom.synth.dicom_writer import make_uid, mask_to_contours, write_mr_series, write_rtstruct

DESCRIPTIONS = {"T1WI": "T1_TSE_TRA", "T2WI": "t2_tse_fs_tra", "CE-T1WI": "T1_TSE_FS_TRA_POST"}
CONTRAST = {"CE-T1WI": "Gadovist"}
SHAPE = (12, 48, 48)   # (z, y, x)


def rotation(deg_z: float = 0.0, deg_x: float = 0.0) -> np.ndarray:
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def make_geometry(shape=SHAPE, spacing=(0.9, 0.9, 4.0), origin=(-21.0, -18.0, -30.0),
                  direction: np.ndarray | None = None) -> Geometry:
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    return Geometry(origin_mm=tuple(float(v) for v in origin), spacing_mm=tuple(float(v) for v in spacing),
                    direction=tuple(float(v) for v in d.reshape(-1)), size=(shape[2], shape[1], shape[0]))


def voxel_centres_mm(g: Geometry) -> np.ndarray:
    """(z, y, x, 3) LPS mm of every voxel centre."""
    nx, ny, nz = g.size
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    d = np.asarray(g.direction).reshape(3, 3)
    idx = np.stack([i * g.spacing_mm[0], j * g.spacing_mm[1], k * g.spacing_mm[2]], axis=-1)
    return np.asarray(g.origin_mm) + idx @ d.T


def ellipsoid(g: Geometry, centre_mm, radii_mm) -> np.ndarray:
    p = voxel_centres_mm(g) - np.asarray(centre_mm)
    return (p / np.asarray(radii_mm)) ** 2 @ np.ones(3) <= 1.0


def truth_masks(g: Geometry) -> dict[str, np.ndarray]:
    """GTV: an ellipsoid with a necrotic hole; GTVln: two nodes (left and right)."""
    c = voxel_centres_mm(g)[g.size[2] // 2, g.size[1] // 2, g.size[0] // 2]
    d = np.asarray(g.direction).reshape(3, 3)
    gtv = ellipsoid(g, c, (9.0, 7.0, 14.0)) & ~ellipsoid(g, c + 1.0 * d[:, 0], (2.6, 2.6, 5.0))
    node_l = ellipsoid(g, c + 13.0 * d[:, 0] + 8.0 * d[:, 1], (3.5, 3.5, 6.0))
    node_r = ellipsoid(g, c - 13.0 * d[:, 0] + 8.0 * d[:, 1], (3.0, 3.0, 6.0))
    return {"GTV": gtv, "GTVln_L": node_l, "GTVln_R": node_r}


def make_image(shape=SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    return (200.0 + 3.0 * x + 2.0 * y + 5.0 * z + rng.normal(0, 5, shape)).astype(np.float32)


@dataclass
class WrittenPatient:
    patient_id: str
    folder: Path
    series: dict = field(default_factory=dict)       # sequence -> WrittenSeries
    geometry: dict = field(default_factory=dict)     # sequence -> Geometry
    images: dict = field(default_factory=dict)       # sequence -> float32 (z, y, x)
    truth: dict = field(default_factory=dict)        # sequence -> {"GTV": mask, "GTVln": mask}
    rtstructs: dict = field(default_factory=dict)    # sequence -> Path


def write_patient(root: Path, pid: str, *, seed: int = 0, layout: str = "nested",
                  sequences=SEQUENCES, direction=None, roi_names=("GTVnx", "GTVnd_L", "GTVnd_R"),
                  extra_rois: dict | None = None, random_names: bool = True, shuffle_instances: bool = True,
                  with_rtstruct: bool = True, descriptions=None, patient_name: str | None = None,
                  shape=SHAPE) -> WrittenPatient:
    """One patient: a series per sequence (+ an RTSTRUCT each) under ``root``.

    layout: "nested" -> root/pid/<study>/<sequence>/..., "flat" -> every file directly in root.
    ROI names: (primary, node 1, node 2) spellings; extra_rois adds name -> list of contours.
    """
    rng = random.Random(f"{pid}-{seed}")
    wp = WrittenPatient(pid, root if layout == "flat" else root / pid)
    study = make_uid(pid, seed, "study")
    for_uid = make_uid(pid, seed, "for")
    descriptions = descriptions or DESCRIPTIONS
    for n, seq in enumerate(sequences):
        g = make_geometry(shape, direction=direction)
        img = make_image(shape, seed=seed * 10 + n)
        out = root if layout == "flat" else root / pid / f"study_{seed}" / f"s{n}_{rng.randrange(10**6)}"
        names = None
        if random_names:
            tags = [f"{rng.getrandbits(40):010x}" for _ in range(shape[0])]
            names = lambda k, uid, tags=tags: f"IM{tags[k]}"  # noqa: E731 - no extension, random
        ws = write_mr_series(out, img, g, patient_id=pid, study_uid=study, frame_of_reference_uid=for_uid,
                             series_description=descriptions[seq], series_number=n + 2,
                             contrast_agent=CONTRAST.get(seq), file_name=names, patient_name=patient_name,
                             seed_uid=f"{pid}|{seed}|{seq}")
        if shuffle_instances:
            shuffle_instance_numbers(ws.paths, rng)
        t = truth_masks(g)
        wp.series[seq], wp.geometry[seq], wp.images[seq] = ws, g, ws_image(img, ws)
        wp.truth[seq] = {"GTV": t["GTV"], "GTVln": t["GTVln_L"] | t["GTVln_R"]}
        if with_rtstruct:
            rois = {roi_names[0]: mask_to_contours(t["GTV"], g),
                    roi_names[1]: mask_to_contours(t["GTVln_L"], g),
                    roi_names[2]: mask_to_contours(t["GTVln_R"], g)}
            rois.update(extra_rois or {})
            rt = (root if layout == "flat" else out.parent) / f"RS_{rng.getrandbits(32):08x}.dcm"
            write_rtstruct(rt, ws, rois, geometry=g, seed_uid=f"{pid}|{seed}|{seq}|rt")
            wp.rtstructs[seq] = rt
    return wp


def ws_image(img: np.ndarray, ws) -> np.ndarray:
    """The image as a reader gets it back (the writer stores floats as uint16 + rescale)."""
    import pydicom
    out = []
    for p in ws.paths:
        ds = pydicom.dcmread(p)
        out.append(ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return np.stack(out).astype(np.float32)


def shuffle_instance_numbers(paths, rng: random.Random) -> None:
    import pydicom
    numbers = list(range(1, len(paths) + 1))
    rng.shuffle(numbers)
    for p, n in zip(paths, numbers):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = n
        ds.save_as(p)


def clinical_row(pid: str, i: int = 0) -> dict:
    msom = i % 2
    return {"patient_id": pid, "age": 40 + i, "gender": "MF"[i % 2], "t_stage": "T3", "n_stage": "N1",
            "clinical_stage": "III", "pathology": "non-keratinizing", "pni": 50.5, "hgb_g_l": 140,
            "induction_chemo": 1, "concurrent_chemo": 1, "adjuvant_chemo": 0, "targeted_therapy": i % 2,
            "gtv_dose_gy": 70, "cisplatin_mg_m2": 200, "chemo_cycles": 3, "msom": msom,
            "msom_organ": "liver" if msom else "", "dmfs_months": 13.0 if msom else 40.0,
            "os_months": 40.0, "os_event": 0}


def write_clinical(path: Path, pids, rows: list[dict] | None = None) -> Path:
    rows = rows if rows is not None else [clinical_row(p, i) for i, p in enumerate(pids)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c.name for c in CLINICAL_SCHEMA])
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / float(s)


# ---- analytic shapes and an independent reader (SimpleITK geometry + matplotlib fill)

def ellipsoid_matrix(radii, rot):
    return rot @ np.diag(1.0 / np.asarray(radii, float) ** 2) @ rot.T


def inside(points, centre, A):
    d = points - centre
    return np.einsum("...i,ij,...j->...", d, A, d) <= 1.0


def cross_sections(g, centre, A, n_points=90):
    """Polygons (LPS mm) where the ellipsoid (x-c)^T A (x-c) <= 1 cuts each slice plane of g."""
    d = np.asarray(g.direction).reshape(3, 3)
    r, c, n = d[:, 0], d[:, 1], d[:, 2]
    out = []
    t = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    for k in range(g.size[2]):
        o = np.asarray(g.origin_mm) + k * g.spacing_mm[2] * n
        dd = o - centre
        M = np.array([[r @ A @ r, r @ A @ c], [c @ A @ r, c @ A @ c]])
        b = np.array([r @ A @ dd, c @ A @ dd])
        w0 = -np.linalg.solve(M, b)
        q = 1.0 - (dd @ A @ dd - b @ np.linalg.solve(M, b))
        if q <= 0:
            continue
        lam, V = np.linalg.eigh(M)
        uv = w0[:, None] + V @ (np.sqrt(q / lam)[:, None] * np.stack([np.cos(t), np.sin(t)]))
        pts = o[None, :] + uv[0][:, None] * r[None, :] + uv[1][:, None] * c[None, :]
        if len(pts) >= 3:
            out.append(pts)
    return out


def write_analytic_patient(root, pid="A01"):
    """Three oblique series (different grids), each with an RTSTRUCT of analytic contours.

    GTV: an ellipsoid with an ellipsoidal necrotic core cut out; GTVln: two ellipsoidal nodes.
    Returns sequence -> (geometry, truth masks, written series, RTSTRUCT path).
    """
    specs = {"T1WI": ("T1_TSE_TRA", rotation(12, 8), (0.8, 0.8, 3.0), (14, 56, 56)),
             "T2WI": ("T2_TSE_TRA", rotation(-9, 14), (0.9, 0.85, 3.5), (12, 52, 52)),
             "CE-T1WI": ("T1_FS_TRA_+C", rotation(25, -6), (0.75, 0.75, 3.0), (14, 60, 60))}
    rot = rotation(30, 20)
    shapes = {"GTV": ((0.0, 4.0, 2.0), (11.0, 8.0, 13.0)), "core": ((1.0, 4.0, 2.0), (3.5, 3.0, 4.0)),
              "GTVnd_L": ((15.0, 14.0, -4.0), (4.5, 4.0, 7.0)), "GTVnd_R": ((-15.0, 13.0, -3.0), (4.0, 4.0, 6.0))}
    study, frame = make_uid(pid, "study"), make_uid(pid, "for")
    out = {}
    for n, (seq, (desc, d, sp, shape)) in enumerate(specs.items()):
        centre_grid = np.array([shape[2] - 1, shape[1] - 1, shape[0] - 1]) / 2 * np.asarray(sp)
        origin = -(d @ centre_grid)          # grid centred on the patient origin
        g = make_geometry(shape, spacing=sp, origin=origin, direction=d)
        ws = write_mr_series(root / pid / seq, make_image(shape, n), g, patient_id=pid, study_uid=study,
                             frame_of_reference_uid=frame, series_description=desc, series_number=n + 1)
        pts = voxel_centres_mm(g)
        A = {k: ellipsoid_matrix(r, rot) for k, (_, r) in shapes.items()}
        C = {k: np.asarray(c) for k, (c, _) in shapes.items()}
        truth = {"GTV": inside(pts, C["GTV"], A["GTV"]) & ~inside(pts, C["core"], A["core"]),
                 "GTVln": inside(pts, C["GTVnd_L"], A["GTVnd_L"]) | inside(pts, C["GTVnd_R"], A["GTVnd_R"]),
                 "core": inside(pts, C["core"], A["core"])}
        rois = {"GTVp": cross_sections(g, C["GTV"], A["GTV"]) + cross_sections(g, C["core"], A["core"]),
                "GTVnd_L": cross_sections(g, C["GTVnd_L"], A["GTVnd_L"]),
                "GTVnd_R": cross_sections(g, C["GTVnd_R"], A["GTVnd_R"])}
        rt = root / pid / f"RS_{seq}.dcm"
        write_rtstruct(rt, ws, rois, geometry=g)
        out[seq] = (g, truth, ws, rt)
    return out


def independent_masks(series_dir, rt_path, names_by_structure):
    """SimpleITK (GDCM) for the geometry, pydicom for the contours, matplotlib for the fill."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_dir)))
    img = reader.Execute()
    nx, ny, nz = img.GetSize()
    ds = pydicom.dcmread(rt_path)
    names = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(float)
    out = {}
    for structure, roi_names in names_by_structure.items():
        mask = np.zeros((nz, ny, nx), bool)
        for rc in ds.ROIContourSequence:
            if names[int(rc.ReferencedROINumber)] not in roi_names:
                continue
            per_roi = np.zeros_like(mask)
            for c in rc.ContourSequence:
                pts = np.asarray(c.ContourData, float).reshape(-1, 3)
                idx = np.array([img.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in pts])
                k = int(round(idx[:, 2].mean()))
                inside_ = MplPath(idx[:, :2]).contains_points(centres).reshape(ny, nx)
                per_roi[k] ^= inside_
            mask |= per_roi
        out[structure] = mask
    return out
