"""The head-and-neck phantom: anatomy, lesions (primary tumour and nodes) and MR rendering.

Coordinates
-----------
Three frames are used (all in mm; LPS = DICOM patient coordinates, x to the patient's left,
y posterior, z superior):

- *patient frame* (u, v, zeta): u = left-right, v = anterior(-)/posterior(+), zeta = height above
  the centre of the nasopharynx. It is the LPS frame shifted to the patient's midline
  (``x0``), prevertebral line (``y0``) and nasopharynx level (``z0``) and rotated by ``roll_rad``
  about z (patients never lie perfectly straight). Lesions are defined here, in true mm, so
  their volumes are exact.
- *template frame* (u / head_scale, v / head_scale, zeta / neck_scale): the anatomy is drawn in
  it, as ellipses whose parameters are functions of the level w = zeta / neck_scale.
- *grid index* (k, i, j): a series' voxel, at LPS ``origin + (j * sx, i * sy, k * sz)``
  (the synthetic series are axial, identity direction).

Anatomy at level w (template mm; w = 0 at the nasopharynx, + superior): skin outline with a fat
rim, muscle as the default soft tissue with fat septa, vertebra (cortex, marrow, canal with CSF
and cord), clivus and posterior fossa above the foramen magnum, nasopharyngeal / oropharyngeal /
laryngeal airway with mucosa, nasal cavity, maxillary sinuses, mandible, teeth, tongue, parotid and
submandibular glands, carotid arteries (flow voids), jugular veins, sternocleidomastoids,
thyroid cartilage and gland, parapharyngeal and masticator fat.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from npc_msom.cohort.model import Geometry

# ------------------------------------------------------------------------------------ tissues
TISSUES: tuple[str, ...] = (
    "background", "fat", "muscle", "air", "cortex", "marrow", "csf", "cord", "brain", "mucosa",
    "gland", "artery", "vein", "tumour", "node", "node_necrosis", "cartilage",
    "disc", "lymphoid")
T = {name: i for i, name in enumerate(TISSUES)}

# Relative signal of every tissue per contrast (arbitrary units; a scanner gain is applied later).
# T1: fat and marrow bright, fluid dark. T2 (TSE): fluid brightest, fat still bright.
# T2FS: fat suppressed. CET1FS: fat suppressed, tumour / nodes / mucosa / veins enhance,
# necrosis does not.
CONTRASTS: dict[str, dict[str, float]] = {
    "T1": dict(background=0, fat=1000, muscle=330, air=10, cortex=40, marrow=780, csf=180,
               cord=430, brain=420, mucosa=420, gland=700, artery=60, vein=150, tumour=400,
               node=390, node_necrosis=230, cartilage=300, disc=300,
               lymphoid=420),
    "T2": dict(background=0, fat=660, muscle=200, air=10, cortex=30, marrow=400, csf=1000,
               cord=420, brain=480, mucosa=860, gland=600, artery=40, vein=90, tumour=420,
               node=470, node_necrosis=620, cartilage=260, disc=600,
               lymphoid=600),
    "T2FS": dict(background=0, fat=170, muscle=230, air=10, cortex=30, marrow=260, csf=1000,
                 cord=440, brain=500, mucosa=900, gland=600, artery=40, vein=100, tumour=560,
                 node=600, node_necrosis=730, cartilage=260, disc=650,
                 lymphoid=760),
    "CET1FS": dict(background=0, fat=140, muscle=380, air=10, cortex=40, marrow=330, csf=140,
                   cord=420, brain=450, mucosa=900, gland=620, artery=90, vein=820, tumour=960,
                   node=880, node_necrosis=150, cartilage=300, disc=280,
                   lymphoid=780),
}
_LUT = {c: np.array([v[t] for t in TISSUES], dtype=np.float32) for c, v in CONTRASTS.items()}
# smooth multiplicative texture amplitude per tissue
_TEXTURE = np.zeros(len(TISSUES), np.float32)
for _name, _amp in dict(fat=0.10, muscle=0.16, marrow=0.12, brain=0.06, mucosa=0.15, gland=0.25,
                        cord=0.04, csf=0.03, tumour=0.16, node=0.10,
                        node_necrosis=0.06, lymphoid=0.12, disc=0.05, cartilage=0.08).items():
    _TEXTURE[T[_name]] = _amp

# How strongly the latent enhancement heterogeneity shows per contrast (CE strongest, T2 weakest,
# as the issue asks): the tumour's relative signal varies by amplitude * heterogeneity.
HETEROGENEITY_AMPLITUDE: dict[str, float] = {"CET1FS": 0.42, "T1": 0.18, "T2": 0.07, "T2FS": 0.08}


# ----------------------------------------------------------------------------------- lesions

def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) nearly uniform unit vectors (for quadrature over directions)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_SPHERE = fibonacci_sphere(20000)


@dataclass(frozen=True)
class StarLesion:
    """A lobulated, star-shaped lesion in the patient frame (mm).

    A point p is inside when, with q = diag(1/axes) @ R(-angle_rad) @ (p - centre) and
    d = q / |q|: |q| <= radius_mm * shape(d), where
    shape(d) = 1 + sum_i lobe_amp_i * exp(lobe_kappa_i * (lobe_dir_i . d - 1))
                 + sum_j wave_amp_j * cos(wave_freq_j * (wave_dir_j . d) + wave_phase_j).
    Its volume is det(axes) * radius^3 * (4 pi / 3) * mean_d shape(d)^3, the mean taken by
    quadrature over 20 000 directions (exact to < 0.1 %).
    """
    centre_mm: tuple[float, float, float]
    axes: tuple[float, float, float]
    angle_rad: float
    radius_mm: float
    lobe_dirs: tuple[tuple[float, float, float], ...]
    lobe_amps: tuple[float, ...]
    lobe_kappas: tuple[float, ...]
    wave_dirs: tuple[tuple[float, float, float], ...]
    wave_amps: tuple[float, ...]
    wave_freqs: tuple[float, ...]
    wave_phases: tuple[float, ...]

    def shape(self, d: np.ndarray) -> np.ndarray:
        """(N, 3) unit vectors -> (N,) relative radius."""
        s = np.ones(len(d))
        for n, a, k in zip(self.lobe_dirs, self.lobe_amps, self.lobe_kappas):
            s += a * np.exp(k * (d @ np.asarray(n) - 1.0))
        for n, a, f, ph in zip(self.wave_dirs, self.wave_amps, self.wave_freqs, self.wave_phases):
            s += a * np.cos(f * (d @ np.asarray(n)) + ph)
        return np.maximum(s, 0.3)

    def unit_volume(self) -> float:
        return float(np.prod(self.axes) * 4.0 * np.pi / 3.0 * np.mean(self.shape(_SPHERE) ** 3))

    @property
    def volume_ml(self) -> float:
        return self.unit_volume() * self.radius_mm ** 3 / 1000.0

    def extent_mm(self) -> float:
        """A radius (mm) around the centre that contains the whole lesion."""
        return float(self.radius_mm * max(self.axes) * self.shape(_SPHERE[::10]).max()) + 1.0

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) patient-frame corners of a box that contains the lesion (+1 mm)."""
        d = _SPHERE[::4]
        pts = d * (self.radius_mm * self.shape(d))[:, None] * np.asarray(self.axes)[None, :]
        c, s = math.cos(self.angle_rad), math.sin(self.angle_rad)
        world = np.stack([c * pts[:, 0] - s * pts[:, 1], s * pts[:, 0] + c * pts[:, 1], pts[:, 2]], axis=1)
        centre = np.asarray(self.centre_mm)
        return centre + world.min(axis=0) - 1.5, centre + world.max(axis=0) + 1.5

    def contains(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) patient-frame mm -> (N,) bool."""
        q = _to_local(p, self.centre_mm, self.angle_rad) / np.asarray(self.axes)
        r = np.linalg.norm(q, axis=1)
        d = q / np.maximum(r, 1e-9)[:, None]
        return r <= self.radius_mm * self.shape(d)

    def with_volume(self, volume_ml: float) -> "StarLesion":
        r = (volume_ml * 1000.0 / self.unit_volume()) ** (1.0 / 3.0)
        return StarLesion(**{**self.__dict__, "radius_mm": float(r)})


@dataclass(frozen=True)
class Node:
    """An ellipsoidal lymph node in the patient frame (mm), optionally with a necrotic core.

    semi_axes_mm: (lateral, antero-posterior, cranio-caudal) before the in-plane rotation.
    core_scale: 0 = solid; else the core is the same ellipsoid scaled by this factor, shifted by
    core_offset_mm. Volume (analytic) = 4/3 pi a b c.
    """
    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    angle_rad: float
    level: str
    side: str           # "L" | "R"
    core_scale: float = 0.0
    core_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def volume_ml(self) -> float:
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * np.pi * a * b * c / 1000.0

    @property
    def necrosis_ml(self) -> float:
        return self.volume_ml * self.core_scale ** 3

    @property
    def necrotic(self) -> bool:
        return self.core_scale > 0

    def extent_mm(self) -> float:
        return float(max(self.semi_axes_mm)) + 1.0

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) patient-frame corners of a box that contains the node (+1 mm)."""
        a, b, c = self.semi_axes_mm
        cs, sn = abs(math.cos(self.angle_rad)), abs(math.sin(self.angle_rad))
        half = np.array([math.hypot(a * cs, b * sn), math.hypot(a * sn, b * cs), c]) + 1.0
        centre = np.asarray(self.centre_mm)
        return centre - half, centre + half

    def contains(self, p: np.ndarray, core: bool = False) -> np.ndarray:
        centre = np.asarray(self.centre_mm)
        axes = np.asarray(self.semi_axes_mm)
        if core:
            if self.core_scale <= 0:
                return np.zeros(len(p), bool)
            centre = centre + np.asarray(self.core_offset_mm)
            axes = axes * self.core_scale
        q = _to_local(p, tuple(centre), self.angle_rad) / axes
        return np.einsum("ij,ij->i", q, q) <= 1.0


