"""The statistics of the reports: nearest-rank percentiles, medians, ratios that tolerate a
missing side, and the max/min spread of per-backend counts."""

from __future__ import annotations

import math


def percentile(sorted_vals: list[int] | list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list; NaN for an empty list."""
    if not sorted_vals:
        return float("nan")
    # The rank is ceil(p/100 * n); rounding first keeps float noise (99.9/100 * 1000 =
    # 999.0000000000001) from pushing it one rank up.
    rank = math.ceil(round(p / 100.0 * len(sorted_vals), 9))
    k = max(0, min(len(sorted_vals) - 1, rank - 1))
    return float(sorted_vals[k])


def median(vals: list[float | None]) -> float | None:
    """Median of the values that are not None; None when there is none. An even count gives the
    mean of the two middle values."""
    present = sorted(v for v in vals if v is not None)
    if not present:
        return None
    mid = len(present) // 2
    return present[mid] if len(present) % 2 else (present[mid - 1] + present[mid]) / 2


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing, b is 0 or a is NaN."""
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


def max_min(counts: list[int]) -> float | None:
    """max/min of the per-backend counts; None when a backend got nothing (infinite)."""
    return max(counts) / min(counts) if counts and min(counts) > 0 else None
