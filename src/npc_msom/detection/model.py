"""Mask R-CNN with a ResNet-FPN backbone (torchvision), set up after the study's MMDetection model.

The study used MMDetection's Mask R-CNN R50-FPN with its defaults. torchvision's ``MaskRCNN`` has
the same architecture (C2..C5 -> P2..P6 with 256 channels, RoIAlign 7x7 box head with two
1024-wide FC layers, 4-conv 14x14 mask head) and the same sampling and matching rules (RPN IoU
0.7 / 0.3, 256 anchors, half positive; head IoU 0.5, 512 RoIs, a quarter positive). It is not
the same detector: our slices are smaller than MMDetection's 800 px input, so the anchors differ
(9 per location, 2 x the stride: see :data:`ANCHOR_STRIDE_RATIO`), and anchors and box decoding
run in float32 under autocast. Every difference is listed in the package docstring.
"""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from npc_msom.config import DetectionConfig
from npc_msom.detection.roi_align import SparseMultiScaleRoIAlign
from npc_msom.errors import ConfigError, InputError

log = logging.getLogger(__name__)

# The one place a user picks a backbone by name.
BACKBONES = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}

# FPN levels P2..P6 and their strides in pixels.
FPN_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)
# MMDetection's Mask R-CNN: one anchor of 8 x the stride per level (32..512 px) for its input, whose
# short side is resized to 800 px. Its RoI level mapper (finest_scale 56) sends boxes under 112 px
# to P2, as torchvision's canonical 224 px at P4 does.
MMDET_ANCHOR_SIZES: tuple[int, ...] = (32, 64, 128, 256, 512)
MMDET_SHORT_SIDE = 800
# Our anchors: 2 x the stride per level, at 3 scales per octave (anchor_scales_per_octave), i.e.
# 8..203 px at any input size. Chosen by anchor coverage (anchors.anchor_coverage: share of
# training boxes whose best anchor has IoU >= 0.5) on the 186-patient synthetic cohort, CE-T1WI:
# at 128 px seen at 256 px (input_scale 2) 92.3% (2 x stride, 1 scale/octave: ...; 3 x: ...;
# 1.5 x: 90.6%; 2.5 x: 87.9%; 2 scales/octave: 91.7%); at 512 px 97.4% (boxes x 4). The old
# rule, MMDetection's sizes scaled to the slice (5..82 px at 128 px, 1.3 x the stride), reached
# 45.7%: the best anchor of a box is only as good as the grid of its level is fine, so each size
# must sit on a level whose stride is well below it. No anchor on the 4 px grid of P2 reaches a
# box under ~4 px, whatever its size; input_scale 2 reaches them for 128 px slices at 1.85x the
# time per slice, which the demo does not pay (at scale 1 the best set found covered 76.5%, at 1.5
# 84.1%). anchor_density 2 (each anchor tiled 2 x 2 per cell,
# FaceBoxes' densification) with anchors 4..64 px gives input_scale 2's grid at scale 1: 92.9% on the
# same boxes, but it lowered AP@0.5 at the demo's budget (at the demo's point CE-T1WI GTV 0.856 ->
# 0.844, GTVln 0.331 -> 0.267, and below it on held-out training patients too; docs/detection.md),
# so no preset uses it.
ANCHOR_STRIDE_RATIO = 2.0


def anchor_sizes_for(image_size: int, config: DetectionConfig) -> tuple[float, ...]:
    """The base anchor size (px at the network's input) of each FPN level P2..P6.

    ``config.anchor_sizes`` when given, else :data:`ANCHOR_STRIDE_RATIO` x the level's stride
    (the same at every input size, as MMDetection's; ``image_size`` is kept for callers that
    pass it). :func:`make_anchor_generator` adds ``anchor_scales_per_octave`` sizes per level.
    """
    if config.anchor_sizes:
        if len(config.anchor_sizes) != len(FPN_STRIDES):
            raise ConfigError(f"detection.anchor_sizes: expected {len(FPN_STRIDES)} sizes (P2..P6), "
                              f"got {list(config.anchor_sizes)}")
        return tuple(float(s) for s in config.anchor_sizes)
    return tuple(ANCHOR_STRIDE_RATIO * s for s in FPN_STRIDES)


