"""The sampler in its own process: started and stopped by the session, samples handed over as
typed columns on disk, bounded memory, and no orphan left when the experiment dies."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pynvml
import pytest
from llem_client import EnergyConfig
from llem_service.energy.base import MeterError
from llem_service.energy.meter import NvmlEnergyMeter, NvmlSession
from llem_service.energy.nvml import Nvml
from llem_service.energy.sampler import SamplerEngine, SamplerSpec
from llem_service.energy.sampler_engine import open_engine
from llem_service.energy.samples import SAMPLE_COLUMNS

from tests.fake_nvml import FakeGpu, FakeNvml, ManualClock, PowerProfile

GPU = FakeGpu(profile=PowerProfile(((100.0, 250.0),)), counter_period_s=0.005)


def session(mode: str = "process") -> NvmlSession:
    meter = NvmlEnergyMeter(
        library=FakeNvml(gpus=(GPU,)),
        sampler=mode,  # type: ignore[arg-type]
        powercap_root=None,
    )
    opened = meter.open([GPU.uuid], EnergyConfig(sample_interval_ms=10))
    assert isinstance(opened, NvmlSession)
    return opened


def test_the_sampler_runs_in_a_process_of_its_own_and_hands_over_every_round() -> None:
    metered = session()
    metered.start()
    sampler = metered.sampler
    directory = Path(sampler.spec.directory)
    try:
        assert sampler.pid is not None
        assert sampler.pid != os.getpid()
        time.sleep(0.3)
        asked = time.perf_counter()
        snapshot = sampler.snapshot()
        # A snapshot asks the process to flush: it holds the rounds up to the moment asked.
        assert len(snapshot) >= 10
        assert asked - snapshot.t_s[-1] < 0.1
        assert set(snapshot.power_w) == {250.0}
        # Live monitoring reads the newest row of each GPU the same way.
        ((uuid, t, values),) = sampler.latest()
        assert uuid == GPU.uuid
        assert time.perf_counter() - t < 0.2
        assert values["power_w"] == 250.0
        assert values["temperature_c"] == 40
    finally:
        record = metered.close()
    assert record.acquisition is not None
    assert record.acquisition.sampler_mode == "process"
    assert record.acquisition.sampler is not None
    assert record.acquisition.sampler.pid == sampler.pid
    assert record.acquisition.samples_bytes == len(record.timeline) * 67
    assert len(record.round_starts_s) == len(record.timeline)
    assert not directory.exists()  # the column files went with the session


def test_a_thread_sampler_gives_the_same_record_from_inside_the_process() -> None:
    metered = session("thread")
    metered.start()
    time.sleep(0.15)
    record = metered.close()

    assert record.acquisition is not None
    assert record.acquisition.sampler_pid == os.getpid()
    assert len(record.timeline) >= 5
    assert set(record.timeline.power_w) == {250.0}


def test_the_samplers_memory_is_bounded_however_long_the_run(tmp_path: Path) -> None:
    clock = ManualClock()
    gpus = tuple(FakeGpu(uuid=f"GPU-{i}", profile=GPU.profile) for i in range(8))
    nvml = Nvml(FakeNvml(gpus=gpus, clock=clock, wall=clock.wall)).open()
    spec = SamplerSpec(
        library=FakeNvml,
        device_uuids=tuple(g.uuid for g in gpus),
        interval_s=0.01,
        power_fields=("instant",) * 8,
        refresh_s=(None,) * 8,
        directory=str(tmp_path),
        own_pid=os.getpid(),
        flush_rows=256,
    )
    engine = SamplerEngine(nvml.devices(), spec, clock, clock.wall)

    most = 0
    for _ in range(500):  # 4,000 rows of 8 GPUs
        engine.sample_once()
        most = max(most, engine.samples.buffered_rows)
        clock.advance(0.01)
    engine.flush()

    assert most < 256  # never more than flush_rows rows in memory...
    assert engine.samples.rows_written == 4000  # ...and every row on disk
    sizes = {name: (tmp_path / f"sample_{name}.bin").stat().st_size for name, _ in SAMPLE_COLUMNS}
    assert sizes["t_s"] == 4000 * 8
    assert sizes["power_flag"] == 4000


def _hold_a_session(pid_file: str) -> None:
    """A stand-in experiment process: opens a session, starts its sampler, then waits."""
    metered = session()
    metered.start()
    Path(pid_file).write_text(f"{metered.sampler.pid} {metered.sampler.spec.directory}")
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_the_sampler_ends_when_the_experiment_process_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "sampler"
    child = multiprocessing.get_context("spawn").Process(
        target=_hold_a_session, args=(str(pid_file),)
    )
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid_text, directory = pid_file.read_text().split()
        sampler_pid = int(pid_text)
        assert _alive(sampler_pid)

        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        deadline = time.monotonic() + 10
        while _alive(sampler_pid) and time.monotonic() < deadline:
            time.sleep(0.05)

        assert not _alive(sampler_pid)
        assert not Path(directory).exists()  # the orphan cleaned up after itself
    finally:
        if child.is_alive():
            child.kill()
            child.join()


class StallingNvml(FakeNvml):
    """A fake NVML whose temperature read hangs while ``stall`` is set (a driver stuck in a
    call), until ``release`` is."""

    def __init__(self, gpus: tuple[FakeGpu, ...]) -> None:
        super().__init__(gpus=gpus)
        self.stall = threading.Event()
        self.release = threading.Event()

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        if self.stall.is_set():
            self.release.wait(10.0)
        return super().nvmlDeviceGetTemperature(handle, sensor)


def test_a_sampler_that_does_not_answer_a_flush_is_an_error_not_a_stale_record() -> None:
    library = StallingNvml((GPU,))
    meter = NvmlEnergyMeter(library=library, sampler="thread", powercap_root=None)
    metered = meter.open([GPU.uuid], EnergyConfig(sample_interval_ms=10))
    assert isinstance(metered, NvmlSession)
    metered.sampler.reply_timeout_s = 0.3
    metered.start()
    try:
        time.sleep(0.1)
        library.stall.set()
        time.sleep(0.05)  # the sampler is now inside the stuck call

        with pytest.raises(MeterError, match="did not answer"):
            metered.sampler.snapshot()

        library.stall.clear()
        library.release.set()
        asked = time.perf_counter()
        time.sleep(0.1)
        # The stuck flush's answer comes late; this flush waits for its own.
        snapshot = metered.sampler.snapshot()
        assert snapshot.t_s[-1] > asked
    finally:
        library.release.set()
        metered.close()


def test_a_session_that_fails_to_open_leaves_no_samples_directory(tmp_path: Path) -> None:
    broken = FakeGpu(failing=(("memory", 0.0, 1e9, pynvml.NVML_ERROR_UNKNOWN),))
    meter = NvmlEnergyMeter(
        library=FakeNvml(gpus=(broken,)), powercap_root=None, samples_dir=str(tmp_path)
    )

    with pytest.raises(MeterError):
        meter.open([broken.uuid], EnergyConfig(sample_interval_ms=10))

    assert list(tmp_path.iterdir()) == []


def test_nvml_is_closed_when_the_sampler_cannot_start_on_its_gpus() -> None:
    library = FakeNvml(gpus=(GPU,))
    spec = SamplerSpec(
        library=library, device_uuids=("GPU-not-there",), interval_s=0.01,
        power_fields=("instant",), refresh_s=(None,), directory=tempfile.mkdtemp(), own_pid=0,
    )  # fmt: skip

    with pytest.raises(MeterError):
        open_engine(spec)

    assert library.initialised == 0  # every nvmlInit matched by its shutdown
