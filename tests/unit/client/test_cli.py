"""``llem-client`` end to end: each command against a live server, exit codes, start-up imports.

Most tests call `main` in-process and read stdout/stderr with ``capsys``; those about the real
process (exit status, signals, what gets imported) run ``python -m llem_client.cli``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from llem_client import (
    Client,
    ExperimentResult,
    Job,
    JobList,
    JobProgress,
    ProblemDetail,
    ServiceInfo,
    UnprocessableEntityError,
)
from llem_client._cli_errors import describe_api_error
from llem_client.cli import main
from llem_service.energy.null import NullEnergyMeter

from tests.conftest import LiveServer, make_config
from tests.fakes import FakeInferenceBackend

HEAVY = {"httpx", "pydantic", "rich", "yaml"}


def cli(capsys: pytest.CaptureFixture[str], *argv: str, **kwargs: Any) -> tuple[int, str, str]:
    code = main(list(argv), **kwargs)
    out, err = capsys.readouterr()
    return code, out, err


def cli_process(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llem_client.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def write_config(path: Path, **overrides: Any) -> Path:
    data = make_config(**overrides).model_dump(mode="json")
    dump = json.dumps if path.suffix == ".json" else yaml.safe_dump
    path.write_text(dump(data), "utf-8")
    return path


def submit(server: LiveServer, **overrides: Any) -> str:
    with Client(server.base_url) as client:
        return client.submit(make_config(**overrides)).id


def wait(server: LiveServer, job_id: str) -> Job:
    with Client(server.base_url) as client:
        return client.wait(job_id, timeout=30)


# --- start-up ---------------------------------------------------------------------------------


def test_importing_the_cli_imports_no_heavy_module():
    code = f"import sys, llem_client.cli; print(sorted({HEAVY!r} & set(sys.modules)))"

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "[]"


def test_help_imports_no_heavy_module():
    code = (
        "import sys; from llem_client.cli import main; code = main(['run', '--help']); "
        f"print(code, sorted({HEAVY!r} & set(sys.modules)))"
    )

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert done.stdout.splitlines()[-1] == "0 []"
    assert "--set KEY=VALUE" in done.stdout


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")

    assert code == 0
    assert re.fullmatch(r"llem-client \S+ \(schema 1\)\n", out)


# --- run --------------------------------------------------------------------------------------


def test_run_applies_flag_and_set_overrides_and_writes_the_result(
    live_server, tmp_path, capsys, monkeypatch
):
    config = write_config(tmp_path / "exp.yaml", n_prompts=8)
    monkeypatch.chdir(tmp_path)

    code, out, err = cli(
        capsys,
        "--server", live_server.base_url,
        "run", str(config),
        "-n", "4", "--max-output-tokens", "2", "--name", "cli-test",
        "--set", "decoding.mode=sample", "--set", "decoding.temperature=0.7",
    )  # fmt: skip

    assert code == 0, err
    written = sorted(tmp_path.glob("tiny-test-model-*.json"))
    assert len(written) == 1
    assert re.fullmatch(r"tiny-test-model-\d{8}-\d{6}\.json", written[0].name)
    result = ExperimentResult.model_validate_json(written[0].read_text())
    assert result.config.n_prompts == 4
    assert result.config.max_output_tokens == 2
    assert result.config.name == "cli-test"
    assert result.config.decoding.mode == "sample"
    assert result.config.decoding.temperature == 0.7
    assert result.config.batch_size == 2, "fields not overridden keep the file's value"
    assert result.output_tokens == 8
    assert "Experiment result" in out
    assert f"wrote {written[0]}" in out
    assert f"job {result.experiment_id[:8]}: succeeded" in err


def test_run_json_prints_only_the_result_and_writes_no_file(
    live_server, tmp_path, capsys, monkeypatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    code, out, err = cli(
        capsys, "--server", live_server.base_url, "run", "--model", "tiny-test-model",
        "-n", "4", "--batch-size", "2", "--max-output-tokens", "4", "--input-len", "8",
        "--set", "warmup.batches=0", "--set", "baseline.enabled=false", "--json",
    )  # fmt: skip

    assert code == 0, err
    result = ExperimentResult.model_validate_json(out)
    assert result.config.prompts.source == "synthetic"
    assert result.config.prompts.input_len == 8
    assert result.energy is not None
    assert list(cwd.iterdir()) == []
    assert "submitted job" in err


def test_run_json_with_out_writes_the_same_json(live_server, tmp_path, capsys):
    config = write_config(tmp_path / "exp.json")
    out_path = tmp_path / "result.json"

    code, out, _ = cli(
        capsys, "--server", live_server.base_url, "run", str(config), "--out", str(out_path),
        "--json",
    )  # fmt: skip

    assert code == 0
    assert json.loads(out) == json.loads(out_path.read_text())


def test_run_without_meter_prints_no_meter_not_zero(start_server, tmp_path, capsys):
    server = start_server(meter=NullEnergyMeter("no NVML on this host"))
    config = write_config(tmp_path / "exp.yaml")

    code, out, _ = cli(
        capsys, "--server", server.base_url, "run", str(config), "--out", str(tmp_path)
    )

    assert code == 0
    assert re.search(r"energy\s+n/a \(no meter\)", out)
    assert re.search(r"mean power\s+n/a \(no meter\)", out)
    assert "warnings:" in out
    [written] = tmp_path.glob("tiny-test-model-*.json")
    assert ExperimentResult.model_validate_json(written.read_text()).energy is None


def test_run_of_a_failing_experiment_exits_1_with_its_error(start_server, tmp_path, capsys):
    server = start_server(backend=FakeInferenceBackend(fail_in="run", error_message="CUDA OOM"))
    config = write_config(tmp_path / "exp.yaml")

    code, out, err = cli(capsys, "--server", server.base_url, "run", str(config))

    assert code == 1
    assert out == ""
    last = err.splitlines()[-1]
    assert re.fullmatch(r"llem-client: job \w+ failed: .*CUDA OOM.*", last)


def test_run_no_wait_prints_the_job_id_alone(live_server, tmp_path, capsys):
    config = write_config(tmp_path / "exp.yaml")

    code, out, err = cli(capsys, "--server", live_server.base_url, "run", str(config), "--no-wait")

    assert code == 0
    job_id = out.strip()
    assert out == f"{job_id}\n"
    assert err == ""
    assert wait(live_server, job_id).status.value == "succeeded"

    code, out, _ = cli(
        capsys, "--server", live_server.base_url, "run", str(config), "--no-wait", "--json"
    )
    assert code == 0
    assert Job.model_validate_json(out).status.value in {"queued", "running", "succeeded"}


class InterruptedWaitClient(Client):
    """Accepts every submission as job ``job-1``; its `wait` is interrupted as by Ctrl-C."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", max_retries=0)  # never contacted

    def submit(self, config: Any, *, idempotency_key: str | None = None) -> Job:
        return Job(
            id="job-1",
            status="queued",
            model="m",
            config_hash="0123456789abcdef",
            created_at=datetime.now(timezone.utc),
            progress=JobProgress(phase="queued"),
        )

    def wait(self, job_id: str, **kwargs: Any) -> Job:
        raise KeyboardInterrupt


