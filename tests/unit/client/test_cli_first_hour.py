"""``llem-client`` as a researcher meets it in the first hour, each command against a live
server (issue 15): prefixes, filters and paging, watch/wait, compare, export, config show and
validate, models, delete, errors as JSON, the 401 and not-llem texts, completion scripts."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from llem_client import Client, Job
from llem_client.cli import main
from llem_service.energy.null import NullEnergyMeter

from tests.conftest import LiveServer, make_config
from tests.fakes import FakeHub, FakeInferenceBackend


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_job(server: LiveServer, **overrides: Any) -> Job:
    with Client(server.base_url) as client:
        job = client.submit(make_config(**overrides))
        return client.wait(job.id, timeout=30)


def test_status_takes_a_prefix_and_an_ambiguous_one_lists_the_candidates(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = [run_job(live_server) for _ in range(2)]
    with sqlite3.connect(live_server.data_dir / "jobs.sqlite3") as db:
        for n, job in enumerate(jobs):
            db.execute("UPDATE jobs SET id = ? WHERE id = ?", (f"feed{n:04d}" + "0" * 24, job.id))

    code, out, _ = cli(capsys, "--server", live_server.base_url, "status", "feed0001")
    assert code == 0
    assert out.split()[:2] == ["job", "feed0001" + "0" * 24]

    code, _, err = cli(capsys, "--server", live_server.base_url, "status", "feed")
    assert code == 1
    assert err == (
        f"llem-client: the server answered 400 Ambiguous job id: job id prefix 'feed' matches "
        f"feed0000{'0' * 24}, feed0001{'0' * 24}; give more of the id\n"
    )


def test_the_paging_hint_keeps_the_filters(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        run_job(live_server, name="sweep a", tags={"s": "1"})

    code, out, err = cli(
        capsys, "--server", live_server.base_url, "list", "--status", "succeeded",
        "--tag", "s=1", "--name", "sweep a", "--limit", "2",
    )  # fmt: skip

    assert code == 0
    assert len(out.splitlines()) == 4  # header, rule, two jobs
    hint = err.strip()
    assert hint.startswith(
        f"more jobs: llem-client --server {live_server.base_url} list --status succeeded "
        "--tag s=1 --name 'sweep a' --limit 2 --cursor "
    )
    cursor = hint.rsplit(" ", 1)[1]
    code, out, err = cli(
        capsys, "--server", live_server.base_url, "list", "--status", "succeeded",
        "--tag", "s=1", "--name", "sweep a", "--limit", "2", "--cursor", cursor,
    )  # fmt: skip
    assert len(out.splitlines()) == 3
    assert err == ""


def test_result_is_written_even_without_a_timeseries(
    start_server: Callable[..., LiveServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = start_server(meter=NullEnergyMeter("no NVML here"))
    job = run_job(server)
    out_file, series = tmp_path / "r.json", tmp_path / "ts.csv"

    code, _, err = cli(
        capsys, "--server", server.base_url, "result", job.id[:8],
        "--out", str(out_file), "--timeseries", str(series),
    )  # fmt: skip

    assert code == 1
    assert json.loads(out_file.read_text())["experiment_id"] == job.id
    assert not series.exists()
    assert err.startswith(f"llem-client: {series} not written: no power timeseries was recorded")


def test_result_of_a_failed_job_gives_its_reason_once(
    start_server: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(
        backend=FakeInferenceBackend(fail_in="load", error_message="weights are corrupt")
    )
    job = run_job(server)

    code, _, err = cli(capsys, "--server", server.base_url, "result", job.id[:8])

    assert code == 1
    assert err == (
        f"llem-client: job {job.id} failed: Experiment failed: weights are corrupt; "
        "it has no result\n"
    )


def test_watch_and_result_wait(
    start_server: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(backend=FakeInferenceBackend(sleep_s=0.5))
    with Client(server.base_url) as client:
        first = client.submit(make_config()).id
        second = client.submit(make_config()).id

    code, out, err = cli(capsys, "--server", server.base_url, "watch", first[:8])
    assert code == 0
    assert "tokens/s (output)" in out
    assert f"job {first[:8]}: succeeded" in err

    code, out, _ = cli(
        capsys, "--server", server.base_url, "result", second[:8], "--wait", "--json"
    )
    assert code == 0
    assert json.loads(out)["experiment_id"] == second


def test_wait_is_watch_and_a_failure_exits_1_with_the_reason(
    start_server: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(backend=FakeInferenceBackend(fail_in="run", error_message="boom"))
    with Client(server.base_url) as client:
        job_id = client.submit(make_config()).id

    code, _, err = cli(capsys, "--server", server.base_url, "wait", job_id[:8])

    assert code == 1
    assert err.splitlines()[-1] == f"llem-client: job {job_id} failed: Experiment failed: boom"


def test_compare_and_export(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = run_job(live_server, batch_size=2, name="bs2", tags={"sweep": "bs"})
    b = run_job(live_server, batch_size=4, name="bs4", tags={"sweep": "bs"})
    run_job(live_server, name="other")

    code, out, _ = cli(capsys, "--server", live_server.base_url, "compare", a.id[:8], b.id[:8])
    assert code == 0
    assert "batch_size" in out
    assert f"{a.id[:8]} bs2" in out
    assert "tokens/s (output)" in out

    table = tmp_path / "sweep.csv"
    code, _, err = cli(
        capsys, "--server", live_server.base_url, "export", "--tag", "sweep=bs",
        "--out", str(table),
    )  # fmt: skip
    assert code == 0
    assert err == f"wrote 2 results to {table}\n"
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["experiment_id"] for row in rows] == [b.id, a.id]
    assert [row["config.batch_size"] for row in rows] == ["4", "2"]


def test_config_show_and_validate_take_runs_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(
        capsys, "config", "show", "--model", "gpt2", "--batch-size", "4",
        "--set", "decoding.mode=sample", "--set", "decoding.temperature=0.7",
    )  # fmt: skip
    assert code == 0
    assert "batch_size: 4" in out
    assert "n_prompts: 32" in out  # a default, filled in
    assert "temperature: 0.7" in out
    assert out.splitlines()[-1].startswith("# measurement config hash: ")

    code, out, _ = cli(capsys, "config", "validate", "--model", "gpt2", "--batch-size", "4")
    assert code == 0
    assert out.startswith("valid: ")

    code, _, err = cli(capsys, "config", "validate", "--model", "gpt2", "--set", "batch_sise=2")
    assert code == 2
    assert err == (
        "llem-client: invalid config: batch_sise: unknown field (did you mean 'batch_size'?)\n"
    )


def test_a_typo_is_refused_at_submit_with_a_suggestion(
    start_server: Callable[..., LiveServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "models"
    (root / "tiny-gpt2").mkdir(parents=True)
    (root / "tiny-gpt2" / "config.json").write_text('{"n_positions": 1024}')
    server = start_server(model_roots=str(root), hub=FakeHub(offline="HF_HUB_OFFLINE is set"))

    code, _, err = cli(capsys, "--server", server.base_url, "run", "--model", "tiny-gpt3")

    assert code == 2
    assert err.startswith(
        "llem-client: invalid config (rejected by the server): model: 'tiny-gpt3': it is "
        "not a model directory under LLEM_MODEL_ROOTS (did you mean 'tiny-gpt2'?)"
    )
    code, out, _ = cli(capsys, "--server", server.base_url, "models")
    assert code == 0
    assert out.splitlines()[2].split() == ["tiny-gpt2", "local", "1,024"]


def test_delete(
    start_server: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(backend=FakeInferenceBackend(sleep_s=0.3))
    done = run_job(server)
    with Client(server.base_url) as client:
        active = client.submit(make_config()).id

    code, out, _ = cli(capsys, "--server", server.base_url, "delete", done.id[:8])
    assert code == 0
    assert out == f"deleted job {done.id} with its result and timeseries\n"

    code, _, err = cli(capsys, "--server", server.base_url, "delete", active[:8])
    assert code == 1
    assert "cancel it first" in err


def test_json_errors_go_to_stdout_too(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "--server", live_server.base_url, "status", "f" * 32, "--json")

    assert code == 1
    error = json.loads(out)["error"]
    assert error["exit_code"] == 1
    assert error["problem"]["status"] == 404
    assert error["problem"]["type"] == "urn:llem:problem:job-not-found"
    assert err.startswith("llem-client: the server answered 404 Job not found")


def test_401_says_which_variable_to_set(
    start_server: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    server = start_server(token="s3cret")
    monkeypatch.delenv("LLEM_TOKEN", raising=False)

    _, _, missing = cli(capsys, "--server", server.base_url, "list")
    _, _, wrong = cli(capsys, "--server", server.base_url, "--token", "nope", "list")

    assert missing == (
        f"llem-client: the server at {server.base_url} requires a token: set LLEM_TOKEN "
        "(or pass --token)\n"
    )
    assert wrong == (
        f"llem-client: the server at {server.base_url} refused the token (from --token or "
        "LLEM_TOKEN): it is not the server's LLEM_API_TOKEN\n"
    )


class _NotLlem(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<h1>Not Found</h1>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def foreign_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotLlem)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_url_that_is_not_an_llem_server_is_named_so(
    live_server: LiveServer, foreign_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, foreign = cli(capsys, "--server", foreign_url, "status", "abcd1234")
    _, _, with_v1 = cli(capsys, "--server", f"{live_server.base_url}/v1", "status", "abcd1234")

    assert foreign == (
        f"llem-client: {foreign_url} does not look like an llem server: GET "
        "/v1/experiments/abcd1234 answered 404 without an llem problem\n"
    )
    assert with_v1 == (
        f"llem-client: the llem server at {live_server.base_url} has no route GET "
        "/v1/v1/experiments/abcd1234; give the server's address without /v1\n"
    )


def test_a_servers_text_is_printed_with_control_characters_escaped(
    start_server: Callable[..., LiveServer], capsys: pytest.CaptureFixture[str]
) -> None:
    backend = FakeInferenceBackend(fail_in="load", error_message="bad\x1b[2J\nnews")
    server = start_server(backend=backend)
    job = run_job(server)

    _, status, _ = cli(capsys, "--server", server.base_url, "status", job.id[:8])
    _, listing, _ = cli(capsys, "--server", server.base_url, "list")
    _, _, result = cli(capsys, "--server", server.base_url, "result", job.id[:8])

    for text in (status, listing, result):
        assert "\x1b" not in text
        assert "bad\\x1b[2J" in text


# --- completion ----------------------------------------------------------------------------


def completion(shell: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    code, out, _ = cli(capsys, "completion", shell)
    assert code == 0
    path = tmp_path / f"llem-client.{shell}"
    path.write_text(out)
    return path


def run_shell(*argv: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASH_", "ZDOTDIR"))}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd=cwd, env=env, check=True
    )
    return done.stdout


BASH_COMPLETE = (
    "source {script}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); "
    '_llem_client; printf "%s\\n" "${{COMPREPLY[@]}}"'
)


def test_bash_completes_commands_options_choices_and_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = completion("bash", capsys, tmp_path)
    (tmp_path / "sweep.yaml").write_text("model: gpt2\n")

    def complete(words: str) -> list[str]:
        line = BASH_COMPLETE.format(script=script, words=words)
        return run_shell("bash", "-c", line, cwd=tmp_path).split()

    assert complete("llem-client li") == ["list"]
    assert set(complete("llem-client c")) == {"cancel", "compare", "completion", "config"}
    assert complete("llem-client list --status f") == ["failed"]
    assert "--max-output-tokens" in complete("llem-client run --max")
    assert complete("llem-client run swe") == ["sweep.yaml"]
    assert complete("llem-client config s") == ["show"]
    assert complete("llem-client --server http://h:1 wa") == ["watch", "wait"]
    assert complete("llem-client completion z") == ["zsh"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_loads_the_completion_and_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = completion("zsh", capsys, tmp_path)
    line = (
        f"autoload -U compinit && compinit -u -D; source {script}; "
        "print -r -- $_comps[llem-client]; "
        "COMP_WORDS=(llem-client list --status ru); COMP_CWORD=3; _llem_client; "
        'print -l -- "${COMPREPLY[@]}"'
    )

    registered, *words = run_shell("zsh", "-f", "-c", line, cwd=tmp_path).splitlines()
    assert registered == "_bash_complete -o filenames -F _llem_client"
    # zsh's compgen offers every candidate; zsh's compadd then keeps those matching "ru".
    assert words == ["queued", "running", "succeeded", "failed", "cancelled"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = completion("fish", capsys, tmp_path)

    def complete(line: str) -> list[str]:
        out = run_shell("fish", "--no-config", "-c", f"source {script}; complete -C '{line}'",
                        cwd=tmp_path)  # fmt: skip
        return [row.split("\t")[0] for row in out.splitlines()]

    assert "export" in complete("llem-client ex")
    assert complete("llem-client list --status su") == ["succeeded"]
    assert "--timeseries" in complete("llem-client result --time")
    assert complete("llem-client config v") == ["validate"]


def test_help_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llem_client.cli", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    for command in (
        "run", "status", "list", "watch", "cancel", "delete", "result", "compare", "export",
        "info", "models", "config", "completion",
    ):  # fmt: skip
        assert f"\n    {command}" in done.stdout, command


def test_run_flags_take_tags_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "config", "show", "--model", "m", "--tag", "n=007", "--json")

    assert code == 0
    assert json.loads(out)["tags"] == {"n": "007"}
