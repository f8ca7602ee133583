"""Integration of sampled power over time windows: the cross-check and the phase split.

Power samples are joined by straight lines (the trapezoidal rule) and held at the first and
last sample's value beyond them. Times in seconds, power in watts, energy in joules.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence


class PowerCurve:
    """Piecewise-linear power through a set of samples, ready for many window integrals."""

    def __init__(self, t_s: Sequence[float], power_w: Sequence[float | None]) -> None:
        points = sorted((t, p) for t, p in zip(t_s, power_w, strict=True) if p is not None)
        self.t = [t for t, _ in points]
        self.p = [p for _, p in points]
        # cumulative trapezoid areas up to each sample
        self._area = [0.0]
        for i in range(1, len(self.t)):
            step = (self.t[i] - self.t[i - 1]) * (self.p[i] + self.p[i - 1]) / 2
            self._area.append(self._area[-1] + step)

    def __bool__(self) -> bool:
        return bool(self.t)

    def power_at(self, t: float) -> float:
        if t <= self.t[0]:
            return self.p[0]
        if t >= self.t[-1]:
            return self.p[-1]
        i = bisect.bisect_right(self.t, t)
        t0, t1, p0, p1 = self.t[i - 1], self.t[i], self.p[i - 1], self.p[i]
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0) if t1 > t0 else p1

    def _area_to(self, t: float) -> float:
        """Integral from the first sample to ``t`` (negative before it)."""
        if t <= self.t[0]:
            return (t - self.t[0]) * self.p[0]
        if t >= self.t[-1]:
            return self._area[-1] + (t - self.t[-1]) * self.p[-1]
        i = bisect.bisect_right(self.t, t) - 1
        return self._area[i] + (t - self.t[i]) * (self.p[i] + self.power_at(t)) / 2

    def energy_j(self, t0: float, t1: float) -> float:
        """Integral of power over ``[t0, t1]``, joules (0 for an empty window)."""
        if t1 <= t0:
            return 0.0
        return max(0.0, self._area_to(t1) - self._area_to(t0))

    def _inside(self, t0: float, t1: float) -> list[float]:
        return self.p[bisect.bisect_left(self.t, t0) : bisect.bisect_right(self.t, t1)]

    def peak_w(self, t0: float, t1: float) -> float | None:
        """Highest sample inside ``[t0, t1]``, or None when none falls inside."""
        return max(self._inside(t0, t1), default=None)

    def variation_w(self, t0: float, t1: float) -> float:
        """Sum of the changes between consecutive samples inside ``[t0, t1]``, watts."""
        inside = self._inside(t0, t1)
        return sum(abs(b - a) for a, b in itertools.pairwise(inside))

    def low_w(self, t0: float, t1: float) -> float | None:
        """Lowest sample inside ``[t0, t1]``, or None when none falls inside."""
        return min(self._inside(t0, t1), default=None)


def integrate_power(
    t_s: Sequence[float], power_w: Sequence[float | None], t0: float, t1: float
) -> float | None:
    """Energy over ``[t0, t1]`` from samples, joules; None when there is no sample."""
    curve = PowerCurve(t_s, power_w)
    return curve.energy_j(t0, t1) if curve else None
