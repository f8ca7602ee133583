"""The data the energy figures are built from, shared by the report, the warnings and the
phase, request and baseline arithmetic (so none of them imports another for its types).

Times are on the meter session's clock (seconds), which the backend's batch stamps share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: ``(code, message)``: a condition that weakens a figure and what to do about it.
Warning = tuple[str, str]


@dataclass(frozen=True)
class Span:
    """One batch on the session clock: start, first token, end (seconds)."""

    start: float
    first_token: float
    end: float


@dataclass(frozen=True)
class Batch:
    """One batch of the measured window.

    Attributes:
        span: When it ran.
        input_tokens: Prompt tokens of each request, padding excluded.
        output_tokens: Generated tokens of each request (the first comes from prefill).
        step_times_s: When each decoding step after the first token delivered its tokens
            (empty when the backend does not stream).
        repeat: Which repeat of the workload it belongs to.
    """

    span: Span
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    step_times_s: tuple[float, ...] = ()
    repeat: int = 0

    @property
    def prefill_s(self) -> float:
        return self.span.first_token - self.span.start

    @property
    def decode_s(self) -> float:
        return self.span.end - self.span.first_token


@dataclass(frozen=True)
class Work:
    """What the backend did in the measured window, batch by batch, in order."""

    batches: tuple[Batch, ...]
    repeats: int = 1
    #: The model was kept from the previous experiment, not loaded: there is no load phase.
    model_reused: bool = False

    @property
    def spans(self) -> tuple[Span, ...]:
        return tuple(b.span for b in self.batches)

    @property
    def output_tokens_per_request(self) -> tuple[int, ...]:
        return tuple(n for b in self.batches for n in b.output_tokens)

    def output_tokens_of_repeat(self, repeat: int) -> int:
        return sum(sum(b.output_tokens) for b in self.batches if b.repeat == repeat)

    @property
    def step_gaps_s(self) -> tuple[float, ...]:
        """Every gap between successive decoding steps (first token to first step included)."""
        gaps: list[float] = []
        for batch in self.batches:
            previous = batch.span.first_token
            for t in batch.step_times_s:
                gaps.append(t - previous)
                previous = t
        return tuple(gaps)


@dataclass(frozen=True)
class PrefillRun:
    """The prefill-only passes after the window, between the counter marks
    ``prefill_start`` and ``prefill_end``.

    Attributes:
        passes: Complete passes over the workload's batches.
        batch_latencies_s: Mean time of each batch across the passes, in workload order.
    """

    passes: int
    batch_latencies_s: tuple[float, ...]

    @property
    def prefill_time_per_pass_s(self) -> float:
        return sum(self.batch_latencies_s)


@dataclass(frozen=True)
class Window:
    """One GPU's counter or integrated energy over one window, before any uncertainty.

    Attributes:
        energy_j: The counter's difference, or (without one) the integral of the readings
            with every gap in them bridged by the middle of the GPU's power range.
        integrated_j: The plain integral of the readings (the cross-check).
        gap_bound_j: Without a counter: how far the bridged gaps may be off (joules).
    """

    energy_j: float
    source: Literal["nvml_energy_counter", "nvml_power_integral"]
    integrated_j: float | None
    peak_w: float | None
    counter_reset: bool
    gap_bound_j: float = 0.0

    @property
    def rel_diff(self) -> float | None:
        """(integrated - counter) / counter, when both exist."""
        if self.source != "nvml_energy_counter" or self.integrated_j is None or self.energy_j <= 0:
            return None
        return (self.integrated_j - self.energy_j) / self.energy_j
