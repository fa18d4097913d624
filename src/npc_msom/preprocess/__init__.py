"""Preprocessing: 1 mm resampling, 1..255 intensities, slice selection, resize, COCO, splits."""
from npc_msom.preprocess.stage import PreprocessResult, preprocess, process_series

__all__ = ["PreprocessResult", "preprocess", "process_series"]
