"""The meter of a host that cannot measure energy: it says so and never makes a number up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from llem_service.energy.base import MeterError, MeterProbe, MeterSession

if TYPE_CHECKING:
    from llem_client import EnergyConfig


class NullEnergyMeter:
    """No energy meter: `probe` reports unavailable with a reason; a session cannot be opened."""

    name = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def probe(self) -> MeterProbe:
        return MeterProbe(name=self.name, available=False, reason=self.reason)

    def open(
        self,
        device_uuids: Sequence[str],
        plan: EnergyConfig,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> MeterSession:
        raise MeterError(f"no energy meter: {self.reason}")