def _to_local(p: np.ndarray, centre, angle: float) -> np.ndarray:
    d = np.asarray(p, dtype=float) - np.asarray(centre, dtype=float)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)


# ---------------------------------------------------------------------------------- anatomy

@dataclass(frozen=True)
class Anatomy:
    """One patient's body: where it lies in LPS and how it differs from the template.

    x0_mm, y0_mm, z0_mm: LPS of the midline, the prevertebral line and the nasopharynx centre.
    """
    x0_mm: float
    y0_mm: float
    z0_mm: float
    roll_rad: float
    head_scale: float
    neck_scale: float
    fat_mm: float
    jitter: dict = field(default_factory=dict, compare=False, hash=False)

    # template -> patient frame
    def j(self, name: str) -> tuple[float, float, float]:
        """Per-structure jitter (du, dv, size factor), fixed per patient."""
        return self.jitter.get(name, (0.0, 0.0, 1.0))

    def lps_to_patient(self, x, y, z):
        dx, dy = x - self.x0_mm, y - self.y0_mm
        c, s = math.cos(self.roll_rad), math.sin(self.roll_rad)
        return c * dx + s * dy, -s * dx + c * dy, z - self.z0_mm

    def patient_to_lps(self, u, v, zeta):
        c, s = math.cos(self.roll_rad), math.sin(self.roll_rad)
        return self.x0_mm + c * u - s * v, self.y0_mm + s * u + c * v, self.z0_mm + zeta

    def body_halfaxes(self, w: float) -> tuple[float, float, float]:
        """Template half-width, half-depth and centre v of the skin outline at level w."""
        lv = _BODY_W
        return (float(np.interp(w, lv, _BODY_A)), float(np.interp(w, lv, _BODY_B)),
                float(np.interp(w, lv, _BODY_CV)))


_JITTER_NAMES = ("vertebra", "canal", "airway", "nasal", "sinus", "mandible", "tongue", "parotid",
                 "carotid", "jugular", "scm", "submand", "pterygoid", "masseter", "ppfat", "larynx",
                 "thyroid", "tonsil", "postfat", "brain")

# skin outline (template mm) by level w
_BODY_W = np.array([-140.0, -100.0, -70.0, -45.0, -25.0, 0.0, 20.0, 45.0])
_BODY_A = np.array([66.0, 60.0, 56.0, 63.0, 71.0, 79.0, 77.0, 74.0])
_BODY_B = np.array([60.0, 58.0, 61.0, 82.0, 90.0, 98.0, 97.0, 95.0])
_BODY_CV = np.array([18.0, 17.0, 15.0, -2.0, -5.0, -3.0, -2.0, 0.0])


def sample_anatomy(rng: np.random.Generator, male: bool) -> Anatomy:
    jitter = {n: (float(rng.normal(0, 1.5)), float(rng.normal(0, 1.5)), float(rng.normal(1.0, 0.06)))
              for n in _JITTER_NAMES}
    return Anatomy(x0_mm=float(rng.normal(0, 4)), y0_mm=float(rng.normal(10, 8)),
                   z0_mm=float(rng.normal(-30, 20)), roll_rad=float(np.deg2rad(rng.normal(0, 2.5))),
                   head_scale=float(rng.normal(1.03 if male else 0.96, 0.04)),
                   neck_scale=float(rng.normal(1.0, 0.05)),
                   fat_mm=float(np.clip(rng.normal(5.5, 1.8), 3.0, 12.0)), jitter=jitter)


# ------------------------------------------------------------------------------ slice painter

