"""The power timeline as a table: one row per GPU per sampling round, labelled by phase.

Built in the experiment's child process as plain columns, stored by the service as Parquet
beside the result, and served as Parquet or CSV. ``t_s`` counts from the session's first
counter mark. ``power_w`` holds only the readings integrated (fresh, above 0 W), at
``power_t_s``, when the sensor took them (NVML's timestamp where it gives one); it is null
where NVML repeated its previous reading, read 0 W or less, or the read failed.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Sequence
from pathlib import Path

from llem_service.energy.base import TIMELINE_COLUMNS, MeterRecord
from llem_service.energy.report import Span

Columns = dict[str, list[object]]

#: Phase of a sample, by the counter mark that opened it.
_PHASE_AFTER_MARK = {
    "baseline_start": "baseline",
    "baseline_end": "idle",
    "load_start": "load",
    "load_end": "warmup",
    "warmup_end": "measured",
}


def timeline_table(record: MeterRecord, spans: Sequence[Span]) -> Columns:
    """The record's samples as columns with a ``phase`` column: baseline, load, warmup,
    prefill, decode, between_batches or idle."""
    columns = record.timeline.columns()
    origin = record.marks[0].t_s if record.marks else (record.timeline.t_s or [0.0])[0]
    mark_times = [m.t_s for m in record.marks]
    last = record.marks[-1].t_s if record.marks else float("inf")
    starts = [s.start for s in spans]
    phases: list[object] = []
    for t in record.timeline.t_s:
        i = bisect.bisect_right(mark_times, t) - 1
        phase = "idle" if i < 0 or t > last else _PHASE_AFTER_MARK.get(record.marks[i].label)
        if phase is None or phase == "measured":  # repeat_k_end marks also open measuring
            phase = "idle" if t > last else _measured_phase(spans, starts, t)
        phases.append(phase)
    columns["t_s"] = [t - origin for t in record.timeline.t_s]
    columns["power_t_s"] = [None if t is None else t - origin for t in record.timeline.power_t_s]
    columns["phase"] = phases
    return columns


def _measured_phase(spans: Sequence[Span], starts: list[float], t: float) -> str:
    i = bisect.bisect_right(starts, t) - 1
    if i < 0 or t > spans[i].end:
        return "between_batches"
    return "prefill" if t < spans[i].first_token else "decode"


_SCHEMA_TYPES = {
    "t_s": "float64",
    "device_uuid": "string",
    "power_t_s": "float64",
    "power_w": "float64",
    "temperature_c": "int32",
    "sm_clock_mhz": "int32",
    "memory_used_bytes": "int64",
    "utilization_pct": "int32",
    "clock_event_reasons": "uint64",
    "phase": "string",
}


def write_parquet(columns: Columns, path: Path) -> None:
    """Write the table to ``path`` (the caller makes it atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [*TIMELINE_COLUMNS, "phase"]
    schema = pa.schema([(name, getattr(pa, _SCHEMA_TYPES[name])()) for name in names])
    table = pa.table({name: columns[name] for name in names}, schema=schema)
    pq.write_table(table, path, compression="zstd")


def parquet_to_csv(data: bytes) -> bytes:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    out = io.BytesIO()
    pcsv.write_csv(table, out)
    return out.getvalue()