def make_anchor_generator(config: DetectionConfig, net_size: int) -> AnchorGenerator:
    """torchvision's AnchorGenerator for a network input of ``net_size`` px: per level, the base
    size x 2^(i / n) for i < n = ``anchor_scales_per_octave`` (RetinaNet's octave scales), each at
    every ratio of ``anchor_ratios``."""
    n = int(config.anchor_scales_per_octave)
    if n < 1:
        raise ConfigError(f"detection.anchor_scales_per_octave: expected an integer >= 1, got {n}")
    sizes = tuple(tuple(round(base * 2 ** (i / n), 2) for i in range(n))
                  for base in anchor_sizes_for(net_size, config))
    density = int(config.anchor_density)
    if density < 1:
        raise ConfigError(f"detection.anchor_density: expected an integer >= 1, got {config.anchor_density}")
    return Fp32AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(config.anchor_ratios),) * len(sizes),
                               density=density)


def roi_canonical_scale(config: DetectionConfig, net_size: int) -> float:
    """The box side (px at the network's input) that the RoI heads pool from P4 (FPN eq. 1; half
    of it from P3, a quarter or less from P2).

    ``config.roi_canonical_scale`` when > 0 (default 224, torchvision's and MMDetection's), else
    224 scaled from MMDetection's 800 px input to ``net_size``. The default is kept in the
    network's pixels, like the anchors: what sets the right level is how many feature cells a box
    spans, not its share of the slice. Scaled, half the GTVs of a 128 px slice seen at 256 px
    (36-66 px there) would pool from P3, spanning 4-8 cells of its 8 px grid for the 7 x 7 RoIAlign
    instead of 9-16 cells of P2's; MMDetection's own set-up pooled those tumours (70-130 px at its
    800 px) from P2 as well.
    """
    if config.roi_canonical_scale > 0:
        return float(config.roi_canonical_scale)
    return 224.0 * net_size / MMDET_SHORT_SIDE


def resolved_norm(config: DetectionConfig) -> str:
    """'frozen' (statistics of the loaded weights, as MMDetection's norm_eval) or 'batch'."""
    if config.norm == "auto":
        return "frozen" if config.weights else "batch"
    if config.norm not in ("batch", "frozen"):
        raise ConfigError(f"detection.norm: expected auto, batch or frozen, got {config.norm!r}")
    return config.norm


def resolved_trainable_layers(config: DetectionConfig) -> int:
    if config.trainable_layers >= 0:
        return min(5, config.trainable_layers)
    # MMDetection freezes the stem and the first stage of a pretrained ResNet (frozen_stages=1);
    # a backbone trained from scratch must learn every layer.
    return 3 if config.weights else 5


