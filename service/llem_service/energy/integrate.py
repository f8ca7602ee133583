"""Integration of sampled power over time windows: the cross-check, the gaps between batches,
the fallback phase split and each batch's share of the decode energy.

NVML's power fields refresh about every 100 ms however fast they are polled, so consecutive
identical readings are one reading, repeated: a run of them keeps only its first and last
sample (the first is when the value appeared, the last shows it still held; the ones between
add nothing), and readings of 0 W or less, which a transient read failure can produce, are
dropped. The kept readings are joined by straight lines (the trapezoidal rule) and held at the
first and last reading's value beyond them; where readings are missing for longer than the
field's refresh allows (`PowerCurve.uncovered`), that line says nothing, and the callers bound
the stretch by the GPU's power range instead. Times in seconds, power in watts, energy in
joules.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Sequence


def distinct_readings(
    t_s: Sequence[float], power_w: Sequence[float | None]
) -> tuple[list[float], list[float], int]:
    """Readings in time order, each run of equal values reduced to its first and last sample,
    non-positive values dropped (and counted). A failed read (None) is a gap, never a value."""
    points = sorted((t, p) for t, p in zip(t_s, power_w, strict=True) if p is not None)
    times: list[float] = []
    powers: list[float] = []
    dropped = 0
    run = 0  # samples of the current run of equal values kept so far beyond its first
    for t, p in points:
        if p <= 0:
            dropped += 1
            continue
        if powers and p == powers[-1]:
            if run:  # replace the run's last sample with this later one
                times[-1] = t
            else:
                times.append(t)
                powers.append(p)
                run = 1
            continue
        times.append(t)
        powers.append(p)
        run = 0
    return times, powers, dropped


class PowerCurve:
    """Piecewise-linear power through a set of readings, ready for many window integrals.

    ``read_t`` keeps the time of every positive reading (repeats of one value included): a
    run of equal values is one straight segment of the curve but still shows that the power
    was read all along, which `uncovered` needs to tell a steady value from a gap."""

    def __init__(
        self, t_s: Sequence[float], power_w: Sequence[float | None], *, dedupe: bool = True
    ) -> None:
        if dedupe:
            self.t, self.p, self.dropped = distinct_readings(t_s, power_w)
        else:
            points = sorted((t, p) for t, p in zip(t_s, power_w, strict=True) if p is not None)
            self.t = [t for t, _ in points]
            self.p = [p for _, p in points]
            self.dropped = 0
        self.read_t = sorted(
            t for t, p in zip(t_s, power_w, strict=True) if p is not None and p > 0
        )
        # cumulative trapezoid areas up to each reading
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
        """Integral from the first reading to ``t`` (negative before it)."""
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

    def mean_w(self, t0: float, t1: float) -> float:
        """Mean power over ``[t0, t1]`` (the power at ``t0`` for an empty window)."""
        return self.energy_j(t0, t1) / (t1 - t0) if t1 > t0 else self.power_at(t0)

    def inside(self, t0: float, t1: float) -> list[float]:
        """Readings inside ``[t0, t1]``."""
        return self.p[bisect.bisect_left(self.t, t0) : bisect.bisect_right(self.t, t1)]

    def peak_w(self, t0: float, t1: float) -> float | None:
        """Highest reading inside ``[t0, t1]``, or None when none falls inside."""
        return max(self.inside(t0, t1), default=None)

    def low_w(self, t0: float, t1: float) -> float | None:
        """Lowest reading inside ``[t0, t1]``, or None when none falls inside."""
        return min(self.inside(t0, t1), default=None)

    def variation_w(self, t0: float, t1: float) -> float:
        """Sum of the changes between consecutive readings inside ``[t0, t1]``, watts."""
        return sum(abs(b - a) for a, b in itertools.pairwise(self.inside(t0, t1)))

    def read_between(self, t0: float, t1: float) -> bool:
        """Whether the power was read inside ``[t0, t1]`` (repeats of one value count)."""
        i = bisect.bisect_left(self.read_t, t0)
        return i < len(self.read_t) and self.read_t[i] <= t1

    def uncovered(self, t0: float, t1: float, max_gap_s: float) -> list[tuple[float, float]]:
        """The stretches of ``[t0, t1]`` between two readings more than ``max_gap_s`` apart
        (before the first reading and after the last included): where the power was not read
        (failed reads, a field given up, a sampler that stalled), so the curve's straight line
        or held value says nothing about it."""
        times = self.read_t
        out: list[tuple[float, float]] = []
        j = bisect.bisect_right(times, t0)
        previous = times[j - 1] if j > 0 else -math.inf
        while True:
            following = times[j] if j < len(times) else math.inf
            if following - previous > max_gap_s:
                a, b = max(previous, t0), min(following, t1)
                if b > a:
                    out.append((a, b))
            if following >= t1:
                return out
            previous = following
            j += 1


class Readings:
    """Power readings for the mean power over a span and its standard error: one value per
    sampling round, each GPU's latest reading held until its field refreshes
    (`summed_readings`).

    The error counts one independent reading per ``refresh_s`` of the span at most (NVML
    refreshes about every 100 ms, however often it is read)."""

    def __init__(self, t_s: Sequence[float], power_w: Sequence[float], refresh_s: float) -> None:
        pairs = sorted(zip(t_s, power_w, strict=True))
        self.t = [t for t, _ in pairs]
        self.p = [p for _, p in pairs]
        self.refresh_s = refresh_s

    def stats(self, t0: float, t1: float) -> tuple[float, float] | None:
        """Mean over ``[t0, t1]`` and its standard error; None under three readings or one
        refresh period."""
        inside = self.p[bisect.bisect_left(self.t, t0) : bisect.bisect_right(self.t, t1)]
        independent = min(len(inside), int((t1 - t0) / self.refresh_s))
        if len(inside) < 3 or independent < 1:
            return None
        spread = statistics.stdev(inside)
        return statistics.fmean(inside), spread / math.sqrt(independent)


def summed_readings(
    t_s: Sequence[float],
    device_uuid: Sequence[str],
    power_w: Sequence[float | None],
    devices: Sequence[str],
    refresh_s: float,
    hold_s: float = 0.0,
) -> Readings:
    """Total power of ``devices`` per sampling round.

    The timeline keeps only a GPU's fresh readings: a read of the same refresh is stored as
    no reading, and GPUs refresh at their own phases, so in most rounds some GPU has none.
    Each GPU's latest positive reading therefore stands for it until ``hold_s`` after the
    round it came in (its field's refresh plus a sampling interval); a round where some GPU
    has none that recent (failed reads, a field given up) is left out: a gap, never 0 W."""
    wanted = set(devices)
    rows = sorted(
        (
            (t, uuid, p)
            for t, uuid, p in zip(t_s, device_uuid, power_w, strict=True)
            if uuid in wanted
        ),
        key=lambda row: row[0],
    )
    latest: dict[str, tuple[float, float]] = {}
    times: list[float] = []
    sums: list[float] = []
    for t, group in itertools.groupby(rows, key=lambda row: row[0]):
        for _, uuid, p in group:
            if p is not None and p > 0:
                latest[uuid] = (t, p)
        held = [latest.get(uuid) for uuid in wanted]
        if all(h is not None and t - h[0] <= hold_s + 1e-9 for h in held):
            times.append(t)
            sums.append(sum(h[1] for h in held if h is not None))
    return Readings(times, sums, refresh_s)


def summed_curve(curves: Sequence[PowerCurve]) -> PowerCurve:
    """Total power of several GPUs: each curve interpolated at every reading time of any."""
    present = [c for c in curves if c]
    times = sorted({t for c in present for t in c.t})
    return PowerCurve(times, [sum(c.power_at(t) for c in present) for t in times], dedupe=False)


def integrate_power(
    t_s: Sequence[float], power_w: Sequence[float | None], t0: float, t1: float
) -> float | None:
    """Energy over ``[t0, t1]`` from samples, joules; None when there is no reading."""
    curve = PowerCurve(t_s, power_w)
    return curve.energy_j(t0, t1) if curve else None
