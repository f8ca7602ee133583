"""A scripted NVML: pynvml's function surface over GPUs whose behaviour each test sets.

It raises pynvml's own error classes (so the adapter's error mapping is exercised for real)
and models what makes NVML hard to measure with. By default a `FakeGpu` is the *ideal* sensor
the first tests were written against; each realistic behaviour is switched on by a field (or
all of them at once by `realistic_sensor`):

- **The energy counter** advances in steps every ``counter_period_s`` (100 ms by default) at
  a phase of its own (``counter_phase_s``), so a read lags the truth by up to one period. With
  ``counter_sensed_fraction`` < 1 each update integrates only the last part of its period and
  scales it up to the whole period: the part-time sensing of A100/H100 (Yang et al., SC24,
  about 25%). A workload periodic near the period then reads high or low by its phase.
- **The instant power field** (``NVML_FI_DEV_POWER_INSTANT``) is, with ``instant_refresh_s``
  set, a value refreshed every ~100 ms (at ``instant_phase_s``) that holds the mean of a short
  window (``instant_window_s``, ~25 ms) ending ``instant_lag_s`` before the refresh, plus its
  own noise (``instant_noise_w``). Without it
  the field is the exact power now (the old ideal). The field's ``timestamp`` is the refresh.
- **The averaged field** (``nvmlDeviceGetPowerUsage``) is a moving average over
  ``average_window_s`` (1 s), refreshed every ``average_refresh_s`` when that is set.
- **Faults**: fields can answer NotSupported for good (``unsupported``) or any error for good
  (``errors``), or from one time to another (``failing``: a burst, or a field that dies);
  transiently, each read of a query can fail with some probability (``flaky``:
  NotSupported, Unknown, Timeout...) or answer 0 (``zero_readings``), drawn from a seeded
  generator so a run is reproducible. A driver can predate a query (``old_driver``), the counter
  can reset (``counter_reset_at_s``), the GPU can be lost (``lost_at_s``), another process can
  appear (``foreign_pids``).
- **Calibration**: ``sensor_gain`` scales every reading (a sensor within its stated accuracy
  is still off by some fixed factor).
- **Temperature** rises linearly (``temperature_c``) or follows a trace (``temperature_trace``,
  e.g. a GPU cooling after load).

Every GPU of a multi-GPU `FakeNvml` has its own phases. Time is ``clock() - t0`` where ``t0``
is the clock at ``nvmlInit``; with the default clock a fake used by a real meter in a real
child process follows real time. Everything is a picklable dataclass so a meter holding one
pickles into the experiment's child process.
"""

from __future__ import annotations

import bisect
import ctypes
import dataclasses
import functools
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pynvml
from llem_client import DeviceInfo, EnergyConfig
from llem_service.energy.base import MeterError, MeterProbe, MeterRecord, MeterSession
from llem_service.energy.meter import NvmlEnergyMeter, NvmlSession
from llem_service.energy.sensors import SensorTable

from tests.power_profiles import LiveProfile, PowerProfile

__all__ = [
    "FakeGpu",
    "FakeNvml",
    "LiveProfile",
    "ManualClock",
    "PowerProfile",
    "ProcessSchedule",
    "ScriptedMeter",
    "ScriptedSession",
    "realistic_sensor",
]


