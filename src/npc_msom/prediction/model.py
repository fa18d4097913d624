"""The MSOM classifier of stage 2: the detector's ResNet-FPN feature extractor, one FPN level,
global average pooling, [the clinical vector], a fully connected layer and a sigmoid.

The extractor is built by ``detection.build_model`` itself (the same class, the same parameter
names), so that transfer from a trained detector copies every backbone and FPN tensor by name.
Input slices are normalised, made three-channel and padded to a multiple of 32 exactly as the
detector's ``GrayscaleRCNNTransform`` does, so the transferred weights see what they were trained on.

Beyond the study's head (GAP -> FC), the pooled vector is standardised with fixed per-channel
statistics (buffers fitted on the training slices of the *initial* extractor, never on validation):
FPN outputs are not normalised and their scale differs by orders of magnitude between a detector
and a fresh network, which otherwise makes the head's learning rate depend on the initialisation.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from npc_msom.config import DetectionConfig, from_dict, to_dict
from npc_msom.errors import ConfigError, InputError
from npc_msom.runtime import file_digest  # noqa: F401 - re-exported; the one sha256 of a file (runtime)

log = logging.getLogger(__name__)

# FPN level name -> key of torchvision's BackboneWithFPN output (P2..P5 from C2..C5, P6 by max-pool)
FPN_LEVELS: dict[str, str] = {"P2": "0", "P3": "1", "P4": "2", "P5": "3", "P6": "pool"}
SIZE_DIVISIBLE = 32  # GeneralizedRCNNTransform pads batches to a multiple of 32 px


class MSOMHead(nn.Module):
    """pooled (B, C) -> standardise (fixed buffers) -> [concat clinical (B, D)] -> FC -> logits (B,).

    The one head of both training paths (cached features and the whole network)."""

    def __init__(self, channels: int, n_clinical: int = 0):
        super().__init__()
        self.n_clinical = int(n_clinical)
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.fc = nn.Linear(channels + self.n_clinical, 1)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    @property
    def channels(self) -> int:
        return int(self.feature_mean.numel())

    def forward(self, pooled: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        z = (pooled.float() - self.feature_mean) / self.feature_std
        if self.n_clinical:
            if clinical is None or clinical.shape[-1] != self.n_clinical:
                raise ValueError(f"this model takes a clinical vector of {self.n_clinical} values")
            z = torch.cat([z, clinical.float()], dim=1)
        return self.fc(z).squeeze(1)

    def set_feature_stats(self, pooled_train: torch.Tensor) -> None:
        """Fix the standardisation from the training slices' pooled vectors (N, C)."""
        mean = pooled_train.float().mean(0)
        std = pooled_train.float().std(0, unbiased=False)
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))


class MSOMClassifier(nn.Module):
    """ResNet-FPN extractor -> level ``feature_level`` -> GAP -> :class:`MSOMHead`.

    forward(images (B, 1, H, W) float 0..1, clinical (B, n_clinical) float or None) -> logits (B,).
    ``pooled(images)`` -> (B, C) the raw pooled vector (what the feature cache stores).
    """

    def __init__(self, det_config: DetectionConfig, image_size: int, *, feature_level: str = "P3",
                 n_clinical: int = 0):
        super().__init__()
        from npc_msom.detection.model import build_model  # noqa: PLC0415
        if feature_level not in FPN_LEVELS:
            raise ConfigError(f"prediction.feature_level: expected one of {list(FPN_LEVELS)}, got {feature_level!r}")
        detector = build_model(det_config, num_classes=3, image_size=image_size, with_weights=False)
        self.backbone = detector.backbone  # BackboneWithFPN: body.* (ResNet) and fpn.*
        self.det_config = det_config
        self.image_size = int(image_size)
        self.net_size = int(round(image_size * det_config.input_scale))
        self.feature_level = feature_level
        self.head = MSOMHead(det_config.fpn_channels, n_clinical)

    @property
    def channels(self) -> int:
        return self.head.channels

    @property
    def n_clinical(self) -> int:
        return self.head.n_clinical

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1|3, H, W) 0..1 -> the detector's normalised, 3-channel, padded network input."""
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
        det = self.det_config
        x = (images.float() - det.pixel_mean) / det.pixel_std
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.net_size or x.shape[-2] != self.net_size:
            x = F.interpolate(x, size=(self.net_size, self.net_size), mode="bilinear", align_corners=False)
        pad_h = (-x.shape[-2]) % SIZE_DIVISIBLE
        pad_w = (-x.shape[-1]) % SIZE_DIVISIBLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x

    def level_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) the chosen FPN level, computed without the levels it does not need.

        torchvision's FPN computes every level; P3 only needs the top-down path from C5 to C3 and one
        3x3 output conv, so the P2 output conv (the costliest, at stride 4) and those of P4/P5 are
        skipped. Equal to ``backbone(x)[level]`` (a test checks it).
        """
        level = FPN_LEVELS[self.feature_level]
        if level == "pool":
            return self.backbone(self.prepare(images))["pool"]
        fpn = self.backbone.fpn
        c = list(self.backbone.body(self.prepare(images)).values())
        k = int(level)
        inner = fpn.get_result_from_inner_blocks(c[-1], -1)
        for idx in range(len(c) - 2, k - 1, -1):
            lateral = fpn.get_result_from_inner_blocks(c[idx], idx)
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
        return fpn.get_result_from_layer_blocks(inner, k if k < len(c) - 1 else -1)

    def level_maps(self, images: torch.Tensor, levels) -> dict[str, torch.Tensor]:
        """{level: (B, C, h, w)} for several FPN levels from one pass of the backbone and of the
        top-down path (the region features at P2 and the study's P3 vector share it)."""
        keys = {lv: int(FPN_LEVELS[lv]) for lv in levels}
        if any(lv == "P6" for lv in levels):
            full = self.backbone(self.prepare(images))
            return {lv: full[FPN_LEVELS[lv]] for lv in levels}
        fpn = self.backbone.fpn
        c = list(self.backbone.body(self.prepare(images)).values())
        lowest = min(keys.values())
        inner = fpn.get_result_from_inner_blocks(c[-1], -1)
        out = {}
        for idx in range(len(c) - 1, lowest - 1, -1):
            if idx < len(c) - 1:
                lateral = fpn.get_result_from_inner_blocks(c[idx], idx)
                inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            for lv, k in keys.items():
                if k == idx:
                    out[lv] = fpn.get_result_from_layer_blocks(inner, k if k < len(c) - 1 else -1)
        return out

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) global average of the chosen FPN level."""
        return self.level_map(images).mean(dim=(-2, -1))

    def forward(self, images: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.pooled(images), clinical)


def architecture_of(det: DetectionConfig) -> dict:
    """The settings that decide the extractor's tensors; two configs with equal dicts transfer."""
    from npc_msom.detection.model import resolved_norm  # noqa: PLC0415
    return {"backbone": det.backbone, "fpn_channels": det.fpn_channels, "norm": resolved_norm(det)}


