"""How accurate each GPU generation's power sensor is: the systematic part of every uncertainty.

NVIDIA documents one accuracy figure for its board power sensor, and only for old
generations; independent studies measured newer ones against external meters. The table
takes the documented figures as the default bound for every generation and records, per
generation, whether the sensor integrates the whole counter period or only part of it. An
operator who has calibrated a fleet against a meter sets ``LLEM_SENSOR_ACCURACY`` (JSON,
keyed by a substring of the GPU name) to replace any row, e.g.
``{"H100": {"gain_rel": 0.02, "offset_w": 2, "sensed_fraction": 0.25}}``.

Sources:

- [nvml] NVIDIA NVML API Reference, ``nvmlDeviceGetPowerUsage``: "On Fermi and Kepler GPUs
  the reading is accurate to within +/- 5% of current power draw."
- [smi] nvidia-smi(1), ``power.draw``: "accurate to within +/- 5 watts" (board power).
- [yang] Z. Yang, K. Adamek, W. Armour, "Accurate and Convenient Energy Measurements for
  GPUs: A Detailed Study of NVIDIA GPU's Built-in Power Sensor", SC24 (arXiv:2312.02741,
  "Part-time Power Measurements: nvidia-smi's Lack of Attention"): over 70 GPUs of 12
  generations against an external meter; on A100 and H100 only 25% of the runtime is sampled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from llem_client import SensorAccuracy


@dataclass(frozen=True)
class SensorSpec:
    """Accuracy assumed for one generation's sensor.

    Attributes:
        generation: The row's name.
        match: Substrings of the GPU name (case-insensitive) that select this row.
        gain_rel: Bound of the relative error of every reading (rectangular).
        offset_w: Bound of the absolute error of a power reading, watts (rectangular).
        sensed_fraction: Part of each counter period the sensor integrates; None = unknown,
            treated as part-time.
        source: Where the figures come from.
    """

    generation: str
    match: tuple[str, ...]
    gain_rel: float = 0.05
    offset_w: float = 5.0
    sensed_fraction: float | None = None
    source: str = "[nvml] +/-5% of power; [smi] +/-5 W"

    @property
    def part_time(self) -> bool:
        return self.sensed_fraction is None or self.sensed_fraction < 1.0

    def wire(self) -> SensorAccuracy:
        return SensorAccuracy(
            generation=self.generation,
            gain_rel=self.gain_rel,
            offset_w=self.offset_w,
            sensed_fraction=self.sensed_fraction,
            source=self.source,
        )


_DOCUMENTED = "[nvml] +/-5% of power; [smi] +/-5 W"
_PART_TIME = f"{_DOCUMENTED}; [yang] 25% of runtime sampled"

#: The default table, most specific rows first. The last row catches every other GPU.
DEFAULT_TABLE: tuple[SensorSpec, ...] = (
    SensorSpec("Hopper (H100, H200, GH200)", ("H100", "H200", "GH200", "H800", "H20"),
               sensed_fraction=0.25, source=_PART_TIME),
    SensorSpec("Ampere GA100 (A100, A800, A30)", ("A100", "A800", "A30"),
               sensed_fraction=0.25, source=_PART_TIME),
    SensorSpec("Blackwell (B100, B200, GB200, RTX 50)", ("B100", "B200", "GB200", "RTX 50"),
               source=f"{_DOCUMENTED}; sensing not yet characterised: treated as part-time"),
    SensorSpec("Ada Lovelace (L4, L40, RTX 40, RTX 6000 Ada)",
               ("L4", "L40", "RTX 40", "RTX 6000 Ada"), source=_DOCUMENTED),
    SensorSpec("Ampere GA10x (A10, A40, A16, A2, RTX 30, RTX A)",
               ("A10", "A40", "A16", "A2", "RTX 30", "RTX A"), source=_DOCUMENTED),
    SensorSpec("Turing (T4, RTX 20, Quadro RTX)", ("T4", "RTX 20", "Quadro RTX"),
               source=_DOCUMENTED),
    SensorSpec("Volta (V100, Titan V)", ("V100", "Titan V"), source=_DOCUMENTED),
    SensorSpec("unknown", ("",), gain_rel=0.10, offset_w=10.0,
               source="not characterised: twice the documented bounds, treated as part-time"),
)  # fmt: skip


@dataclass(frozen=True)
class SensorTable:
    """The rows in lookup order. Picklable: it travels to the experiment's process."""

    rows: tuple[SensorSpec, ...] = DEFAULT_TABLE

    def lookup(self, gpu_name: str) -> SensorSpec:
        name = gpu_name.lower()
        for row in self.rows:
            if any(m.lower() in name for m in row.match):
                return row
        return self.rows[-1]

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Mapping[str, object]]) -> SensorTable:
        """The default table with rows replaced or added: each key is a substring of GPU
        names, each value any of ``gain_rel``, ``offset_w``, ``sensed_fraction``, ``source``.
        Overrides come first, so they win over the default rows."""
        added = []
        for key, fields in overrides.items():
            unknown = set(fields) - {"gain_rel", "offset_w", "sensed_fraction", "source"}
            if unknown:
                raise ValueError(f"sensor accuracy for {key!r}: unknown fields {sorted(unknown)}")
            row = replace(
                cls().lookup(key),
                generation=f"{key} (operator)",
                match=(key,),
                source=str(fields.get("source", "set by the operator")),
            )
            if "gain_rel" in fields:
                row = replace(row, gain_rel=_non_negative(key, "gain_rel", fields["gain_rel"]))
            if "offset_w" in fields:
                row = replace(row, offset_w=_non_negative(key, "offset_w", fields["offset_w"]))
            if "sensed_fraction" in fields:
                fraction = fields["sensed_fraction"]
                row = replace(
                    row, sensed_fraction=None if fraction is None else _fraction(key, fraction)
                )
            added.append(row)
        return cls((*added, *DEFAULT_TABLE))

    @classmethod
    def from_json(cls, text: str) -> SensorTable:
        """The table from ``LLEM_SENSOR_ACCURACY`` (empty: the default table)."""
        if not text.strip():
            return cls()
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("LLEM_SENSOR_ACCURACY must be a JSON object of objects")
        return cls.with_overrides(data)


def _non_negative(key: str, name: str, value: object) -> float:
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"sensor accuracy for {key!r}: {name} must be a number >= 0")
    return float(value)


def _fraction(key: str, value: object) -> float:
    if not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"sensor accuracy for {key!r}: sensed_fraction must be in (0, 1]")
    return float(value)
