"""The monitoring files in the repository: Prometheus's scrape config and alert rules pass
``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it), and every query of the
provisioned Grafana dashboard names metrics the service really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, build_app

MONITORING = REPO / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found (apt-get install prometheus)"
)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_the_scrape_config_passes_promtool_as_the_container_lays_it_out(tmp_path: Path) -> None:
    # compose.yaml copies monitoring/prometheus and writes the token beside it.
    for file in (MONITORING / "prometheus").glob("*.yml"):
        shutil.copy(file, tmp_path)
    (tmp_path / "llem-token").write_text("t")

    done = promtool("check", "config", "prometheus.yml", cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_the_alert_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", "llem-rules.test.yml", cwd=MONITORING / "prometheus")

    assert done.returncode == 0, done.stdout + done.stderr


def test_the_scrape_config_authenticates_and_finds_either_service() -> None:
    config = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]

    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "llem-token"}
    assert job["dns_sd_configs"][0]["names"] == ["llem", "llem-cpu"]
    assert job["dns_sd_configs"][0]["port"] == 8000


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The names of every sample the service can export, from a real scrape."""
    with TestClient(build_app(tmp_path_factory.mktemp("data"))) as http:
        text = http.get("/metrics").text
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def _queries(dashboard: dict[str, object]) -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"expr", "query", "definition"} and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return found


def test_every_dashboard_query_names_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "llem.json").read_text())
    queries = _queries(dashboard)

    assert len(queries) >= 15
    named = {m for q in queries for m in re.findall(r"\bllem_[a-z_]+\b", q)}
    assert named, "no llem metric in the dashboard"
    assert named - exported == set()
    for family in ("llem_gpu_power_watts", "llem_jobs", "llem_http_request_duration_seconds"):
        assert any(family in q for q in queries), family


def test_the_dashboard_uses_the_provisioned_data_source() -> None:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "llem.json").read_text())
    source = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (provisioned,) = source["datasources"]

    uids = {
        target["datasource"]["uid"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    assert uids == {provisioned["uid"]}
    assert provisioned["url"] == "http://prometheus:9090"  # the compose service
    assert all(panel["title"] for panel in dashboard["panels"])
