"""The ``slurm`` tier: llem-service with ``LLEM_EXECUTOR=slurm`` on a real one-node Slurm
cluster (`tests.slurm.cluster`) that the tier starts and stops itself.

It needs Debian's ``slurm-wlm`` and ``munge`` and root (slurmd starts jobs as their owner).
Without them the tier is skipped, saying why; ``.ci/run`` installs them and sets
``LLEM_REQUIRE_SLURM=1``, which turns that skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server_process import ROOT, ServerProcess
from tests.slurm.cluster import SlurmCluster, missing_commands


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    missing = missing_commands()
    why = None
    if missing:
        why = f"Slurm is not installed ({', '.join(missing)} missing): apt install slurm-wlm munge"
    elif os.geteuid() != 0:
        why = "the slurm tier runs slurmd, which needs root"
    if why is not None:
        if os.environ.get("LLEM_REQUIRE_SLURM") == "1":
            pytest.fail(f"LLEM_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


SlurmService = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def slurm_service(
    slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SlurmService]:
    """``slurm_service(**LLEM settings)``: a started llem-service (a real process, the scripted
    backend) whose experiments are jobs of the tier's cluster; stopped with the module."""
    started: list[ServerProcess] = []

    def start(**settings: str) -> ServerProcess:
        root = tmp_path_factory.mktemp("llem-slurm")
        env = {
            "SLURM_CONF": str(slurm_cluster.conf),
            # The jobs unpickle the tests' scripted backend: they need this checkout.
            "PYTHONPATH": str(ROOT),
            "LLEM_EXECUTOR": "slurm",
            "LLEM_SLURM_SHARED_DIR": str(root / "shared"),
            "LLEM_SLURM_GRES": "",  # the node has no GPUs
            "LLEM_SLURM_EXCLUSIVE": "false",  # several jobs at once on the one node
            "LLEM_SLURM_POLL_S": "0.5",
            "LLEM_SLURM_COMMAND_TIMEOUT_S": "10",
            **{f"LLEM_{key.upper()}": value for key, value in settings.items()},
        }
        server = ServerProcess(root / "data", root / "pids", root / "server.log", env)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
