"""The idle baseline: settling, what it records, the reuse rule and its drift term, in
simulated time over scripted GPUs (a GPU still warm from earlier work cools as it idles)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest
from llem_client import BaselineConfig, BaselineInfo, Estimate
from llem_service.energy.base import Baseline
from llem_service.energy.baseline import (
    DRIFT_HORIZON_S,
    BaselineCache,
    power_estimate,
    refusal,
    take_after,
    take_baselines,
)
from llem_service.energy.sensors import SensorTable

from tests.fake_nvml import FakeGpu, LiveProfile, PowerProfile, ScriptedSession

NOW = 1_700_000_000.0


def session(gpu: FakeGpu) -> ScriptedSession:
    return ScriptedSession([gpu], interval_ms=50)


def test_a_cold_gpu_settles_at_the_first_fit_and_its_state_is_recorded() -> None:
    scripted = session(FakeGpu(profile=PowerProfile(((1000.0, 65.0),)), temperature_c=(38, 0.0)))
    plan = BaselineConfig(duration_s=4.0)

    (baseline,) = take_baselines(scripted.session, plan, (), now=NOW).baselines

    assert baseline.settled
    assert baseline.settle_s == pytest.approx(0.0, abs=1e-6)
    assert baseline.duration_s == pytest.approx(4.0)
    assert baseline.power_w == pytest.approx(65.0, rel=0.01)
    assert baseline.trend_w_per_s == pytest.approx(0.0, abs=1e-9)
    assert baseline.temperature_c == 38
    assert baseline.power_limit_w == 700.0
    assert baseline.driver_version == "550.54.15"
    assert baseline.measured_at == NOW  # wall-clock, for the reuse rule's age
    assert not baseline.warnings
    # the trend is fitted over 15 s: that long has passed, no more
    assert scripted.now() == pytest.approx(15.0 + 0.6, abs=0.7)


def test_a_warm_gpu_is_waited_for_and_its_baseline_holds_the_settled_idle_power() -> None:
    idle = LiveProfile(70.0, warm_w=25.0, cool_tau_s=10.0, warm_at_start=True)
    scripted = session(FakeGpu(profile=idle))
    plan = BaselineConfig(duration_s=4.0, settle_max_s=120.0)

    (baseline,) = take_baselines(scripted.session, plan, (), now=NOW).baselines
    meta = scripted.session.metas[0]
    estimate = power_estimate(baseline, None, meta)

    assert baseline.settled
    assert baseline.settle_s > 20  # 25 W decaying with tau 10 s falls under 0.05 W/s at ~60 s
    assert abs(baseline.trend_w_per_s or 0.0) <= plan.settle_trend_w_per_s
    assert abs(estimate.value - 70.0) <= estimate.expanded()


def test_the_cap_warns_and_the_drift_term_covers_what_is_still_to_fall() -> None:
    idle = LiveProfile(70.0, warm_w=40.0, cool_tau_s=30.0, warm_at_start=True)
    scripted = session(FakeGpu(profile=idle))
    plan = BaselineConfig(duration_s=4.0, settle_max_s=10.0)

    (baseline,) = take_baselines(scripted.session, plan, (), now=NOW).baselines
    estimate = power_estimate(baseline, None, scripted.session.metas[0])

    assert not baseline.settled
    (code, message), *_ = baseline.warnings
    assert code == "baseline_not_settled"
    assert "baseline.settle_max_s" in message
    assert baseline.drift_bound_w >= abs(baseline.trend_w_per_s or 0) * DRIFT_HORIZON_S
    # still 70 W + a warm part, but the stated uncertainty reaches the settled idle power
    assert baseline.power_w > 75.0
    assert abs(estimate.value - 70.0) <= estimate.expanded()


KEPT = Baseline(
    device_uuid="GPU-a", power_w=60.0, random_std_w=0.1, duration_s=10.0,
    measured_at=NOW - 100, method="counter", temperature_c=40.0, power_limit_w=700.0,
    driver_version="550.54.15",
)  # fmt: skip
PLAN = BaselineConfig(duration_s=10.0, max_age_s=3600, max_temperature_diff_c=5.0)


@pytest.mark.parametrize(
    ("kept", "state", "reason"),
    [
        (KEPT, {}, None),
        (dataclasses.replace(KEPT, warnings=(("baseline_gpu_busy", "x"),)), {}, "busy GPU"),
        (dataclasses.replace(KEPT, settled=False), {}, "had not settled"),
        (dataclasses.replace(KEPT, measured_at=NOW - 7200), {}, "7200 s old"),
        (dataclasses.replace(KEPT, duration_s=3.0), {}, "shorter than baseline.duration_s"),
        (KEPT, {"temperature_c": 52.0}, "12 °C warmer"),
        (KEPT, {"temperature_c": 33.0}, "7 °C colder"),
        (KEPT, {"temperature_c": 44.0}, None),
        (KEPT, {"power_limit_w": 500.0}, "power limit changed (700 W to 500 W)"),
        (KEPT, {"driver_version": "560.28.03"}, "driver changed (550.54.15 to 560.28.03)"),
    ],
)
def test_the_reuse_rule(kept: Baseline, state: dict[str, object], reason: str | None) -> None:
    now_state = {
        "temperature_c": 41.0, "power_limit_w": 700.0, "driver_version": "550.54.15", **state
    }  # fmt: skip

    why = refusal(kept, PLAN, now=NOW, **now_state)  # type: ignore[arg-type]

    if reason is None:
        assert why is None
    else:
        assert why is not None
        assert reason in why


def test_a_kept_baseline_is_reused_while_it_holds_and_measured_again_when_the_gpu_warmed() -> None:
    gpu = FakeGpu(profile=PowerProfile(((1000.0, 65.0),)), temperature_c=(40, 0.0))
    kept = dataclasses.replace(KEPT, device_uuid=gpu.uuid)
    plan = BaselineConfig(duration_s=2.0, settle_max_s=0)

    reused = take_baselines(session(gpu).session, plan, (kept,), now=NOW)
    warm = dataclasses.replace(gpu, temperature_c=(49, 0.0))
    remeasured = take_baselines(session(warm).session, plan, (kept,), now=NOW)

    assert reused.reused == {gpu.uuid}
    assert reused.baselines == (kept,)
    assert remeasured.reused == frozenset()
    (fresh,) = remeasured.baselines
    assert fresh.power_w == pytest.approx(65.0, rel=0.01)
    assert "not reused: the GPU is 9 °C warmer" in fresh.method


def test_a_reused_baseline_counts_how_far_idle_power_may_have_moved_with_temperature() -> None:
    # Taken at 40 °C; the GPU is at 44 °C now, within the reuse rule's 5 °C, but its idle
    # power is not the same: up to 2% of it per °C.
    exact = SensorTable.with_overrides({"Fake H100": {"gain_rel": 0.0, "offset_w": 0.0}})
    gpu = FakeGpu(profile=PowerProfile(((1000.0, 62.0),)), temperature_c=(44, 0.0))
    kept = dataclasses.replace(KEPT, device_uuid=gpu.uuid)
    scripted = ScriptedSession([gpu], interval_ms=50, sensors=exact)

    chosen = take_baselines(scripted.session, PLAN, (kept,), now=NOW)

    assert chosen.reused == {gpu.uuid}
    (reused,) = chosen.baselines
    assert reused.reuse_bound_w == pytest.approx(0.02 * 4 * 60.0)
    estimate = power_estimate(reused, None, scripted.session.metas[0])
    assert "baseline_reuse" in {name for name, _ in estimate.by_term()}
    assert abs(estimate.value - 62.0) <= estimate.expanded()  # idle now, 3% above then


def test_idle_again_after_the_window_gives_the_drift_and_widens_the_baseline() -> None:
    scripted = session(FakeGpu(profile=PowerProfile(((30.0, 60.0), (1000.0, 66.0)))))
    plan = BaselineConfig(duration_s=2.0, settle_max_s=0, when="before_and_after")
    before = take_baselines(scripted.session, plan, (), now=NOW)
    scripted.advance(30.0)

    (after,) = take_after(scripted.session, plan, now=NOW)
    meta = scripted.session.metas[0]
    (first,) = before.baselines
    alone = power_estimate(first, None, meta)
    with_drift = power_estimate(first, after, meta)

    assert after.power_w - first.power_w == pytest.approx(6.0, rel=0.05)
    assert with_drift.value == alone.value
    assert with_drift.expanded("systematic") > alone.expanded("systematic")
    assert with_drift.expanded() >= 6.0  # the drift is inside the stated uncertainty


def test_idle_after_a_loaded_window_without_a_counter_is_bounded_by_its_own_readings() -> None:
    # No counter: idle is integrated from the readings of the idle window alone. The full-load
    # peak before it (500 W) and a 0 W reading inside it have no say in its uncertainty.
    gpu = FakeGpu(
        profile=PowerProfile(((10.0, 500.0), (1000.0, 80.0))),
        unsupported=frozenset({"energy"}),
        zero_readings=(("power_instant", 0.05),),
    )
    scripted = session(gpu)
    scripted.advance(12.0)
    plan = BaselineConfig(duration_s=4.0, settle_max_s=0)

    (after,) = take_after(scripted.session, plan, now=NOW)
    estimate = power_estimate(after, None, scripted.session.metas[0])

    assert "integrated power samples" in after.method
    assert after.power_w == pytest.approx(80.0, rel=0.02)
    assert estimate.expanded("random") < 5.0  # was +/- hundreds of watts
    assert abs(estimate.value - 80.0) <= estimate.expanded()


def test_the_cache_keeps_only_clean_settled_measured_baselines() -> None:
    def info(uuid: str, **flags: bool) -> BaselineInfo:
        return BaselineInfo(
            device_uuid=uuid,
            power_w=Estimate(value=60.0, random=0.4, systematic=3.0, total=3.03),
            method="counter",
            duration_s=10.0,
            measured_at=datetime.now(timezone.utc),
            age_s=0.0,
            settle_s=0.0,
            drift_bound_w=1.5,
            temperature_c=41.0,
            **{"reused": False, "settled": True, **flags},
        )

    cache = BaselineCache()
    cache.update(
        [
            info("GPU-a"),
            info("GPU-b", contaminated=True),
            info("GPU-c", reused=True),
            info("GPU-d", settled=False),
        ]
    )

    (kept,) = cache.all()
    assert kept.device_uuid == "GPU-a"
    assert (kept.power_w, kept.random_std_w, kept.drift_bound_w) == (60.0, 0.2, 1.5)
    assert kept.temperature_c == 41.0
