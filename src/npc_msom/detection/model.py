"""Mask R-CNN with a ResNet-FPN backbone (torchvision), set up as the study's MMDetection model.

The study used MMDetection's Mask R-CNN R50-FPN with its defaults. torchvision's ``MaskRCNN`` has
the same architecture (C2..C5 -> P2..P6 with 256 channels, RPN with 3 anchors per location, RoIAlign
7x7 box head with two 1024-wide FC layers, 4-conv 14x14 mask head) and the same sampling and
matching rules (RPN IoU 0.7 / 0.3, 256 anchors, half positive; head IoU 0.5, 512 RoIs, a quarter
positive); the differences that remain are listed in the package docstring.
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
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from npc_msom.config import DetectionConfig
from npc_msom.errors import ConfigError, InputError

log = logging.getLogger(__name__)

# The one place a user picks a backbone by name.
BACKBONES = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}

# FPN levels P2..P6 and their strides in pixels.
FPN_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)
# MMDetection's anchors: octave_base_scale 8 x strides = 32..512 px, for its default input whose
# short side is resized to 800 px.
MMDET_ANCHOR_SIZES: tuple[int, ...] = (32, 64, 128, 256, 512)
MMDET_SHORT_SIDE = 800


def anchor_sizes_for(image_size: int, config: DetectionConfig) -> tuple[float, ...]:
    """One anchor size (px) per FPN level P2..P6.

    MMDetection upsamples the study's 512 px slices to 800 px before its 32..512 px anchors see
    them; we keep the images at their size (2.4x less compute) and scale the anchors instead, so
    each anchor covers the same fraction of the slice. Sizes never go below the level's stride.
    """
    if config.anchor_sizes:
        if len(config.anchor_sizes) != len(FPN_STRIDES):
            raise ConfigError(f"detection.anchor_sizes: expected {len(FPN_STRIDES)} sizes (P2..P6), "
                              f"got {list(config.anchor_sizes)}")
        return tuple(float(s) for s in config.anchor_sizes)
    scale = image_size / MMDET_SHORT_SIDE
    return tuple(float(max(stride, round(size * scale, 1)))
                 for size, stride in zip(MMDET_ANCHOR_SIZES, FPN_STRIDES))


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
    net_size = int(round(image_size * config.input_scale))  # the side the network sees
    sizes = anchor_sizes_for(net_size, config)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in sizes),
                              aspect_ratios=(tuple(config.anchor_ratios),) * len(sizes))
    extra: dict[str, Any] = {}
    if channels != 256:
        extra["mask_head"] = MaskRCNNHeads(channels, (channels,) * 4, 1)
        extra["mask_predictor"] = MaskRCNNPredictor(channels, channels, num_classes)
        extra["box_predictor"] = FastRCNNPredictor(1024, num_classes)  # TwoMLPHead's 1024 features
    model = MaskRCNN(
        backbone,
        num_classes=None if channels != 256 else num_classes,
        min_size=net_size, max_size=net_size,
        image_mean=[config.pixel_mean] * 3, image_std=[config.pixel_std] * 3,
        rpn_anchor_generator=anchors,
        # MMDetection v2 mask_rcnn_r50_fpn: 2000 boxes per level before and 1000 after the RPN's
        # NMS in training, 1000 / 1000 at test time.
        rpn_pre_nms_top_n_train=2 * config.rpn_proposals_train, rpn_post_nms_top_n_train=config.rpn_proposals_train,
        rpn_pre_nms_top_n_test=config.rpn_proposals_test, rpn_post_nms_top_n_test=config.rpn_proposals_test,
        rpn_nms_thresh=config.rpn_nms,
        box_nms_thresh=config.box_nms,
        box_score_thresh=config.score_threshold,
        box_detections_per_img=config.detections_per_image,
        box_batch_size_per_image=config.box_batch_size,
        **extra,
    )
    if config.roi_sampling_ratio != 2:
        model.roi_heads.box_roi_pool.sampling_ratio = config.roi_sampling_ratio
        model.roi_heads.mask_roi_pool.sampling_ratio = config.roi_sampling_ratio
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
