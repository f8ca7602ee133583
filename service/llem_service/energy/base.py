"""The `EnergyMeter` seam and the records a metering session produces.

A meter is built in the server process (where `EnergyMeter.probe` answers ``/v1/info``) and
pickled into the experiment's child process, where `EnergyMeter.open` starts a session on the
GPUs the experiment uses. Device work belongs in the methods, never in ``__init__``.

The session's clock is ``time.perf_counter`` unless a test injects another; the backend stamps
its batches with the same clock, so spans and samples share one time axis (seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

# The record's timeline lives with the sampler's file format; re-exported for its users.
from llem_service.energy.samples import TIMELINE_COLUMNS, Timeline
from llem_service.energy.sensors import SensorSpec, SensorTable

if TYPE_CHECKING:
    # Annotations only: the sampler's process imports this module and starts faster without
    # the contract's pydantic models.
    from llem_client import DeviceInfo, EnergyConfig

    from llem_service.energy.acquired import AcquisitionRecord

__all__ = [
    "TIMELINE_COLUMNS",
    "Baseline",
    "CounterMark",
    "DeviceMeta",
    "DeviceNotMetered",
    "EnergyMeter",
    "MeterError",
    "MeterProbe",
    "MeterRecord",
    "MeterSession",
    "Timeline",
]


class MeterError(Exception):
    """The meter failed (lost device, driver error); the experiment fails with this message."""


class DeviceNotMetered(MeterError):
    """The GPU an experiment runs on cannot be metered here (a MIG instance, which NVML meters
    only as its parent GPU; a device NVML does not know; a vGPU that answers neither counter
    nor power). The message says why; the experiment runs on, with energy null and this
    reason."""


@dataclass(frozen=True)
class MeterProbe:
    """What a meter can see: whether it can measure, why not if it cannot, and the devices."""

    name: str
    available: bool
    reason: str | None = None
    devices: tuple[DeviceInfo, ...] = ()
    cuda_device_order: str | None = None  # the order ``devices`` are numbered in
    device_order_note: str | None = None  # set when that order is approximated


@dataclass(frozen=True)
class Baseline:
    """Idle power of one GPU, measured with the CUDA context up and no work queued.

    Attributes:
        device_uuid: The GPU.
        power_w: Mean power over the idle window, watts.
        random_std_w: Standard uncertainty of ``power_w`` from the window's own quantisation.
        duration_s: Length of the idle window, seconds.
        measured_at: Wall-clock time of the measurement, seconds since the epoch.
        method: How it was measured, in words.
        warnings: ``(code, message)`` pairs (e.g. the GPU was busy).
        settle_s: How long idle power was waited for before the window, seconds.
        settled: False when the wait hit its cap with power still moving.
        trend_w_per_s: Slope of idle power over the window (None without power readings).
        drift_bound_w: Bound of how far idle power may still move (trend x horizon).
        temperature_c: Mean GPU temperature over the window.
        temperature_trend_c_per_s: Its slope.
        power_limit_w: Enforced power limit when measured.
        driver_version: NVIDIA driver when measured.
        reuse_bound_w: Set when reused: how far idle power may have moved since, from the
            GPU's temperature now against then (`baseline.reuse_bound_w`).
    """

    device_uuid: str
    power_w: float
    random_std_w: float
    duration_s: float
    measured_at: float
    method: str
    warnings: tuple[tuple[str, str], ...] = ()
    settle_s: float = 0.0
    settled: bool = True
    trend_w_per_s: float | None = None
    drift_bound_w: float = 0.0
    temperature_c: float | None = None
    temperature_trend_c_per_s: float | None = None
    power_limit_w: float | None = None
    driver_version: str | None = None
    reuse_bound_w: float = 0.0


@dataclass(frozen=True)
class DeviceState:
    """A GPU's state now, as far as the baseline reuse rule needs it."""

    temperature_c: float | None
    power_limit_w: float | None