class _SlicePainter:
    """Paints template-frame shapes onto one slice's label map (ny, nx) uint8.

    Every shape is evaluated only inside its bounding box, on float32 coordinates made by
    broadcasting the slice's 1-D LPS axes (axial identity grids), which keeps a slice to a few ms.
    """

    def __init__(self, lab: np.ndarray, xs: np.ndarray, ys: np.ndarray, anat: Anatomy):
        self.lab, self.anat = lab, anat
        self.xs = np.asarray(xs, np.float64)
        self.ys = np.asarray(ys, np.float64)
        self.h = anat.head_scale
        self.c, self.s = math.cos(anat.roll_rad), math.sin(anat.roll_rad)
        self._dx = ((self.xs - anat.x0_mm) / self.h).astype(np.float32)
        self._dy = ((self.ys - anat.y0_mm) / self.h).astype(np.float32)

    def _box(self, cu: float, cv: float, r: float):
        """Index ranges (i0, i1, j0, j1) and template offsets (du, dv) from (cu, cv)."""
        x, y, _ = self.anat.patient_to_lps(cu * self.h, cv * self.h, 0.0)
        rr = r * self.h + 1.0
        j0, j1 = np.searchsorted(self.xs, [x - rr, x + rr])
        i0, i1 = np.searchsorted(self.ys, [y - rr, y + rr])
        if j1 <= j0 or i1 <= i0:
            return None
        dx = self._dx[None, j0:j1]
        dy = self._dy[i0:i1, None]
        if self.s == 0.0:
            du, dv = dx - np.float32(cu), dy - np.float32(cv)
        else:
            c, s = np.float32(self.c), np.float32(self.s)
            du = c * dx + s * dy - np.float32(cu)
            dv = c * dy - s * dx - np.float32(cv)
        return i0, i1, j0, j1, du, dv

    def _set(self, i0, i1, j0, j1, inside, tissue, only):
        sub = self.lab[i0:i1, j0:j1]
        if only is not None:
            inside = inside & (sub == only[0] if len(only) == 1 else np.isin(sub, only))
        np.copyto(sub, np.uint8(tissue), where=inside)

    def ellipse(self, tissue: int, cu: float, cv: float, a: float, b: float, angle_deg: float = 0.0,
                only: tuple[int, ...] | None = None, v_max: float | None = None,
                ring: float = 0.0) -> None:
        """Ellipse centred (cu, cv), half-axes a (u) and b (v), rotated by angle_deg.

        ring > 0: only the band of that thickness inside the outline. v_max: only where
        v < v_max. only: paint only over these tissues.
        """
        box = self._box(cu, cv, max(a, b))
        if box is None:
            return
        i0, i1, j0, j1, du, dv = box
        dv_unrotated = dv
        if angle_deg:
            t = math.radians(angle_deg)
            ct, st = np.float32(math.cos(t)), np.float32(math.sin(t))
            du, dv = ct * du + st * dv, ct * dv - st * du
        rr = (du / np.float32(a)) ** 2 + (dv / np.float32(b)) ** 2
        inside = rr <= 1.0
        if ring:
            inside &= ((du / np.float32(max(a - ring, 0.1))) ** 2 + (dv / np.float32(max(b - ring, 0.1))) ** 2) > 1.0
        if v_max is not None:
            inside &= dv_unrotated < np.float32(v_max - cv)
        self._set(i0, i1, j0, j1, inside, tissue, only)

    def outline(self, outer: int, inner: int, cv: float, a: float, b: float, fat: float,
                egg: float, waves: tuple) -> None:
        """The skin outline filled with ``outer`` (subcutaneous fat) and, ``fat`` mm inside it,
        ``inner`` (muscle). The half-width shrinks anteriorly by ``egg``; ``waves`` =
        ((amplitude, frequency, phase), ...) perturb the radius (evaluated only near the edge)."""
        amp = sum(abs(w[0]) for w in waves)
        box = self._box(0.0, cv, max(a, b) * (1.0 + amp) * (1.0 + egg))
        if box is None:
            return
        i0, i1, j0, j1, du, dv = box
        qn = np.clip(dv / np.float32(b), -1.0, 1.0)
        p = du / (np.float32(a) * (1.0 + np.float32(egg) * qn))
        q = dv / np.float32(b)
        # a super-ellipse (power 2.4): heads and necks are boxier than ellipses
        ap, aq = np.abs(p), np.abs(q)
        rr = (ap ** 2.4 + aq ** 2.4) ** (2.0 / 2.4)
        lo, hi = (1.0 - amp) ** 2 * (1.0 - fat / a) ** 2 * 0.9, (1.0 + amp) ** 2 * 1.01
        band = (rr > lo) & (rr < hi)
        f = np.ones_like(rr)
        if band.any():
            th = np.arctan2(q[band], p[band])
            fb = np.ones_like(th)
            for w_amp, freq, ph in waves:
                fb += np.float32(w_amp) * np.cos(np.float32(freq) * th + np.float32(ph))
            f[band] = fb
        r = np.sqrt(rr) / f
        sub = self.lab[i0:i1, j0:j1]
        np.copyto(sub, np.uint8(outer), where=r <= 1.0)
        # fat thicker posteriorly: the inner boundary is shifted back and flattened in front
        pi_ = np.abs(p * np.float32(a / (a - fat)))
        qi_ = np.abs((dv - np.float32(0.25 * fat)) / np.float32(b - 1.2 * fat))
        rin = (pi_ ** 2.4 + qi_ ** 2.4) ** (1.0 / 2.4) / f
        np.copyto(sub, np.uint8(inner), where=rin <= 1.0)


def paint_slice(lab: np.ndarray, xs: np.ndarray, ys: np.ndarray, zeta: float, anat: Anatomy,
                body_waves: tuple) -> None:
    """Fills ``lab`` (ny, nx) uint8 with the tissues of the slice at height ``zeta`` (mm)."""
    w = zeta / anat.neck_scale
    P = _SlicePainter(lab, xs, ys, anat)
    J = anat.j
    a, b, cv = anat.body_halfaxes(w)
    fat = anat.fat_mm / anat.head_scale
    # skin outline with the subcutaneous fat, the rest muscle by default
    P.outline(T["fat"], T["muscle"], cv, a, b, fat, 0.10, body_waves)
    # posterior neck: fat between the muscle groups, then the groups themselves, so that the
    # fat planes between them show (as on real T2WI)
    du, dv, f = J("postfat")
    if w <= 16:
        P.ellipse(T["fat"], 0.0, cv + b * 0.45, (a - fat) * 0.82, (b - fat) * 0.42, only=(T["muscle"],))
        for sgn in (-1, 1):
            P.ellipse(T["muscle"], sgn * (a * 0.13 + du * 0.3), cv + b * 0.64 + dv, a * 0.13 * f, b * 0.2 * f, sgn * -10)
            P.ellipse(T["muscle"], sgn * (a * 0.37 + du), cv + b * 0.56 + dv, a * 0.17 * f, b * 0.2 * f, sgn * 38)
            P.ellipse(T["muscle"], sgn * (a * 0.52 + du), cv + b * 0.22 + dv, a * 0.13 * f, b * 0.17 * f, sgn * 20)
            P.ellipse(T["muscle"], sgn * 13.0, 57.0 + dv, 9.0 * f, 9.0 * f, sgn * 20)
            P.ellipse(T["muscle"], sgn * (a * 0.3 + du), cv + b * 0.36, a * 0.16 * f, b * 0.12 * f, sgn * 15)
        P.ellipse(T["fat"], 0.0, cv + b * 0.66, 1.6, b * 0.26, only=(T["muscle"],))

    if w > 14:
        _skull_base(P, w, a, b, cv)
    else:
        _vertebra(P, w)
    if -18 <= w <= 40:
        _nasopharynx_and_nose(P, w, a, b, cv)
    if -48 <= w < -14:
        _oropharynx(P, w)
    if w < -48:
        _larynx(P, w)
    _vessels_glands_muscles(P, w, a, b, cv)