class ProcessSchedule:
    """Processes a simulated run starts as it goes: `add` a process for a span of fake time.
    Compared by identity, so a `FakeGpu` holding one stays hashable."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, float, float, int]] = []

    def add(self, pid: int, from_s: float, until_s: float, used_bytes: int) -> None:
        self.entries.append((pid, from_s, until_s, used_bytes))


#: Queries a `FakeGpu` fault can name: the NVML call each stands for.
Query = Literal[
    "energy",
    "power_average",
    "field_values",
    "power_instant",
    "temperature",
    "clock",
    "utilization",
    "memory",
    "clock_events",
    "power_limit",
    "persistence",
    "processes",
    "violation",
    "mig_mode",
    "virtualization",
    "compute_capability",
]


@dataclass(frozen=True)
class FakeGpu:
    """One scripted GPU. Times are seconds since ``nvmlInit``; see the module docstring."""

    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    name: str = "Fake H100"
    profile: PowerProfile | LiveProfile = field(default_factory=PowerProfile)
    counter_period_s: float = 0.1
    counter_start_mj: int = 5_000_000
    average_window_s: float = 1.0
    unsupported: frozenset[str] = frozenset()
    errors: tuple[tuple[str, int], ...] = ()  # (query, NVML error code) that always fail
    old_driver: bool = False  # before R535: no nvmlDeviceGetCurrentClocksEventReasons
    # Faults on cue, across processes: while the file ``cue_file`` exists, the GPU is lost
    # (``cue="lost"``) or its power readings answer NotSupported (``cue="power_not_supported"``).
    cue_file: str | None = None
    cue: Literal["lost", "power_not_supported"] = "lost"
    counter_reset_at_s: float | None = None
    lost_at_s: float | None = None
    foreign_pids: tuple[int, ...] = ()
    foreign_from_s: float = 0.0
    busy_above_w: float = 150.0
    temperature_c: tuple[int, float] = (40, 0.0)  # (at t=0, degrees per second)
    clock_event_reasons: int = 0
    power_limit_mw: int = 700_000
    persistence: int = 1
    memory_total_bytes: int = 80 * 2**30
    # -- the realistic sensor (every default is the ideal sensor) ------------------------------
    counter_phase_s: float = 0.0  # counter updates at phase + k x period
    counter_sensed_fraction: float = 1.0  # part-time sensing: the sensed tail of each period
    instant_refresh_s: float | None = None  # None: instant power is the exact power now
    instant_window_s: float = 0.025  # each refresh holds the mean of this window...
    instant_lag_s: float = 0.0  # ...ending this long before the refresh
    instant_phase_s: float = 0.0
    average_refresh_s: float | None = None  # None: the 1-s average moves continuously
    # Transient faults: each read of ``query`` fails with NVML ``code`` with ``probability``.
    flaky: tuple[tuple[str, float, int], ...] = ()
    zero_readings: tuple[tuple[str, float], ...] = ()  # (query, probability) reads of 0
    seed: int = 0  # of the transient faults' generator
    temperature_trace: tuple[tuple[float, float], ...] = ()  # (t_s, °C), piecewise linear
    driver: str | None = None  # overrides FakeNvml.driver (a driver change between runs)
    # -- what the acquisition reads beyond power (issue 11) ------------------------------------
    # Cumulative violation time (nvmlDeviceGetViolationStatus): (NVML_PERF_POLICY_*, fraction
    # of the time clocks are held down by it). Policies not listed follow clock_event_reasons
    # (all the time when its bits are set); add "violation" to ``unsupported`` for a GPU that
    # answers NotSupported.
    violations: tuple[tuple[int, float], ...] = ()
    mig_mode: int | None = None  # None: nvmlDeviceGetMigMode answers NotSupported (pre-Ampere)
    mig_instances: tuple[str, ...] = ()  # UUIDs (MIG-...) of this GPU's MIG instances
    virtualization_mode: int = 0  # NVML_GPU_VIRTUALIZATION_MODE_*: 2 is a vGPU guest
    compute_capability: tuple[int, int] = (9, 0)
    max_sm_clock_mhz: int = 1980
    # Processes that come and go: (pid, from_s, until_s, used GPU memory in bytes).
    processes: tuple[tuple[int, float, float, int], ...] = ()
    # The first ``n`` reads of a query fail with NVML ``code``: (query, n, code), e.g. a field
    # that answers NotSupported once when first polled and then works.
    fail_first: tuple[tuple[str, int, int], ...] = ()
    # Reads of a query fail with NVML ``code`` while fake time is in ``[from_s, until_s)``:
    # (query, from_s, until_s, code), e.g. a burst of Unknown from the counter, or the instant
    # field that stops answering for good (``until_s=math.inf``).
    failing: tuple[tuple[str, float, float, int], ...] = ()
    # Processes a simulated run starts as it goes (a `ProcessSchedule` it appends to).
    live_processes: ProcessSchedule | None = None
    sensor_gain: float = 1.0  # calibration error: every reading is gain x the truth
    instant_noise_w: float = 0.0  # the instant field's own noise, per refresh (std, watts)

    # -- the counter --------------------------------------------------------------------------

    def _last_update_s(self, t: float) -> float:
        """Time of the counter's last update at or before ``t`` (may be before 0)."""
        period, phase = self.counter_period_s, self.counter_phase_s % self.counter_period_s
        return phase + math.floor((t - phase) / period + 1e-9) * period

    def _sensed_j(self, t0: float, t1: float) -> float:
        """Energy the counter credits for updates in ``(t0, t1]``: exact when the whole period
        is sensed, else each update's sensed tail scaled to the period."""
        t0, t1 = max(t0, 0.0), max(t1, 0.0)
        if t1 <= t0:
            return 0.0
        fraction = self.counter_sensed_fraction
        if fraction >= 1.0:
            return self.profile.energy_j(self._last_update_s(t0), self._last_update_s(t1))
        period = self.counter_period_s
        total, u = 0.0, self._last_update_s(t0) + period
        last = self._last_update_s(t1)
        while u <= last + 1e-12:
            sensed = fraction * period
            total += self.profile.energy_j(u - sensed, u) / fraction
            u += period
        return total

    def counter_mj(self, t: float) -> int:
        gain = self.sensor_gain
        if self.counter_reset_at_s is not None and t >= self.counter_reset_at_s:
            return round(gain * self._sensed_cached(self.counter_reset_at_s, t) * 1e3)
        return self.counter_start_mj + round(gain * self._sensed_cached(0.0, t) * 1e3)

    def _sensed_cached(self, t0: float, t: float) -> float:
        # Part-time sensing sums one integral per update: remember the running total so a long
        # scripted run does not sum from 0 at every read.
        if self.counter_sensed_fraction >= 1.0:
            return self._sensed_j(t0, t)
        cache: dict[float, tuple[float, float]] = self._counter_cache
        last = self._last_update_s(t)
        done_to, done_j = cache.get(t0, (t0, 0.0))
        if last < done_to:
            return self._sensed_j(t0, t)
        total = done_j + self._sensed_j(done_to, last)
        cache[t0] = (last, total)
        return total

    @functools.cached_property
    def _counter_cache(self) -> dict[float, tuple[float, float]]:
        return {}

    # -- the power fields ---------------------------------------------------------------------

    def instant_refresh_at(self, t: float) -> float:
        """When the instant field last refreshed (``t`` itself for the ideal field)."""
        if self.instant_refresh_s is None:
            return t
        period, phase = self.instant_refresh_s, self.instant_phase_s % self.instant_refresh_s
        return phase + math.floor((t - phase) / period + 1e-9) * period

    def instant_mw(self, t: float) -> int:
        if self.instant_refresh_s is None:
            return int(self.sensor_gain * self.profile.power_w(t) * 1e3)
        refresh = self.instant_refresh_at(t)
        end = refresh - self.instant_lag_s
        watts = self.sensor_gain * self.profile.mean_w(end - self.instant_window_s, end)
        if self.instant_noise_w:
            # the same noise for every read of one refresh: it is one reading
            k = round(refresh / self.instant_refresh_s)
            watts += random.Random(f"{self.seed}:{self.uuid}:{k}").gauss(0.0, self.instant_noise_w)
        return round(watts * 1e3)

    def average_mw(self, t: float) -> int:
        if self.average_refresh_s is not None:
            t = math.floor(t / self.average_refresh_s + 1e-9) * self.average_refresh_s
        window = min(self.average_window_s, t) if t > 0 else 0.0
        gain = self.sensor_gain
        if window <= 0:
            return int(gain * self.profile.power_w(0.0) * 1e3)
        return round(gain * self.profile.energy_j(t - window, t) / window * 1e3)

    def temperature_at(self, t: float) -> int:
        trace = self.temperature_trace
        if not trace:
            start, slope = self.temperature_c
            return int(start + slope * t)
        times = [p[0] for p in trace]
        i = bisect.bisect_right(times, t)
        if i == 0:
            return round(trace[0][1])
        if i >= len(trace):
            return round(trace[-1][1])
        (ta, ca), (tb, cb) = trace[i - 1], trace[i]
        return round(ca + (cb - ca) * (t - ta) / (tb - ta))


