"""As a user runs it: ``llem-service`` as a real process, ``llem-client run`` as another."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llem_client import ExperimentResult

BIN = Path(sys.executable).parent
TIMEOUT_S = 120


def client(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "llem-client"), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=cwd,
        check=False,
    )


def test_run_a_tiny_local_model_end_to_end(service: str, tmp_path: Path) -> None:
    out = tmp_path / "result.json"

    done = client(
        "--server",
        service,
        "run",
        "--model",
        "tiny-gpt2",
        "-n",
        "8",
        "--max-output-tokens",
        "16",
        "--batch-size",
        "4",
        "--input-len",
        "12",
        "--out",
        str(out),
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result = ExperimentResult.model_validate_json(out.read_text())
    assert (result.n_requests, result.input_tokens, result.output_tokens) == (8, 96, 128)
    assert result.output_tokens_per_request == [16] * 8
    assert result.total_flops == result.prefill_flops + result.decode_flops > 0
    assert result.avg_tokens_per_second > 0
    assert result.energy is None
    assert result.timeseries is None
    (no_energy,) = [w for w in result.warnings if w.code == "energy_unavailable"]
    assert "NVML" in no_energy.message  # nvidia-ml-py is installed, the driver is not
    assert result.repeats.tokens_per_second.n == 1
    assert result.environment.backend_versions["torch"]
    assert "tokens/s" in done.stdout or "tok/s" in done.stdout


def test_a_malformed_config_exits_2_with_one_line(service: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model: tiny-gpt2\nbatch_size: 0\n")

    done = client("--server", service, "run", str(config), cwd=tmp_path)

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "batch_size" in done.stderr


def test_a_model_outside_the_roots_is_refused_at_submit(service: str, tmp_path: Path) -> None:
    done = client("--server", service, "run", "--model", "/etc", "-n", "1", "--json", cwd=tmp_path)

    assert done.returncode == 2
    assert "outside the allowed roots" in done.stderr
    assert json.loads(done.stdout)["error"]["problem"]["status"] == 422
    assert "Traceback" not in done.stderr
    listed = client("--server", service, "list", "--json", cwd=tmp_path)
    assert json.loads(listed.stdout)["items"] == []  # no job was made


def test_a_typo_is_refused_with_a_suggestion(service: str, tmp_path: Path) -> None:
    done = client("--server", service, "run", "--model", "tiny-gpt3", cwd=tmp_path)

    assert done.returncode == 2
    assert "did you mean 'tiny-gpt2'" in done.stderr
    assert "HF_HUB_OFFLINE is set on the server" in done.stderr


def test_a_prompt_longer_than_the_context_is_refused_then_caught_at_run_time(
    service: str, tmp_path: Path
) -> None:
    too_long = client(
        "--server", service, "run", "--model", "tiny-gpt2", "--input-len", "5000", cwd=tmp_path
    )
    config = tmp_path / "inline.json"
    config.write_text(
        json.dumps(
            {
                "model": "tiny-gpt2",
                "prompts": {"prompts": ["hello " * 400]},
                "n_prompts": 1,
                "max_output_tokens": 8,
                "precision": "fp32",
            }
        )
    )
    at_run = client("--server", service, "run", str(config), "--json", cwd=tmp_path)

    assert too_long.returncode == 2
    assert "longer than the model's context of 256 (n_positions in its config.json)" in (
        too_long.stderr
    )
    assert at_run.returncode == 1
    assert "Experiment config cannot run: the longest prompt (" in at_run.stderr
    assert "IndexError" not in at_run.stderr


def test_info_answers(service: str, tmp_path: Path) -> None:
    done = client("--server", service, "info", "--json", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["energy_meter_available"] is False
    assert info["energy_meter"] == "nvml"
    assert "NVML" in info["energy_meter_reason"]
    assert info["backends"] == ["pytorch"]