def _vertebra(P: _SlicePainter, w: float) -> None:
    du, dv, f = P.anat.j("vertebra")
    body_v = 12.0 + dv
    disc = (w < -20) and ((w + 200.0) % 17.0) < 4.0
    if w > 2:  # atlas level: anterior arch and dens
        P.ellipse(T["cortex"], du, 1.5 + dv, 10 * f, 4 * f, v_max=4 + dv)
        P.ellipse(T["marrow"], du, 1.5 + dv, 8 * f, 2.5 * f, v_max=4 + dv)
        P.ellipse(T["cortex"], du, 12 + dv, 6 * f, 6 * f)
        P.ellipse(T["marrow"], du, 12 + dv, 4.5 * f, 4.5 * f)
        # lateral masses
        for sgn in (-1, 1):
            P.ellipse(T["cortex"], sgn * 17 * f + du, 16 + dv, 8 * f, 9 * f)
            P.ellipse(T["marrow"], sgn * 17 * f + du, 16 + dv, 6.5 * f, 7.5 * f)
    else:
        P.ellipse(T["cortex"], du, body_v, 13 * f, 10 * f)
        P.ellipse(T["disc"] if disc else T["marrow"], du, body_v, 11.5 * f, 8.5 * f)
    # posterior arch, canal, CSF and cord, spinous process
    cdu, cdv, cf = P.anat.j("canal")
    P.ellipse(T["cortex"], du, 36 + dv, 17 * f, 14 * f, ring=3.0)
    P.ellipse(T["marrow"], du, 36 + dv, 16 * f, 13 * f, ring=1.6, only=(T["cortex"],))
    P.ellipse(T["cortex"], du, 58 + dv, 3.5 * f, 9 * f)
    P.ellipse(T["marrow"], du, 58 + dv, 2.2 * f, 7.5 * f)
    P.ellipse(T["csf"], du + cdu * 0.3, 35 + dv, 10 * cf, 7.5 * cf)
    P.ellipse(T["cord"], du + cdu * 0.3, 35 + dv, 6.5 * cf, 5.0 * cf)
    # vertebral arteries in the transverse foramina (flow voids)
    for sgn in (-1, 1):
        P.ellipse(T["artery"], sgn * 22 * f + du, 14 + dv, 2.2, 2.2)
    # longus colli / capitis: muscle already; a thin fat plane in front of them
    P.ellipse(T["fat"], du, -9 + dv, 18, 1.2, only=(T["muscle"],))


def _skull_base(P: _SlicePainter, w: float, a: float, b: float, cv: float) -> None:
    du, dv, f = P.anat.j("vertebra")
    t = np.clip((w - 14) / 25.0, 0, 1)
    # clivus (marrow-rich bone) in front of the brainstem
    P.ellipse(T["cortex"], du, 6 + dv - 6 * t, 13 * f, 12 * f)
    P.ellipse(T["marrow"], du, 6 + dv - 6 * t, 11 * f, 10 * f)
    # posterior fossa: CSF, brainstem, cerebellum, occipital bone
    bdu, bdv, bf = P.anat.j("brain")
    P.ellipse(T["cortex"], bdu, 55 + bdv, (40 + 15 * t) * bf, (34 + 4 * t) * bf)
    P.ellipse(T["csf"], bdu, 55 + bdv, (38 + 15 * t) * bf, (32 + 4 * t) * bf)
    P.ellipse(T["brain"], bdu, 56 + bdv, (36.5 + 15 * t) * bf, (30 + 4 * t) * bf)
    P.ellipse(T["csf"], bdu, 33 + bdv, 14 * bf, 10 * bf)
    P.ellipse(T["cord"], bdu, 33 + bdv, 12 * bf, 8.5 * bf)
    P.ellipse(T["csf"], bdu, 70 + bdv, 1.5, 14 * bf, only=(T["brain"],))
    P.ellipse(T["csf"], bdu, 47 + bdv, 6 * bf, 3 * bf, only=(T["brain"],))  # fourth ventricle
    # mastoid air cells
    for sgn in (-1, 1):
        P.ellipse(T["cortex"], sgn * 52, 28 + dv, 10, 12)
        P.ellipse(T["air"], sgn * 52, 28 + dv, 7, 9)


def _nasopharynx_and_nose(P: _SlicePainter, w: float, a: float, b: float, cv: float) -> None:
    du, dv, f = P.anat.j("airway")
    ndu, ndv, nf = P.anat.j("nasal")
    # parapharyngeal fat (obliterated by T2+ tumours)
    pdu, pdv, pf = P.anat.j("ppfat")
    if w <= 22:
        for sgn in (-1, 1):
            P.ellipse(T["fat"], sgn * (25 + pdu), -14 + pdv, 6 * pf, 11 * pf, sgn * 25)
    if w <= 24:
        # nasopharyngeal airway with its mucosa, lateral recesses (fossae of Rosenmueller)
        shrink = 1.0 - max(0.0, (w - 15) / 12.0)
        P.ellipse(T["lymphoid"], du, -13 + dv, 17 * f * shrink + 3, 9 * f + 3)
        P.ellipse(T["mucosa"], du, -15 + dv, 15 * f * shrink + 2, 8 * f + 2)
        P.ellipse(T["air"], du, -15 + dv, 14 * f * shrink, 7 * f * shrink + 0.5)
        for sgn in (-1, 1):
            P.ellipse(T["air"], sgn * 12 * f * shrink + du, -12 + dv, 2.0, 3.5 * shrink, sgn * 30)
        if w > -6:  # choanae, opening into the nasal cavity
            P.ellipse(T["mucosa"], du, -27 + dv, 14, 10)
            P.ellipse(T["air"], du, -27 + dv, 11, 8)
    if w > -8:
        # nasal cavity: mucosa, air, septum and turbinates
        # (mostly bright mucosa of the turbinates, with thin air channels between them)
        P.ellipse(T["mucosa"], ndu, -62 + ndv, 20 * nf, 31 * nf)
        P.ellipse(T["cartilage"], ndu, -64 + ndv, 1.3, 29 * nf)
        for sgn in (-1, 1):
            P.ellipse(T["air"], sgn * 3.2 * nf + ndu, -60 + ndv, 1.2, 26 * nf, sgn * 2)
            P.ellipse(T["air"], sgn * 9.5 * nf + ndu, -58 + ndv, 1.6, 20 * nf, sgn * -6)
            P.ellipse(T["air"], sgn * 16 * nf + ndu, -62 + ndv, 1.8, 22 * nf, sgn * 4)
            P.ellipse(T["air"], sgn * 8 * nf + ndu, -86 + ndv, 5.0, 5.0 * nf)
        # maxillary sinuses: bony wall, mucosal lining, air
        sdu, sdv, sf = P.anat.j("sinus")
        for sgn in (-1, 1):
            cu = sgn * (36 + sdu)
            P.ellipse(T["cortex"], cu, -52 + sdv, 15 * sf, 20 * sf)
            P.ellipse(T["mucosa"], cu, -52 + sdv, 14.2 * sf, 19.2 * sf)
            P.ellipse(T["air"], cu, -52 + sdv, 13.3 * sf, 18.3 * sf)
    elif w > -12:  # hard palate
        P.ellipse(T["cortex"], ndu, -58 + ndv, 26, 30)
        P.ellipse(T["marrow"], ndu, -58 + ndv, 23, 27)


