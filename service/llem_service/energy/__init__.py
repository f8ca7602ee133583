"""Energy metering: the `EnergyMeter` seam, the NVML meter, and the arithmetic of a result."""

from llem_service.energy.base import (
    Baseline,
    DeviceNotMetered,
    EnergyMeter,
    MeterError,
    MeterProbe,
    MeterRecord,
    MeterSession,
)
from llem_service.energy.null import NullEnergyMeter

__all__ = [
    "Baseline",
    "DeviceNotMetered",
    "EnergyMeter",
    "MeterError",
    "MeterProbe",
    "MeterRecord",
    "MeterSession",
    "NullEnergyMeter",
]
