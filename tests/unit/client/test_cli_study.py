"""``llem-client study``: each command against a live server (fakes behind its seams)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from llem_client.cli import main

from tests.conftest import LiveServer
from tests.unit.service.test_studies_api import study


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _file(tmp_path: Path, **overrides: Any) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study(**overrides)))
    return str(path)


def test_study_run_follows_each_run_and_prints_the_ranked_table(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "--server", live_server.base_url, "study", "run", _file(tmp_path))

    assert code == 0, err
    assert "skipped point 3 (batch_size=8): batch_size (8) exceeds n_prompts (4)" in err
    assert "3 points x 2 cycle(s) = 6 runs, order shuffled (seed 7)" in err
    landed = [line for line in err.splitlines() if ": succeeded, 32.0 tokens/s" in line]
    assert len(landed) == 6
    assert "Study results (mean over cycles)" in out
    assert "batch_size" in out
    assert "*" in out  # the frontier is marked
    assert "has the lowest" in out


def test_study_results_in_every_format(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ["--server", live_server.base_url]
    code, out, _ = cli(capsys, *server, "study", "run", _file(tmp_path, cycles=1), "--json")
    assert code == 0
    study_id = json.loads(out)["id"]

    _, csv_out, _ = cli(capsys, *server, "study", "results", study_id, "--format", "csv")
    parquet = tmp_path / "r.parquet"
    cli(capsys, *server, "study", "results", study_id, "--format", "parquet", "--out", str(parquet))
    _, json_out, _ = cli(capsys, *server, "study", "results", study_id, "--format", "json")
    code, table, _ = cli(capsys, *server, "study", "results", study_id, "--max-ttft-p90-s", "0.001")
    refused, _, said = cli(capsys, *server, "study", "results", study_id, "--format", "parquet")

    assert len(list(csv.DictReader(io.StringIO(csv_out)))) == 6  # 3 runs, 3 points
    assert pq.read_table(parquet).num_rows == 6
    assert len(json.loads(json_out)["rows"]) == 6
    assert code == 0
    assert "none of the 3 points meets the targets" in table
    assert "meets" in table
    assert refused == 2
    assert "needs --out" in said


def test_study_status_list_and_cancel(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ["--server", live_server.base_url]
    code, out, _ = cli(capsys, *server, "study", "run", _file(tmp_path, cycles=50), "--no-wait")
    study_id = out.strip()

    _, cancelled, _ = cli(capsys, *server, "study", "cancel", study_id)
    _, status, _ = cli(capsys, *server, "study", "status", study_id)
    _, listing, _ = cli(capsys, *server, "study", "list")
    again, _, err = cli(capsys, *server, "study", "cancel", study_id)

    assert code == 0
    assert f"study {study_id}" in cancelled
    assert "skipped point 3" in status
    assert "cycle 49: cancelled" in status
    assert study_id in listing
    assert again == 1
    assert "already ended" in err


def test_an_invalid_study_file_exits_2_with_one_line(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ncycles: 0\n")

    code, _, err = cli(capsys, "--server", live_server.base_url, "study", "run", str(path))
    refused, _, said = cli(
        capsys,
        "--server",
        live_server.base_url,
        "study",
        "run",
        _file(tmp_path, sweep={"pytorch.nope": [1]}),
    )

    assert code == 2
    assert err.count("\n") == 1
    assert "cycles: Input should be greater than or equal to 1" in err
    assert refused == 2
    assert "unknown field 'pytorch.nope'" in said
