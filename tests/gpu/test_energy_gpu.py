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

from llem_client import (  # noqa: E402
    SCHEMA_VERSION,
    Client,
    EnergyResult,
    ExperimentResult,
    JobStatus,
)
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
    check_energy_figures(result)
    energy = result.energy
    assert energy is not None
    check_timeseries(result, parquet)
    check_environment(result)


def check_energy_figures(result: ExperimentResult) -> None:
    """The new fields: an uncertainty on every figure, counter prefill, per-request energy."""
    energy = result.energy
    assert energy is not None, result.warnings
    assert energy.source == "nvml_energy_counter"
    assert energy.window_s > 1.0
    assert energy.counter_vs_integral_rel_diff is not None
    assert abs(energy.counter_vs_integral_rel_diff) < 0.05, energy.devices

    # Every figure an Estimate whose parts add in quadrature; the headline's budget names them.
    raw = energy.energy_j
    assert raw is not None, result.warnings
    assert raw.value > 0
    assert raw.total == pytest.approx((raw.random**2 + raw.systematic**2) ** 0.5)
    assert raw.systematic > 0  # the sensor's accuracy, from the table
    assert raw.total < 0.2 * raw.value
    (device,) = energy.devices
    assert device.sensor.gain_rel > 0
    assert energy.uncertainty is not None
    assert {t.name for t in energy.uncertainty.terms} >= {"counter_quantisation", "sensor_gain"}
    assert sum(t.share for t in energy.uncertainty.terms) == pytest.approx(1.0, abs=1e-6)

    # A settled baseline, with what the reuse rule needs.
    (baseline,) = energy.baselines
    assert baseline.power_w is not None
    assert energy.mean_power_w is not None
    assert 0 < baseline.power_w.value < energy.mean_power_w
    assert baseline.temperature_c is not None
    assert baseline.power_limit_w is not None
    assert baseline.driver_version == result.environment.driver_version
    adjusted = energy.adjusted_energy_j
    assert adjusted is not None
    assert 0 < adjusted.value < raw.value
    assert energy.adjusted_energy_per_output_token_j is not None

    # Prefill measured by the counter over passes after the window; decode the difference.
    assert energy.phase_split == "prefill_passes"
    passes = energy.prefill_passes
    assert passes is not None, result.warnings
    assert passes.passes >= 1
    assert passes.duration_s >= 5 * 0.1  # many counter periods
    assert passes.prefill_time_per_pass_s == pytest.approx(
        passes.window_prefill_time_per_repeat_s, rel=0.5
    )
    phases = {p.phase: p for p in energy.phases}
    assert {"load", "warmup", "prefill", "decode", "between_batches"} <= set(phases)
    window = [phases[p].energy_j for p in ("prefill", "decode", "between_batches")]
    assert all(e is not None for e in window), result.warnings
    assert sum(e.value for e in window if e is not None) == pytest.approx(raw.value, rel=1e-6)

    # Per-request energy adds up to the window, raw and adjusted.
    requests = energy.requests
    assert requests is not None, result.warnings
    assert len(requests.energy_j) == result.n_requests
    assert sum(e.value for e in requests.energy_j) == pytest.approx(raw.value, rel=1e-6)
    assert requests.adjusted_energy_j is not None
    assert sum(e.value for e in requests.adjusted_energy_j) == pytest.approx(
        adjusted.value, rel=1e-6
    )
    pct = requests.energy_per_output_token_j
    assert pct.p50.value <= pct.p90.value <= pct.p99.value

    # Each repeat has its energy with an uncertainty.
    assert all(r.energy_j is not None for r in result.repeats.per_repeat)


def check_timeseries(result: ExperimentResult, parquet: bytes) -> None:
    import pyarrow.parquet as pq

    energy = result.energy
    assert energy is not None
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


def check_environment(result: ExperimentResult) -> None:
    energy = result.energy
    assert energy is not None
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


def test_cuda_streams_each_step_in_its_own_step(tmp_path: Path) -> None:
    # The backend's per-step timestamps (and the per-request energy split built on them)
    # assume transformers hands each step's tokens to the streamer before the next forward.
    from tests.integration.test_pytorch_backend import forward_passes_at_each_streamed_step

    build_gpt2(tmp_path / "tiny")
    assert forward_passes_at_each_streamed_step(tmp_path / "tiny", "cuda") == [1, 2, 3, 4, 5, 6]