def test_ctrl_c_while_waiting_exits_130_and_says_how_to_follow(capsys):
    code, out, err = cli(
        capsys,
        "--server", "http://gpu:8000", "run", "--model", "m", "-n", "4",
        client_factory=lambda server, token, timeout: InterruptedWaitClient(),
    )  # fmt: skip

    assert code == 130
    assert out == ""
    last = err.splitlines()[-1]
    assert last.startswith("llem-client: interrupted; job job-1 goes on running on the server.")
    assert "'llem-client --server http://gpu:8000 watch job-1'" in last
    assert "'llem-client --server http://gpu:8000 result job-1'" in last


def test_sigint_to_a_waiting_run_exits_130_without_traceback(start_server, tmp_path):
    server = start_server(backend=FakeInferenceBackend(sleep_s=10.0))
    config = write_config(tmp_path / "exp.yaml")
    argv = [
        sys.executable,
        "-m",
        "llem_client.cli",
        "--server",
        server.base_url,
        "run",
        str(config),
    ]

    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # wait until the experiment is really running
            lines.append(line)
            if "measuring" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=30)
    err = "".join(lines) + rest

    assert proc.returncode == 130, err
    assert out == ""
    assert "Traceback" not in err
    job_id = lines[0].split()[2]
    assert f"'llem-client --server {server.base_url} watch {job_id}'" in err
    with Client(server.base_url) as client:
        assert client.cancel(job_id).id == job_id  # still there, still running: stop it


# --- status, result, list, cancel, info -------------------------------------------------------


def test_status_result_and_list_of_a_finished_job(live_server, tmp_path, capsys):
    job_id = submit(live_server, name="listed")
    wait(live_server, job_id)

    code, out, _ = cli(capsys, "--server", live_server.base_url, "status", job_id)
    assert code == 0
    assert re.search(r"^status\s+succeeded$", out, re.MULTILINE)

    code, out, _ = cli(capsys, "status", job_id, "--json", "--server", live_server.base_url)
    assert code == 0
    assert Job.model_validate_json(out).id == job_id

    out_path = tmp_path / "r.json"
    code, out, _ = cli(
        capsys, "--server", live_server.base_url, "result", job_id, "--out", str(out_path)
    )
    assert code == 0
    assert "Experiment result" in out
    assert ExperimentResult.model_validate_json(out_path.read_text()).experiment_id == job_id

    code, out, _ = cli(capsys, "--server", live_server.base_url, "result", job_id, "--json")
    assert code == 0
    assert ExperimentResult.model_validate_json(out).config.name == "listed"

    code, out, _ = cli(capsys, "--server", live_server.base_url, "list")
    assert code == 0
    assert re.search(rf"{job_id[:8]}\s+listed\s+tiny-test-model\s+succeeded", out)

    code, out, _ = cli(
        capsys, "--server", live_server.base_url, "list", "--status", "succeeded", "--json"
    )
    assert code == 0
    assert [job.id for job in JobList.model_validate_json(out).items] == [job_id]


