"""Live readings out of the experiment's process: the meter session hands over what its
sampler already read, the child forwards it over the pipe, the executor tells the run's
``on_telemetry``. None of it adds an NVML read."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from llem_client import BaselineConfig, EnergyConfig
from llem_service.energy.base import Baseline, MeterRecord
from llem_service.energy.meter import NvmlEnergyMeter
from llem_service.energy.readings import GpuReading
from llem_service.executors.base import GpuGrant, RunContext
from llem_service.executors.local import LocalExecutor
from llem_service.executors.telemetry import ForwardingMeter

from tests.conftest import make_config
from tests.fake_nvml import FakeGpu, FakeNvml, PowerProfile
from tests.fakes import FAKE_DEVICE, ScriptedBackend, fake_meter


def test_the_sessions_latest_readings_are_the_samplers_newest_row_and_read_nothing() -> None:
    gpu = FakeGpu(
        uuid=FAKE_DEVICE.uuid, profile=PowerProfile(((1.0, 222.0),)), counter_period_s=0.005
    )
    nvml = FakeNvml(gpus=(gpu,))
    session = NvmlEnergyMeter(library=nvml).open([gpu.uuid], EnergyConfig(sample_interval_ms=10))
    session.start()
    session.mark("load_start")
    time.sleep(0.2)
    calls = nvml.calls

    (reading,) = session.latest_readings()

    assert nvml.calls == calls  # handed over, not read
    newest = session.sampler.latest()[-1]
    assert reading.uuid == gpu.uuid
    assert reading.name == gpu.name
    assert reading.power_w == newest[2]["power_w"] == pytest.approx(222.0)
    assert reading.temperature_c == newest[2]["temperature_c"]
    assert reading.energy_mj == session.marks[-1].energy_mj[gpu.uuid]
    assert abs(reading.read_at_s - time.time()) < 1.0  # the sampler's clock, as wall time
    session.close()


@dataclass
class ScriptedSession:
    """A meter session whose `latest_readings` returns ``readings`` (or raises ``error``)."""

    readings: tuple[GpuReading, ...] = ()
    error: Exception | None = None
    started: bool = False
    closed: bool = False

    def baselines(
        self, plan: BaselineConfig, cached: Sequence[Baseline], *, now: float
    ) -> tuple[Baseline, ...]:
        return ()

    def start(self) -> None:
        self.started = True

    def mark(self, label: str) -> None:
        pass

    def latest_readings(self) -> tuple[GpuReading, ...]:
        if self.error is not None:
            raise self.error
        return self.readings

    def close(self) -> MeterRecord:
        self.closed = True
        return None  # type: ignore[return-value]


@dataclass
class OneSessionMeter:
    session: object
    name: str = "scripted"

    def probe(self) -> object:
        return None

    def open(
        self, device_uuids: Sequence[str], plan: EnergyConfig, on_failure: object = None
    ) -> object:
        return self.session


@dataclass
class Outbox:
    sent: list[Sequence[GpuReading]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def __call__(self, readings: Sequence[GpuReading]) -> None:
        self.sent.append(readings)
        self.arrived.set()


def test_forwarding_sends_the_latest_readings_until_the_session_closes() -> None:
    readings = (GpuReading(uuid="GPU-x", name="X", read_at_s=1.0, power_w=5.0),)
    inner = ScriptedSession(readings=readings)
    outbox = Outbox()
    session = ForwardingMeter(OneSessionMeter(inner), outbox, 0.01).open(["GPU-x"], EnergyConfig())  # type: ignore[arg-type]

    session.start()
    assert outbox.arrived.wait(5)
    session.close()
    sent = len(outbox.sent)
    time.sleep(0.05)

    assert inner.started
    assert inner.closed
    assert outbox.sent[0] == readings
    assert len(outbox.sent) == sent  # nothing after close


def test_a_session_without_live_readings_or_a_failing_one_forwards_nothing_and_runs_on() -> None:
    class Plain(ScriptedSession):
        latest_readings = None  # type: ignore[assignment]

    for inner in (Plain(), ScriptedSession(error=RuntimeError("broken"))):
        outbox = Outbox()
        session = ForwardingMeter(OneSessionMeter(inner), outbox, 0.01).open([], EnergyConfig())  # type: ignore[arg-type]
        session.start()
        time.sleep(0.05)
        session.close()
        assert outbox.sent == []
        assert inner.closed


def test_the_executor_tells_the_run_the_experiments_readings() -> None:
    executor = LocalExecutor(ScriptedBackend(), fake_meter(power_w=275.0))
    received: list[Sequence[GpuReading]] = []
    config = make_config(tags={"fake.sleep_s": "2.5"})

    outcome = executor.open(GpuGrant()).run(RunContext("job", config, on_telemetry=received.append))

    assert outcome.status.value == "succeeded"
    assert received, "no readings arrived while the experiment ran"
    assert all(
        r.uuid == FAKE_DEVICE.uuid and r.power_w == pytest.approx(275.0)
        for batch in received
        for r in batch
    )
