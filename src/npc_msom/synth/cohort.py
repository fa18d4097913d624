"""The synthetic cohort: patients made by the phantom and outcome model, written as a real export.

Output layout of ``write_cohort(out_dir, config)``::

    out_dir/
      synth.json                      the config and a summary (written first, completed last)
      clinical.csv                    CLINICAL_SCHEMA columns, in that order
      truth.csv                       patient_id, true_risk, linear predictors, latent features, msom
      dicom/<patient_id>/<series folder>/   MR slices (one file per slice) + one RTSTRUCT per series

A patient is rendered into ``dicom/.tmp-<patient_id>-<pid>/`` and renamed into place when every
file is written, so a folder ``dicom/<patient_id>`` is always complete; a rerun skips those.
Series folders, file names, SeriesDescriptions, vendors and ROI names vary between patients as
in real exports (see ``docs/synthetic_cohort.md``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.cohort.model import Geometry
from npc_msom.cohort.schema import CLINICAL_SCHEMA
from npc_msom.config import SEQUENCES, SynthConfig
from npc_msom.errors import ConfigError
from npc_msom.runtime import atomic_path, progress, write_json_atomic
from npc_msom.synth import outcome as om
from npc_msom.synth import phantom as ph
from npc_msom.synth.dicom_writer import make_uid, mask_to_contours, write_mr_series, write_rtstruct

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TRUTH_COLUMNS: tuple[str, ...] = (
    "patient_id", "true_risk", "eta", "eta_imaging", "eta_clinical", "msom", "t_stage", "n_stage",
    "gtv_volume_ml", "n_nodes", "node_volume_ml", "n_necrotic_nodes", "necrosis_volume_ml",
    "heterogeneity", "tumour_side")

# vendor -> (model names, SeriesDescriptions per sequence, series numbers, uses RescaleSlope)
VENDORS: dict[str, dict] = {
    "SIEMENS": dict(models=("Avanto", "Aera", "Espree"),
                    desc={"T1WI": ("t1_tse_tra", "T1 TSE AX"),
                          "T2WI": ("t2_tse_tra_fs", "t2_tse_tra"),
                          "CE-T1WI": ("t1_tse_fs_tra_post", "T1 FS AX +C")},
                    numbers=(3, 4, 9), slope=False),
    "GE MEDICAL SYSTEMS": dict(models=("Signa HDxt", "Optima MR450w"),
                               desc={"T1WI": ("AX T1 FSE", "Ax T1"),
                                     "T2WI": ("AX T2 FRFSE FS", "Ax T2 FSE"),
                                     "CE-T1WI": ("AX T1 FS +C", "+C Ax T1 FS")},
                               numbers=(2, 3, 7), slope=False),
    "Philips Medical Systems": dict(models=("Achieva", "Ingenia"),
                                    desc={"T1WI": ("T1W_TSE_TRA", "T1 TSE AX"),
                                          "T2WI": ("T2W_SPAIR_TRA", "T2W_TSE_TRA"),
                                          "CE-T1WI": ("T1W_TSE_SPIR_TRA_GD", "T1 FS AX +C")},
                                    numbers=(301, 401, 801), slope=True),
}
CONTRAST_AGENTS = ("Gd-DTPA", "Magnevist", "DOTAREM", "Gadovist 1.0")
# ROI naming styles: (primary name, nodes name, how nodes are split)
ROI_STYLES: tuple[tuple[str, str, str], ...] = (
    ("GTV", "GTVln", "merged"), ("GTVnx", "GTVnd", "merged"), ("GTVp", "GTVnd", "side"),
    ("GTVp", "GTVn", "each"), ("GTV", "GTVln", "merged"))
# matrix (x = y) choices per sequence with their probabilities; T2 is often finer
MATRICES = {"T1WI": ((256, 288, 320, 384), (0.6, 0.15, 0.2, 0.05)),
            "T2WI": ((256, 320, 384, 448, 512), (0.35, 0.4, 0.17, 0.05, 0.03)),
            "CE-T1WI": ((256, 288, 320, 384), (0.6, 0.15, 0.2, 0.05))}
THICKNESS_MM = ((3.0, 4.0, 5.0, 6.0), (0.1, 0.25, 0.45, 0.2))
GAP_MM = ((0.0, 0.5, 1.0), (0.3, 0.2, 0.5))


def patient_id_of(index: int) -> str:
    return f"NPC{index + 1:04d}"


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), int(stream)])


# ------------------------------------------------------------------------------- latents

@dataclass(frozen=True)
class PatientLatent:
    """Everything about a patient that is drawn before any image: clinical covariates, anatomy,
    lesions, imaging features (analytic), model features and outcome-model noise."""
    patient_id: str
    index: int
    seed: int
    clinical: dict
    anatomy: ph.Anatomy
    lesions: ph.Lesions
    imaging: dict
    features: dict
    noise: dict

    @property
    def eta(self) -> float:
        return om.linear_predictor(self.features)


def sample_latent(seed: int, index: int, patient_id: str | None = None) -> PatientLatent:
    """Deterministic in (seed, index); independent of the cohort size."""
    pid = patient_id or patient_id_of(index)
    clinical = om.sample_clinical(_rng(seed, index, 0))
    rng = _rng(seed, index, 1)
    anat = ph.sample_anatomy(rng, clinical["gender"] == "M")
    lesions = ph.sample_lesions(rng, anat, clinical["t_stage"], clinical["n_stage"])
    imaging = ph.imaging_features(lesions)
    features = om.feature_vector(clinical, imaging)
    noise = om.sample_patient_noise(_rng(seed, index, 2))
    return PatientLatent(pid, index, seed, clinical, anat, lesions, imaging, features, noise)


@dataclass(frozen=True)
class CohortTable:
    """The cohort without images: clinical.csv and truth.csv as data frames (one row per patient)."""
    clinical: pd.DataFrame
    truth: pd.DataFrame

    @property
    def oracle_auc(self) -> float:
        return _auc(self.truth["msom"].to_numpy(), self.truth["true_risk"].to_numpy())


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def cohort_table(config: SynthConfig) -> CohortTable:
    """Clinical and truth tables of a cohort (no images; ~5 ms per patient)."""
    latents = [sample_latent(config.seed, i) for i in range(config.patients)]
    return _table_from_latents(latents, config)


def _table_from_latents(latents: list[PatientLatent], config: SynthConfig) -> CohortTable:
    etas = np.array([lt.eta for lt in latents])
    outs = om.assign_outcomes(etas, [lt.noise for lt in latents], config.msom_fraction, config.seed)
    clin_rows, truth_rows = [], []
    for lt, o in zip(latents, outs):
        row = {"patient_id": lt.patient_id, **lt.clinical}
        row.update({"msom": o["msom"], "msom_organ": o["msom_organ"], "dmfs_months": o["dmfs_months"],
                    "os_months": o["os_months"], "os_event": o["os_event"]})
        clin_rows.append({c.name: row[c.name] for c in CLINICAL_SCHEMA})
        truth_rows.append({
            "patient_id": lt.patient_id, "true_risk": o["true_risk"], "eta": lt.eta,
            "eta_imaging": om.linear_predictor(lt.features, om.IMAGING_FEATURES),
            "eta_clinical": om.linear_predictor(
                lt.features, tuple(k for k in om.COEFFICIENTS if k not in om.IMAGING_FEATURES)),
            "msom": o["msom"], "t_stage": lt.clinical["t_stage"], "n_stage": lt.clinical["n_stage"],
            **{k: lt.imaging[k] for k in ("gtv_volume_ml", "n_nodes", "node_volume_ml",
                                         "n_necrotic_nodes", "necrosis_volume_ml", "heterogeneity")},
            "tumour_side": "L" if lt.lesions.primary.centre_mm[0] >= 0 else "R",
        })
    clinical = pd.DataFrame(clin_rows, columns=[c.name for c in CLINICAL_SCHEMA])
    truth = pd.DataFrame(truth_rows, columns=list(TRUTH_COLUMNS))
    return CohortTable(clinical=clinical, truth=truth)


# ------------------------------------------------------------------------------ patients

@dataclass
class SynthSeries:
    """One rendered series.

    image: float32 (z, y, x), the values a reader gets (stored * RescaleSlope + RescaleIntercept).
    stored: uint16 (z, y, x), the pixel data written.
    masks: {"GTV": bool (z, y, x), "GTVln": bool (z, y, x)} on this grid (voxel-centre truth).
    lesion_labels: uint8 (z, y, x): 0 none, 1 primary, 2 + n node n.
    """
    sequence: str
    image: np.ndarray
    stored: np.ndarray
    geometry: Geometry
    masks: dict[str, np.ndarray]
    lesion_labels: np.ndarray
    description: str
    series_number: int
    contrast: str
    slice_thickness_mm: float
    rescale_slope: float
    tags: dict = field(default_factory=dict)


@dataclass
class SynthPatient:
    """A synthetic patient: three series sharing one FrameOfReferenceUID, the clinical row
    (CLINICAL_SCHEMA, outcomes included), the truth row and the latent description."""
    patient_id: str
    index: int
    seed: int
    series: dict[str, SynthSeries]
    clinical: dict
    truth: dict
    latent: PatientLatent
    study_uid: str
    frame_of_reference_uid: str
    export: dict  # naming choices: vendor, roi style, file and folder styles

    @property
    def imaging_features(self) -> dict:
        return dict(self.latent.imaging)


def _sample_grid(rng: np.random.Generator, latent: PatientLatent, sequence: str,
                 zeta_top: float, zeta_bottom: float) -> tuple[Geometry, float]:
    """An axial grid covering the head and neck, and its slice thickness (mm)."""
    anat = latent.anatomy
    mats, probs = MATRICES[sequence]
    m = int(rng.choice(mats, p=probs))
    fov = rng.uniform(200.0, 240.0)
    sp = float(np.clip(fov / m, 0.4, 0.9))
    sp = round(sp, 5)
    fov = sp * m
    nx = ny = m
    if rng.random() < 0.25 and fov * 0.875 >= 190.0:  # rectangular FOV, phase left-right
        nx = int(round(m * 0.875 / 2) * 2)
    thick = float(rng.choice(THICKNESS_MM[0], p=THICKNESS_MM[1]))
    gap = float(rng.choice(GAP_MM[0], p=GAP_MM[1]))
    sz = min(thick + gap, 6.0)  # slice interval 3-6 mm
    a, b, cv = anat.body_halfaxes(0.0)
    cx = anat.x0_mm + rng.normal(0, 3.0)
    cy = anat.y0_mm + cv * anat.head_scale + rng.normal(0, 4.0)
    top = zeta_top + rng.uniform(0.0, 3.0)
    bottom = zeta_bottom - rng.uniform(0.0, 3.0)
    nz = int(math.ceil((top - bottom) / sz)) + 1
    origin = (round(cx - (nx - 1) / 2 * sp, 2), round(cy - (ny - 1) / 2 * sp, 2),
              round(anat.z0_mm + bottom, 2))
    geom = Geometry(origin_mm=origin, spacing_mm=(sp, sp, sz), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
                    size=(nx, ny, nz))
    return geom, thick


def _coverage(latent: PatientLatent, rng: np.random.Generator) -> tuple[float, float]:
    """Height range (patient frame, mm) from the skull base to the lower neck, including every
    lesion with a margin."""
    ns = latent.anatomy.neck_scale
    top = rng.uniform(20.0, 28.0) * ns
    bottom = -rng.uniform(84.0, 96.0) * ns
    les = [latent.lesions.primary, *latent.lesions.nodes]
    top = max(top, max(float(o.bounds_mm()[1][2]) for o in les) + 3.0)
    bottom = min(bottom, min(float(o.bounds_mm()[0][2]) for o in les) - 3.0)
    return top, bottom


def _export_choices(rng: np.random.Generator) -> dict:
    vendor = str(rng.choice(list(VENDORS)))
    v = VENDORS[vendor]
    study_day = date(2015, 1, 1) + timedelta(days=int(rng.integers(0, 5 * 365)))
    return {
        "vendor": vendor, "model": str(rng.choice(v["models"])),
        "desc": {s: str(rng.choice(v["desc"][s])) for s in SEQUENCES},
        "numbers": dict(zip(SEQUENCES, v["numbers"])),
        "slope": bool(v["slope"]),
        "agent": str(rng.choice(CONTRAST_AGENTS)),
        "roi_style": int(rng.integers(len(ROI_STYLES))),
        "file_style": int(rng.integers(3)),
        "folder_style": int(rng.integers(3)),
        "oar": bool(rng.random() < 0.4),
        "study_date": study_day.strftime("%Y%m%d"),
        "birth_offset_days": int(rng.integers(0, 365)),
        "gains": {s: float(math.exp(rng.uniform(math.log(0.7), math.log(3.5)))) for s in SEQUENCES},
        "slopes": {s: round(float(rng.uniform(0.6, 2.5)), 4) for s in SEQUENCES},
        "noise": {s: float(rng.uniform(0.010, 0.022)) for s in SEQUENCES},
        "bias": {s: float(rng.uniform(0.06, 0.16)) for s in SEQUENCES},
        "tr_te": {"T1WI": (float(rng.integers(400, 651)), float(rng.integers(8, 16)), int(rng.integers(2, 5))),
                  "T2WI": (float(rng.integers(3000, 5001)), float(rng.integers(80, 111)), int(rng.integers(12, 21))),
                  "CE-T1WI": (float(rng.integers(400, 651)), float(rng.integers(8, 16)), int(rng.integers(2, 5)))},
    }


def _contrast_of(sequence: str, description: str) -> str:
    if sequence == "T1WI":
        return "T1"
    if sequence == "CE-T1WI":
        return "CET1FS"
    return "T2FS" if re.search(r"fs|spair|stir", description, re.I) else "T2"


def make_patient(patient_id: str, seed: int, index: int = 0, *, clinical_row: dict | None = None,
                 truth_row: dict | None = None, config: SynthConfig | None = None) -> SynthPatient:
    """Render one patient: three axial series (T1WI, T2WI, CE-T1WI) with truth masks.

    The images depend only on (seed, index). The outcome part of the clinical row is a cohort
    property (exactly round(msom_fraction * n) patients have MSOM); pass ``clinical_row`` and
    ``truth_row`` from :func:`cohort_table`, or they are computed from the cohort
    ``config`` (default: ``SynthConfig(patients=max(60, index + 1), seed=seed)``).
    """
    latent = sample_latent(seed, index, patient_id)
    if clinical_row is None or truth_row is None:
        cfg = config or SynthConfig(patients=max(SynthConfig().patients, index + 1), seed=seed)
        if cfg.seed != seed or cfg.patients <= index:
            raise ConfigError(f"config (seed {cfg.seed}, {cfg.patients} patients) does not contain "
                              f"patient index {index} of seed {seed}")
        table = cohort_table(cfg)
        clinical_row = table.clinical.iloc[index].to_dict()
        truth_row = table.truth.iloc[index].to_dict()
        clinical_row["patient_id"] = truth_row["patient_id"] = patient_id
    rng = _rng(seed, index, 3)
    export = _export_choices(rng)
    zeta_top, zeta_bottom = _coverage(latent, rng)
    waves = ph.body_waves(_rng(seed, index, 4))
    study_uid = make_uid("npc-msom-synth", seed, index, patient_id, "study")
    for_uid = make_uid("npc-msom-synth", seed, index, patient_id, "frame")
    series: dict[str, SynthSeries] = {}
    for s_idx, seq in enumerate(SEQUENCES):
        geom, thick = _sample_grid(rng, latent, seq, zeta_top, zeta_bottom)
        desc = export["desc"][seq]
        contrast = _contrast_of(seq, desc)
        img, lesion_labels = ph.render_series(
            geom, latent.anatomy, latent.lesions, contrast, _rng(seed, index, 10 + s_idx), waves=waves,
            noise_fraction=export["noise"][seq], bias_strength=export["bias"][seq])
        img *= np.float32(export["gains"][seq])
        stored = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
        slope = export["slopes"][seq] if export["slope"] else 1.0
        real = stored.astype(np.float32) * np.float32(slope)
        masks = {"GTV": lesion_labels == 1, "GTVln": lesion_labels >= 2}
        series[seq] = SynthSeries(sequence=seq, image=real, stored=stored, geometry=geom, masks=masks,
                                  lesion_labels=lesion_labels, description=desc,
                                  series_number=export["numbers"][seq], contrast=contrast,
                                  slice_thickness_mm=thick, rescale_slope=slope)
    return SynthPatient(patient_id=patient_id, index=index, seed=seed, series=series,
                        clinical=dict(clinical_row), truth=dict(truth_row), latent=latent,
                        study_uid=study_uid, frame_of_reference_uid=for_uid, export=export)


# ------------------------------------------------------------------------------- writing

def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "series"


def _series_folder(p: SynthPatient, s: SynthSeries) -> str:
    style = p.export["folder_style"]
    if style == 0:
        return _sanitize(s.description)
    if style == 1:
        return f"SE{s.series_number}"
    return f"{s.series_number:03d}_{_sanitize(s.description)}"


def _file_namer(style: int):
    if style == 0:
        return None  # MR.<uid>.dcm
    if style == 1:
        return lambda k, uid: f"IM{k + 1:05d}"
    return lambda k, uid: f"{k + 1}.dcm"


def _rois_for(p: SynthPatient, s: SynthSeries) -> dict[str, list[np.ndarray]]:
    primary_name, node_name, split = ROI_STYLES[p.export["roi_style"]]
    geom = s.geometry
    rois: dict[str, list[np.ndarray]] = {primary_name: mask_to_contours(s.masks["GTV"], geom)}
    nodes = p.latent.lesions.nodes
    if split == "merged":
        if nodes or node_name == "GTVln":  # this clinic keeps an (empty) node ROI for N0 too
            rois[node_name] = mask_to_contours(s.masks["GTVln"], geom)
    elif split == "side":
        for side in ("L", "R"):
            idx = [n for n, node in enumerate(nodes) if node.side == side]
            if idx:
                m = np.isin(s.lesion_labels, [2 + n for n in idx])
                rois[f"{node_name}_{side}"] = mask_to_contours(m, geom)
    else:
        for n in range(len(nodes)):
            rois[f"{node_name}{n + 1}"] = mask_to_contours(s.lesion_labels == 2 + n, geom)
    if p.export["oar"]:
        # an organ at risk that a reader must ignore
        cord = _cord_mask(p, s)
        if cord.any():
            rois["SpinalCord"] = mask_to_contours(cord, geom)
    return rois


def _cord_mask(p: SynthPatient, s: SynthSeries) -> np.ndarray:
    nx, ny, nz = s.geometry.size
    tissue = np.zeros((ny, nx), np.uint8)
    out = np.zeros((nz, ny, nx), bool)
    ox, oy, oz = s.geometry.origin_mm
    sx, sy, sz = s.geometry.spacing_mm
    xs, ys = ox + np.arange(nx) * sx, oy + np.arange(ny) * sy
    for k in range(nz):
        zeta = oz + k * sz - p.latent.anatomy.z0_mm
        if zeta / p.latent.anatomy.neck_scale > 14:
            continue
        tissue[:] = 0
        du, dv, f = p.latent.anatomy.j("vertebra")
        cdu, cdv, cf = p.latent.anatomy.j("canal")
        ph._SlicePainter(tissue, xs, ys, p.latent.anatomy).ellipse(1, du + cdu * 0.3, 35 + dv, 6 * cf, 4.6 * cf)
        out[k] = tissue == 1
    return out & (s.lesion_labels == 0)


def _age_string(age: int) -> str:
    return f"{int(age):03d}Y"


def write_patient(patient: SynthPatient, dicom_root: str | Path) -> Path:
    """Write a patient's series and RTSTRUCTs under ``dicom_root/<patient_id>`` atomically."""
    dicom_root = Path(dicom_root)
    final = dicom_root / patient.patient_id
    tmp = dicom_root / f".tmp-{patient.patient_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    ex = patient.export
    c = patient.clinical
    study_day = date(int(ex["study_date"][:4]), int(ex["study_date"][4:6]), int(ex["study_date"][6:]))
    birth = study_day - timedelta(days=int(round(365.25 * int(c["age"]))) + ex["birth_offset_days"])
    common = {"StudyDate": ex["study_date"], "SeriesDate": ex["study_date"],
              "AcquisitionDate": ex["study_date"], "ContentDate": ex["study_date"],
              "Manufacturer": ex["vendor"], "ManufacturerModelName": ex["model"],
              "PatientSex": c["gender"], "PatientAge": _age_string(c["age"]),
              "PatientBirthDate": birth.strftime("%Y%m%d"), "InstitutionName": "Synthetic NPC Centre",
              "AccessionNumber": f"A{patient.seed % 100000:05d}{patient.index:05d}"}
    seed_base = f"npc-msom-synth|{patient.seed}|{patient.index}|{patient.patient_id}"
    try:
        for seq, s in patient.series.items():
            folder = tmp / _series_folder(patient, s)
            tr, te, etl = ex["tr_te"][seq]
            tags = dict(common)
            tags.update({"SliceThickness": f"{s.slice_thickness_mm:g}", "RepetitionTime": f"{tr:g}",
                         "EchoTime": f"{te:g}", "EchoTrainLength": etl,
                         "SeriesTime": f"09{10 + 7 * SEQUENCES.index(seq):02d}00",
                         "ScanOptions": "FS" if s.contrast in ("T2FS", "CET1FS") else "",
                         "SequenceVariant": ["SK", "SP"] if seq != "T2WI" else ["SK", "SP", "OSP"],
                         "RescaleSlope": f"{s.rescale_slope:g}", "RescaleIntercept": "0"})
            ws = write_mr_series(
                folder, s.stored, s.geometry, patient_id=patient.patient_id, study_uid=patient.study_uid,
                frame_of_reference_uid=patient.frame_of_reference_uid, series_description=s.description,
                series_number=s.series_number, protocol_name=s.description,
                contrast_agent=ex["agent"] if seq == "CE-T1WI" else None,
                file_name=_file_namer(ex["file_style"]), seed_uid=f"{seed_base}|{seq}",
                patient_name=f"NPC^{patient.patient_id}", extra_tags=tags)
            rois = _rois_for(patient, s)
            colors = {name: ([255, 0, 0] if i == 0 else [0, 160, 255]) for i, name in enumerate(rois)}
            rs_name = {0: f"RS.{make_uid(seed_base, seq, 'rs-name')}.dcm", 1: "RTSTRUCT.dcm",
                       2: f"RS_{_sanitize(s.description)}.dcm"}[ex["file_style"]]
            write_rtstruct(folder / rs_name, ws, rois, geometry=s.geometry, seed_uid=f"{seed_base}|{seq}|rs",
                           structure_set_label=f"{seq}_CONTOURS"[:16], colors=colors,
                           patient_name=f"NPC^{patient.patient_id}",
                           extra_tags={k: common[k] for k in ("StudyDate", "Manufacturer", "PatientSex",
                                                              "PatientBirthDate", "AccessionNumber")})
        if final.exists():  # another process finished it meanwhile
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ------------------------------------------------------------------------------- cohort

