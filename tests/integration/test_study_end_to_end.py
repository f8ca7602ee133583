"""A real study on a tiny model, as a user runs it: ``llem-service`` and ``llem-client study``
as real processes; the results' CSV and Parquet read back with pandas."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from llem_client import Client, JobStatus, StudyStatus

from tests.integration.test_end_to_end import client

pandas = pytest.importorskip("pandas", reason="reading results with pandas needs pandas")

STUDY = {
    "name": "tiny batch sweep",
    "base": {
        "model": "tiny-gpt2",
        "precision": "fp32",
        "prompts": {"input_len": 8},
        "n_prompts": 4,
        "max_output_tokens": 4,
        "warmup": {"batches": 1},
    },
    "sweep": {"batch_size": [1, 2, 4, 8]},  # 8 > n_prompts: the invalid point
    "cycles": 2,
    "order": "shuffled",
    "seed": 3,
}


def test_a_study_runs_end_to_end_and_its_results_load_in_pandas(
    service: str, tmp_path: Path
) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))

    done = client("--server", service, "study", "run", str(path), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "skipped point 3 (batch_size=8): batch_size (8) exceeds n_prompts (4)" in done.stderr
    assert len([line for line in done.stderr.splitlines() if ": succeeded, " in line]) == 6
    assert "Study results (mean over cycles)" in done.stdout

    with Client(service) as api:
        (listed,) = api.list_studies().items
        study = api.get_study(listed.id)
        csv_bytes = api.study_results_file(study.id, format="csv")
        parquet_bytes = api.study_results_file(study.id, format="parquet")
        results = api.study_results(study.id)
        reused = [api.result(run.job_id) for run in study.runs]

    assert study.status is StudyStatus.SUCCEEDED
    assert study.counts[JobStatus.SUCCEEDED] == 6
    for frame in (
        pandas.read_csv(io.BytesIO(csv_bytes)),
        pandas.read_parquet(io.BytesIO(parquet_bytes)),
        results.to_pandas(),
    ):
        assert len(frame) == 9  # 3 points x 2 cycles, and a row per point
        runs = frame[frame["kind"] == "run"]
        points = frame[frame["kind"] == "point"].sort_values("point")
        assert sorted(runs["batch_size"]) == [1, 1, 2, 2, 4, 4]
        assert list(points["batch_size"]) == [1, 2, 4]
        assert list(points["n_cycles"]) == [2, 2, 2]
        assert (runs["tokens_per_s"] > 0).all()
        assert runs["energy_per_output_token_j"].isna().all()  # no GPU here: not measured
        assert (points["tokens_per_s_ci95_low"] <= points["tokens_per_s"]).all()
        assert (points["ttft_p90_s"] > 0).all()
    # One model, one process: every run after the first reused the loaded model.
    assert [r.model_reused_from is not None for r in reused] == [False] + [True] * 5
    assert all(r.model_load_time_sec == 0.0 for r in reused[1:])
    assert reused[0].model_load_time_sec > 0
    assert [r.output_tokens for r in reused] == [16] * 6
