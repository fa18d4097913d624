"""The model factory: architecture settings, grey input, anchors, local weights files."""
import pytest
import torch
from torchvision.models import resnet18
from torchvision.ops.misc import FrozenBatchNorm2d

from npc_msom.config import DetectionConfig
from npc_msom.detection.model import anchor_sizes_for, build_model, load_weights
from npc_msom.errors import ConfigError, InputError


def test_paper_settings_of_the_model():
    cfg = DetectionConfig(backbone="resnet50")
    m = build_model(cfg, num_classes=3, image_size=512)
    assert m.rpn.nms_thresh == 0.7
    assert m.roi_heads.nms_thresh == 0.5
    assert m.roi_heads.box_predictor.cls_score.out_features == 3
    assert m.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    assert m.backbone.out_channels == 256
    assert m.backbone.body.layer4[0].conv3.out_channels == 2048  # a ResNet-50 (bottleneck) body
    assert m.transform.min_size == (512,) and m.transform.max_size == 512
    gen = m.rpn.anchor_generator
    assert [len(s) for s in gen.sizes] == [3] * 5 and all(len(r) == 3 for r in gen.aspect_ratios)
    assert m.rpn.head.cls_logits.out_channels == 9  # 3 sizes x 3 ratios per location and level
    assert m.roi_heads.box_roi_pool.canonical_scale == 224 and m.roi_heads.mask_roi_pool.canonical_scale == 224
    # no weights: BatchNorm trained, every stage trainable
    assert isinstance(m.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in m.backbone.body.parameters())


