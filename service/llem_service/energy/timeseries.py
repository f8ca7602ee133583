"""The power timeline as a table: one row per GPU per sampling round, labelled by phase.

Built in the experiment's child process as plain columns; the results storage
(`llem_service.experiment.results`) writes it as Parquet beside the result and serves it as
Parquet or CSV. ``t_s`` counts from the session's first counter mark. ``power_w`` holds only
the readings integrated (fresh, above 0 W), at ``power_t_s``, when the sensor took them
(NVML's timestamp where it gives one); it is null where NVML repeated its previous reading,
read 0 W or less, or the read failed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from llem_service.energy.base import MeterRecord
from llem_service.energy.figures import Span

Columns = dict[str, list[object]]

#: Phase of a sample, by the counter mark that opened it (baseline marks by their prefix).
_PHASE_AFTER_MARK = {
    "load_start": "load",
    "load_end": "warmup",
    "warmup_end": "measured",
    "prefill_start": "prefill_passes",
    "prefill_end": "idle",
}


def timeline_table(record: MeterRecord, spans: Sequence[Span]) -> Columns:
    """The record's samples as columns with a ``phase`` column: baseline, load, warmup,
    prefill, decode, between_batches, prefill_passes, baseline_after or idle."""
    columns = record.timeline.columns()
    origin = record.marks[0].t_s if record.marks else (record.timeline.t_s or [0.0])[0]
    mark_times = [m.t_s for m in record.marks]
    last = record.marks[-1].t_s if record.marks else float("inf")
    repeat_ends = [m.t_s for m in record.marks if m.label.startswith("repeat_")]
    end_s = repeat_ends[-1] if repeat_ends else last
    starts = [s.start for s in spans]
    phases: list[object] = []
    for t in record.timeline.t_s:
        i = bisect.bisect_right(mark_times, t) - 1
        phase = "idle" if i < 0 or t > last else _mark_phase(record.marks[i].label)
        if phase == "measured":  # repeat_k_end marks also open measuring
            phase = _measured_phase(spans, starts, t) if t <= end_s else "idle"
        phases.append(phase)
    columns["t_s"] = [t - origin for t in record.timeline.t_s]
    columns["power_t_s"] = [None if t is None else t - origin for t in record.timeline.power_t_s]
    columns["phase"] = phases
    return columns


def _mark_phase(label: str) -> str:
    if label.startswith("baseline_after_"):
        return "baseline_after"
    if label.startswith("baseline_"):
        return "baseline"
    if label.startswith("repeat_"):
        return "measured"
    return _PHASE_AFTER_MARK.get(label, "idle")


def _measured_phase(spans: Sequence[Span], starts: list[float], t: float) -> str:
    i = bisect.bisect_right(starts, t) - 1
    if i < 0 or t > spans[i].end:
        return "between_batches"
    return "prefill" if t < spans[i].first_token else "decode"
