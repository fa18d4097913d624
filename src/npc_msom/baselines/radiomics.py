"""The radiomics comparison model, in the manner of the DMMM model (the study's reference 7):
PyRadiomics features of the 3-D GTV on the 1 mm volume of one sequence, feature selection on the
training patients only, and an L1-penalised logistic regression.

- Extraction: the series is cropped to the GTV's bounding box plus a margin (so that resampling
  and the wavelet/LoG filters work on a small block), resampled to the isotropic grid with
  ``npc_msom.preprocess.resample.resample_series`` (the same 1 mm volume as the slices), and given
  to PyRadiomics with the parameter file of ``baselines.radiomics_params`` (``configs/
  radiomics_demo.yaml``: original image; ``radiomics_paper.yaml``: + wavelet + LoG). Features are
  cached per patient and sequence; patients are extracted by up to 2 processes.
- Selection (:func:`select_features`), on training rows only: near-zero variance (caret's
  nearZeroVar rule: one value, or the most common value > 19x as frequent as the second and < 10%
  distinct values), then the |Pearson r| > 0.9 filter (greedy, keeping the earlier feature in
  PyRadiomics' order), then L1 logistic regression on standardised features, its C chosen by
  stratified k-fold CV (ROC AUC); the features with a non-zero coefficient are the selection.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from npc_msom.cohort.model import Geometry, Series
from npc_msom.errors import ConfigError, InputError
from npc_msom.runtime import imap_forked, write_json_atomic

log = logging.getLogger(__name__)

PROJECT_CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def params_path(name: str) -> Path:
    """``baselines.radiomics_params`` -> an existing PyRadiomics parameter file.

    An absolute path is used as is; a relative one is looked up in the working folder, then in
    the project's configs/ folder.
    """
    p = Path(name)
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, PROJECT_CONFIGS / p]):
        if cand.is_file():
            return cand.resolve()
    raise ConfigError(f"baselines.radiomics_params: PyRadiomics parameter file {name!r} not found "
                      f"(looked in {Path.cwd()} and {PROJECT_CONFIGS}); expected a YAML file such as "
                      "configs/radiomics_demo.yaml")


def radiomics_version() -> str:
    import radiomics
    return str(radiomics.__version__)


def crop_series(series: Series, structure: str = "GTV", margin_mm: float = 10.0) -> Series | None:
    """The series cut to the bounding box of ``structure`` plus ``margin_mm`` (None: empty mask).

    Geometry stays exact: the new origin is the LPS position of the first kept voxel.
    """
    mask = series.masks.get(structure)
    if mask is None or not mask.any():
        return None
    sp = np.asarray(series.geometry.spacing_mm, dtype=float)  # (x, y, z)
    pad = [int(math.ceil(margin_mm / s)) for s in sp[::-1]]  # (z, y, x)
    nz = np.nonzero(mask)
    lo = [max(0, int(a.min()) - p) for a, p in zip(nz, pad)]
    hi = [min(n, int(a.max()) + p + 1) for a, n, p in zip(nz, mask.shape, pad)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    direction = np.asarray(series.geometry.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(series.geometry.origin_mm) + direction @ (np.array(lo[::-1], dtype=float) * sp)
    geom = Geometry(origin_mm=tuple(float(v) for v in origin), spacing_mm=series.geometry.spacing_mm,
                    direction=series.geometry.direction, size=(hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0]))
    return replace(series, image=np.ascontiguousarray(series.image[sl]), geometry=geom,
                   masks={k: np.ascontiguousarray(m[sl]) for k, m in series.masks.items()})


_EXTRACTORS: dict = {}


def extract_features(image_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_mm: float | tuple,
                     params_file: str | Path) -> dict[str, float]:
    """PyRadiomics features of ``mask_zyx`` (bool) on ``image_zyx`` (float, same shape).

    spacing_mm: voxel size (one number = isotropic, or (x, y, z)). Returns feature name -> value
    (the ``diagnostics_*`` entries dropped). Raises ValueError for an empty mask; PyRadiomics'
    own errors pass through.
    """
    import SimpleITK as sitk
    import radiomics
    from radiomics import featureextractor
    if not np.any(mask_zyx):
        raise ValueError("empty mask")
    radiomics.setVerbosity(logging.ERROR)
    # PyRadiomics logs every step at INFO through the root logger (and warns about GLCM's
    # symmetry for every patient): keep the run's log readable
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    logging.getLogger("pykwalify").setLevel(logging.WARNING)
    sp = (float(spacing_mm),) * 3 if np.isscalar(spacing_mm) else tuple(float(v) for v in spacing_mm)
    img = sitk.GetImageFromArray(np.asarray(image_zyx, dtype=np.float32))
    msk = sitk.GetImageFromArray(np.asarray(mask_zyx, dtype=np.uint8))
    for im in (img, msk):
        im.SetSpacing(sp)
    # one extractor per parameter file and process (reading and validating the file costs ~0.03 s)
    key = (str(params_file), Path(params_file).stat().st_mtime_ns)
    extractor = _EXTRACTORS.get(key)
    if extractor is None:
        extractor = _EXTRACTORS[key] = featureextractor.RadiomicsFeatureExtractor(str(params_file))
    result = extractor.execute(img, msk, label=1)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def cache_key(params_file: Path, spacing_mm: float, margin_mm: float) -> str:
    text = json.dumps({"params": Path(params_file).read_text(), "spacing_mm": spacing_mm,
                       "margin_mm": margin_mm, "pyradiomics": radiomics_version()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# ---- extraction over a cohort (the only part that reads images) --------------------------------
def _itk_threads(threads: int) -> None:
    import SimpleITK as sitk
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _extract_patient(cohort, args) -> tuple[str, dict[str, dict]]:
    """Worker (:func:`~npc_msom.runtime.imap_forked`): one patient, every sequence ->
    {seq: {"features": {...}} | {"note": why}}."""
    pid, sequences, params_file, spacing_mm, margin_mm = args
    from npc_msom.preprocess.resample import resample_series
    out: dict[str, dict] = {}
    try:
        patient = cohort.load_patient(pid, sequences)
    except Exception as e:  # noqa: BLE001 - one bad patient must not stop the others
        log.error("radiomics: patient %s could not be read: %s", pid, e)
        return pid, {seq: {"note": f"could not read the patient: {e}", "error": True} for seq in sequences}
    for seq in sequences:
        series = patient.series.get(seq)
        if series is None:
            out[seq] = {"note": f"no {seq} series"}
            continue
        cropped = crop_series(series, "GTV", margin_mm)
        if cropped is None:
            out[seq] = {"note": f"empty GTV on {seq}"}
            continue
        try:
            image, masks, _ = resample_series(cropped, spacing_mm)
            gtv = masks.get("GTV")
            if gtv is None or not gtv.any():
                out[seq] = {"note": f"empty GTV on {seq} after resampling to {spacing_mm} mm"}
                continue
            out[seq] = {"features": extract_features(image, gtv, spacing_mm, params_file)}
        except Exception as e:  # noqa: BLE001 - PyRadiomics raises many kinds; name the patient, go on
            log.error("radiomics: PyRadiomics failed on patient %s, %s: %s: %s", pid, seq, type(e).__name__, e)
            out[seq] = {"note": f"PyRadiomics error: {type(e).__name__}: {e}", "error": True}
    return pid, out


def extract_cohort(cohort, patient_ids: list[str], sequences: list[str], cache_dir: str | Path, *,
                   params_file: Path, spacing_mm: float = 1.0, margin_mm: float = 10.0,
                   workers: int = 2, stats: dict | None = None) -> dict[str, dict[str, dict]]:
    """Features of every patient and sequence, from the cache or extracted (then cached).

    cohort: a Cohort (``load_patient``), or a function returning one, called only when some
    patient is not in the cache. stats: if given, filled with extracted / cached patient counts and
    the seconds spent extracting.

    Returns {sequence: {patient_id: {"features": {...}} or {"note": reason}}}. Cache files:
    ``cache_dir/<sequence>/<patient_id>.json``, used only when made with the same parameter file,
    spacing, margin and PyRadiomics version. Errors are not cached (a later run tries again).
    """
    cache_dir = Path(cache_dir)
    key = cache_key(params_file, spacing_mm, margin_mm)
    result: dict[str, dict[str, dict]] = {seq: {} for seq in sequences}
    todo = []
    for pid in patient_ids:
        missing = []
        for seq in sequences:
            f = cache_dir / seq / f"{pid}.json"
            try:
                data = json.loads(f.read_text()) if f.is_file() else None
            except json.JSONDecodeError:
                data = None
            if data and data.get("key") == key:
                result[seq][pid] = data["result"]
            else:
                missing.append(seq)
        if missing:
            todo.append(pid)
    if len(todo) < len(patient_ids):
        log.info("radiomics: %d of %d patients from the cache", len(patient_ids) - len(todo), len(patient_ids))
    jobs = [(pid, list(sequences), str(params_file), spacing_mm, margin_mm) for pid in todo]
    t0 = time.perf_counter()
    if jobs and not hasattr(cohort, "load_patient"):
        cohort = cohort()
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    workers = max(1, min(int(workers), 2, len(jobs)))

    def store(pid: str, per_seq: dict[str, dict]) -> None:
        for seq, res in per_seq.items():
            result[seq][pid] = res
            if not res.get("error"):
                write_json_atomic(cache_dir / seq / f"{pid}.json", {"key": key, "patient_id": pid,
                                                                    "sequence": seq, "result": res})

    # the workers inherit the cohort index at fork (not pickled); one ITK thread per process
    for pid, per_seq in imap_forked(_extract_patient, jobs, cohort, workers=workers, desc="radiomics",
                                    initializer=_itk_threads, initargs=(1,)):
        store(pid, per_seq)
    if stats is not None:
        stats.update({"extracted_patients": len(todo), "cached_patients": len(patient_ids) - len(todo),
                      "sequences": len(sequences), "workers": workers,
                      "extract_seconds": time.perf_counter() - t0, "cohort_index_seconds": t_index})
    return result


def feature_table(per_patient: dict[str, dict], patient_ids: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """{pid: {"features"| "note"}} -> (features, rows = patients with features, in ``patient_ids``
    order; notes of the others)."""
    rows, index, notes = [], [], {}
    for pid in patient_ids:
        res = per_patient.get(pid, {"note": "not extracted"})
        if "features" in res:
            rows.append(res["features"])
            index.append(pid)
        else:
            notes[pid] = res.get("note", "no features")
    return pd.DataFrame(rows, index=pd.Index(index, name="patient_id"), dtype=float), notes


# ---- selection and model (pure) ----------------------------------------------------------------
@dataclass(frozen=True)
class RadiomicsModel:
    """Selection steps and the fitted L1 logistic regression (on standardised features)."""
    n_features: int
    after_variance: tuple[str, ...]
    after_correlation: tuple[str, ...]
    selected: tuple[str, ...]
    coefficients: dict[str, float]   # selected feature -> coefficient per training SD
    intercept: float
    mean: dict[str, float]           # training mean of each selected feature
    sd: dict[str, float]             # training SD (ddof 0, as StandardScaler)
    c: float                         # the inverse penalty chosen by internal CV
    cv_folds: int

    def to_dict(self) -> dict:
        return {"n_features": self.n_features, "n_after_variance": len(self.after_variance),
                "n_after_correlation": len(self.after_correlation), "n_selected": len(self.selected),
                "selected": list(self.selected), "coefficients": self.coefficients,
                "intercept": self.intercept, "mean": self.mean, "sd": self.sd, "c": self.c,
                "cv_folds": self.cv_folds, "after_correlation": list(self.after_correlation)}

    @classmethod
    def from_dict(cls, data: dict) -> "RadiomicsModel":
        """The model back from ``to_dict`` (selection.json); the selection steps' lists that
        to_dict does not keep come back empty (scoring needs only the selected features)."""
        return cls(n_features=int(data["n_features"]), after_variance=(),
                   after_correlation=tuple(data.get("after_correlation", ())), selected=tuple(data["selected"]),
                   coefficients={k: float(v) for k, v in data["coefficients"].items()},
                   intercept=float(data["intercept"]), mean={k: float(v) for k, v in data["mean"].items()},
                   sd={k: float(v) for k, v in data["sd"].items()}, c=float(data["c"]), cv_folds=int(data["cv_folds"]))

    def score(self, features: pd.DataFrame) -> np.ndarray:
        """(n,) P(MSOM) of feature rows; NaN where a selected feature is missing or not finite."""
        eta = np.full(len(features), self.intercept, dtype=float)
        for name in self.selected:
            col = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float) \
                if name in features.columns else np.full(len(features), np.nan)
            eta = eta + self.coefficients[name] * (col - self.mean[name]) / self.sd[name]
        from scipy.special import expit
        return expit(eta)


def near_zero_variance(x: pd.DataFrame, freq_cut: float = 95 / 5, unique_cut: float = 10.0) -> list[str]:
    """Columns to keep: finite everywhere and not of near-zero variance (caret's nearZeroVar rule)."""
    keep = []
    n = len(x)
    for name in x.columns:
        col = x[name].to_numpy(dtype=float)
        if not np.all(np.isfinite(col)):
            continue
        values, counts = np.unique(col, return_counts=True)
        if values.size < 2:
            continue
        top = np.sort(counts)[::-1]
        if top[0] / top[1] > freq_cut and 100.0 * values.size / n < unique_cut:
            continue
        keep.append(name)
    return keep


def correlation_filter(x: pd.DataFrame, threshold: float = 0.9) -> list[str]:
    """Greedy in column order: a column is kept unless its |Pearson r| with a kept one exceeds
    ``threshold``."""
    if x.shape[1] == 0:
        return []
    r = np.abs(np.corrcoef(x.to_numpy(dtype=float), rowvar=False))
    r = np.atleast_2d(r)
    kept: list[int] = []
    for j in range(x.shape[1]):
        if all(not (r[j, k] > threshold) for k in kept):
            kept.append(j)
    return [x.columns[j] for j in kept]


def select_features(x_train: pd.DataFrame, y_train, *, corr: float = 0.9, cv_folds: int = 5,
                    cs: int = 20, seed: int = 0) -> RadiomicsModel:
    """Fit the selection and the L1 model on training rows only (x_train: patients x features)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    y = np.asarray(y_train, dtype=int)
    if len(x_train) != y.size or y.size == 0:
        raise InputError(f"radiomics: {len(x_train)} feature rows for {y.size} labels",
                         expected="one training row per label")
    if not 0 < y.sum() < y.size:
        raise InputError("radiomics: the training patients with features hold one class only",
                         expected="MSOM and non-MSOM patients among the training patients")
    after_var = near_zero_variance(x_train)
    after_corr = correlation_filter(x_train[after_var], corr)
    x = x_train[after_corr].to_numpy(dtype=float)
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0
    z = (x - mean) / sd
    folds = int(min(cv_folds, y.sum(), (1 - y).sum()))
    if folds >= 2 and z.shape[1]:
        model = LogisticRegressionCV(Cs=cs, l1_ratios=(1.0,), solver="liblinear", scoring="roc_auc",
                                     cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                     max_iter=5000, random_state=seed, use_legacy_attributes=False)
        model.fit(z, y)
        c = float(np.atleast_1d(model.C_)[0])
    else:
        log.warning("radiomics: %d training patients of the smaller class: no internal CV, C = 1", folds)
        c = 1.0
        model = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", max_iter=5000, random_state=seed)
        if z.shape[1]:
            model.fit(z, y)
    if z.shape[1]:
        coef = model.coef_[0]
        intercept = float(model.intercept_[0])
        if not np.any(coef) and folds >= 2:
            # CV chose a penalty that zeroes every feature (a constant score, with which no
            # cut-off or ROC curve exists): take the strongest penalty of the grid that keeps one
            for c_try in sorted(float(v) for v in model.Cs_ if v > c):
                m2 = LogisticRegression(C=c_try, l1_ratio=1.0, solver="liblinear", max_iter=5000,
                                        random_state=seed).fit(z, y)
                if np.any(m2.coef_):
                    log.warning("radiomics: CV's C = %.3g kept no feature; C = %.3g keeps %d",
                                c, c_try, int(np.count_nonzero(m2.coef_)))
                    c, coef, intercept = c_try, m2.coef_[0], float(m2.intercept_[0])
                    break
    else:
        coef = np.zeros(0)
        p = y.mean()
        intercept = float(np.log(p / (1 - p)))
    chosen = [i for i, v in enumerate(coef) if v != 0.0]
    names = tuple(after_corr[i] for i in chosen)
    if not names:
        log.warning("radiomics: the L1 model kept no feature (constant score)")
    return RadiomicsModel(n_features=x_train.shape[1], after_variance=tuple(after_var),
                          after_correlation=tuple(after_corr), selected=names,
                          coefficients={after_corr[i]: float(coef[i]) for i in chosen}, intercept=intercept,
                          mean={after_corr[i]: float(mean[i]) for i in chosen},
                          sd={after_corr[i]: float(sd[i]) for i in chosen}, c=c, cv_folds=folds)


@dataclass(frozen=True)
class RadiomicsScores:
    scores: np.ndarray          # (n_patients,) in the order asked; NaN = not scored
    notes: list[str]
    model: RadiomicsModel


def fit_and_score(features: pd.DataFrame, notes: dict[str, str], patient_ids: list[str],
                  train_ids: list[str], labels: dict[str, int], *, corr: float = 0.9, cv_folds: int = 5,
                  cs: int = 20, seed: int = 0) -> RadiomicsScores:
    """Selection + model on the training patients that have features; scores of ``patient_ids``.

    features: patients (index) x features; notes: why a patient has no features.
    """
    train = [p for p in train_ids if p in features.index]
    model = select_features(features.loc[train], [labels[p] for p in train], corr=corr,
                            cv_folds=cv_folds, cs=cs, seed=seed)
    scores, out_notes = [], []
    known = features.reindex([p for p in patient_ids if p in features.index])
    s_known = dict(zip(known.index, model.score(known))) if len(known) else {}
    for pid in patient_ids:
        if pid in s_known and np.isfinite(s_known[pid]):
            scores.append(float(s_known[pid]))
            out_notes.append("")
        else:
            scores.append(float("nan"))
            out_notes.append(notes.get(pid, "a selected feature is missing or not finite"))
    return RadiomicsScores(np.asarray(scores, dtype=float), out_notes, model)
