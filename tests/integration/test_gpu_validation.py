"""The GPU validation campaign, run whole against the scripted GPU (``--dry-run``), as its own
command: so the script a GPU session runs first cannot rot between GPU sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_validation.py"


def campaign(out: Path, *args: str) -> dict[str, Any]:
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--dry-run",
            "--time-scale",
            "0.01",
            "--out",
            str(out),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "gpu_validation_dry_run.json").read_text())
    return report


def test_the_dry_run_runs_every_check_and_writes_both_reports(tmp_path: Path) -> None:
    report = campaign(tmp_path)

    assert report["dry_run"] is True
    assert report["gpu"]["gpu"] == "scripted GPU (dry run)"
    assert report["gpu"]["driver"]
    assert report["date"][:4].isdigit()
    checks = {c["number"]: c for c in report["checks"]}
    assert sorted(checks) == list(range(1, 12))
    for check in checks.values():
        assert check["criterion"], check
        assert check["error"] is None, check  # every check ran to a verdict
        assert isinstance(check["passed"], bool)
        assert check["summary"]
    # Those on the manual clock are deterministic; 7 and 10 time a shared CPU, so their
    # verdicts here are about the plumbing, not the figures.
    assert {n for n, c in checks.items() if c["passed"]} >= {1, 2, 3, 4, 5, 6, 8, 11}
    assert checks[4]["measured"]["coverage"] >= 0.95
    assert checks[11]["measured"]["seen"]
    table = (tmp_path / "gpu_validation_dry_run.md").read_text()
    assert "DRY RUN on the scripted GPU" in table
    assert "driver 550.54.15" in table
    for number in range(1, 12):
        assert f"\n| {number} | " in table


def test_a_part_time_sensor_fails_the_part_time_check(tmp_path: Path) -> None:
    # The counter integrating 25% of each period (SC24's finding on A100/H100) reads a
    # 100 ms, 25%-duty load by its phase: the check has to see it.
    report = campaign(tmp_path, "--part-time", "--only", "2", "3")

    (steady, part_time) = report["checks"]
    assert steady["number"] == 2
    assert part_time["number"] == 3
    assert part_time["passed"] is False
    assert part_time["measured"]["phase_spread"] > 0.5
    assert part_time["measured"]["systematic_term_needed"] > 0.5
