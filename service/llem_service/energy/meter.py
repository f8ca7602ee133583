"""`NvmlEnergyMeter`: energy from the GPUs' cumulative energy counters, read at phase edges,
with a power sampler alongside for the timeline and the cross-check.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from llem_client import BaselineConfig, DeviceInfo, EnergyConfig

from llem_service.energy.base import (
    Baseline,
    CounterMark,
    DeviceMeta,
    MeterError,
    MeterProbe,
    MeterRecord,
)
from llem_service.energy.integrate import integrate_power
from llem_service.energy.nvml import (
    GpuDevice,
    GpuProcess,
    Nvml,
    NvmlError,
    NvmlGpuLost,
    NvmlLibrary,
    load_pynvml,
)
from llem_service.energy.readings import GpuReading, readings_from_rows
from llem_service.energy.sampler import Clock, PowerSampler

T = TypeVar("T")

#: Sampling interval bounds when it is derived from the counter's update period, seconds.
MIN_INTERVAL_S = 0.010
MAX_INTERVAL_S = 0.100
#: Used when no GPU has an energy counter to probe.
DEFAULT_INTERVAL_S = 0.050
#: A baseline is contaminated when the GPU was busier than this during the idle window.
BASELINE_BUSY_PCT = 10


def visible_devices(devices: Sequence[GpuDevice], cuda_visible: str | None) -> list[GpuDevice]:
    """The GPUs a CUDA process here can use, in CUDA's order.

    ``CUDA_VISIBLE_DEVICES`` holds indices or UUID prefixes; CUDA stops at the first entry it
    cannot resolve. Indices assume PCI order (``CUDA_DEVICE_ORDER=PCI_BUS_ID``, which the
    service sets unless the environment says otherwise). MIG instances are skipped: NVML
    reports energy only for their parent GPU.
    """
    if cuda_visible is None:
        return list(devices)
    chosen: list[GpuDevice] = []
    for raw in cuda_visible.split(","):
        entry = raw.strip()
        if entry.isdigit():
            if int(entry) >= len(devices):
                break
            chosen.append(devices[int(entry)])
            continue
        matches = [d for d in devices if entry and d.uuid.startswith(entry)]
        if len(matches) != 1:
            break
        chosen.append(matches[0])
    return chosen


def probe_counter_period(
    devices: Sequence[GpuDevice],
    clock: Clock,
    sleep: Callable[[float], None],
    *,
    max_s: float = 0.6,
    poll_s: float = 0.002,
) -> dict[str, float | None]:
    """Update period of each GPU's energy counter: poll it, take the median gap between
    changes. Where it changed fewer than three times within ``max_s`` the period is long, and
    ``max_s`` / (changes seen) is taken as a conservative estimate."""
    changes: dict[str, list[float]] = {d.uuid: [] for d in devices}
    last = {d.uuid: d.energy_mj() for d in devices}
    deadline = clock() + max_s
    while clock() < deadline and any(len(c) < 4 for c in changes.values()):
        sleep(poll_s)
        now = clock()
        for device in devices:
            value = device.energy_mj()
            if value != last[device.uuid]:
                changes[device.uuid].append(now)
                last[device.uuid] = value
    periods: dict[str, float | None] = {}
    for uuid, times in changes.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        periods[uuid] = statistics.median(gaps) if len(gaps) >= 2 else max_s / max(1, len(times))
    return periods


def _optional(read: Callable[[], T]) -> T | None:
    """A descriptive query that may fail (not supported, no permission) without harm."""
    try:
        return read()
    except NvmlGpuLost:
        raise
    except NvmlError:
        return None


@dataclass
class NvmlEnergyMeter:
    """The NVML meter. Picklable: the library is loaded by ``library`` inside each process.

    Args:
        library: Returns pynvml or a fake with its surface.
        clock: Monotonic clock, seconds (the backend's batch stamps use ``time.perf_counter``).
        sleep: Used while probing the counter.
    """

    library: Callable[[], NvmlLibrary] = load_pynvml
    clock: Clock = time.perf_counter
    sleep: Callable[[float], None] = time.sleep
    name: str = "nvml"

    def probe(self) -> MeterProbe:
        try:
            with Nvml(self.library()) as nvml:
                devices = visible_devices(nvml.devices(), os.environ.get("CUDA_VISIBLE_DEVICES"))
                infos = tuple(
                    DeviceInfo(
                        index=i,
                        name=d.name(),
                        uuid=d.uuid,
                        memory_total_bytes=d.memory_total_bytes(),
                    )
                    for i, d in enumerate(devices)
                )
        except NvmlError as exc:
            return MeterProbe(name=self.name, available=False, reason=str(exc))
        if not infos:
            return MeterProbe(
                name=self.name,
                available=False,
                reason="NVML sees no GPU this process may use (check CUDA_VISIBLE_DEVICES "
                "and that the container was started with GPUs)",
            )
        return MeterProbe(name=self.name, available=True, devices=infos)

    def open(
        self,
        device_uuids: Sequence[str],
        plan: EnergyConfig,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> NvmlSession:
        nvml = Nvml(self.library()).open()
        try:
            return NvmlSession(
                nvml, list(device_uuids), plan, self.clock, self.sleep, on_failure=on_failure
            )
        except BaseException:
            nvml.close()
            raise


class NvmlSession:
    """One experiment's metering: counters at marks, a sampler thread, baselines."""

    def __init__(
        self,
        nvml: Nvml,
        device_uuids: list[str],
        plan: EnergyConfig,
        clock: Clock,
        sleep: Callable[[float], None],
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> None:
        if not device_uuids:
            raise MeterError("no GPU to meter: the experiment runs on no CUDA device")
        self.nvml = nvml
        self.clock = clock
        self.sleep = sleep
        self.devices = [nvml.device(uuid) for uuid in device_uuids]
        self._own_pid = os.getpid()
        counters = {d.uuid: _optional(d.energy_mj) is not None for d in self.devices}
        periods = probe_counter_period([d for d in self.devices if counters[d.uuid]], clock, sleep)
        if plan.sample_interval_ms is not None:
            interval_s = plan.sample_interval_ms / 1e3
        else:
            known = [p for p in periods.values() if p is not None]
            interval_s = (
                min(max(min(known) / 2, MIN_INTERVAL_S), MAX_INTERVAL_S)
                if known
                else DEFAULT_INTERVAL_S
            )
        self.sampler = PowerSampler(self.devices, interval_s, clock, on_failure=on_failure)
        self.metas = tuple(
            self._describe(d, counters[d.uuid], periods.get(d.uuid)) for d in self.devices
        )
        self.marks: list[CounterMark] = []
        self._baselines: tuple[Baseline, ...] = ()
        self._reused: frozenset[str] = frozenset()
        self._versions = (
            _optional(nvml.driver_version),
            _optional(nvml.nvml_version),
            _optional(nvml.cuda_driver_version),
        )
        self._closed: MeterRecord | None = None

    def _describe(self, device: GpuDevice, has_counter: bool, period: float | None) -> DeviceMeta:
        processes: list[GpuProcess] = _optional(device.compute_processes) or []
        return DeviceMeta(
            uuid=device.uuid,
            name=device.name(),
            nvml_index=device.index(),
            memory_total_bytes=device.memory_total_bytes(),
            power_limit_w=_optional(device.power_limit_w),
            persistence_mode=_optional(device.persistence_mode),
            has_energy_counter=has_counter,
            counter_update_period_s=period,
            power_field=self.sampler.power_field(device.uuid),
            compute_processes=tuple((p.pid, p.used_memory_bytes) for p in processes),
        )

    # -- the session protocol ---------------------------------------------------------------

    def start(self) -> None:
        self.sampler.start()

    def mark(self, label: str) -> None:
        if self.sampler.error is not None:
            raise MeterError(f"power sampling failed: {self.sampler.error}")
        # Counters first, all together at t; the slower process lists after.
        t = self.clock()
        energy: dict[str, int | None] = {
            device.uuid: device.energy_mj() if meta.has_energy_counter else None
            for device, meta in zip(self.devices, self.metas, strict=True)
        }
        foreign = {device.uuid: self._foreign_pids(device) for device in self.devices}
        self.marks.append(CounterMark(label=label, t_s=t, energy_mj=energy, foreign_pids=foreign))

    def _foreign_pids(self, device: GpuDevice) -> tuple[int, ...]:
        """Processes on the GPU other than this one. In a container NVML may report host PIDs,
        so when this process's PID is not among them, one of them is assumed to be ours."""
        pids = sorted(p.pid for p in _optional(device.compute_processes) or [])
        if self._own_pid in pids:
            pids.remove(self._own_pid)
            return tuple(pids)
        return tuple(pids) if len(pids) > 1 else ()

    def latest_readings(self) -> tuple[GpuReading, ...]:
        """The newest sample of each GPU with its latest counter mark, for live monitoring.

        Reads nothing from NVML: it hands over what the sampler and the marks already read, so
        monitoring adds no read to the measured window. Safe from any thread."""
        names = {meta.uuid: meta.name for meta in self.metas}
        wall_offset_s = time.time() - self.clock()
        marks = self.marks
        energy = dict(marks[-1].energy_mj) if marks else {}
        rows = [
            (uuid, names.get(uuid, ""), t + wall_offset_s, values)
            for uuid, t, values in self.sampler.latest()
        ]
        return readings_from_rows(rows, energy)

    def baselines(
        self, plan: BaselineConfig, cached: Sequence[Baseline], *, now: float
    ) -> tuple[Baseline, ...]:
        if not plan.enabled:
            return ()
        wanted = {d.uuid for d in self.devices}
        # Reused only if clean, young enough, and at least (about) as long as asked for.
        fresh = {
            b.device_uuid: b
            for b in cached
            if b.device_uuid in wanted
            and not b.warnings
            and 0 <= now - b.measured_at <= plan.max_age_s
            and b.duration_s >= 0.9 * plan.duration_s
        }
        missing = [m for m in self.metas if m.uuid not in fresh]
        measured: dict[str, Baseline] = {}
        if missing:
            measured = self._measure_baselines(missing, plan.duration_s, now)
        self._reused = frozenset(fresh)
        self._baselines = tuple(fresh.get(d.uuid) or measured[d.uuid] for d in self.devices)
        return self._baselines

    def _measure_baselines(
        self, metas: Sequence[DeviceMeta], duration_s: float, now: float
    ) -> dict[str, Baseline]:
        self.mark("baseline_start")
        self.sleep(duration_s)
        self.mark("baseline_end")
        start, end = self.marks[-2], self.marks[-1]
        window = end.t_s - start.t_s
        timeline = self.sampler.snapshot()
        out: dict[str, Baseline] = {}
        for meta in metas:
            samples = timeline.device(meta.uuid)
            a, b = start.energy_mj[meta.uuid], end.energy_mj[meta.uuid]
            if a is not None and b is not None and b >= a and meta.counter_update_period_s:
                power = (b - a) / 1e3 / window
                error = (0.002 + power * meta.counter_update_period_s) / window
                method = "energy counter over an idle window"
            else:
                energy = integrate_power(samples.t_s, samples.power_w, start.t_s, end.t_s)
                if energy is None:
                    raise MeterError(f"no power readings from {meta.uuid} to take a baseline")
                power = energy / window
                peak = max((p for p in samples.power_w if p is not None), default=power)
                error = peak * self.sampler.interval_s / window + (peak - power)
                method = "integrated power samples over an idle window"
            busy = [
                u
                for u, t in zip(samples.utilization_pct, samples.t_s, strict=True)
                if u is not None and start.t_s <= t <= end.t_s
            ]
            warnings: list[tuple[str, str]] = []
            pids = set(start.foreign_pids.get(meta.uuid, ())) | set(
                end.foreign_pids.get(meta.uuid, ())
            )
            if (busy and max(busy) > BASELINE_BUSY_PCT) or pids:
                who = f" (processes {sorted(pids)})" if pids else ""
                warnings.append(
                    (
                        "baseline_gpu_busy",
                        f"GPU {meta.uuid} was not idle while its baseline was taken{who}: "
                        "the baseline is too high and adjusted energy too low. Measure on a "
                        "dedicated GPU.",
                    )
                )
            out[meta.uuid] = Baseline(
                device_uuid=meta.uuid,
                power_w=power,
                power_uncertainty_w=error,
                duration_s=window,
                measured_at=now,
                method=f"{method} of {window:.1f} s, CUDA context up, before the model loaded",
                warnings=tuple(warnings),
            )
        return out

    def close(self) -> MeterRecord:
        if self._closed is not None:
            return self._closed
        if self.sampler.stop():
            self.nvml.close()
        # else: the sampler thread is stuck inside NVML; shutting NVML down under it could
        # crash the process, and it ends with the process anyway.
        starts, costs = self.sampler.rounds()
        driver, nvml_version, cuda = self._versions
        self._closed = MeterRecord(
            devices=self.metas,
            marks=tuple(self.marks),
            timeline=self.sampler.snapshot(),
            sample_interval_s=self.sampler.interval_s,
            round_starts_s=starts,
            round_costs_s=costs,
            failed_reads=self.sampler.failed_reads,
            baselines=self._baselines,
            reused_baselines=self._reused,
            driver_version=driver,
            nvml_version=nvml_version,
            cuda_driver_version=cuda,
        )
        return self._closed
