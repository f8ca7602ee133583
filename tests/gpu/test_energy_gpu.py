"""GPU tier, in-process half: the real service, backend and NVML meter on a CUDA host.

A GPT-2-small-sized model with random weights is built locally (no hub). Runs only with
``-m gpu`` on a machine with an NVIDIA GPU, its driver, torch for CUDA and nvidia-ml-py:

    scripts/test -m gpu tests/gpu
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the GPU tier needs torch")
pytest.importorskip("pynvml", reason="the GPU tier needs nvidia-ml-py")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host"),
]

from llem_client import SCHEMA_VERSION, Client, EnergyResult, JobStatus  # noqa: E402
from llem_service.backends.pytorch import PytorchBackend  # noqa: E402
from llem_service.energy.meter import NvmlEnergyMeter  # noqa: E402

from tests.conftest import LiveServer  # noqa: E402
from tests.integration.conftest import build_gpt2  # noqa: E402

GPT2_SMALL = {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}


@pytest.fixture(scope="module")
def gpu_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu-models")
    build_gpt2(root / "gpt2-small-random", **GPT2_SMALL)
    return root


def test_a_real_experiment_is_metered_by_the_energy_counter(
    start_server: Callable[..., LiveServer], gpu_models: Path
) -> None:
    import pyarrow.parquet as pq

    server = start_server(
        backend=PytorchBackend(model_roots=(str(gpu_models),)), meter=NvmlEnergyMeter()
    )
    config = {
        "model": "gpt2-small-random",
        "precision": "fp16",
        "prompts": {"source": "synthetic", "input_len": 128},
        "n_prompts": 64,
        "batch_size": 8,
        "max_output_tokens": 256,
        "warmup": {"mode": "fixed", "batches": 2},
        "baseline": {"enabled": True, "duration_s": 3.0},
        "repeats": 2,
    }

    with Client(server.base_url, timeout=60) as client:
        job = client.wait(client.submit(config).id, timeout=1800)
        assert job.status is JobStatus.SUCCEEDED, job.error
        result = client.result(job.id)
        parquet = client.timeseries(job.id)

    assert result.schema_version == SCHEMA_VERSION
    assert result.avg_tokens_per_second > 0
    assert result.output_tokens == 2 * 64 * 256
    energy = result.energy
    assert energy is not None, result.warnings
    assert energy.source == "nvml_energy_counter"
    assert energy.energy_j > 0
    assert energy.window_s > 1.0
    assert energy.counter_vs_integral_rel_diff is not None
    assert abs(energy.counter_vs_integral_rel_diff) < 0.05, energy.devices
    assert energy.baselines
    assert 0 < energy.baselines[0].power_w < energy.mean_power_w
    assert energy.adjusted_energy_j is not None
    assert 0 < energy.adjusted_energy_j < energy.energy_j
    assert {p.phase for p in energy.phases} >= {"load", "warmup", "prefill", "decode"}

    table = pq.read_table(io.BytesIO(parquet))
    assert table.num_rows == energy.sampler.n_samples * len(energy.devices)
    times = table.column("t_s").to_pylist()
    expected = (max(times) - min(times)) / energy.sampler.interval_s
    assert energy.sampler.n_samples >= 0.8 * expected  # the sampler kept up the whole run
    assert energy.sampler.achieved_interval_p50_s is not None
    assert energy.sampler.achieved_interval_p50_s == pytest.approx(
        energy.sampler.interval_s, rel=0.2
    )
    assert_acquisition(energy)

    env = result.environment
    assert env.driver_version
    assert env.nvml_version
    assert env.cuda_driver_version
    assert env.backend_versions["torch"]
    assert env.backend_versions.get("cuda")
    (gpu,) = env.gpus
    assert gpu.uuid == energy.devices[0].device_uuid
    assert gpu.power_limit_w is not None
    assert gpu.power_limit_w > 0
    assert gpu.persistence_mode is not None
    assert result.peak_memory_allocated_bytes is not None
    assert result.peak_memory_allocated_bytes > 0


def assert_acquisition(energy: EnergyResult) -> None:
    """How the readings were taken: the sampler's process, every reading accounted for."""
    acquisition = energy.acquisition
    assert acquisition is not None
    assert acquisition.sampler.mode == "process"
    (power,) = acquisition.power
    assert power.kept > 0
    assert power.readings == (
        power.kept + power.repeats_dropped + power.nonpositive_dropped + power.failed
    )
    (throttle,) = acquisition.throttling
    assert throttle.power_capped.source is not None
    assert any(p.own for p in acquisition.processes)  # this experiment, told apart by its PID
    assert energy.host is not None  # available or not, with the reason