def _oropharynx(P: _SlicePainter, w: float) -> None:
    du, dv, f = P.anat.j("airway")
    tdu, tdv, tf = P.anat.j("tongue")
    # tongue with its lingual septum, a little oral air in front of the teeth level
    P.ellipse(T["muscle"], tdu, -48 + tdv, 30 * tf, 30 * tf)
    P.ellipse(T["fat"], tdu, -48 + tdv, 1.3, 24 * tf, only=(T["muscle"],))
    P.ellipse(T["mucosa"], du, -13 + dv, 13 * f, 8 * f)
    P.ellipse(T["air"], du, -13 + dv, 11 * f, 5.5 * f)
    odu, odv, of = P.anat.j("tonsil")
    if -40 <= w <= -18:
        for sgn in (-1, 1):
            P.ellipse(T["lymphoid"], sgn * (15 + odu), -16 + odv, 6 * of, 8 * of)
    # mandible: rami higher up, body as an arc in front; teeth along the arc
    mdu, mdv, mf = P.anat.j("mandible")
    if w > -30:
        for sgn in (-1, 1):
            P.ellipse(T["cortex"], sgn * (47 + mdu), -22 + mdv, 5 * mf, 15 * mf, sgn * -10)
            P.ellipse(T["marrow"], sgn * (47 + mdu), -22 + mdv, 3 * mf, 12.5 * mf, sgn * -10)
    if w < -20:
        P.ellipse(T["cortex"], mdu, -40 + mdv, 47 * mf, 52 * mf, ring=6.0, v_max=-38 + mdv)
        P.ellipse(T["marrow"], mdu, -40 + mdv, 45 * mf, 50 * mf, ring=2.0, v_max=-40 + mdv,
                  only=(T["cortex"],))
    elif w < -14:  # teeth
        P.ellipse(T["cortex"], mdu, -38 + mdv, 42 * mf, 48 * mf, ring=8.0, v_max=-36 + mdv)


def _larynx(P: _SlicePainter, w: float) -> None:
    du, dv, f = P.anat.j("larynx")
    t = np.clip((-w - 48) / 40.0, 0, 1)
    cv = -22 - 10 * t + dv
    if w > -68:  # hypopharynx with piriform sinuses, submandibular glands, floor of mouth
        P.ellipse(T["mucosa"], du, cv, 16, 9)
        P.ellipse(T["air"], du, cv, 13, 6)
        for sgn in (-1, 1):
            P.ellipse(T["air"], sgn * 12 + du, cv + 3, 3, 5)
        P.ellipse(T["fat"], du, cv - 22, 30, 12, only=(T["muscle"],))
        P.ellipse(T["cortex"], du, cv - 18, 14, 4)  # hyoid
    else:  # larynx / trachea with thyroid cartilage and gland
        P.ellipse(T["cartilage"], du, cv, 19, 15, ring=2.5, v_max=cv + 4)
        P.ellipse(T["mucosa"], du, cv, 11, 9)
        P.ellipse(T["air"], du, cv, 9, 7)
        if w < -92:
            gdu, gdv, gf = P.anat.j("thyroid")
            for sgn in (-1, 1):
                P.ellipse(T["gland"], sgn * (19 + gdu) + du, cv + 4 + gdv, 8 * gf, 13 * gf, sgn * -20)
    # oesophagus behind the airway
    if w < -70:
        P.ellipse(T["mucosa"], du, -4, 7, 4)


def _vessels_glands_muscles(P: _SlicePainter, w: float, a: float, b: float, cv: float) -> None:
    J = P.anat.j
    # parotids
    gdu, gdv, gf = J("parotid")
    if -32 <= w <= 16:
        for sgn in (-1, 1):
            P.ellipse(T["gland"], sgn * (57 + gdu) * min(1.0, a / 72.0), 2 + gdv, 10 * gf, 17 * gf, sgn * 10)
    # masticator space: pterygoids and masseter with fat around
    if -30 <= w <= 14:
        mdu, mdv, mf = J("masseter")
        pdu, pdv, pf = J("pterygoid")
        for sgn in (-1, 1):
            P.ellipse(T["fat"], sgn * 48, -28, 16, 20, only=(T["muscle"],))
            P.ellipse(T["muscle"], sgn * (58 + mdu) * min(1.0, a / 72.0), -28 + mdv, 6 * mf, 17 * mf, sgn * -8)
            P.ellipse(T["muscle"], sgn * (38 + pdu), -24 + pdv, 6 * pf, 14 * pf, sgn * 35)
    # submandibular glands
    if -66 <= w <= -40:
        sdu, sdv, sf = J("submand")
        for sgn in (-1, 1):
            P.ellipse(T["gland"], sgn * (33 + sdu), -38 + sdv, 12 * sf, 10 * sf)
    # sternocleidomastoids with their fat
    if w < -15:
        sdu, sdv, sf = J("scm")
        t = np.clip((-w - 15) / 90.0, 0, 1)
        for sgn in (-1, 1):
            cu = sgn * ((a - 12 - 6 * t) + sdu)
            cvv = 14 - 34 * t + sdv
            P.ellipse(T["fat"], cu, cvv, 10 * sf, 19 * sf, sgn * (-25 - 20 * t))
            P.ellipse(T["muscle"], cu, cvv, 6 * sf, 15 * sf, sgn * (-25 - 20 * t))
    # carotid sheath: fat, internal/common carotid artery (flow void), internal jugular vein
    cdu, cdv, cf = J("carotid")
    jdu, jdv, jf = J("jugular")
    if w < 30:
        t = np.clip((-w + 30) / 120.0, 0, 1)
        for sgn in (-1, 1):
            cu = sgn * (20 + 6 * t + cdu)
            cvc = -5 - 6 * t + cdv
            P.ellipse(T["fat"], cu + sgn * 5, cvc + 4, 12, 10, only=(T["muscle"],))
            P.ellipse(T["artery"], cu, cvc, (3.2 + 1.2 * t) * cf, (3.2 + 1.2 * t) * cf)
            r_j = (5.5 if sgn > 0 else 4.5) * jf
            P.ellipse(T["vein"], sgn * (31 + 4 * t + jdu), cvc + 7 + jdv, r_j, r_j * 0.8, sgn * 20)


