"""The scripted GPU's sensor behaves as MEASUREMENT.md says real ones do.

Every energy figure's coverage claim rests on this fake, so its behaviours are tested here
against hand-computed values: a fake that drifted back to an ideal sensor would make the
coverage tests pass for the wrong reason.
"""

from __future__ import annotations

import random

import pynvml
import pytest
from llem_service.energy.nvml import Nvml, NvmlError, NvmlNotSupported

from tests.fake_nvml import (
    FakeGpu,
    FakeNvml,
    LiveProfile,
    ManualClock,
    PowerProfile,
    ScriptedSession,
    realistic_sensor,
)

STEADY = PowerProfile(((100.0, 200.0),))


def reader(gpu: FakeGpu) -> tuple[ManualClock, FakeNvml]:
    clock = ManualClock()
    lib = FakeNvml(gpus=(gpu,), clock=clock)
    lib.nvmlInit()
    return clock, lib


def test_the_counter_steps_at_its_own_phase() -> None:
    gpu = FakeGpu(profile=STEADY, counter_phase_s=0.037, counter_start_mj=0)

    assert gpu.counter_mj(0.036) == gpu.counter_mj(0.0)
    # At 0.037 s the update credits (-0.063, 0.037]: 200 W x 0.1 s.
    assert gpu.counter_mj(0.037) - gpu.counter_mj(0.036) == 20_000
    assert gpu.counter_mj(0.136) == gpu.counter_mj(0.037)
    assert gpu.counter_mj(0.137) - gpu.counter_mj(0.037) == 20_000


@pytest.mark.parametrize(("phase", "factor"), [(0.0, 0.0), (0.05, 0.0), (0.025, 4.0)])
def test_part_time_sensing_misreads_a_load_periodic_at_the_sensor_period(
    phase: float, factor: float
) -> None:
    # 400 W for 25 ms of every 100 ms, else 0 W: 100 J per second of truth. The counter senses
    # only the last 25 ms of each period and scales it by 4: it sees the pulse or nothing.
    pulses = PowerProfile(((0.025, 400.0), (0.075, 0.0)) * 40 + ((10.0, 0.0),))
    gpu = FakeGpu(profile=pulses, counter_phase_s=phase, counter_sensed_fraction=0.25)

    read_j = (gpu.counter_mj(2.0 + phase) - gpu.counter_mj(1.0 + phase)) / 1e3

    assert read_j == pytest.approx(100.0 * factor, abs=1e-3)


def test_part_time_sensing_reads_a_steady_load_exactly() -> None:
    gpu = FakeGpu(profile=STEADY, counter_phase_s=0.013, counter_sensed_fraction=0.25)

    assert (gpu.counter_mj(3.013) - gpu.counter_mj(1.013)) / 1e3 == pytest.approx(400.0)


def test_the_instant_field_holds_a_lagged_short_mean_between_refreshes() -> None:
    # 100 W, then 500 W from 1.0 s. Refresh every 100 ms at phase 0.02, 25 ms window, 10 ms lag.
    step = PowerProfile(((1.0, 100.0), (10.0, 500.0)))
    gpu = FakeGpu(
        profile=step,
        instant_refresh_s=0.1,
        instant_window_s=0.025,
        instant_lag_s=0.01,
        instant_phase_s=0.02,
    )

    assert gpu.instant_mw(1.015) == 100_000  # the step is 15 ms old, not yet refreshed
    # The refresh at 1.02 holds [0.985, 1.01]: 15 ms at 100 W and 10 ms at 500 W.
    assert gpu.instant_mw(1.021) == pytest.approx(260_000, abs=1)
    assert gpu.instant_mw(1.121) == 500_000


def test_a_short_burst_between_instant_windows_is_invisible_to_the_field() -> None:
    burst = PowerProfile(((1.03, 100.0), (0.04, 700.0), (10.0, 100.0)))
    gpu = FakeGpu(profile=burst, instant_refresh_s=0.1, instant_window_s=0.025)

    seen = {gpu.instant_mw(1.0 + k * 0.005) for k in range(60)}

    assert seen == {100_000}


def test_the_averaged_field_refreshes_on_its_period() -> None:
    gpu = FakeGpu(profile=PowerProfile(((1.0, 100.0), (10.0, 300.0))), average_refresh_s=0.1)

    assert gpu.average_mw(1.55) == gpu.average_mw(1.5)
    assert gpu.average_mw(1.5) == pytest.approx(200_000, abs=1)  # half of the last second


