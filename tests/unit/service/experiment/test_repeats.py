"""When repeats stop: a fixed count, or the 95% interval of the mean narrow enough."""

from __future__ import annotations

import pytest
from llem_client import RepeatsConfig
from llem_service.backends.base import WorkloadReport
from llem_service.energy.base import Baseline, CounterMark, DeviceMeta
from llem_service.energy.baseline import BaselineSet
from llem_service.experiment.repeats import RepeatPolicy, Statistic, StopFigure, ci_rel

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


def gpu(uuid: str, *, counter: bool = True) -> DeviceMeta:
    return DeviceMeta(
        uuid=uuid,
        name="NVIDIA H100",
        nvml_index=0,
        memory_total_bytes=80 << 30,
        power_limit_w=700.0,
        persistence_mode=True,
        has_energy_counter=counter,
        counter_update_period_s=0.1 if counter else None,
        power_field="instant",
    )


def workload(output_tokens: int, duration_s: float = 2.0) -> WorkloadReport:
    return WorkloadReport(
        n_requests=1,
        input_tokens=10,
        output_tokens_per_request=(output_tokens,),
        duration_s=duration_s,
        batch_latencies_s=(duration_s,),
        prefill_time_s=0.1,
        decode_time_s=duration_s - 0.1,
        ttft_s=(0.1,),
        itl_s=(),
        hook_overhead_s=0.0,
        prefill_flops=0,
        decode_flops=0,
        flops_method="none",
    )


def marks(*readings: tuple[float, dict[str, int | None]]) -> list[CounterMark]:
    """``warmup_end`` then ``repeat_0_end``, ``repeat_1_end``... at (t_s, counters)."""
    labels = ["warmup_end", *(f"repeat_{i}_end" for i in range(len(readings) - 1))]
    return [
        CounterMark(label=label, t_s=t, energy_mj=energy)
        for label, (t, energy) in zip(labels, readings, strict=True)
    ]


def test_the_stop_figure_sums_only_the_gpus_that_count() -> None:
    # Two GPUs metered, the model on one: the idle one's energy is no part of J/token.
    figure = StopFigure.choose([gpu("a"), gpu("b")], ["a"], BaselineSet())
    history = marks((0.0, {"a": 0, "b": 0}), (2.0, {"a": 600_000, "b": 120_000}))

    measured = figure.value(history, workload(100), 0)

    assert figure.statistic == "energy_per_output_token_j"
    assert measured is not None
    assert measured[0] == pytest.approx(6.0)  # 600 J / 100 tokens, GPU b left out


def test_a_repeat_whose_counter_reset_has_no_value_never_one_in_another_unit() -> None:
    figure = StopFigure.choose([gpu("a")], ["a"], BaselineSet())
    history = marks(
        (0.0, {"a": 0}), (2.0, {"a": 600_000}), (4.0, {"a": 1_000}), (6.0, {"a": 601_000})
    )

    values = [figure.value(history, workload(100), r) for r in range(3)]

    assert [v[0] if v else None for v in values] == [pytest.approx(6.0), None, pytest.approx(6.0)]


def test_the_stop_figure_is_adjusted_only_when_every_counted_gpu_has_a_baseline() -> None:
    idle = Baseline("a", power_w=60.0, random_std_w=0.1, duration_s=4.0, measured_at=0.0,
                    method="test")  # fmt: skip
    adjusted = StopFigure.choose([gpu("a"), gpu("b")], ["a"], BaselineSet(baselines=(idle,)))
    raw = StopFigure.choose([gpu("a"), gpu("b")], ["a", "b"], BaselineSet(baselines=(idle,)))
    history = marks((0.0, {"a": 0, "b": 0}), (2.0, {"a": 600_000, "b": 600_000}))

    value = adjusted.value(history, workload(100), 0)

    assert adjusted.statistic == "adjusted_energy_per_output_token_j"
    assert value is not None
    assert value[0] == pytest.approx((600.0 - 60.0 * 2.0) / 100)
    assert raw.statistic == "energy_per_output_token_j"


def test_a_counted_gpu_without_a_counter_stops_on_tokens_per_second_from_the_start() -> None:
    figure = StopFigure.choose([gpu("a"), gpu("b", counter=False)], ["a", "b"], BaselineSet())

    assert figure.statistic == "tokens_per_second"
    assert figure.value([], workload(100, duration_s=2.0), 0) == (50.0, 0.0)