def realistic_sensor(gpu: FakeGpu, rng: random.Random, *, part_time: bool = False) -> FakeGpu:
    """``gpu`` with a sensor as A100/H100 behave (MEASUREMENT.md): counter and instant field
    refreshing every ~100 ms at random phases, the instant field holding a 25 ms mean with up
    to 20 ms of lag, the 1-s average refreshing every 100 ms. ``part_time`` makes the counter
    integrate only the same 25 ms of each period (the sensed windows of both fields align)."""
    period = gpu.counter_period_s
    phase = rng.uniform(0.0, period)
    lag = rng.uniform(0.0, 0.02)
    return dataclasses.replace(
        gpu,
        counter_phase_s=phase,
        counter_sensed_fraction=0.25 if part_time else 1.0,
        instant_refresh_s=period,
        instant_window_s=0.025,
        instant_lag_s=0.0 if part_time else lag,
        instant_phase_s=phase if part_time else rng.uniform(0.0, period),
        average_refresh_s=period,
        instant_noise_w=1.0,
        seed=rng.randrange(2**31),
    )


@dataclass
class _Handle:
    gpu: FakeGpu
    mig: str | None = None  # a MIG instance of ``gpu``: NVML meters only the whole GPU


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int | None


@dataclass
class FakeNvml:
    """pynvml's surface over ``gpus``. Call it to get itself (the meter's ``library`` factory).

    ``init_error`` makes ``nvmlInit`` fail with that NVML code (e.g. driver not loaded).
    """

    gpus: Sequence[FakeGpu] = (FakeGpu(),)
    clock: Callable[[], float] = time.perf_counter
    init_error: int | None = None
    driver: str = "550.54.15"
    own_pid_on_gpu: bool = True
    calls: int = 0
    # Wall clock behind the field values' timestamps (microseconds since 1970, as NVML's).
    wall: Callable[[], float] = time.time
    _t0: float | None = None
    _wall0: float | None = None
    _inits: int = 0  # NVML counts nvmlInit/nvmlShutdown pairs
    # The process that initialised NVML first: the one holding the GPU (the experiment), which
    # ``own_pid_on_gpu`` lists, also when the sampler's process asks.
    _owner_pid: int | None = None
    _rngs: dict[str, random.Random] = field(default_factory=dict)
    _reads: dict[str, int] = field(default_factory=dict)  # reads per query, for fail_first

    NVMLError = pynvml.NVMLError

    def __call__(self) -> FakeNvml:
        return self

    # -- time and failure ---------------------------------------------------------------------

    def now(self) -> float:
        if self._t0 is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        return self.clock() - self._t0

    def _gpu(self, handle: _Handle, what: str) -> tuple[FakeGpu, float]:
        self.calls += 1
        t = self.now()
        gpu = handle.gpu
        if handle.mig is not None and what not in _MIG_QUERIES:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        cued = gpu.cue_file is not None and os.path.exists(gpu.cue_file)
        if (gpu.lost_at_s is not None and t >= gpu.lost_at_s) or (cued and gpu.cue == "lost"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if cued and what in {"power_average", "field_values"}:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if what in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        for query, code in gpu.errors:
            if query == what:
                raise pynvml.NVMLError(code)
        transient = self._transient_error(gpu, what)
        if transient is not None:
            raise pynvml.NVMLError(transient)
        self._fail_first(gpu, what)
        failing = self._failing(gpu, what, t)
        if failing is not None:
            raise pynvml.NVMLError(failing)
        return gpu, t

    @staticmethod
    def _failing(gpu: FakeGpu, what: str, t: float) -> int | None:
        for query, from_s, until_s, code in gpu.failing:
            if query == what and from_s <= t < until_s:
                return code
        return None

    def _fail_first(self, gpu: FakeGpu, what: str) -> None:
        for query, n, code in gpu.fail_first:
            if query == what:
                key = f"{gpu.uuid}:{what}"
                self._reads[key] = self._reads.get(key, 0) + 1
                if self._reads[key] <= n:
                    raise pynvml.NVMLError(code)

    def _rng(self, gpu: FakeGpu) -> random.Random:
        """The GPU's own generator of transient faults (seeded: a run is reproducible)."""
        rng = self._rngs.get(gpu.uuid)
        if rng is None:
            rng = self._rngs[gpu.uuid] = random.Random(f"{gpu.seed}:{gpu.uuid}")
        return rng

    def _transient_error(self, gpu: FakeGpu, what: str) -> int | None:
        for query, probability, code in gpu.flaky:
            if query == what and self._rng(gpu).random() < probability:
                return code
        return None

    def _zero(self, gpu: FakeGpu, what: str) -> bool:
        return any(
            query == what and self._rng(gpu).random() < probability
            for query, probability in gpu.zero_readings
        )

    # -- system -------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        # Reference-counted, as NVML's: a second initialisation (another session, or a copy
        # pickled into the sampler's process while this one is open) keeps the time origin.
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        if self._t0 is None:
            self._t0 = self.clock()
            self._wall0 = self.wall()
            self._owner_pid = os.getpid()
        self._inits += 1

    @property
    def initialised(self) -> int:
        """nvmlInit calls not yet matched by nvmlShutdown."""
        return self._inits

    def nvmlShutdown(self) -> None:
        self._inits = max(0, self._inits - 1)
        if self._inits == 0:
            self._t0 = None
            self._wall0 = None
            self._owner_pid = None

    def wall_us(self, t: float) -> int:
        """NVML's timestamp (microseconds since 1970) of fake time ``t``."""
        assert self._wall0 is not None
        return round(self._wall0 * 1e6) + round(t * 1e6)

    def nvmlSystemGetDriverVersion(self) -> str:
        overrides = {g.driver for g in self.gpus if g.driver is not None}
        return overrides.pop() if overrides else self.driver

    def nvmlSystemGetNVMLVersion(self) -> str:
        return f"12.{self.driver}"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        self.now()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        return _Handle(self.gpus[index])

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == wanted:
                return _Handle(gpu)
            if wanted in gpu.mig_instances:
                return _Handle(gpu, mig=wanted)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    # -- device -------------------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        return list(self.gpus).index(handle.gpu)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return handle.mig or handle.gpu.uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return f"{handle.gpu.name} MIG" if handle.mig else handle.gpu.name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        gpu, t = self._gpu(handle, "memory")
        used = 2**30 if gpu.profile.power_w(t) > gpu.busy_above_w else 2**28
        return pynvml.c_nvmlMemory_t(
            total=gpu.memory_total_bytes, free=gpu.memory_total_bytes - used, used=used
        )

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        gpu, t = self._gpu(handle, "energy")
        return 0 if self._zero(gpu, "energy") else gpu.counter_mj(t)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu, t = self._gpu(handle, "power_average")
        return 0 if self._zero(gpu, "power_average") else gpu.average_mw(t)

    def nvmlDeviceGetFieldValues(self, handle: _Handle, field_ids: list[int]) -> list[Any]:
        gpu, t = self._gpu(handle, "field_values")
        out = []
        for field_id in field_ids:
            value = pynvml.c_nvmlFieldValue_t()
            value.fieldId = field_id
            value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT and "power_instant" not in (
                gpu.unsupported
            ):
                # A field's own return code can fail transiently while the call succeeds.
                code = self._transient_error(gpu, "power_instant")
                try:
                    self._fail_first(gpu, "power_instant")
                except pynvml.NVMLError as exc:
                    code = exc.value
                code = self._failing(gpu, "power_instant", t) or code
                value.nvmlReturn = pynvml.NVML_SUCCESS if code is None else code
                value.timestamp = self.wall_us(gpu.instant_refresh_at(t))
                zero = self._zero(gpu, "power_instant")
                value.value.uiVal = 0 if zero else gpu.instant_mw(t)
            out.append(value)
        return out

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        gpu, t = self._gpu(handle, "temperature")
        return gpu.temperature_at(t)

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock: int) -> int:
        gpu, t = self._gpu(handle, "clock")
        return 1980 if gpu.profile.power_w(t) > gpu.busy_above_w else 345

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu, t = self._gpu(handle, "utilization")
        busy = 100 if gpu.profile.power_w(t) > gpu.busy_above_w else 0
        return pynvml.c_nvmlUtilization_t(gpu=busy, memory=busy // 2)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        if handle.gpu.old_driver:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        gpu, _ = self._gpu(handle, "clock_events")
        return gpu.clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: _Handle) -> int:
        gpu, _ = self._gpu(handle, "clock_events")
        return gpu.clock_event_reasons

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        gpu, _ = self._gpu(handle, "power_limit")
        return gpu.power_limit_mw

    def nvmlDeviceGetPersistenceMode(self, handle: _Handle) -> int:
        gpu, _ = self._gpu(handle, "persistence")
        return gpu.persistence

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[_Process]:
        gpu, t = self._gpu(handle, "processes")
        owner = self._owner_pid or os.getpid()
        procs = [_Process(owner, 2**30)] if self.own_pid_on_gpu else []
        if t >= gpu.foreign_from_s:
            procs += [_Process(pid, 2**29) for pid in gpu.foreign_pids]
        scheduled = [*gpu.processes, *(gpu.live_processes.entries if gpu.live_processes else ())]
        procs += [_Process(pid, used) for pid, a, b, used in scheduled if a <= t < b]
        return procs

    # -- what the acquisition reads beyond power (issue 11) ------------------------------------

    def nvmlDeviceGetViolationStatus(self, handle: _Handle, policy: int) -> Any:
        gpu, t = self._gpu(handle, "violation")
        # Unless scripted, the counters agree with the clock-event reasons the GPU reports.
        held = {
            pynvml.NVML_PERF_POLICY_POWER: 0x04,
            pynvml.NVML_PERF_POLICY_THERMAL: 0x20 | 0x40,
            pynvml.NVML_PERF_POLICY_TOTAL_APP_CLOCKS: 0x04 | 0x08 | 0x20 | 0x40 | 0x80,
        }
        derived = 1.0 if gpu.clock_event_reasons & held.get(policy, 0) else 0.0
        fraction = dict(gpu.violations).get(policy, derived)
        return pynvml.c_nvmlViolationTime_t(
            referenceTime=self.wall_us(t), violationTime=round(fraction * max(t, 0.0) * 1e9)
        )

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        gpu, _ = self._gpu(handle, "mig_mode")
        if gpu.mig_mode is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceIsMigDeviceHandle(self, handle: _Handle) -> Any:
        return ctypes.c_uint(handle.mig is not None)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: _Handle) -> _Handle:
        if handle.mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(handle.gpu)

    def nvmlDeviceGetVirtualizationMode(self, handle: _Handle) -> int:
        gpu, _ = self._gpu(handle, "virtualization")
        return gpu.virtualization_mode

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        gpu, _ = self._gpu(handle, "compute_capability")
        return gpu.compute_capability

    def nvmlDeviceGetMaxClockInfo(self, handle: _Handle, clock: int) -> int:
        gpu, _ = self._gpu(handle, "clock")
        return gpu.max_sm_clock_mhz


