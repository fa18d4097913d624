"""Every setting of the pipeline and its default, as nested frozen dataclasses.

YAML files hold only the values that differ from these defaults; ``--set a.b=c`` overrides
one value from the command line (the value is parsed as YAML, so ``--set preprocess.image_size=128``
gives an int). The resolved configuration is saved in every run folder and every checkpoint.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npc_msom.errors import ConfigError

SEQUENCES: tuple[str, ...] = ("T1WI", "T2WI", "CE-T1WI")
STRUCTURES: tuple[str, ...] = ("GTV", "GTVln")


@dataclass(frozen=True)
class SynthConfig:
    patients: int = 60
    seed: int = 2024
    # share of patients with MSOM (study: 85/186)
    msom_fraction: float = 85 / 186
    workers: int = 0  # processes writing patients; 0 = up to 2


@dataclass(frozen=True)
class CohortConfig:
    # Series classification: the first sequence whose any pattern (case-insensitive regular
    # expression) matches SeriesDescription or ProtocolName wins; CE-T1WI is tried first because
    # "T1" also matches its descriptions. Contrast agent tags also mark a T1 series as CE-T1WI.
    sequence_patterns: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "CE-T1WI": (r"\+\s*c\b", r"\bce[-_ ]?t1", r"t1.*(post|gd|gad|contrast|\+c|enh|\bce\b|fs.*c\b)",
                    r"(post|gd|gad|contrast).*t1", r"\bt1c\b", r"t1[-_ ]?ce\b", r"vibe.*(post|c\b)"),
        "T2WI": (r"\bt2", r"stir"),
        "T1WI": (r"\bt1",),
    })
    # descriptions ignored outright (with a note in the manifest)
    ignore_patterns: tuple[str, ...] = (r"local", r"survey", r"scout", r"calib", r"\bdwi\b",
                                        r"\badc\b", r"\bflair\b", r"\bmra?\b.*tof")
    # ROI name -> structure; matched case-insensitively on names with spaces, '-' and '_' removed.
    roi_patterns: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "GTVln": (r"^gtv(ln|nd|n|node|nodes|lymph|lnd|rpn|rp)(l|r|left|right)?\d*$",
                  r"^gtvn\d+$", r"^gtv(l|r)?n\d*$", r"^ln\d*$", r"^gtvln\w*$", r"^gtvnd\w*$"),
        "GTV": (r"^gtv$", r"^gtv(nx|p|t|primary|tumou?r|np)\d*$", r"^gtvnx\w*$", r"^gtvp\w*$"),
    })
    # NIfTI layouts: a folder per patient; file name patterns (glob) per sequence
    nifti_image_patterns: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "T1WI": ("T1_img.nii*", "t1.nii*", "T1.nii*", "*_T1.nii*"),
        "T2WI": ("T2_img.nii*", "t2.nii*", "T2.nii*", "*_T2.nii*"),
        "CE-T1WI": ("T1C_img.nii*", "CE-T1_img.nii*", "t1c.nii*", "T1C.nii*", "*_T1C.nii*", "*_CE-T1.nii*"),
    })
    nifti_label_suffix: str = "_mask"  # T1_img.nii.gz -> T1_mask.nii.gz; label 1 = GTV, 2 = GTVln
    # DICOM series + a NIfTI mask per sequence beside them (the public NPC MRI dataset, Li Y et
    # al. Sci Data 2025: MRI-Segments/<NNN>/{T1WI,T2WI,CE-T1WI}/ + ROI-T1.nii, ROI-T2.nii,
    # ROI-CE-T1.nii); every non-zero voxel of such a mask is taken as dicom_mask_structure
    dicom_mask_patterns: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "CE-T1WI": ("ROI-CE-T1.nii*",), "T2WI": ("ROI-T2.nii*",), "T1WI": ("ROI-T1.nii*",)})
    dicom_mask_structure: str = "GTV"
    required_sequences: tuple[str, ...] = SEQUENCES
    skip_bad: bool = False
    max_gap_factor: float = 1.5  # a slice gap above this x median spacing is a missing slice
    workers: int = 0              # processes indexing patients (and reading headers); 0 = up to 2


@dataclass(frozen=True)
class PreprocessConfig:
    sequences: tuple[str, ...] = SEQUENCES
    spacing_mm: float = 1.0
    # robust intensity window inside the body (percentiles), mapped to 1..255
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)
    image_size: int = 512
    neighbours: int = 0           # also keep this many slices above and below the tumour
    negatives_per_patient: int = 0  # tumour-free slices kept as negatives
    # at least this many tumour-free slices per validation patient, from anywhere in the body away from
    # the tumour, so that validation AP counts false positives on normal anatomy
    val_negatives: int = 1
    slice_step: int = 1           # keep every n-th tumour slice (1 mm slices are highly redundant)
    image_format: str = "png"     # "png" (lossless) or "jpg" (as in the study)
    val_fraction: float = 46 / 186
    folds: int = 0                # >0: repeated stratified k-fold instead of one split
    repeats: int = 1
    workers: int = 1


@dataclass(frozen=True)
class DetectionConfig:
    backbone: str = "resnet50"   # resnet18 | resnet34 | resnet50
    # None = from scratch; "imagenet" = torchvision's ImageNet file of the backbone from the local torch
    # cache (as the study's MMDetection config; `npc-msom weights fetch resnet50` gets it where there is
    # network); else a local file with backbone or full-model weights
    weights: str | None = None
    epochs: int = 24
    batch_size: int = 4          # total over all processes (torchrun splits it)
    lr: float = 0.005            # MMDetection 0.02 for batch 16 -> 0.005 linear-scaled to 4; 2x
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500      # in iterations (batches), not epochs, as MMDetection's warm-up
    warmup_ratio: float = 0.001  # MMDetection: linear warm-up from lr x 0.001
    # lr x lr_gamma at each step. A value in (0, 1) is a fraction of the schedule (of `epochs`), so the
    # steps move with `epochs`; MMDetection's 2x steps at epochs 16 and 22 of 24. A whole number >= 1
    # is an epoch, and must lie below `epochs` (else a ConfigError).
    lr_steps: tuple[float, ...] = (16 / 24, 22 / 24)
    lr_gamma: float = 0.1
    rpn_nms: float = 0.7
    box_nms: float = 0.5
    score_threshold: float = 0.05
    detections_per_image: int = 100
    # anchors: base size per level P2..P6 in px at the network's input; empty = 2 x the level's
    # stride (8..128 px, chosen by anchor coverage: detection/model.py), x ratios and octave scales
    anchor_sizes: tuple[float, ...] = ()
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_scales_per_octave: int = 3  # sizes per level: base x 2^(i/3) (RetinaNet's octave scales)
    # each anchor tiled d x d times per cell of its level, stride / d apart (FaceBoxes' anchor
    # densification): a grid as fine as input_scale d gives, at the cost of d^2 RPN outputs only
    anchor_density: int = 1
    # RoI heads: boxes of this side (px at the network's input) pool from P4, smaller ones from
    # finer levels (FPN eq. 1; torchvision's and MMDetection's 224 px); 0 = 224 x input / 800
    roi_canonical_scale: float = 224.0
    # the network sees slices resized by this factor (MMDetection's pipeline took the study's 512 px
    # to 800 px, i.e. 1.5625); 1 = no resizing. Outputs are mapped back to the slice's pixels.
    input_scale: float = 1.0
    # grey levels scaled to 0..1, then (x - mean) / std on each of the three identical channels;
    # 1..255 MR slices are mostly dark (two real T2WI slices: mean 0.13, std 0.18), unlike
    # ImageNet's RGB statistics
    pixel_mean: float = 0.15
    pixel_std: float = 0.2
    norm: str = "auto"           # auto | batch | frozen; auto = frozen with weights, else batch
    trainable_layers: int = -1   # -1 = 3 with weights (MMDetection frozen_stages=1), else 5
    fpn_channels: int = 256      # FPN and mask-head width (256 in the study; smaller in tests)
    box_batch_size: int = 512    # RoIs sampled per image for the box head (MMDetection: 512)
    box_head_dim: int = 1024     # width of the box head's two fully connected layers (MMDetection, torchvision: 1024)
    augment: bool = True
    flip_prob: float = 0.5
    intensity_jitter: float = 0.1  # gamma in [1/(1+2j), 1+2j], contrast 1 +- j, brightness +- j/2
    grad_clip: float = 0.0       # max gradient norm; 0 = none (as MMDetection's Mask R-CNN)
    amp: bool = True             # mixed precision, used on CUDA only
    workers: int = 0
    deterministic: bool = False
    # DDP on GPUs with BatchNorm in training mode (no weights loaded): normalise with the statistics
    # of the whole batch over every process, not of each process's few slices (torchvision's
    # references' --sync-bn); PyTorch's SyncBatchNorm has no CPU kernels
    sync_bn: bool = False
    max_train_images: int = 0    # 0 = all
    # one detector trained on the slices of every sequence, evaluated per sequence (detection/shared.py)
    shared: bool = False
    # RPN proposals kept after NMS per image in training / at test time (MMDetection: 1000 / 1000 at
    # 800 px); a 128 px slice with a few tumours needs far fewer, and the box head's cost is per proposal
    rpn_proposals_train: int = 1000
    rpn_proposals_test: int = 1000
    roi_sampling_ratio: int = 2  # RoIAlign points per bin side (torchvision 2; MMDetection 0 = adaptive)
    eval_every: int = 1          # validation AP every n epochs (and always after the last)
    # mask AP on the validation slices: the mask head then runs on every detection, ~40% of a CPU
    # validation pass. The study's metric is box AP@0.5; false reports box AP only (Table 2's mask
    # column empty). Figure 2 and `npc-msom predict` draw masks either way.
    val_masks: bool = True


@dataclass(frozen=True)
class PredictionConfig:
    # the extractor: "detector" = every backbone + FPN tensor of this run's trained detector of the
    # same sequence (checkpoint_last.pt); "scratch" = a fresh network (the transfer ablation)
    init: str = "detector"
    # "all" = fine-tune the whole network on slices (the study: batch 2, 20 epochs); "head" =
    # freeze the extractor, cache each slice's pooled vector once, train the head only (CPU, seconds)
    finetune: str = "all"
    # mri / fusion: the study's slice classifier (fusion = the clinical vector joins the pooled one);
    # patient / patient_fusion: tumour regions + burden -> one patient-level model (prediction/patient.py)
    models: tuple[str, ...] = ("mri", "fusion", "patient", "patient_fusion")
    feature_level: str = "P3"
    # slices scored per patient: "contours" = the tumour slices that preprocessing kept (the study);
    # "detector" = the slices where the trained detector finds a GTV scoring >= detector_threshold
    slices: str = "contours"
    detector_threshold: float = 0.5
    aggregate: str = "mean"       # patient score = mean of slice probabilities, or "top_k" mean
    top_k: int = 3
    patient_weighting: bool = False  # weigh slices 1/n per patient, so that big tumours do not count more
    clinical_columns: tuple[str, ...] = ()  # empty = every predictor of the clinical schema
    epochs: int = 20
    batch_size: int = 2
    lr: float = 1e-3
    backbone_lr_factor: float = 0.1  # finetune=all: the transferred extractor learns at lr x this
    weight_decay: float = 1e-4
    pos_weight: float = 0.0       # BCE weight of MSOM slices: >0 as given, <0 = n_neg/n_pos, 0 = none
    augment: bool = True          # flips (head: cached mirror views), small affine and intensity (all)
    affine_degrees: float = 10.0
    affine_scale: float = 0.1
    affine_shift: float = 0.05
    intensity_jitter: float = 0.1
    amp: bool = True              # CUDA only
    workers: int = 0
    feature_batch_size: int = 32  # slices per forward pass when caching features / scoring
    feature_views: int = 2        # finetune=head: cached views per slice (2 = + its mirror image, the flip augmentation)
    combine_sequences: tuple[str, ...] = SEQUENCES  # the combined model's inputs (fusion scores)
    cv_folds: int = 0             # >1: also repeated patient-level stratified CV (finetune=head)
    cv_repeats: int = 1
    # the patient-level models: "region" pools the FPN map inside the GTV, the nodes and a ring of
    # ring_mm around them; "slice" pools the whole slice (the ablation). P2 (stride 4) because at
    # 128 px a 1 cm node covers less than one P3 cell (docs/prediction.md has the measurement)
    pooling: str = "region"
    region_level: str = "P2"
    ring_mm: float = 5.0
    burden: bool = True           # the tumour-burden descriptors as an input group
    deep: bool = True             # the pooled region vectors as an input group
    inner_folds: int = 5          # inner CV on the training patients: penalty, deep group's weight, fusion's logit
    patient_cs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    deep_weights: tuple[float, ...] = (0.0, 0.5, 1.0)  # candidate weights of the deep group (0 = burden only)


@dataclass(frozen=True)
class BaselinesConfig:
    """The comparison models (``npc_msom.baselines``); defaults are the study-sized settings."""
    # any of clinical, n_stage, largest_slice, largest_slice_fusion, radiomics
    models: tuple[str, ...] = ("clinical", "n_stage", "largest_slice", "largest_slice_fusion", "radiomics")
    sequences: tuple[str, ...] = ()  # the image models' sequences; empty = every preprocessed one
    clinical_c: float = 1.0          # inverse L2 strength of the clinical logistic regression
    # largest-slice ResNet-18 trained from scratch (the study's reference 20)
    slice_epochs: int = 20
    slice_batch_size: int = 16
    slice_lr: float = 1e-3
    slice_weight_decay: float = 1e-4
    slice_size: int = 0              # px the slice is resized to; 0 = as preprocessed
    # radiomics (reference 7): a PyRadiomics parameter file; a relative path is looked up in the
    # working folder, then in the project's configs/
    radiomics_params: str = "radiomics_paper.yaml"
    radiomics_workers: int = 2       # processes extracting features (at most 2)
    radiomics_margin_mm: float = 10.0  # crop around the GTV before resampling to 1 mm
    radiomics_corr: float = 0.9      # |Pearson r| above which the later of two features is dropped
    radiomics_cv_folds: int = 5      # internal CV of the L1 logistic regression
    radiomics_cs: int = 20           # candidate inverse penalties (log-spaced, as sklearn's Cs)


@dataclass(frozen=True)
class EvaluationConfig:
    ci_method: str = "delong"
    bootstrap_resamples: int = 2000
    level: float = 0.95
    survival_time_months: float = 36.0
    # the model whose risk groups Figure 4 shows (the study's: CE-T1WI + clinical); "sequence/model"
    survival_model: str = "CE-T1WI/fusion"
    # Grad-CAM of the survival model (a slice model) on each validation patient's highest-probability
    # slices, for the report's "Where the model looks"; 0 = not drawn
    saliency_slices_per_patient: int = 2


@dataclass(frozen=True)
class Config:
    name: str = "default"
    seed: int = 0
    device: str = "auto"
    synth: SynthConfig = field(default_factory=SynthConfig)
    cohort: CohortConfig = field(default_factory=CohortConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    prediction: PredictionConfig = field(default_factory=PredictionConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


def to_dict(obj: Any) -> Any:
    """Plain dict/list form of a config (tuples become lists), ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (partial) dict; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("sequence_patterns",
                                                                           "roi_patterns",
                                                                           "nifti_image_patterns"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict:
    """``"a.b=c"`` -> ``{"a": {"b": <c parsed as YAML>}}``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected the form section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``--set`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        data = loaded
    for o in overrides:
        data = _merge(data, parse_override(o))
    return from_dict(Config, data)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