def body_waves(rng: np.random.Generator) -> tuple:
    """Random low-order perturbation of the skin outline: ((amplitude, frequency, phase), ...)."""
    return tuple((float(rng.uniform(0.005, 0.025)), int(k), float(rng.uniform(0, 2 * np.pi)))
                 for k in (2, 3, 4, 5))


# ------------------------------------------------------------------------------- rendering

@dataclass(frozen=True)
class Lesions:
    primary: StarLesion
    nodes: tuple[Node, ...]
    heterogeneity: float                 # 0..1, latent enhancement heterogeneity
    hetero_waves: tuple                  # ((kx, ky, kz, phase), ...) in rad/mm, patient frame


def grid_patient_coords(geometry: Geometry, anat: Anatomy, k0: int, k1: int, i0: int, i1: int,
                        j0: int, j1: int) -> np.ndarray:
    """Patient-frame mm of the voxel centres in a box of an axial identity grid: (N, 3)."""
    ox, oy, oz = geometry.origin_mm
    sx, sy, sz = geometry.spacing_mm
    z = oz + np.arange(k0, k1) * sz
    y = oy + np.arange(i0, i1) * sy
    x = ox + np.arange(j0, j1) * sx
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    u, v, zeta = anat.lps_to_patient(X.ravel(), Y.ravel(), Z.ravel())
    return np.stack([u, v, zeta], axis=1)


def _lesion_box(geometry: Geometry, anat: Anatomy, bounds):
    """Index box (k0, k1, i0, i1, j0, j1) of a grid that holds a patient-frame box, or None."""
    lo, hi = bounds
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    X, Y, Z = anat.patient_to_lps(corners[:, 0], corners[:, 1], corners[:, 2])
    ox, oy, oz = geometry.origin_mm
    sx, sy, sz = geometry.spacing_mm
    nx, ny, nz = geometry.size
    j0, j1 = max(int(np.floor((X.min() - ox) / sx)), 0), min(int(np.ceil((X.max() - ox) / sx)) + 1, nx)
    i0, i1 = max(int(np.floor((Y.min() - oy) / sy)), 0), min(int(np.ceil((Y.max() - oy) / sy)) + 1, ny)
    k0, k1 = max(int(np.floor((Z.min() - oz) / sz)), 0), min(int(np.ceil((Z.max() - oz) / sz)) + 1, nz)
    if j1 <= j0 or i1 <= i0 or k1 <= k0:
        return None
    return k0, k1, i0, i1, j0, j1


