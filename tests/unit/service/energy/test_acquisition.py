"""What the result says about how its readings were taken: processes seen through the run,
detection limited in a container, throttling by cause, changed fields, a slow sampler."""

from __future__ import annotations

import time
from pathlib import Path

import pynvml
import pytest
from llem_client import EnergyConfig, EnergyResult
from llem_service.energy.figures import Span
from llem_service.energy.meter import NvmlEnergyMeter

from tests.energy_sections import energy_section
from tests.fake_nvml import FakeGpu, FakeNvml, PowerProfile, ScriptedSession

BUSY = PowerProfile(((100.0, 300.0),))


def measure(
    gpu: FakeGpu, *, measure_s: float = 5.0, own_pid_on_gpu: bool = True, interval_ms: int = 10
) -> tuple[EnergyResult, dict[str, str]]:
    """A session over one scripted GPU: load and warm-up marks, then ``measure_s`` measured."""
    scripted = ScriptedSession([gpu], interval_ms=interval_ms)
    scripted.lib.own_pid_on_gpu = own_pid_on_gpu
    for label in ("load_start", "load_end", "warmup_end"):
        scripted.mark(label)
    start = scripted.clock()
    scripted.run_for(measure_s)
    span = Span(start, start + 0.1, scripted.clock())
    scripted.mark("repeat_0_end")
    return energy_section(scripted.close(), [gpu.uuid], span)


def test_a_process_that_comes_and_goes_between_the_marks_is_seen_with_its_memory() -> None:
    # Fake time: the session opens after ~0.5 s of probing; the window runs to ~5.5 s.
    visitor = (4242, 2.0, 3.6, 3 * 2**30)
    energy, found = measure(FakeGpu(profile=BUSY, processes=(visitor,)))

    assert energy.acquisition is not None
    seen = {p.pid: p for p in energy.acquisition.processes}
    assert seen[4242].own is False
    assert seen[4242].during_measured_window
    assert seen[4242].max_used_memory_bytes == 3 * 2**30
    assert 1 <= seen[4242].polls <= 2  # polled about once a second
    assert (seen[4242].last_seen_at - seen[4242].first_seen_at).total_seconds() <= 1.6
    assert any(p.own for p in seen.values())  # this experiment, told apart by its PID
    (detection,) = energy.acquisition.process_detection
    assert detection.detection == "full"
    assert "PID 4242" in found["foreign_process"]
    assert "3072 MiB" in found["foreign_process"]
    assert "process_detection_limited" not in found


def test_in_a_pid_namespace_detection_is_limited_and_says_why() -> None:
    energy, found = measure(FakeGpu(profile=BUSY, foreign_pids=(777,)), own_pid_on_gpu=False)

    assert energy.acquisition is not None
    (detection,) = energy.acquisition.process_detection
    assert detection.detection == "limited"
    assert "PID namespace" in detection.reason
    assert all(p.own is None for p in energy.acquisition.processes)
    assert "pid: host" in found["process_detection_limited"]
    assert "foreign_process" not in found  # one process at a time: presumably this one


def test_in_a_pid_namespace_two_processes_at_once_still_mean_another_one() -> None:
    _, found = measure(
        FakeGpu(profile=BUSY, foreign_pids=(777,), processes=((888, 1.0, 9.0, 2**29),)),
        own_pid_on_gpu=False,
    )

    assert "More than one process" in found["foreign_process"]
    assert "777, 888" in found["foreign_process"]


def test_a_gpu_that_cannot_list_processes_says_another_would_go_unseen() -> None:
    energy, found = measure(FakeGpu(profile=BUSY, unsupported=frozenset({"processes"})))

    assert energy.acquisition is not None
    (detection,) = energy.acquisition.process_detection
    assert detection.detection == "unavailable"
    assert "would go unseen" in found["process_detection_limited"]


@pytest.mark.parametrize(
    ("gpu", "power_capped", "thermal", "warns"),
    [
        # At full load a GPU sits at its power limit: a fact, not a fault.
        (
            FakeGpu(profile=BUSY, violations=((pynvml.NVML_PERF_POLICY_POWER, 0.6),)),
            0.6,
            0.0,
            False,
        ),
        (
            FakeGpu(profile=BUSY, violations=((pynvml.NVML_PERF_POLICY_THERMAL, 0.25),)),
            0.0,
            0.25,
            True,
        ),
    ],
)
def test_throttling_is_split_by_cause_and_only_heat_warns(
    gpu: FakeGpu, power_capped: float, thermal: float, warns: bool
) -> None:
    energy, found = measure(gpu)

    assert energy.acquisition is not None
    (throttle,) = energy.acquisition.throttling
    assert throttle.power_capped.fraction == pytest.approx(power_capped, abs=0.01)
    assert throttle.power_capped.source == "violation_counter"
    assert throttle.thermal.fraction == pytest.approx(thermal, abs=0.01)
    assert ("gpu_throttled" in found) is warns
    if warns:
        assert "thermal slowdown 25% of the window" in found["gpu_throttled"]


