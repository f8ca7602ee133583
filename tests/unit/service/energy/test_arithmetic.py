"""Counter windows against scripted GPUs whose true energy is known exactly.

Each test drives a real `NvmlSession` by hand (`ScriptedSession`): the counter advances in
100 ms steps (at a phase of its own with the realistic sensor), power is sampled every 10 ms,
and the truth is the profile's exact integral.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llem_client import EnergyConfig
from llem_service.energy.baseline import BaselineSet
from llem_service.energy.figures import Batch, Span, Work
from llem_service.energy.integrate import PowerCurve
from llem_service.energy.phases import decode_by_batch
from llem_service.energy.report import build_energy
from llem_service.energy.sensors import SensorTable
from llem_service.energy.uncertainty import COVERAGE_FACTOR, Estimate, Source
from llem_service.energy.windows import EnergyAccount, Periodicity, part_time_bound

from tests.fake_nvml import FakeGpu, PowerProfile, ScriptedSession, realistic_sensor

segments = st.lists(
    st.tuples(st.floats(0.05, 1.0), st.floats(20.0, 700.0)), min_size=1, max_size=8
).map(lambda s: PowerProfile(tuple(s)))

#: A sensor the meter knows integrates every period, with no calibration error to allow for:
#: what is left to cover is quantisation and sampling alone.
EXACT = SensorTable.with_overrides(
    {"Fake H100": {"gain_rel": 0.0, "offset_w": 0.0, "sensed_fraction": 1.0}}
)


def window(gpu: FakeGpu, offset_s: float, length_s: float) -> tuple[Estimate, float]:
    scripted = ScriptedSession([gpu], sensors=EXACT)
    scripted.run_for(offset_s)
    a = scripted.mark("a")
    scripted.run_for(length_s)
    b = scripted.mark("b")
    scripted.run_for(0.3)  # the sampler keeps going after a mark, as in a real session
    record = scripted.close()
    account = EnergyAccount(record, [gpu.uuid])
    estimate, _ = account.estimate(record.devices[0], record.mark("a"), record.mark("b"))
    return estimate, gpu.profile.energy_j(a, b)


@settings(max_examples=60, deadline=None)
@given(profile=segments, offset=st.floats(0.0, 2.0), length=st.floats(0.05, 3.0))
def test_counter_energy_is_within_its_stated_uncertainty(
    profile: PowerProfile, offset: float, length: float
) -> None:
    measured, truth = window(FakeGpu(profile=profile), offset, length)

    assert abs(measured.value - truth) <= measured.expanded() + 1e-9


@settings(max_examples=30, deadline=None)
@given(
    profile=segments, offset=st.floats(0.0, 2.0), length=st.floats(0.05, 3.0), seed=st.integers()
)
def test_a_realistic_counter_at_its_own_phase_is_within_its_stated_uncertainty(
    profile: PowerProfile, offset: float, length: float, seed: int
) -> None:
    gpu = realistic_sensor(FakeGpu(profile=profile), random.Random(seed))

    measured, truth = window(gpu, offset, length)

    assert abs(measured.value - truth) <= measured.expanded() + 1e-9


@settings(max_examples=40, deadline=None)
@given(profile=segments, length=st.floats(0.3, 3.0))
def test_integrated_samples_are_within_the_jumps_times_the_interval(
    profile: PowerProfile, length: float
) -> None:
    # Trapezoids between 10 ms samples misplace each power step by at most one interval.
    t = [i * 0.01 for i in range(int(length / 0.01) + 2)]
    curve = PowerCurve(t, [profile.power_w(x) for x in t], dedupe=False)
    bound = sum(size for when, size in profile.jumps() if when < length + 0.01) * 0.01

    assert abs(curve.energy_j(0.0, length) - profile.energy_j(0.0, length)) <= bound + 1e-9


@settings(max_examples=40, deadline=None)
@given(profile=segments, offset=st.floats(0.0, 1.0), length=st.floats(0.1, 3.0))
def test_without_a_counter_the_integral_is_within_its_stated_uncertainty(
    profile: PowerProfile, offset: float, length: float
) -> None:
    gpu = FakeGpu(profile=profile, unsupported=frozenset({"energy"}))

    measured, truth = window(gpu, offset, length)

    assert "power_integration" in {name for name, _ in measured.by_term()}
    assert abs(measured.value - truth) <= measured.expanded() + 1e-9


def test_a_run_of_identical_readings_keeps_its_ends_and_zeros_are_dropped() -> None:
    t = [0.0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.5]
    curve = PowerCurve(t, [100.0, 100.0, 100.0, 0.0, None, 300.0, 300.0])

    assert list(zip(curve.t, curve.p, strict=True)) == [
        (0.0, 100.0), (0.2, 100.0), (0.4, 300.0), (0.5, 300.0)
    ]  # fmt: skip
    assert curve.dropped == 1
    # flat while the value held, then one straight line across the gap
    assert curve.energy_j(0.0, 0.5) == pytest.approx(0.2 * 100 + 0.2 * 200 + 0.1 * 300)


def test_adjacent_windows_share_their_middle_read() -> None:
    gpu = FakeGpu(profile=PowerProfile(((100.0, 300.0),)))
    scripted = ScriptedSession([gpu], sensors=EXACT)
    for label in ("a", "b", "c"):
        scripted.run_for(0.73)
        scripted.mark(label)
    record = scripted.close()
    account = EnergyAccount(record, [gpu.uuid])
    meta = record.devices[0]

    first, _ = account.estimate(meta, record.mark("a"), record.mark("b"))
    second, _ = account.estimate(meta, record.mark("b"), record.mark("c"))
    whole, _ = account.estimate(meta, record.mark("a"), record.mark("c"))

    # The lag of the read at b cancels in the sum: it has the uncertainty of the whole window.
    assert (first + second).value == pytest.approx(whole.value)
    assert (first + second).std() == pytest.approx(whole.std())
    assert (first + second).std() < (first.std() ** 2 + second.std() ** 2) ** 0.5


def test_the_sensor_accuracy_is_a_systematic_term_that_does_not_average_away() -> None:
    sensors = SensorTable.with_overrides({"Fake H100": {"gain_rel": 0.05, "offset_w": 5.0}})
    gpu = FakeGpu(profile=PowerProfile(((100.0, 400.0),)))
    scripted = ScriptedSession([gpu], sensors=sensors)
    scripted.mark("a")
    scripted.run_for(10.0)
    scripted.mark("b")
    record = scripted.close()
    estimate, _ = EnergyAccount(record, [gpu.uuid]).estimate(
        record.devices[0], record.mark("a"), record.mark("b")
    )

    terms = dict(estimate.by_term())
    # 5% of 4000 J and 5 W x 10 s, rectangular (/sqrt 3)
    assert terms[("sensor_gain", "systematic")] == pytest.approx(0.05 * 4000 / 3**0.5, rel=1e-3)
    assert terms[("sensor_offset", "systematic")] == pytest.approx(50 / 3**0.5, rel=1e-3)
    assert estimate.expanded("systematic") > estimate.expanded("random")
    wire = estimate.wire()
    assert wire.total == pytest.approx(COVERAGE_FACTOR * estimate.std())


@pytest.mark.parametrize(
    ("period_s", "jitter_s", "expected_coherence_s"),
    [
        (0.027, 0.0, 0.1 / abs(0.1 / 0.027 - 4)),  # beat between 27 ms steps and 100 ms
        (0.05, 0.0, 20.0),  # exactly two steps per period: stuck for the whole window
        (0.05, 0.005, 0.05 * 10**2),  # jitter diffuses the phase in (period/jitter)^2 steps
    ],
)
def test_part_time_sensing_leaves_at_most_one_coherence_time_unaveraged(
    period_s: float, jitter_s: float, expected_coherence_s: float
) -> None:
    sensor = SensorTable().lookup("H100")

    bound = part_time_bound(
        period_s=period_s, jitter_s=jitter_s, window_s=20.0, counter_period_s=0.1,
        swing_w=400.0, sensor=sensor,
    )  # fmt: skip

    assert bound == pytest.approx(0.75 * 400.0 * expected_coherence_s, rel=1e-6)
    full = SensorTable.with_overrides({"H100": {"sensed_fraction": 1.0}}).lookup("H100")
    assert part_time_bound(
        period_s=0.05, jitter_s=0.0, window_s=20.0, counter_period_s=0.1, swing_w=400.0,
        sensor=full,
    ) == 0.0  # fmt: skip


def test_a_counter_reset_falls_back_to_the_integral_and_says_so() -> None:
    gpu = FakeGpu(profile=PowerProfile(((10.0, 250.0),)), counter_reset_at_s=1.5)
    scripted = ScriptedSession([gpu])
    scripted.run_for(0.6)
    for label in ("load_start", "load_end", "warmup_end"):
        scripted.mark(label)
    a = scripted.now()
    start = scripted.clock()
    scripted.run_for(2.0)
    b = scripted.mark("repeat_0_end")
    work = Work((Batch(Span(start, start + 0.2, scripted.clock()), (8,), (16,)),))

    section = build_energy(
        scripted.close(), [gpu.uuid], work, baselines=BaselineSet(), prefill=None,
        plan=EnergyConfig(), now=0.0,
    )  # fmt: skip

    energy = section.result
    assert energy is not None
    assert energy.source == "nvml_power_integral"
    assert energy.energy_j is not None
    assert energy.energy_j.value == pytest.approx(250.0 * (b - a), abs=energy.energy_j.total)
    assert "energy_counter_reset" in [code for code, _ in section.warnings]


def test_periodicity_of_the_window_feeds_the_part_time_term() -> None:
    gpu = FakeGpu(name="Fake H100", profile=PowerProfile(((100.0, 400.0),)))
    scripted = ScriptedSession([gpu])
    scripted.mark("a")
    scripted.run_for(5.0)
    scripted.mark("b")
    record = scripted.close()
    account = EnergyAccount(record, [gpu.uuid])
    a, b = record.mark("a"), record.mark("b")

    plain, _ = account.estimate(record.devices[0], a, b)
    aliased, _ = account.estimate(record.devices[0], a, b, Periodicity(0.05, 0.0))

    assert ("part_time_sensing", "systematic") not in plain.by_term()
    assert aliased.by_term()[("part_time_sensing", "systematic")] > 0
    assert aliased.value == plain.value


def test_two_gpus_refreshing_at_their_own_phases_still_give_summed_readings() -> None:
    # Each field refreshes every 100 ms, read every 50 ms, half a period apart: in every round
    # one of the two holds a value it already gave. Each one's latest reading stands for it.
    def busy(base_w: float) -> PowerProfile:
        return PowerProfile(tuple((0.1 * (k + 1), base_w + k % 7) for k in range(200)))

    gpus = [
        FakeGpu(uuid="GPU-a", profile=busy(300.0), instant_refresh_s=0.1, instant_phase_s=0.0),
        FakeGpu(uuid="GPU-b", profile=busy(200.0), instant_refresh_s=0.1, instant_phase_s=0.05),
    ]
    scripted = ScriptedSession(gpus, interval_ms=50, sensors=EXACT)
    scripted.run_until(1.0)
    scripted.mark("a")
    scripted.run_until(11.0)
    scripted.mark("b")
    scripted.run_for(0.3)
    record = scripted.close()
    t0, t1 = record.mark("a").t_s, record.mark("b").t_s

    stats = EnergyAccount(record, ["GPU-a", "GPU-b"]).readings.stats(t0, t1)

    assert stats is not None  # was: no round with both fresh, so no readings at all
    mean, error = stats
    assert mean == pytest.approx(300.0 + 200.0 + 2 * 3.0, abs=1.0)
    assert error < 1.0


def test_part_time_aliasing_of_slow_work_is_one_standard_deviation_as_a_rectangle() -> None:
    # Work slower than the counter: 2 changes per period, each off by up to
    # b = (1 - f) x swing x counter period, independently. Their sum's standard deviation is
    # sqrt(n / 3) x b; taken as a rectangular bound a, a / sqrt(3) must be that (not 2 sigma).
    sensor = SensorTable().lookup("H100")  # senses 25% of each period
    b = 0.75 * 400.0 * 0.1
    n = 2 * 20.0 / 1.0

    bound = part_time_bound(
        period_s=1.0, jitter_s=0.0, window_s=20.0, counter_period_s=0.1, swing_w=400.0,
        sensor=sensor,
    )  # fmt: skip

    assert Estimate.bounded(0.0, Source("part_time_sensing", "systematic"), bound).std() == (
        pytest.approx((n / 3) ** 0.5 * b)
    )


def test_a_batch_shared_by_time_is_bounded_by_its_time_times_the_whole_power_range() -> None:
    # Five decode spans of 0.1 s, too short for readings past the field's delay: shared by
    # time. The first draws 100 W, the others 500 W: its share (the mean, 420 W) is 320 W
    # over it, most of the range, not half of it.
    profile = PowerProfile(((1.0, 300.0), (0.1, 100.0), (0.4, 500.0), (10.0, 300.0)))  # (s, W)
    gpu = FakeGpu(profile=profile)
    scripted = ScriptedSession([gpu], sensors=EXACT)
    scripted.run_until(1.0)
    scripted.mark("a")
    scripted.run_until(1.5)
    scripted.mark("b")
    scripted.run_for(0.3)
    record = scripted.close()
    t0 = scripted.t0
    spans = [Span(t0 + 1.0 + 0.1 * i, t0 + 1.0 + 0.1 * i, t0 + 1.1 + 0.1 * i) for i in range(5)]
    work = Work(tuple(Batch(span, (8,), (16,)) for span in spans))
    account = EnergyAccount(record, [gpu.uuid])
    decode = Estimate(profile.energy_j(1.0, 1.5))  # the total, exact: only the split is left

    first, *_ = decode_by_batch(account, work, decode)

    truth = profile.energy_j(1.0, 1.1)
    assert abs(first.value - truth) <= first.expanded()
