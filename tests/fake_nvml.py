"""A scripted NVML: pynvml's function surface over GPUs whose behaviour each test sets.

It raises pynvml's own error classes (so the adapter's error mapping is exercised for real)
and models what makes NVML hard to measure with:

- the energy counter advances in steps (``counter_period_s``, 100 ms by default), so a read
  lags the truth by up to one period;
- ``nvmlDeviceGetPowerUsage`` is a 1-second moving average;
- fields can answer NotSupported (``unsupported``) or any other error (``errors``), a driver
  can predate a query (``old_driver``), the counter can reset (``counter_reset_at_s``),
  the GPU can be lost (``lost_at_s``), another process can appear (``foreign_pids``).

Time is ``clock() - t0`` where ``t0`` is the clock at ``nvmlInit``; with the default clock a
fake used by a real meter in a real child process follows real time. Everything is a picklable
dataclass so a meter holding one pickles into the experiment's child process.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pynvml
from llem_client import EnergyConfig
from llem_service.energy.base import MeterRecord
from llem_service.energy.meter import NvmlEnergyMeter, NvmlSession


@dataclass(frozen=True)
class PowerProfile:
    """Piecewise-constant power: ``segments`` of (duration_s, watts); the last holds forever."""

    segments: tuple[tuple[float, float], ...] = ((1.0, 100.0),)

    @functools.cached_property
    def _edges(self) -> list[float]:
        edges, t = [], 0.0
        for duration, _ in self.segments:
            t += duration
            edges.append(t)
        return edges

    def power_w(self, t: float) -> float:
        i = bisect.bisect_right(self._edges, t)
        return self.segments[min(i, len(self.segments) - 1)][1]

    def energy_j(self, t0: float, t1: float) -> float:
        """Exact integral over ``[t0, t1]`` (``t0 >= 0``)."""
        if t1 <= t0:
            return 0.0
        total, start = 0.0, 0.0
        for k, (duration, watts) in enumerate(self.segments):
            end = math.inf if k == len(self.segments) - 1 else start + duration
            overlap = min(t1, end) - max(t0, start)
            if overlap > 0:
                total += overlap * watts
            start = end
            if start >= t1:
                break
        return total

    def jumps(self) -> list[tuple[float, float]]:
        """(time, |power change|) at each segment boundary."""
        out, t = [], 0.0
        for (duration, a), (_, b) in zip(self.segments, self.segments[1:], strict=False):
            t += duration
            out.append((t, abs(b - a)))
        return out


@dataclass(frozen=True)
class FakeGpu:
    """One scripted GPU. Times are seconds since ``nvmlInit``."""

    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    name: str = "Fake H100"
    profile: PowerProfile = field(default_factory=PowerProfile)
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

    def counter_mj(self, t: float) -> int:
        stepped = math.floor(t / self.counter_period_s) * self.counter_period_s
        if self.counter_reset_at_s is not None and t >= self.counter_reset_at_s:
            reset = self.counter_reset_at_s
            return int(self.profile.energy_j(reset, max(reset, stepped)) * 1e3)
        return self.counter_start_mj + int(self.profile.energy_j(0.0, stepped) * 1e3)

    def average_mw(self, t: float) -> int:
        window = min(self.average_window_s, t) if t > 0 else 0.0
        if window <= 0:
            return int(self.profile.power_w(0.0) * 1e3)
        return int(self.profile.energy_j(t - window, t) / window * 1e3)


@dataclass
class _Handle:
    gpu: FakeGpu


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
    _t0: float | None = None

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
        return gpu, t

    # -- system -------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self._t0 = self.clock()

    def nvmlShutdown(self) -> None:
        self._t0 = None

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

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
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    # -- device -------------------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        return list(self.gpus).index(handle.gpu)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return handle.gpu.uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return handle.gpu.name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        gpu, t = self._gpu(handle, "memory")
        used = 2**30 if gpu.profile.power_w(t) > gpu.busy_above_w else 2**28
        return pynvml.c_nvmlMemory_t(
            total=gpu.memory_total_bytes, free=gpu.memory_total_bytes - used, used=used
        )

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        gpu, t = self._gpu(handle, "energy")
        return gpu.counter_mj(t)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu, t = self._gpu(handle, "power_average")
        return gpu.average_mw(t)

    def nvmlDeviceGetFieldValues(self, handle: _Handle, field_ids: list[int]) -> list[Any]:
        gpu, t = self._gpu(handle, "field_values")
        out = []
        for field_id in field_ids:
            value = pynvml.c_nvmlFieldValue_t()
            value.fieldId = field_id
            value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT and "power_instant" not in (
                gpu.unsupported
            ):
                value.nvmlReturn = pynvml.NVML_SUCCESS
                value.value.uiVal = int(gpu.profile.power_w(t) * 1e3)
            else:
                value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            out.append(value)
        return out

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        gpu, t = self._gpu(handle, "temperature")
        start, slope = gpu.temperature_c
        return int(start + slope * t)

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
        procs = [_Process(os.getpid(), 2**30)] if self.own_pid_on_gpu else []
        if t >= gpu.foreign_from_s:
            procs += [_Process(pid, 2**29) for pid in gpu.foreign_pids]
        return procs


class ManualClock:
    """A clock that moves only when told (``advance``), for deterministic arithmetic tests."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    sleep = advance


class ScriptedSession:
    """A real `NvmlSession` over fake GPUs, driven by hand: a manual clock, and sampling
    rounds taken by `run_for` rather than by the sampler's thread. Times it returns are the
    fake GPUs' (seconds since ``nvmlInit``), so they index the power profiles directly."""

    def __init__(self, gpus: Sequence[FakeGpu], *, interval_ms: float | None = 10.0) -> None:
        self.clock = ManualClock()
        self.lib = FakeNvml(gpus=gpus, clock=self.clock)
        meter = NvmlEnergyMeter(library=self.lib, clock=self.clock, sleep=self.clock.sleep)
        session = meter.open([g.uuid for g in gpus], EnergyConfig(sample_interval_ms=interval_ms))
        assert isinstance(session, NvmlSession)
        self.session = session
        assert self.lib._t0 is not None
        self.t0 = self.lib._t0

    def now(self) -> float:
        return self.clock() - self.t0

    def at(self, fake_time: float) -> float:
        """The session clock at a fake-GPU time."""
        return self.t0 + fake_time

    def run_for(self, seconds: float) -> None:
        """Sample every interval for ``seconds``, starting with a sample now."""
        interval = self.session.sampler.interval_s
        end = self.clock() + seconds
        while self.clock() < end - 1e-12:
            self.session.sampler.sample_once()
            self.clock.advance(min(interval, end - self.clock()))

    def run_until(self, fake_time: float) -> None:
        """Sample until the fake GPUs' clock reads ``fake_time``."""
        if fake_time < self.now():
            raise ValueError(f"already past {fake_time} s (now {self.now()} s)")
        self.run_for(fake_time - self.now())

    def mark(self, label: str) -> float:
        self.session.mark(label)
        return self.now()

    def close(self) -> MeterRecord:
        return self.session.close()
