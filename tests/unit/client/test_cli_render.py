"""What the CLI prints: summaries, jobs, progress reporters and the result file's name."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest
from llem_client import Job, JobProgress, ProblemDetail, ResultWarning
from llem_client._cli_progress import LiveProgress, PlainProgress
from llem_client._cli_render import (
    format_progress,
    model_slug,
    print_job,
    print_result_summary,
    result_rows,
)
from rich.console import Console

from tests.conftest import make_energy, make_result


def make_job(status: str = "running", **progress: object) -> Job:
    return Job(
        id="job-1",
        status=status,
        model="tiny-test-model",
        config_hash="0123456789abcdef",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        progress=JobProgress.model_validate({"phase": "measuring", **progress}),
    )


def render(result_or_job: object) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, markup=False, highlight=False)
    if isinstance(result_or_job, Job):
        print_job(result_or_job, console)
    else:
        print_result_summary(result_or_job, console)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_summary_shows_energy_with_units_and_total_uncertainty():
    rows = dict(result_rows(make_result()))

    assert rows["energy (raw)"] == "100.00 ± 2.50 J"
    assert rows["energy (minus idle)"] == "80.00 ± 2.64 J"
    assert rows["J/token (raw)"] == "6.25 ± 0.1564 J/token"
    assert rows["J/token (minus idle)"] == "5 ± 0.164 J/token"
    assert rows["largest uncertainty"] == "counter_quantisation (63% of the variance)"
    assert rows["prefill energy"] == "30.00 ± 1.41 J"
    assert rows["per-request J/token p50 (minus idle)"] == "5 ± 0.4301 J/token"
    assert rows["mean power"] == "200.0 W"
    assert rows["idle power"] == "40.0 ± 1.0 W"
    assert rows["counter vs samples"] == "+2.0%"
    assert rows["tokens/s (output)"] == "32.0"
    assert rows["measured duration"] == "0.500 s"


def test_a_figure_the_run_could_not_bound_says_so():
    result = make_result(
        energy=make_energy(adjusted_energy_j=None, adjusted_energy_per_output_token_j=None)
    )

    rows = dict(result_rows(result))

    assert rows["energy (minus idle)"] == "n/a (see warnings)"
    assert rows["J/token (minus idle)"] == "n/a (see warnings)"
    assert rows["energy (raw)"] == "100.00 ± 2.50 J"


def test_repeats_stopped_by_statistics_say_why():
    summary = make_result().repeats.model_copy(update={"stop_reason": "target_reached"})

    rows = dict(result_rows(make_result(repeats=summary)))

    assert rows["repeats stopped"] == "target reached after 1"


def test_summary_says_no_meter_instead_of_zero():
    result = make_result(
        energy_meter_available=False,
        energy=None,
        warnings=[ResultWarning(code="no_energy_meter", message="no NVML on this host")],
    )

    rows = dict(result_rows(result))
    text = render(result)

    assert rows["energy"] == rows["energy per token"] == rows["mean power"] == "n/a (no meter)"
    assert "0.00 J" not in text
    assert "  - no_energy_meter: no NVML on this host" in text


def test_job_shows_its_error_on_one_line():
    error = ProblemDetail(title="Backend failed", status=500, detail="CUDA OOM")
    job = make_job("failed").model_copy(update={"error": error})

    text = render(job)

    assert "reason       Backend failed: CUDA OOM" in text
    assert "status       failed" in text


@pytest.mark.parametrize(
    ("progress", "text"),
    [
        ({"completed": 8, "total": 32, "unit": "requests"}, "measuring 8/32 requests"),
        ({"completed": 3, "total": None, "unit": "batches"}, "measuring 3 batches"),
        ({}, "measuring"),
    ],
)
def test_format_progress(progress, text):
    assert format_progress(JobProgress.model_validate({"phase": "measuring", **progress})) == text


@pytest.mark.parametrize(
    ("model", "slug"),
    [
        ("gpt2", "gpt2"),
        ("meta-llama/Llama-3.1-8B", "meta-llama-Llama-3.1-8B"),
        ("/models/my model:v2/", "models-my-model-v2"),
        ("../..", "experiment"),
    ],
)
def test_model_slug(model, slug):
    assert model_slug(model) == slug


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_changes_and_throttles_counts():
    stream, clock = io.StringIO(), FakeClock()
    report = PlainProgress("job-1", stream, min_interval_s=1.0, clock=clock)

    report(make_job("queued"))
    report(make_job("queued"))  # unchanged: no line
    report(make_job(completed=0, total=4, unit="requests"))
    report(make_job(completed=1, total=4, unit="requests"))  # same phase, too soon: no line
    clock.now = 2.0
    report(make_job(completed=2, total=4, unit="requests"))
    report(make_job(completed=4, total=4, unit="requests"))  # the total: always printed
    report(make_job("succeeded", completed=4, total=4, unit="requests"))
    report.close()

    assert stream.getvalue().splitlines() == [
        "job job-1: queued",
        "job job-1: measuring 0/4 requests",
        "job job-1: measuring 2/4 requests",
        "job job-1: measuring 4/4 requests",
        "job job-1: succeeded",
    ]


def test_live_progress_draws_on_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    report = LiveProgress("job-1", console)

    report(make_job(completed=2, total=4, unit="requests"))
    report.close()
    report.close()  # idempotent

    assert "job job-1: measuring (requests)" in buffer.getvalue()
    assert "2/4" in buffer.getvalue()