def test_field_values_carry_the_refresh_time_as_their_timestamp() -> None:
    clock, lib = reader(FakeGpu(profile=STEADY, instant_refresh_s=0.1, instant_phase_s=0.03))
    handle = lib.nvmlDeviceGetHandleByIndex(0)
    clock.advance(0.25)

    (value,) = lib.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])

    assert value.nvmlReturn == pynvml.NVML_SUCCESS
    # NVML's timestamps are wall-clock microseconds: the refresh 0.23 s after initialisation.
    assert value.timestamp - lib.wall_us(0.0) == 230_000


def test_transient_faults_come_at_their_rate_and_repeat_with_the_seed() -> None:
    gpu = FakeGpu(
        profile=STEADY,
        flaky=(("energy", 0.3, pynvml.NVML_ERROR_NOT_SUPPORTED),),
        zero_readings=(("power_average", 0.2),),
        seed=7,
    )

    def outcomes() -> tuple[list[str], list[int]]:
        _, lib = reader(gpu)
        device = Nvml(lib).device(gpu.uuid)
        energy = []
        for _ in range(1000):
            try:
                device.energy_mj()
                energy.append("ok")
            except NvmlNotSupported:
                energy.append("not supported")
        return energy, [device.power_average_mw() for _ in range(1000)]

    energy, power = outcomes()

    assert energy.count("not supported") == pytest.approx(300, abs=60)
    assert power.count(0) == pytest.approx(200, abs=50)
    assert set(power) == {0, 200_000}
    assert outcomes() == (energy, power)


def test_the_instant_field_can_fail_on_its_own_return_code() -> None:
    gpu = FakeGpu(profile=STEADY, flaky=(("power_instant", 1.0, pynvml.NVML_ERROR_UNKNOWN),))
    _, lib = reader(gpu)

    with pytest.raises(NvmlError, match="Unknown"):
        Nvml(lib).device(gpu.uuid).power_instant_mw()


def test_temperature_follows_its_trace() -> None:
    gpu = FakeGpu(temperature_trace=((0.0, 70.0), (10.0, 50.0), (20.0, 45.0)))

    assert [gpu.temperature_at(t) for t in (-1.0, 5.0, 15.0, 99.0)] == [70, 60, 48, 45]


def test_a_live_profile_idles_warm_after_work_and_integrates_what_was_read() -> None:
    profile = LiveProfile(60.0, warm_w=20.0, cool_tau_s=5.0, cool_step_s=0.05)
    profile.occupy(1.0, 2.0, 400.0, "decode")

    read_while_idle = [profile.power_w(3.0 + k * 0.01) for k in range(500)]
    idle_j = sum(
        profile.idle_power_w(3.0 + (k + 0.5) * 0.05) * 0.05 for k in range(100)
    )  # the staircase the sensor saw
    profile.occupy(8.0, 1.0, 300.0)

    assert profile.power_w(0.5) == 60.0  # cold before any work
    assert read_while_idle[0] == pytest.approx(60.0 + 20.0, rel=0.01)
    assert read_while_idle[-1] < read_while_idle[0]
    assert read_while_idle == [profile.power_w(3.0 + k * 0.01) for k in range(500)]
    assert profile.energy_j(1.0, 3.0) == pytest.approx(800.0)
    assert profile.energy_j(3.0, 8.0) == pytest.approx(idle_j)
    assert profile.energy_j(8.0, 9.0) == pytest.approx(300.0)


def test_advance_samples_on_a_grid_however_time_is_cut() -> None:
    one = ScriptedSession([FakeGpu(profile=STEADY)], interval_ms=10)
    many = ScriptedSession([FakeGpu(profile=STEADY)], interval_ms=10)

    one.advance(0.5)
    for _ in range(250):
        many.advance(0.002)

    assert len(one.close().timeline) == len(many.close().timeline) == 51


def test_each_gpu_of_a_host_has_its_own_sensor_phases() -> None:
    rng = random.Random(3)
    gpus = [
        realistic_sensor(FakeGpu(uuid=f"GPU-{i}", profile=STEADY), rng, part_time=True)
        for i in range(4)
    ]

    phases = {g.counter_phase_s for g in gpus}

    assert len(phases) == 4
    assert all(0 <= p < 0.1 for p in phases)
    assert all(g.instant_refresh_s == 0.1 and g.counter_sensed_fraction == 0.25 for g in gpus)