#: What NVML answers for a MIG instance's handle; everything else is NotSupported there.
_MIG_QUERIES = frozenset({"memory", "processes", "mig_mode", "compute_capability"})


class ManualClock:
    """A clock that moves only when told (``advance``), for deterministic arithmetic tests."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        """Wall-clock time (seconds since 1970) moving with this clock."""
        return self.t + 1.7e9

    def advance(self, seconds: float) -> None:
        self.t += seconds

    sleep = advance


class ScriptedSession:
    """A real `NvmlSession` over fake GPUs, driven by hand: a manual clock, and sampling
    rounds taken by `run_for` / `advance` rather than by the sampler's thread. Times it returns
    are the fake GPUs' (seconds since ``nvmlInit``), so they index the power profiles directly.

    The meter's ``sleep`` (counter probe, baseline waits) moves the manual clock, sampling on
    the way once the session is open, so code that sleeps in the session sees a live timeline.
    """

    def __init__(
        self,
        gpus: Sequence[FakeGpu],
        *,
        interval_ms: float | None = 10.0,
        powercap_root: str | None = None,
        sensors: SensorTable | None = None,
    ) -> None:
        self.clock = ManualClock()
        self.lib = FakeNvml(gpus=gpus, clock=self.clock, wall=self.clock.wall)
        self._next_sample: float | None = None
        self._open = False
        meter = NvmlEnergyMeter(
            library=self.lib,
            clock=self.clock,
            sleep=self.sleep,
            wall=self.clock.wall,
            sampler="manual",
            powercap_root=powercap_root,
            sensors=sensors or SensorTable(),
        )
        session = meter.open([g.uuid for g in gpus], EnergyConfig(sample_interval_ms=interval_ms))
        assert isinstance(session, NvmlSession)
        self.session = session
        self._open = True
        assert self.lib._t0 is not None
        self.t0 = self.lib._t0
        self.gpus = tuple(gpus)

    def now(self) -> float:
        return self.clock() - self.t0

    def at(self, fake_time: float) -> float:
        """The session clock at a fake-GPU time."""
        return self.t0 + fake_time

    def _sample(self) -> None:
        """One sampling round, as the sampler would take it now."""
        self.session.sampler.sample_once()

    def run_for(self, seconds: float) -> None:
        """Sample every interval for ``seconds``, starting with a sample now."""
        interval = self.session.sampler.interval_s
        end = self.clock() + seconds
        while self.clock() < end - 1e-12:
            self._sample()
            self.clock.advance(min(interval, end - self.clock()))

    def run_until(self, fake_time: float) -> None:
        """Sample until the fake GPUs' clock reads ``fake_time``."""
        if fake_time < self.now():
            raise ValueError(f"already past {fake_time} s (now {self.now()} s)")
        self.run_for(fake_time - self.now())

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, sampling on a fixed grid of the sampling interval
        however the time is cut (many short advances sample no more often than one long one)."""
        interval = self.session.sampler.interval_s
        end = self.clock() + seconds
        while True:
            if self._next_sample is None or self._next_sample <= self.clock() + 1e-9:
                self._sample()
                base = self.clock() if self._next_sample is None else self._next_sample
                self._next_sample = max(base + interval, self.clock() + 1e-9)
            if self.clock() >= end - 1e-9:
                return
            self.clock.t = min(self._next_sample, end)

    def sleep(self, seconds: float) -> None:
        """The meter's sleep: time passes, sampled once the session is open."""
        if self._open:
            self.advance(seconds)
        else:
            self.clock.advance(seconds)

    def mark(self, label: str) -> float:
        self.session.mark(label)
        return self.now()

    def close(self) -> MeterRecord:
        return self.session.close()

    def meter(self) -> ScriptedMeter:
        """An `EnergyMeter` whose sessions are this one: `run_experiment` in simulated time."""
        return ScriptedMeter(self)


