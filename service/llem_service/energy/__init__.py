"""Energy meters: the `EnergyMeter` seam and its implementations."""

from llem_service.energy.base import EnergyMeter, EnergyReading, MeterError, MeterProbe
from llem_service.energy.null import NullEnergyMeter

__all__ = ["EnergyMeter", "EnergyReading", "MeterError", "MeterProbe", "NullEnergyMeter"]
