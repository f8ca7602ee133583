"""Per-request energy: the per-step split adds up to the window, raw and adjusted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llem_service.energy.figures import Batch, Span, Work
from llem_service.energy.integrate import PowerCurve
from llem_service.energy.phases import PhaseSplit, gaps_s
from llem_service.energy.requests import attribute, per_token_percentiles, steady_state
from llem_service.energy.uncertainty import Estimate, Source

from tests.energy_scenarios import SCENARIOS
from tests.energy_truth import published

batch_shapes = st.lists(
    st.lists(st.tuples(st.integers(1, 512), st.integers(1, 40)), min_size=1, max_size=6),
    min_size=1,
    max_size=5,
)


def work_of(shapes: list[list[tuple[int, int]]]) -> Work:
    """Batches back to back with 10 ms gaps, prefill 20 ms, each step 5 ms."""
    batches, t = [], 0.0
    for shape in shapes:
        t += 0.01
        inputs = tuple(i for i, _ in shape)
        outputs = tuple(o for _, o in shape)
        first = t + 0.02
        steps = tuple(first + 0.005 * (k + 1) for k in range(max(outputs) - 1))
        end = steps[-1] if steps else first
        batches.append(Batch(Span(t, first, end), inputs, outputs, steps))
        t = end
    return Work(tuple(batches))


def split_of(work: Work, end: float) -> PhaseSplit:
    """A split whose parts are known exactly, with one error source each."""
    n = len(work.batches)
    prefill = tuple(Estimate(3.0 * (i + 1), {Source("a", "random", str(i)): 0.1}) for i in range(n))
    decode = tuple(Estimate(7.0 * (i + 1), {Source("b", "random", str(i)): 0.2}) for i in range(n))
    gaps = gaps_s(work, 0.0, end)
    between = tuple(Estimate(g * 100.0) for g in gaps)
    window = sum((p + d + b for p, d, b in zip(prefill, decode, between, strict=True)), Estimate(0))
    return PhaseSplit(
        method="prefill_passes", window=window, prefill=sum(prefill, Estimate(0)),
        decode=sum(decode, Estimate(0)), between=sum(between, Estimate(0)),
        prefill_batches=prefill, decode_batches=decode, between_batches=between, gap_s=gaps,
        prefill_time_s=sum(b.prefill_s for b in work.batches),
        decode_time_s=sum(b.decode_s for b in work.batches),
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(shapes=batch_shapes, tail=st.floats(0.0, 0.5))
def test_requests_add_up_to_the_window_in_energy_and_time(
    shapes: list[list[tuple[int, int]]], tail: float
) -> None:
    work = work_of(shapes)
    end = work.batches[-1].span.end + tail
    phases = split_of(work, end)

    figures = attribute(work, phases, PowerCurve([], []))
    idle = Estimate(50.0, {Source("idle", "systematic"): 1.0})
    adjusted = figures.adjusted(idle)

    assert len(figures.energy) == sum(len(s) for s in shapes)
    assert sum(e.value for e in figures.energy) == pytest.approx(phases.window.value)
    assert sum(figures.time_s) == pytest.approx(end)
    assert sum(a.value for a in adjusted) == pytest.approx(phases.window.value - 50.0 * end)
    assert all(e.value > 0 for e in figures.energy)


def test_a_step_is_split_among_the_requests_still_generating() -> None:
    # One batch: A stops after 2 tokens (1 step), B after 4 (3 steps); equal prompts.
    work = work_of([[(10, 2), (10, 4)]])
    end = work.batches[0].span.end
    phases = split_of(work, end)

    a, b = attribute(work, phases, PowerCurve([], [])).energy

    prefill, decode = phases.prefill_batches[0].value, phases.decode_batches[0].value
    gap = phases.between_batches[0].value
    # 3 equal steps: the first shared, the other two B's alone
    assert a.value == pytest.approx(prefill / 2 + decode / 3 / 2 + gap / 2)
    assert b.value == pytest.approx(prefill / 2 + decode * (1 / 6 + 2 / 3) + gap / 2)


def test_fixed_length_requests_carry_no_step_power_term() -> None:
    work = work_of([[(10, 5), (30, 5)]])
    ragged = work_of([[(10, 2), (30, 5)]])
    times = [k * 0.001 for k in range(200)]
    curve = PowerCurve(times, [300.0 + 100.0 * (k % 2) for k in range(200)])  # a 100 W swing
    figures = attribute(work, split_of(work, work.batches[0].span.end), curve)

    terms = [name for e in figures.energy for name, _ in e.by_term() if name == "step_power"]
    uneven = attribute(ragged, split_of(ragged, ragged.batches[0].span.end), curve)

    assert terms == []
    assert any(("step_power", "systematic") in e.by_term() for e in uneven.energy)


def test_percentiles_of_j_per_token_and_the_steady_state_figure() -> None:
    energy = tuple(Estimate(v, {Source("q", "random", str(i)): 0.1 * i}) for i, v in
                   enumerate([10.0, 20.0, 30.0, 40.0]))  # fmt: skip
    tokens = (10, 10, 10, 10)

    pct = per_token_percentiles(energy, tokens)

    assert pct.p50.value == pytest.approx(2.5)
    assert pct.p90.value == pytest.approx(3.7)
    assert pct.mean.value == pytest.approx(2.5)
    # sorting may reorder the truths: the median lies between the medians of the truths'
    # lower and upper ends (expanded 0.02 and 0.04 either side of 2 and 3: 2.5 +/- 0.03)
    assert pct.p50.expanded() == pytest.approx(0.03)

    work = work_of([[(10, 10), (10, 10)]])
    per_token, per_request = steady_state(split_of(work, work.batches[0].span.end), (10, 10))
    assert per_token.value == pytest.approx(7.0 / 18)
    assert [e.value for e in per_request] == pytest.approx([70.0 / 18] * 2)


def test_in_a_prefill_heavy_workload_requests_add_up_and_prefill_is_not_lost() -> None:
    result, truth = SCENARIOS["prefill_heavy"].draw(7).execute()

    figures = published(result)
    energy = result.energy
    assert energy is not None
    assert energy.requests is not None
    assert energy.energy_j is not None
    total = sum(e.value for e in energy.requests.energy_j)
    steady = energy.requests.steady_state

    assert total == pytest.approx(energy.energy_j.value, rel=1e-9)
    # ML.ENERGY's steady-state figure leaves prefill out: in this workload, most of it
    assert steady is None or sum(e.value for e in steady.energy_j) < 0.7 * total
    truths = truth.values()["requests.energy_j"]
    assert isinstance(truths, list)
    for estimate, true in zip(figures["requests.energy_j"], truths, strict=True):
        assert abs(estimate.value - true) <= estimate.total


def test_a_percentile_is_as_uncertain_as_its_envelope_not_as_the_widest_request() -> None:
    # One request far above the median is very uncertain; the median is not: whatever its
    # truth within 3.0 +/- 0.5, it stays above the middle request's.
    def known(value: float, expanded: float, scope: str) -> Estimate:
        return Estimate(value).with_std(Source("batch_split", "random", scope), expanded / 2)

    energy = (known(1.0, 0.01, "a"), known(2.0, 0.01, "b"), known(3.0, 0.5, "c"))

    shown = per_token_percentiles(energy, (1, 1, 1))

    assert shown.p50.value == pytest.approx(2.0)
    assert shown.p50.expanded() == pytest.approx(0.01)  # was 0.5, the widest request's
    # the top quantile does take the uncertain request's envelope
    assert shown.p99.expanded() == pytest.approx(0.5, rel=0.05)
