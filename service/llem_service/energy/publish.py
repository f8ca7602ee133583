"""Publishing energy figures: an estimate becomes a wire figure, or null with one warning per
kind of figure that says why (its dominant uncertainty term) and how to get it; and the
uncertainty budget of the headline figure.

A figure whose expanded uncertainty exceeds ``energy.max_relative_uncertainty`` of its scale
(its own value; for adjusted figures the raw one they come from) is null. Never a number with
an enormous uncertainty, never a value another published field would give back.
"""

from __future__ import annotations

import math

from llem_client import Estimate as WireEstimate
from llem_client import UncertaintyBudget, UncertaintyTerm

from llem_service.energy.figures import Warning
from llem_service.energy.uncertainty import COVERAGE_FACTOR, TERMS, Estimate

#: How to get a figure that was null, by the term that dominated its uncertainty.
ADVICE = {
    "counter_quantisation": "the window spans too few energy-counter updates: measure longer "
    "(more prompts or repeats)",
    "counter_resolution": "the window spans too few energy-counter updates: measure longer",
    "power_integration": "this GPU has no energy counter, so energy is integrated from power "
    "samples: use a GPU with a counter (Volta or newer, not a vGPU)",
    "power_gaps": "power readings were missing for part of the window on a GPU without an "
    "energy counter (see the sampler_read_errors and power_field_changed warnings): free the "
    "GPU's driver from other NVML clients, or use a GPU with a counter",
    "part_time_sensing": "the work repeats in step with the sensor's period, which this GPU "
    "senses only part of: change the batch size or output length so the rhythm drifts, or "
    "measure longer",
    "sensor_gain": "the sensor's stated accuracy dominates: calibrate against a meter and set "
    "LLEM_SENSOR_ACCURACY",
    "sensor_offset": "the sensor's stated accuracy dominates: calibrate against a meter and "
    "set LLEM_SENSOR_ACCURACY",
    "baseline_quantisation": "the idle window is short: raise baseline.duration_s",
    "baseline_drift": "idle power was still moving: let the GPU rest, raise "
    "baseline.settle_max_s or baseline.duration_s",
    "baseline_reuse": "the reused idle baseline was taken at another temperature: lower "
    "baseline.max_temperature_diff_c so it is measured again",
    "prefill_passes": "the prefill passes ran at another speed than prefill inside the window",
    "between_batches_power": "the gaps between batches are too short for the power readings "
    "to place: fewer, larger batches leave fewer gaps",
    "timeline_share": "prefill spans are too short for the power readings: keep "
    "energy.phase_split='counter' so prefill is measured by the counter",
    "batch_split": "the batches' shares of decode energy are uncertain: measure longer",
    "step_power": "requests that stop early share steps unevenly: set fixed_output_length",
}


class Publisher:
    """Turns estimates into wire figures, or null with one warning per kind of figure."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.nulled: dict[str, tuple[float, str | None, str | None]] = {}

    def publishable(self, estimate: Estimate, scale: float | None = None) -> bool:
        """Whether ``estimate`` would be published rather than null."""
        relative = estimate.relative(scale)
        # Not finite (a bound nothing limits, or its arithmetic gone NaN) is never published.
        return math.isfinite(estimate.value) and math.isfinite(relative) and relative <= self.limit

    def __call__(
        self,
        estimate: Estimate | None,
        what: str,
        scale: float | None = None,
        *,
        advice: str | None = None,
    ) -> WireEstimate | None:
        """The wire figure, or None (noting why). ``advice``: how to get this figure when
        null, where the dominant term's general advice would mislead."""
        if estimate is None:
            return None
        if not self.publishable(estimate, scale):
            relative = estimate.relative(scale)
            terms = estimate.by_term()
            dominant = max(terms, key=lambda k: terms[k])[0] if terms else None
            if relative >= self.nulled.get(what, (-1.0, None, None))[0]:
                self.nulled[what] = (relative, dominant, advice)
            return None
        return estimate.wire()

    def warnings(self) -> list[Warning]:
        out = []
        for what, (relative, dominant, own_advice) in self.nulled.items():
            shown = "unbounded" if not math.isfinite(relative) else f"±{relative:.0%}"
            advice = own_advice or ADVICE.get(dominant or "", "measure a longer window")
            out.append(
                (
                    "energy_figure_unbounded",
                    f"{what} is null: its uncertainty ({shown}) exceeds "
                    f"energy.max_relative_uncertainty ({self.limit:.0%}), mostly "
                    f"{dominant or 'unknown'}; {advice}.",
                )
            )
        return out


def budget(
    headline: Estimate, published: WireEstimate | None, *, adjusted: bool
) -> UncertaintyBudget:
    """What the headline's uncertainty is made of. The figure itself is the one published:
    null when it was not (its terms still say what made it too uncertain)."""
    whole = headline.wire()
    variance = headline.std() ** 2
    terms = []
    for (name, kind), std in sorted(headline.by_term().items(), key=lambda kv: -kv[1]):
        terms.append(
            UncertaintyTerm(
                name=name,
                kind=kind,
                contribution=COVERAGE_FACTOR * std,
                share=min(1.0, std * std / variance) if variance > 0 else 0.0,
                description=TERMS[name],
            )
        )
    return UncertaintyBudget(
        figure="adjusted_energy_per_output_token_j" if adjusted else "energy_per_output_token_j",
        estimate=published,
        random=whole.random,
        systematic=whole.systematic,
        total=whole.total,
        coverage_factor=COVERAGE_FACTOR,
        terms=terms,
    )