@dataclass(frozen=True)
class SynthSummary:
    """What ``write_cohort`` made."""
    out_dir: str
    n_patients: int
    n_msom: int
    oracle_auc: float           # AUC of truth.true_risk against msom: the best achievable
    imaging_auc: float          # AUC of the imaging part of the linear predictor alone
    clinical_auc: float         # AUC of the clinical part alone
    organ_counts: dict
    median_months_to_msom: float
    written: int                # patients rendered in this call (the rest were complete)
    seconds: float
    bytes_on_disk: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def describe(self) -> str:
        """A few lines for people (the CLI prints them)."""
        organs = ", ".join(f"{k} {v}" for k, v in sorted(self.organ_counts.items()))
        return (f"synthetic cohort in {self.out_dir}: {self.n_patients} patients, {self.n_msom} with MSOM "
                f"({organs}; median {self.median_months_to_msom:.1f} months to MSOM)\n"
                f"oracle AUC (truth.csv true_risk vs msom): {self.oracle_auc:.3f} "
                f"(imaging part {self.imaging_auc:.3f}, clinical part {self.clinical_auc:.3f})\n"
                f"{self.written} patients written in {self.seconds:.1f} s; "
                f"{self.bytes_on_disk / 1e6:.0f} MB on disk")


def _render_and_write(args) -> str:
    pid, seed, index, clinical_row, truth_row, dicom_root = args
    patient = make_patient(pid, seed, index, clinical_row=clinical_row, truth_row=truth_row)
    write_patient(patient, dicom_root)
    return pid


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def write_cohort(out_dir: str | Path, config: SynthConfig, *, workers: int | None = None,
                 show_progress: bool | None = None) -> SynthSummary:
    """Write the synthetic cohort of ``config`` to ``out_dir`` (layout in the module docstring).

    workers: processes rendering patients (default: ``config.workers``, 0 = up to 2, never more
        than the CPUs).
    Rerunning on the same folder skips complete patients and rewrites the tables identically;
    a folder made with another seed or size is refused (ConfigError).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    dicom_root = out / "dicom"
    dicom_root.mkdir(parents=True, exist_ok=True)
    meta_path = out / "synth.json"
    meta = {"format_version": FORMAT_VERSION, "patients": config.patients, "seed": config.seed,
            "msom_fraction": config.msom_fraction}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ConfigError(f"{out} already holds a synthetic cohort made with "
                              f"{ {k: old.get(k) for k in meta} }; use another folder for {meta}")
    else:
        write_json_atomic(meta_path, {**meta, "complete": False})

    table = cohort_table(config)
    todo = [i for i, pid in enumerate(table.clinical["patient_id"]) if not (dicom_root / pid).is_dir()]
    for stale in dicom_root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if len(todo) < config.patients:
        log.info("synth: %d of %d patients already complete in %s", config.patients - len(todo),
                 config.patients, dicom_root)
    jobs = [(table.clinical.at[i, "patient_id"], config.seed, i, table.clinical.iloc[i].to_dict(),
             table.truth.iloc[i].to_dict(), str(dicom_root)) for i in todo]
    if workers is None:
        workers = config.workers or min(2, os.cpu_count() or 1)
    n_workers = workers
    n_workers = max(1, min(n_workers, len(jobs) or 1))
    bar_kw = {"total": len(jobs), "desc": "synth", "unit": "patient"}
    if show_progress is False:
        bar_kw["disable"] = True
    if n_workers == 1:
        for job in progress(jobs, **bar_kw):
            _render_and_write(job)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            for _ in progress(pool.map(_render_and_write, jobs), **bar_kw):
                pass

    with atomic_path(out / "clinical.csv") as tmp:
        table.clinical.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out / "truth.csv") as tmp:
        table.truth.to_csv(tmp, index=False, float_format="%.6g")
    truth = table.truth
    y = truth["msom"].to_numpy()
    clin = table.clinical
    msom_times = clin.loc[clin["msom"] == 1, "dmfs_months"]
    summary = SynthSummary(
        out_dir=str(out), n_patients=int(len(truth)), n_msom=int(y.sum()),
        oracle_auc=_auc(y, truth["true_risk"].to_numpy()),
        imaging_auc=_auc(y, truth["eta_imaging"].to_numpy()),
        clinical_auc=_auc(y, truth["eta_clinical"].to_numpy()),
        organ_counts={k: int(v) for k, v in clin["msom_organ"].value_counts().items()},
        median_months_to_msom=float(msom_times.median()) if len(msom_times) else float("nan"),
        written=len(jobs), seconds=round(time.perf_counter() - t0, 2), bytes_on_disk=_du(out))
    # only what the seed determines goes into synth.json, so a rerun leaves it byte-identical
    stable = {k: v for k, v in summary.to_dict().items() if k not in ("written", "seconds", "bytes_on_disk", "out_dir")}
    write_json_atomic(meta_path, {**meta, "complete": True, "summary": stable})
    log.info("synth: %d patients (%d MSOM; organs %s; median %.1f months to MSOM) in %s; "
             "oracle AUC %.3f (imaging part %.3f, clinical part %.3f); %d written in %.1f s, %.0f MB",
             summary.n_patients, summary.n_msom, summary.organ_counts, summary.median_months_to_msom,
             out, summary.oracle_auc, summary.imaging_auc, summary.clinical_auc, summary.written,
             summary.seconds, summary.bytes_on_disk / 1e6)
    return summary
