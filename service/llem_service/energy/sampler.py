"""The power sampler: a thread that reads every metered GPU at a fixed interval.

A thread, not a process: each round is a handful of NVML calls (tens of microseconds, released
from the GIL inside the C library), and a thread shares the experiment's clock and needs no
pipe. ``benchmarks/sampler_cost.py`` measures its cost per round and its timing jitter.

Rounds are scheduled on absolute deadlines (start + k x interval), so a slow round delays only
itself, never the rounds after it. A field a GPU does not support is probed once and then
recorded as ``None``; any other failed read is ``None`` for that round (and counted). A lost GPU
ends the sampling: the error is raised at the next mark, and ``on_failure`` hears of it at once
(the experiment's process uses it to stop a run stuck on the dead GPU).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

from llem_service.energy.base import MeterError, Timeline
from llem_service.energy.nvml import GpuDevice, NvmlError, NvmlGpuLost, NvmlNotSupported

Clock = Callable[[], float]

_OPTIONAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("temperature_c", "temperature_c"),
    ("sm_clock_mhz", "sm_clock_mhz"),
    ("memory_used_bytes", "memory_used_bytes"),
    ("utilization_pct", "utilization_pct"),
    ("clock_event_reasons", "clock_event_reasons"),
)


class _DeviceReader:
    """Reads one GPU's sample, remembering which fields it does not support."""

    def __init__(self, device: GpuDevice) -> None:
        self.device = device
        self.power_field: Literal["instant", "average"] | None = None
        self._unsupported: set[str] = set()
        self._reads = {method: getattr(device, method) for _, method in _OPTIONAL_FIELDS}
        self.failed_reads = 0
        self._choose_power_field()

    def _choose_power_field(self) -> None:
        for name, read in (
            ("instant", self.device.power_instant_mw),
            ("average", self.device.power_average_mw),
        ):
            try:
                read()
            except NvmlGpuLost:
                raise
            except NvmlError:  # not supported, no permission, an unknown field: try the next
                continue
            self.power_field = name  # type: ignore[assignment]
            return

    def power_w(self) -> float | None:
        if self.power_field == "instant":
            return self.device.power_instant_mw() / 1e3
        if self.power_field == "average":
            return self.device.power_average_mw() / 1e3
        return None

    def optional(self, method: str) -> int | None:
        if method in self._unsupported:
            return None
        try:
            value: int = self._reads[method]()
        except NvmlNotSupported:
            self._unsupported.add(method)
            return None
        except NvmlGpuLost:
            raise
        except NvmlError:
            self.failed_reads += 1
            return None
        return value

    def power_or_none(self) -> float | None:
        try:
            return self.power_w()
        except NvmlGpuLost:
            raise
        except NvmlError:
            self.failed_reads += 1
            return None


class PowerSampler:
    """Samples power and device state of ``devices`` every ``interval_s`` seconds.

    Args:
        devices: The GPUs to sample.
        interval_s: Target time between rounds.
        clock: Monotonic clock, seconds; shared with the rest of the session.
    """

    def __init__(
        self,
        devices: Sequence[GpuDevice],
        interval_s: float,
        clock: Clock = time.perf_counter,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.readers = [_DeviceReader(d) for d in devices]
        self.timeline = Timeline()
        self.round_starts_s: list[float] = []
        self.round_costs_s: list[float] = []
        self.round_cpu_s: list[float] = []  # the thread's CPU time per round (no preemption)
        self.error: MeterError | None = None
        self.on_failure = on_failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def power_field(self, uuid: str) -> Literal["instant", "average"] | None:
        for reader in self.readers:
            if reader.device.uuid == uuid:
                return reader.power_field
        raise KeyError(uuid)

    def sample_once(self) -> None:
        """One round: read every GPU, append a row each, record the round's cost."""
        started = self.clock()
        cpu_started = time.thread_time()
        powers = [reader.power_or_none() for reader in self.readers]
        optional = [
            [reader.optional(method) for _, method in _OPTIONAL_FIELDS] for reader in self.readers
        ]
        ended = self.clock()
        cpu = time.thread_time() - cpu_started
        with self._lock:
            timeline = self.timeline
            for reader, power, values in zip(self.readers, powers, optional, strict=True):
                timeline.t_s.append(started)  # powers are read first, together
                timeline.device_uuid.append(reader.device.uuid)
                timeline.power_w.append(power)
                for (column, _), value in zip(_OPTIONAL_FIELDS, values, strict=True):
                    getattr(timeline, column).append(value)
            self.round_starts_s.append(started)
            self.round_costs_s.append(ended - started)
            self.round_cpu_s.append(cpu)

    def _loop(self) -> None:
        start = self.clock()
        k = 0
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # a lost GPU, or a bug: sampling must not die silently
                error = exc if isinstance(exc, MeterError) else MeterError(f"crashed: {exc!r}")
                self.error = error
                if self.on_failure is not None:
                    self.on_failure(error)
                return
            k += 1
            deadline = start + k * self.interval_s
            now = self.clock()
            if deadline < now:  # fell behind: skip missed rounds rather than burst
                k = int((now - start) / self.interval_s) + 1
                deadline = start + k * self.interval_s
            self._stop.wait(deadline - now)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llem-power-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the thread; it ends within one round. A stuck NVML call is left behind
        (daemon thread) after ``timeout_s`` rather than hanging the experiment: returns False
        then."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    @property
    def failed_reads(self) -> int:
        return sum(reader.failed_reads for reader in self.readers)

    def rounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Start time and wall cost of every round so far (safe while the thread runs)."""
        with self._lock:
            return tuple(self.round_starts_s), tuple(self.round_costs_s)

    def latest(self) -> list[tuple[str, float, dict[str, float | int | None]]]:
        """The newest round's row of each GPU as (uuid, time, columns); empty before the first
        round. Copies one row per GPU, so live monitoring can call it at any rate."""
        with self._lock:
            timeline = self.timeline
            n = len(self.readers)
            if len(timeline) < n:
                return []
            names = ("power_w", *(column for column, _ in _OPTIONAL_FIELDS))
            return [
                (
                    timeline.device_uuid[i],
                    timeline.t_s[i],
                    {name: getattr(timeline, name)[i] for name in names},
                )
                for i in range(len(timeline) - n, len(timeline))
            ]

    def snapshot(self) -> Timeline:
        """A copy of the samples so far (safe while the thread runs)."""
        with self._lock:
            copy = Timeline()
            for name, column in self.timeline.columns().items():
                getattr(copy, name).extend(column)
            return copy
