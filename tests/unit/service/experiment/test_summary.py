"""Repeat statistics: Student's t quantiles and the 95% interval of a mean."""

from __future__ import annotations

import math

import pytest
from llem_service.experiment.summary import latency_stats, sample_stats, t_quantile_975


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.7062), (4, 2.7764), (30, 2.0423), (31, 2.0395), (60, 2.0003), (120, 1.9799)],
)
def test_t_quantiles_match_the_tables(df: int, expected: float) -> None:
    assert t_quantile_975(df) == pytest.approx(expected, abs=2e-4)


def test_the_interval_of_three_values() -> None:
    stats = sample_stats([1.0, 2.0, 3.0])

    half = 4.3027 / math.sqrt(3)
    assert (stats.n, stats.mean, stats.std) == (3, 2.0, 1.0)
    assert stats.ci95_low == pytest.approx(2.0 - half)
    assert stats.ci95_high == pytest.approx(2.0 + half)


def test_one_value_has_no_spread() -> None:
    stats = sample_stats([5.0])

    assert (stats.mean, stats.std, stats.ci95_low, stats.ci95_high) == (5.0, None, None, None)


def test_empty_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        sample_stats([])
    with pytest.raises(ValueError, match="empty"):
        latency_stats([])
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)
