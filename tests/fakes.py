"""Explicit fakes for the service's seams. Reading a class tells you exactly what it does.

They are plain dataclasses so that they pickle into the experiment's child process, where the
real scheduler runs them just as it runs the real backend and meter.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llem_client import DeviceInfo, ExperimentConfig
from llem_service.backends.base import (
    BackendError,
    ConfigError,
    LoadReport,
    PrefillReport,
    ProgressFn,
    WarmupReport,
    WorkloadReport,
)
from llem_service.energy.meter import NvmlEnergyMeter
from llem_service.energy.readings import NvmlReadingSource
from llem_service.energy.sensors import SensorTable
from llem_service.models.hub import HubAnswer, HubLookup
from llem_service.studies.cooldown import NvmlThermometer

from tests.fake_nvml import FakeGpu, FakeNvml, PowerProfile

Phase = Literal["load", "warmup", "run"]

FAKE_DEVICE = DeviceInfo(
    index=0,
    name="Fake GPU",
    uuid="GPU-00000000-fake-0000-0000-000000000000",
    memory_total_bytes=80 * 2**30,
)


@dataclass
class FakeInferenceBackend:
    """A backend that 'generates' fixed token counts and reports fixed timings.

    Every request has ``input_tokens_per_request`` prompt tokens and ``max_output_tokens``
    output tokens; the measured window reports ``measured_time_s``. ``sleep_s`` is how long
    `run` really takes, so cancellation and one-at-a-time execution can be observed;
    ``load_sleep_s`` is how long `load` really takes (a scripted GPU's power can then ramp up
    while the model loads, between the idle baseline and the measured window).
    ``fail_in`` raises a `BackendError` with ``error_message`` in that phase (a `ConfigError`,
    the submitter's doing, with ``fail_as_config_error``); ``crash_in``
    ends the child process abruptly with ``os._exit(crash_exit_code)``, as a segfault or an
    OOM kill would. ``gpu=False`` runs "on the CPU": no device to meter. `prefill` (one
    prefill-only pass) sleeps as long as the run's prefill spans take (a quarter of each
    batch) and reports what it really took; ``prefill_calls`` counts the passes.
    """

    name: str = "fake"
    load_time_s: float = 0.25
    warmup_time_s: float = 0.125
    measured_time_s: float = 0.5
    sleep_s: float = 0.0
    load_sleep_s: float = 0.0
    input_tokens_per_request: int = 8
    flops_per_token: int = 1000
    fail_in: Phase | None = None
    crash_in: Phase | None = None
    crash_exit_code: int = 3
    error_message: str = "the fake backend failed on purpose"
    fail_as_config_error: bool = False
    marker_dir: str | None = None
    gpu: bool = True
    prefill_calls: int = 0
    _closed: bool = field(default=False, repr=False)

    def versions(self) -> dict[str, str]:
        return {"fake-backend": "1.0"}

    def prepare(self, config: ExperimentConfig) -> tuple[str, ...]:
        return (FAKE_DEVICE.uuid,) if self.gpu else ()

    def synchronize(self) -> None:
        pass

    def _maybe_fail(self, phase: Phase) -> None:
        if self.crash_in == phase:
            os._exit(self.crash_exit_code)
        if self.fail_in == phase:
            raise (ConfigError if self.fail_as_config_error else BackendError)(self.error_message)

    def load(self, config: ExperimentConfig) -> LoadReport:
        self._maybe_fail("load")
        time.sleep(self.load_sleep_s)
        return LoadReport(
            load_time_s=self.load_time_s,
            device_uuids=(FAKE_DEVICE.uuid,) if self.gpu else (),
            n_parameters=1234,
        )

    def reuse(self, config: ExperimentConfig) -> LoadReport:
        """Keeps the 'model' of the last load: no load time."""
        self._maybe_fail("load")
        return LoadReport(
            load_time_s=0.0,
            device_uuids=(FAKE_DEVICE.uuid,) if self.gpu else (),
            n_parameters=1234,
        )

    def warmup(self, config: ExperimentConfig) -> WarmupReport:
        self._maybe_fail("warmup")
        batches = config.warmup.batches
        return WarmupReport(
            duration_s=self.warmup_time_s,
            batch_latencies_s=(self.warmup_time_s / batches,) * batches if batches else (),
        )

    def run(self, config: ExperimentConfig, progress: ProgressFn) -> WorkloadReport:
        self._maybe_fail("run")
        if self.marker_dir is not None:
            # Lets a test see which experiments overlapped in time: a file per running run.
            marker = os.path.join(self.marker_dir, f"{os.getpid()}-{time.monotonic_ns()}")
            with open(marker, "w") as f:
                f.write(f"start {time.time()}\n")
        n = config.n_prompts
        n_batches = -(-n // config.batch_size)
        steps = config.max_output_tokens - 1
        spans = []
        step_times = []
        for done in range(0, n, config.batch_size):
            started = time.perf_counter()
            time.sleep(self.sleep_s * config.batch_size / n)
            ended = time.perf_counter()
            # Within a batch: the first token at 1/4 of its time, then evenly spaced steps.
            first = started + (ended - started) / 4
            spans.append((started, first, ended))
            step_times.append(
                tuple(first + (ended - first) * (k + 1) / steps for k in range(steps))
            )
            progress(min(done + config.batch_size, n), n)
        if self.marker_dir is not None:
            with open(marker, "a") as f:
                f.write(f"end {time.time()}\n")
        batch_s = self.measured_time_s / n_batches
        ttft_s = batch_s / 4
        input_tokens = n * self.input_tokens_per_request
        output_tokens = n * config.max_output_tokens
        sizes = tuple(min(config.batch_size, n - i) for i in range(0, n, config.batch_size))
        return WorkloadReport(
            n_requests=n,
            input_tokens=input_tokens,
            output_tokens_per_request=(config.max_output_tokens,) * n,
            duration_s=self.measured_time_s,
            batch_latencies_s=(batch_s,) * n_batches,
            prefill_time_s=ttft_s * n_batches,
            decode_time_s=(batch_s - ttft_s) * n_batches,
            ttft_s=(ttft_s,) * n,
            itl_s=((batch_s - ttft_s) / steps,) * (steps * n_batches) if steps else (),
            hook_overhead_s=0.0,
            prefill_flops=input_tokens * self.flops_per_token,
            decode_flops=output_tokens * self.flops_per_token,
            flops_method="fake: flops_per_token x tokens",
            batch_spans_s=tuple(spans),
            input_tokens_per_request=(self.input_tokens_per_request,) * n,
            batch_sizes=sizes,
            batch_step_times_s=tuple(step_times),
        )

    def prefill(self, config: ExperimentConfig) -> PrefillReport:
        self._maybe_fail("run")
        self.prefill_calls += 1
        n = config.n_prompts
        latencies = []
        started = time.perf_counter()
        for _ in range(0, n, config.batch_size):
            batch_started = time.perf_counter()
            time.sleep(self.sleep_s * config.batch_size / n / 4)
            latencies.append(time.perf_counter() - batch_started)
        return PrefillReport(
            duration_s=time.perf_counter() - started, batch_latencies_s=tuple(latencies)
        )

    def close(self) -> None:
        self._closed = True


#: What the scripted GPU's sensor is, told to the meter as an operator would: it integrates
#: every counter period (no part-time sensing) and is as accurate as NVIDIA documents.
FAKE_SENSOR = SensorTable.with_overrides(
    {FAKE_DEVICE.name: {"gain_rel": 0.05, "offset_w": 5.0, "sensed_fraction": 1.0}}
)


def fake_meter(
    power_w: float = 300.0, *, counter_period_s: float = 0.005, **gpu: Any
) -> NvmlEnergyMeter:
    """The real NVML meter over one scripted GPU (`FAKE_DEVICE`) drawing ``power_w``.

    The counter updates every ``counter_period_s`` (short by default, so the meter's probe of
    it is quick); other `FakeGpu` fields pass through ``gpu``. The meter's sensor table
    describes the fake's sensor (`FAKE_SENSOR`).
    """
    device = FakeGpu(
        uuid=FAKE_DEVICE.uuid,
        name=FAKE_DEVICE.name,
        profile=PowerProfile(((1.0, power_w),)),
        counter_period_s=counter_period_s,
        **gpu,
    )
    # Host energy off: the machine's own RAPL tree would make results differ between hosts.
    return NvmlEnergyMeter(
        library=FakeNvml(gpus=(device,)), sensors=FAKE_SENSOR, powercap_root=None
    )


def fake_readings(power_w: float = 60.0, **gpu: Any) -> NvmlReadingSource:
    """The idle poll's reader over the scripted GPU `FAKE_DEVICE`, idle at ``power_w``."""
    device = FakeGpu(
        uuid=FAKE_DEVICE.uuid,
        name=FAKE_DEVICE.name,
        profile=PowerProfile(((1.0, power_w),)),
        **gpu,
    )
    return NvmlReadingSource(FakeNvml(gpus=(device,)), None, time.time)


