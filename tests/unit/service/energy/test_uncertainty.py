"""Linear propagation of error sources: what every figure's uncertainty is built with."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llem_service.energy.uncertainty import COVERAGE_FACTOR, Estimate, Source, interpolate

GAIN = Source("sensor_gain", "systematic", "H100")
READ_A = Source("counter_quantisation", "random", "gpu@a")
READ_B = Source("counter_quantisation", "random", "gpu@b")


def test_a_bound_enters_as_a_rectangular_distribution() -> None:
    estimate = Estimate.bounded(10.0, READ_A, 3.0)

    assert estimate.std() == pytest.approx(3.0 / math.sqrt(3))
    # k = 2 over a rectangular bound covers it whole
    assert estimate.expanded() == pytest.approx(COVERAGE_FACTOR * 3.0 / math.sqrt(3))
    assert estimate.expanded() > 3.0


def test_one_source_shared_by_two_figures_adds_linearly_and_distinct_ones_in_quadrature() -> None:
    first = Estimate(100.0, {GAIN: 2.0, READ_A: 1.0})
    second = Estimate(50.0, {GAIN: 1.0, READ_B: 1.0})

    total = first + second

    assert total.value == 150.0
    assert total.std() == pytest.approx(math.sqrt(3.0**2 + 1.0 + 1.0))


def test_a_difference_cancels_what_both_share() -> None:
    window = Estimate(100.0, {READ_A: -1.0, READ_B: 1.0, GAIN: 5.0})
    baseline_energy = Estimate(20.0, {GAIN: 1.0})

    adjusted = window - baseline_energy

    assert adjusted.value == 80.0
    assert dict(adjusted.terms)[GAIN] == pytest.approx(4.0)
    assert adjusted.std("random") == pytest.approx(math.sqrt(2))


@given(
    values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6),
    scale=st.floats(0.01, 100),
)
def test_scaling_scales_every_part(values: list[float], scale: float) -> None:
    estimate = Estimate(1.0, {Source(f"t{i}", "random", ""): v for i, v in enumerate(values)})

    scaled = estimate * scale / 1.0

    assert scaled.std() == pytest.approx(estimate.std() * scale, rel=1e-9, abs=1e-12)


def test_the_wire_form_splits_random_and_systematic_and_adds_them_in_quadrature() -> None:
    estimate = Estimate(10.0, {GAIN: 0.3, READ_A: 0.4})

    wire = estimate.wire()

    assert wire.value == 10.0
    assert wire.random == pytest.approx(0.8)
    assert wire.systematic == pytest.approx(0.6)
    assert wire.total == pytest.approx(1.0)


def test_terms_group_their_sources_for_the_budget() -> None:
    estimate = Estimate(10.0, {READ_A: 3.0, READ_B: 4.0, GAIN: 1.0})

    assert estimate.by_term() == {
        ("counter_quantisation", "random"): pytest.approx(5.0),
        ("sensor_gain", "systematic"): pytest.approx(1.0),
    }
    assert estimate.std_without(["counter_quantisation"]) == pytest.approx(1.0)


def test_relative_uncertainty_of_zero_is_infinite_unless_exact() -> None:
    assert Estimate(0.0).relative() == 0.0
    assert Estimate(0.0, {READ_A: 1.0}).relative() == math.inf
    assert Estimate(-4.0, {READ_A: 1.0}).relative() == pytest.approx(0.5)


def test_a_quantile_interpolates_values_and_their_errors() -> None:
    ordered = [Estimate(1.0, {READ_A: 1.0}), Estimate(3.0, {READ_B: 1.0})]

    median = interpolate(ordered, 0.5)

    assert median.value == 2.0
    assert median.std() == pytest.approx(math.sqrt(0.5))
