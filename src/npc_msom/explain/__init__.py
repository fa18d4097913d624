"""Where the MSOM models look: Grad-CAM saliency of the study's slice models, each slice's share of
the patient's score, and the sanity check of the maps (Adebayo et al. 2018)."""
from .saliency import (explain_slices, gradcam, inside_fraction, randomized_copy, rank_correlation,
                       saliency_to_grid, slice_shares)

__all__ = ["explain_slices", "gradcam", "inside_fraction", "randomized_copy", "rank_correlation",
           "saliency_to_grid", "slice_shares"]
