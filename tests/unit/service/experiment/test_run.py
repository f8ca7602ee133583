"""`run_experiment` in-process with the real NVML meter over a scripted GPU, in real time."""

from __future__ import annotations

import time

import pytest
from llem_client import ExperimentResult, JobProgress
from llem_service.backends.base import BackendError
from llem_service.energy import MeterError, NullEnergyMeter
from llem_service.energy.base import Baseline
from llem_service.experiment.run import ExperimentOutput, run_experiment

from tests.conftest import make_config
from tests.fakes import FAKE_DEVICE, FakeInferenceBackend, fake_meter


def run(
    backend: FakeInferenceBackend | None = None, meter: object = None, **config: object
) -> ExperimentOutput:
    return run_experiment(
        "e1",
        make_config(**config),
        backend or FakeInferenceBackend(sleep_s=0.2),
        meter or fake_meter(),  # type: ignore[arg-type]
        lambda _: None,
    )


def energy_of(result: ExperimentResult) -> float:
    assert result.energy is not None
    return result.energy.energy_j


def test_progress_goes_through_every_phase_in_order() -> None:
    seen: list[JobProgress] = []

    run_experiment(
        "e1",
        make_config(n_prompts=4, batch_size=2),
        FakeInferenceBackend(),
        fake_meter(),
        seen.append,
    )

    assert [p.phase for p in seen] == ["loading", "warmup", "measuring", "measuring", "measuring"]
    assert [(p.completed, p.total) for p in seen[2:]] == [(0, 4), (2, 4), (4, 4)]


def test_constant_power_gives_power_times_window_within_the_stated_uncertainty() -> None:
    result = run(meter=fake_meter(250.0), n_prompts=4, batch_size=2).result

    energy = result.energy
    assert energy is not None
    assert energy.source == "nvml_energy_counter"
    assert energy.window_s >= 0.2
    assert energy.energy_j == pytest.approx(
        250.0 * energy.window_s, abs=energy.energy_uncertainty_j
    )
    assert energy.mean_power_w == pytest.approx(250.0, rel=0.05)
    assert energy.energy_per_output_token_j == energy.energy_j / result.output_tokens
    assert [d.device_uuid for d in energy.devices] == [FAKE_DEVICE.uuid]
    assert energy.devices[0].power_field == "instant"
    assert energy.counter_vs_integral_rel_diff is not None
    assert abs(energy.counter_vs_integral_rel_diff) < 0.05


def test_phases_cover_load_warmup_and_the_measured_window_exactly() -> None:
    energy = run(n_prompts=4, batch_size=1).result.energy

    assert energy is not None
    phases = {p.phase: p for p in energy.phases}
    assert list(phases) == ["load", "warmup", "prefill", "decode", "between_batches"]
    measured = [phases[name] for name in ("prefill", "decode", "between_batches")]
    assert sum(p.energy_j for p in measured) == pytest.approx(energy.energy_j)
    assert sum(p.duration_s for p in measured) == pytest.approx(energy.window_s)
    assert phases["decode"].energy_j > phases["prefill"].energy_j  # 3/4 of each batch
    assert {p.method for p in measured} == {"timeline_share"}
    assert phases["load"].method == "counter"


def test_repeats_give_per_repeat_energy_and_a_confidence_interval() -> None:
    result = run(repeats=3, n_prompts=2, batch_size=1).result

    summary = result.repeats
    assert [r.index for r in summary.per_repeat] == [0, 1, 2]
    assert sum(r.energy_j or 0.0 for r in summary.per_repeat) == pytest.approx(energy_of(result))
    stats = summary.energy_per_output_token_j
    assert stats is not None
    assert stats.n == 3
    assert stats.ci95_low is not None
    assert stats.ci95_high is not None
    assert stats.ci95_low <= stats.mean <= stats.ci95_high
    assert summary.tokens_per_second.n == 3


