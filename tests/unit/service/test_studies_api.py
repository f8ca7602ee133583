"""``/v1/studies`` through a live server (real app, scheduler and experiment processes), fakes
behind the seams, driven by the real client."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from llem_client import (
    Client,
    ConflictError,
    JobStatus,
    NotFoundError,
    StudyEvent,
    StudyStatus,
    UnprocessableEntityError,
)

from tests.conftest import LiveServer
from tests.fakes import ScriptedBackend

StartServer = Callable[..., LiveServer]

BASE: dict[str, Any] = {
    "model": "tiny-test-model",
    "precision": "fp32",
    "prompts": {"input_len": 8},
    "n_prompts": 4,
    "max_output_tokens": 4,
    "warmup": {"batches": 1},
    "baseline": {"enabled": False},
}


def study(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "batch sweep",
        "base": BASE,
        "sweep": {"batch_size": [1, 2, 4, 8]},  # 8 > n_prompts: invalid
        "cycles": 2,
        "order": "shuffled",
        "seed": 7,
    }
    document.update(overrides)
    return document


def test_a_study_runs_every_valid_point_each_cycle_and_tabulates_them(
    metered_server: LiveServer,
) -> None:
    with Client(metered_server.base_url) as client:
        submitted = client.submit_study(study())
        updates: list[StudyEvent] = []
        done = client.wait_study(submitted.id, timeout=60, on_update=updates.append)
        results = client.study_results(submitted.id)
        csv_text = client.study_results_file(submitted.id, format="csv").decode()
        parquet = client.study_results_file(submitted.id, format="parquet")
        frontier = client.study_pareto(submitted.id)

    assert submitted.status is StudyStatus.QUEUED
    assert [p.values for p in submitted.points] == [
        {"batch_size": 1},
        {"batch_size": 2},
        {"batch_size": 4},
    ]
    (skipped,) = submitted.skipped
    assert skipped.values == {"batch_size": 8}
    assert skipped.reason == "batch_size (8) exceeds n_prompts (4)"
    assert (submitted.n_runs, submitted.seed, submitted.swept_fields) == (6, 7, ["batch_size"])
    planned = [(r.point, r.cycle) for r in submitted.runs]
    assert sorted(planned) == [(p, c) for p in range(3) for c in range(2)]
    assert [c for _, c in planned] == [0, 0, 0, 1, 1, 1]  # every point once per cycle
    assert [r.position for r in submitted.runs] == list(range(6))

    assert done.status is StudyStatus.SUCCEEDED
    assert done.counts[JobStatus.SUCCEEDED] == 6
    assert [(r.point, r.cycle) for r in done.runs] == planned
    assert all(r.tokens_per_s == 32.0 for r in done.runs)  # the fake: 16 tokens in 0.5 s
    assert all(r.energy_per_output_token_j is not None for r in done.runs)
    assert updates[-1].study is not None
    assert updates[-1].study.status is StudyStatus.SUCCEEDED
    assert {u.run.job_id for u in updates if u.run is not None} == {r.job_id for r in done.runs}

    runs = [r for r in results.rows if r.kind == "run"]
    points = [r for r in results.rows if r.kind == "point"]
    assert [(r.point, r.cycle) for r in runs] == planned
    assert [(p.point, p.n_cycles) for p in points] == [(0, 2), (1, 2), (2, 2)]
    for point in points:
        cycles = [r for r in runs if r.point == point.point]
        assert point.tokens_per_s == pytest.approx(sum(r.tokens_per_s or 0.0 for r in cycles) / 2)
        assert point.ttft_p90_s == cycles[0].ttft_p90_s  # the fake's timings repeat exactly
        assert point.energy_per_output_token_j is not None
        assert "energy_per_output_token_j" in point.ci95
    # The fake splits its 0.5 s window over 4, 2 and 1 batches; a first token comes at a
    # quarter of its batch.
    assert [p.ttft_p90_s for p in points] == [0.03125, 0.0625, 0.125]

    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(rows) == 9
    assert rows[0]["kind"] == "run"
    assert rows[-1]["kind"] == "point"
    assert {"batch_size", "tokens_per_s", "ttft_p90_s", "tokens_per_s_ci95_low"} <= set(rows[0])
    table = pq.read_table(io.BytesIO(parquet))
    assert table.num_rows == 9
    assert table.column("batch_size").to_pylist()[-3:] == [1, 2, 4]

    assert frontier.energy_metric is not None
    assert frontier.frontier_vs_tokens_per_s
    assert frontier.best is not None


def test_the_pareto_answer_names_the_cheapest_point_that_meets_targets_or_the_closest(
    metered_server: LiveServer,
) -> None:
    with Client(metered_server.base_url) as client:
        submitted = client.submit_study(study(cycles=1))
        client.wait_study(submitted.id, timeout=60)
        results = client.study_results(submitted.id)
        ttft = sorted(r.ttft_p90_s or 0.0 for r in results.rows if r.kind == "point")
        met = client.study_pareto(submitted.id, max_ttft_p90_s=ttft[1])
        missed = client.study_pareto(submitted.id, max_ttft_p90_s=ttft[0] / 2)

    assert met.best is not None
    assert met.best.ttft_p90_s is not None
    assert met.best.ttft_p90_s <= ttft[1]
    assert len(met.meeting_targets) == 2
    assert "lowest" in met.message
    assert missed.best is None
    assert missed.closest is not None
    assert missed.closest.ttft_p90_s == ttft[0]
    assert "none of the 3 points meets the targets" in missed.message
    assert "ttft_p90_s 0.03125 against 0.015625 (100% over)" in missed.message


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        ({"sweep": {"pytorch.no_such_option": [1]}}, "unknown field 'pytorch.no_such_option'"),
        ({"sweep": {"batch_size": []}}, "sweep.batch_size"),
        ({"sweep": {"batch_size": [8, 16]}}, "no valid point among 2"),
        ({"on_invalid": "fail"}, "1 of 4 points are invalid"),
        ({"sweep": {"batch_size": list(range(1, 12))}}, "more than this server's limit of 10"),
        # 3 valid points x 3 cycles
        ({"cycles": 3}, "9 runs (3 valid points x 3 cycles), more than this server's limit of 8"),
    ],
)
def test_a_study_that_cannot_run_is_refused_with_its_cause(
    start_server: StartServer, overrides: dict[str, Any], said: str
) -> None:
    server = start_server(max_study_points=10, max_study_runs=8)
    with Client(server.base_url) as client:
        with pytest.raises(UnprocessableEntityError) as refused:
            client.submit_study(study(**overrides))
        assert client.list_studies().items == []

    problem = refused.value.problem
    assert said in (problem.detail or "") + " ".join(
        ".".join(map(str, e.loc)) for e in problem.errors or []
    )


def test_cancel_stops_the_running_point_drops_the_rest_and_keeps_the_finished(
    start_server: StartServer,
) -> None:
    server = start_server(backend=ScriptedBackend())
    document = study(
        order="sequential",
        cycles=1,
        sweep={"batch_size": [1, 2, 4]},
        variants=[{"tags": {"fake.sleep_s": "0"}}, {"tags": {"fake.sleep_s": "60"}}],
    )
    with Client(server.base_url) as client:
        submitted = client.submit_study(document)
        slow = submitted.runs[3].job_id  # the first point of the sleeping variant
        deadline = time.monotonic() + 30
        while client.get(slow).status is not JobStatus.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelled = client.cancel_study(submitted.id)
        done = client.wait_study(submitted.id, timeout=30)
        with pytest.raises(ConflictError):
            client.cancel_study(submitted.id)
        results = client.study_results(submitted.id)

    assert cancelled.status is StudyStatus.RUNNING  # the running point is being stopped
    assert done.status is StudyStatus.CANCELLED
    assert [r.status for r in done.runs] == [JobStatus.SUCCEEDED] * 3 + [JobStatus.CANCELLED] * 3
    assert done.swept_fields == ["variant", "tags", "batch_size"]
    assert len([r for r in results.rows if r.kind == "run"]) == 3


def test_studies_are_listed_newest_first_and_unknown_ones_are_404(live_server: LiveServer) -> None:
    with Client(live_server.base_url) as client:
        first = client.submit_study(study(cycles=1, name="one"))
        second = client.submit_study(study(cycles=1, name="two"))
        page = client.list_studies(limit=1)
        rest = client.list_studies(limit=1, cursor=page.next_cursor)
        with pytest.raises(NotFoundError):
            client.get_study("nope")
        with pytest.raises(NotFoundError):
            client.study_results("nope")
        bad_cursor = httpx.get(f"{live_server.base_url}/v1/studies", params={"cursor": "x"})

    assert [s.id for s in page.items + rest.items] == [second.id, first.id]
    assert page.items[0].n_points == 3
    assert page.items[0].counts[JobStatus.QUEUED] + page.items[0].counts[JobStatus.RUNNING] >= 0
    assert bad_cursor.status_code == 400


def test_a_replayed_submission_returns_the_same_study(live_server: LiveServer) -> None:
    with Client(live_server.base_url) as client:
        first = client.submit_study(study(cycles=1), idempotency_key="same")
        again = client.submit_study(study(cycles=1), idempotency_key="same")
        with pytest.raises(UnprocessableEntityError):
            client.submit_study(study(cycles=2), idempotency_key="same")

    assert again.id == first.id
    assert again.design_hash == first.design_hash


def test_the_design_hash_changes_with_what_is_measured_not_the_name(
    live_server: LiveServer,
) -> None:
    with Client(live_server.base_url) as client:
        a = client.submit_study(study(cycles=1, name="a"))
        b = client.submit_study(study(cycles=1, name="b"))
        c = client.submit_study(study(cycles=1, seed=8))
        for s in (a, b, c):
            client.cancel_study(s.id)

    assert a.design_hash == b.design_hash
    assert a.design_hash != c.design_hash
