"""Honest readings: fields judged after several tries, repeats and 0 W readings dropped with a
count, a failed read a gap and never 0 W, a field changed only after a run of failures."""

from __future__ import annotations

import math
import re

import pynvml
import pytest
from llem_service.energy.field_readers import (
    OptionalReader,
    PowerField,
    PowerReader,
    RetryPolicy,
    probe_sensors,
)
from llem_service.energy.nvml import GpuDevice, Nvml, NvmlError
from llem_service.energy.samples import FAILED, FRESH, NONPOSITIVE, REPEAT
from llem_service.energy.windows import EnergyAccount

from tests.fake_nvml import FakeGpu, FakeNvml, ManualClock, PowerProfile, ScriptedSession

STEADY = PowerProfile(((100.0, 200.0),))
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED


def opened(gpu: FakeGpu) -> tuple[ManualClock, GpuDevice]:
    clock = ManualClock()
    nvml = Nvml(FakeNvml(gpus=(gpu,), clock=clock, wall=clock.wall)).open()
    return clock, nvml.devices()[0]


def fake_time(clock: ManualClock, session_t: float) -> float:
    """The fake GPU's time (since nvmlInit, which `opened` did at ManualClock's start)."""
    return session_t - ManualClock().t


def reader(gpu: FakeGpu, field: PowerField = "instant") -> tuple[ManualClock, PowerReader]:
    clock, device = opened(gpu)
    return clock, PowerReader(device, field, 0.1, RetryPolicy(), clock, clock.wall)


def test_the_probe_measures_the_instant_fields_refresh_and_the_age_of_its_readings() -> None:
    gpu = FakeGpu(profile=STEADY, instant_refresh_s=0.1, instant_phase_s=0.03)
    clock, device = opened(gpu)

    (probe,) = probe_sensors([device], [True], clock, clock.wall, clock.advance)

    assert probe.power_field == "instant"
    assert probe.power_field_reason == "it answered"
    # The value never changes at steady power; NVML's timestamps still show each refresh.
    assert probe.instant_refresh_s == pytest.approx(0.1, abs=1e-6)
    assert probe.counter_period_s == pytest.approx(0.1, abs=0.003)
    # Polled every 2 ms, a reading is on average half a refresh old when read.
    assert probe.instant_lag_s == pytest.approx(0.05, abs=0.01)


def test_a_slow_counters_period_is_measured_never_understated() -> None:
    # Updates every 0.5 s, the first 50 ms in: two changes in the first 0.6 s, which the old
    # probe took for a 0.3 s period (0.6 s / 2), understating every quantisation bound.
    gpu = FakeGpu(profile=STEADY, counter_period_s=0.5, counter_phase_s=0.05)
    clock, device = opened(gpu)

    (probe,) = probe_sensors([device], [True], clock, clock.wall, clock.advance)

    assert probe.counter_period_s == pytest.approx(0.5, abs=0.003)


def test_a_counter_that_hardly_moves_has_no_period_and_is_not_used() -> None:
    gpu = FakeGpu(profile=STEADY, counter_period_s=5.0, counter_phase_s=1.0)
    clock, device = opened(gpu)

    (probe,) = probe_sensors([device], [True], clock, clock.wall, clock.advance)
    (meta,) = ScriptedSession([gpu]).session.metas

    assert probe.counter_period_s is None
    assert probe.counter_changes == 1
    assert not meta.has_energy_counter
    assert meta.counter_absent_reason is not None
    assert "changed 1 time(s) in 3 s" in meta.counter_absent_reason


def test_a_field_that_fails_once_is_tried_again_before_it_is_judged() -> None:
    gpu = FakeGpu(profile=STEADY, fail_first=(("power_instant", 2, NOT_SUPPORTED),))
    clock, device = opened(gpu)

    (probe,) = probe_sensors([device], [True], clock, clock.wall, clock.advance)

    assert probe.power_field == "instant"
    assert probe.power_field_reason == "it answered on try 3"
    assert probe.probe_failures >= 2


@pytest.mark.parametrize(
    ("unsupported", "field", "said"),
    [
        (frozenset({"power_instant"}), "average", "instant power field failed 5 tries"),
        (frozenset({"power_instant", "power_average"}), None, "average power field failed"),
    ],
)
def test_a_field_that_never_answers_is_replaced_or_given_up_with_the_reason(
    unsupported: frozenset[str], field: str | None, said: str
) -> None:
    clock, device = opened(FakeGpu(profile=STEADY, unsupported=unsupported))

    (probe,) = probe_sensors([device], [True], clock, clock.wall, clock.advance)

    assert probe.power_field == field
    assert said in probe.power_field_reason
    assert "Not Supported" in probe.power_field_reason


