"""``llem-client export``: results as one table, a row per job, for pandas, R or a spreadsheet.

A row holds the job's labels and tags, every config field (dotted: ``config.decoding.mode``)
and every scalar figure of the result (``time_to_first_token_sec.p50``, ``energy.energy_j``).
Per-request lists stay in the result files; warnings become their codes joined by ``;``.
Energy that was not measured is an empty cell (CSV) or null (Parquet), never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_client._cli_compare import flatten
from llem_client._cli_errors import EXIT_FAILURE, CliError

if TYPE_CHECKING:
    from llem_client._results import ExperimentResult

#: Columns first in every table, in this order; the rest follow sorted.
LEADING = [
    "experiment_id",
    "name",
    "model",
    "measurement_config_hash",
    "started_at",
    "avg_tokens_per_second",
    "energy.energy_per_output_token_j.value",
    "energy.energy_per_output_token_j.total",
    "energy.adjusted_energy_per_output_token_j.value",
    "energy.adjusted_energy_per_output_token_j.total",
    "energy.energy_j.value",
    "energy.energy_j.total",
]
_SKIP = {"config", "environment", "warnings", "repeats", "timeseries"}


def result_row(result: ExperimentResult) -> dict[str, Any]:
    """One flat row of scalars for a result."""
    data = result.model_dump(mode="json")
    row: dict[str, Any] = {
        "experiment_id": result.experiment_id,
        "name": result.config.name,
        "model": result.config.model,
    }
    row.update(
        {
            key: value
            for key, value in flatten({k: v for k, v in data.items() if k not in _SKIP}).items()
            if not isinstance(value, list | dict)
        }
    )
    config = flatten(data["config"])
    row.update(
        {
            f"config.{key}": value if not isinstance(value, list | dict) else str(value)
            for key, value in config.items()
            if not key.startswith("tags.")
        }
    )
    row.update({f"tag.{key}": value for key, value in result.config.tags.items()})
    row["warnings"] = ";".join(w.code for w in result.warnings)
    row["environment.backend_versions"] = ";".join(
        f"{k}={v}" for k, v in sorted(result.environment.backend_versions.items())
    )
    row["environment.hostname"] = result.environment.hostname
    row["environment.container_image"] = result.environment.container_image
    row["tokens_per_second.ci95_low"] = result.repeats.tokens_per_second.ci95_low
    row["tokens_per_second.ci95_high"] = result.repeats.tokens_per_second.ci95_high
    return row


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = set().union(*rows)
    lead = [c for c in LEADING if c in present]
    return lead + sorted(present - set(lead))


def write_table(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` as CSV or Parquet, by ``path``'s suffix.

    Raises:
        CliError: Parquet without pyarrow installed, or the file cannot be written.
    """
    names = columns(rows)
    try:
        if path.suffix.lower() == ".parquet":
            _write_parquet(rows, names, path)
        else:
            _write_csv(rows, names, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc}", EXIT_FAILURE) from exc


def _write_csv(rows: Sequence[dict[str, Any]], names: list[str], path: Path) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def _write_parquet(rows: Sequence[dict[str, Any]], names: list[str], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CliError(
            "writing Parquet needs pyarrow: pip install 'llem[parquet]' (or export to .csv)"
        ) from None
    table = pa.Table.from_pylist([{name: row.get(name) for name in names} for row in rows])
    pq.write_table(table, path)
