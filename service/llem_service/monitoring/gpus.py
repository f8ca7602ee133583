"""Live GPU gauges: the latest readings of each GPU, and the idle poll that keeps them fresh.

`GpuTelemetry` keeps the newest `GpuReading` of each GPU and exports it to Prometheus. It is fed
from two sides:

- while an experiment runs, by the experiment's own sampler (forwarded by the executor through
  `RunContext.on_telemetry`, see `llem_service.monitoring.executor`);
- while no experiment holds a GPU, by `IdlePoller`, a thread that reads the GPUs every
  ``interval_s``. `IdlePoller.quiet` holds the poll off the GPUs of a run, from before the run
  starts (its baseline included) until it ends, and waits for a poll in progress to finish, so
  the poll never adds an NVML read to a measurement.

A reading older than ``stale_after_s`` is not exported: a gauge that stopped updating is absent
rather than a plausible-looking old number.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llem_service.energy.nvml import NvmlError
from llem_service.energy.readings import GpuReading, ReadingSource, ReadingSourceName

_log = logging.getLogger("llem.monitoring")


@dataclass(frozen=True)
class _Latest:
    reading: GpuReading
    source: ReadingSourceName


class GpuTelemetry(Collector):
    """The newest reading of each GPU, as Prometheus metrics.

    Args:
        stale_after_s: Readings older than this (wall clock) are not exported.
        clock: Wall clock, seconds since the epoch.
    """

    def __init__(self, stale_after_s: float = 60.0, clock: Callable[[], float] = time.time):
        self.stale_after_s = stale_after_s
        self.clock = clock
        self._latest: dict[str, _Latest] = {}
        self._lock = threading.Lock()

    def update(self, readings: Sequence[GpuReading], source: ReadingSourceName) -> None:
        """Keep ``readings`` where they are newer than what is kept (any thread)."""
        with self._lock:
            for reading in readings:
                kept = self._latest.get(reading.uuid)
                if kept is None or kept.reading.read_at_s <= reading.read_at_s:
                    self._latest[reading.uuid] = _Latest(reading, source)

    def latest(self) -> list[tuple[GpuReading, ReadingSourceName]]:
        """Fresh readings (not older than ``stale_after_s``), by UUID."""
        now = self.clock()
        with self._lock:
            kept = sorted(self._latest.values(), key=lambda k: k.reading.uuid)
        return [
            (k.reading, k.source) for k in kept if now - k.reading.read_at_s <= self.stale_after_s
        ]

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["uuid", "name"]
        power = GaugeMetricFamily("llem_gpu_power_watts", "GPU power draw, watts.", labels=labels)
        energy = CounterMetricFamily(
            "llem_gpu_energy_joules",
            "The GPU's cumulative energy counter (since the driver loaded), joules. During an "
            "experiment it is read at phase edges only.",
            labels=labels,
        )
        temperature = GaugeMetricFamily(
            "llem_gpu_temperature_celsius", "GPU temperature, degrees C.", labels=labels
        )
        utilization = GaugeMetricFamily(
            "llem_gpu_utilization_ratio",
            "Fraction of the last sample period in which a kernel ran (0-1).",
            labels=labels,
        )
        clock = GaugeMetricFamily("llem_gpu_sm_clock_hertz", "SM clock, hertz.", labels=labels)
        memory = GaugeMetricFamily(
            "llem_gpu_memory_used_bytes", "Device memory in use, bytes.", labels=labels
        )
        age = GaugeMetricFamily(
            "llem_gpu_reading_age_seconds",
            "Age of the GPU's latest reading, and who read it: the running experiment's "
            "sampler, or the idle poll.",
            labels=[*labels, "source"],
        )
        now = self.clock()
        for reading, source in self.latest():
            values = [reading.uuid, reading.name]
            age.add_metric([*values, source], max(0.0, now - reading.read_at_s))
            if reading.power_w is not None:
                power.add_metric(values, reading.power_w)
            if reading.energy_mj is not None:
                energy.add_metric(values, reading.energy_mj / 1e3)
            if reading.temperature_c is not None:
                temperature.add_metric(values, reading.temperature_c)
            if reading.utilization_pct is not None:
                utilization.add_metric(values, reading.utilization_pct / 100)
            if reading.sm_clock_mhz is not None:
                clock.add_metric(values, reading.sm_clock_mhz * 1e6)
            if reading.memory_used_bytes is not None:
                memory.add_metric(values, reading.memory_used_bytes)
        return [power, energy, temperature, utilization, clock, memory, age]


class IdlePoller:
    """Reads the GPUs no run holds, every ``interval_s``, into ``telemetry``.

    Args:
        source: Reads the GPUs (NVML, or a fake); opened on the first poll, closed at `stop`.
        telemetry: Where readings go.
        interval_s: Time between polls.
    """

    def __init__(self, source: ReadingSource, telemetry: GpuTelemetry, interval_s: float) -> None:
        self.source = source
        self.telemetry = telemetry
        self.interval_s = interval_s
        self.unavailable: str | None = None  # why the poll gave up, once it has
        self.polls = 0
        self._busy: collections.Counter[str] = collections.Counter()
        self._whole_host = 0  # runs that hold every GPU (an empty grant)
        self._lock = threading.Lock()  # held by a poll in progress and by `quiet`'s entry
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llem-idle-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self.source.close()

    @contextlib.contextmanager
    def quiet(self, uuids: Sequence[str]) -> Iterator[None]:
        """No poll reads these GPUs (every GPU when ``uuids`` is empty) inside the block.
        Entering waits for a poll in progress to end."""
        with self._lock:
            if uuids:
                self._busy.update(uuids)
            else:
                self._whole_host += 1
        try:
            yield
        finally:
            with self._lock:
                if uuids:
                    self._busy.subtract(uuids)
                    self._busy += collections.Counter()  # drop the zeros
                else:
                    self._whole_host -= 1

    def poll_once(self) -> None:
        """One poll of every GPU no run holds (none while a run holds the whole host)."""
        with self._lock:
            if self._whole_host or self.unavailable is not None:
                return
            readings = self.source.read(frozenset(self._busy))
            self.polls += 1
        self.telemetry.update(readings, "idle_poll")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except NvmlError as exc:
                # No driver, no GPU, a lost GPU: say why once and stop polling; experiments
                # still forward their own readings.
                self.unavailable = str(exc)
                _log.info("idle GPU poll stopped: %s", exc)
                return
            except Exception:
                _log.exception("idle GPU poll failed; stopping it")
                self.unavailable = "the idle poll failed (see the server log)"
                return
            self._stop.wait(self.interval_s)