def test_box_head_width_is_a_setting_and_the_default_is_torchvisions():
    from torchvision.models.detection.faster_rcnn import TwoMLPHead
    default = build_model(DetectionConfig(backbone="resnet18", fpn_channels=32), image_size=64)
    head = default.roi_heads.box_head
    assert isinstance(head, TwoMLPHead)
    assert (head.fc6.in_features, head.fc6.out_features, head.fc7.out_features) == (32 * 7 * 7, 1024, 1024)
    narrow = build_model(DetectionConfig(backbone="resnet18", fpn_channels=32, box_head_dim=64), image_size=64)
    assert narrow.roi_heads.box_head.fc6.out_features == narrow.roi_heads.box_head.fc7.out_features == 64
    assert narrow.roi_heads.box_predictor.cls_score.in_features == 64
    assert narrow.roi_heads.box_predictor.bbox_pred.in_features == 64
    # it trains: one step on a slice with a box gives finite losses for every head
    narrow.train()
    image = torch.rand(1, 64, 64)
    target = {"boxes": torch.tensor([[10.0, 12.0, 30.0, 34.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)}
    target["masks"][0, 12:34, 10:30] = 1
    losses = narrow([image], [target])
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ConfigError, match="box_head_dim"):
        build_model(DetectionConfig(backbone="resnet18", fpn_channels=32, box_head_dim=0), image_size=64)


def test_anchor_sizes_are_twice_the_stride_at_three_octave_scales():
    from npc_msom.detection.model import make_anchor_generator, roi_canonical_scale
    cfg = DetectionConfig()
    # in the network's pixels, whatever the input size (as MMDetection's 8 x stride)
    assert anchor_sizes_for(512, cfg) == anchor_sizes_for(128, cfg) == (8, 16, 32, 64, 128)
    gen = make_anchor_generator(cfg, 256)
    assert gen.sizes[0] == pytest.approx((8, 10.08, 12.7), abs=0.01)
    assert gen.sizes[4] == pytest.approx((128, 161.27, 203.19), abs=0.01)
    assert len(make_anchor_generator(DetectionConfig(anchor_scales_per_octave=1), 256).sizes[0]) == 1
    assert anchor_sizes_for(128, DetectionConfig(anchor_sizes=(4, 8, 16, 32, 64))) == (4, 8, 16, 32, 64)
    with pytest.raises(ConfigError):
        anchor_sizes_for(128, DetectionConfig(anchor_sizes=(8, 16)))
    with pytest.raises(ConfigError):
        make_anchor_generator(DetectionConfig(anchor_scales_per_octave=0), 128)
    assert roi_canonical_scale(cfg, 128) == 224
    assert roi_canonical_scale(DetectionConfig(roi_canonical_scale=0), 400) == 112  # scaled from 800 px


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet18"):
        build_model(DetectionConfig(backbone="vgg16"))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34"])
def test_grey_slice_once_equals_three_identical_channels(backbone):
    """conv1 convolves the grey slice once with its RGB kernel summed (GreyConv2d): the same
    features and detections as the slice fed as three identical channels, at a third of conv1's cost."""
    torch.manual_seed(0)
    m = build_model(DetectionConfig(backbone=backbone, fpn_channels=32, score_threshold=0.0), image_size=64).eval()
    seen = []
    m.backbone.body.conv1.register_forward_hook(lambda mod, i, o: seen.append(i[0].shape[1]))
    grey = torch.rand(1, 64, 64)
    with torch.no_grad():
        a = m([grey])[0]
        b = m([grey.expand(3, -1, -1).clone()])[0]
        images, _ = m.transform([grey])
        f1 = m.backbone(images.tensors)
        f3 = m.backbone(m.transform([grey.expand(3, -1, -1)])[0].tensors)
    assert seen[:2] == [1, 3]  # conv1 saw the grey slice once, then the three-channel version
    assert images.tensors.shape == (1, 1, 64, 64)  # not rescaled, one channel
    assert torch.allclose(images.tensors[0, 0], (grey[0] - 0.15) / 0.2)
    for k in f1:  # equal up to float rounding (sums in another order), relative to the map's scale
        assert (f1[k] - f3[k]).abs().max() <= 1e-5 * f3[k].abs().max(), k
    assert len(a["scores"]) == len(b["scores"]) > 0
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.allclose(a["scores"], b["scores"], atol=1e-5)
    assert torch.allclose(a["masks"], b["masks"], atol=1e-4)
    assert a["masks"].shape[1:] == (1, 64, 64)


def test_backbone_only_resnet_weights(tmp_path):
    torch.manual_seed(1)
    resnet = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)  # torchvision's ImageNet layout, fc included
    m = build_model(DetectionConfig(backbone="resnet18", weights=str(path), fpn_channels=32), image_size=64)
    assert torch.equal(m.backbone.body.layer3[1].conv2.weight, resnet.layer3[1].conv2.weight)
    assert torch.equal(m.backbone.body.bn1.running_var, resnet.bn1.running_var)
    # as MMDetection with pretrained weights: frozen BN statistics, stem and stage 1 frozen
    assert isinstance(m.backbone.body.bn1, FrozenBatchNorm2d)
    assert not m.backbone.body.conv1.weight.requires_grad
    assert not m.backbone.body.layer1[0].conv1.weight.requires_grad
    assert m.backbone.body.layer2[0].conv1.weight.requires_grad
    # MMDetection's naming of the same backbone (backbone.layer1...) loads the same way
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in resnet.state_dict().items()}}, path)
    m2 = build_model(DetectionConfig(backbone="resnet18", weights=str(path), fpn_channels=32), image_size=64)
    assert torch.equal(m2.backbone.body.layer4[0].conv1.weight, resnet.layer4[0].conv1.weight)


def test_full_model_weights_and_mismatched_heads(tmp_path):
    torch.manual_seed(2)
    cfg = DetectionConfig(backbone="resnet18", fpn_channels=32)
    src = build_model(cfg, num_classes=3, image_size=64)
    path = tmp_path / "full.pt"
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    torch.manual_seed(3)
    dst = build_model(DetectionConfig(backbone="resnet18", fpn_channels=32, norm="batch"), num_classes=4,
                      image_size=64)
    counts = load_weights(dst, path)
    assert counts["mismatched"] > 0  # the 4-class heads keep their own initialisation
    assert torch.equal(dst.backbone.fpn.inner_blocks[0][0].weight, src.backbone.fpn.inner_blocks[0][0].weight)
    assert torch.equal(dst.roi_heads.box_head.fc6.weight, src.roi_heads.box_head.fc6.weight)


