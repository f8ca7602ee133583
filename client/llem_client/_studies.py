"""Studies: many experiments swept from one document, run as one job, compared in one table.

`StudyDocument` is the request body of ``POST /v1/studies``. The server expands it into points
(``variants`` x the ``sweep`` grid, each a full `ExperimentConfig`), validates every point,
skips the invalid ones with their reasons, and queues each valid point once per cycle, in the
planned order. `Study` is what it answers: the design, its hash, and each run's state.

Results (`StudyResults`) have one row per finished run (point x cycle) and one aggregated row
per point (mean and 95% confidence interval across cycles); `StudyPareto` is the time-energy
frontier and the answer to "the lowest-energy point that meets these latency targets".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llem_client._config import PlainText
from llem_client._jobs import FieldError, JobProgress, JobStatus, ProblemDetail

if TYPE_CHECKING:
    import pandas


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CooldownConfig(_Section):
    """A pause before each point after the study's first.

    ``seconds`` always; then, with ``until_temperature_within_c``, until every GPU the point
    runs on is within that many degrees of the temperature it had before the study's first
    point, for at most ``max_s`` more seconds (a point that starts warmer says so).
    """

    seconds: float = Field(default=0.0, ge=0, le=3600, description="Fixed pause, seconds.")
    until_temperature_within_c: float | None = Field(
        default=None, gt=0, le=50, description="Then wait until within this of the baseline."
    )
    max_s: float = Field(
        default=300.0, gt=0, le=3600, description="Cap on the temperature wait, seconds."
    )


StudyOrder = Literal["sequential", "interleaved", "shuffled"]
SweepValues = Annotated[list[Any], Field(min_length=1)]


class StudyDocument(_Section):
    """What to sweep and how to run it.

    Attributes:
        name: A label for the study.
        base: A partial `ExperimentConfig` every point starts from.
        sweep: Dotted field -> values, crossed as a grid (``batch_size: [1, 2, 4]``,
            ``pytorch.static_kv_cache: [false, true]``). Any config field, nested ones too.
        variants: Partial overrides (nested mappings, or dotted keys), each crossed with the
            grid: two models with their own options, say. A field may not be both swept and
            set by a variant.
        cycles: How many times the whole set runs.
        order: ``sequential`` (each point's cycles back to back), ``interleaved`` (every point
            once per cycle, in design order) or ``shuffled`` (every point once per cycle, in a
            seeded shuffle per cycle).
        seed: Seed of the shuffle; the server picks one and records it when absent.
        cooldown: Pause between points.
        on_invalid: ``skip`` invalid points (listed with their reasons) or ``fail`` the
            submission.
        isolation: ``reuse``: consecutive points with the same model and loading options run in
            one experiment process that keeps the model loaded (reset between points);
            ``process``: a fresh process for every point.
    """

    name: PlainText = Field(min_length=1, max_length=200)
    base: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[Annotated[str, Field(min_length=1)], SweepValues] = Field(default_factory=dict)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    cycles: int = Field(default=1, ge=1, le=100)
    order: StudyOrder = "interleaved"
    # At most 2**53 - 1: the largest integer every JSON parser reads exactly (JavaScript's too).
    seed: int | None = Field(default=None, ge=0, le=2**53 - 1)
    cooldown: CooldownConfig = Field(default_factory=CooldownConfig)
    on_invalid: Literal["skip", "fail"] = "skip"
    isolation: Literal["reuse", "process"] = "reuse"


class StudyStatus(str, Enum):
    """queued -> running -> succeeded | failed | cancelled.

    ``succeeded``: every run succeeded. ``failed``: it ended with at least one failed run
    (the others' results are kept). ``cancelled``: cancelled before its end.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in {StudyStatus.SUCCEEDED, StudyStatus.FAILED, StudyStatus.CANCELLED}


class StudyPoint(_Wire):
    """One valid point of the design: its swept values and the hash of its config."""

    index: int = Field(ge=0, description="Position in the design (variant-major, grid order).")
    values: dict[str, Any] = Field(description="Swept field -> value; 'variant' when variants.")
    config_hash: str = Field(pattern=r"^[0-9a-f]{16}$", description="measurement_config_hash")


class SkippedPoint(_Wire):
    """A point of the design whose config is invalid, and why."""

    index: int = Field(ge=0)
    values: dict[str, Any]
    reason: str = Field(description="Each offending field and what is wrong with it.")
    errors: list[FieldError] = Field(default_factory=list)


class StudyRun(_Wire):
    """One point in one cycle: an ordinary experiment job of the study."""

    job_id: str
    point: int = Field(ge=0)
    cycle: int = Field(ge=0)
    position: int = Field(ge=0, description="Place in the planned order, from 0.")
    attempt: int = Field(
        default=1, ge=1, description="2: retried after the server restarted during attempt 1."
    )
    status: JobStatus
    progress: JobProgress
    error: ProblemDetail | None = None
    tokens_per_s: float | None = Field(default=None, description="Once it succeeded.")
    energy_per_output_token_j: float | None = Field(
        default=None, description="Once it succeeded, when energy was measured."
    )


class StudySummary(_Wire):
    """A study without its design and runs: for listings and event streams."""

    id: str
    name: str
    status: StudyStatus
    design_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    n_points: int = Field(ge=0, description="Valid points.")
    n_skipped: int = Field(ge=0, description="Invalid points, skipped.")
    cycles: int = Field(ge=1)
    n_runs: int = Field(ge=0, description="Points x cycles: the experiment jobs.")
    counts: dict[JobStatus, int] = Field(description="Runs by status.")


class Study(StudySummary):
    """A study with its design, its planned order and the state of every run.

    ``runs`` are in planned order; together with ``points`` they are the planned order.
    """

    order: StudyOrder
    seed: int | None = Field(description="The shuffle's seed (recorded when the server chose).")
    isolation: Literal["reuse", "process"]
    on_invalid: Literal["skip", "fail"]
    cooldown: CooldownConfig
    swept_fields: list[str] = Field(description="The columns of `values`, in design order.")
    points: list[StudyPoint]
    skipped: list[SkippedPoint]
    runs: list[StudyRun]
    notes: list[str] = Field(
        default_factory=list, description="What the server wants the submitter to know."
    )


class StudyList(_Wire):
    """A page of studies, newest first."""

    items: list[StudySummary]
    next_cursor: str | None = None


class StudyEvent(_Wire):
    """One event of ``GET /v1/studies/{id}/events``: the study changed (``study``: its summary)
    or one of its runs did (``run``)."""

    event: Literal["study", "run"]
    study: StudySummary | None = None
    run: StudyRun | None = None


class Interval(_Wire):
    """A two-sided interval, e.g. a 95% confidence interval."""

    low: float
    high: float


#: The figures of a results row, in column order; units in the names.
STUDY_METRICS: tuple[str, ...] = (
    "tokens_per_s",
    "energy_per_output_token_j",
    "energy_per_output_token_uncertainty_j",
    "adjusted_energy_per_output_token_j",
    "adjusted_energy_per_output_token_uncertainty_j",
    "ttft_p50_s",
    "ttft_p90_s",
    "ttft_p99_s",
    "itl_p50_s",
    "itl_p90_s",
    "itl_p99_s",
    "energy_per_request_j",
    "mean_power_w",
    "peak_memory_bytes",
    "warnings",
)


class StudyRow(_Wire):
    """One row of a study's results.

    ``kind='run'``: one finished run (point x cycle). ``kind='point'``: a point's runs
    aggregated: each figure is the mean over its succeeded cycles and ``ci95`` holds the 95%
    confidence interval of that mean (Student's t; absent with one cycle). A figure is null
    when it was not measured (no energy meter, a single-token workload).

    An aggregated row's uncertainties are the mean of its runs' bounds: a bound covers what
    a single reading can be off by, which averaging does not shrink.
    """

    kind: Literal["run", "point"]
    point: int = Field(ge=0)
    cycle: int | None = Field(default=None, ge=0, description="Run rows only.")
    attempt: int | None = Field(default=None, ge=1, description="Run rows only.")
    job_id: str | None = Field(default=None, description="Run rows only.")
    n_cycles: int = Field(ge=1, description="Runs behind the row: 1 for a run row.")
    values: dict[str, Any]
    config_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    tokens_per_s: float | None = None
    energy_per_output_token_j: float | None = None
    energy_per_output_token_uncertainty_j: float | None = None
    adjusted_energy_per_output_token_j: float | None = None
    adjusted_energy_per_output_token_uncertainty_j: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    itl_p50_s: float | None = None
    itl_p90_s: float | None = None
    itl_p99_s: float | None = None
    energy_per_request_j: float | None = Field(default=None, description="Mean over requests.")
    mean_power_w: float | None = None
    peak_memory_bytes: float | None = Field(default=None, description="Device (CUDA) only.")
    warnings: float = Field(default=0, ge=0, description="Warnings in the result (mean).")
    ci95: dict[str, Interval] = Field(
        default_factory=dict, description="Point rows: figure -> 95% CI of its mean."
    )

    def flat(self, swept_fields: list[str]) -> dict[str, Any]:
        """The row as one flat record: swept fields as columns, then the figures and their
        ``<figure>_ci95_low`` / ``_ci95_high``; the column set of CSV and Parquet."""
        record: dict[str, Any] = {
            "kind": self.kind,
            "point": self.point,
            "cycle": self.cycle,
            "attempt": self.attempt,
            "job_id": self.job_id,
            "n_cycles": self.n_cycles,
            "config_hash": self.config_hash,
        }
        for name in swept_fields:
            value = self.values.get(name)
            # A mapping or list (a device_map, inline prompts) as JSON text: one typed cell.
            record[name] = json.dumps(value) if isinstance(value, dict | list) else value
        for metric in STUDY_METRICS:
            record[metric] = getattr(self, metric)
        for metric in STUDY_METRICS:
            interval = self.ci95.get(metric)
            record[f"{metric}_ci95_low"] = interval.low if interval else None
            record[f"{metric}_ci95_high"] = interval.high if interval else None
        return record


class StudyResults(_Wire):
    """``GET /v1/studies/{id}/results``: run rows (in run order), then point rows."""

    study_id: str
    swept_fields: list[str]
    rows: list[StudyRow]

    def records(self) -> Iterator[dict[str, Any]]:
        """Each row flattened (`StudyRow.flat`)."""
        for row in self.rows:
            yield row.flat(self.swept_fields)

    def to_pandas(self) -> pandas.DataFrame:
        """The rows as a DataFrame, one column per swept field and figure. Needs pandas,
        which llem-client does not install."""
        try:
            import pandas
        except ImportError as exc:
            raise ImportError(
                "StudyResults.to_pandas needs pandas, which llem-client does not install: "
                "pip install pandas"
            ) from exc
        return pandas.DataFrame.from_records(list(self.records()))


class ParetoTargets(_Wire):
    """Latency and throughput targets; a None target is not applied."""

    max_ttft_p90_s: float | None = Field(default=None, gt=0)
    max_itl_p90_s: float | None = Field(default=None, gt=0)
    min_tokens_per_s: float | None = Field(default=None, gt=0)


class StudyPareto(_Wire):
    """The time-energy frontier of a study's points (their aggregated rows), and the answer to
    the targets.

    Attributes:
        energy_metric: The J/token figure compared: ``adjusted_energy_per_output_token_j``
            when every point has it, else ``energy_per_output_token_j``; None when no point
            has energy (no meter), and then there is no frontier.
        frontier_vs_tokens_per_s: Points no other point beats on both J/token (lower) and
            tokens/s (higher), by increasing tokens/s.
        frontier_vs_ttft_p90: The same against TTFT p90 (lower), by increasing TTFT p90.
        best: The lowest-energy point that meets every target; None when none does.
        closest: When none meets them: the point that misses them by the least (summed
            relative shortfall), to show how far off the targets are.
        message: The answer in one sentence.
    """

    study_id: str
    energy_metric: str | None
    targets: ParetoTargets
    points: list[StudyRow]
    frontier_vs_tokens_per_s: list[int]
    frontier_vs_ttft_p90: list[int]
    meeting_targets: list[int] = Field(description="Points that meet every target.")
    best: StudyRow | None = None
    closest: StudyRow | None = None
    message: str