@dataclass(frozen=True)
class DeviceMeta:
    """A metered GPU as NVML described it when the session opened."""

    uuid: str
    name: str
    nvml_index: int
    memory_total_bytes: int
    power_limit_w: float | None
    persistence_mode: bool | None
    has_energy_counter: bool
    counter_update_period_s: float | None
    power_field: Literal["instant", "average"] | None
    power_refresh_s: float | None = None  # the instant field's probed refresh period
    compute_processes: tuple[tuple[int, int | None], ...] = ()
    counter_absent_reason: str | None = None  # why there is no counter (vGPU, pre-Volta...)
    sensor: SensorSpec = field(default_factory=lambda: SensorTable().lookup(""))


@dataclass(frozen=True)
class CounterMark:
    """Every GPU's energy counter read at one instant (after the device was synchronised).

    Attributes:
        label: What the instant is (``load_start``, ``warmup_end``, ``repeat_0_end``, ...).
        t_s: Session clock, seconds.
        energy_mj: Counter per GPU UUID, millijoules; ``None`` for a GPU without one.
        foreign_pids: Processes other than the experiment's seen on each GPU at this instant.
        violations_ns: Each GPU's cumulative throttle time by cause (`throttle.read_violations`).
        host_uj: The host's RAPL counters (raw microjoules) by zone, where readable.
        host_t_s: When those were read (session clock, taken right before the read: the
            GPUs' reads come first, so it is later than ``t_s``).
        read_delay_s: How long after ``t_s`` a GPU's counter value was read, where a
            transient error made the read be tried again (a few milliseconds at most). A
            GPU whose counter failed every try has ``None`` in ``energy_mj`` here.
    """

    label: str
    t_s: float
    energy_mj: dict[str, int | None]
    foreign_pids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    violations_ns: dict[str, dict[str, int | None]] = field(default_factory=dict)
    host_uj: dict[str, int] = field(default_factory=dict)
    host_t_s: float | None = None
    read_delay_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MeterRecord:
    """Everything a session measured: the raw material of the result's energy section."""

    devices: tuple[DeviceMeta, ...]
    marks: tuple[CounterMark, ...]
    timeline: Timeline
    sample_interval_s: float
    round_starts_s: tuple[float, ...]
    round_costs_s: tuple[float, ...]
    driver_version: str | None
    nvml_version: str | None
    cuda_driver_version: str | None
    warnings: tuple[tuple[str, str], ...] = ()
    acquisition: AcquisitionRecord | None = None  # how the readings were taken (issue 11)

    def mark(self, label: str) -> CounterMark:
        for mark in self.marks:
            if mark.label == label:
                return mark
        raise KeyError(label)


class MeterSession(Protocol):
    """An open metering session on a set of GPUs."""

    @property
    def metas(self) -> tuple[DeviceMeta, ...]:
        """The metered GPUs, as NVML described them when the session opened."""
        ...

    @property
    def driver_version(self) -> str | None: ...

    def start(self) -> None:
        """Start the power sampler."""
        ...

    def mark(self, label: str) -> None:
        """Read every GPU's energy counter now; raises `MeterError` if the meter failed."""
        ...

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass on the session's clock (the sampler keeps sampling)."""
        ...

    def snapshot(self) -> MeterRecord:
        """What the session has recorded so far, without stopping it."""
        ...

    def counter_marks(self) -> tuple[CounterMark, ...]:
        """The counter marks so far: what the session holds already, read without a round
        trip to the sampler (cheap enough to sit between repeats)."""
        ...

    def device_state(self) -> dict[str, DeviceState]:
        """Each GPU's temperature and power limit now (None where unreadable)."""
        ...

    def close(self) -> MeterRecord:
        """Stop sampling and return the record. Safe to call after a failure."""
        ...


@runtime_checkable
class EnergyMeter(Protocol):
    """Measures the energy of the GPUs an experiment uses."""

    name: str

    def probe(self) -> MeterProbe: ...

    def open(
        self,
        device_uuids: Sequence[str],
        plan: EnergyConfig,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> MeterSession:
        """Open a session on these GPUs (their CUDA contexts are up). ``on_failure`` is called
        from the meter's own thread as soon as it fails (the next `MeterSession.mark` raises
        the same error). Raises `DeviceNotMetered` for a device it cannot measure."""
        ...
