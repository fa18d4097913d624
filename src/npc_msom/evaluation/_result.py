"""A ``to_dict`` shared by the result dataclasses: JSON-ready, arrays as lists, NaN as None."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """Recursively converts dataclasses, NumPy arrays and scalars to plain Python values.

    NaN and infinities become ``None`` because JSON has no spelling for them and the report
    shows a missing value as a dash.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ResultMixin:
    """Adds ``to_dict()`` to a frozen dataclass."""

    def to_dict(self) -> dict:
        return jsonable(self)


def fmt_ci(estimate: float, low: float, high: float, level: float = 0.95, digits: int = 3,
           percent: bool = False) -> str:
    """'0.733 (95% CI 0.559–0.909)', or with ``percent`` '11.4% (95% CI 4.1–22.3%)'."""
    def f(v: float) -> str:
        if v is None or not math.isfinite(v):
            return "NA"
        return f"{100 * v:.{max(digits - 2, 0)}f}" if percent else f"{v:.{digits}f}"
    unit = "%" if percent else ""
    return f"{f(estimate)}{unit} ({round(level * 100):g}% CI {f(low)}\u2013{f(high)}{unit})"
