"""The product as a user runs it on a host without a GPU: ``compose.yaml``'s CPU variant, the
image built from this repository, and ``llem-client`` on the host talking to it over HTTP.

The stack comes up once for the module; the tests run in file order: it is healthy and
unprivileged, it runs an experiment, it keeps the result over a restart, it goes down cleanly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from llem_client import ExperimentResult, __version__

from tests.container import harness
from tests.container.conftest import BuiltImage

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVICE = "llem-cpu"
CLIENT = Path(sys.executable).parent / "llem-client"
LIST_PROCESSES = """
import json, pathlib
found = []
for proc in pathlib.Path("/proc").glob("[0-9]*"):
    status = (proc / "status").read_text().splitlines()
    uid = next(line for line in status if line.startswith("Uid:")).split()[1]
    found.append([int(uid), (proc / "cmdline").read_bytes().replace(b"\\0", b" ").decode()])
print(json.dumps(found))
"""
"""Run in the container: [uid, command line] of every process in it."""


@dataclass
class Stack:
    """A compose project of this repository's compose.yaml, CPU profile."""

    compose: list[str]
    docker: str
    project: str
    env: dict[str, str]
    url: str
    token: str
    image: BuiltImage
    state: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*self.compose, "-f", "compose.yaml", "-p", self.project, "--profile", "cpu"]
        return harness.run([*argv, *args], env=self.env, check=check, timeout=300)

    def container(self) -> str:
        container_id = self.run("ps", "-q", SERVICE).stdout.strip()
        assert container_id, f"no {SERVICE} container in project {self.project}"
        return container_id

    def client(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLIENT), "--server", self.url, *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=cwd,
            env={**os.environ, "LLEM_TOKEN": self.token},
            check=False,
        )


@pytest.fixture(scope="module")
def stack(
    docker: str, compose: list[str], cpu_image: BuiltImage, container_models: Path
) -> Iterator[Stack]:
    port = harness.free_port()
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        "LLEM_API_TOKEN": token,
        "LLEM_IMAGE": cpu_image.tag,
        "LLEM_MODELS_DIR": str(container_models),
        "LLEM_PUBLISH_ADDR": "127.0.0.1",
        "LLEM_PUBLISH_PORT": str(port),
    }
    stack = Stack(
        compose=compose,
        docker=docker,
        project=f"llemtest{uuid.uuid4().hex[:8]}",
        env=env,
        url=f"http://127.0.0.1:{port}",
        token=token,
        image=cpu_image,
    )
    started = time.monotonic()
    stack.run("up", "-d", "--no-build", SERVICE)
    try:
        harness.wait_healthy(docker, stack.container())
        harness.timed("compose up to healthy (CPU variant)", time.monotonic() - started)
        yield stack
    finally:
        stack.run("down", "-v", "--remove-orphans", check=False)


def test_the_image_declares_its_user_command_health_volumes_and_labels(
    docker: str, cpu_image: BuiltImage
) -> None:
    config = json.loads(
        harness.run(
            [docker, "image", "inspect", "--format", "{{json .Config}}", cpu_image.tag]
        ).stdout
    )

    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["llem-service"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Healthcheck"]["StartPeriod"] > 0
    assert set(config["Volumes"]) == {"/data", "/cache/huggingface"}
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "llem"
    if cpu_image.built_here:
        assert labels["org.opencontainers.image.version"] == __version__
        assert labels["org.opencontainers.image.revision"] == harness.revision()


def test_the_service_is_healthy_unprivileged_and_guarded_by_the_token(stack: Stack) -> None:
    user = harness.run(
        [stack.docker, "inspect", "--format", "{{.Config.User}}", stack.container()]
    ).stdout.strip()
    processes = harness.run(
        [stack.docker, "exec", stack.container(), "python3", "-c", LIST_PROCESSES]
    )
    uids_by_command = json.loads(processes.stdout)

    assert user.split(":")[0] not in {"", "0", "root"}
    assert any("llem-service" in command for _, command in uids_by_command)
    assert all(uid != 0 for uid, _ in uids_by_command), uids_by_command
    assert httpx.get(f"{stack.url}/v1/info", timeout=10).status_code == 401
    info = httpx.get(
        f"{stack.url}/v1/info", headers={"Authorization": f"Bearer {stack.token}"}, timeout=10
    )
    assert info.status_code == 200
    assert info.json()["backends"] == ["pytorch"]
    # The dashboard's assets are in the image (package data), and /metrics is guarded too.
    page = httpx.get(f"{stack.url}/ui", timeout=10)
    assert page.status_code == 200
    assert "/ui/static/vendor/uplot-" in page.text
    assert httpx.get(f"{stack.url}/ui/static/js/main.js", timeout=10).status_code == 200
    assert httpx.get(f"{stack.url}/metrics", timeout=10).status_code == 401
    metrics = httpx.get(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {stack.token}"}, timeout=10
    )
    assert "llem_queue_length" in metrics.text


def test_llem_client_runs_a_mounted_model_in_the_container(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    started = time.monotonic()

    done = stack.client(
        "run",
        "--model",
        "tiny-gpt2",
        "-n",
        "8",
        "--batch-size",
        "4",
        "--input-len",
        "12",
        "--max-output-tokens",
        "16",
        "--precision",
        "fp32",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    harness.timed("llem-client run through the container", time.monotonic() - started)

    assert done.returncode == 0, done.stderr
    result = ExperimentResult.model_validate_json(out.read_text())
    assert (result.n_requests, result.input_tokens, result.output_tokens) == (8, 96, 128)
    assert result.avg_tokens_per_second > 0
    assert result.schema_version == "1"
    image = result.environment.container_image or ""
    assert image.startswith(stack.image.tag)
    assert f"build {stack.image.build_id}" in image
    assert "version " in image
    assert result.environment.backend_versions["torch"].startswith("2.")
    if result.energy is None:  # no GPU here: the result says why, never a made-up number
        assert "energy_unavailable" in [w.code for w in result.warnings]
    stack.state["job"] = result.experiment_id
    stack.state["result"] = out.read_text()


def test_a_restart_keeps_the_earlier_result(stack: Stack, tmp_path: Path) -> None:
    job = stack.state.get("job")
    if job is None:
        pytest.skip("needs the result of test_llem_client_runs_a_mounted_model_in_the_container")
    before = stack.container()
    started = time.monotonic()

    stack.run("restart", SERVICE)
    harness.wait_healthy(stack.docker, stack.container())
    harness.timed("compose restart to healthy", time.monotonic() - started)
    done = stack.client("result", job, "--json", cwd=tmp_path)

    assert stack.container() == before  # the same container, restarted: the volume carried it
    assert done.returncode == 0, done.stderr
    kept = ExperimentResult.model_validate_json(done.stdout)
    assert kept == ExperimentResult.model_validate_json(stack.state["result"])


def test_compose_down_removes_containers_and_volumes(stack: Stack) -> None:
    started = time.monotonic()

    done = stack.run("down", "-v", "--remove-orphans")
    harness.timed("compose down -v", time.monotonic() - started)

    assert done.returncode == 0
    label = f"label=com.docker.compose.project={stack.project}"
    containers = harness.run([stack.docker, "ps", "-aq", "--filter", label])
    volumes = harness.run([stack.docker, "volume", "ls", "-q", "--filter", label])
    assert containers.stdout.strip() == ""
    assert volumes.stdout.strip() == ""
