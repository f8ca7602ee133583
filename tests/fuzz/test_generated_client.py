"""A client generated from the server's own ``/openapi.json`` by openapi-python-client works:
it authenticates with the declared bearer scheme, submits, waits, fetches a typed result and
downloads the timeseries as bytes, in both formats.

The generator is run as a user would run it, with one setting from its documentation:
``content_type_overrides`` tells it that the Parquet media type is binary (it knows
``application/octet-stream`` by name only), as the README says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.fuzz

pytest.importorskip("openapi_python_client", reason="openapi-python-client is in the dev extra")

TOKEN = "generated-client-token"
GENERATOR_CONFIG = """\
package_name_override: llem_openapi
project_name_override: llem-openapi
content_type_overrides:
  application/vnd.apache.parquet: application/octet-stream
"""

SCRIPT = """
import sys, time
from llem_openapi import AuthenticatedClient
from llem_openapi.api.experiments import (
    get_experiment, get_result, get_timeseries, list_experiments, submit_experiment,
)
from llem_openapi.models import ExperimentConfig, GetTimeseriesFormat, Job, JobStatus, ProblemDetail
from llem_openapi.models import ExperimentConfigPrecision, SyntheticPrompts

base_url, token = sys.argv[1], sys.argv[2]
client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
anonymous = AuthenticatedClient(base_url=base_url, token="wrong")

denied = list_experiments.sync(client=anonymous)
assert isinstance(denied, ProblemDetail) and denied.status == 401, denied

config = ExperimentConfig(
    model="tiny-test-model", n_prompts=4, batch_size=2, max_output_tokens=4,
    precision=ExperimentConfigPrecision.FP32,
    prompts=SyntheticPrompts(input_len=8), name="generated",
)
submitted = submit_experiment.sync_detailed(client=client, body=config, idempotency_key="gen-1")
assert submitted.status_code == 202, submitted.content
assert submitted.headers["location"].endswith(submitted.parsed.id)
job = submitted.parsed
assert isinstance(job, Job)

deadline = time.monotonic() + 60
while job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
    assert time.monotonic() < deadline, job
    time.sleep(0.1)
    job = get_experiment.sync(job.id[:8], client=client)
assert job.status == JobStatus.SUCCEEDED, job

result = get_result.sync(job.id, client=client)
assert result.experiment_id == job.id
assert result.config.name == "generated"
assert result.output_tokens == 16

parquet = get_timeseries.sync(job.id, client=client)
data = parquet.payload.read()
assert data[:4] == b"PAR1" and data[-4:] == b"PAR1", data[:8]
csv = get_timeseries.sync(job.id, client=client, format_=GetTimeseriesFormat.CSV)
header = csv.payload.read().decode().splitlines()[0]
assert header.startswith('"t_s","device_uuid",') and '"power_w"' in header, header
print("ok", job.id, len(data))
"""


def test_a_generated_client_submits_waits_and_downloads(
    start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = start_server(token=TOKEN)
    import httpx

    document = tmp_path / "openapi.json"
    document.write_text(httpx.get(f"{server.base_url}/openapi.json", timeout=30).text)
    config = tmp_path / "generator.yaml"
    config.write_text(GENERATOR_CONFIG)
    # The generator formats its output with ruff (a dev dependency, beside this Python).
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}

    generated = subprocess.run(
        [
            sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
            "--config", str(config), "--meta", "none", "--output-path",
            str(tmp_path / "llem_openapi"),
        ],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip

    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout
    used = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), server.base_url, TOKEN],
        capture_output=True, text=True, timeout=120, check=False,
        env={**env, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path,
    )  # fmt: skip
    assert used.returncode == 0, used.stdout + used.stderr
    assert used.stdout.startswith("ok ")
    assert json.loads(document.read_text())["components"]["securitySchemes"]["bearer"]
