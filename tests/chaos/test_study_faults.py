"""The server SIGKILLed in the middle of a study: after the restart the study resumes, the run
that was running is retried once (attempt 2), and no finished run is lost or run again."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.conftest import TRIALS, body, half_written, lost_results
from tests.server_process import ServerProcess

pytestmark = pytest.mark.chaos

#: Half the tier's trials: each kills a server twice as slow to bring back (a restart, then a
#: fresh experiment process for the retried run), and the default tier must stay quick.
STUDY_TRIALS = max(1, TRIALS // 2)


def _study(**tags: str) -> dict[str, Any]:
    return {
        "name": "chaos",
        "base": body(**tags),
        "sweep": {"batch_size": [1, 2]},
        "cycles": 2,
        "order": "sequential",
    }


def _wait_study(http: httpx.Client, study_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        study: dict[str, Any] = http.get(f"/v1/studies/{study_id}").json()
        if study["status"] in {"succeeded", "failed", "cancelled"}:
            return study
        assert time.monotonic() < deadline, f"study {study_id} stuck {study['status']}"
        time.sleep(0.05)


def test_server_killed_mid_study_resumes_it_and_loses_nothing(
    server_process: Callable[..., ServerProcess],
    tmp_path: Path,
    figures: Callable[[str, dict[str, Any]], None],
) -> None:
    rng = random.Random(0)
    data_dir = tmp_path / "data"
    server = server_process(data_dir=data_dir)
    lost: list[str] = []
    retried = 0
    started = time.monotonic()
    for trial in range(STUDY_TRIALS):
        with httpx.Client(base_url=server.url, timeout=10) as http:
            response = http.post("/v1/studies", json=_study(sleep_s="0.2"))
            assert response.status_code == 202, response.text
            study_id = response.json()["id"]
            time.sleep(rng.uniform(0.2, 1.2))
            before = http.get(f"/v1/studies/{study_id}").json()["runs"]
            server.kill()
        finished_before = {r["job_id"]: r for r in before if r["status"] == "succeeded"}

        server.restart()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            study = _wait_study(http, study_id)
            runs = study["runs"]
            assert study["status"] == "succeeded", (trial, runs)
            assert [(r["point"], r["cycle"]) for r in runs] == [
                (p, c) for p in range(2) for c in range(2)
            ]
            again = [r for r in runs if r["attempt"] == 2]
            assert len(again) <= 1  # only the run that was running
            retried += len(again)
            for job_id, was in finished_before.items():
                now = next(r for r in runs if r["job_id"] == job_id)
                assert now["attempt"] == was["attempt"], "a finished run ran again"
            lost += lost_results(http, [r["job_id"] for r in runs])
            assert half_written(data_dir / "results") == []
    figures(
        "chaos_study_server_sigkill",
        {
            "trials": STUDY_TRIALS,
            "runs_per_study": 4,
            "runs_retried": retried,
            "lost_results": len(lost),
            "seconds": round(time.monotonic() - started),
        },
    )
    assert lost == []
    assert retried >= 1  # the kills did land during runs
