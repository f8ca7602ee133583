"""Why a GPU's clocks were held down, by cause, as fractions of a window.

Two sources, the better first:

- NVML's **violation counters** (``nvmlDeviceGetViolationStatus``): cumulative nanoseconds the
  clocks were held down by each policy, read at every mark. Power capping, thermal limits and
  "below application clocks by anything" have one each.
- The **clock-event reasons** the sampler records every round: the share of samples with a
  cause's bit set. Hardware slowdown (``HW_SLOWDOWN``, ``HW_POWER_BRAKE``) has only this.

Only thermal and hardware slowdown mean cooling or power-delivery trouble and warn. Running
at the power limit is the normal state of a GPU at full load ("SW power cap"): it is reported
as a fact of the run, not as a fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from llem_service.energy.nvml import (
    NVML_PERF_POLICY_POWER,
    NVML_PERF_POLICY_THERMAL,
    NVML_PERF_POLICY_TOTAL_APP_CLOCKS,
    GpuDevice,
    NvmlError,
    NvmlGpuLost,
)

Cause = Literal["power_capped", "thermal", "hardware_slowdown", "clock_limited"]
CAUSES: tuple[Cause, ...] = ("power_capped", "thermal", "hardware_slowdown", "clock_limited")

#: Violation policy behind each cause that has one.
VIOLATION_POLICIES: dict[Cause, int] = {
    "power_capped": NVML_PERF_POLICY_POWER,
    "thermal": NVML_PERF_POLICY_THERMAL,
    "clock_limited": NVML_PERF_POLICY_TOTAL_APP_CLOCKS,
}

#: Clock-event reason bits behind each cause (``nvmlClocksEventReason*``).
SW_POWER_CAP = 0x04
HW_SLOWDOWN = 0x08
SW_THERMAL = 0x20
HW_THERMAL = 0x40
HW_POWER_BRAKE = 0x80
EVENT_BITS: dict[Cause, int] = {
    "power_capped": SW_POWER_CAP,
    "thermal": SW_THERMAL | HW_THERMAL,
    "hardware_slowdown": HW_SLOWDOWN | HW_POWER_BRAKE,
    "clock_limited": SW_POWER_CAP | HW_SLOWDOWN | SW_THERMAL | HW_THERMAL | HW_POWER_BRAKE,
}

#: A cooling cause above this share of the window warns.
WARN_FRACTION = 0.01

Source = Literal["violation_counter", "clock_event_samples"]


def read_violations(device: GpuDevice) -> dict[str, int | None]:
    """Cumulative violation time per cause, nanoseconds; None where NVML does not say."""
    out: dict[str, int | None] = {}
    for cause, policy in VIOLATION_POLICIES.items():
        try:
            out[cause] = device.violation_ns(policy)
        except NvmlGpuLost:
            raise
        except NvmlError:
            out[cause] = None
    return out


@dataclass(frozen=True)
class CauseFraction:
    """Share of a window the clocks were held down by one cause (None: not known here)."""

    cause: Cause
    fraction: float | None
    source: Source | None


def throttle_fractions(
    start_ns: Mapping[str, int | None],
    end_ns: Mapping[str, int | None],
    window_s: float,
    reasons: Sequence[int | None],
) -> list[CauseFraction]:
    """Each cause's share of a window: from the violation counters read at its edges where
    both reads exist, else from the clock-event reasons sampled inside it."""
    known = [r for r in reasons if r is not None]
    out = []
    for cause in CAUSES:
        a, b = start_ns.get(cause), end_ns.get(cause)
        if a is not None and b is not None and b >= a and window_s > 0:
            fraction = min(1.0, (b - a) / 1e9 / window_s)
            out.append(CauseFraction(cause, fraction, "violation_counter"))
        elif known:
            hits = sum(1 for r in known if r & EVENT_BITS[cause])
            out.append(CauseFraction(cause, hits / len(known), "clock_event_samples"))
        else:
            out.append(CauseFraction(cause, None, None))
    return out


def throttle_warnings(gpu: str, fractions: Sequence[CauseFraction]) -> list[tuple[str, str]]:
    """A warning when heat or the hardware slowed the GPU; none for power capping."""
    by_cause = {f.cause: f.fraction for f in fractions}
    hot = [
        (name, share)
        for name, share in (
            ("thermal slowdown", by_cause.get("thermal")),
            ("hardware slowdown", by_cause.get("hardware_slowdown")),
        )
        if share is not None and share >= WARN_FRACTION
    ]
    if not hot:
        return []
    said = ", ".join(f"{name} {share:.0%} of the window" for name, share in hot)
    return [
        (
            "gpu_throttled",
            f"{gpu} was slowed by {said}: its speed and energy reflect clocks held down by heat "
            "or the board's protection. Check cooling (airflow, fan speeds, inlet temperature) "
            "and power delivery, and measure again. (Running at the power limit is normal at "
            "full load and is reported in energy.acquisition, not warned about.)",
        )
    ]