def detector_config_from_checkpoint(ckpt: dict) -> DetectionConfig:
    """The DetectionConfig that rebuilds a detector checkpoint's network (as ``load_detector``)."""
    meta = ckpt["meta"]
    det = dict(ckpt["config"]["detection"])
    det.update(weights=None, norm=meta["norm"], trainable_layers=meta["trainable_layers"],
               fpn_channels=meta["fpn_channels"], anchor_sizes=meta["anchor_sizes"])
    return from_dict(DetectionConfig, det, "checkpoint.config.detection")


def read_detector_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError("detector checkpoint does not exist; train the detector first (npc-msom train-detector)",
                         file=path, expected="checkpoint_last.pt of a trained detector of this run and sequence")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt or "config" not in ckpt:
        raise InputError("not a detector checkpoint", file=path, expected="a checkpoint_last.pt of train_detector")
    return ckpt


def transfer_from_detector(model: MSOMClassifier, ckpt: dict, path: str | Path = "checkpoint") -> int:
    """Copy every backbone (ResNet) and FPN tensor of a detector checkpoint into ``model``.

    Returns the number of tensors copied (parameters and buffers, BatchNorm statistics included).
    Raises InputError naming both configurations when the architectures differ.
    """
    theirs = architecture_of(detector_config_from_checkpoint(ckpt))
    ours = architecture_of(model.det_config)
    if theirs != ours:
        raise InputError(f"the detector's extractor {theirs} does not match the classifier's {ours}",
                         file=path, expected="a detector trained with the same detection.backbone, "
                                             "detection.fpn_channels and norm as this run's config")
    src = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    own = model.backbone.state_dict()
    missing = sorted(set(own) - set(src))
    wrong = sorted(k for k in own if k in src and tuple(src[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        raise InputError(f"{len(missing)} extractor tensor(s) missing and {len(wrong)} of another shape "
                         f"(e.g. {(missing or wrong)[0]})", file=path,
                         expected=f"every tensor of a {ours} extractor")
    model.backbone.load_state_dict({k: src[k] for k in own}, strict=True)
    log.info("transferred %d backbone + FPN tensors from %s", len(own), path)
    return len(own)


def classifier_meta(model: MSOMClassifier) -> dict:
    """What rebuilds the classifier (stored in its checkpoint)."""
    return {"detection": to_dict(model.det_config), "image_size": model.image_size,
            "feature_level": model.feature_level, "n_clinical": model.n_clinical}


def classifier_from_meta(meta: dict) -> MSOMClassifier:
    det = from_dict(DetectionConfig, meta["detection"], "checkpoint.meta.detection")
    return MSOMClassifier(det, int(meta["image_size"]), feature_level=meta["feature_level"],
                          n_clinical=int(meta["n_clinical"]))
