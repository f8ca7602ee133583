"""A build behind a TLS-intercepting proxy: the CA bundle goes in as a BuildKit secret, pip
reaches the index through it, and nothing of it stays in the image.

Opt-in, because it needs the network: ``LLEM_TEST_BUILD_CA`` names the CA bundle (``.ci/run``
sets it to this machine's bundle, whose proxy re-signs TLS). torch still comes from the
wheelhouse (its CPU build), so the test does not pull GBs of CUDA wheels.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.container import harness

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LIST_LEFTOVERS = "find /run/secrets -mindepth 1 2>/dev/null; ls /etc/apt/apt.conf.d"
"""Where the build put the secret or pointed apt at it; both must be empty of it."""


@pytest.fixture
def ca_bundle() -> Path:
    chosen = os.environ.get("LLEM_TEST_BUILD_CA")
    if not chosen:
        pytest.skip("set LLEM_TEST_BUILD_CA to a CA bundle to test a build through a TLS proxy")
    return Path(chosen)


@pytest.fixture
def proxy_tag(docker: str) -> Iterator[str]:
    tag = f"llem:proxy-test-{uuid.uuid4().hex[:8]}"
    yield tag
    harness.run([docker, "rmi", tag], check=False)


def test_a_build_through_the_proxy_trusts_the_secret_and_keeps_none_of_it(
    docker: str, ca_bundle: Path, proxy_tag: str, wheelhouse: Path
) -> None:
    base = os.environ.get("LLEM_TEST_BASE_IMAGE", harness.DEFAULT_BASE_IMAGE)

    build = harness.build_image(
        docker,
        proxy_tag,
        build_args={
            "BASE_IMAGE": base,
            "TORCH_SPEC": f"torch=={os.environ.get('LLEM_TORCH_VERSION', '2.13.0')}",
        },
        secrets={"ca": str(ca_bundle)},
        no_cache=True,  # a cached layer would not have gone through the proxy at all
        step="image build through the proxy (index, CA secret, no cache)",
    )

    history = harness.run([docker, "history", "--no-trunc", proxy_tag]).stdout
    leftovers = harness.run(
        [docker, "run", "--rm", proxy_tag, "sh", "-c", LIST_LEFTOVERS], check=False
    ).stdout
    # pip fetched from the index through the proxy (an unreachable index would only warn and
    # leave everything to the wheelhouse, so the build alone proves nothing)
    assert "CERTIFICATE_VERIFY_FAILED" not in build.log
    assert "Downloading" in build.log or "Using cached" in build.log
    assert str(ca_bundle) not in history
    assert "BEGIN CERTIFICATE" not in history
    assert "/run/secrets/" not in leftovers  # its mount point may stay, empty
    assert "99llem-ca" not in leftovers
