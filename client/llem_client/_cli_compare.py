"""``llem-client compare``: what differs between experiments, and by how much they differ.

The first job is the reference: every figure of the others carries its difference relative to
it. Energy figures are shown as measured or as ``n/a`` (no meter): never as 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from llem_client._estimate import Estimate
    from llem_client._results import ExperimentResult


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``decoding.mode``); lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _value(estimate: Estimate | None) -> float | None:
    """A measured figure's value (its uncertainty is in the result and in ``export``)."""
    return None if estimate is None else estimate.value


#: (label, format, higher is better, how to read it from a result)
METRICS: list[tuple[str, str, bool, Callable[[ExperimentResult], float | None]]] = [
    ("tokens/s (output)", ",.1f", True, lambda r: r.avg_tokens_per_second),
    (
        "J/token (raw)",
        ".4g",
        False,
        lambda r: _value(r.energy.energy_per_output_token_j) if r.energy else None,
    ),
    (
        "J/token (minus idle)",
        ".4g",
        False,
        lambda r: _value(r.energy.adjusted_energy_per_output_token_j) if r.energy else None,
    ),
    ("energy (raw), J", ",.2f", False, lambda r: _value(r.energy.energy_j) if r.energy else None),
    ("mean power, W", ",.1f", False, lambda r: r.energy.mean_power_w if r.energy else None),
    ("TTFT p50, ms", ",.2f", False, lambda r: _ms(r.time_to_first_token_sec.p50)),
    ("TTFT p90, ms", ",.2f", False, lambda r: _ms(r.time_to_first_token_sec.p90)),
    (
        "ITL p50, ms",
        ",.2f",
        False,
        lambda r: _ms(r.inter_token_latency_sec.p50) if r.inter_token_latency_sec else None,
    ),
    (
        "ITL p90, ms",
        ",.2f",
        False,
        lambda r: _ms(r.inter_token_latency_sec.p90) if r.inter_token_latency_sec else None,
    ),
    ("measured duration, s", ",.3f", False, lambda r: r.total_inference_time_sec),
]


@dataclass(frozen=True)
class Comparison:
    """Experiments side by side: labels, differing config fields, figures."""

    ids: list[str]
    labels: list[str]
    config_rows: list[tuple[str, list[Any]]]
    metric_rows: list[tuple[str, str, list[float | None]]]

    def as_json(self) -> dict[str, Any]:
        return {
            "jobs": self.ids,
            "config_differences": {field: values for field, values in self.config_rows},
            "metrics": {
                label: {
                    "values": values,
                    "relative_to_first": [relative(v, values[0]) for v in values],
                }
                for label, _, values in self.metric_rows
            },
        }


def relative(value: float | None, reference: float | None) -> float | None:
    """(value - reference) / reference, or None where either is missing or reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / reference


def comparison(results: Sequence[ExperimentResult]) -> Comparison:
    configs = [
        flatten(r.config.model_dump(mode="json", exclude={"schema_version", "name"}))
        for r in results
    ]
    fields = sorted(set().union(*configs))
    differing = [
        (field, [c.get(field) for c in configs])
        for field in fields
        if len({json.dumps(c.get(field), sort_keys=True) for c in configs}) > 1
    ]
    labels = [
        r.experiment_id[:8] if r.config.name is None else f"{r.experiment_id[:8]} {r.config.name}"
        for r in results
    ]
    metrics = [(label, spec, [read(r) for r in results]) for label, spec, _, read in METRICS]
    return Comparison(
        ids=[r.experiment_id for r in results],
        labels=labels,
        config_rows=differing,
        # Figures nobody has are left out, but for raw J/token: its "n/a (no meter)" says why
        # there are no energy figures at all.
        metric_rows=[
            row
            for row in metrics
            if row[0] == "J/token (raw)" or any(v is not None for v in row[2])
        ],
    )


def _config_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def print_comparison(table: Comparison, console: Console) -> None:
    """The differing config fields, then each figure with its change against the first job."""
    from rich import box
    from rich.table import Table

    from llem_client._text import escape_controls

    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    grid.add_column("", no_wrap=True)
    for label in table.labels:
        grid.add_column(escape_controls(label), justify="right", overflow="fold")
    if table.config_rows:
        for field, values in table.config_rows:
            grid.add_row(field, *(escape_controls(_config_value(v)) for v in values))
    else:
        grid.add_row("config", *(["same"] * len(table.labels)))
    grid.add_section()
    for label, spec, values in table.metric_rows:
        cells = []
        for i, value in enumerate(values):
            if value is None:
                cells.append("n/a (no meter)" if "J" in label or "W" in label else "n/a")
                continue
            text = f"{value:{spec}}"
            change = relative(value, values[0]) if i else None
            cells.append(f"{text} ({change:+.1%})" if change is not None else text)
        grid.add_row(label, *cells)
    console.print(grid)
    note = "(%): the difference from the first job"
    if any(v is None for _, _, values in table.metric_rows for v in values):
        note += "; n/a (no meter): energy not measured"
    console.print(note)
