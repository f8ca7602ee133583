"""Summaries of repeated measurements: latency percentiles, mean with a 95% interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from llem_client import LatencyStats, SampleStats

# Two-sided 95% quantiles of Student's t, t(0.975, df), for df = 1..30.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t(0.975, df): from the table up to 30 degrees of freedom, beyond it the
    Cornish-Fisher expansion around the normal quantile (error below 1e-4)."""
    if df < 1:
        raise ValueError("degrees of freedom must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def sample_stats(values: Sequence[float]) -> SampleStats:
    """Mean, sample standard deviation and the t-based 95% confidence interval of the mean."""
    if not values:
        raise ValueError("sample_stats of an empty set")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return SampleStats(n=1, mean=mean)
    std = statistics.stdev(values)
    half = t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
    return SampleStats(
        n=len(values), mean=mean, std=std, ci95_low=mean - half, ci95_high=mean + half
    )


def latency_stats(values_s: Sequence[float]) -> LatencyStats:
    """Mean, linearly interpolated p50/p90/p99 and max of a non-empty set, seconds."""
    ordered = sorted(values_s)
    if not ordered:
        raise ValueError("latency_stats of an empty set")
    return LatencyStats(
        n=len(ordered),
        mean=sum(ordered) / len(ordered),
        p50=percentile(ordered, 0.50),
        p90=percentile(ordered, 0.90),
        p99=percentile(ordered, 0.99),
        max=ordered[-1],
    )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linearly interpolated percentile of sorted values (q in [0, 1])."""
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
