"""How a result's readings were taken, and the host's energy beside the GPUs'.

``EnergyResult.acquisition`` says how the power sampler ran, what became of each GPU's power
readings (kept, repeated, 0 W or less, failed), which fields changed during the run and why,
how much of the measured window each GPU spent throttled and by what, and every process seen
on the GPUs. ``EnergyResult.host`` gives the CPU packages' and DRAM energy over the measured
window from RAPL, or says why it could not be read.

Times called ``at_s`` count seconds from the session's first mark, as the timeseries' ``t_s``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llem_client._estimate import Estimate


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplerAcquisition(_Wire):
    """How the power sampler ran."""

    mode: Literal["process", "thread", "manual"] = Field(
        description="process: its own process (the default, no share of the workload's GIL); "
        "thread: a thread of the experiment's process."
    )
    pid: int | None = Field(default=None, description="The sampler's process.")
    samples_bytes: int = Field(ge=0, description="Samples it wrote to disk (typed columns).")
    process_poll_interval_s: float = Field(gt=0, description="How often processes were listed.")
    process_polls: int = Field(ge=0)


class PowerReadings(_Wire):
    """What became of one GPU's power readings over the session."""

    device_uuid: str
    field: Literal["instant", "average"] | None = Field(
        description="Power field at the start: instant (NVML_FI_DEV_POWER_INSTANT) or the "
        "1-s average (nvmlDeviceGetPowerUsage)."
    )
    field_reason: str = Field(description="Why that field, in words.")
    field_at_end: Literal["instant", "average"] | None = Field(
        description="Differs from field when the run changed it (see field_changes)."
    )
    refresh_period_s: float | None = Field(
        default=None, gt=0, description="Probed refresh period of the instant field."
    )
    lag_s: float | None = Field(
        default=None,
        description="Median age of an instant reading when read (NVML's timestamp to the "
        "read); the sensor's own averaging window comes on top.",
    )
    readings: int = Field(ge=0)
    kept: int = Field(ge=0, description="Fresh readings above 0 W: what is integrated.")
    repeats_dropped: int = Field(
        ge=0,
        description="Readings NVML had already given (same timestamp, or same value "
        "within the refresh period).",
    )
    nonpositive_dropped: int = Field(ge=0, description="Readings of 0 W or less.")
    failed: int = Field(ge=0, description="Failed reads: gaps in the curve, never 0 W.")
    untrusted_timestamps: int = Field(
        default=0,
        ge=0,
        description="Readings whose NVML timestamp was in the future or over 5 s old (a wall "
        "clock that jumped): placed at the time they were read instead.",
    )


class FieldChange(_Wire):
    """A field changed or given up during the run, and why."""

    at_s: float
    device_uuid: str
    field: str = Field(description="power, temperature_c, sm_clock_mhz, ...")
    before: str | None
    after: str | None = Field(description="Null when the field was given up.")
    reason: str


class ThrottleCause(_Wire):
    """Share of the measured window clocks were held down by one cause."""

    fraction: float | None = Field(default=None, ge=0, le=1, description="Null: unknown here.")
    source: Literal["violation_counter", "clock_event_samples"] | None = None


class Throttling(_Wire):
    """One GPU's throttling over the measured window, by cause. Power capping is the normal
    state at full load; thermal and hardware slowdown mean cooling or power-delivery trouble
    (they warn)."""

    device_uuid: str
    power_capped: ThrottleCause
    thermal: ThrottleCause
    hardware_slowdown: ThrottleCause
    clock_limited: ThrottleCause = Field(
        description="Below the application clocks for any reason (the causes above included)."
    )


class ProcessSeen(_Wire):
    """A process NVML listed on a metered GPU."""

    device_uuid: str
    pid: int = Field(description="As NVML lists it: the host's PID.")
    own: bool | None = Field(
        description="This experiment's process; null when that cannot be told (detection limited)."
    )
    first_seen_at: datetime
    last_seen_at: datetime
    polls: int = Field(ge=1, description="Polls (about one a second) that listed it.")
    max_used_memory_bytes: int | None = Field(default=None, ge=0)
    during_measured_window: bool


class ProcessDetection(_Wire):
    """Whether another process on a GPU would have been seen."""

    device_uuid: str
    detection: Literal["full", "limited", "unavailable"]
    reason: str


class Acquisition(_Wire):
    """How the readings behind the energy figures were taken."""

    sampler: SamplerAcquisition
    power: list[PowerReadings]
    field_changes: list[FieldChange] = Field(default_factory=list)
    throttling: list[Throttling] = Field(description="Over the measured window.")
    processes: list[ProcessSeen] = Field(default_factory=list)
    process_detection: list[ProcessDetection] = Field(default_factory=list)


class HostDomain(_Wire):
    """One RAPL zone over the measured window."""

    name: str = Field(description="package-0, dram-0, ...")
    kind: Literal["package", "dram"]
    zone: str = Field(description="The powercap zone (intel-rapl:0, intel-rapl:0:2).")
    energy_j: Estimate | None = Field(description="Null when too uncertain to publish.")
    mean_power_w: float | None = Field(ge=0, description="Null when energy_j is.")
    wraps: int = Field(ge=0, description="Counter wrap-arounds counted in the window.")


class HostEnergy(_Wire):
    """CPU package and DRAM energy over the measured window, from RAPL (powercap sysfs).

    ``available`` is false, with ``reason``, where the counters cannot be read (not root since
    CVE-2020-8694, a container without the read-only mount, no RAPL); every figure is then
    null. Each energy figure is an `Estimate` (k = 2, as every energy figure): the counters'
    update period and resolution at the edges (random) and an assumed 5% bound on RAPL's own
    estimate (systematic); null, with an ``energy_figure_unbounded`` warning, beyond
    ``energy.max_relative_uncertainty`` (and ``mean_power_w`` with it)."""

    available: bool
    reason: str | None = None
    source: Literal["rapl_powercap"] = "rapl_powercap"
    window_s: float | None = Field(default=None, ge=0)
    energy_j: Estimate | None = Field(default=None, description="Packages + DRAM.")
    cpu_energy_j: Estimate | None = Field(default=None, description="Packages.")
    dram_energy_j: Estimate | None = None
    energy_per_output_token_j: Estimate | None = None
    mean_power_w: float | None = Field(default=None, ge=0)
    domains: list[HostDomain] = Field(default_factory=list)
    method: str | None = None