def test_repeats_of_a_refreshing_field_are_flagged_and_kept_readings_sit_at_their_refresh() -> None:
    clock, power = reader(FakeGpu(profile=STEADY, instant_refresh_s=0.1, instant_phase_s=0.005))
    results = []
    for _ in range(100):  # 1 s at 10 ms
        results.append(power.read())
        clock.advance(0.01)

    fresh = [(w, t) for w, t, flag in results if flag == FRESH]
    # Refreshes at -0.095 (the one read at 0), 0.005, 0.105... 0.905: 11 readings in 1 s.
    assert power.stats.fresh == len(fresh) == 11
    assert power.stats.repeats == 89
    assert all(flag in {FRESH, REPEAT} for _, _, flag in results)
    times = [fake_time(clock, t) for _, t in fresh]
    assert times == pytest.approx([-0.095 + 0.1 * k for k in range(11)], abs=1e-6)


def test_without_a_timestamp_a_repeat_is_the_same_value_within_the_refresh_period() -> None:
    clock, power = reader(FakeGpu(profile=STEADY, average_refresh_s=0.1), field="average")
    flags = []
    for _ in range(100):
        flags.append(power.read()[2])
        clock.advance(0.01)

    # Steady power: the same value each read, kept once per refresh period.
    assert flags.count(FRESH) == 10
    assert flags.count(REPEAT) == 90


def test_zero_readings_are_dropped_with_a_count() -> None:
    gpu = FakeGpu(profile=STEADY, zero_readings=(("power_instant", 0.5),), seed=3)
    clock, power = reader(gpu)
    flags = []
    for _ in range(200):
        flags.append(power.read()[2])
        clock.advance(0.01)

    assert power.stats.nonpositive == flags.count(NONPOSITIVE) > 50
    assert power.stats.fresh == flags.count(FRESH) > 50


def test_transient_failures_are_gaps_and_change_nothing() -> None:
    gpu = FakeGpu(profile=STEADY, flaky=(("power_instant", 0.3, NOT_SUPPORTED),), seed=1)
    clock, power = reader(gpu)
    results = []
    for _ in range(300):
        results.append(power.read())
        clock.advance(0.01)

    failed = [r for r in results if r[2] == FAILED]
    assert power.stats.failed == len(failed) > 50
    assert all(math.isnan(w) for w, _, _ in failed)  # no reading, not 0 W
    assert power.field == "instant"
    assert power.changes == []


def test_a_burst_of_failures_is_no_verdict_but_a_long_run_changes_the_field() -> None:
    gpu = FakeGpu(profile=STEADY, flaky=(("power_instant", 1.0, NOT_SUPPORTED),))
    clock, power = reader(gpu)

    for _ in range(40):  # 40 failures in 0.4 s: under the 0.5 s the budget asks for
        power.read()
        clock.advance(0.01)
    assert power.changes == []
    for _ in range(20):
        power.read()
        clock.advance(0.01)

    assert power.field == "average"
    (change,) = power.changes
    assert (change.field, change.before, change.after) == ("power", "instant", "average")
    found = re.search(r"failed (\d+) reads in a row", change.reason)
    assert found is not None
    streak = int(found.group(1))
    assert 51 <= streak <= 52  # 0.5 s of reads 10 ms apart (give or take the float sums)
    assert "switched to the 1-s average" in change.reason
    assert power.read()[2] in {FRESH, REPEAT}  # the average answers
    assert power.stats.fresh >= 1
    assert power.stats.field_at_end == "average"


def test_an_optional_field_survives_transient_failures_and_is_given_up_after_a_run() -> None:
    clock = ManualClock()
    answers = iter([NOT_SUPPORTED, None, *([NOT_SUPPORTED] * 10)])

    def read() -> int:
        code = next(answers)
        if code is not None:
            raise NvmlError("NVML could not read the clock: Not Supported", code)
        return 1980

    field = OptionalReader("sm_clock_mhz", read, RetryPolicy(), clock)
    values = []
    for _ in range(12):
        values.append(field.read())
        clock.advance(0.1)

    assert values[:2] == [None, 1980]
    assert field.given_up
    assert field.failed == 11
    (change,) = field.changes
    assert change.after is None
    assert "10 reads in a row failed" in change.reason


def test_a_failed_read_on_one_gpu_is_a_gap_in_the_summed_curve_never_zero() -> None:
    a = FakeGpu(uuid="GPU-a", profile=STEADY)
    b = FakeGpu(
        uuid="GPU-b",
        profile=PowerProfile(((100.0, 100.0),)),
        flaky=(("field_values", 0.3, pynvml.NVML_ERROR_UNKNOWN),),
        seed=2,
    )
    scripted = ScriptedSession([a, b])
    scripted.mark("load_start")
    scripted.run_for(2.0)
    scripted.mark("repeat_0_end")
    record = scripted.close()

    summed = EnergyAccount(record, ["GPU-a", "GPU-b"]).summed

    assert record.acquisition is not None
    assert record.acquisition.sampler is not None
    assert record.acquisition.sampler.failed_reads > 20  # GPU b's reads did fail...
    assert min(summed.p) == pytest.approx(300.0)  # ...yet the total never dropped to 200 W
