"""Live readings out of the experiment's process, for the service's monitoring.

`ForwardingMeter` wraps the experiment's `EnergyMeter` inside the child process. Its session
behaves exactly like the wrapped one and, while it samples, hands the session's latest readings
to ``send`` every ``interval_s``. It reads them through the session's ``latest_readings()``
method (what the sampler and the counter marks already read), so forwarding adds no NVML read
to the measured window; a session without that method is simply not forwarded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from llem_client import EnergyConfig

from llem_service.energy.base import (
    CounterMark,
    DeviceMeta,
    DeviceState,
    EnergyMeter,
    MeterError,
    MeterProbe,
    MeterRecord,
)
from llem_service.energy.base import MeterSession as _MeterSession
from llem_service.energy.readings import GpuReading

_log = logging.getLogger("llem.telemetry")

Send = Callable[[Sequence[GpuReading]], None]


class ForwardingMeter:
    """An `EnergyMeter` whose sessions forward their latest readings.

    Args:
        inner: The experiment's meter.
        send: Called from a thread of its own with each batch of readings.
        interval_s: Time between two batches.
    """

    def __init__(self, inner: EnergyMeter, send: Send, interval_s: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.send = send
        self.interval_s = interval_s

    def probe(self) -> MeterProbe:
        return self.inner.probe()

    def open(
        self,
        device_uuids: Sequence[str],
        plan: EnergyConfig,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> ForwardingSession:
        session = self.inner.open(device_uuids, plan, on_failure)
        return ForwardingSession(session, self.send, self.interval_s)


class ForwardingSession:
    """A `MeterSession` that forwards ``inner.latest_readings()`` from `start` to `close`."""

    def __init__(self, inner: _MeterSession, send: Send, interval_s: float) -> None:
        self.inner = inner
        self.send = send
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def metas(self) -> tuple[DeviceMeta, ...]:
        return self.inner.metas

    @property
    def driver_version(self) -> str | None:
        return self.inner.driver_version

    def wait(self, seconds: float) -> None:
        self.inner.wait(seconds)

    def snapshot(self) -> MeterRecord:
        return self.inner.snapshot()

    def counter_marks(self) -> tuple[CounterMark, ...]:
        return self.inner.counter_marks()

    def device_state(self) -> dict[str, DeviceState]:
        return self.inner.device_state()

    def start(self) -> None:
        self.inner.start()
        latest: Callable[[], Sequence[GpuReading]] | None = getattr(
            self.inner, "latest_readings", None
        )
        if latest is None:
            return  # this meter has no live readings to give
        self._thread = threading.Thread(
            target=self._forward, args=(latest,), name="llem-telemetry", daemon=True
        )
        self._thread.start()

    def _forward(self, latest: Callable[[], Sequence[GpuReading]]) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                readings = latest()
                if readings:
                    self.send(readings)
            except Exception:  # monitoring must never fail an experiment
                _log.warning("live GPU readings stopped", exc_info=True)
                return

    def mark(self, label: str) -> None:
        self.inner.mark(label)

    def close(self) -> MeterRecord:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.inner.close()
