"""`NvmlEnergyMeter`: energy from the GPUs' cumulative energy counters, read at phase edges,
with a power sampler (a process of its own) alongside for the timeline and the cross-check.
At every edge the session also reads each GPU's throttle counters and the host's RAPL
counters.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llem_client import DeviceInfo, EnergyConfig

from llem_service.energy.acquired import AcquisitionRecord
from llem_service.energy.base import (
    CounterMark,
    DeviceMeta,
    DeviceNotMetered,
    DeviceState,
    MeterError,
    MeterProbe,
    MeterRecord,
    Timeline,
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
from llem_service.energy.field_readers import (
    COUNTER_PROBE_MAX_S,
    Clock,
    RetryPolicy,
    SensorProbe,
    probe_counter,
    probe_sensors,
)
from llem_service.energy.host import DEFAULT_ROOT, HostProbe, probe_host, read_zones
from llem_service.energy.nvml import (
    NVML_ERROR_NOT_FOUND,
    GpuDevice,
    GpuProcess,
    Nvml,
    NvmlError,
    NvmlGpuLost,
    NvmlLibrary,
    load_pynvml,
    optional,
)
from llem_service.energy.readings import GpuReading, readings_from_rows
from llem_service.energy.sampler import PowerSampler, SamplerMode, SamplerSpec, make_directory
from llem_service.energy.sensors import SensorTable
from llem_service.energy.throttle import read_violations

__all__ = ["DeviceNotMetered", "NvmlEnergyMeter", "NvmlSession", "visible_devices"]


#: Sampling interval bounds when it is derived from the counter's update period, seconds.
MIN_INTERVAL_S = 0.010
MAX_INTERVAL_S = 0.100
#: Used when no GPU has an energy counter to probe.
DEFAULT_INTERVAL_S = 0.050


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
        sensors: The accuracy table each GPU's sensor is looked up in.
    """

    library: Callable[[], NvmlLibrary] = load_pynvml
    clock: Clock = time.perf_counter
    sleep: Callable[[float], None] = time.sleep
    wall: Clock = time.time
    sampler: SamplerMode = "process"
    powercap_root: str | None = str(DEFAULT_ROOT)
    samples_dir: str | None = None
    name: str = "nvml"
    sensors: SensorTable = field(default_factory=SensorTable)

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
        except NvmlError as exc:
            nvml.close()
            if exc.code == NVML_ERROR_NOT_FOUND:
                raise DeviceNotMetered(
                    f"NVML does not know the device the model runs on ({exc})"
                ) from exc
            raise
        except BaseException:
            nvml.close()
            raise


