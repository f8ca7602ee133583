"""When repeats stop: a fixed count, or the 95% interval of the mean narrow enough."""

from __future__ import annotations

import pytest
from llem_client import RepeatsConfig
from llem_service.experiment.repeats import RepeatPolicy, Statistic, ci_rel

STAT: Statistic = "energy_per_output_token_j"


def test_a_number_runs_exactly_that_many() -> None:
    policy = RepeatPolicy(3)

    assert policy.decide(STAT, [1.0, 1.0]) is None
    stop = policy.decide(STAT, [1.0, 1.0, 1.0])
    assert stop is not None
    assert stop.reason == "fixed"
    assert policy.warning(stop) is None


def test_the_interval_is_students_t_over_the_mean() -> None:
    # mean 10, sample std 1, n 4: half-width t(0.975, 3) x 1 / 2 = 1.5912
    assert ci_rel([9.0, 11.0, 9.0, 11.0]) == pytest.approx(3.1824 * (4 / 3) ** 0.5 / 2 / 10)
    assert ci_rel([5.0]) is None


def test_agreement_finer_than_the_counter_can_resolve_proves_nothing() -> None:
    assert ci_rel([2.0, 2.0, 2.0]) == 0.0
    assert ci_rel([2.0, 2.0, 2.0], floor_std=0.1) == pytest.approx(4.3027 * 0.1 / 3**0.5 / 2)


def test_the_object_form_stops_at_the_target_not_before_min() -> None:
    policy = RepeatPolicy(RepeatsConfig(min=3, max=10, target_ci_rel=0.05))
    steady = [1.00, 1.01]

    assert policy.decide(STAT, steady) is None  # under min, however narrow
    stop = policy.decide(STAT, [*steady, 1.0])
    assert stop is not None
    assert (stop.reason, stop.statistic) == ("target_reached", STAT)
    assert stop.achieved_ci_rel is not None
    assert stop.achieved_ci_rel < 0.05


def test_max_stops_a_noisy_run_and_says_so() -> None:
    policy = RepeatPolicy(RepeatsConfig(min=2, max=4, target_ci_rel=0.01))
    noisy = [1.0, 1.5, 0.7]

    assert policy.decide(STAT, noisy) is None
    stop = policy.decide(STAT, [*noisy, 1.3])
    assert stop is not None
    assert stop.reason == "max_reached"
    warning = policy.warning(stop)
    assert warning is not None
    code, message = warning
    assert code == "repeats_target_not_reached"
    assert "repeats.max (4)" in message
    assert "raise repeats.max" in message.lower()
