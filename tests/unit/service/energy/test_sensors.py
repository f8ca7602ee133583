"""The sensor accuracy table: which row a GPU gets, and what an operator can change."""

from __future__ import annotations

import pytest
from llem_service.energy.sensors import DEFAULT_TABLE, SensorTable
from llem_service.settings import Settings
from pydantic import ValidationError


@pytest.mark.parametrize(
    ("name", "generation", "sensed_fraction"),
    [
        ("NVIDIA H100 80GB HBM3", "Hopper", 0.25),
        ("NVIDIA H200", "Hopper", 0.25),
        ("NVIDIA A100-SXM4-80GB", "Ampere GA100", 0.25),
        ("NVIDIA A10G", "Ampere GA10x", None),
        ("Tesla V100-SXM2-32GB", "Volta", None),
        ("NVIDIA L4", "Ada", None),
        ("Something New", "unknown", None),
    ],
)
def test_each_gpu_finds_its_generation(
    name: str, generation: str, sensed_fraction: float | None
) -> None:
    spec = SensorTable().lookup(name)

    assert spec.generation.startswith(generation)
    assert spec.sensed_fraction == sensed_fraction
    # Only A100 and H100 were characterised (Yang et al.); the others are assumed part-time
    # until the GPU validation campaign says otherwise.
    assert spec.part_time
    assert spec.source  # every row says where its figures come from


def test_every_row_is_at_least_as_wide_as_nvidias_documented_accuracy() -> None:
    assert all(row.gain_rel >= 0.05 and row.offset_w >= 5.0 for row in DEFAULT_TABLE)
    unknown = SensorTable().lookup("anything")
    assert (unknown.gain_rel, unknown.offset_w) == (0.10, 10.0)


def test_an_operator_override_wins_and_keeps_what_it_does_not_set() -> None:
    table = SensorTable.from_json('{"H100": {"gain_rel": 0.02, "source": "meter, 2026-11"}}')

    spec = table.lookup("NVIDIA H100 80GB HBM3")

    assert (spec.gain_rel, spec.offset_w, spec.sensed_fraction) == (0.02, 5.0, 0.25)
    assert spec.source == "meter, 2026-11"
    assert table.lookup("NVIDIA H200").gain_rel == 0.05  # other rows as documented


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"H100": {"gain": 0.02}}', "unknown fields"),
        ('{"H100": {"sensed_fraction": 0}}', "sensed_fraction must be in (0, 1]"),
        ('{"H100": {"offset_w": -1}}', "offset_w must be a number >= 0"),
        ('["H100"]', "JSON object of objects"),
        ("{not json", "Expecting property name"),
    ],
)
def test_a_bad_table_stops_the_service_at_start(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match="sensor_accuracy") as info:
        Settings(sensor_accuracy=text)

    assert message in str(info.value)