def test_without_violation_counters_the_clock_event_samples_tell_the_cause() -> None:
    gpu = FakeGpu(profile=BUSY, unsupported=frozenset({"violation"}), clock_event_reasons=0x08)

    energy, found = measure(gpu)

    assert energy.acquisition is not None
    (throttle,) = energy.acquisition.throttling
    assert throttle.hardware_slowdown.fraction == 1.0
    assert throttle.hardware_slowdown.source == "clock_event_samples"
    assert throttle.power_capped.fraction == 0.0
    assert "hardware slowdown 100% of the window" in found["gpu_throttled"]


def test_the_power_readings_are_accounted_for() -> None:
    gpu = FakeGpu(
        profile=BUSY,
        instant_refresh_s=0.1,
        zero_readings=(("power_instant", 0.2),),
        flaky=(("temperature", 0.5, pynvml.NVML_ERROR_UNKNOWN),),
        seed=5,
    )

    energy, found = measure(gpu)

    assert energy.acquisition is not None
    (power,) = energy.acquisition.power
    assert power.field == power.field_at_end == "instant"
    assert power.refresh_period_s == pytest.approx(0.1, abs=1e-6)
    assert power.readings == power.kept + power.repeats_dropped + power.nonpositive_dropped + (
        power.failed
    )
    assert power.repeats_dropped > 5 * power.kept  # a 100 ms field read every 10 ms
    assert power.nonpositive_dropped > 0
    assert "temperature_c" in found["sampler_read_errors"]
    assert "never a 0" in found["sampler_read_errors"]


def test_power_that_stops_answering_mid_run_is_given_up_and_the_change_reported(
    tmp_path: Path,
) -> None:
    cue = tmp_path / "cue"
    gpu = FakeGpu(profile=BUSY, cue_file=str(cue), cue="power_not_supported")
    scripted = ScriptedSession([gpu])
    for label in ("load_start", "load_end", "warmup_end"):
        scripted.mark(label)
    start = scripted.clock()
    scripted.run_for(1.0)
    cue.touch()  # from here both power fields answer NotSupported
    scripted.run_for(2.0)
    scripted.mark("repeat_0_end")
    span = Span(start, start + 0.1, scripted.clock())
    energy, found = energy_section(scripted.close(), [gpu.uuid], span)

    assert energy.acquisition is not None
    (change,) = energy.acquisition.field_changes
    assert (change.field, change.before, change.after) == ("power", "instant", None)
    assert "no power field left" in found["power_field_changed"]
    assert energy.source == "nvml_energy_counter"  # the counter carries the energy on


def test_a_sampler_much_slower_than_asked_warns() -> None:
    # Rounds every 50 ms where 10 ms was asked: as an overloaded machine would deliver them.
    scripted = ScriptedSession([FakeGpu(profile=BUSY)], interval_ms=10)
    for label in ("load_start", "load_end", "warmup_end"):
        scripted.mark(label)
    start = scripted.clock()
    for _ in range(40):
        scripted.session.sampler.sample_once()
        scripted.clock.advance(0.05)
    scripted.mark("repeat_0_end")
    span = Span(start, start + 0.1, scripted.clock())
    _, found = energy_section(scripted.close(), [FakeGpu().uuid], span)

    assert "median interval of 50.0 ms" in found["sampler_slow"]


def test_readings_whose_nvml_timestamp_cannot_be_trusted_are_counted_in_the_result() -> None:
    # NVML's clock runs a minute ahead of ours (a wall clock that jumped): every timestamp is
    # in the future, so the readings are placed when read, and the result says how many.
    gpu = FakeGpu(profile=PowerProfile(((100.0, 250.0),)), instant_refresh_s=0.1)
    library = FakeNvml(gpus=(gpu,), wall=lambda: time.time() + 60.0)
    session = NvmlEnergyMeter(library=library, sampler="thread", powercap_root=None).open(
        [gpu.uuid], EnergyConfig(sample_interval_ms=10)
    )
    session.start()
    for label in ("load_start", "load_end", "warmup_end"):
        session.mark(label)
    start = time.perf_counter()
    time.sleep(0.3)
    session.mark("repeat_0_end")
    record = session.close()

    energy, _ = energy_section(record, [gpu.uuid], Span(start, start + 0.1, time.perf_counter()))

    assert energy.acquisition is not None
    (power,) = energy.acquisition.power
    assert power.untrusted_timestamps > 0
    assert power.untrusted_timestamps <= power.readings
