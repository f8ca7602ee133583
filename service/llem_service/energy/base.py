"""The `EnergyMeter` seam.

Like a backend, a meter is built in the server process (where `probe` answers ``/v1/info``)
and pickled into the experiment's child process, where `begin` and `end` bracket the measured
window. Device work belongs in the methods, not in ``__init__``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from llem_client import DeviceInfo


class MeterError(Exception):
    """The meter failed during a window (lost device, driver error)."""


@dataclass(frozen=True)
class MeterProbe:
    """What a meter can see: whether it can measure, why not if it cannot, and the devices."""

    name: str
    available: bool
    reason: str | None = None
    devices: tuple[DeviceInfo, ...] = ()


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one window.

    Attributes:
        energy_j_by_device: Joules per device UUID.
        source: How it was measured, e.g. ``nvml_energy_counter``.
    """

    energy_j_by_device: Mapping[str, float]
    source: str
    warnings: tuple[tuple[str, str], ...] = field(default=())

    @property
    def total_j(self) -> float:
        return float(sum(self.energy_j_by_device.values()))


@runtime_checkable
class EnergyMeter(Protocol):
    """Measures the energy of the devices a model uses over a window."""

    name: str

    def probe(self) -> MeterProbe: ...

    def begin(self, device_uuids: Sequence[str]) -> None:
        """Open the window on these devices (after the backend synchronised them)."""
        ...

    def end(self) -> EnergyReading:
        """Close the window and return its energy."""
        ...