def fake_thermometer(temperature_c: int = 40) -> NvmlThermometer:
    """The real NVML thermometer over the scripted `FAKE_DEVICE`, at ``temperature_c``."""
    device = FakeGpu(
        uuid=FAKE_DEVICE.uuid, name=FAKE_DEVICE.name, temperature_c=(temperature_c, 0.0)
    )
    return NvmlThermometer(library=FakeNvml(gpus=(device,)))


@dataclass
class ScriptedBackend(FakeInferenceBackend):
    """`FakeInferenceBackend` whose behaviour each experiment picks through its config's tags,
    so one real server process can run healthy, slow, hanging, crashing and OOM experiments in
    turn (the load, chaos, stress and perf tiers drive a server they cannot reconfigure).

    Tags read by `run` (all optional):

    - ``fake.sleep_s``: seconds the run really takes (spread over its batches).
    - ``fake.fault``: ``hang`` sleeps for an hour; ``oom`` lowers the process's address-space
      limit to ``oom_limit_bytes`` above its current size and allocates until Python raises
      `MemoryError` (a real allocation failure, not a raised stand-in); ``exit`` ends the
      process with ``os._exit(crash_exit_code)``.
    - ``fake.pid_name``: before anything else, write the process id to
      ``{pid_dir}/{pid_name}.pid``, so a test can signal this very process.
    """

    pid_dir: str | None = None
    oom_limit_bytes: int = 256 * 2**20

    def run(self, config: ExperimentConfig, progress: ProgressFn) -> WorkloadReport:
        tags = config.tags
        pid_name = tags.get("fake.pid_name")
        if pid_name is not None and self.pid_dir is not None:
            path = os.path.join(self.pid_dir, f"{pid_name}.pid")
            with open(path + ".part", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".part", path)  # the test never reads half a pid
        fault = tags.get("fake.fault")
        if fault == "hang":
            time.sleep(3600)
        elif fault == "exit":
            os._exit(self.crash_exit_code)
        elif fault == "oom":
            self._exhaust_memory()
        sleep_s = float(tags.get("fake.sleep_s", self.sleep_s))
        scripted = FakeInferenceBackend(
            measured_time_s=self.measured_time_s,
            sleep_s=sleep_s,
            input_tokens_per_request=self.input_tokens_per_request,
            flops_per_token=self.flops_per_token,
        )
        return scripted.run(config, progress)

    def _exhaust_memory(self) -> None:
        import resource

        with open("/proc/self/statm") as f:
            size_bytes = int(f.read().split()[0]) * resource.getpagesize()
        limit = size_bytes + self.oom_limit_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        hog: list[bytearray] = []
        try:
            while True:
                hog.append(bytearray(16 * 2**20))
        finally:
            hog.clear()  # as a real workload's frames would, when MemoryError unwinds them


