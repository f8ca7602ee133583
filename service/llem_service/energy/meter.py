"""`NvmlEnergyMeter`: energy from the GPUs' cumulative energy counters, read at phase edges,
with a power sampler (a process of its own) alongside for the timeline and the cross-check.
At every edge the session also reads each GPU's throttle counters and the host's RAPL
counters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from llem_client import BaselineConfig, DeviceInfo, EnergyConfig

from llem_service.energy.acquired import AcquisitionRecord
from llem_service.energy.base import (
    Baseline,
    CounterMark,
    DeviceMeta,
    DeviceNotMetered,
    MeterError,
    MeterProbe,
    MeterRecord,
)
from llem_service.energy.devices import (
    DeviceKind,
    counter_absent_reason,
    cuda_order,
    describe,
    mig_mode,
    resolve_metered,
    unmeterable_reason,
    visible_devices,
)
from llem_service.energy.host import DEFAULT_ROOT, HostProbe, probe_host, read_zones
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
from llem_service.energy.readings import Clock, SensorProbe, probe_sensors
from llem_service.energy.sampler import PowerSampler, SamplerMode, SamplerSpec, make_directory
from llem_service.energy.throttle import read_violations

__all__ = ["DeviceNotMetered", "NvmlEnergyMeter", "NvmlSession", "visible_devices"]

T = TypeVar("T")

#: Sampling interval bounds when it is derived from the counter's update period, seconds.
MIN_INTERVAL_S = 0.010
MAX_INTERVAL_S = 0.100
#: Used when no GPU has an energy counter to probe.
DEFAULT_INTERVAL_S = 0.050
#: A baseline is contaminated when the GPU was busier than this during the idle window.
BASELINE_BUSY_PCT = 10


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
        clock: Monotonic clock, seconds (the backend's batch stamps use ``time.perf_counter``;
            a process sampler shares only that clock).
        sleep: Used while probing the sensors.
        wall: Wall-clock seconds since 1970 (to age NVML's timestamps).
        sampler: ``process`` (default), ``thread`` or ``manual`` (see `energy.sampler`).
        powercap_root: Where the host's RAPL counters are (``LLEM_POWERCAP_ROOT``); None turns
            host energy off.
        samples_dir: Where the sampler's column files go (the system's temporary directory
            by default).
    """

    library: Callable[[], NvmlLibrary] = load_pynvml
    clock: Clock = time.perf_counter
    sleep: Callable[[float], None] = time.sleep
    wall: Clock = time.time
    sampler: SamplerMode = "process"
    powercap_root: str | None = str(DEFAULT_ROOT)
    samples_dir: str | None = None
    name: str = "nvml"

    def probe(self) -> MeterProbe:
        order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
        try:
            with Nvml(self.library()) as nvml:
                ordered, exact = cuda_order(nvml.devices(), order)
                devices = visible_devices(ordered, os.environ.get("CUDA_VISIBLE_DEVICES"))
                infos = tuple(
                    DeviceInfo(
                        index=i,
                        name=d.name(),
                        uuid=d.uuid,
                        memory_total_bytes=d.memory_total_bytes(),
                        mig_mode=mig_mode(d),
                    )
                    for i, d in enumerate(devices)
                )
        except NvmlError as exc:
            return MeterProbe(name=self.name, available=False, reason=str(exc))
        note = None
        if not exact:
            note = (
                "CUDA_DEVICE_ORDER is FASTEST_FIRST and the GPUs differ: CUDA's heuristic is "
                "undocumented, so the indices are approximated (newest compute capability, "
                "then highest clock). Set CUDA_DEVICE_ORDER=PCI_BUS_ID for exact indices"
            )
        if not infos:
            return MeterProbe(
                name=self.name,
                available=False,
                reason="NVML sees no GPU this process may use (check CUDA_VISIBLE_DEVICES "
                "and that the container was started with GPUs)",
                cuda_device_order=order,
            )
        return MeterProbe(
            name=self.name,
            available=True,
            devices=infos,
            cuda_device_order=order,
            device_order_note=note,
        )

    def open(
        self,
        device_uuids: Sequence[str],
        plan: EnergyConfig,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> NvmlSession:
        nvml = Nvml(self.library()).open()
        try:
            return NvmlSession(
                nvml,
                list(device_uuids),
                plan,
                self.clock,
                self.sleep,
                on_failure=on_failure,
                options=self,
            )
        except BaseException:
            nvml.close()
            raise


class NvmlSession:
    """One experiment's metering: counters at marks, a sampler process, baselines.

    Raises `DeviceNotMetered` (a `MeterError`) when a GPU cannot be metered at all: a MIG
    instance, a device NVML does not know, a GPU with neither counter nor power reading.
    """

    def __init__(
        self,
        nvml: Nvml,
        device_uuids: list[str],
        plan: EnergyConfig,
        clock: Clock,
        sleep: Callable[[float], None],
        on_failure: Callable[[MeterError], None] | None = None,
        *,
        options: NvmlEnergyMeter | None = None,
    ) -> None:
        if not device_uuids:
            raise MeterError("no GPU to meter: the experiment runs on no CUDA device")
        options = options or NvmlEnergyMeter(clock=clock, sleep=sleep)
        self.nvml = nvml
        self.clock = clock
        self.sleep = sleep
        self.devices = [resolve_metered(nvml, uuid) for uuid in device_uuids]
        self._own_pid = os.getpid()
        kinds = {d.uuid: describe(d) for d in self.devices}
        counters = [_optional(d.energy_mj) is not None for d in self.devices]
        probes = probe_sensors(self.devices, counters, clock, options.wall, sleep)
        for device, has_counter, probe in zip(self.devices, counters, probes, strict=True):
            if not has_counter and probe.power_field is None:
                raise DeviceNotMetered(unmeterable_reason(device, kinds[device.uuid]))
        if plan.sample_interval_ms is not None:
            interval_s = plan.sample_interval_ms / 1e3
        else:
            known = [p.counter_period_s for p in probes if p.counter_period_s is not None]
            interval_s = (
                min(max(min(known) / 2, MIN_INTERVAL_S), MAX_INTERVAL_S)
                if known
                else DEFAULT_INTERVAL_S
            )
        self.host = (
            probe_host(Path(options.powercap_root))
            if options.powercap_root
            else HostProbe((), "host energy is off (LLEM_POWERCAP_ROOT is empty)")
        )
        spec = SamplerSpec(
            library=options.library,
            device_uuids=tuple(d.uuid for d in self.devices),
            interval_s=interval_s,
            power_fields=tuple(p.power_field for p in probes),
            refresh_s=tuple(p.instant_refresh_s for p in probes),
            directory=make_directory(options.samples_dir),
            own_pid=self._own_pid,
            host_zones=self.host.zones,
        )
        self.sampler = PowerSampler(
            spec,
            mode=options.sampler,
            clock=clock,
            wall=options.wall,
            devices=self.devices,
            on_failure=on_failure,
        )
        self._probes = {d.uuid: p for d, p in zip(self.devices, probes, strict=True)}
        self._kinds = kinds
        self.metas = tuple(
            self._describe(d, has_counter, probe, kinds[d.uuid])
            for d, has_counter, probe in zip(self.devices, counters, probes, strict=True)
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

    def _describe(
        self, device: GpuDevice, has_counter: bool, probe: SensorProbe, kind: DeviceKind
    ) -> DeviceMeta:
        processes: list[GpuProcess] = _optional(device.compute_processes) or []
        return DeviceMeta(
            uuid=device.uuid,
            name=device.name(),
            nvml_index=device.index(),
            memory_total_bytes=device.memory_total_bytes(),
            power_limit_w=_optional(device.power_limit_w),
            persistence_mode=_optional(device.persistence_mode),
            has_energy_counter=has_counter,
            counter_update_period_s=probe.counter_period_s,
            power_field=probe.power_field,
            compute_processes=tuple((p.pid, p.used_memory_bytes) for p in processes),
            counter_absent_reason=None if has_counter else counter_absent_reason(kind),
        )

    # -- the session protocol ---------------------------------------------------------------

    def start(self) -> None:
        self.sampler.start()

    def mark(self, label: str) -> None:
        if self.sampler.error is not None:
            raise MeterError(str(self.sampler.error))
        # Counters first, all together at t; the host's and the slower queries after.
        t = self.clock()
        energy: dict[str, int | None] = {
            device.uuid: device.energy_mj() if meta.has_energy_counter else None
            for device, meta in zip(self.devices, self.metas, strict=True)
        }
        host = read_zones(self.host.zones) if self.host.zones else {}
        foreign = {device.uuid: self._foreign_pids(device) for device in self.devices}
        violations = {device.uuid: read_violations(device) for device in self.devices}
        self.marks.append(
            CounterMark(
                label=label,
                t_s=t,
                energy_mj=energy,
                foreign_pids=foreign,
                violations_ns=violations,
                host_uj=host,
            )
        )

    def _foreign_pids(self, device: GpuDevice) -> tuple[int, ...]:
        """Processes on the GPU other than this one. In a container NVML may report host PIDs,
        so when this process's PID is not among them, one of them is assumed to be ours."""
        pids = sorted(p.pid for p in _optional(device.compute_processes) or [])
        if self._own_pid in pids:
            pids.remove(self._own_pid)
            return tuple(pids)
        return tuple(pids) if len(pids) > 1 else ()

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
                energy = integrate_power(*samples.power_points(), start.t_s, end.t_s)
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
        stopped = self.sampler.stop()
        starts, costs = self.sampler.rounds()
        timeline = self.sampler.snapshot()
        if stopped:
            self.nvml.close()
        # else: the sampler thread is stuck inside NVML; shutting NVML down under it could
        # crash the process, and it ends with the process anyway.
        self.sampler.close()
        driver, nvml_version, cuda = self._versions
        self._closed = MeterRecord(
            devices=self.metas,
            marks=tuple(self.marks),
            timeline=timeline,
            sample_interval_s=self.sampler.interval_s,
            round_starts_s=starts,
            round_costs_s=costs,
            failed_reads=self.sampler.failed_reads,
            baselines=self._baselines,
            reused_baselines=self._reused,
            driver_version=driver,
            nvml_version=nvml_version,
            cuda_driver_version=cuda,
            acquisition=AcquisitionRecord(
                sampler_mode=self.sampler.mode,
                sampler_pid=self.sampler.pid,
                probes=self._probes,
                kinds=self._kinds,
                sampler=self.sampler.report,
                host=self.host,
                samples_bytes=self.sampler.samples_bytes,
            ),
        )
        return self._closed
