"""The meter of a host that cannot measure energy: it says so and never makes a number up."""

from __future__ import annotations

from collections.abc import Sequence

from llem_service.energy.base import EnergyReading, MeterError, MeterProbe


class NullEnergyMeter:
    """No energy meter: `probe` reports unavailable with a reason; a window cannot be opened."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def probe(self) -> MeterProbe:
        return MeterProbe(name=self.name, available=False, reason=self.reason)

    def begin(self, device_uuids: Sequence[str]) -> None:
        raise MeterError(f"no energy meter: {self.reason}")

    def end(self) -> EnergyReading:
        raise MeterError(f"no energy meter: {self.reason}")