@dataclass
class FakeHub:
    """A model hub and hub cache whose contents the test states.

    ``online=True`` and ``models=None``: the hub has every well-formed id (most tests submit
    made-up ids such as ``tiny-test-model``). ``models``: the ids the hub has; any other is
    missing. ``cached``: id -> its cached config.json. ``offline``: the reason the server may
    not contact the hub (as ``HF_HUB_OFFLINE`` gives). ``unreachable``: contacting it fails
    so. ``lookups`` records each question put to the hub, so a test can see it was (not) asked.
    """

    models: set[str] | None = None
    cached: dict[str, dict[str, Any]] = field(default_factory=dict)
    offline: str | None = None
    unreachable: str | None = None
    lookups: list[str] = field(default_factory=list)

    def offline_reason(self) -> str | None:
        return self.offline

    def cached_models(self) -> list[str]:
        return sorted(self.cached)

    def cached_config(self, repo_id: str, revision: str | None) -> dict[str, Any] | None:
        return self.cached.get(repo_id)

    def lookup(self, repo_id: str, revision: str | None) -> HubLookup:
        self.lookups.append(repo_id)
        if self.unreachable is not None:
            return HubLookup(HubAnswer.UNREACHABLE, self.unreachable)
        if self.models is None or repo_id in self.models:
            return HubLookup(HubAnswer.EXISTS)
        return HubLookup(HubAnswer.MISSING)


