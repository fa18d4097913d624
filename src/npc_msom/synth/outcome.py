"""Clinical variables and the MSOM outcome model of the synthetic cohort (no images here).

The generative model (documented in ``docs/synthetic_cohort.md``):

1. Clinical covariates per patient: age, gender, T and N stage (AJCC 8th), clinical stage,
   pathology, PNI, HGB and treatment (induction / concurrent / adjuvant chemotherapy, targeted
   therapy, GTV dose, cumulative cisplatin, chemotherapy cycles).
2. Imaging latents drawn given the stages (``phantom``): GTV volume, nodes with their volumes and
   necrotic cores, and the primary's enhancement heterogeneity.
3. A linear predictor ``eta = sum_k COEFFICIENTS[k] * x_k`` over standardised features
   (``feature_vector``), a logistic latent ``y* = eta + eps`` (eps ~ Logistic(0, 1)), and MSOM for
   exactly ``round(msom_fraction * n)`` patients with the largest ``y*``. The threshold ``c`` is the
   midpoint of the n-th and (n+1)-th ``y*``; ``true_risk = sigmoid(eta - c)`` is each patient's
   probability of MSOM given everything the generator knows, so AUC(true_risk, msom) is the best
   any model can reach (the oracle AUC).
4. Organ (liver / lung / bone in the study's 32 : 25 : 28 proportions, exact counts), months to
   MSOM (truncated log-normal, median 13, range 7-36, earlier for higher risk), follow-up
   (> 36 months without MSOM) and overall survival (worse after MSOM).
"""
from __future__ import annotations

import math

import numpy as np

# The study's organ split among 85 MSOM patients.
ORGAN_COUNTS = {"liver": 32, "lung": 25, "bone": 28}
T_STAGE_P = {"T1": 0.12, "T2": 0.20, "T3": 0.40, "T4": 0.28}
N_STAGE_P = {"N0": 0.10, "N1": 0.33, "N2": 0.37, "N3": 0.20}

# Standardisation (mean, sd) of each feature; fixed numbers so that the equation in the docs is
# the whole model. They are close to the cohort's own moments (checked by a test).
FEATURE_SCALE: dict[str, tuple[float, float]] = {
    "log_gtv_volume": (3.18, 0.71),        # ln(ml)
    "n_nodes": (2.84, 1.58),
    "log_node_volume": (1.57, 0.73),        # ln(1 + ml)
    "necrotic_nodes": (0.0, 1.0),          # indicator: any necrotic node (not standardised)
    "heterogeneity": (0.5, 0.22),
    "pni": (50.5, 5.0),
    "hgb_g_l": (137.9, 15.0),
    "age": (47.0, 11.0),
    "keratinizing": (0.0, 1.0),
    "targeted_therapy": (0.0, 1.0),
    "induction_chemo": (0.0, 1.0),
}
# Coefficients on the standardised features (per sd; per 1 for indicators).
COEFFICIENTS: dict[str, float] = {
    "log_gtv_volume": 0.95,
    "n_nodes": 0.42,
    "log_node_volume": 0.36,
    "necrotic_nodes": 0.85,
    "heterogeneity": 0.85,
    "pni": -0.60,
    "hgb_g_l": -0.45,
    "age": 0.20,
    "keratinizing": 0.60,
    "targeted_therapy": -0.30,
    "induction_chemo": -0.25,
}
IMAGING_FEATURES = ("log_gtv_volume", "n_nodes", "log_node_volume", "necrotic_nodes", "heterogeneity")

TIME_MEDIAN_MONTHS = 13.0
TIME_RANGE_MONTHS = (7.0, 36.0)
TIME_LOG_SD = 0.45


def clinical_stage(t: str, n: str) -> str:
    """AJCC 8th edition stage group of M0 nasopharyngeal carcinoma."""
    ti, ni = int(t[1]), int(n[1])
    if ti == 4 or ni == 3:
        return "IVA"
    if ti == 3 or ni == 2:
        return "III"
    if ti == 2 or ni == 1:
        return "II"
    return "I"


