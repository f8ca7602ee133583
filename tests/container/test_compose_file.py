"""``compose.yaml`` as the compose CLI reads it: GPU reservation, secure by default."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.container import harness

pytestmark = pytest.mark.docker


def config(compose: list[str], *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "LLEM_API_TOKEN"}
    return harness.run(
        [*compose, "-f", "compose.yaml", *extra, "config"], env={**base, **env}, check=False
    )


def _port(entry: str | dict[str, object]) -> tuple[str, int]:
    """(host address, container port) of a published port, as Compose v2 writes it (long form)
    or docker-compose v1 does (``127.0.0.1:9090:9090/tcp``)."""
    if isinstance(entry, dict):
        return str(entry["host_ip"]), int(str(entry["target"]))
    host, _, target = entry.split("/")[0].rsplit(":", 2)
    return host, int(target)


def _mount(entry: str | dict[str, object]) -> tuple[str, str]:
    """(source, target) of a volume, long form or ``source:target[:mode]``."""
    if isinstance(entry, dict):
        return str(entry.get("source", "")), str(entry.get("target", ""))
    source, target = entry.split(":")[:2]
    return source, target


def test_the_gpu_service_reserves_every_gpu_in_the_long_form(compose: list[str]) -> None:
    done = config(compose, LLEM_API_TOKEN="t")

    assert done.returncode == 0, done.stderr
    service = yaml.safe_load(done.stdout)["services"]["llem"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["count"] in {"all", -1}  # Compose v2 writes "all" as -1
    assert devices[0]["capabilities"] == ["gpu"]
    assert service["environment"]["LLEM_API_TOKEN"] == "t"
    assert service["environment"]["LLEM_HOST"] == "0.0.0.0"
    assert service["restart"] == "unless-stopped"
    assert "healthcheck" in service
    assert not service.get("privileged", False)
    mounts = str(service.get("volumes", []))
    assert "docker.sock" not in mounts
    # The GPU locks live on a volume every llem container of the engine shares.
    assert "/run/lock/llem" in mounts
    assert yaml.safe_load(done.stdout)["volumes"]["gpu-locks"]["name"] == "llem-gpu-locks"


def test_without_a_token_compose_refuses_to_start(compose: list[str]) -> None:
    done = config(compose)

    assert done.returncode != 0
    assert "LLEM_API_TOKEN" in done.stderr


def test_the_cpu_variant_has_no_gpu_reservation(compose: list[str]) -> None:
    done = config(compose, "--profile", "cpu", LLEM_API_TOKEN="t")

    assert done.returncode == 0, done.stderr
    service = yaml.safe_load(done.stdout)["services"]["llem-cpu"]
    assert "deploy" not in service
    assert service["volumes"] == yaml.safe_load(done.stdout)["services"]["llem"]["volumes"]


def test_the_monitoring_profile_runs_prometheus_and_grafana_on_loopback(
    compose: list[str],
) -> None:
    done = config(compose, "--profile", "monitoring", LLEM_API_TOKEN="t")

    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service, port in ((prometheus, 9090), (grafana, 3000)):
        (published,) = service["ports"]
        assert _port(published) == ("127.0.0.1", port)
    assert prometheus["environment"]["LLEM_API_TOKEN"] == "t"
    sources = {_mount(v)[0].rsplit("/", 2)[-1] for v in prometheus["volumes"]}
    assert "prometheus" in sources  # monitoring/prometheus, the checked scrape config
    assert "/var/lib/grafana/dashboards" in {_mount(v)[1] for v in grafana["volumes"]}
    # Only with the profile. (docker-compose v1's `config` lists every service whatever the
    # profiles; each keeps its `profiles`, which is what `up` reads.)
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
