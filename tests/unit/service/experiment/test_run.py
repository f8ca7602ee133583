"""`run_experiment` in-process with the real NVML meter over a scripted GPU, in real time."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from llem_client import JobProgress
from llem_service.backends.base import BackendError
from llem_service.energy import MeterError, NullEnergyMeter
from llem_service.energy.base import Baseline, MeterProbe, MeterRecord, MeterSession
from llem_service.energy.meter import NvmlEnergyMeter
from llem_service.experiment.run import ExperimentOutput, run_experiment

from tests.conftest import make_config
from tests.fake_nvml import FakeGpu, FakeNvml
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


def test_progress_goes_through_every_phase_in_order() -> None:
    seen: list[JobProgress] = []

    run_experiment(
        "e1",
        make_config(n_prompts=4, batch_size=2),
        FakeInferenceBackend(),
        fake_meter(),
        seen.append,
    )

    assert [p.phase for p in seen] == [
        "loading", "warmup", "measuring", "measuring", "measuring", "prefill"
    ]  # fmt: skip
    assert [(p.completed, p.total) for p in seen[2:5]] == [(0, 4), (2, 4), (4, 4)]


def test_constant_power_gives_power_times_window_within_the_stated_uncertainty() -> None:
    result = run(meter=fake_meter(250.0), n_prompts=4, batch_size=2).result

    energy = result.energy
    assert energy is not None
    assert energy.source == "nvml_energy_counter"
    assert energy.window_s >= 0.2
    assert energy.energy_j is not None
    assert energy.energy_j.value == pytest.approx(
        250.0 * energy.window_s, abs=energy.energy_j.total
    )
    assert energy.energy_j.total == pytest.approx(
        (energy.energy_j.random**2 + energy.energy_j.systematic**2) ** 0.5
    )
    assert energy.energy_j.systematic > 0  # the sensor's stated accuracy is always counted
    assert energy.mean_power_w == pytest.approx(250.0, rel=0.05)
    assert energy.energy_per_output_token_j is not None
    assert energy.energy_per_output_token_j.value == pytest.approx(
        energy.energy_j.value / result.output_tokens
    )
    assert [d.device_uuid for d in energy.devices] == [FAKE_DEVICE.uuid]
    assert energy.devices[0].power_field == "instant"
    assert energy.devices[0].sensor.generation == "Fake GPU (operator)"
    assert energy.counter_vs_integral_rel_diff is not None
    assert abs(energy.counter_vs_integral_rel_diff) < 0.05


def test_prefill_is_measured_by_the_counter_over_passes_after_the_window() -> None:
    backend = FakeInferenceBackend(sleep_s=0.4)

    energy = run(backend=backend, meter=fake_meter(300.0), n_prompts=4, batch_size=1).result.energy

    assert energy is not None
    assert energy.phase_split == "prefill_passes"
    passes = energy.prefill_passes
    assert passes is not None
    assert passes.passes == backend.prefill_calls >= 1
    # 50 counter periods of 5 ms: the passes' counter window spans at least 0.25 s
    assert passes.duration_s >= 0.25
    assert passes.energy_j.value == pytest.approx(300.0 * passes.duration_s, rel=0.05)
    assert passes.prefill_time_per_pass_s == pytest.approx(0.1, rel=0.5)
    phases = {p.phase: p for p in energy.phases}
    assert list(phases) == ["load", "warmup", "prefill", "decode", "between_batches"]
    assert (phases["prefill"].method, phases["decode"].method) == (
        "prefill_passes",
        "window_minus_prefill",
    )
    measured = [phases[name].energy_j for name in ("prefill", "decode", "between_batches")]
    assert all(e is not None for e in measured)
    assert energy.energy_j is not None
    # the window's three parts add up to it exactly; the passes are not part of it
    assert sum(e.value for e in measured if e is not None) == pytest.approx(energy.energy_j.value)
    assert phases["prefill"].energy_j is not None
    assert phases["prefill"].energy_j.value == pytest.approx(
        passes.energy_per_pass_j.value, rel=1e-9
    )
    assert phases["prefill"].energy_j.value == pytest.approx(
        300.0 * phases["prefill"].duration_s, abs=phases["prefill"].energy_j.total
    )


def test_without_prefill_passes_the_window_is_shared_by_the_timeline() -> None:
    backend = FakeInferenceBackend(sleep_s=0.4)

    energy = run(
        backend=backend, meter=fake_meter(300.0), n_prompts=4, batch_size=1,
        energy={"phase_split": "none"},
    ).result.energy  # fmt: skip

    assert energy is not None
    assert backend.prefill_calls == 0
    assert energy.phase_split == "timeline_share"
    assert energy.prefill_passes is None
    assert {p.method for p in energy.phases if p.phase in ("prefill", "decode")} == {
        "timeline_share"
    }


def test_per_request_energy_adds_up_to_the_window() -> None:
    result = run(
        backend=FakeInferenceBackend(sleep_s=0.4), meter=fake_meter(300.0),
        n_prompts=4, batch_size=2, baseline={"enabled": True, "duration_s": 0.2, "settle_max_s": 0},
    ).result  # fmt: skip

    energy = result.energy
    assert energy is not None
    assert energy.requests is not None
    assert energy.energy_j is not None
    assert len(energy.requests.energy_j) == result.n_requests == 4
    assert sum(e.value for e in energy.requests.energy_j) == pytest.approx(
        energy.energy_j.value, rel=1e-9
    )
    adjusted = energy.requests.adjusted_energy_j
    assert adjusted is not None
    assert energy.adjusted_energy_j is not None
    assert sum(e.value for e in adjusted) == pytest.approx(energy.adjusted_energy_j.value)
    # the GPU draws its idle power throughout: each request's adjusted energy is 0 within
    # its uncertainty
    assert all(abs(e.value) <= e.total for e in adjusted)


def test_repeats_give_per_repeat_energy_and_a_confidence_interval() -> None:
    result = run(repeats=3, n_prompts=2, batch_size=1).result

    summary = result.repeats
    assert [r.index for r in summary.per_repeat] == [0, 1, 2]
    assert summary.stop_reason == "fixed"
    energy = result.energy
    assert energy is not None
    assert energy.energy_j is not None
    repeats = [r.energy_j for r in summary.per_repeat]
    assert all(r is not None for r in repeats)
    assert sum(r.value for r in repeats if r is not None) == pytest.approx(energy.energy_j.value)
    stats = summary.energy_per_output_token_j
    assert stats is not None
    assert stats.n == 3
    assert stats.ci95_low is not None
    assert stats.ci95_high is not None
    assert stats.ci95_low <= stats.mean <= stats.ci95_high
    assert summary.tokens_per_second.n == 3


def test_repeats_stop_when_the_interval_is_narrow_enough() -> None:
    steady = run(
        backend=FakeInferenceBackend(sleep_s=0.2),
        repeats={"min": 2, "max": 6, "target_ci_rel": 0.5},
    ).result.repeats
    capped = run(
        backend=FakeInferenceBackend(sleep_s=0.2),
        repeats={"min": 2, "max": 3, "target_ci_rel": 1e-9},
    ).result

    assert steady.stop_reason == "target_reached"
    assert len(steady.per_repeat) == 2
    assert steady.stop_statistic == "energy_per_output_token_j"
    assert steady.achieved_ci_rel is not None
    assert steady.achieved_ci_rel < 0.5
    assert capped.repeats.stop_reason == "max_reached"
    assert len(capped.repeats.per_repeat) == 3
    assert "repeats_target_not_reached" in [w.code for w in capped.warnings]


class RecordingSession:
    """A real session that notes every mark and snapshot, in order."""

    def __init__(self, inner: MeterSession, calls: list[str]) -> None:
        self._inner = inner
        self.calls = calls

    def mark(self, label: str) -> None:
        self.calls.append(label)
        self._inner.mark(label)

    def snapshot(self) -> MeterRecord:
        self.calls.append("snapshot")
        return self._inner.snapshot()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RecordingMeter:
    """The fake NVML meter whose sessions are `RecordingSession`s."""

    name = "nvml"

    def __init__(self) -> None:
        self.inner = fake_meter()
        self.calls: list[str] = []

    def probe(self) -> MeterProbe:
        return self.inner.probe()

    def open(self, *args: Any, **kwargs: Any) -> MeterSession:
        return RecordingSession(self.inner.open(*args, **kwargs), self.calls)


@pytest.mark.parametrize("repeats", [3, {"min": 3, "max": 3, "target_ci_rel": 1e-9}])
def test_nothing_but_the_marks_runs_between_the_repeats(repeats: object) -> None:
    meter = RecordingMeter()

    result = run(meter=meter, repeats=repeats, n_prompts=2, batch_size=1).result

    calls = meter.calls
    window = calls[calls.index("warmup_end") : calls.index("repeat_2_end") + 1]
    assert window == ["warmup_end", "repeat_0_end", "repeat_1_end", "repeat_2_end"]
    assert len(result.repeats.per_repeat) == 3


def test_without_a_meter_repeats_stop_on_tokens_per_second() -> None:
    summary = run(
        backend=FakeInferenceBackend(gpu=False),
        repeats={"min": 2, "max": 4, "target_ci_rel": 0.5},
    ).result.repeats

    assert summary.stop_statistic == "tokens_per_second"
    assert summary.stop_reason == "target_reached"  # the fake's tokens/s never varies


def test_a_measured_baseline_is_recorded_and_subtracted() -> None:
    result = run(
        meter=fake_meter(200.0),
        baseline={"enabled": True, "duration_s": 0.3, "settle_max_s": 0},
    ).result

    energy = result.energy
    assert energy is not None
    (baseline,) = energy.baselines
    assert baseline.reused is False
    assert baseline.settled
    assert baseline.duration_s == pytest.approx(0.3, abs=0.05)
    assert baseline.power_w is not None
    assert baseline.power_w.value == pytest.approx(200.0, rel=0.05)
    assert baseline.temperature_c == 40
    assert baseline.power_limit_w == 700.0
    assert baseline.driver_version == "550.54.15"
    assert "no work queued" in baseline.method
    assert energy.baseline_power_w == baseline.power_w
    # the GPU draws its idle power throughout, so nothing is left above it
    assert energy.adjusted_energy_j is not None
    assert abs(energy.adjusted_energy_j.value) <= energy.adjusted_energy_j.total
    assert energy.adjusted_energy_j.total < 0.1 * energy.energy_j.value if energy.energy_j else 0


def test_a_fresh_cached_baseline_is_reused_and_a_stale_one_is_not() -> None:
    now = time.time()
    kept = {
        "power_w": 42.0, "random_std_w": 0.5, "duration_s": 10.0, "method": "earlier",
        "temperature_c": 40.0, "power_limit_w": 700.0, "driver_version": "550.54.15",
    }  # fmt: skip
    fresh = Baseline(FAKE_DEVICE.uuid, measured_at=now - 60, **kept)  # type: ignore[arg-type]
    stale = Baseline(FAKE_DEVICE.uuid, measured_at=now - 7200, **kept)  # type: ignore[arg-type]
    config = make_config(
        baseline={"enabled": True, "duration_s": 0.2, "max_age_s": 3600, "settle_max_s": 0}
    )

    reused = run_experiment(
        "e1", config, FakeInferenceBackend(), fake_meter(), lambda _: None, [fresh]
    )
    remeasured = run_experiment(
        "e2", config, FakeInferenceBackend(), fake_meter(), lambda _: None, [stale]
    )

    assert reused.result.energy is not None
    assert remeasured.result.energy is not None
    (first,) = reused.result.energy.baselines
    assert first.power_w is not None
    assert (first.reused, first.power_w.value) == (True, 42.0)
    assert first.age_s == pytest.approx(60, abs=5)
    (second,) = remeasured.result.energy.baselines
    assert second.reused is False
    assert second.power_w is not None
    assert second.power_w.value == pytest.approx(300.0, rel=0.05)
    assert "not reused: it is 720" in second.method  # 7200 s, give or take the run
    assert "s old (baseline.max_age_s is 3600)" in second.method


def test_idle_is_measured_again_after_the_window_when_asked() -> None:
    result = run(
        meter=fake_meter(200.0),
        baseline={
            "enabled": True,
            "duration_s": 0.2,
            "when": "before_and_after",
            "settle_max_s": 0,
        },
    ).result

    assert result.energy is not None
    (baseline,) = result.energy.baselines
    assert baseline.power_w is not None
    assert baseline.after_power_w is not None
    assert baseline.after_power_w.value == pytest.approx(200.0, rel=0.05)
    # The GPU's idle power did not move: the drift between the two windows stays within
    # their stated random parts (a 0.2 s window on a 5 ms counter reads +/- several W).
    random = math.hypot(baseline.power_w.random, baseline.after_power_w.random)
    assert baseline.drift_w == pytest.approx(0.0, abs=random)


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
    backend = FakeInferenceBackend(gpu=False)

    result = run(backend=backend).result

    assert backend.prefill_calls == 0  # no meter: no prefill passes
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


def test_a_device_the_meter_does_not_know_runs_unmetered_and_says_why() -> None:
    # e.g. a MIG instance: NVML meters only whole GPUs, and the session says so itself
    other_gpu = NvmlEnergyMeter(library=FakeNvml(gpus=(FakeGpu(uuid="GPU-somewhere-else"),)))

    result = run(meter=other_gpu).result

    assert result.energy is None
    (warning,) = result.warnings
    assert warning.code == "energy_unavailable"
    assert "NVML does not know the device the model runs on" in warning.message