def sample_clinical(rng: np.random.Generator) -> dict:
    """One patient's clinical covariates (CLINICAL_SCHEMA names, no outcome yet)."""
    male = bool(rng.random() < 0.72)
    age = int(np.clip(round(rng.normal(47.0, 11.0)), 18, 80))
    t = str(rng.choice(list(T_STAGE_P), p=list(T_STAGE_P.values())))
    n = str(rng.choice(list(N_STAGE_P), p=list(N_STAGE_P.values())))
    stage = clinical_stage(t, n)
    advanced = stage in ("III", "IVA")
    pathology = "keratinizing" if rng.random() < 0.06 else "non-keratinizing"
    pni = float(np.clip(rng.normal(50.5, 5.0), 30.0, 70.0))
    hgb = float(np.clip(rng.normal(143.0 if male else 126.0, 13.0), 70.0, 185.0))
    induction = bool(rng.random() < (0.75 if advanced else 0.15))
    concurrent = bool(rng.random() < (0.92 if stage != "I" else 0.10))
    adjuvant = bool(rng.random() < 0.15)
    targeted = bool(rng.random() < (0.36 if advanced else 0.15))
    ind_cycles = int(rng.integers(2, 4)) if induction else 0
    conc_cycles = int(rng.choice([1, 2, 3], p=[0.08, 0.47, 0.45])) if concurrent else 0
    adj_cycles = int(rng.integers(2, 4)) if adjuvant else 0
    # cumulative cisplatin of the concurrent phase (the dose the study dichotomises at
    # 200 mg/m2): 80 or 100 mg/m2 per 3-weekly cycle
    cis = conc_cycles * float(rng.choice([80.0, 100.0], p=[0.45, 0.55]))
    dose_choices = ([66.0, 68.0, 69.96, 70.0, 72.0, 74.0], [0.05, 0.08, 0.06, 0.55, 0.11, 0.15]) if advanced else \
        ([66.0, 68.0, 69.96, 70.0], [0.1, 0.1, 0.05, 0.75])
    dose = float(rng.choice(dose_choices[0], p=dose_choices[1]))
    return {
        "age": age, "gender": "M" if male else "F", "t_stage": t, "n_stage": n,
        "clinical_stage": stage, "pathology": pathology, "pni": round(pni, 1),
        "hgb_g_l": round(hgb, 0), "induction_chemo": int(induction),
        "concurrent_chemo": int(concurrent), "adjuvant_chemo": int(adjuvant),
        "targeted_therapy": int(targeted), "gtv_dose_gy": dose, "cisplatin_mg_m2": float(round(cis)),
        "chemo_cycles": ind_cycles + conc_cycles + adj_cycles,
    }


def feature_vector(clinical: dict, imaging: dict) -> dict[str, float]:
    """Raw model features of one patient (before standardisation).

    imaging: gtv_volume_ml, n_nodes, node_volume_ml, n_necrotic_nodes, heterogeneity.
    """
    return {
        "log_gtv_volume": math.log(imaging["gtv_volume_ml"]),
        "n_nodes": float(imaging["n_nodes"]),
        "log_node_volume": math.log1p(imaging["node_volume_ml"]),
        "necrotic_nodes": float(imaging["n_necrotic_nodes"] > 0),
        "heterogeneity": float(imaging["heterogeneity"]),
        "pni": float(clinical["pni"]),
        "hgb_g_l": float(clinical["hgb_g_l"]),
        "age": float(clinical["age"]),
        "keratinizing": float(clinical["pathology"] == "keratinizing"),
        "targeted_therapy": float(clinical["targeted_therapy"]),
        "induction_chemo": float(clinical["induction_chemo"]),
    }


def linear_predictor(features: dict[str, float], which: tuple[str, ...] | None = None) -> float:
    """eta = sum_k COEFFICIENTS[k] * (x_k - mean_k) / sd_k over ``which`` (default: all)."""
    keys = which if which is not None else tuple(COEFFICIENTS)
    return float(sum(COEFFICIENTS[k] * (features[k] - FEATURE_SCALE[k][0]) / FEATURE_SCALE[k][1] for k in keys))


