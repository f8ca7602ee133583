"""Who else used the GPUs: compute processes polled through the run (about once a second, from
the sampler's process), not only at the window's edges, so a job that comes and goes between
two marks is still seen.

NVML lists processes by their PID in the host's PID namespace. Inside a container with a PID
namespace of its own, the experiment's PID (as the container sees it) is not among them, and
llem cannot tell its own process from another's. `ProcessReport.detection` then says detection
was limited and why, rather than guessing silently. A deployment restores full detection by
sharing the host's PID namespace (``pid: host`` in compose, ``--pid=host`` for docker run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from llem_service.energy.nvml import GpuDevice, NvmlError, NvmlGpuLost, NvmlNotSupported

Detection = Literal["full", "limited", "unavailable"]


@dataclass
class Sighting:
    """One process seen on one GPU.

    Attributes:
        device_uuid, pid: Which process, on which GPU (``pid`` as NVML reports it).
        first_t_s, last_t_s: Session clock of the first and last poll that listed it.
        first_wall_s, last_wall_s: The same, as wall-clock seconds since 1970.
        polls: How many polls listed it.
        max_used_memory_bytes: The most GPU memory it held (None where NVML does not say).
    """

    device_uuid: str
    pid: int
    first_t_s: float
    last_t_s: float
    first_wall_s: float
    last_wall_s: float
    polls: int = 1
    max_used_memory_bytes: int | None = None


@dataclass(frozen=True)
class DeviceDetection:
    """How well other processes could be told apart on one GPU, and why."""

    device_uuid: str
    detection: Detection
    reason: str
    max_listed_at_once: int = 0


@dataclass
class ProcessReport:
    """Every sighting of a session, and how trustworthy the absence of others is."""

    own_pid: int
    poll_interval_s: float
    polls: int = 0
    sightings: list[Sighting] = field(default_factory=list)
    detection: list[DeviceDetection] = field(default_factory=list)


class ProcessTracker:
    """Polls the compute processes of ``devices`` and remembers every one it saw.

    Args:
        devices: The metered GPUs.
        own_pid: The experiment's process (the one holding the CUDA contexts).
        interval_s: Target time between polls.
    """

    def __init__(self, devices: Sequence[GpuDevice], own_pid: int, interval_s: float = 1.0):
        self.devices = list(devices)
        self.own_pid = own_pid
        self.interval_s = interval_s
        self._sightings: dict[tuple[str, int], Sighting] = {}
        self._own_seen = {d.uuid: False for d in self.devices}
        self._max_listed = {d.uuid: 0 for d in self.devices}
        self._unsupported: dict[str, str] = {}
        self._failed: dict[str, str] = {}
        self._polls = 0
        self._next_t: float | None = None

    def due(self, t: float) -> bool:
        return self._next_t is None or t >= self._next_t

    def poll(self, t: float, wall: float) -> None:
        """List each GPU's compute processes now (the caller checks `due` first)."""
        self._next_t = t + self.interval_s
        self._polls += 1
        for device in self.devices:
            if device.uuid in self._unsupported:
                continue
            try:
                listed = device.compute_processes()
            except NvmlGpuLost:
                raise
            except NvmlNotSupported as exc:
                self._unsupported[device.uuid] = str(exc)
                continue
            except NvmlError as exc:  # transient: this poll sees nothing of this GPU
                self._failed[device.uuid] = str(exc)
                continue
            self._max_listed[device.uuid] = max(self._max_listed[device.uuid], len(listed))
            for process in listed:
                if process.pid == self.own_pid:
                    self._own_seen[device.uuid] = True
                key = (device.uuid, process.pid)
                seen = self._sightings.get(key)
                memory = process.used_memory_bytes
                if seen is None:
                    self._sightings[key] = Sighting(
                        device.uuid, process.pid, t, t, wall, wall, 1, memory
                    )
                    continue
                seen.last_t_s, seen.last_wall_s = t, wall
                seen.polls += 1
                if memory is not None:
                    seen.max_used_memory_bytes = max(seen.max_used_memory_bytes or 0, memory)

    def report(self) -> ProcessReport:
        return ProcessReport(
            own_pid=self.own_pid,
            poll_interval_s=self.interval_s,
            polls=self._polls,
            sightings=sorted(self._sightings.values(), key=lambda s: (s.first_t_s, s.pid)),
            detection=[self._detection(d.uuid) for d in self.devices],
        )

    def _detection(self, uuid: str) -> DeviceDetection:
        listed = self._max_listed[uuid]
        if uuid in self._unsupported:
            return DeviceDetection(
                uuid,
                "unavailable",
                f"NVML cannot list the processes on this GPU ({self._unsupported[uuid]}), so "
                "another process sharing it would go unseen",
            )
        if self._own_seen[uuid]:
            return DeviceDetection(
                uuid, "full", "this experiment's PID is among NVML's", max_listed_at_once=listed
            )
        if listed == 0:
            return DeviceDetection(
                uuid,
                "limited",
                "NVML listed no compute process on this GPU although this experiment holds a "
                "context there (a container or driver that hides processes): another process "
                "would go unseen",
            )
        others = (
            "more than one process at once: at least one other process used the GPU"
            if (listed > 1)
            else "one process at a time, presumably this experiment"
        )
        return DeviceDetection(
            uuid,
            "limited",
            f"this experiment's PID ({self.own_pid}) is not among the PIDs NVML lists, which "
            "are the host's: the service runs in a PID namespace of its own (a container). "
            f"NVML listed {others}. Share the host's PID namespace (compose `pid: host`) for "
            "full detection",
            max_listed_at_once=listed,
        )
