"""Values with their error sources, propagated linearly: the arithmetic behind every uncertainty.

An `Estimate` is a value and, for each independent error `Source`, the signed *standard*
uncertainty that source contributes to it (a sensitivity times the source's standard
uncertainty). Adding estimates adds the contributions of a shared source first, so correlated
errors combine as they should: two adjacent counter windows share their middle read, whose
error cancels in their sum; every window of one GPU shares that sensor's gain error, which
adds linearly. Distinct sources then combine in quadrature (GUM, JCGM 100:2008, section 5).

A bound ``a`` (a value known only to lie within +/- a, e.g. counter quantisation or a vendor's
accuracy figure) enters as a rectangular distribution, standard uncertainty a / sqrt(3). The
wire reports expanded uncertainties with coverage factor ``COVERAGE_FACTOR`` = 2 (about 95%).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from llem_client import Estimate as WireEstimate

#: k of the expanded uncertainties on the wire: value +/- k x standard uncertainty.
COVERAGE_FACTOR = 2.0
_SQRT3 = math.sqrt(3.0)

Kind = Literal["random", "systematic"]


@dataclass(frozen=True)
class Source:
    """One independent error source.

    Attributes:
        name: The term it belongs to in the uncertainty budget (``counter_quantisation``...).
        kind: Random (varies run to run) or systematic (does not average away).
        scope: What makes it distinct from other sources of the same term: a GPU, a counter
            read, a batch. Sources equal in all three are the same error.
    """

    name: str
    kind: Kind
    scope: str = ""


#: What each term means, for the budget in the result. Every source name must be here.
TERMS: dict[str, str] = {
    "counter_quantisation": "Each counter read lags the truth by up to one update period "
    "(rectangular, peak power x period per read).",
    "counter_resolution": "The counter counts whole millijoules.",
    "power_integration": "Energy integrated from power samples (GPUs without a counter): "
    "steps between samples and the field's refresh and lag.",
    "power_gaps": "Stretches with no power reading (failed reads, a power field given up) on "
    "a GPU without a counter: counted at the middle of the GPU's range (lowest reading to "
    "power limit), +/- half of it.",
    "sensor_gain": "The sensor's stated relative accuracy for its GPU generation.",
    "sensor_offset": "The sensor's stated absolute accuracy (watts) over the window's length.",
    "part_time_sensing": "A workload periodic near the counter period, on a GPU that senses "
    "part of each period: at most one beat of the aliasing left unaveraged.",
    "baseline_quantisation": "The idle window's own counter quantisation.",
    "baseline_drift": "Idle power still moving when measured (trend over the settling "
    "horizon), or drifting between the baselines before and after the window.",
    "baseline_reuse": "A baseline reused from an earlier experiment: idle power moves with "
    "temperature (up to 2% per degree C assumed) and the GPU's temperature now differs from "
    "then.",
    "prefill_passes": "Prefill-only passes that differ from prefill inside the window: the "
    "difference in time x the passes' power.",
    "between_batches_power": "Power during the gaps between batches, bounded by the samples.",
    "timeline_share": "The fallback phase split by sampled power: the power field's refresh "
    "period and lag at every span edge.",
    "batch_split": "Each batch's share of the decode energy, from the sampled power over it.",
    "step_power": "Per-request split assumes constant power over a batch's decoding steps.",
    "rapl_edge": "Host energy: a RAPL counter read at a window's edge misses up to one 1-ms "
    "update of the zone's power (and resolves 1 uJ).",
    "rapl_model": "Host energy: RAPL is the CPU's own model of its energy, assumed within 5% "
    "of the truth; one bound for every zone (their errors move together).",
}


@dataclass(frozen=True)
class Estimate:
    """A value and its error sources (signed standard-uncertainty contributions)."""

    value: float
    terms: Mapping[Source, float] = field(default_factory=dict)

    @classmethod
    def bounded(cls, value: float, source: Source, bound: float) -> Estimate:
        """``value`` known to within +/- ``bound`` (rectangular) from ``source``."""
        return cls(value, {source: bound / _SQRT3} if bound else {})

    def with_bound(self, source: Source, bound: float) -> Estimate:
        """This estimate plus an independent rectangular error of +/- ``bound``."""
        return self + Estimate.bounded(0.0, source, bound)

    def with_std(self, source: Source, std: float) -> Estimate:
        """This estimate plus an error of standard uncertainty ``std`` from ``source``."""
        return self + Estimate(0.0, {source: std} if std else {})

    # -- arithmetic: linear propagation --------------------------------------------------------

    def __add__(self, other: Estimate | float) -> Estimate:
        if not isinstance(other, Estimate):
            return Estimate(self.value + other, self.terms)
        terms = dict(self.terms)
        for source, contribution in other.terms.items():
            terms[source] = terms.get(source, 0.0) + contribution
        return Estimate(self.value + other.value, terms)

    __radd__ = __add__

    def __neg__(self) -> Estimate:
        return self * -1.0

    def __sub__(self, other: Estimate | float) -> Estimate:
        return self + (-other)

    def __mul__(self, factor: float) -> Estimate:
        return Estimate(self.value * factor, {s: c * factor for s, c in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Estimate:
        return self * (1.0 / divisor)

    # -- reading it ----------------------------------------------------------------------------

    def std(self, kind: Kind | None = None) -> float:
        """Standard uncertainty: of one kind, or all of it."""
        return math.sqrt(
            sum(c * c for s, c in self.terms.items() if kind is None or s.kind == kind)
        )

    def expanded(self, kind: Kind | None = None) -> float:
        return COVERAGE_FACTOR * self.std(kind)

    def std_without(self, names: Iterable[str]) -> float:
        """Standard uncertainty leaving out whole terms (e.g. the sensor's calibration)."""
        skip = set(names)
        return math.sqrt(sum(c * c for s, c in self.terms.items() if s.name not in skip))

    def by_term(self) -> dict[tuple[str, Kind], float]:
        """Standard uncertainty of each term (its sources in quadrature)."""
        out: dict[tuple[str, Kind], float] = {}
        for source, contribution in self.terms.items():
            key = (source.name, source.kind)
            out[key] = math.hypot(out.get(key, 0.0), contribution)
        return out

    def relative(self, scale: float | None = None) -> float:
        """Expanded uncertainty over ``|scale|`` (this value by default): 0 for an exact figure,
        inf for an uncertain one of scale zero."""
        expanded = self.expanded()
        if expanded == 0:
            return 0.0
        reference = abs(self.value if scale is None else scale)
        return expanded / reference if reference > 0 else math.inf

    def wire(self) -> WireEstimate:
        random, systematic = self.expanded("random"), self.expanded("systematic")
        return WireEstimate(
            value=self.value,
            random=random,
            systematic=systematic,
            total=math.hypot(random, systematic),
        )


def total(estimates: Iterable[Estimate]) -> Estimate:
    """Sum of estimates (correlated sources added first)."""
    out = Estimate(0.0)
    for estimate in estimates:
        out = out + estimate
    return out


def interpolate(ordered: list[Estimate], q: float) -> Estimate:
    """The ``q`` quantile of estimates sorted by value, interpolated linearly between the two
    neighbours (and their errors with it)."""
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    weight = position - low
    return ordered[low] * (1.0 - weight) + ordered[high] * weight
