"""When to stop repeating the measured workload.

``repeats: N`` runs exactly N. ``repeats: {min, max, target_ci_rel}`` runs at least ``min``
and at most ``max``, stopping as soon as the 95% confidence interval (Student's t) of the
mean J/token is narrower than ``target_ci_rel`` of the mean, on either side. The J/token of
each repeat comes from the energy counters read at its edges (adjusted by the idle baseline
when there is one); without a meter the statistic is tokens/s.

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
from llem_service.energy.base import MeterRecord
from llem_service.energy.baseline import BaselineSet
from llem_service.energy.report import RepeatEnergy
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

    def decide(
        self, statistic: Statistic, values: Sequence[float], floor_std: float = 0.0
    ) -> RepeatStop | None:
        """None to run another repeat; otherwise why to stop. ``values``: the statistic of
        every repeat so far; ``floor_std``: one value's own measurement error."""
        n = len(values)
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


def repeat_statistic(
    record: MeterRecord | None, workload: WorkloadReport, repeat: int, baselines: BaselineSet
) -> tuple[Statistic, float, float]:
    """The figure repeats are stopped on, and its own quantisation error (standard): J/token
    from the counters at the repeat's edges (adjusted when every GPU has a baseline), else
    tokens/s (exact). ``record``: what the meter recorded so far, None without one."""
    tokens = workload.output_tokens
    if record is None or tokens == 0:
        return "tokens_per_second", _ratio(tokens, workload.duration_s), 0.0
    a = record.mark("warmup_end" if repeat == 0 else f"repeat_{repeat - 1}_end")
    b = record.mark(f"repeat_{repeat}_end")
    span = b.t_s - a.t_s
    energy = 0.0
    variance = 0.0
    periods = {m.uuid: m.counter_update_period_s or 0.1 for m in record.devices}
    for uuid, end in b.energy_mj.items():
        start = a.energy_mj.get(uuid)
        if start is None or end is None or end < start:
            return "tokens_per_second", _ratio(tokens, workload.duration_s), 0.0
        joules = (end - start) / 1e3
        energy += joules
        # two reads, each lagging up to one period at this power (rectangular)
        power = joules / span if span > 0 else 0.0
        variance += 2 * (power * periods.get(uuid, 0.1)) ** 2 / 3
    floor = math.sqrt(variance) / tokens
    idle = [baselines.of(u) for u in b.energy_mj]
    if baselines.baselines and all(i is not None for i in idle):
        energy -= sum(i.power_w for i in idle if i is not None) * span
        return "adjusted_energy_per_output_token_j", energy / tokens, floor
    return "energy_per_output_token_j", energy / tokens, floor


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
