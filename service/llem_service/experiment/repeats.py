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

from llem_client import RepeatsConfig

from llem_service.experiment.summary import t_quantile_975

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
