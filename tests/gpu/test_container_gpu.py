"""The GPU tier's container half: the image on a GPU host, ``--gpus all``, the GPU experiment
through the container's API, and the full result validation.

Runs where a Docker engine has the NVIDIA runtime (NVIDIA Container Toolkit); skips with the
reason elsewhere. Select it with ``-m gpu``. Knobs:

- ``LLEM_TEST_IMAGE``: an image built beforehand (else the default CUDA build is made here).
- ``LLEM_TEST_BUILD_ARGS``: extra build args, space-separated ``KEY=VALUE``
  (e.g. ``TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128``).
- ``LLEM_BUILD_CA``: a CA bundle passed to the build as the BuildKit secret ``ca``.
- ``LLEM_GPU_ARTIFACTS``: directory that keeps the result, the timeseries and the container log
  (CI uploads it).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from llem_client import Client, ExperimentConfig

from tests.container import harness

pytestmark = [pytest.mark.gpu, pytest.mark.docker, pytest.mark.slow]

CONFIG = ExperimentConfig.model_validate(
    {
        "name": "gpu-tier-container",
        "model": "gpt2-small-random",
        "precision": "fp16",
        "prompts": {"source": "synthetic", "input_len": 64, "seed": 0},
        "n_prompts": 64,
        "batch_size": 8,
        "max_output_tokens": 128,
        "fixed_output_length": True,
        "warmup": {"mode": "fixed", "batches": 2},
        "baseline": {"enabled": False},
        "repeats": 2,
        "pytorch": {"device": "cuda"},
    }
)
"""Long enough (several seconds of decoding) that the energy counter, which updates about
every 100 ms, gives a well-resolved reading."""


@dataclass(frozen=True)
class GpuService:
    url: str
    token: str
    image: str
    build_id: str
    container: str


@pytest.fixture(scope="module")
def nvidia_docker() -> str:
    """A docker CLI whose engine can give containers GPUs; skips with the reason otherwise."""
    try:
        cli = harness.docker_cli()
        info = harness.engine_info(cli)
    except harness.DockerUnavailable as error:
        pytest.skip(f"{error}: the container half of the GPU tier needs Docker with GPUs")
    runtimes = info.get("Runtimes")
    has_runtime = isinstance(runtimes, dict) and "nvidia" in runtimes
    has_hook = any(
        shutil.which(tool) for tool in ("nvidia-container-runtime-hook", "nvidia-container-cli")
    )
    if not (has_runtime or has_hook):
        pytest.skip(
            "the Docker engine has no NVIDIA runtime: install the NVIDIA Container Toolkit "
            "(nvidia-ctk runtime configure --runtime=docker)"
        )
    return cli


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("LLEM_GPU_ARTIFACTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("gpu-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def gpu_image(nvidia_docker: str) -> Iterator[tuple[str, str]]:
    """(tag, build id) of the default (CUDA) image: prebuilt, or built here."""
    prebuilt = os.environ.get("LLEM_TEST_IMAGE")
    if prebuilt:
        info = harness.run([nvidia_docker, "run", "--rm", prebuilt, "cat", "/etc/llem/image.json"])
        yield prebuilt, json.loads(info.stdout)["build_id"]
        return
    extra = dict(
        pair.split("=", 1) for pair in os.environ.get("LLEM_TEST_BUILD_ARGS", "").split() if pair
    )
    ca = os.environ.get("LLEM_BUILD_CA")
    tag = f"llem:gpu-test-{uuid.uuid4().hex[:8]}"
    build = harness.build_image(
        nvidia_docker,
        tag,
        build_args=extra,
        secrets={"ca": ca} if ca else None,
        step="image build (CUDA)",
    )
    yield tag, build.build_id
    harness.run([nvidia_docker, "rmi", tag], check=False)


@pytest.fixture(scope="module")
def gpu_service(
    nvidia_docker: str,
    gpu_image: tuple[str, str],
    artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GpuService]:
    from tests.integration.conftest import build_gpt2

    models = tmp_path_factory.mktemp("gpu-models")
    build_gpt2(models / "gpt2-small-random", n_embd=256, n_layer=4)
    harness.readable_by_all(models)
    tag, build_id = gpu_image
    token = uuid.uuid4().hex
    port = harness.free_port()
    name = f"llem-gpu-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    harness.run(
        [
            nvidia_docker,
            "run",
            "--detach",
            "--name",
            name,
            "--gpus",
            "all",
            "--shm-size",
            "2g",
            "--env",
            f"LLEM_API_TOKEN={token}",
            "--env",
            f"LLEM_IMAGE={tag}",
            "--volume",
            f"{models}:/models:ro",
            "--publish",
            f"127.0.0.1:{port}:8000",
            tag,
        ]
    )
    try:
        harness.wait_healthy(nvidia_docker, name)
        harness.timed("docker run --gpus all to healthy", time.monotonic() - started)
        yield GpuService(f"http://127.0.0.1:{port}", token, tag, build_id, name)
    finally:
        (artifacts / "container.log").write_text(harness.container_logs(nvidia_docker, name))
        harness.run([nvidia_docker, "rm", "--force", "--volumes", name], check=False)


def test_the_gpu_experiment_through_the_container(gpu_service: GpuService, artifacts: Path) -> None:
    with Client(gpu_service.url, token=gpu_service.token) as client:
        info = client.info()
        job = client.submit(CONFIG)
        job = client.wait(job.id, timeout=900)
        assert job.status == "succeeded", job.error
        result = client.result(job.id)
    headers = {"Authorization": f"Bearer {gpu_service.token}"}
    base = f"{gpu_service.url}/v1/experiments/{job.id}/timeseries"
    parquet = httpx.get(base, headers=headers, timeout=60)
    as_csv = httpx.get(base, params={"format": "csv"}, headers=headers, timeout=60)
    (artifacts / "result.json").write_text(result.model_dump_json(indent=2))
    (artifacts / "timeseries.parquet").write_bytes(parquet.content)
    (artifacts / "timeseries.csv").write_text(as_csv.text)
    (artifacts / "info.json").write_text(info.model_dump_json(indent=2))

    assert info.energy_meter_available, info
    assert result.schema_version == "1"
    assert result.energy_meter_available
    energy = result.energy
    assert energy is not None, result.warnings
    assert energy.source == "nvml_energy_counter"
    assert energy.energy_j is not None
    assert energy.energy_j.value > 0
    assert energy.energy_per_output_token_j is not None
    assert energy.energy_per_output_token_j.value > 0
    assert energy.devices
    assert all(d.energy_j is not None and d.energy_j.value > 0 for d in energy.devices)
    assert result.timeseries == f"/v1/experiments/{job.id}/timeseries"
    assert [g.uuid for g in result.environment.gpus] == [d.device_uuid for d in energy.devices]
    assert result.avg_tokens_per_second > 0
    assert result.output_tokens == 2 * 64 * 128
    environment = result.environment
    assert environment.devices, "the environment names the GPUs measured"
    assert environment.driver_version
    assert (environment.container_image or "").startswith(gpu_service.image)
    assert f"build {gpu_service.build_id}" in (environment.container_image or "")
    assert environment.backend_versions["torch"]
    assert parquet.status_code == 200
    assert parquet.content[:4] == b"PAR1"
    assert as_csv.status_code == 200
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert rows, "the power timeseries has samples"