def test_bad_weights_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        build_model(DetectionConfig(backbone="resnet18", weights=str(tmp_path / "missing.pt")))
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(InputError, match="unrecognised"):
        build_model(DetectionConfig(backbone="resnet18", weights=str(path)))
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(InputError, match="do not fit"):
        build_model(DetectionConfig(backbone="resnet50", weights=str(path)))


def test_input_scale_resizes_inside_the_model_only():
    """As MMDetection's 512 -> 800 px resize: the network sees a larger slice, the outputs come back
    in the slice's own pixels."""
    torch.manual_seed(0)
    cfg = DetectionConfig(backbone="resnet18", fpn_channels=32, score_threshold=0.0, input_scale=2.0)
    m = build_model(cfg, image_size=64).eval()
    grey = torch.rand(1, 64, 64)
    with torch.no_grad():
        images, _ = m.transform([grey])
        out = m([grey])[0]
    assert images.tensors.shape[-2:] == (128, 128)
    assert out["masks"].shape[-2:] == (64, 64) and float(out["boxes"].max()) <= 64
    assert [s[0] for s in m.rpn.anchor_generator.sizes] == list(anchor_sizes_for(128, cfg))
    with pytest.raises(ConfigError):
        build_model(DetectionConfig(backbone="resnet18", input_scale=0.0))


def _rpn_decode(model, images, features):
    """Anchors, box deltas and the RPN's decoded proposals (N, 4) for the given feature maps."""
    feats = list(features.values())
    anchors = model.rpn.anchor_generator(images, feats)
    objectness, deltas = model.rpn.head(feats)
    from torchvision.models.detection.rpn import concat_box_prediction_layers
    _, flat = concat_box_prediction_layers(objectness, deltas)
    return anchors[0], flat, model.rpn.box_coder.decode(flat, anchors).view(-1, 4)


def test_anchors_and_decoded_boxes_are_float32_under_autocast():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList
    torch.manual_seed(0)
    cfg = DetectionConfig(backbone="resnet18", fpn_channels=32)
    m = build_model(cfg, image_size=256).eval()
    images = ImageList(torch.randn(1, 3, 256, 256), [(256, 256)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = m.backbone(images.tensors)
        assert feats["0"].dtype == torch.bfloat16  # the backbone and FPN do run in bfloat16
        anchors, deltas, boxes = _rpn_decode(m, images, feats)
        proposals = boxes[:50]
        x = m.roi_heads.box_head(m.roi_heads.box_roi_pool(feats, [proposals], images.image_sizes))
        _, box_deltas = m.roi_heads.box_predictor(x)
        head_boxes = m.roi_heads.box_coder.decode(box_deltas, [proposals])
        # torchvision's own generator builds the anchors in the features' dtype
        stock = AnchorGenerator(m.rpn.anchor_generator.sizes, m.rpn.anchor_generator.aspect_ratios)
        stock_anchors = stock(images, list(feats.values()))[0]
    assert anchors.dtype == deltas.dtype == boxes.dtype == box_deltas.dtype == head_boxes.dtype == torch.float32
    with torch.no_grad():  # the same inputs, decoded in float32 without autocast
        ref_anchors = m.rpn.anchor_generator(images, [f.float() for f in feats.values()])[0]
        ref_boxes = m.rpn.box_coder.decode(deltas, [ref_anchors]).view(-1, 4)
        ref_head = m.roi_heads.box_coder.decode(box_deltas, [proposals])
    assert torch.equal(anchors, ref_anchors)
    assert (boxes - ref_boxes).abs().max() < 0.01
    assert (head_boxes - ref_head).abs().max() < 0.01
    # and the test can fail: bfloat16 anchors are off by more than that at 256 px
    assert (stock_anchors.float() - ref_anchors).abs().max() > 0.01
