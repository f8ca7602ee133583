"""Schemathesis against the server's own OpenAPI document, over real HTTP: all four phases
(examples, coverage, fuzzing, stateful) and every check, with the token the document declares.

Every check must pass: no 5xx, statuses, content types, headers and bodies as documented,
schema-valid requests accepted and invalid ones refused, the token enforced, a created job
readable, a deleted one gone. `tests.fuzz.hooks` keeps positive submissions within the
rules a JSON Schema cannot state (its docstring lists them). The run is bounded: one pass of
each phase, at most ``LLEM_FUZZ_EXAMPLES`` cases per operation (default 25), stopped after
``LLEM_FUZZ_TIMEOUT_S`` seconds should it hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("schemathesis", reason="schemathesis 4 needs Python 3.11 or newer")

from llem_service.energy.null import NullEnergyMeter

from tests.conftest import REPO, LiveServer
from tests.fakes import ScriptedBackend

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("LLEM_FUZZ_EXAMPLES", "25"))
#: The run is one pass of each phase; this only stops one that hangs.
TIMEOUT_S = int(os.environ.get("LLEM_FUZZ_TIMEOUT_S", "600"))
TOKEN = "fuzz-token"
PHASES = ("examples", "coverage", "fuzzing", "stateful")


def test_four_phases_and_every_check_pass(
    start_server: Callable[..., LiveServer],
    tmp_path: Path,
    figures: Callable[[str, dict[str, Any]], None],
) -> None:
    # No meter: experiments end in well under a second, so the queue the fuzzer fills drains
    # and event streams of new jobs end; the timeseries route is exercised by
    # test_generated_client. A low study limit keeps generated sweeps from queueing thousands.
    server = start_server(
        backend=ScriptedBackend(),
        meter=NullEnergyMeter("the fuzz tier runs without a meter"),
        token=TOKEN,
        experiment_timeout_s=5.0,
        max_study_points=20,
    )
    events = tmp_path / "events.ndjson"
    done = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{server.base_url}/openapi.json",
            "--phases", ",".join(PHASES), "--checks", "all",
            "--max-examples", str(EXAMPLES),
            "--header", f"Authorization: Bearer {TOKEN}",
            "--workers", "1", "--seed", "15", "--request-timeout", "60", "--no-color",
            "--report", "ndjson", "--report-ndjson-path", str(events),
        ],
        cwd=REPO,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )  # fmt: skip

    report = done.stdout + done.stderr
    statuses, phases = _read(events)
    figures(
        "fuzz",
        {
            "requests": sum(statuses.values()),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": sum(v for k, v in statuses.items() if k >= 500),
            "phases": {name: sorted(outcomes) for name, outcomes in sorted(phases.items())},
            "max_examples": EXAMPLES,
        },
    )
    assert done.returncode == 0, report[-6000:]
    for phase in PHASES:
        assert phases.get(phase) == {"success"}, (phase, phases, report[-3000:])
    assert sum(statuses.values()) >= 500
    assert not any(code >= 500 for code in statuses)


def _read(path: Path) -> tuple[Counter[int], dict[str, set[str]]]:
    """Response statuses and the outcomes of each phase's rounds (a phase may report more
    than once), from schemathesis's NDJSON events."""
    statuses: Counter[int] = Counter()
    phases: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        for kind, data in event.items():
            if kind == "ScenarioFinished":
                for interaction in data.get("recorder", {}).get("interactions", {}).values():
                    response = interaction.get("response")
                    if response:
                        statuses[int(response["status_code"])] += 1
            elif kind == "PhaseFinished":
                phases.setdefault(data["phase"]["name"], set()).add(data["status"])
    return statuses, phases