def lesion_label_map(geometry: Geometry, anat: Anatomy, lesions: Lesions) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-centre rasterisation of the lesions on a series' grid.

    Returns (labels, core): labels (z, y, x) uint8 with 0 = none, 1 = primary (GTV),
    2 + n = node n (GTVln); core (z, y, x) bool = necrotic core of a node.
    """
    nx, ny, nz = geometry.size
    labels = np.zeros((nz, ny, nx), np.uint8)
    core = np.zeros((nz, ny, nx), bool)
    objs = [(1, lesions.primary)] + [(2 + n, node) for n, node in enumerate(lesions.nodes)]
    for value, obj in objs:
        box = _lesion_box(geometry, anat, obj.bounds_mm())
        if box is None:
            continue
        k0, k1, i0, i1, j0, j1 = box
        p = grid_patient_coords(geometry, anat, k0, k1, i0, i1, j0, j1)
        inside = obj.contains(p).reshape(k1 - k0, i1 - i0, j1 - j0)
        sub = labels[k0:k1, i0:i1, j0:j1]
        sub[inside & (sub == 0)] = value  # lesions are sampled not to overlap; first wins
        if isinstance(obj, Node) and obj.necrotic:
            c = obj.contains(p, core=True).reshape(inside.shape) & inside
            core[k0:k1, i0:i1, j0:j1] |= c
    return labels, core


def heterogeneity_field(p: np.ndarray, waves) -> np.ndarray:
    """(N, 3) patient mm -> (N,) smooth field with zero mean and unit variance."""
    f = np.zeros(len(p))
    for kx, ky, kz, ph in waves:
        f += np.cos(p[:, 0] * kx + p[:, 1] * ky + p[:, 2] * kz + ph)
    return f * math.sqrt(2.0 / max(len(waves), 1))


def _interp_matrix(n_out: int, n_in: int):
    """(n_out, n_in) sparse linear interpolation between two pixel grids covering the same
    field of view (pixel centres at (i + 0.5) * fov / n)."""
    from scipy import sparse

    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (pos - i0).astype(np.float32)
    rows = np.concatenate([np.arange(n_out), np.arange(n_out)])
    return sparse.csr_matrix((np.concatenate([1.0 - w1, w1]), (rows, np.concatenate([i0, i1]))),
                             shape=(n_out, n_in), dtype=np.float32)


def resize_inplane(vol: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """(z, y0, x0) float32 -> (z, ny, nx) by separable linear interpolation (same FOV)."""
    nz, ly, lx = vol.shape
    if (ly, lx) == (ny, nx):
        return vol
    my, mx = _interp_matrix(ny, ly), _interp_matrix(nx, lx)
    # two sparse-by-dense products: x first, then y
    t = mx @ vol.astype(np.float32, copy=False).reshape(nz * ly, lx).T           # (nx, nz*ly)
    t = np.ascontiguousarray(t.reshape(nx, nz, ly).transpose(2, 1, 0)).reshape(ly, nz * nx)
    out = (my @ t).reshape(ny, nz, nx).transpose(1, 0, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], spacing_xy: float,
                  corr_mm: float) -> np.ndarray:
    """(z, y, x) float32 smooth Gaussian noise, ~unit variance, in-plane correlation ~corr_mm."""
    nz, ny, nx = shape
    f = max(1.0, corr_mm / spacing_xy / 1.5)
    ly, lx = max(4, int(ny / f) + 2), max(4, int(nx / f) + 2)
    low = rng.standard_normal((nz, ly, lx), dtype=np.float32)
    low = ndimage.gaussian_filter(low, sigma=(0, 1.0, 1.0), mode="wrap")
    low /= max(float(low.std()), 1e-6)
    return resize_inplane(low, ny, nx)


def acquisition_geometry(geometry: Geometry, max_matrix: int = 256) -> Geometry:
    """The grid a series was acquired on: the same field of view with at most ``max_matrix``
    pixels a side; scanners interpolate it up to the reconstruction matrix."""
    nx, ny, nz = geometry.size
    f = max(nx, ny) / max_matrix
    if f <= 1.0:
        return geometry
    ax, ay = max(8, int(round(nx / f))), max(8, int(round(ny / f)))
    sx, sy, sz = geometry.spacing_mm
    asx, asy = sx * nx / ax, sy * ny / ay
    ox, oy, oz = geometry.origin_mm
    # same FOV edges: first pixel centre moves by half the difference of the pixel sizes
    origin = (ox + (asx - sx) / 2.0, oy + (asy - sy) / 2.0, oz)
    return Geometry(origin_mm=origin, spacing_mm=(asx, asy, sz), direction=geometry.direction,
                    size=(ax, ay, nz))


def label_volume(geometry: Geometry, anat: Anatomy, waves: tuple) -> np.ndarray:
    """(z, y, x) uint8 tissue labels of the anatomy (no lesions) on an axial identity grid."""
    nx, ny, nz = geometry.size
    ox, oy, oz = geometry.origin_mm
    sx, sy, sz = geometry.spacing_mm
    xs = ox + np.arange(nx) * sx
    ys = oy + np.arange(ny) * sy
    tissue = np.zeros((nz, ny, nx), np.uint8)
    for k in range(nz):
        paint_slice(tissue[k], xs, ys, oz + k * sz - anat.z0_mm, anat, waves)
    return tissue


def render_series(geometry: Geometry, anat: Anatomy, lesions: Lesions, contrast: str,
                  rng: np.random.Generator, *, waves: tuple, noise_fraction: float,
                  bias_strength: float, max_matrix: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Render one series on an axial identity grid.

    The image is made on the acquisition grid (``acquisition_geometry``: at most ``max_matrix``
    pixels a side), with point spread, bias field and Rician noise there, then interpolated
    linearly to ``geometry`` as scanners do; the lesion labels are rasterised on ``geometry``
    itself (voxel centres), so the truth masks are exact there.
    Returns (image float32 (z, y, x) in relative signal units before the scanner gain,
    lesion labels uint8 (z, y, x): 0 none, 1 GTV, 2 + n node n).
    """
    d = np.asarray(geometry.direction, float).reshape(3, 3)
    if not np.allclose(d, np.eye(3)):
        raise ValueError("the phantom renders axial identity grids only")
    nx, ny, nz = geometry.size
    acq = acquisition_geometry(geometry, max_matrix)
    anx, any_, _ = acq.size
    ox, oy, oz = acq.origin_mm
    sx, sy, sz = acq.spacing_mm
    xs = ox + np.arange(anx) * sx
    ys = oy + np.arange(any_) * sy
    tissue = label_volume(acq, anat, waves)

    # muscle texture from one smooth field, fat septa between muscle bundles from another
    tex = _smooth_noise(rng, tissue.shape, sx, corr_mm=1.8)
    sep = _smooth_noise(rng, tissue.shape, sx, corr_mm=7.0)
    septa = ((np.abs(sep) < 0.04) | (np.abs(tex + 0.3 * sep) < 0.015)) & (tissue == T["muscle"])
    tissue[septa] = T["fat"]

    les_acq, core_acq = lesion_label_map(acq, anat, lesions)
    tissue[les_acq == 1] = T["tumour"]
    nodes = les_acq >= 2
    tissue[nodes] = T["node"]
    tissue[core_acq & nodes] = T["node_necrosis"]

    img = _LUT[contrast][tissue]
    tex *= _TEXTURE[tissue]
    tex += 1.0
    img *= tex
    # enhancement heterogeneity of the primary: a patient-level field, visible per contrast
    tum = np.nonzero(les_acq == 1)
    if tum[0].size:
        p = np.stack(anat.lps_to_patient(xs[tum[2]], ys[tum[1]], oz + tum[0] * sz), axis=1)
        h = heterogeneity_field(p, lesions.hetero_waves)
        amp = HETEROGENEITY_AMPLITUDE[contrast] * lesions.heterogeneity
        img[tum] *= np.clip(1.0 + amp * h * 1.4, 0.2, None).astype(np.float32)
    # point spread (in plane), a smooth multiplicative bias field, Rician magnitude noise
    img = ndimage.gaussian_filter(img, sigma=(0, 0.75, 0.75))
    bias_c = rng.normal(0, bias_strength, 6)
    xn = np.linspace(-1, 1, anx, dtype=np.float32)[None, :]
    yn = np.linspace(-1, 1, any_, dtype=np.float32)[:, None]
    zn = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    b2 = np.exp(bias_c[0] * xn + bias_c[1] * yn + bias_c[2] * xn * yn
                + bias_c[3] * (xn * xn - 0.33) + bias_c[4] * (yn * yn - 0.33)).astype(np.float32)
    img *= b2[None] * np.exp(bias_c[5] * zn).astype(np.float32)
    sigma = np.float32(noise_fraction * 1000.0)
    n1 = rng.standard_normal(img.shape, dtype=np.float32)
    n1 *= sigma
    img += n1
    np.square(img, out=img)
    n2 = rng.standard_normal(img.shape, dtype=np.float32)
    n2 *= sigma
    np.square(n2, out=n2)
    img += n2
    np.sqrt(img, out=img)
    img = resize_inplane(img, ny, nx)
    lesion_labels, _core = lesion_label_map(geometry, anat, lesions)
    return img, lesion_labels


# ------------------------------------------------------------------------- lesion sampling

# median GTV volume (ml) per T stage; log-normal spread
T_VOLUME_MEDIAN_ML = {"T1": 7.0, "T2": 14.0, "T3": 27.0, "T4": 50.0}
# nodal levels in the template frame: |u|, v, w range, median short-axis radius (mm)
NODE_LEVELS = {
    "RP": (21.0, -2.0, (-6.0, 12.0), 4.5),
    "II": (38.0, 6.0, (-45.0, -12.0), 6.5),
    "III": (36.0, -4.0, (-72.0, -46.0), 6.0),
    "IV": (33.0, -10.0, (-104.0, -78.0), 5.5),
    "V": (47.0, 28.0, (-85.0, -25.0), 5.5),
}
_UPPER_LEVEL_P = {"RP": 0.35, "II": 0.45, "III": 0.10, "V": 0.10}
N_NODES_RANGE = {"N0": (0, 0), "N1": (1, 3), "N2": (2, 5), "N3": (3, 6)}


