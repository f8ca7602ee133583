"""What the validation checks run on: a real CUDA GPU, or the scripted GPU on the CPU.

Both give the checks the same surface: NVML through llem's adapter, loads to put on the GPU
(idle, steady matrix multiplies, a square wave, work queued without waiting), llem's own
metering sessions, a model workload, and a second process on the GPU.

The scripted rig keeps two clocks. The sensor checks (1 to 6 and 11) run on a manual clock:
a 60-s load takes no real time, and the GPU's power is what the loads wrote into a
`LiveProfile` (warm idle that cools after load included), read through a realistic sensor.
The workload checks (7 to 10) run in real time with llem's sampler in its own process, as on
a GPU, over a second scripted GPU and the real PyTorch backend on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llem_client import EnergyConfig
from llem_service.energy.meter import NvmlEnergyMeter, NvmlSession
from llem_service.energy.nvml import GpuDevice, Nvml, load_pynvml

from tests.fake_nvml import (
    FakeGpu,
    FakeNvml,
    LiveProfile,
    ManualClock,
    PowerProfile,
    ProcessSchedule,
    realistic_sensor,
)
from tests.fakes import FAKE_DEVICE, FakeInferenceBackend

#: The scripted GPU: idle and steady-load power, watts.
SCRIPTED_IDLE_W = 90.0
SCRIPTED_LOAD_W = 650.0


@dataclass(frozen=True)
class Square:
    """A square-wave load: on for ``duty`` of each ``period_s``, starting ``phase_s`` late."""

    period_s: float
    duty: float
    phase_s: float = 0.0


class Rig:
    """The surface the checks use. ``dry`` says whether the GPU is the scripted one."""

    dry: bool
    name: str
    uuid: str
    clock: Callable[[], float]
    time_scale: float = 1.0

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def device(self) -> GpuDevice:
        """The GPU through llem's NVML adapter (on the sensor checks' clock)."""
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def session(self, interval_ms: float = 10.0) -> NvmlSession:
        """llem's own metering session on the GPU, started (sampling)."""
        raise NotImplementedError

    def steady(self) -> contextlib.AbstractContextManager[None]:
        """Matrix multiplies back to back for as long as the context lasts."""
        raise NotImplementedError

    def square(self, wave: Square, seconds: float) -> None:
        """Run a square wave for ``seconds`` (blocking)."""
        raise NotImplementedError

    def queue_work(self, seconds: float) -> None:
        """Queue about ``seconds`` of kernels and return without waiting for them."""
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    def second_process(self, hold_s: float) -> contextlib.AbstractContextManager[int]:
        """Another process holding memory on the GPU for ``hold_s``; yields its PID."""
        raise NotImplementedError

    # -- the workload checks (real time) -----------------------------------------------------

    def workload_meter(self, **options: Any) -> NvmlEnergyMeter:
        """llem's meter for the workload checks (a sampler process)."""
        raise NotImplementedError

    def model_dir(self) -> Path:
        """A GPT-2-shaped model with random weights, built once."""
        raise NotImplementedError

    def experiment_backend(self) -> Any:
        """The backend of the end-to-end experiment."""
        raise NotImplementedError

    def workload_device(self) -> str:
        return "cuda" if not self.dry else "cpu"

    def reference_energy(self) -> Any:
        """Begins and ends windows on an independent meter (Zeus; the truth when scripted)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _build_gpt2(directory: Path, **shape: int) -> Path:
    from tests.integration.conftest import build_gpt2

    return build_gpt2(directory, **shape)


class CudaRig(Rig):
    """A real NVIDIA GPU (CUDA device 0 unless ``--device``), through torch and pynvml."""

    dry = False

    def __init__(self, workdir: Path, cuda_index: int = 0) -> None:
        import torch

        self.torch = torch
        self.workdir = workdir
        self.cuda_index = cuda_index
        torch.cuda.set_device(cuda_index)
        props = torch.cuda.get_device_properties(cuda_index)
        uuid = str(props.uuid)
        self.uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        self.name = props.name
        self.clock = time.perf_counter
        self._nvml = Nvml(load_pynvml()).open()
        self._device = self._nvml.device(self.uuid)
        # One kernel of ~1 ms (the square wave's grain) and one of ~10 ms (queued work).
        self._a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        self._big = torch.randn(16384, 16384, device="cuda", dtype=torch.bfloat16)
        self.kernel_s = self._time(lambda: self._a @ self._a, 50)
        self.big_kernel_s = self._time(lambda: self._big @ self._big, 10)
        self._model: Path | None = None

    def _time(self, kernel: Callable[[], Any], n: int) -> float:
        torch = self.torch
        kernel()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(n):
            kernel()
        torch.cuda.synchronize()
        return (time.perf_counter() - started) / n

    def describe(self) -> dict[str, Any]:
        d = self._device
        return {
            "gpu": self.name,
            "uuid": self.uuid,
            "driver": self._nvml.driver_version(),
            "nvml": self._nvml.nvml_version(),
            "cuda_driver": self._nvml.cuda_driver_version(),
            "torch": self.torch.__version__,
            "power_limit_w": _optional(d.power_limit_w),
            "persistence_mode": _optional(d.persistence_mode),
            "host": platform.node(),
            "matmul_8192_bf16_ms": self.kernel_s * 1e3,
        }

    def device(self) -> GpuDevice:
        return self._device

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def session(self, interval_ms: float = 10.0) -> NvmlSession:
        meter = NvmlEnergyMeter()
        opened = meter.open([self.uuid], EnergyConfig(sample_interval_ms=interval_ms))
        assert isinstance(opened, NvmlSession)
        opened.start()
        return opened

    @contextlib.contextmanager
    def steady(self) -> Iterator[None]:
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                for _ in range(10):
                    self._a @ self._a
                self.torch.cuda.synchronize()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join()
            self.torch.cuda.synchronize()

    def square(self, wave: Square, seconds: float) -> None:
        torch = self.torch
        start = time.perf_counter() + wave.phase_s
        on_s = wave.duty * wave.period_s
        k = 0
        while True:
            on = start + k * wave.period_s
            if on - start >= seconds:
                break
            while time.perf_counter() < on:
                pass  # spin: a sleep's wake-up jitter is as long as the pulse
            while time.perf_counter() < on + on_s - self.kernel_s / 2:
                self._a @ self._a
                torch.cuda.synchronize()
            k += 1

    def queue_work(self, seconds: float) -> None:
        for _ in range(max(1, round(seconds / self.big_kernel_s))):
            self._big @ self._big

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()

    @contextlib.contextmanager
    def second_process(self, hold_s: float) -> Iterator[int]:
        code = (
            "import time, torch; x = torch.empty(2**28, device='cuda'); "
            f"torch.cuda.synchronize(); time.sleep({hold_s})"
        )
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": self.uuid}
        process = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            yield process.pid
        finally:
            process.wait(timeout=hold_s + 60)

    def workload_meter(self, **options: Any) -> NvmlEnergyMeter:
        return NvmlEnergyMeter(**options)

    def model_dir(self) -> Path:
        if self._model is None:
            self._model = _build_gpt2(
                self.workdir / "gpt2-small-random",
                n_embd=768,
                n_layer=12,
                n_head=12,
                vocab_size=50257,
                n_positions=1024,
            )
        return self._model

    def experiment_backend(self) -> Any:
        from llem_service.backends.pytorch import PytorchBackend

        self.model_dir()
        return PytorchBackend(model_roots=(str(self.workdir),))

    def reference_energy(self) -> Any:
        from zeus.monitor import ZeusMonitor

        return ZeusReference(ZeusMonitor(gpu_indices=[self.cuda_index], cpu_indices=[]))

    def close(self) -> None:
        self._nvml.close()


@dataclass
class ZeusReference:
    """Zeus's ZeusMonitor over the same window: energy in joules."""

    monitor: Any
    name: str = "Zeus ZeusMonitor"

    def begin(self) -> None:
        self.monitor.begin_window("llem-validation")

    def end(self) -> float:
        return float(self.monitor.end_window("llem-validation").total_energy)


