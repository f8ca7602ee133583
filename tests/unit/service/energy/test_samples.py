"""Samples as typed columns: what the sampler's process writes is what the session reads."""

from __future__ import annotations

import math
from array import array
from pathlib import Path

import pytest
from llem_service.energy.samples import (
    FAILED,
    FRESH,
    MISSING_INT,
    REPEAT,
    SAMPLE_COLUMNS,
    ColumnReader,
    ColumnWriter,
    FloatColumn,
    IntColumn,
    Timeline,
)


def test_missing_values_read_back_as_none() -> None:
    floats = FloatColumn([1.5, None, 3.0])
    ints = IntColumn([7, None])

    assert list(floats) == [1.5, None, 3.0]
    assert floats[1] is None
    assert floats[0:2] == [1.5, None]
    assert list(ints) == [7, None]
    assert ints.raw.tolist() == [7, MISSING_INT]
    assert floats.nbytes == 3 * 8


def test_a_row_costs_bytes_not_python_objects() -> None:
    timeline = Timeline(["GPU-a"])
    for i in range(1000):
        timeline.append(float(i), "GPU-a", 100.0, temperature_c=40, utilization_pct=None)

    # 3 float64 columns, 5 int64 columns and a 2-byte device index: 66 bytes a row.
    assert timeline.nbytes == 1000 * 66
    assert timeline.columns()["utilization_pct"][0] is None


def test_the_reader_gets_what_the_writer_flushed_and_nothing_half_written(
    tmp_path: Path,
) -> None:
    writer = ColumnWriter(tmp_path, SAMPLE_COLUMNS, prefix="sample_", flush_rows=3)
    reader = ColumnReader(tmp_path, SAMPLE_COLUMNS, prefix="sample_")
    row = (1.0, 0, 0.99, 250.0, FRESH, 40, 1980, 2**30, 100, 4)

    writer.append(row)
    writer.append(row)
    assert len(reader.read_new()["t_s"]) == 0  # two rows still in memory: bounded
    writer.append(row)  # the third reaches flush_rows
    assert len(reader.read_new()["t_s"]) == 3
    # A flush caught between two columns' files: only rows every file has are taken.
    with open(tmp_path / "sample_t_s.bin", "ab") as f:
        array("d", [2.0]).tofile(f)
    assert len(reader.read_new()["t_s"]) == 0
    writer.append(row)
    writer.flush()
    assert len(reader.read_new()["power_w"]) == 1
    assert writer.rows_written == 4
    assert writer.buffered_rows == 0


def test_only_fresh_readings_are_integrated() -> None:
    timeline = Timeline(["GPU-a", "GPU-b"])
    timeline.extend_raw(
        {
            "t_s": array("d", [0.0, 0.0, 0.01, 0.01]),
            "device": array("H", [0, 1, 0, 1]),
            "power_t_s": array("d", [-0.02, -0.03, -0.02, math.nan]),
            "power_w": array("d", [200.0, 150.0, 200.0, math.nan]),
            "power_flag": array("B", [FRESH, FRESH, REPEAT, FAILED]),
            **{
                name: array("q", [1, 2, 3, MISSING_INT])
                for name in (
                    "temperature_c",
                    "sm_clock_mhz",
                    "memory_used_bytes",
                    "utilization_pct",
                    "clock_event_reasons",
                )
            },
        }
    )

    a, b = timeline.device("GPU-a"), timeline.device("GPU-b")

    assert list(a.power_w) == [200.0, None]  # the repeat is not a second reading
    assert a.power_points() == ([-0.02], [200.0])  # at the sensor's time, not the read's
    assert list(b.power_w) == [150.0, None]  # the failed read is a gap, not 0 W
    assert list(b.temperature_c) == [2, None]
    assert list(b.device_uuid) == ["GPU-b", "GPU-b"]
    with pytest.raises(IndexError):
        a.t_s[2]