def test_result_of_a_running_job_exits_1_and_cancel_stops_it(start_server, capsys):
    server = start_server(backend=FakeInferenceBackend(sleep_s=10.0))
    job_id = submit(server)

    code, out, err = cli(capsys, "--server", server.base_url, "result", job_id)
    assert code == 1
    assert out == ""
    assert re.match(
        rf"llem-client: job {job_id} is (starting|loading|warmup|measuring \S+ requests); wait "
        rf"for its result with '.* result {job_id[:8]} --wait'",
        err,
    )
    assert err.count("\n") == 1

    code, out, _ = cli(capsys, "--server", server.base_url, "cancel", job_id)
    assert code == 0
    assert out.startswith(f"job {job_id}: ")
    assert wait(server, job_id).status.value == "cancelled"


def test_unknown_job_exits_1_with_one_line(live_server, capsys):
    code, out, err = cli(capsys, "--server", live_server.base_url, "status", "no-such-job")

    assert code == 1
    assert out == ""
    assert re.fullmatch(r"llem-client: the server answered 404 [^\n]*no-such-job[^\n]*\n", err)


def test_info(live_server, capsys):
    code, out, _ = cli(capsys, "--server", live_server.base_url, "info")
    assert code == 0
    assert re.search(r"^energy meter\s+nvml \(available\)$", out, re.MULTILINE)
    assert re.search(r"^queue length\s+0$", out, re.MULTILINE)
    assert re.search(r"^executor\s+local \(available\)$", out, re.MULTILINE)
    assert re.search(r"^GPUs in use\s+0 of 1$", out, re.MULTILINE)

    code, out, _ = cli(capsys, "--server", live_server.base_url, "info", "--json")
    assert code == 0
    assert ServiceInfo.model_validate_json(out).energy_meter_available


def test_info_says_why_there_is_no_meter(start_server, capsys):
    server = start_server(meter=NullEnergyMeter("nvidia-ml-py is not installed"))

    code, out, _ = cli(capsys, "--server", server.base_url, "info")

    assert code == 0
    assert re.search(
        r"^energy meter\s+none \(not available: nvidia-ml-py is not installed\)$",
        out,
        re.MULTILINE,
    )


def test_server_and_token_come_from_the_environment(start_server, capsys, monkeypatch):
    server = start_server(token="s3cret")
    monkeypatch.setenv("LLEM_SERVER", server.base_url)

    code, _, err = cli(capsys, "list")
    assert code == 1
    assert "requires a token: set LLEM_TOKEN (or pass --token)" in err

    monkeypatch.setenv("LLEM_TOKEN", "s3cret")
    assert cli(capsys, "list")[0] == 0


def test_token_flag(start_server, capsys):
    server = start_server(token="s3cret")

    assert cli(capsys, "--server", server.base_url, "--token", "s3cret", "info")[0] == 0


# --- errors -----------------------------------------------------------------------------------


def test_connection_refused_exits_1_with_one_line(capsys):
    url = closed_port_url()

    code, out, err = cli(
        capsys, "--server", url, "status", "x",
        client_factory=lambda server, token, timeout: Client(server, token, max_retries=0),
    )  # fmt: skip

    assert code == 1
    assert out == ""
    assert re.fullmatch(rf"llem-client: cannot reach the llem server at {url}: [^\n]+\n", err)


def test_connection_refused_in_a_real_process():
    url = closed_port_url()

    done = cli_process("--server", url, "list")

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"llem-client: cannot reach the llem server at {url}: ")
    assert done.stderr.count("\n") == 1


def test_invalid_config_in_a_real_process_exits_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: gpt2\nbatch_size: 8\nn_prompts: 4\n", "utf-8")

    done = cli_process("--server", closed_port_url(), "run", str(config))

    assert done.returncode == 2
    assert done.stderr == "llem-client: invalid config: batch_size (8) exceeds n_prompts (4)\n"


def test_a_422_from_the_server_is_an_invalid_config():
    request = httpx.Request("POST", "http://server/v1/experiments")
    problem = ProblemDetail.model_validate(
        {
            "title": "Validation failed",
            "status": 422,
            "errors": [
                {"loc": ["body", "pytorch"], "msg": "Value error, no 8 bit", "type": "value_error"},
                {"loc": ["body", "n_prompts"], "msg": "too many", "type": "less_than_equal"},
            ],
        }
    )
    error = UnprocessableEntityError(httpx.Response(422, request=request), problem)

    assert describe_api_error(error) == (
        "invalid config (rejected by the server): pytorch: no 8 bit; n_prompts: too many",
        2,
    )
