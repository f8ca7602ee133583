"""Power profiles for the scripted GPU: what a fake GPU really draws over time, with exact
integrals (the truth every measurement is judged against).

- `PowerProfile`: fixed, piecewise-constant segments; prefix sums keep thousands of segments
  cheap to query.
- `LiveProfile`: written as a simulated workload runs, idling (warm, cooling) in between.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PowerProfile:
    """Piecewise-constant power: ``segments`` of (duration_s, watts); the last holds forever.

    Power before t = 0 is the first segment's. Integrals use prefix sums, so a profile of
    thousands of segments (one per decoding step) stays cheap to query.
    """

    segments: tuple[tuple[float, float], ...] = ((1.0, 100.0),)

    @functools.cached_property
    def _edges(self) -> list[float]:
        edges, t = [], 0.0
        for duration, _ in self.segments:
            t += duration
            edges.append(t)
        return edges

    @functools.cached_property
    def _cumulative_j(self) -> list[float]:
        """Energy from 0 to the end of each segment."""
        out, total = [], 0.0
        for duration, watts in self.segments:
            total += duration * watts
            out.append(total)
        return out

    def power_w(self, t: float) -> float:
        i = bisect.bisect_right(self._edges, t)
        return self.segments[min(i, len(self.segments) - 1)][1]

    def _energy_to(self, t: float) -> float:
        """Integral from 0 to ``t`` (negative before 0, at the first segment's power)."""
        if t <= 0:
            return t * self.segments[0][1]
        i = bisect.bisect_right(self._edges, t)
        if i >= len(self.segments):
            return self._cumulative_j[-1] + (t - self._edges[-1]) * self.segments[-1][1]
        before_j = self._cumulative_j[i - 1] if i > 0 else 0.0
        start = self._edges[i - 1] if i > 0 else 0.0
        return before_j + (t - start) * self.segments[i][1]

    def energy_j(self, t0: float, t1: float) -> float:
        """Exact integral over ``[t0, t1]``."""
        if t1 <= t0:
            return 0.0
        return self._energy_to(t1) - self._energy_to(t0)

    def mean_w(self, t0: float, t1: float) -> float:
        """Mean power over ``[t0, t1]`` (the power at ``t0`` for an empty window)."""
        return self.energy_j(t0, t1) / (t1 - t0) if t1 > t0 else self.power_w(t0)

    def jumps(self) -> list[tuple[float, float]]:
        """(time, |power change|) at each segment boundary."""
        out, t = [], 0.0
        for (duration, a), (_, b) in zip(self.segments, self.segments[1:], strict=False):
            t += duration
            out.append((t, abs(b - a)))
        return out


class LiveProfile:
    """Power that a simulated workload writes as it goes: `occupy` appends what the GPU does
    from a time on; between activities the GPU idles at ``idle_w``, plus, after work,
    ``warm_w`` that decays with time constant ``cool_tau_s`` (a GPU still warm from earlier
    work reads high at idle). Idle is a staircase on a ``cool_step_s`` grid counted from the
    end of the last activity, so what a sensor read while idle is exactly what the profile
    integrates later. ``warm_w`` also applies from t = 0 when ``warm_at_start`` (work before
    the experiment).

    Only the future may change: `occupy` truncates idle that no read could have seen yet.
    """

    def __init__(
        self,
        idle_w: float,
        *,
        warm_w: float = 0.0,
        cool_tau_s: float = 30.0,
        cool_step_s: float = 0.05,
        warm_at_start: bool = False,
    ) -> None:
        self.idle_w = idle_w
        self.warm_w = warm_w
        self.cool_tau_s = cool_tau_s
        self.cool_step_s = cool_step_s
        self._starts: list[float] = []
        self._watts: list[float] = []
        self._cumulative_j: list[float] = []  # energy from 0 to each segment's start
        self._end = 0.0  # where the materialised segments end
        self._cool_from: float | None = 0.0 if warm_at_start else None
        self.activities: list[tuple[float, float, float, str]] = []  # (start, end, watts, what)

    # -- writing ------------------------------------------------------------------------------

    def idle_power_w(self, t: float) -> float:
        """Idle power at ``t``, given the last activity's end (settled when long ago)."""
        if self._cool_from is None or self.warm_w == 0:
            return self.idle_w
        cell = math.floor((t - self._cool_from) / self.cool_step_s)
        mid = (cell + 0.5) * self.cool_step_s
        return self.idle_w + self.warm_w * math.exp(-mid / self.cool_tau_s)

    def _append(self, start: float, end: float, watts: float) -> None:
        if end <= start:
            return
        before = (
            self._cumulative_j[-1] + (start - self._starts[-1]) * self._watts[-1]
            if (self._starts)
            else 0.0
        )
        self._starts.append(start)
        self._watts.append(watts)
        self._cumulative_j.append(before)
        self._end = end

    def _materialise(self, t: float) -> None:
        """Idle cells up to at least ``t``."""
        while self._end < t:
            start = self._end
            if self._cool_from is None or self.warm_w == 0:
                self._append(start, max(t, start + 1.0), self.idle_w)
                continue
            cell = math.floor((start - self._cool_from) / self.cool_step_s + 1e-9)
            end = self._cool_from + (cell + 1) * self.cool_step_s
            self._append(start, max(end, start + 1e-9), self.idle_power_w(start + 1e-9))

    def _truncate(self, t: float) -> None:
        while self._starts and self._starts[-1] >= t:
            self._starts.pop()
            self._watts.pop()
            self._cumulative_j.pop()
        self._end = t if self._starts else 0.0

    def occupy(self, start_s: float, duration_s: float, watts: float, what: str = "") -> None:
        """From ``start_s`` for ``duration_s`` the GPU draws ``watts`` (``what`` labels it)."""
        self._materialise(start_s)
        self._truncate(start_s)
        self._append(start_s, start_s + duration_s, watts)
        self._cool_from = start_s + duration_s
        self.activities.append((start_s, start_s + duration_s, watts, what))

    # -- reading (the `PowerProfile` surface) -------------------------------------------------

    def power_w(self, t: float) -> float:
        if t < 0:
            return self.idle_power_w(0.0) if self._cool_from == 0.0 else self.idle_w
        self._materialise(t + 1e-9)
        i = bisect.bisect_right(self._starts, t) - 1
        return self._watts[max(i, 0)]

    def _energy_to(self, t: float) -> float:
        if t <= 0:
            return t * self.power_w(t)
        self._materialise(t)
        i = bisect.bisect_right(self._starts, t) - 1
        return self._cumulative_j[i] + (t - self._starts[i]) * self._watts[i]

    def energy_j(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return 0.0
        return self._energy_to(t1) - self._energy_to(t0)

    def mean_w(self, t0: float, t1: float) -> float:
        return self.energy_j(t0, t1) / (t1 - t0) if t1 > t0 else self.power_w(t0)

    def jumps(self) -> list[tuple[float, float]]:
        return [
            (s, abs(b - a))
            for s, a, b in zip(self._starts[1:], self._watts, self._watts[1:], strict=False)
            if a != b
        ]
