"""The sampler's timeline, its phase labels, and its Parquet / CSV forms."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow.parquet as pq
from llem_service.energy.figures import Span
from llem_service.energy.timeseries import timeline_table
from llem_service.experiment.results import parquet_to_csv, write_parquet

from tests.fake_nvml import FakeGpu, PowerProfile, ScriptedSession


def recorded() -> tuple[dict[str, list[object]], float]:
    gpu = FakeGpu(
        profile=PowerProfile(((100.0, 200.0),)),
        unsupported=frozenset({"temperature"}),
    )
    scripted = ScriptedSession([gpu], interval_ms=10)
    scripted.mark("load_start")
    scripted.run_for(0.1)
    scripted.mark("load_end")
    scripted.run_for(0.1)
    scripted.mark("warmup_end")
    start = scripted.clock()
    scripted.run_for(0.2)
    span = Span(start, start + 0.05, scripted.clock())
    scripted.run_for(0.05)
    scripted.mark("repeat_0_end")
    scripted.run_for(0.03)
    return timeline_table(scripted.close(), [span]), span.start


def test_every_sample_is_labelled_by_the_phase_it_fell_in() -> None:
    table, _ = recorded()

    phases = table["phase"]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order == ["load", "warmup", "prefill", "decode", "between_batches", "idle"]
    assert phases.count("load") == 10  # 0.1 s at 10 ms
    assert table["t_s"][0] == 0.0  # counted from the first mark


def test_unsupported_fields_are_null_not_zero() -> None:
    table, _ = recorded()

    assert set(table["temperature_c"]) == {None}
    assert set(table["power_w"]) == {200.0}
    assert all(isinstance(x, int) for x in table["utilization_pct"])


def test_parquet_and_csv_round_trip(tmp_path: Path) -> None:
    table, _ = recorded()
    path = tmp_path / "t.parquet"

    write_parquet(table, path)
    read = pq.read_table(path)
    rows = list(csv.DictReader(io.StringIO(parquet_to_csv(path.read_bytes()).decode())))

    assert read.num_rows == len(table["t_s"])
    assert read.schema.field("clock_event_reasons").type == "uint64"
    assert read.column("temperature_c").null_count == read.num_rows
    assert len(rows) == read.num_rows
    assert rows[0]["phase"] == "load"
    assert rows[0]["temperature_c"] == ""
