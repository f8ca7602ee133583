"""Per-request energy that adds up: the measured window's energy attributed to its requests.

``per_step_split``, within each batch:

- its prefill energy is split by prompt tokens (padding excluded);
- its decode energy is spread over its decoding steps in proportion to their time (from the
  backend's per-step timestamps; evenly without them), and each step's share is split
  equally among the requests still generating (a request's first token comes from prefill,
  its k-th from step k - 1);
- the gap before it (host work, and after the last batch the tail of the window) is split
  equally among its requests.

Raw values add up to the window's raw energy; the same split of the window's *time*, times the
idle power, gives adjusted values that add up to its adjusted energy. Errors propagate from
the batch figures; ``step_power`` adds what assuming constant power over a batch's steps can
cost a request that stops early (nothing when every request generates the same count).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from llem_service.energy.figures import Batch, Work
from llem_service.energy.integrate import PowerCurve
from llem_service.energy.phases import PhaseSplit
from llem_service.energy.uncertainty import Estimate, Source, interpolate

DESCRIPTION = (
    "Within each batch: prefill energy split by prompt tokens; decode energy spread over the "
    "decoding steps by their time and each step split equally among the requests still "
    "generating; the gap before the batch split equally. Adds up to the window's energy."
)


@dataclass(frozen=True)
class RequestFigures:
    """Per request, in workload order: raw energy, window time attributed, output tokens."""

    energy: tuple[Estimate, ...]
    time_s: tuple[float, ...]
    output_tokens: tuple[int, ...]

    def adjusted(self, idle_w: Estimate) -> tuple[Estimate, ...]:
        return tuple(e - idle_w * t for e, t in zip(self.energy, self.time_s, strict=True))


def _step_durations(batch: Batch) -> list[float]:
    steps = max(batch.output_tokens, default=1) - 1
    if steps <= 0:
        return []
    times = [batch.span.first_token, *batch.step_times_s]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if len(gaps) != steps or any(g < 0 for g in gaps):
        return [batch.decode_s / steps] * steps  # no (usable) timestamps: even steps
    return gaps


def attribute(work: Work, phases: PhaseSplit, curve: PowerCurve) -> RequestFigures:
    """Every request's share of the window (see the module docstring)."""
    energy: list[Estimate] = []
    time_s: list[float] = []
    tokens: list[int] = []
    for index, batch in enumerate(work.batches):
        n = len(batch.output_tokens)
        steps = _step_durations(batch)
        decode_time = sum(steps)
        active = [sum(1 for out in batch.output_tokens if out >= k + 2) for k in range(len(steps))]
        prompt_total = sum(batch.input_tokens) or n
        swing = 0.0
        if curve:
            high = curve.peak_w(batch.span.first_token, batch.span.end)
            low = curve.low_w(batch.span.first_token, batch.span.end)
            swing = (high or 0.0) - (low or 0.0)
        for r in range(n):
            prompt_share = (batch.input_tokens[r] if batch.input_tokens else 1) / prompt_total
            mine = [k for k in range(len(steps)) if batch.output_tokens[r] >= k + 2]
            step_time = sum(steps[k] / active[k] for k in mine)
            # No decoding step (single-token requests): whatever decode energy the batch was
            # given still belongs to its requests, equally.
            decode_share = step_time / decode_time if decode_time > 0 else 1.0 / n
            value = (
                phases.prefill_batches[index] * prompt_share
                + phases.decode_batches[index] * decode_share
                + phases.between_batches[index] / n
            )
            # Constant power over the steps is exact for a request active throughout in a
            # batch that never shrinks; otherwise the power swing over the steps bounds it.
            inactive = decode_time - sum(steps[k] for k in mine)
            uneven = sum(steps[k] * abs(1 / active[k] - 1 / n) for k in mine)
            bound = swing * (min(decode_time - inactive, inactive) / n + uneven)
            value = value.with_bound(Source("step_power", "systematic", f"{index}.{r}"), bound)
            energy.append(value)
            time_s.append(
                batch.prefill_s * prompt_share
                + batch.decode_s * decode_share
                + phases.gap_s[index] / n
            )  # adds up to the batch's span plus its gap
            tokens.append(batch.output_tokens[r])
    return RequestFigures(tuple(energy), tuple(time_s), tuple(tokens))


@dataclass(frozen=True)
class Percentiles:
    mean: Estimate
    p50: Estimate
    p90: Estimate
    p99: Estimate


def per_token_percentiles(energy: tuple[Estimate, ...], tokens: tuple[int, ...]) -> Percentiles:
    """Distribution of per-request J/token (requests with no output left out); see
    `percentile`."""
    per_token = sorted(
        (e / n for e, n in zip(energy, tokens, strict=True) if n > 0), key=lambda e: e.value
    )
    if not per_token:
        raise ValueError("no request generated a token")
    mean = Estimate(0.0)
    for e in per_token:
        mean = mean + e
    return Percentiles(
        mean=mean / len(per_token),
        p50=percentile(per_token, 0.50),
        p90=percentile(per_token, 0.90),
        p99=percentile(per_token, 0.99),
    )


def percentile(ordered: list[Estimate], q: float) -> Estimate:
    """The ``q`` quantile of estimates sorted by value, interpolated between neighbours.

    The true values may sort differently, but a quantile only grows when any value grows: with
    each truth within its value +/- its expanded uncertainty U, the true quantile lies between
    the quantile of (value - U) and that of (value + U). Its uncertainty is the wider side of
    that envelope, made of the interpolated neighbours' own sources (scaled to it), so a few
    uncertain requests far from the quantile no longer widen it."""
    point = interpolate(ordered, q)

    def bound(sign: float) -> float:
        moved = sorted(e.value + sign * e.expanded() for e in ordered)
        position = (len(moved) - 1) * q
        low = int(position)
        high = min(low + 1, len(moved) - 1)
        return moved[low] + (moved[high] - moved[low]) * (position - low)

    half = max(point.value - bound(-1.0), bound(1.0) - point.value, 0.0)
    own = point.expanded()
    if half == 0.0:
        return Estimate(point.value)
    if own > 0:
        return Estimate(point.value, {s: c * half / own for s, c in point.terms.items()})
    widest = max(ordered, key=lambda e: e.std())  # the neighbours are exact, others are not
    scale = half / widest.expanded()
    return Estimate(point.value, {s: c * scale for s, c in widest.terms.items()})


def steady_state(phases: PhaseSplit, tokens: tuple[int, ...]) -> tuple[Estimate, list[Estimate]]:
    """ML.ENERGY's figure: decode J/token (prefill's first tokens excluded) x output tokens."""
    decode_tokens = sum(tokens) - len(tokens)
    if decode_tokens <= 0:
        raise ValueError("no decoding step")
    per_token = phases.decode / decode_tokens
    return per_token, [per_token * n for n in tokens]
