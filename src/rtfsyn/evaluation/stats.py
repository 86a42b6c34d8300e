"""Summary statistics and paired model comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["mean_std", "paired_comparison"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN if none)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | None]:
    """Mean of (a − b) over paired cases and a two-sided Wilcoxon signed-rank p-value.

    The p-value is computed only with ≥ 5 finite pairs (None otherwise).
    """
    pairs = [(x, y) for x, y in zip(a, b, strict=True)
             if math.isfinite(x) and math.isfinite(y)]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "mean_diff": float("nan"), "p_wilcoxon": None}
    diff = np.array([x - y for x, y in pairs])
    p: float | None = None
    if n >= 5:
        p = 1.0 if np.allclose(diff, 0) else float(stats.wilcoxon(diff).pvalue)
    return {"n": n, "mean_diff": float(diff.mean()), "p_wilcoxon": p}