def test_a_measured_baseline_is_recorded_and_subtracted() -> None:
    result = run(
        meter=fake_meter(200.0),
        baseline={"enabled": True, "duration_s": 0.3},
    ).result

    energy = result.energy
    assert energy is not None
    (baseline,) = energy.baselines
    assert baseline.reused is False
    assert baseline.duration_s == pytest.approx(0.3, abs=0.05)
    assert baseline.power_w == pytest.approx(200.0, rel=0.05)
    assert "before the model loaded" in baseline.method
    assert energy.baseline_power_w == baseline.power_w
    assert energy.adjusted_energy_j is not None
    # the GPU draws its idle power throughout, so nothing is left above it
    assert energy.adjusted_energy_j == pytest.approx(0.0, abs=energy.adjusted_energy_uncertainty_j)
    assert energy.per_request_basis == "adjusted"


def test_a_fresh_cached_baseline_is_reused_and_a_stale_one_is_not() -> None:
    now = time.time()
    fresh = Baseline(FAKE_DEVICE.uuid, 42.0, 0.5, 10.0, now - 60, "earlier")
    stale = Baseline(FAKE_DEVICE.uuid, 42.0, 0.5, 10.0, now - 7200, "earlier")
    config = make_config(baseline={"enabled": True, "duration_s": 0.2, "max_age_s": 3600})

    reused = run_experiment(
        "e1", config, FakeInferenceBackend(), fake_meter(), lambda _: None, [fresh]
    )
    remeasured = run_experiment(
        "e2", config, FakeInferenceBackend(), fake_meter(), lambda _: None, [stale]
    )

    assert reused.result.energy is not None
    assert remeasured.result.energy is not None
    (first,) = reused.result.energy.baselines
    assert (first.reused, first.power_w) == (True, 42.0)
    assert first.age_s == pytest.approx(60, abs=5)
    (second,) = remeasured.result.energy.baselines
    assert second.reused is False
    assert second.power_w == pytest.approx(300.0, rel=0.05)


def test_the_timeline_has_a_row_per_sample_and_labelled_phases() -> None:
    # Prefill spans of 0.1 s: several 10 ms rounds land in each even when the sampler's
    # process is kept waiting by a busy machine.
    backend = FakeInferenceBackend(sleep_s=0.8)
    output = run(backend, n_prompts=2, batch_size=1, energy={"sample_interval_ms": 10})

    assert output.timeseries is not None
    assert output.result.energy is not None
    rows = len(output.timeseries["t_s"])
    assert rows == output.result.energy.sampler.n_samples
    assert rows >= 20  # >= 0.2 s at 10 ms
    assert {"prefill", "decode"} <= set(output.timeseries["phase"])
    assert output.timeseries["t_s"] == sorted(output.timeseries["t_s"])  # type: ignore[type-var]


def test_a_gpu_lost_mid_run_fails_with_a_clear_error_without_hanging() -> None:
    backend = FakeInferenceBackend(sleep_s=1.0)
    started = time.monotonic()

    with pytest.raises(MeterError, match="GPU is lost"):
        run(backend=backend, meter=fake_meter(lost_at_s=0.5), n_prompts=4, batch_size=1)

    assert time.monotonic() - started < 10
    assert backend._closed


def test_on_the_cpu_energy_is_null_with_a_warning() -> None:
    result = run(backend=FakeInferenceBackend(gpu=False)).result

    assert result.energy is None
    assert result.energy_meter_available is False
    assert [w.code for w in result.warnings] == ["energy_unavailable"]
    assert "no GPU" in result.warnings[0].message


def test_without_a_meter_energy_is_null_and_says_why() -> None:
    result = run(meter=NullEnergyMeter("nvidia-ml-py is not installed")).result

    assert result.energy is None
    assert "nvidia-ml-py is not installed" in result.warnings[0].message
    assert result.environment.gpus == []


def test_backend_is_closed_even_when_it_fails() -> None:
    backend = FakeInferenceBackend(fail_in="run")

    with pytest.raises(BackendError):
        run(backend=backend)

    assert backend._closed


def test_result_carries_the_hash_and_the_environment() -> None:
    result = run().result

    assert result.experiment_id == "e1"
    assert result.environment.energy_meter == "nvml"
    assert result.environment.devices[0].name == "Fake GPU"
    assert result.environment.driver_version == "550.54.15"
    assert result.environment.cuda_driver_version == "12.4"
    (gpu,) = result.environment.gpus
    assert (gpu.uuid, gpu.power_limit_w, gpu.persistence_mode) == (FAKE_DEVICE.uuid, 700.0, True)
    assert result.started_at <= result.finished_at
    assert result.total_flops == (32 + 16) * 1000