class GreyConv2d(nn.Conv2d):
    """A ResNet's RGB conv1 that also takes a grey (B, 1, H, W) input as three identical channels.

    conv(x, x, x; W) = conv(x; W summed over its input channels), so the grey slice is convolved once
    with the summed kernel instead of three times (a third of conv1's cost), with the same output
    and the same gradients as the three-channel input. The parameter keeps its (C, 3, k, k) shape,
    so ImageNet files, our checkpoints and stage 2 (which feeds three channels) load and run as before.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 3:
            return self._conv_forward(x, self.weight.sum(dim=1, keepdim=True), self.bias)
        return super().forward(x)


def _grey_conv1(conv: nn.Conv2d) -> GreyConv2d:
    grey = GreyConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, bias=conv.bias is not None)
    grey.load_state_dict(conv.state_dict())
    return grey


# Boxes in float32 under autocast. torchvision builds the anchors in the feature maps' dtype and
# decodes boxes in the dtype of the regression outputs (BoxCoder casts the anchors / proposals to
# it): under bfloat16 autocast, anchors of a 512 px input were off by up to 2 px and a 21 px box
# decoded with IoU 0.83 against its float32 decode, distorting both the training targets and the
# reported AP. The backbone, FPN and the heads' hidden layers stay in the autocast type; only the
# anchors and the last (cheap) layers that produce box deltas and scores run in float32, so every
# box is decoded in float32. The modules keep torchvision's parameter names (checkpoints unchanged).

def _fp32(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


class Fp32AnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with the anchors always in float32 (not the features' dtype).

    ``density`` d > 1 tiles every anchor d x d times in each cell of its level, at offsets of
    stride / d (FaceBoxes' anchor densification, Zhang et al. 2017): the anchor centres then form a
    grid d times finer than the feature map's, as an input d times larger would give, while the
    backbone, FPN and RoI heads keep their cost; only the RPN's 1 x 1 output layers grow (d^2 x the
    anchors per location). Per location the anchors are ordered offset-major, base anchor minor.
    """

    def __init__(self, sizes, aspect_ratios, density: int = 1) -> None:
        super().__init__(sizes=sizes, aspect_ratios=aspect_ratios)
        self.density = int(density)

    def num_anchors_per_location(self) -> list[int]:
        return [n * self.density ** 2 for n in super().num_anchors_per_location()]

    def grid_anchors(self, grid_sizes, strides) -> list[torch.Tensor]:
        per_level = super().grid_anchors(grid_sizes, strides)
        d = self.density
        if d == 1:
            return per_level
        out = []
        for anchors, base, stride in zip(per_level, self.cell_anchors, strides):
            sy, sx = float(stride[0]), float(stride[1])
            # offsets (d^2, 4): (dx, dy, dx, dy) for dy, dx in {0, 1, .., d-1} x stride / d
            k = torch.arange(d, dtype=anchors.dtype, device=anchors.device)
            oy, ox = torch.meshgrid(k * (sy / d), k * (sx / d), indexing="ij")
            offsets = torch.stack([ox.reshape(-1), oy.reshape(-1)] * 2, dim=1)
            a = anchors.view(-1, 1, len(base), 4) + offsets.view(1, -1, 1, 4)
            out.append(a.reshape(-1, 4))
        return out

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        image_size = image_list.tensors.shape[-2:]
        device = feature_maps[0].device
        strides = [[torch.empty((), dtype=torch.int64, device=device).fill_(image_size[0] // g[0]),
                    torch.empty((), dtype=torch.int64, device=device).fill_(image_size[1] // g[1])]
                   for g in grid_sizes]
        self.set_cell_anchors(torch.float32, device)
        per_level = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(per_level) for _ in range(len(image_list.image_sizes))]


class Fp32RPNHead(RPNHead):
    """RPNHead whose 3x3 conv runs in the autocast type and whose two 1x1 output convolutions
    (objectness, box deltas) run in float32, returning float32."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, bbox_reg = [], []
        for feature in x:
            t = self.conv(feature)
            with _fp32(t.device.type):
                t = t.float()
                logits.append(self.cls_logits(t))
                bbox_reg.append(self.bbox_pred(t))
        return logits, bbox_reg


class Fp32BoxPredictor(FastRCNNPredictor):
    """FastRCNNPredictor (class scores, per-class box deltas) computed and returned in float32."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with _fp32(x.device.type):
            return super().forward(x.float())


class GrayscaleRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's input transform for single-channel slices at their own size.

    A (1, H, W) slice is normalised once and stays one channel (conv1 is a :class:`GreyConv2d`; the
    three channels' mean and std are one value, so this equals normalising three identical channels),
    and a slice that already has the model's size is not passed through ``interpolate`` (which at
    scale 1 only costs time).
    """

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] == 1 and len(set(self.image_mean)) == 1 and len(set(self.image_std)) == 1:
            return (image - self.image_mean[0]) / self.image_std[0]
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return super().normalize(image)

    def resize(self, image, target=None):
        h, w = image.shape[-2:]
        size = self.min_size[-1]
        if max(h, w) == self.max_size and min(h, w) <= size:
            return image, target
        return super().resize(image, target)


def build_model(config: DetectionConfig, num_classes: int = 3, image_size: int = 512, *,
                with_weights: bool = True) -> MaskRCNN:
    """Mask R-CNN with a ResNet-FPN backbone; never downloads anything.

    num_classes counts the background (3 = background, GTV, GTVln). Images are expected square at
    ``image_size`` px; the network sees them at ``image_size x config.input_scale`` (default 1: no
    rescaling), and boxes and masks come back in the image's pixels. The model takes a
    list of (1, H, W) or (3, H, W) float tensors in 0..1. ``config.weights``, when set and
    ``with_weights`` is true, is loaded from a local file (see :func:`load_weights`); ``imagenet``
    is torchvision's ImageNet file of the backbone from the local torch cache (``weights.py``).
    """
    if config.backbone not in BACKBONES:
        raise ConfigError(f"detection.backbone: expected one of {sorted(BACKBONES)}, got {config.backbone!r}")
    norm = resolved_norm(config)
    norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
    body = BACKBONES[config.backbone](weights=None, norm_layer=norm_layer)
    body.conv1 = _grey_conv1(body.conv1)
    trainable = resolved_trainable_layers(config)
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        layers_to_train.append("bn1")
    for name, p in body.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            p.requires_grad_(False)
    c2 = body.inplanes // 8  # 64 for resnet18/34, 256 for resnet50
    channels = config.fpn_channels
    backbone = BackboneWithFPN(body, {f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
                               [c2 * 2 ** i for i in range(4)], channels, extra_blocks=LastLevelMaxPool())

    if config.input_scale <= 0:
        raise ConfigError(f"detection.input_scale: expected a positive factor, got {config.input_scale}")
    if int(config.box_head_dim) < 1:
        raise ConfigError(f"detection.box_head_dim: expected a positive width, got {config.box_head_dim}")
    net_size = int(round(image_size * config.input_scale))  # the side the network sees
    anchors = make_anchor_generator(config, net_size)
    canonical = roi_canonical_scale(config, net_size)
    extra: dict[str, Any] = {
        "rpn_head": Fp32RPNHead(channels, anchors.num_anchors_per_location()[0]),
        "box_predictor": Fp32BoxPredictor(int(config.box_head_dim), num_classes),
        # torchvision's poolers (7 px boxes, 14 px masks, P2..P5) with the level mapper's canonical
        # box side of roi_canonical_scale (224 px by default, as torchvision's)
        # (roi_sampling_ratio points per bin side: torchvision's 2; 1 in the demo, whose bins are under
        # a feature pixel)
        # (SparseMultiScaleRoIAlign: the same pooling as one sparse product on CPUs, roi_align.py)
        "box_roi_pool": SparseMultiScaleRoIAlign(["0", "1", "2", "3"], 7, config.roi_sampling_ratio,
                                                 canonical_scale=canonical),
        "mask_roi_pool": SparseMultiScaleRoIAlign(["0", "1", "2", "3"], 14, config.roi_sampling_ratio,
                                                  canonical_scale=canonical),
        # torchvision's defaults at 256 channels; narrower in tests and the demo
        "mask_head": MaskRCNNHeads(channels, (channels,) * 4, 1),
        "mask_predictor": MaskRCNNPredictor(channels, channels, num_classes),
    }
    # TwoMLPHead (RoI 7 x 7 x channels -> fc6 -> fc7), box_head_dim wide (1024 in torchvision and
    # MMDetection; at 1024 fc6 is the largest single cost of a CPU training step). Made last, where
    # torchvision's MaskRCNN makes it, so that every module is initialised as before this option.
    extra["box_head"] = TwoMLPHead(channels * 7 * 7, int(config.box_head_dim))
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=net_size, max_size=net_size,
        image_mean=[config.pixel_mean] * 3, image_std=[config.pixel_std] * 3,
        rpn_anchor_generator=anchors,
        # MMDetection v2 mask_rcnn_r50_fpn: 2000 boxes per level before and 1000 after the RPN's
        # NMS in training, 1000 / 1000 at test time (the defaults; detection.rpn_proposals_*)
        rpn_pre_nms_top_n_train=2 * config.rpn_proposals_train, rpn_post_nms_top_n_train=config.rpn_proposals_train,
        rpn_pre_nms_top_n_test=config.rpn_proposals_test, rpn_post_nms_top_n_test=config.rpn_proposals_test,
        rpn_nms_thresh=config.rpn_nms,
        box_nms_thresh=config.box_nms,
        box_score_thresh=config.score_threshold,
        box_detections_per_img=config.detections_per_image,
        box_batch_size_per_image=config.box_batch_size,
        **extra,
    )
    # Mask logits start near 0 (Detectron2's init of this layer): torchvision's Kaiming fan-out
    # init over only num_classes outputs gives logits of std ~10 and a first mask loss of ~8, which
    # a backbone trained from scratch does not survive (the loss diverged within 15 iterations).
    logits = model.roi_heads.mask_predictor.mask_fcn_logits
    nn.init.normal_(logits.weight, std=0.001)
    nn.init.zeros_(logits.bias)
    model.transform = GrayscaleRCNNTransform(net_size, net_size, [config.pixel_mean] * 3,
                                             [config.pixel_std] * 3)
    if config.weights and with_weights:
        from npc_msom.detection.weights import resolve_weights  # noqa: PLC0415
        load_weights(model, resolve_weights(config.weights, config.backbone))
    return model


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError("no state dict of tensors found", file=path,
                         expected="a state dict (or a dict with a 'model' / 'state_dict' entry)")
    return {k[len("module."):] if k.startswith("module.") else k: v
            for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_weights(model: MaskRCNN, path: str | Path) -> dict[str, int]:
    """Loads a local weights file into ``model``; returns counts of loaded / skipped tensors.

    Accepted layouts (keys may carry a ``module.`` prefix; a dict with ``model`` or ``state_dict``
    is unwrapped): a full model of this class (``backbone.body.*``, e.g. our own checkpoint), a
    backbone-with-FPN (``body.*``, ``fpn.*``), or a bare ResNet (``conv1.*``, ``layer1.*``, ...,
    as torchvision's ImageNet files; also MMDetection's ``backbone.conv1.*`` naming). Tensors whose
    shape differs (e.g. a head for another number of classes) are skipped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("weights file does not exist", file=path, expected="a local .pt / .pth file")
    sd = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    keys = list(sd)
    if any(k.startswith("backbone.body.") for k in keys):
        target, layout = model, "full model"
    elif any(k.startswith("body.") for k in keys):
        target, layout = model.backbone, "backbone + FPN"
    elif any(k.startswith(("layer1.", "backbone.layer1.")) for k in keys):
        target, layout = model.backbone.body, "ResNet"
        sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    else:
        raise InputError("unrecognised weights layout", file=path,
                         expected="keys starting with backbone.body., body. or layer1. (ResNet)")
    own = target.state_dict()
    usable = OrderedDict((k, v) for k, v in sd.items() if k in own and own[k].shape == v.shape)
    mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in sd if k not in own]
    # only the class-specific predictors may differ (another number of classes); any other
    # mismatch means another backbone depth or width, which must not load half-way
    wrong = [k for k in mismatched if not k.startswith(("roi_heads.box_predictor.", "roi_heads.mask_predictor."))]
    if not usable or wrong:
        example = f" (e.g. {wrong[0]}: {tuple(sd[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})" if wrong else ""
        raise InputError(f"the {layout} weights do not fit the model{example}", file=path,
                         expected="weights of the configured backbone (detection.backbone)")
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    target.load_state_dict(usable, strict=False)
    if mismatched:
        log.warning("weights %s: %d tensors skipped for a different shape (e.g. %s)", path,
                    len(mismatched), mismatched[0])
    if unexpected:
        log.warning("weights %s: %d tensors not in the model (e.g. %s)", path, len(unexpected), unexpected[0])
    log.info("loaded %d tensors (%s layout) from %s; %d of the target's left as initialised",
             len(usable), layout, path, len(missing))
    return {"loaded": len(usable), "mismatched": len(mismatched), "unexpected": len(unexpected),
            "missing": len(missing)}


def model_meta(config: DetectionConfig, class_names: tuple[str, ...], image_size: int) -> dict:
    """What :func:`load_detector` needs to rebuild the model exactly (stored in checkpoints)."""
    return {"backbone": config.backbone, "norm": resolved_norm(config),
            "trainable_layers": resolved_trainable_layers(config), "fpn_channels": config.fpn_channels,
            "class_names": list(class_names), "image_size": int(image_size),
            "anchor_sizes": list(anchor_sizes_for(int(round(image_size * config.input_scale)), config))}


def load_detector(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuilds a trained detector from a checkpoint of :func:`train_detector`.

    Returns ``(model, meta)``: the model in eval mode on ``device``; ``meta`` holds class_names,
    image_size, backbone, norm, epoch, the resolved config (plain dict) and the checkpoint's metrics.
    """
    from npc_msom.config import from_dict  # noqa: PLC0415 - keeps the import graph flat
    path = Path(path)
    if not path.is_file():
        raise InputError("detector checkpoint does not exist", file=path,
                         expected="checkpoint_last.pt of train_detector")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise InputError("not a detector checkpoint", file=path, expected="a dict with 'model' and 'meta'")
    meta = dict(ckpt["meta"])
    det = dict(ckpt["config"]["detection"])
    # checkpoints from before these settings existed: one anchor size per level, RoI levels at 224
    det.setdefault("anchor_scales_per_octave", 1)
    det.setdefault("roi_canonical_scale", 224.0)
    # rebuild with the norm / frozen layers resolved at training time, without the initial weights
    det.update(weights=None, norm=meta["norm"], trainable_layers=meta["trainable_layers"],
               fpn_channels=meta["fpn_channels"], anchor_sizes=meta["anchor_sizes"])
    cfg = from_dict(DetectionConfig, det, "checkpoint.config.detection")
    model = build_model(cfg, num_classes=len(meta["class_names"]) + 1, image_size=meta["image_size"])
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    meta.update(epoch=ckpt.get("epoch"), config=ckpt["config"], metrics=ckpt.get("metrics"))
    return model, meta


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Mixed-precision type on CUDA: bfloat16 where the GPU has it (fp32's range, so activations
    of a detector trained from scratch cannot overflow as they can in float16), else float16 with
    loss scaling (MMDetection's fp16). None = full precision (CPU, or amp off)."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def amp_context(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for ``dtype`` on ``device``, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