def sample_patient_noise(rng: np.random.Generator) -> dict:
    """Per-patient random draws of the outcome model, independent of the cohort size."""
    return {"eps": float(rng.logistic()), "u_time": float(rng.random()),
            "followup_u": float(rng.random()), "post_met_u": float(rng.random()),
            "death_u": float(rng.random()), "death_time_u": float(rng.random())}


def _time_to_msom(u: float, shift: float) -> float:
    """Truncated log-normal on [7, 36] months by inverse CDF; median ~13 when shift = 0."""
    from scipy.stats import norm
    lo, hi = (math.log(v) for v in TIME_RANGE_MONTHS)
    mu = math.log(TIME_MEDIAN_MONTHS) + 0.07 + shift
    a, b = norm.cdf((lo - mu) / TIME_LOG_SD), norm.cdf((hi - mu) / TIME_LOG_SD)
    return float(math.exp(mu + TIME_LOG_SD * norm.ppf(a + u * (b - a))))


def assign_outcomes(etas: np.ndarray, noises: list[dict], msom_fraction: float,
                    seed: int) -> list[dict]:
    """Outcomes of a whole cohort.

    etas: (n,) linear predictors; noises: per-patient draws from ``sample_patient_noise``.
    Returns per patient: msom (0/1), msom_organ (str or None), dmfs_months, os_months, os_event,
    true_risk, threshold.
    """
    n = len(etas)
    etas = np.asarray(etas, dtype=float)
    ystar = etas + np.array([d["eps"] for d in noises])
    k = int(round(msom_fraction * n))
    k = min(max(k, 0), n)
    order = np.argsort(-ystar, kind="stable")
    msom = np.zeros(n, dtype=int)
    msom[order[:k]] = 1
    srt = ystar[order]
    if 0 < k < n:
        thr = 0.5 * (srt[k - 1] + srt[k])
    elif k == 0:
        thr = srt[0] + 1.0 if n else 0.0
    else:
        thr = srt[-1] - 1.0
    risk = 1.0 / (1.0 + np.exp(-(etas - thr)))
    # organs: exact proportions among the MSOM patients, in a seeded random order
    total = sum(ORGAN_COUNTS.values())
    counts = {o: int(round(k * c / total)) for o, c in ORGAN_COUNTS.items()}
    counts["bone"] = k - counts["liver"] - counts["lung"]
    organs = [o for o, c in counts.items() for _ in range(max(c, 0))][:k]
    np.random.default_rng([seed, 7]).shuffle(organs)
    msom_idx = np.nonzero(msom)[0]
    organ_of = {int(i): organs[j] for j, i in enumerate(msom_idx)}
    eta_sd = float(etas.std()) if n > 1 else 1.0
    out = []
    for i in range(n):
        d = noises[i]
        if msom[i]:
            # higher risk -> earlier metastasis (log-time shift of up to ~ -0.25)
            shift = -0.15 * (etas[i] - etas.mean()) / max(eta_sd, 1e-6)
            t = _time_to_msom(d["u_time"], shift)
            follow = max(t + 6.0, 37.0) + d["followup_u"] * 36.0
            # survival after a single-organ metastasis: exponential, median 30 months
            post = -math.log(max(1.0 - d["post_met_u"], 1e-12)) * 30.0 / math.log(2.0)
            death = t + post
            os_event = int(death <= follow)
            os_months = min(death, follow)
            dmfs = t
        else:
            follow = 37.0 + d["followup_u"] * 47.0
            died = d["death_u"] < 0.05  # other-cause / locoregional deaths after 3 years
            death = 37.0 + d["death_time_u"] * (follow - 37.0)
            os_event = int(died)
            os_months = death if died else follow
            dmfs = os_months
        out.append({"msom": int(msom[i]), "msom_organ": organ_of.get(i), "dmfs_months": round(dmfs, 1),
                    "os_months": round(os_months, 1), "os_event": os_event,
                    "true_risk": float(risk[i]), "threshold": float(thr)})
    return out
