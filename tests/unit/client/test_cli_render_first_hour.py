"""What the CLI prints for a researcher's first hour: an 80-column job list, reasons, escaped
data from others, the richer summary, comparisons and exports (render functions, no server)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from llem_client import Job, JobMetrics, JobProgress, ProblemDetail, ResultWarning
from llem_client._cli_compare import comparison, print_comparison
from llem_client._cli_export import result_row, write_table
from llem_client._cli_progress import LiveProgress
from llem_client._cli_render import (
    format_age,
    format_problem,
    print_job,
    print_job_list,
    result_rows,
)
from rich.console import Console

from tests.conftest import make_config, make_result

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def job(job_id: str, status: str = "succeeded", *, age_s: float = 90, **fields: object) -> Job:
    data: dict[str, object] = {
        "id": job_id,
        "status": status,
        "model": "tiny-test-model",
        "config_hash": "0123456789abcdef",
        "created_at": NOW - timedelta(seconds=age_s),
        "progress": JobProgress(phase="done" if status == "succeeded" else status),
    }
    data.update(fields)
    return Job.model_validate(data)


def console_at(width: int) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, markup=False, highlight=False), buffer


def test_the_job_list_fits_80_columns_with_ids_every_command_accepts():
    jobs = [
        job(
            "43465d96" + "a" * 24,
            name="llama-3.1-8b-instruct-batch-size-sweep-bs16-with-a-long-label",
            model="meta-llama/Llama-3.1-8B-Instruct-with-an-even-longer-name",
            metrics=JobMetrics(tokens_per_second=12345.6, energy_per_output_token_j=0.01234),
        ),
        job("0f0f0f0f" + "b" * 24, "running", progress=JobProgress(phase="warmup")),
        job(
            "deadbeef" + "c" * 24,
            "failed",
            age_s=3 * 86400,
            error=ProblemDetail(title="Experiment crashed", status=500, detail="CUDA error"),
        ),
        job("cafebabe" + "d" * 24, metrics=JobMetrics(tokens_per_second=5.0), age_s=7200),
    ]
    console, buffer = console_at(80)

    print_job_list(jobs, console, now=NOW)

    lines = buffer.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["id", "name", "model", "status", "age", "tok/s", "J/tok"]
    table = lines[2:6]
    assert table[0].startswith("43465d96 ")
    assert "12,345.6" in table[0]
    assert table[0].rstrip().endswith("0.0123")
    assert "…" in table[0]  # long name and model shortened, never wrapped
    assert table[1].split()[:4] == ["0f0f0f0f", "-", "tiny-test-model", "warmup"]
    assert table[2].split()[3:5] == ["failed", "3d"]
    assert table[3].split()[3:] == ["succeeded", "2h", "5.0", "n/a"]
    assert lines[-1] == "deadbeef failed: Experiment crashed: CUDA error"


def test_ages():
    assert [format_age(NOW - timedelta(seconds=s), NOW) for s in (5, 125, 7300, 2 * 86400)] == [
        "5s",
        "2m",
        "2h",
        "2d",
    ]


def test_control_characters_from_others_are_escaped_everywhere():
    evil = job(
        "abcdef01" + "e" * 24,
        "failed",
        name="clear\x1b[2J",
        error=ProblemDetail(title="Crash", status=500, detail="line\nforged \x07bell"),
    )
    for kind in ("status", "list"):
        console, buffer = console_at(120)
        if kind == "status":
            print_job(evil, console)
        else:
            print_job_list([evil], console)
        text = buffer.getvalue()
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\\x1b[2J" in text


def test_a_problem_is_not_repeated_when_its_detail_starts_with_its_title():
    said = ProblemDetail(title="Interrupted", status=500, detail="interrupted by restart")

    assert format_problem(said) == "interrupted by restart"


def test_status_shows_name_tags_figures_and_the_reason():
    failed = job(
        "abcdef01" + "e" * 24,
        "failed",
        name="bs8",
        tags={"sweep": "bs"},
        error=ProblemDetail(
            title="Experiment config cannot run", status=422, detail="prompt too long"
        ),
    )
    console, buffer = console_at(120)

    print_job(failed, console)

    text = buffer.getvalue()
    assert "name         bs8" in text
    assert "tags         sweep=bs" in text
    assert "reason       Experiment config cannot run: prompt too long" in text


def test_the_summary_has_latencies_phases_load_time_and_flops():
    rows = dict(result_rows(make_result()))

    assert rows["TTFT p50 / p90"] == "62.50 / 62.50 ms"
    assert rows["ITL p50 / p90"] == "62.50 / 62.50 ms"
    assert rows["prefill time"] == "0.125 s"
    assert rows["decode time"] == "0.375 s"
    assert rows["model load time"] == "0.250 s"
    assert rows["FLOPs"] == "4.800e+04"


def test_the_finished_progress_line_has_no_unit():
    console, buffer = console_at(100)
    live = LiveProgress("job-1", console)
    counted = JobProgress(phase="done", completed=4, total=4, unit="requests")

    live(job("job-1", progress=counted))
    live.close()

    assert "succeeded (requests)" not in buffer.getvalue()
    assert "job job-1: succeeded" in buffer.getvalue()


def test_compare_shows_differing_config_and_relative_figures():
    a = make_result(experiment_id="a" * 32, config=make_config(batch_size=2, name="bs2"))
    b = make_result(
        experiment_id="b" * 32,
        config=make_config(batch_size=4, name="bs4"),
        avg_tokens_per_second=48.0,
    )

    table = comparison([a, b])
    console, buffer = console_at(100)
    print_comparison(table, console)
    text = buffer.getvalue()

    assert table.config_rows == [("batch_size", [2, 4])]
    assert table.as_json()["metrics"]["tokens/s (output)"] == {
        "values": [32.0, 48.0],
        "relative_to_first": [0.0, 0.5],
    }
    assert "aaaaaaaa bs2" in text
    assert "bbbbbbbb bs4" in text
    assert "48.0 (+50.0%)" in text
    assert "name" not in dict(table.config_rows)


def test_compare_says_no_meter_rather_than_zero():
    a = make_result(experiment_id="a" * 32, energy=None, energy_meter_available=False)
    table = comparison([a, make_result(experiment_id="b" * 32)])
    console, buffer = console_at(120)

    print_comparison(table, console)

    assert "n/a (no meter)" in buffer.getvalue()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_one_row_per_result(tmp_path: Path, suffix: str):
    results = [
        make_result(experiment_id="a" * 32, config=make_config(tags={"sweep": "bs"})),
        make_result(
            experiment_id="b" * 32,
            energy=None,
            energy_meter_available=False,
            warnings=[ResultWarning(code="energy_unavailable", message="no NVML")],
        ),
    ]
    path = tmp_path / f"table{suffix}"

    write_table([result_row(r) for r in results], path)

    if suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    assert [r["experiment_id"] for r in rows] == ["a" * 32, "b" * 32]
    assert float(rows[0]["energy.energy_j.value"]) == 100.0
    assert float(rows[0]["energy.energy_j.total"]) > 0  # its uncertainty beside it
    assert rows[1]["energy.energy_j.value"] in ("", None)  # not measured: empty, never 0
    assert rows[1]["warnings"] == "energy_unavailable"
    assert rows[0]["tag.sweep"] == "bs"
    assert float(rows[0]["time_to_first_token_sec.p50"]) == 0.0625
    assert str(rows[0]["config.batch_size"]) == "2"
    assert list(rows[0])[:3] == ["experiment_id", "name", "model"]


def test_export_rows_are_json_serialisable():
    assert json.dumps(result_row(make_result()))
