"""Input checks shared by the statistics modules (evaluation and survival).

Every check raises ``ValueError`` with a message that names the argument and the problem, e.g.
``"y_score contains 2 NaN values (positions 3, 17)"``, so that a researcher sees at once which
column of which table is wrong.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _positions(mask: np.ndarray, limit: int = 10) -> str:
    """'3, 17' for the first ``limit`` True positions of ``mask``, with '...' if there are more."""
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in idx[:limit])
    return shown + (", ..." if idx.size > limit else "")


def as_1d(x, name: str) -> np.ndarray:
    """``x`` as a 1-D array; raises if it is not one-dimensional or is empty."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def finite_float(x, name: str) -> np.ndarray:
    """1-D float64 array with no NaN or infinite value."""
    arr = as_1d(x, name)
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got dtype {np.asarray(x).dtype}") from exc
    nan = np.isnan(arr)
    if nan.any():
        raise ValueError(f"{name} contains {int(nan.sum())} NaN values (positions {_positions(nan)})")
    inf = np.isinf(arr)
    if inf.any():
        raise ValueError(f"{name} contains {int(inf.sum())} infinite values (positions {_positions(inf)})")
    return arr


def binary(x, name: str) -> np.ndarray:
    """1-D int8 array of 0/1. Accepts bools and numbers equal to 0 or 1; anything else raises."""
    arr = as_1d(x, name)
    if arr.dtype == bool:
        return arr.astype(np.int8)
    try:
        f = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        found = sorted({str(v) for v in arr.tolist()})[:5]
        raise ValueError(f"{name} must contain only 0 and 1 (1 = case), found {found}") from exc
    nan = np.isnan(f)
    if nan.any():
        raise ValueError(f"{name} contains {int(nan.sum())} NaN values (positions {_positions(nan)})")
    bad = (f != 0) & (f != 1)
    if bad.any():
        found = sorted({float(v) for v in f[bad]})[:5]
        raise ValueError(f"{name} must contain only 0 and 1 (1 = case); {int(bad.sum())} values are "
                         f"not (e.g. {found} at positions {_positions(bad)})")
    return f.astype(np.int8)


def both_classes(y: np.ndarray, name: str) -> tuple[int, int]:
    """(n_pos, n_neg); raises if either class is absent, since no ROC statistic exists then."""
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        only = "1 (cases)" if n_neg == 0 else "0 (controls)"
        raise ValueError(f"{name} contains a single class: all {y.size} values are {only}; "
                         f"both cases and controls are needed")
    return n_pos, n_neg


def same_length(**arrays: np.ndarray) -> None:
    """Raises naming every argument's length when they differ."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ValueError(f"length mismatch: {desc}")


def level(level: float) -> float:
    """A confidence level strictly between 0 and 1."""
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    return float(level)


def probabilities(x, name: str) -> np.ndarray:
    """Finite values in [0, 1]."""
    arr = finite_float(x, name)
    bad = (arr < 0) | (arr > 1)
    if bad.any():
        raise ValueError(f"{name} must be probabilities in [0, 1]; {int(bad.sum())} values are not "
                         f"(positions {_positions(bad)})")
    return arr


def times(x, name: str) -> np.ndarray:
    """Finite, non-negative follow-up times."""
    arr = finite_float(x, name)
    neg = arr < 0
    if neg.any():
        raise ValueError(f"{name} contains {int(neg.sum())} negative times (positions {_positions(neg)}); "
                         f"follow-up times must be >= 0")
    return arr


def labels(x, name: str, allowed: Sequence | None = None) -> np.ndarray:
    """1-D object array of group labels with no missing value; checks them against ``allowed``."""
    arr = as_1d(x, name)
    obj = arr.astype(object)
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in obj], dtype=bool)
    if missing.any():
        raise ValueError(f"{name} contains {int(missing.sum())} missing labels (positions {_positions(missing)})")
    if allowed is not None:
        allowed_set = set(allowed)
        unknown = np.array([v not in allowed_set for v in obj], dtype=bool)
        if unknown.any():
            found = sorted({str(v) for v in obj[unknown]})
            raise ValueError(f"{name} contains unknown group labels {found} (positions {_positions(unknown)}); "
                             f"expected one of {list(allowed)}")
    return obj
