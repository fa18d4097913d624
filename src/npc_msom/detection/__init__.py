"""Stage 1: tumour detection (GTV, GTVln) with Mask R-CNN on torchvision, after the study's MMDetection model.

Public API::

    build_model(config.detection, num_classes=3, image_size=512) -> MaskRCNN
    load_detector(checkpoint_path, device) -> (model, meta)
    train_detector(config, images_dir=, coco_train=, coco_val=, out_dir=, resume=False, device=None)
        -> DetectorResult
    train_detector_for_run(config, run_dir, sequence, resume=False) -> DetectorResult
    evaluate_detector(model, read_coco(path), device) -> (DetectionMetrics, predictions)
    detect(model, slices, device, score_threshold) -> [{boxes_xyxy, labels, scores, masks}]
    select_tumour_slices(detections, z_mm) -> slice indices
    figure2(run_dir, device=...) -> PNG;  table2_for_run(run_dir) -> CSV
    anchor_coverage(coco_json_or_boxes, config.detection, image_size) -> dict

Where we differ from MMDetection's Mask R-CNN R50-FPN 2x (and why). The architecture, sampling and
matching rules are the same; the anchors are not, so this is not the study's detector re-run:

- Input: slices stay at their preprocessed size times ``input_scale`` (1 by default; 2 for the
  demo's 128 px slices) instead of being resized to a short side of 800 px (2.4x the compute at
  512 px; ``input_scale`` 1.5625 reproduces it).
- Anchors: 2 x the stride of each level P2..P6 (8..128 px) at 3 scales per octave and 3 ratios
  (9 per location), where MMDetection has one size of 8 x the stride (32..512 px) and 3 ratios.
  Ours were chosen by anchor coverage (:func:`anchor_coverage`) on a 186-patient synthetic cohort:
  MMDetection's sizes scaled to our slices gave the best anchor of only 46% of the training boxes
  an IoU >= 0.5 at 128 px, ours give >= 90% (128 px seen at 256 px; 97% at 512 px). The RoI level
  mapper is torchvision's (canonical 224 px at P4, in the network's pixels, as MMDetection's
  finest_scale 56), so boxes under 112 px pool from P2.
- Boxes in float32: under autocast the anchors, the box-delta and score layers and box decoding
  run in float32 (torchvision would use the features' bfloat16 / float16, up to 2 px off at 512 px).
- Backbone weights: none by default (nothing is downloaded), so the backbone is trained from
  scratch with BatchNorm in training mode and every stage trainable. ``weights: imagenet`` (the
  paper preset, as MMDetection's default) reads torchvision's ImageNet file from the local torch
  cache, hash-checked (``detection.weights``; ``npc-msom weights fetch`` gets it); with it or any
  local weights file the MMDetection set-up applies: frozen BatchNorm statistics and the stem plus
  first stage frozen.
- Grey input: conv1 convolves the one grey channel with its RGB kernel summed, where MMDetection
  feeds three identical channels: the same output at a third of conv1's cost.
- Mask logits layer initialised N(0, 0.001) (Detectron2's choice) instead of Kaiming: with a
  from-scratch backbone the Kaiming init gave a first mask loss of ~8 and training diverged.
- Normalisation: one mean / std for the three identical grey channels, fitted to MR slices, not
  ImageNet's RGB statistics.
- Mixed precision: bfloat16 autocast where the GPU supports it (no loss scaling needed); float16
  with a GradScaler otherwise (MMDetection's fp16 mode).
- Losses: torchvision's smooth-L1 (beta 1/9) for box regression in the RPN and the head, where
  MMDetection's config uses L1; RoIAlign with sampling_ratio 2 (MMDetection: 0, adaptive).
- Learning rate: 0.02 for MMDetection's batch 16, linearly scaled to 0.005 for the study's batch 4.
"""
from npc_msom.detection.anchors import anchor_coverage
from npc_msom.detection.data import CocoSlices, SliceDataset, read_coco
from npc_msom.detection.figures import detections_figure, draw_panels, figure2
from npc_msom.detection.infer import detect, evaluate_detector, select_tumour_slices, slice_scores
from npc_msom.detection.metrics import DetectionMetrics, coco_metrics, write_table2
from npc_msom.detection.model import anchor_sizes_for, build_model, load_detector, load_weights
from npc_msom.detection.train import (DetectorResult, table2_for_run, train_detector, train_detector_for_run,
                                      train_one_epoch)

__all__ = [
    "anchor_coverage", "CocoSlices", "SliceDataset", "read_coco", "detections_figure", "draw_panels", "figure2", "detect",
    "evaluate_detector", "select_tumour_slices", "slice_scores", "DetectionMetrics", "coco_metrics",
    "write_table2", "anchor_sizes_for", "build_model", "load_detector", "load_weights", "DetectorResult",
    "table2_for_run", "train_detector", "train_detector_for_run", "train_one_epoch",
]
