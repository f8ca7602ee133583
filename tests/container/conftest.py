"""Fixtures of the container tier: the engine, the CPU image built from this repository, a
tiny model directory to mount, and the printed cost of it all.

Where no registry is reachable the image is built on a Debian base bootstrapped locally
(`scripts/docker-base`), offline from a wheelhouse with torch's CPU build
(`scripts/docker-wheelhouse`). Environment knobs:

- ``LLEM_TEST_BASE_IMAGE``: another base (e.g. ``debian:bookworm-slim`` where Docker Hub is
  reachable); its Python must be the wheelhouse's (3.11 for bookworm).
- ``LLEM_TEST_IMAGE``: an image built beforehand; nothing is built.
- ``LLEM_DOCKER``, ``LLEM_COMPOSE``: the CLIs to use.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.container import harness


@dataclass(frozen=True)
class BuiltImage:
    """An image to test, and the build id its results must name."""

    tag: str
    build_id: str
    built_here: bool = True


@pytest.fixture(scope="session")
def docker() -> str:
    """The docker CLI, with an engine that answers; the tier skips (with why) otherwise."""
    try:
        cli = harness.docker_cli()
        harness.engine_info(cli)
    except harness.DockerUnavailable as error:
        pytest.skip(f"{error}; .ci/docker-setup installs and starts one")
    return cli


@pytest.fixture(scope="session")
def compose(docker: str) -> list[str]:
    try:
        return harness.compose_cli(docker)
    except harness.DockerUnavailable as error:
        pytest.fail(f"a Docker engine answers but {error}")


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """docker/wheelhouse, filled for an offline CPU build (skipped when up to date)."""
    started = time.monotonic()
    harness.run(["scripts/docker-wheelhouse"], env={**os.environ, "PYTHON": sys.executable})
    harness.timed("wheelhouse", time.monotonic() - started)
    return harness.REPO / "docker" / "wheelhouse"


@pytest.fixture(scope="session")
def cpu_image(docker: str, wheelhouse: Path) -> Iterator[BuiltImage]:
    """The service image with torch's CPU build, built from this working tree once per run."""
    prebuilt = os.environ.get("LLEM_TEST_IMAGE")
    if prebuilt:
        info = harness.run([docker, "run", "--rm", prebuilt, "cat", "/etc/llem/image.json"])
        yield BuiltImage(prebuilt, json.loads(info.stdout)["build_id"], built_here=False)
        return

    base = os.environ.get("LLEM_TEST_BASE_IMAGE", harness.DEFAULT_BASE_IMAGE)
    if base == harness.DEFAULT_BASE_IMAGE and not harness.image_exists(docker, base):
        started = time.monotonic()
        harness.run(["scripts/docker-base", base], env={**os.environ, "DOCKER": docker})
        harness.timed("base image bootstrap (debootstrap + import)", time.monotonic() - started)

    tag = f"llem:test-{uuid.uuid4().hex[:8]}"
    build = harness.build_image(
        docker,
        tag,
        build_args={
            "BASE_IMAGE": base,
            "PIP_OFFLINE": "1",
            "TORCH_SPEC": f"torch=={os.environ.get('LLEM_TORCH_VERSION', '2.13.0')}",
        },
    )
    size = harness.run([docker, "image", "inspect", "--format", "{{.Size}}", tag]).stdout
    harness.NOTES.append(f"image {tag} on {base}: {int(size) / 1e9:.2f} GB")
    yield BuiltImage(tag, build.build_id)
    harness.run([docker, "rmi", tag], check=False)


@pytest.fixture(scope="session")
def container_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root holding ``tiny-gpt2``, readable by the image's unprivileged user."""
    from tests.integration.conftest import build_gpt2

    root = tmp_path_factory.mktemp("container-models")
    build_gpt2(root / "tiny-gpt2")
    return harness.readable_by_all(root)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if harness.TIMINGS or harness.NOTES:
        terminalreporter.section("container tier cost")
        for step, seconds in harness.TIMINGS.items():
            terminalreporter.write_line(f"{step:<48} {seconds:8.1f} s")
        for note in harness.NOTES:
            terminalreporter.write_line(note)
