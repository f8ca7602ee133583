"""The Docker side of the container and GPU tiers: find the engine, build the image, run it.

Shared by ``tests/container`` and ``tests/gpu``. Every helper shells out to the real ``docker``
and compose CLIs, as a user would. The times each step takes are kept in `TIMINGS` and printed
at the end of the run (``tests/container/conftest.py``), so the tier's cost stays visible.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE_IMAGE = "llem-base:bookworm"
"""The local Debian image `scripts/docker-base` bootstraps where no registry is reachable."""

TIMINGS: dict[str, float] = {}
"""Step name -> seconds, in the order the steps ran."""
NOTES: list[str] = []
"""Other facts worth printing with the timings (image size, base image)."""


class DockerUnavailable(Exception):
    """No Docker engine answers; the message says why."""


def docker_cli() -> str:
    """The docker CLI to use: ``$LLEM_DOCKER``, else the distribution's, else the one on PATH.

    The distribution's (``/usr/bin/docker``) comes first because a newer CLI elsewhere on PATH
    may lack the BuildKit plugin that the engine's own CLI does not need.
    """
    for candidate in (os.environ.get("LLEM_DOCKER"), "/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise DockerUnavailable("no docker CLI found (set LLEM_DOCKER, or run .ci/docker-setup)")


def engine_info(docker: str) -> dict[str, object]:
    """``docker info`` as JSON; raises `DockerUnavailable` when the engine does not answer."""
    done = subprocess.run(
        [docker, "info", "--format", "{{json .}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or ["no answer"]
        raise DockerUnavailable(f"no Docker engine reachable ({reason[0]})")
    info: dict[str, object] = json.loads(done.stdout)
    if info.get("ServerErrors"):
        raise DockerUnavailable(f"no Docker engine reachable ({info['ServerErrors']})")
    return info


def compose_cli(docker: str) -> list[str]:
    """Compose v2 (``docker compose``) where present, else docker-compose v1; or $LLEM_COMPOSE."""
    if os.environ.get("LLEM_COMPOSE"):
        return os.environ["LLEM_COMPOSE"].split()
    v2 = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    )
    if v2.returncode == 0:
        return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    if v1:
        return [v1]
    raise DockerUnavailable("neither `docker compose` nor docker-compose is installed")


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; on failure the error carries its output."""
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
        )
    return done


def timed(step: str, seconds: float) -> None:
    TIMINGS[step] = seconds


def image_exists(docker: str, image: str) -> bool:
    return run([docker, "image", "inspect", image], check=False, timeout=60).returncode == 0


def revision() -> str:
    done = run(["git", "rev-parse", "--short", "HEAD"], check=False, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else ""


@dataclass(frozen=True)
class Build:
    """A finished ``docker build``: the build id it was given, and its log (plain progress)."""

    build_id: str
    log: str


def build_image(
    docker: str,
    tag: str,
    *,
    build_args: Mapping[str, str],
    secrets: Mapping[str, str] | None = None,
    no_cache: bool = False,
    step: str = "image build",
) -> Build:
    """``docker build -f docker/Dockerfile`` of the repository with BuildKit.

    The build id (``BUILD_ID``) is made here, so a test can look for it in a result.
    """
    from llem_client import __version__

    build_id = f"test-{uuid.uuid4().hex[:12]}"
    args = {
        "BUILD_ID": build_id,
        "VCS_REF": revision(),
        "IMAGE_NAME": tag,
        "VERSION": __version__,
        "CREATED": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **build_args,
    }
    argv = [docker, "build", "-f", "docker/Dockerfile", "-t", tag]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for name, source in (secrets or {}).items():
        argv += ["--secret", f"id={name},src={source}"]
    if no_cache:
        argv.append("--no-cache")
    started = time.monotonic()
    env = {**os.environ, "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
    done = run([*argv, "--progress", "plain", "."], env=env, timeout=3600)
    timed(step, time.monotonic() - started)
    return Build(build_id, done.stdout + done.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def container_logs(docker: str, container: str) -> str:
    done = run([docker, "logs", "--tail", "100", container], check=False, timeout=60)
    return done.stdout + done.stderr


def wait_healthy(docker: str, container: str, *, timeout_s: float = 180) -> float:
    """Wait for the container's HEALTHCHECK to report healthy; returns the seconds waited."""
    started = time.monotonic()
    while True:
        status = "{{.State.Status}} {{.State.Health.Status}}"
        done = run([docker, "inspect", "--format", status, container], timeout=60)
        state, health = [*done.stdout.split(), "", ""][:2]
        if health == "healthy":
            return time.monotonic() - started
        if state in {"exited", "dead"} or health == "unhealthy":
            raise AssertionError(
                f"container {container} is {state}/{health}:\n{container_logs(docker, container)}"
            )
        if time.monotonic() - started > timeout_s:
            raise AssertionError(
                f"container {container} not healthy after {timeout_s:.0f} s ({state}/{health}):\n"
                f"{container_logs(docker, container)}"
            )
        time.sleep(0.5)


def wait_http_ok(url: str, *, timeout_s: float = 180) -> float:
    """Wait until ``GET url`` answers 200; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def readable_by_all(root: Path) -> Path:
    """Open a host directory to the image's unprivileged user (pytest makes tmp dirs 0700)."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root