def _optional(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:
        return None


class ScriptedRig(Rig):
    """The scripted GPU on the CPU (``--dry-run``): the whole campaign without a GPU.

    Args:
        workdir: Where models and files go.
        time_scale: Shortens the real-time checks (7 to 10); the sensor checks take no real
            time whatever their length.
        part_time: The counter senses only 25% of each period (what SC24 found on A100/H100).
    """

    dry = True

    def __init__(self, workdir: Path, time_scale: float = 0.02, part_time: bool = False):
        self.workdir = workdir
        self.time_scale = time_scale
        self.name = "scripted GPU (dry run)"
        self.manual = ManualClock()
        self.clock = self.manual
        self.profile = LiveProfile(idle_w=SCRIPTED_IDLE_W, warm_w=40.0, cool_tau_s=15.0)
        self.processes = ProcessSchedule()
        gpu = realistic_sensor(
            FakeGpu(
                uuid="GPU-5c41b7ed-0000-4000-8000-000000000000",
                name="Scripted H200",
                profile=self.profile,
                busy_above_w=200.0,
                live_processes=self.processes,
            ),
            random.Random(11),
            part_time=part_time,
        )
        self.uuid = gpu.uuid
        self.library = FakeNvml(gpus=(gpu,), clock=self.manual, wall=self.manual.wall)
        self._nvml = Nvml(self.library).open()
        self._device = self._nvml.device(self.uuid)
        self._sessions: list[NvmlSession] = []
        self._next_round: float | None = None
        self._queued_until = -1.0
        self._model: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "gpu": self.name,
            "uuid": self.uuid,
            "driver": self._nvml.driver_version(),
            "nvml": self._nvml.nvml_version(),
            "cuda_driver": self._nvml.cuda_driver_version(),
            "power_limit_w": self._device.power_limit_w(),
            "host": platform.node(),
            "time_scale": self.time_scale,
        }

    def device(self) -> GpuDevice:
        return self._device

    def now(self) -> float:
        return self.library.now()

    def sleep(self, seconds: float) -> None:
        """Time passes on the manual clock; open sessions sample every interval of it."""
        end = self.manual() + seconds
        live = [s for s in self._sessions if s.sampler.report is None]
        if not live:
            self.manual.t = end
            return
        interval = live[0].sampler.interval_s
        while True:
            if self._next_round is None or self._next_round <= self.manual() + 1e-9:
                for session in live:
                    session.sampler.sample_once()
                base = self.manual() if self._next_round is None else self._next_round
                self._next_round = max(base + interval, self.manual() + 1e-9)
            if self.manual() >= end - 1e-9:
                return
            self.manual.t = min(self._next_round, end)

    def session(self, interval_ms: float = 10.0) -> NvmlSession:
        meter = NvmlEnergyMeter(
            library=self.library,
            clock=self.manual,
            sleep=self.sleep,
            wall=self.manual.wall,
            sampler="manual",
            powercap_root=None,
        )
        opened = meter.open([self.uuid], EnergyConfig(sample_interval_ms=interval_ms))
        assert isinstance(opened, NvmlSession)
        self._sessions.append(opened)
        self._next_round = None
        return opened

    @contextlib.contextmanager
    def steady(self) -> Iterator[None]:
        self.profile.occupy(self.now(), 1e6, SCRIPTED_LOAD_W, "steady")
        try:
            yield
        finally:
            self.profile.occupy(self.now(), 1e-6, SCRIPTED_IDLE_W, "end of steady")

    def square(self, wave: Square, seconds: float) -> None:
        start = self.now() + wave.phase_s
        k = 0
        while k * wave.period_s < seconds:
            self.profile.occupy(
                start + k * wave.period_s, wave.duty * wave.period_s, SCRIPTED_LOAD_W, "pulse"
            )
            k += 1
        self.sleep(wave.phase_s + seconds)

    def queue_work(self, seconds: float) -> None:
        start = max(self.now(), self._queued_until)
        self.profile.occupy(start, seconds, SCRIPTED_LOAD_W, "queued")
        self._queued_until = start + seconds

    def synchronize(self) -> None:
        if self._queued_until > self.now():
            self.sleep(self._queued_until - self.now())

    @contextlib.contextmanager
    def second_process(self, hold_s: float) -> Iterator[int]:
        pid = 424242
        self.processes.add(pid, self.now(), self.now() + hold_s, 2**30)
        yield pid

    # -- the workload checks: real time, a sampler process, the CPU ----------------------------

    def workload_library(self, watts: float = 300.0) -> FakeNvml:
        gpu = realistic_sensor(
            FakeGpu(
                uuid=FAKE_DEVICE.uuid,
                name="Scripted H200",
                profile=PowerProfile(((1.0, watts),)),
                counter_period_s=0.01,
            ),
            random.Random(12),
        )
        return FakeNvml(gpus=(gpu,))

    def workload_meter(self, **options: Any) -> NvmlEnergyMeter:
        return NvmlEnergyMeter(library=self.workload_library(), powercap_root=None, **options)

    def model_dir(self) -> Path:
        if self._model is None:
            self._model = _build_gpt2(self.workdir / "gpt2-tiny", n_embd=64, n_layer=4)
        return self._model

    def experiment_backend(self) -> Any:
        # The fake backend "runs" on the scripted GPU's UUID (the CPU backend meters none).
        measured = max(0.3, 30 * self.time_scale)
        return FakeInferenceBackend(sleep_s=measured, measured_time_s=measured)

    def reference_energy(self) -> Any:
        return None  # the end-to-end check reads the scripted GPU's truth instead
