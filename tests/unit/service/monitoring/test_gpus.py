"""Live GPU gauges and the idle poll: fresh readings only, and never a read during a run."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from llem_service.energy.nvml import NvmlUnavailable
from llem_service.energy.readings import GpuReading, NvmlReadingSource
from llem_service.monitoring.gpus import GpuTelemetry, IdlePoller
from prometheus_client import CollectorRegistry, generate_latest

from tests.fake_nvml import FakeGpu, FakeNvml, PowerProfile

A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"


def reading(uuid: str = A, at: float = 1000.0, power_w: float = 100.0) -> GpuReading:
    return GpuReading(uuid=uuid, name="Fake", read_at_s=at, power_w=power_w, energy_mj=5_000_000,
                      temperature_c=45, sm_clock_mhz=1500, utilization_pct=80,
                      memory_used_bytes=2**30)  # fmt: skip


@dataclass
class RecordingSource:
    """A `ReadingSource` that records what it was asked, and can hold a read open."""

    uuids: tuple[str, ...] = (A, B)
    asked: list[frozenset[str]] = field(default_factory=list)
    hold: threading.Event | None = None
    reading_now: threading.Event = field(default_factory=threading.Event)
    fail: Exception | None = None

    def read(self, skip: frozenset[str]) -> list[GpuReading]:
        if self.fail is not None:
            raise self.fail
        self.asked.append(skip)
        self.reading_now.set()
        if self.hold is not None:
            self.hold.wait(5)
        return [reading(u, at=time.time()) for u in self.uuids if u not in skip]

    def close(self) -> None:
        pass


def exposition(telemetry: GpuTelemetry) -> str:
    registry = CollectorRegistry()
    registry.register(telemetry)
    return generate_latest(registry).decode()


def test_gauges_carry_each_signal_in_base_units() -> None:
    telemetry = GpuTelemetry(clock=lambda: 1001.0)
    telemetry.update([reading()], "experiment")

    text = exposition(telemetry)

    labels = f'name="Fake",uuid="{A}"'
    assert f"llem_gpu_power_watts{{{labels}}} 100.0" in text
    assert f"llem_gpu_energy_joules_total{{{labels}}} 5000.0" in text
    assert f"llem_gpu_temperature_celsius{{{labels}}} 45.0" in text
    assert f"llem_gpu_utilization_ratio{{{labels}}} 0.8" in text
    assert f"llem_gpu_sm_clock_hertz{{{labels}}} 1.5e+09" in text
    assert f'llem_gpu_reading_age_seconds{{name="Fake",source="experiment",uuid="{A}"}} 1.0' in text


def test_an_older_reading_never_replaces_a_newer_one_and_stale_ones_are_not_exported() -> None:
    now = [1000.0]
    telemetry = GpuTelemetry(stale_after_s=60, clock=lambda: now[0])
    telemetry.update([reading(at=1000.0, power_w=300.0)], "experiment")
    telemetry.update([reading(at=990.0, power_w=50.0)], "idle_poll")

    assert [(r.power_w, s) for r, s in telemetry.latest()] == [(300.0, "experiment")]
    now[0] = 1061.0
    assert telemetry.latest() == []
    assert "llem_gpu_power_watts{" not in exposition(telemetry)


def test_the_poll_reads_every_gpu_when_no_run_holds_one() -> None:
    telemetry = GpuTelemetry()
    source = RecordingSource()
    poller = IdlePoller(source, telemetry, interval_s=60)

    poller.poll_once()

    assert source.asked == [frozenset()]
    assert [(r.uuid, s) for r, s in telemetry.latest()] == [(A, "idle_poll"), (B, "idle_poll")]


def test_the_poll_skips_the_gpus_of_a_run_and_everything_for_a_whole_host_run() -> None:
    source = RecordingSource()
    poller = IdlePoller(source, GpuTelemetry(), interval_s=60)

    with poller.quiet([A]):
        poller.poll_once()
    with poller.quiet([]):
        poller.poll_once()
    poller.poll_once()

    assert source.asked == [frozenset({A}), frozenset()]  # the whole-host run: no read at all


def test_a_run_waits_for_a_poll_in_progress_so_no_read_overlaps_it() -> None:
    hold = threading.Event()
    source = RecordingSource(hold=hold)
    poller = IdlePoller(source, GpuTelemetry(), interval_s=60)
    polling = threading.Thread(target=poller.poll_once)
    polling.start()
    assert source.reading_now.wait(5)
    entered = threading.Event()

    def run() -> None:
        with poller.quiet([]):
            entered.set()

    starting = threading.Thread(target=run)
    starting.start()

    assert not entered.wait(0.3)  # the run cannot start while the read is in progress
    hold.set()
    assert entered.wait(5)
    polling.join(5)
    starting.join(5)


def test_the_poll_stops_with_the_reason_when_nvml_cannot_be_used() -> None:
    source = RecordingSource(fail=NvmlUnavailable("NVML could not initialise: no driver"))
    poller = IdlePoller(source, GpuTelemetry(), interval_s=0.01)

    poller.start()
    poller.stop()

    assert poller.unavailable == "NVML could not initialise: no driver"


def test_the_nvml_source_reads_the_visible_gpus() -> None:
    gpus = (
        FakeGpu(uuid=A, profile=PowerProfile(((1.0, 75.0),)), counter_period_s=0.01),
        FakeGpu(uuid=B, profile=PowerProfile(((1.0, 90.0),))),
    )
    source = NvmlReadingSource(FakeNvml(gpus=gpus), cuda_visible=A, clock=lambda: 123.0)

    readings = source.read(frozenset())
    source.close()

    assert [r.uuid for r in readings] == [A]  # CUDA_VISIBLE_DEVICES hides B
    (only,) = readings
    assert only.power_w == pytest.approx(75.0)
    assert only.energy_mj is not None
    assert only.temperature_c == 40
    assert only.read_at_s == 123.0
    assert source.read(frozenset({A})) == []