class NvmlSession:
    """One experiment's metering: counters at marks and a sampler process. What the idle
    baseline is, and when one may be reused, is `llem_service.energy.baseline`'s business.

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
        self._policy = RetryPolicy()
        counted = [probe_counter(d, self._policy, sleep) for d in self.devices]
        counters = [has for has, _ in counted]
        self._counter_failures = {
            d.uuid: why for d, (_, why) in zip(self.devices, counted, strict=True) if why
        }
        probes = probe_sensors(self.devices, counters, clock, options.wall, sleep)
        for i, (device, probe) in enumerate(zip(self.devices, probes, strict=True)):
            if counters[i] and probe.counter_period_s is None:
                # It answers but hardly moves: no period to bound a window's reads with.
                counters[i] = False
                self._counter_failures[device.uuid] = (
                    f"its energy counter changed {probe.counter_changes} time(s) in "
                    f"{COUNTER_PROBE_MAX_S:g} s while the GPU drew power: too slow, or stuck, "
                    "to bound a window's energy"
                )
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
        self._probes = {d.uuid: p for d, p in zip(self.devices, probes, strict=True)}
        self._sensors = options.sensors
        # Described before the samples' directory is made: a GPU that fails to answer here
        # leaves nothing behind in the temporary directory.
        self.metas = tuple(
            self._describe(d, has_counter, probe, kinds[d.uuid])
            for d, has_counter, probe in zip(self.devices, counters, probes, strict=True)
        )
        directory = make_directory(options.samples_dir)
        try:
            spec = SamplerSpec(
                library=options.library,
                device_uuids=tuple(d.uuid for d in self.devices),
                interval_s=interval_s,
                power_fields=tuple(p.power_field for p in probes),
                refresh_s=tuple(p.instant_refresh_s for p in probes),
                directory=directory,
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
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.marks: list[CounterMark] = []
        self._versions = (
            optional(nvml.driver_version),
            optional(nvml.nvml_version),
            optional(nvml.cuda_driver_version),
        )
        self._closed: MeterRecord | None = None

    def _describe(
        self, device: GpuDevice, has_counter: bool, probe: SensorProbe, kind: DeviceKind
    ) -> DeviceMeta:
        processes: list[GpuProcess] = optional(device.compute_processes) or []
        name = device.name()
        return DeviceMeta(
            uuid=device.uuid,
            name=name,
            nvml_index=device.index(),
            memory_total_bytes=device.memory_total_bytes(),
            power_limit_w=optional(device.power_limit_w),
            persistence_mode=optional(device.persistence_mode),
            has_energy_counter=has_counter,
            counter_update_period_s=probe.counter_period_s,
            power_field=probe.power_field,
            power_refresh_s=probe.instant_refresh_s,
            compute_processes=tuple((p.pid, p.used_memory_bytes) for p in processes),
            counter_absent_reason=(
                None
                if has_counter
                else self._counter_failures.get(device.uuid) or counter_absent_reason(kind)
            ),
            sensor=self._sensors.lookup(name),
        )

    @property
    def driver_version(self) -> str | None:
        return self._versions[0]

    # -- the session protocol ---------------------------------------------------------------

    def start(self) -> None:
        self.sampler.start()

    def mark(self, label: str) -> None:
        if self.sampler.error is not None:
            raise MeterError(str(self.sampler.error))
        # Counters first, all together at t; the host's and the slower queries after.
        t = self.clock()
        energy: dict[str, int | None] = {}
        late: dict[str, float] = {}
        for device, meta in zip(self.devices, self.metas, strict=True):
            energy[device.uuid] = None
            if meta.has_energy_counter:
                energy[device.uuid], retried = self._read_counter(device)
                if retried:
                    late[device.uuid] = self.clock() - t
        # Stamped right before it is read: the sampler's process reads the same counters,
        # and a stamp taken before the GPUs' reads could sort after one of its reads.
        host_t = self.clock()
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
                host_t_s=host_t if host else None,
                read_delay_s=late,
            )
        )

    def _read_counter(self, device: GpuDevice) -> tuple[int | None, bool]:
        """The counter now, tried again a few milliseconds later on a transient error (one
        failed read must not fail an hours-long run); None when every try failed (the
        windows that meet here are then integrated from the readings). Also whether it
        took more than one try."""
        policy = self._policy
        for attempt in range(policy.mark_tries):
            try:
                return device.energy_mj(), attempt > 0
            except NvmlGpuLost:
                raise
            except NvmlError:
                if attempt + 1 < policy.mark_tries:
                    self.sleep(policy.mark_gap_s)
        return None, True

    def _foreign_pids(self, device: GpuDevice) -> tuple[int, ...]:
        """Processes on the GPU other than this one. In a container NVML may report host PIDs,
        so when this process's PID is not among them, one of them is assumed to be ours."""
        pids = sorted(p.pid for p in optional(device.compute_processes) or [])
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

    def wait(self, seconds: float) -> None:
        self.sleep(seconds)

    def device_state(self) -> dict[str, DeviceState]:
        return {
            d.uuid: DeviceState(
                temperature_c=optional(d.temperature_c), power_limit_w=optional(d.power_limit_w)
            )
            for d in self.devices
        }

    def snapshot(self) -> MeterRecord:
        """The record so far, while sampling goes on (the baseline reads its window)."""
        return self._record(self.sampler.snapshot())

    def counter_marks(self) -> tuple[CounterMark, ...]:
        return tuple(self.marks)

    def _record(
        self, timeline: Timeline, acquisition: AcquisitionRecord | None = None
    ) -> MeterRecord:
        starts, costs = self.sampler.rounds()
        driver, nvml_version, cuda = self._versions
        return MeterRecord(
            devices=self.metas,
            marks=tuple(self.marks),
            timeline=timeline,
            sample_interval_s=self.sampler.interval_s,
            round_starts_s=starts,
            round_costs_s=costs,
            driver_version=driver,
            nvml_version=nvml_version,
            cuda_driver_version=cuda,
            acquisition=acquisition,
        )

    def close(self) -> MeterRecord:
        if self._closed is not None:
            return self._closed
        stopped = self.sampler.stop()
        timeline = self.sampler.snapshot()
        if stopped:
            self.nvml.close()
        # else: the sampler thread is stuck inside NVML; shutting NVML down under it could
        # crash the process, and it ends with the process anyway.
        acquisition = AcquisitionRecord(
            sampler_mode=self.sampler.mode,
            sampler_pid=self.sampler.pid,
            probes=self._probes,
            sampler=self.sampler.report,
            host=self.host,
            samples_bytes=self.sampler.samples_bytes,
        )
        self._closed = self._record(timeline, acquisition)
        self.sampler.close()
        return self._closed
