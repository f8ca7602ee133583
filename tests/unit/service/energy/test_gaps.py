"""Power readings with holes in them, on GPUs without an energy counter: reads that fail, a
power field given up, a field switched to the 1-s average. Where the power was not read the
figure must say so in its uncertainty (bounded by what the GPU can draw), never draw a
straight line across the hole and claim it tight."""

from __future__ import annotations

import math

import pynvml
import pytest
from llem_service.energy.integrate import PowerCurve
from llem_service.energy.sensors import SensorTable
from llem_service.energy.uncertainty import Estimate
from llem_service.energy.windows import EnergyAccount

from tests.fake_nvml import FakeGpu, PowerProfile, ScriptedSession

#: The sensor is exact and the meter knows it: what is left to cover is the readings' own.
EXACT = SensorTable.with_overrides(
    {
        "Fake T4": {"gain_rel": 0.0, "offset_w": 0.0, "sensed_fraction": 1.0},
        "Fake H100": {"gain_rel": 0.0, "offset_w": 0.0, "sensed_fraction": 1.0},
    }
)
NO_COUNTER = frozenset({"energy"})
UNKNOWN = pynvml.NVML_ERROR_UNKNOWN


def measured(gpu: FakeGpu, a_s: float, b_s: float, tail_s: float = 0.3) -> tuple[Estimate, str]:
    """One window ``a_s``..``b_s`` (fake GPU time) of a scripted session; its estimate and
    source."""
    scripted = ScriptedSession([gpu], interval_ms=10, sensors=EXACT)
    scripted.run_until(a_s)
    scripted.mark("a")
    scripted.run_until(b_s)
    scripted.mark("b")
    scripted.run_for(tail_s)
    record = scripted.close()
    account = EnergyAccount(record, [gpu.uuid])
    estimate, window = account.estimate(record.devices[0], record.mark("a"), record.mark("b"))
    return estimate, window.source


def test_a_power_field_that_dies_leaves_a_gap_bounded_by_the_power_limit() -> None:
    # A T4 (no counter): 30 W read for 2 s, then both power fields stop answering for good
    # while the GPU draws its limit, 70 W, for 18 s. A line held at the last reading would
    # say 600 J; the truth is 1320 J.
    gpu = FakeGpu(
        name="Fake T4",
        profile=PowerProfile(((2.0, 30.0), (100.0, 70.0))),
        power_limit_mw=70_000,
        unsupported=NO_COUNTER,
        failing=(
            ("power_instant", 2.0, math.inf, UNKNOWN),
            ("power_average", 2.0, math.inf, UNKNOWN),
        ),
    )

    estimate, source = measured(gpu, 0.5, 20.0)

    truth = gpu.profile.energy_j(0.5, 20.0)
    assert source == "nvml_power_integral"
    assert "power_gaps" in {name for name, _ in estimate.by_term()}
    assert abs(estimate.value - truth) <= estimate.expanded()


def test_a_burst_of_failed_reads_is_a_gap_not_a_straight_line() -> None:
    # 60 W idle, a 600 W burst of 0.3 s that falls wholly inside 0.45 s of failed reads (too
    # short a run of failures to change the field): the readings on either side say 60 W.
    gpu = FakeGpu(
        profile=PowerProfile(((1.1, 60.0), (0.3, 600.0), (100.0, 60.0))),
        unsupported=NO_COUNTER,
        failing=(("power_instant", 1.0, 1.45, UNKNOWN),),
    )

    estimate, _ = measured(gpu, 0.5, 3.0)

    truth = gpu.profile.energy_j(0.5, 3.0)
    assert abs(estimate.value - truth) <= estimate.expanded()


def test_readings_after_a_switch_to_the_average_field_lag_as_that_field_does() -> None:
    # The instant field dies at 1 s and the sampler switches to the 1-s average; power steps
    # from 100 W to 600 W at 3 s and the window ends 0.3 s later, when the average has only
    # begun to rise: its readings miss most of the step, as a 1-s average does.
    gpu = FakeGpu(
        profile=PowerProfile(((3.0, 100.0), (100.0, 600.0))),
        unsupported=NO_COUNTER,
        failing=(("power_instant", 1.0, math.inf, UNKNOWN),),
    )

    estimate, _ = measured(gpu, 2.0, 3.3)

    truth = gpu.profile.energy_j(2.0, 3.3)
    assert abs(estimate.value - truth) <= estimate.expanded()


def test_steady_readings_of_one_value_are_not_a_gap() -> None:
    # A run of equal readings keeps only its ends in the curve, but it was read all along.
    t = [i * 0.1 for i in range(100)]

    curve = PowerCurve(t, [80.0] * 100)

    assert len(curve.t) == 2
    assert curve.uncovered(0.0, 9.9, 0.25) == []
    assert curve.uncovered(0.0, 12.0, 0.25) == [(9.9, 12.0)]


def test_failed_and_zero_readings_leave_a_gap() -> None:
    t = [i * 0.1 for i in range(30)]
    power: list[float | None] = [80.0] * 30
    power[10:15] = [None, 0.0, None, -1.0, None]

    curve = PowerCurve(t, power)

    (gap,) = curve.uncovered(0.0, 2.9, 0.25)
    assert gap == pytest.approx((0.9, 1.5))
