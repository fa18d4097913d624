"""Survival statistics on lifelines and scikit-survival: Kaplan–Meier, log-rank, rates at a time
point, Cox (with the cox.zph proportional-hazards test), Harrell's and Uno's C, time-dependent AUC.

Times are in months (``time_months``); events are 0/1 (1 = metastasis for DMFS, death for OS).
Confidence intervals of Kaplan–Meier curves default to R ``survfit``'s "log" type, so printed
numbers agree with R; ``ci_type="log-log"`` gives lifelines' and SAS's intervals.
"""
from .cox import CoxResult, cox_ph, cox_risk_group, harrell_c
from .km import (KMCurve, KMResult, LogRankResult, SurvivalRate, kaplan_meier,
                 logrank_test)
from .timedep import (CoxModel, CoxTerm, ScoreSurvival, TimeAUC, cox_model, schoenfeld_test,
                      score_survival, time_dependent_auc, uno_c)

__all__ = [
    "CoxResult", "KMCurve", "KMResult", "LogRankResult", "SurvivalRate", "cox_ph", "cox_risk_group",
    "harrell_c", "kaplan_meier", "logrank_test",
    "CoxModel", "CoxTerm", "ScoreSurvival", "TimeAUC", "cox_model", "schoenfeld_test", "score_survival",
    "time_dependent_auc", "uno_c",
]
