"""Studies at the edge of their limits: a 10,000-point study submitted, listed and cancelled,
and the results table of 1,000 finished points, against a server process (scripted backend)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from llem_client import JobStatus, StudyDocument
from llem_service.experiment.figures import run_metrics
from llem_service.jobs.store import SqliteJobStore
from llem_service.jobs.study_store import NewStudy, PlannedRun
from llem_service.studies.design import expand

from tests.chaos.conftest import body
from tests.conftest import make_result
from tests.server_process import ServerProcess

pytestmark = pytest.mark.stress

Figures = Callable[[str, dict[str, Any]], None]
POINTS = 10_000
FINISHED = 1_000


def test_a_ten_thousand_point_study(
    server_process: Callable[..., ServerProcess], figures: Figures
) -> None:
    server = server_process()
    document = {
        "name": "stress",
        "base": body(sleep_s="600"),  # the first point runs until cancelled
        "sweep": {"prompts.seed": list(range(POINTS))},
    }
    with httpx.Client(base_url=server.url, timeout=120) as http:
        started = time.monotonic()
        submitted = http.post("/v1/studies", json=document)
        submit_s = time.monotonic() - started
        assert submitted.status_code == 202, submitted.text[:500]
        study_id = submitted.json()["id"]

        started = time.monotonic()
        listed = http.get("/v1/studies").json()
        list_s = time.monotonic() - started
        started = time.monotonic()
        study = http.get(f"/v1/studies/{study_id}").json()
        get_s = time.monotonic() - started

        started = time.monotonic()
        cancelled = http.post(f"/v1/studies/{study_id}/cancel")
        cancel_s = time.monotonic() - started
        deadline = time.monotonic() + 60
        while (after := http.get(f"/v1/studies/{study_id}").json())["status"] != "cancelled":
            assert time.monotonic() < deadline, after["status"]
            time.sleep(0.1)
    figures(
        "stress_study_submit",
        {
            "points": POINTS,
            "submit_s": round(submit_s, 2),
            "submit_response_bytes": len(submitted.content),
            "list_studies_s": round(list_s, 3),
            "get_study_s": round(get_s, 2),
            "cancel_s": round(cancel_s, 2),
        },
    )

    assert listed["items"][0]["id"] == study_id
    assert listed["items"][0]["n_runs"] == POINTS
    assert len(study["runs"]) == POINTS
    assert cancelled.status_code == 202  # the first point was running
    assert after["counts"]["cancelled"] == POINTS


def _finished_study(data_dir: Path) -> str:
    """A store holding a study of ``FINISHED`` points whose runs all succeeded."""
    document = StudyDocument(
        name="finished",
        base=body(),
        sweep={"batch_size": [1, 2, 4], "prompts.seed": list(range(FINISHED // 3 + 1))},
    )
    expanded = expand(document, max_points=POINTS)
    design = expanded.design
    plan = design.plan[:FINISHED]
    store = SqliteJobStore(data_dir / "jobs.sqlite3")
    record, _ = store.submit_study(
        NewStudy(
            name=document.name,
            design_hash=expanded.design_hash,
            design_json=design.model_copy(update={"plan": plan}).model_dump_json(),
            runs=[PlannedRun(expanded.configs[p], p, c, i) for i, (p, c) in enumerate(plan)],
            reuse=True,
            cooldown=None,
            fingerprint="stress",
        )
    )
    for i, run in enumerate(store.study_runs(record.id)):
        result = make_result(avg_tokens_per_second=100.0 + i % 97)
        store.claim(run.run.job_id)
        store.finish(run.run.job_id, JobStatus.SUCCEEDED, metrics=run_metrics(result))
    store.close()
    return record.id


def test_the_results_table_of_a_thousand_finished_points(
    server_process: Callable[..., ServerProcess], tmp_path: Path, figures: Figures
) -> None:
    data_dir = tmp_path / "data"
    study_id = _finished_study(data_dir)
    server = server_process(data_dir=data_dir)
    timings: dict[str, float] = {}
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for name, params in (("json", {}), ("csv", {"format": "csv"})):
            started = time.monotonic()
            response = http.get(f"/v1/studies/{study_id}/results", params=params)
            timings[f"results_{name}_s"] = time.monotonic() - started
            assert response.status_code == 200
        started = time.monotonic()
        parquet = http.get(f"/v1/studies/{study_id}/results", params={"format": "parquet"})
        timings["results_parquet_s"] = time.monotonic() - started
        started = time.monotonic()
        frontier = http.get(f"/v1/studies/{study_id}/pareto", params={"max_ttft_p90_s": 1})
        timings["pareto_s"] = time.monotonic() - started
    started = time.monotonic()
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "llem_client.cli",
            "--server",
            server.url,
            "study",
            "results",
            study_id,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    timings["cli_ranked_table_s"] = time.monotonic() - started
    figures(
        "stress_study_results",
        {"finished_points": FINISHED, **{k: round(v, 2) for k, v in timings.items()}},
    )

    assert table.returncode == 0, table.stderr
    assert table.stdout.count("\n") > FINISHED
    assert len(frontier.json()["points"]) == FINISHED
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