def _unit(rng: np.random.Generator, bias: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple:
    v = rng.normal(size=3) + np.asarray(bias)
    v /= np.linalg.norm(v)
    return tuple(float(x) for x in v)


def sample_primary(rng: np.random.Generator, anat: Anatomy, t_stage: str) -> StarLesion:
    """The primary tumour at the nasopharynx, lobulated, its volume drawn by T stage."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    ti = int(t_stage[1])
    volume = float(np.clip(T_VOLUME_MEDIAN_ML[t_stage] * math.exp(rng.normal(0, 0.33)), 2.0, 130.0))
    u = side * (rng.uniform(3.0, 9.0) + (rng.uniform(2.0, 6.0) if ti >= 2 else 0.0))
    v = rng.uniform(-10.0, -4.0) + (rng.uniform(3.0, 7.0) if ti >= 3 else 0.0)
    w = rng.uniform(-2.0, 5.0) + {1: 0.0, 2: 1.0, 3: rng.uniform(3.0, 7.0), 4: rng.uniform(6.0, 12.0)}[ti]
    axes = np.array([rng.uniform(1.0, 1.3), rng.uniform(0.72, 0.92), rng.uniform(1.0, 1.35)])
    axes /= np.prod(axes) ** (1.0 / 3.0)
    n_lobes = int(rng.integers(2, 6))
    n_waves = 6
    lesion = StarLesion(
        centre_mm=(u * anat.head_scale, v * anat.head_scale, w * anat.neck_scale),
        axes=tuple(float(a) for a in axes), angle_rad=float(rng.normal(0, 0.3)), radius_mm=1.0,
        lobe_dirs=tuple(_unit(rng, (side * 0.6, 0.0, 0.3)) for _ in range(n_lobes)),
        lobe_amps=tuple(float(rng.uniform(0.15, 0.45)) for _ in range(n_lobes)),
        lobe_kappas=tuple(float(rng.uniform(3.0, 8.0)) for _ in range(n_lobes)),
        wave_dirs=tuple(_unit(rng) for _ in range(n_waves)),
        wave_amps=tuple(float(rng.uniform(0.04, 0.10)) for _ in range(n_waves)),
        wave_freqs=tuple(float(rng.uniform(3.0, 8.0)) for _ in range(n_waves)),
        wave_phases=tuple(float(rng.uniform(0, 2 * np.pi)) for _ in range(n_waves)),
    )
    return lesion.with_volume(volume)


def _inside_body(anat: Anatomy, centre_mm, extent: float) -> bool:
    u, v, zeta = centre_mm
    w = zeta / anat.neck_scale
    a, b, cv = anat.body_halfaxes(w)
    ut, vt = u / anat.head_scale, v / anat.head_scale
    margin = (anat.fat_mm + extent) / anat.head_scale + 2.0
    return (ut / max(a - margin, 1.0)) ** 2 + ((vt - cv) / max(b - margin, 1.0)) ** 2 < 1.0


def sample_nodes(rng: np.random.Generator, anat: Anatomy, n_stage: str, primary: StarLesion,
                 tumour_side: float, necrosis_propensity: float) -> tuple[Node, ...]:
    """0-6 nodes by N stage (N1 unilateral, N2 bilateral, N3 with a low-neck node), not
    overlapping each other or the primary; larger nodes are more often necrotic."""
    lo, hi = N_NODES_RANGE[n_stage]
    if hi == 0:
        return ()
    count = int(rng.integers(lo, hi + 1))
    nodes: list[Node] = []
    p_extent = primary.extent_mm()
    for n in range(count):
        for _attempt in range(40):
            if n_stage == "N3" and n == 0:
                level = str(rng.choice(["IV", "V"], p=[0.7, 0.3]))
            else:
                level = str(rng.choice(list(_UPPER_LEVEL_P), p=list(_UPPER_LEVEL_P.values())))
            if n_stage == "N1":
                side = tumour_side if rng.random() < 0.85 else -tumour_side
            else:
                side = tumour_side if (n % 2 == 0) else -tumour_side
            au, av, (w_lo, w_hi), r_med = NODE_LEVELS[level]
            if level == "V" and n_stage == "N3" and n == 0:
                w_lo, w_hi = -95.0, -75.0
            r = float(np.clip(r_med * math.exp(rng.normal(0, 0.28)) * (1.25 if n_stage == "N3" and n == 0 else 1.0),
                              3.5, 16.0))
            semi = (r * rng.uniform(1.0, 1.2), r * rng.uniform(0.85, 1.05), r * rng.uniform(1.2, 1.7))
            cu = side * (au + rng.normal(0, 3.0))
            cv = av + rng.normal(0, 4.0)
            cw = rng.uniform(w_lo, w_hi)
            centre = (cu * anat.head_scale, cv * anat.head_scale, cw * anat.neck_scale)
            ext = max(semi) + 1.0
            if not _inside_body(anat, centre, max(semi[0], semi[1])):
                continue
            if np.linalg.norm(np.subtract(centre, primary.centre_mm)) < p_extent + ext + 1.0:
                continue
            if any(np.linalg.norm(np.subtract(centre, o.centre_mm)) < o.extent_mm() + ext + 1.0 for o in nodes):
                continue
            p_nec = 1.0 / (1.0 + math.exp(-(-1.6 + 0.45 * (r - 6.0) + 1.1 * necrosis_propensity)))
            core = float(rng.uniform(0.45, 0.7)) if rng.random() < p_nec else 0.0
            offset = tuple(float(rng.normal(0, 0.08 * s)) for s in semi) if core else (0.0, 0.0, 0.0)
            nodes.append(Node(centre_mm=tuple(float(c) for c in centre),
                              semi_axes_mm=tuple(float(s) for s in semi),
                              angle_rad=float(rng.normal(0, 0.4)), level=level,
                              side="L" if side > 0 else "R", core_scale=core, core_offset_mm=offset))
            break
    return tuple(nodes)


def sample_lesions(rng: np.random.Generator, anat: Anatomy, t_stage: str, n_stage: str) -> Lesions:
    """Primary, nodes and the latent enhancement heterogeneity (0..1) of one patient."""
    primary = sample_primary(rng, anat, t_stage)
    side = 1.0 if primary.centre_mm[0] >= 0 else -1.0
    necrosis_propensity = float(rng.normal())
    nodes = sample_nodes(rng, anat, n_stage, primary, side, necrosis_propensity)
    ti = int(t_stage[1])
    heterogeneity = float(np.clip(rng.beta(2.0, 2.0) + 0.06 * (ti - 2.5), 0.0, 1.0))
    waves = []
    for _ in range(10):
        d = np.asarray(_unit(rng))
        k = 2 * np.pi / rng.uniform(5.0, 12.0)
        waves.append((float(d[0] * k), float(d[1] * k), float(d[2] * k), float(rng.uniform(0, 2 * np.pi))))
    return Lesions(primary=primary, nodes=nodes, heterogeneity=heterogeneity, hetero_waves=tuple(waves))


def imaging_features(lesions: Lesions) -> dict[str, float]:
    """The analytic (not voxel-counted) imaging latents of a patient."""
    return {
        "gtv_volume_ml": lesions.primary.volume_ml,
        "n_nodes": len(lesions.nodes),
        "node_volume_ml": float(sum(n.volume_ml for n in lesions.nodes)),
        "n_necrotic_nodes": int(sum(n.necrotic for n in lesions.nodes)),
        "necrosis_volume_ml": float(sum(n.necrosis_ml for n in lesions.nodes)),
        "heterogeneity": lesions.heterogeneity,
    }
