"""`ProcessRunner` on its own: each way an experiment process can end, and the reason given."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from llem_client import JobProgress, JobStatus
from llem_service.results import ResultFiles
from llem_service.runner import ProcessRunner

from tests.conftest import make_config, make_result
from tests.fakes import FakeEnergyMeter, ScriptedBackend


def _run(runner: ProcessRunner, **tags: str) -> tuple[JobStatus, str, float]:
    seen: list[JobProgress] = []
    started = time.monotonic()
    outcome = runner.run(
        "job",
        make_config(tags={f"fake.{k}": v for k, v in tags.items()}),
        seen.append,
        threading.Event(),
    )
    detail = outcome.error.detail if outcome.error is not None else ""
    return outcome.status, detail or "", time.monotonic() - started


def test_a_hung_experiment_is_stopped_at_the_timeout() -> None:
    runner = ProcessRunner(ScriptedBackend(), FakeEnergyMeter(), cancel_grace_s=1, timeout_s=1.5)

    status, detail, took_s = _run(runner, fault="hang")

    assert status is JobStatus.FAILED
    assert "did not finish within 1.5 s" in detail
    assert "LLEM_EXPERIMENT_TIMEOUT_S" in detail
    assert took_s < 10  # not the hour the fake would hang


def test_an_experiment_within_the_timeout_is_not_touched() -> None:
    runner = ProcessRunner(ScriptedBackend(), FakeEnergyMeter(), timeout_s=30)

    status, _, _ = _run(runner, sleep_s="0.2")

    assert status is JobStatus.SUCCEEDED


def test_running_out_of_memory_fails_with_that_reason() -> None:
    runner = ProcessRunner(ScriptedBackend(oom_limit_bytes=64 * 2**20), FakeEnergyMeter())

    status, detail, _ = _run(runner, fault="oom")

    assert status is JobStatus.FAILED
    assert detail == "the experiment ran out of memory (MemoryError)"


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    results = ResultFiles(tmp_path)
    kept = results.write(make_result())
    (tmp_path / ".tmp-abc.json").write_text('{"half": ')

    ResultFiles(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]
