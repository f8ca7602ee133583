"""The energy arithmetic against scripted GPUs whose true energy is known exactly.

Each test drives a real `NvmlSession` by hand (`ScriptedSession`): the counter advances in
100 ms steps, power is sampled every 10 ms, and the truth is the profile's exact integral.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llem_client import PhaseEnergy
from llem_service.energy.base import Baseline
from llem_service.energy.integrate import PowerCurve
from llem_service.energy.report import EnergyAccount, Span, Window, Work, build_energy

from tests.fake_nvml import FakeGpu, PowerProfile, ScriptedSession

segments = st.lists(
    st.tuples(st.floats(0.05, 1.0), st.floats(20.0, 700.0)), min_size=1, max_size=8
).map(lambda s: PowerProfile(tuple(s)))


def window_energy(gpu: FakeGpu, offset_s: float, length_s: float) -> tuple[Window, float]:
    scripted = ScriptedSession([gpu])
    scripted.run_for(offset_s)
    a = scripted.mark("a")
    scripted.run_for(length_s)
    b = scripted.mark("b")
    scripted.run_for(0.05)  # the sampler keeps going after a mark, as in a real session
    record = scripted.close()
    account = EnergyAccount(record, [gpu.uuid])
    measured = account.window(record.devices[0], record.mark("a"), record.mark("b"))
    return measured, gpu.profile.energy_j(a, b)


@settings(max_examples=60, deadline=None)
@given(profile=segments, offset=st.floats(0.0, 2.0), length=st.floats(0.05, 3.0))
def test_counter_energy_is_within_its_stated_uncertainty(
    profile: PowerProfile, offset: float, length: float
) -> None:
    measured, truth = window_energy(FakeGpu(profile=profile), offset, length)

    assert measured.source == "nvml_energy_counter"
    assert abs(measured.energy_j - truth) <= measured.uncertainty_j + 1e-9


@settings(max_examples=40, deadline=None)
@given(profile=segments, length=st.floats(0.3, 3.0))
def test_integrated_samples_are_within_the_jumps_times_the_interval(
    profile: PowerProfile, length: float
) -> None:
    # Trapezoids between 10 ms samples misplace each power step by at most one interval.
    t = [i * 0.01 for i in range(int(length / 0.01) + 2)]
    curve = PowerCurve(t, [profile.power_w(x) for x in t])
    bound = sum(size for when, size in profile.jumps() if when < length + 0.01) * 0.01

    assert abs(curve.energy_j(0.0, length) - profile.energy_j(0.0, length)) <= bound + 1e-9


@settings(max_examples=40, deadline=None)
@given(profile=segments, offset=st.floats(0.0, 1.0), length=st.floats(0.1, 3.0))
def test_without_a_counter_the_integral_is_within_its_stated_uncertainty(
    profile: PowerProfile, offset: float, length: float
) -> None:
    gpu = FakeGpu(profile=profile, unsupported=frozenset({"energy"}))

    measured, truth = window_energy(gpu, offset, length)

    assert measured.source == "nvml_power_integral"
    assert abs(measured.energy_j - truth) <= measured.uncertainty_j + 1e-9


def test_counter_and_integral_agree_on_a_steady_load() -> None:
    profile = PowerProfile(((0.5, 80.0), (1.0, 450.0), (0.7, 300.0), (1.0, 420.0)))

    measured, truth = window_energy(FakeGpu(profile=profile), 0.2, 3.0)

    assert measured.integrated_j is not None
    assert measured.integrated_j == pytest.approx(measured.energy_j, rel=0.02)
    assert measured.energy_j == pytest.approx(truth, rel=0.02)


def test_a_counter_reset_falls_back_to_the_integral_and_says_so() -> None:
    gpu = FakeGpu(profile=PowerProfile(((10.0, 250.0),)), counter_reset_at_s=1.5)
    scripted = ScriptedSession([gpu])
    scripted.run_for(0.6)
    for label in ("load_start", "load_end", "warmup_end"):
        scripted.mark(label)
    a = scripted.now()
    scripted.run_for(2.0)
    b = scripted.mark("repeat_0_end")

    energy, _, warnings = build_energy(
        scripted.close(), [gpu.uuid], work(), cross_check_threshold=0.1, now=0.0
    )

    assert energy.source == "nvml_power_integral"
    assert energy.energy_j == pytest.approx(250.0 * (b - a), abs=energy.energy_uncertainty_j)
    assert "energy_counter_reset" in [code for code, _ in warnings]


def work(spans: tuple[Span, ...] = (), tokens: tuple[int, ...] = (8, 8)) -> Work:
    return Work(
        spans=spans, output_tokens_per_request=tokens, output_tokens_per_repeat=(sum(tokens),)
    )


def scripted_run(
    gpu: FakeGpu, *, baseline_s: float | None = None, cached: tuple[Baseline, ...] = ()
) -> tuple[ScriptedSession, dict[str, float], list[Span]]:
    """An optional baseline, then from 1.5 s: load 0.4 s, warm-up 0.3 s, then two batches of
    (0.1 s prefill + 0.6 s decode) each followed by a 0.05 s gap. Returns the fake-GPU time
    of every mark, and the batch spans on the session clock."""
    from llem_client import BaselineConfig

    scripted = ScriptedSession([gpu])  # opening probes the counter for up to 0.6 s
    if baseline_s is not None or cached:
        plan = BaselineConfig(enabled=True, duration_s=baseline_s or 1.0, max_age_s=3600)
        scripted.session.baselines(plan, cached, now=10_000.0)
    scripted.run_until(1.5)
    marks = {"load_start": scripted.mark("load_start")}
    scripted.run_for(0.4)
    marks["load_end"] = scripted.mark("load_end")
    scripted.run_for(0.3)
    marks["warmup_end"] = scripted.mark("warmup_end")
    spans = []
    for _ in range(2):
        start = scripted.clock()
        scripted.run_for(0.1)
        first = scripted.clock()
        scripted.run_for(0.6)
        spans.append(Span(start, first, scripted.clock()))
        scripted.run_for(0.05)
    marks["repeat_0_end"] = scripted.mark("repeat_0_end")
    return scripted, marks, spans


# idle 60 W to 1.5 s, load 150 W, warm-up 400 W, then prefill 500 W / decode 300 W / gaps 100 W
PHASED = PowerProfile(
    (
        (1.5, 60.0), (0.4, 150.0), (0.3, 400.0),
        (0.1, 500.0), (0.6, 300.0), (0.05, 100.0),
        (0.1, 500.0), (0.6, 300.0), (0.05, 100.0),
        (5.0, 60.0),
    )
)  # fmt: skip


def test_phases_add_up_to_the_truth_within_their_uncertainty() -> None:
    gpu = FakeGpu(profile=PHASED)
    scripted, marks, spans = scripted_run(gpu)

    energy, _, _ = build_energy(
        scripted.close(), [gpu.uuid], work(tuple(spans)), cross_check_threshold=0.1, now=0.0
    )

    phases: dict[str, PhaseEnergy] = {p.phase: p for p in energy.phases}
    truth = PHASED.energy_j(marks["load_start"], marks["repeat_0_end"])
    total = sum(p.energy_j for p in energy.phases)
    assert abs(total - truth) <= sum(p.energy_uncertainty_j for p in energy.phases)
    measured = sum(phases[name].energy_j for name in ("prefill", "decode", "between_batches"))
    assert measured == pytest.approx(energy.energy_j)
    for name, watts, seconds in (("prefill", 500, 0.2), ("decode", 300, 1.2)):
        assert phases[name].duration_s == pytest.approx(seconds, abs=1e-9)
        assert abs(phases[name].energy_j - watts * seconds) <= phases[name].energy_uncertainty_j
    assert phases["load"].energy_j == pytest.approx(
        150 * 0.4, abs=phases["load"].energy_uncertainty_j
    )


def test_per_request_energy_is_steady_state_decode_joules_per_token() -> None:
    gpu = FakeGpu(profile=PHASED)
    scripted, _, spans = scripted_run(gpu)

    energy, _, _ = build_energy(
        scripted.close(), [gpu.uuid], work(tuple(spans), tokens=(9, 5)), cross_check_threshold=0.1,
        now=0.0,
    )  # fmt: skip

    decode = next(p for p in energy.phases if p.phase == "decode")
    per_token = decode.energy_j / (9 + 5 - 2)  # each request's first token is prefill's
    assert energy.per_request_energy_j == pytest.approx([9 * per_token, 5 * per_token])
    assert energy.per_request_basis == "raw"


def test_a_measured_baseline_is_the_idle_power_and_adjusts_the_energy() -> None:
    gpu = FakeGpu(profile=PHASED)
    scripted, marks, spans = scripted_run(gpu, baseline_s=0.5)  # in the idle 60 W before load
    assert marks["load_start"] == pytest.approx(1.5)

    energy, _, _ = build_energy(
        scripted.close(), [gpu.uuid], work(tuple(spans)), cross_check_threshold=0.1, now=0.0
    )

    (baseline,) = energy.baselines
    assert baseline.power_w == pytest.approx(60.0, abs=baseline.power_uncertainty_w)
    assert energy.adjusted_energy_j is not None
    assert energy.adjusted_energy_j == pytest.approx(
        energy.energy_j - baseline.power_w * energy.window_s
    )


@settings(max_examples=30, deadline=None)
@given(idle_w=st.floats(0.0, 2000.0))
def test_a_baseline_never_makes_energy_negative(idle_w: float) -> None:
    gpu = FakeGpu(profile=PHASED)
    cached = (Baseline(gpu.uuid, idle_w, 1.0, 5.0, 9_990.0, "cached"),)
    scripted, _, spans = scripted_run(gpu, cached=cached)

    energy, repeats, _ = build_energy(
        scripted.close(), [gpu.uuid], work(tuple(spans)), cross_check_threshold=0.1, now=0.0
    )

    assert energy.adjusted_energy_j is not None
    assert energy.adjusted_energy_j >= 0
    assert energy.adjusted_energy_per_output_token_j is not None
    assert energy.adjusted_energy_per_output_token_j >= 0
    assert all(r.adjusted_energy_j is not None and r.adjusted_energy_j >= 0 for r in repeats)
    assert all(x >= 0 for x in energy.per_request_energy_j)
    assert energy.baselines[0].reused
