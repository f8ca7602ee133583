"""Live GPU readings for monitoring: the latest value of each signal, not a measurement.

Two producers fill them. While an experiment runs, its meter session's sampler already reads
every metered GPU, and `latest_readings` hands its newest row over (no extra NVML call). While
no experiment runs, `NvmlReadingSource` reads the GPUs itself at a slow pace (the service's
idle poll, `llem_service.monitoring.gpus.IdlePoller`), and stops for the GPUs a run holds.

The readings feed Prometheus gauges (``/metrics``); no result is ever computed from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from llem_service.energy.nvml import GpuDevice, Nvml, NvmlLibrary, optional

ReadingSourceName = Literal["experiment", "idle_poll"]


@dataclass(frozen=True)
class GpuReading:
    """One GPU's latest readings; ``None`` where the GPU does not report a signal.

    Attributes:
        uuid: The GPU (``GPU-...``).
        name: Its product name.
        read_at_s: Wall-clock time of the reading, seconds since the epoch.
        power_w: Instant power (NVML's 1-s average where instant power is not supported).
        energy_mj: The cumulative energy counter (mJ since the driver loaded) when it was last
            read; during an experiment that is the latest counter mark (a phase edge).
        temperature_c: GPU temperature, degrees C.
        sm_clock_mhz: SM clock, MHz.
        utilization_pct: Percent of the last sample period in which a kernel ran.
        memory_used_bytes: Device memory in use.
    """

    uuid: str
    name: str
    read_at_s: float
    power_w: float | None = None
    energy_mj: int | None = None
    temperature_c: int | None = None
    sm_clock_mhz: int | None = None
    utilization_pct: int | None = None
    memory_used_bytes: int | None = None


class ReadingSource(Protocol):
    """Reads GPUs on demand (the idle poll). Opened lazily, closed once."""

    def read(self, skip: frozenset[str]) -> list[GpuReading]:
        """Every GPU the service may use except those in ``skip``; `NvmlError` when NVML
        cannot be used at all."""
        ...

    def close(self) -> None: ...


class NvmlReadingSource:
    """`ReadingSource` over NVML, on the GPUs ``CUDA_VISIBLE_DEVICES`` lets the service use.

    Args:
        library: Returns pynvml or a fake with its surface (called on the first read).
        cuda_visible: ``CUDA_VISIBLE_DEVICES`` of the service, None for every GPU.
        clock: Wall clock, seconds since the epoch.
    """

    def __init__(
        self,
        library: Callable[[], NvmlLibrary],
        cuda_visible: str | None,
        clock: Callable[[], float],
    ) -> None:
        self._library = library
        self._cuda_visible = cuda_visible
        self._clock = clock
        self._nvml: Nvml | None = None
        self._devices: list[GpuDevice] = []
        self._names: dict[str, str] = {}

    def _open(self) -> None:
        from llem_service.energy.meter import visible_devices

        nvml = Nvml(self._library()).open()
        try:
            self._devices = visible_devices(nvml.devices(), self._cuda_visible)
            self._names = {d.uuid: d.name() for d in self._devices}
        except BaseException:
            nvml.close()
            raise
        self._nvml = nvml

    def read(self, skip: frozenset[str]) -> list[GpuReading]:
        if self._nvml is None:
            self._open()
        return [
            _read(d, self._names[d.uuid], self._clock) for d in self._devices if d.uuid not in skip
        ]

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None


def _read(device: GpuDevice, name: str, clock: Callable[[], float]) -> GpuReading:
    power_mw = optional(device.power_instant_mw)
    if power_mw is None:
        power_mw = optional(device.power_average_mw)
    return GpuReading(
        uuid=device.uuid,
        name=name,
        read_at_s=clock(),
        power_w=power_mw / 1e3 if power_mw is not None else None,
        energy_mj=optional(device.energy_mj),
        temperature_c=optional(device.temperature_c),
        sm_clock_mhz=optional(device.sm_clock_mhz),
        utilization_pct=optional(device.utilization_pct),
        memory_used_bytes=optional(device.memory_used_bytes),
    )


def readings_from_rows(
    rows: Sequence[tuple[str, str, float, dict[str, float | int | None]]],
    energy_mj: dict[str, int | None],
) -> tuple[GpuReading, ...]:
    """Readings from a sampler's newest rows: (uuid, name, wall time, columns) each."""
    return tuple(
        GpuReading(
            uuid=uuid,
            name=name,
            read_at_s=at,
            power_w=_float(values.get("power_w")),
            energy_mj=energy_mj.get(uuid),
            temperature_c=_int(values.get("temperature_c")),
            sm_clock_mhz=_int(values.get("sm_clock_mhz")),
            utilization_pct=_int(values.get("utilization_pct")),
            memory_used_bytes=_int(values.get("memory_used_bytes")),
        )
        for uuid, name, at, values in rows
    )


def _float(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _int(value: float | int | None) -> int | None:
    return None if value is None else int(value)