class ScriptedMeter:
    """`EnergyMeter` over a `ScriptedSession`. `open` hands out the scripted session itself
    (its sampling interval, not the config's), whose ``start`` does nothing: sampling follows
    the manual clock (`ScriptedSession.advance`). Everything else is the real `NvmlSession`."""

    name = "nvml"

    def __init__(self, scripted: ScriptedSession) -> None:
        self.scripted = scripted

    def probe(self) -> MeterProbe:
        # Not the real probe: it would initialise NVML again and move the fake's time origin.
        devices = tuple(
            DeviceInfo(index=i, name=g.name, uuid=g.uuid, memory_total_bytes=g.memory_total_bytes)
            for i, g in enumerate(self.scripted.gpus)
        )
        return MeterProbe(name=self.name, available=True, devices=devices)

    def open(
        self,
        device_uuids: Sequence[str],
        plan: EnergyConfig,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> MeterSession:
        known = {g.uuid for g in self.scripted.gpus}
        unknown = set(device_uuids) - known
        if unknown:
            raise ValueError(f"the scripted session has no GPU {sorted(unknown)}")
        return _ScriptedMeterSession(self.scripted.session)


class _ScriptedMeterSession:
    """The real session, less its sampler thread: ``start`` is a no-op; every other attribute
    is the session's own."""

    def __init__(self, session: NvmlSession) -> None:
        self._session = session

    def start(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
