"""Monte-Carlo coverage: every published energy figure, in every scenario of the library,
contains the truth within its stated uncertainty in at least 95% of runs; a figure the
scenario cannot support is null, with a warning, in every run.

Each run is a whole experiment through `run_experiment`, the real NVML meter and the real
report, in simulated time over scripted GPUs with realistic sensors (`tests.energy_scenarios`):
counter and power field at random phases, part-time sensing, field lag and noise, sensor gains
drawn within the stated accuracy. Two modes: ``calibrated`` (the sensor errs within the
accuracy the table states) and ``ideal`` (the sensor is exact and the meter is told so), which
tests every other term without the generous calibration bound to hide behind.

The default tier runs a few fixed seeds per scenario (seconds; a broken term fails it), the
``montecarlo`` variant many (``scripts/test -m montecarlo``, about 5 minutes);
``benchmarks/energy_coverage.py`` records the figures of both the new and the old method.
"""

from __future__ import annotations

import pytest

from tests.energy_scenarios import SCENARIOS, Scenario
from tests.energy_truth import Tally, tally

FAST_RUNS = 3
SLOW_RUNS = 100
COVERAGE = 0.95

#: Figures each scenario must publish (not null) in every run: the library's point is that
#: these are bounded honestly, so a test that nulled everything would fail here.
WINDOW = {"energy_j", "energy_per_output_token_j", "adjusted_energy_j",
          "adjusted_energy_per_output_token_j", "baseline_power_w", "phase.prefill",
          "phase.decode", "repeat.energy_j", "device.energy_j",
          "device.adjusted_energy_j"}  # fmt: skip
REQUESTS = {"requests.energy_j", "requests.adjusted_energy_j", "requests.j_per_token",
            "requests.adjusted_j_per_token"}  # fmt: skip
REQUIRED: dict[str, set[str]] = {
    "steady_decode": WINDOW | REQUESTS | {"requests.steady_state_j_per_token"},
    "prefill_heavy": WINDOW | REQUESTS,
    "short_window": {"baseline_power_w"},
    "bursty": WINDOW,
    "warm_baseline": WINDOW | REQUESTS,
    "periodic_at_sensor_period": {"baseline_power_w", "phase.load"},
    "periodic_near_sensor_period": WINDOW - {"phase.prefill"},
    "multi_gpu": WINDOW | REQUESTS,
    "flaky_counter": WINDOW | REQUESTS,
    "no_counter_failed_reads": (WINDOW - {"phase.prefill"}) | REQUESTS,
}
#: Figures a scenario cannot support: null (with a warning) in every run.
UNBOUNDED: dict[str, set[str]] = {
    "short_window": {"energy_j", "energy_per_output_token_j", "requests.energy_j"},
    "periodic_at_sensor_period": {
        "energy_j",
        "energy_per_output_token_j",
        "phase.decode",
        "requests.energy_j",
    },
}


def check(name: str, scenario: Scenario, result: Tally, *, required: bool = True) -> None:
    for figure in result.figures():
        coverage = result.coverage(figure)
        if coverage is not None:
            assert coverage >= COVERAGE, (
                f"{name}: {figure} covered the truth in {coverage:.1%} of "
                f"{result.published[figure]} published values"
            )
    if required:
        for figure in REQUIRED[name]:
            assert result.nulls.get(figure, 0) == 0, f"{name}: {figure} was null"
    for figure in UNBOUNDED.get(name, ()):
        assert result.published.get(figure, 0) == 0, f"{name}: {figure} was published"
    assert result.silent_nulls == 0, f"{name}: a figure was null without a warning saying why"


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "ideal"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_published_figures_cover_the_truth(name: str, calibrated: bool) -> None:
    scenario = SCENARIOS[name]

    result = tally(scenario, range(FAST_RUNS), calibrated=calibrated)

    check(name, scenario, result)


@pytest.mark.montecarlo
@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "ideal"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_published_figures_cover_the_truth_over_many_runs(name: str, calibrated: bool) -> None:
    scenario = SCENARIOS[name]

    result = tally(scenario, range(1000, 1000 + SLOW_RUNS), calibrated=calibrated)

    # Over many runs a borderline figure may be null now and then: coverage is the claim.
    check(name, scenario, result, required=False)
