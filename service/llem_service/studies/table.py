"""A study's results table: one row per finished run and one aggregated row per point, as JSON,
CSV or Parquet.

A run's figures are taken from its result once, when it succeeds
(`llem_service.experiment.figures.run_metrics`, kept by the store), so a table of thousands
of runs is built without reading a result file.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from llem_client import STUDY_METRICS, Interval, StudyResults, StudyRow

from llem_service.experiment.figures import Metrics
from llem_service.experiment.summary import sample_stats
from llem_service.jobs.study_store import RunRecord
from llem_service.studies.design import StudyDesign


def build_results(study_id: str, design: StudyDesign, runs: Sequence[RunRecord]) -> StudyResults:
    """Run rows for every succeeded run (in run order), then a row per point that has any."""
    points = {point.index: point for point in design.points}
    rows: list[StudyRow] = []
    by_point: dict[int, list[Metrics]] = {}
    for record in runs:
        run = record.run
        if record.metrics is None or run.status.value != "succeeded":
            continue
        point = points[run.point]
        rows.append(
            _row(
                "run",
                point.index,
                point.values,
                point.config_hash,
                record.metrics,
                cycle=run.cycle,
                attempt=run.attempt,
                job_id=run.job_id,
            )
        )
        by_point.setdefault(run.point, []).append(record.metrics)
    for index in sorted(by_point):
        point = points[index]
        measured = by_point[index]
        means, intervals = aggregate(measured)
        rows.append(
            _row(
                "point",
                index,
                point.values,
                point.config_hash,
                means,
                n_cycles=len(measured),
                ci95=intervals,
            )
        )
    return StudyResults(study_id=study_id, swept_fields=design.swept_fields, rows=rows)


def _row(
    kind: str,
    point: int,
    values: Mapping[str, Any],
    config_hash: str,
    metrics: Mapping[str, float | None],
    *,
    n_cycles: int = 1,
    cycle: int | None = None,
    attempt: int | None = None,
    job_id: str | None = None,
    ci95: Mapping[str, Interval] | None = None,
) -> StudyRow:
    figures = {name: metrics.get(name) for name in STUDY_METRICS}
    if figures["warnings"] is None:
        figures["warnings"] = 0.0
    return StudyRow(
        kind=kind,
        point=point,
        cycle=cycle,
        attempt=attempt,
        job_id=job_id,
        n_cycles=n_cycles,
        values=dict(values),
        config_hash=config_hash,
        ci95=dict(ci95 or {}),
        **figures,
    )


def aggregate(
    measured: Sequence[Mapping[str, float | None]],
) -> tuple[Metrics, dict[str, Interval]]:
    """Each figure's mean over the runs that have it, and the 95% CI of that mean (Student's
    t) where two or more runs have it. A figure some runs lack (a meter lost mid-study) is the
    mean of those that have it. Uncertainty bounds are averaged, with no interval: a bound
    describes each reading, and averaging readings does not shrink it."""
    means: Metrics = {}
    intervals: dict[str, Interval] = {}
    for name in STUDY_METRICS:
        present = [m[name] for m in measured if m.get(name) is not None]
        values = [float(v) for v in present if v is not None and math.isfinite(v)]
        if not values:
            means[name] = None
            continue
        stats = sample_stats(values)
        means[name] = stats.mean
        if (
            not name.endswith("_uncertainty_j")
            and stats.ci95_low is not None
            and stats.ci95_high is not None
        ):
            intervals[name] = Interval(low=stats.ci95_low, high=stats.ci95_high)
    return means, intervals


def to_csv(results: StudyResults) -> bytes:
    """The table as CSV: a header of column names, then one line per row; empty cells are
    nulls."""
    records = list(results.records())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(results), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
    return buffer.getvalue().encode("utf-8")


def to_parquet(results: StudyResults) -> bytes:
    """The table as Parquet, one typed column per swept field and figure."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = list(results.records())
    columns = _columns(results)
    arrays = {}
    for name in columns:
        values = [r[name] for r in records]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # A swept field whose values differ in type (1 and "auto"): text, as in the CSV.
            arrays[name] = pa.array([None if v is None else str(v) for v in values])
    table = pa.table(arrays)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _columns(results: StudyResults) -> list[str]:
    template = StudyRow(kind="run", point=0, n_cycles=1, values={}, config_hash="0" * 16).flat(
        results.swept_fields
    )
    return list(template)
