"""Discrimination and calibration statistics: pure functions over labels and scores.

Direction convention (pROC's "<"): ``y_true`` is 0/1 with 1 = case (MSOM), and a higher score
means a case. Results are frozen dataclasses with ``to_dict()``; figures live in
``npc_msom.evaluation.figures`` (imported on demand, so these functions never load matplotlib).
"""
from .calibration import (CalibrationBin, CalibrationResult, DecisionCurve, calibration,
                          decision_curve)
from .roc import (AUCResult, DeLongTestResult, ROCCurve, bootstrap_aucs, delong_covariance,
                  delong_test, roc_auc, roc_curve)
from .thresholds import (CUTOFF_METHODS, Proportion, ThresholdMetrics, median_cutoff,
                         metrics_at_cutoffs, threshold_metrics, wilson_ci, youden_cutoff)

__all__ = [
    "AUCResult", "CUTOFF_METHODS", "CalibrationBin", "CalibrationResult", "DeLongTestResult",
    "DecisionCurve", "Proportion", "ROCCurve", "ThresholdMetrics", "bootstrap_aucs", "calibration",
    "decision_curve", "delong_covariance", "delong_test", "median_cutoff", "metrics_at_cutoffs",
    "roc_auc", "roc_curve", "threshold_metrics", "wilson_ci", "youden_cutoff",
]
