"""When to stop repeating the measured workload.

``repeats: N`` runs exactly N. ``repeats: {min, max, target_ci_rel}`` runs at least ``min``
and at most ``max``, stopping as soon as the 95% confidence interval (Student's t) of the
mean J/token is narrower than ``target_ci_rel`` of the mean, on either side. The J/token of
each repeat comes from the energy counters of the GPUs that count, read at its edges (adjusted
by the idle baseline when every one has one); without a meter, or where a GPU that counts has
no counter, the statistic is tokens/s. The figure (`StopFigure`) is chosen once, before the
first repeat, and never changes unit: a repeat whose counter read failed or reset is left out
of the interval. It is computed from the marks the session already holds (no sampler round
trip, so the measured window holds no more than the marks), and only for the object form.

Repeats that agree better than the counter can resolve (identical quantised readings) do not
prove a narrow interval: the spread used is never below each repeat's own quantisation error.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llem_client import RepeatResult, RepeatsConfig, RepeatSummary

from llem_service.backends.base import WorkloadReport
from llem_service.energy.base import CounterMark, DeviceMeta
from llem_service.energy.baseline import BaselineSet
from llem_service.energy.report import RepeatEnergy
from llem_service.energy.windows import DEFAULT_COUNTER_PERIOD_S, counter_window_std_j
from llem_service.experiment.summary import sample_stats, t_quantile_975

Statistic = Literal[
    "adjusted_energy_per_output_token_j", "energy_per_output_token_j", "tokens_per_second"
]


@dataclass(frozen=True)
class RepeatStop:
    """Why the repeats stopped, and on which figure."""

    reason: Literal["fixed", "target_reached", "max_reached"]
    statistic: Statistic | None = None
    achieved_ci_rel: float | None = None


def ci_rel(values: Sequence[float], floor_std: float = 0.0) -> float | None:
    """Half-width of the mean's 95% interval over |mean|; None under two values. The spread
    is at least ``floor_std`` (a single value's own measurement error)."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    if mean == 0:
        return math.inf
    spread = max(statistics.stdev(values), floor_std)
    half = t_quantile_975(len(values) - 1) * spread / math.sqrt(len(values))
    return half / abs(mean)


class RepeatPolicy:
    """Decides after each repeat whether to run another."""

    def __init__(self, repeats: int | RepeatsConfig) -> None:
        self.repeats = repeats

    @property
    def max(self) -> int:
        return self.repeats if isinstance(self.repeats, int) else self.repeats.max

    @property
    def adaptive(self) -> bool:
        """Whether the repeats stop on a statistic (the object form)."""
        return not isinstance(self.repeats, int)

    def decide(
        self,
        statistic: Statistic | None,
        values: Sequence[float],
        floor_std: float = 0.0,
        *,
        done: int | None = None,
    ) -> RepeatStop | None:
        """None to run another repeat; otherwise why to stop. ``values``: the statistic of
        every repeat so far that has one; ``floor_std``: one value's own measurement error;
        ``done``: how many repeats ran (``len(values)`` when not given)."""
        n = len(values) if done is None else done
        if isinstance(self.repeats, int):
            return RepeatStop("fixed") if n >= self.repeats else None
        achieved = ci_rel(values, floor_std)
        if n >= self.repeats.min and achieved is not None and achieved < self.repeats.target_ci_rel:
            return RepeatStop("target_reached", statistic, achieved)
        if n >= self.repeats.max:
            return RepeatStop("max_reached", statistic, achieved)
        return None

    def warning(self, stop: RepeatStop) -> tuple[str, str] | None:
        if stop.reason != "max_reached" or isinstance(self.repeats, int):
            return None
        shown = "unknown" if stop.achieved_ci_rel is None else f"{stop.achieved_ci_rel:.1%}"
        return (
            "repeats_target_not_reached",
            f"repeats.max ({self.repeats.max}) stopped the repeats before the 95% confidence "
            f"interval of {stop.statistic} reached repeats.target_ci_rel "
            f"({self.repeats.target_ci_rel:.1%} of the mean; achieved {shown}). Raise "
            "repeats.max, measure longer repeats (more prompts), or accept a wider interval.",
        )


@dataclass(frozen=True)
class StopFigure:
    """The figure adaptive repeats stop on, chosen before the first repeat.

    Attributes:
        statistic: Which figure.
        devices: The GPUs that count (J/token only), each with a counter.
        idle_w: Their summed idle baseline (adjusted J/token only), watts.
    """

    statistic: Statistic
    devices: tuple[DeviceMeta, ...] = ()
    idle_w: float = 0.0

    @classmethod
    def choose(
        cls, metas: Sequence[DeviceMeta], used: Sequence[str], baselines: BaselineSet
    ) -> StopFigure:
        """J/token over the counters of the GPUs in ``used``, adjusted when each has a
        baseline; tokens/s where one has no counter (or nothing is metered)."""
        counted = tuple(m for m in metas if m.uuid in set(used))
        if not counted or not all(m.has_energy_counter for m in counted):
            return cls("tokens_per_second")
        idle = [baselines.of(m.uuid) for m in counted]
        if all(i is not None for i in idle):
            watts = sum(i.power_w for i in idle if i is not None)
            return cls("adjusted_energy_per_output_token_j", counted, watts)
        return cls("energy_per_output_token_j", counted)

    def value(
        self, marks: Sequence[CounterMark], workload: WorkloadReport, repeat: int
    ) -> tuple[float, float] | None:
        """Repeat ``repeat``'s value and its own quantisation error (standard); None where it
        has none (no output token; a counter that failed or reset at its edges)."""
        tokens = workload.output_tokens
        if self.statistic == "tokens_per_second":
            return _ratio(tokens, workload.duration_s), 0.0
        by_label = {m.label: m for m in marks}
        a = by_label.get("warmup_end" if repeat == 0 else f"repeat_{repeat - 1}_end")
        b = by_label.get(f"repeat_{repeat}_end")
        if tokens == 0 or a is None or b is None:
            return None
        span = b.t_s - a.t_s
        energy = 0.0
        variance = 0.0
        for meta in self.devices:
            start, end = a.energy_mj.get(meta.uuid), b.energy_mj.get(meta.uuid)
            if start is None or end is None or end < start:
                return None
            joules = (end - start) / 1e3
            energy += joules
            period = meta.counter_update_period_s or DEFAULT_COUNTER_PERIOD_S
            power = joules / span if span > 0 else 0.0
            variance += counter_window_std_j(power, period) ** 2
        energy -= self.idle_w * span
        return energy / tokens, math.sqrt(variance) / tokens


def summarise(
    workloads: Sequence[WorkloadReport],
    energies: Sequence[RepeatEnergy],
    stop: RepeatStop | None,
) -> RepeatSummary:
    """Every repeat with its energy, the spread of the headline figures, and why they
    stopped."""
    rows = []
    for i, w in enumerate(workloads):
        e = energies[i] if i < len(energies) else None
        tokens = w.output_tokens
        rows.append(
            RepeatResult(
                index=i,
                duration_s=w.duration_s,
                output_tokens=tokens,
                tokens_per_second=_ratio(tokens, w.duration_s),
                energy_j=e.energy_j if e else None,
                adjusted_energy_j=e.adjusted_energy_j if e else None,
                energy_per_output_token_j=e.energy_per_output_token_j if e else None,
                adjusted_energy_per_output_token_j=(
                    e.adjusted_energy_per_output_token_j if e else None
                ),
            )
        )
    raw = [r.energy_per_output_token_j for r in rows]
    adjusted = [r.adjusted_energy_per_output_token_j for r in rows]
    return RepeatSummary(
        per_repeat=rows,
        tokens_per_second=sample_stats([r.tokens_per_second for r in rows]),
        energy_per_output_token_j=(
            sample_stats([x.value for x in raw if x is not None]) if None not in raw else None
        ),
        adjusted_energy_per_output_token_j=(
            sample_stats([x.value for x in adjusted if x is not None])
            if None not in adjusted
            else None
        ),
        stop_reason=stop.reason if stop else "fixed",
        stop_statistic=stop.statistic if stop else None,
        achieved_ci_rel=(
            stop.achieved_ci_rel
            if stop and stop.achieved_ci_rel is not None and stop.achieved_ci_rel != float("inf")
            else None
        ),
    )


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0