# -- multi-GPU mode ---------------------------------------------------------------------------


def fake_gpu_uuid(index: int) -> str:
    """The UUID of scripted GPU ``index`` of a multi-GPU host."""
    return f"GPU-{index:08d}-fake-4000-8000-000000000000"


def fake_gpus_meter(n: int, power_w: float = 300.0) -> NvmlEnergyMeter:
    """The real NVML meter over a host of ``n`` scripted GPUs (`fake_gpu_uuid` 0..n-1), each
    drawing ``power_w``, counters updating every 5 ms (so the meter's probe of them is quick)."""
    gpus = tuple(
        FakeGpu(
            uuid=fake_gpu_uuid(i),
            name=f"Fake H100 #{i}",
            profile=PowerProfile(((1.0, power_w),)),
            counter_period_s=0.005,
        )
        for i in range(n)
    )
    return NvmlEnergyMeter(library=FakeNvml(gpus=gpus))


@dataclass
class MultiGpuBackend(ScriptedBackend):
    """`ScriptedBackend` on the GPUs its grant shows it: `prepare` and `load` name the UUIDs in
    ``CUDA_VISIBLE_DEVICES`` (as the PyTorch backend names ``cuda:i``), or `FAKE_DEVICE` when
    the variable is unset (a whole-host grant).

    With ``gpu_log_dir``, each run writes ``<gpu_log_dir>/<pid>.json`` when it ends: its config
    ``name``, its pid, ``CUDA_VISIBLE_DEVICES``, the wall-clock start and end of the run, and for
    each of its GPUs what the lock files of ``lock_dir`` said at the start: ``held`` (another
    descriptor cannot lock it), ``holder`` (the job id the file names) and ``inherited`` (this
    process has the lock file open: it holds the lock itself).
    """

    gpu_log_dir: str | None = None
    lock_dir: str | None = None

    @staticmethod
    def granted() -> tuple[str, ...]:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return tuple(visible.split(",")) if visible else (FAKE_DEVICE.uuid,)

    def prepare(self, config: ExperimentConfig) -> tuple[str, ...]:
        return self.granted()

    def load(self, config: ExperimentConfig) -> LoadReport:
        report = super().load(config)
        return LoadReport(
            load_time_s=report.load_time_s,
            device_uuids=self.granted(),
            n_parameters=report.n_parameters,
        )

    def run(self, config: ExperimentConfig, progress: ProgressFn) -> WorkloadReport:
        started = time.time()
        locks = {uuid: self._lock_state(uuid) for uuid in self.granted()}
        report = super().run(config, progress)
        if self.gpu_log_dir is not None:
            entry = {
                "name": config.name,
                "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "start": started,
                "end": time.time(),
                "locks": locks,
            }
            path = os.path.join(self.gpu_log_dir, f"{os.getpid()}.json")
            with open(path + ".part", "w") as f:
                json.dump(entry, f)
            os.replace(path + ".part", path)
        return report

    def _lock_state(self, uuid: str) -> dict[str, Any]:
        if self.lock_dir is None:
            return {}
        from llem_service.jobs.gpu_locks import GpuLocks

        path = GpuLocks(Path(self.lock_dir)).path(uuid)
        holders = GpuLocks(Path(self.lock_dir)).holders([uuid])
        fds = os.listdir("/proc/self/fd")
        inherited = any(_fd_target(fd) == str(path) for fd in fds)
        holder = holders.get(uuid)
        return {
            "held": holder is not None,
            "holder": holder.job_id if holder else None,
            "inherited": inherited,
        }


def _fd_target(fd: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
