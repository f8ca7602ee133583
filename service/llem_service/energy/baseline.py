"""The idle baseline: wait for idle power to settle, measure it, decide when a kept one may be
reused, and what it contributes to the uncertainty. The whole rule lives here.

Settling: a GPU still warm from earlier work reads high at idle, and its idle power falls for
tens of seconds (MEASUREMENT.md). So the idle window slides: every quarter of
``baseline.duration_s`` the counters are read, and once ``TREND_WINDOW_S`` (or the window, if
longer) lies behind, the slope of the sampled power over that trailing time is fitted. The
first time the slope is under ``baseline.settle_trend_w_per_s``, the last
``baseline.duration_s`` is the baseline; once ``baseline.settle_max_s`` has passed, the last
window is taken anyway, with a warning. A cold GPU settles at the first fit. With
``settle_max_s=0`` there is no settling: the trend is fitted over the window alone.

What may still move after that is a systematic error, ``baseline_drift``: the fitted slope
plus two standard errors (the trend the fit cannot rule out), times ``DRIFT_HORIZON_S``, the
thermal time over which idle power keeps falling; with ``baseline.when='before_and_after'``
also the measured drift. The trend is fitted over ``TREND_WINDOW_S`` because idle readings
are noisy: over a few seconds the fit could not rule out a slope worth many watts a minute
later.

Without a counter, idle power is integrated from the idle window's own readings and bounded
as any window without a counter is (`EnergyAccount.integration_bound_j`); a stretch without
readings is bounded by the range of the window's readings (the GPU is kept idle). The load
before the window has no say in it.

A kept baseline reused by a later experiment adds a systematic ``baseline_reuse`` term: idle
power rises with the GPU's temperature (leakage), so the difference between its temperature
now and when the baseline was taken, times `IDLE_POWER_PER_C_REL` of idle power, bounds how
far idle power has moved since (the reuse rule's ``max_temperature_diff_c`` where either
temperature is unknown).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from llem_client import BaselineConfig, BaselineInfo
from llem_client import Estimate as WireEstimate

from llem_service.energy.base import Baseline, DeviceMeta, MeterRecord, MeterSession
from llem_service.energy.figures import Warning
from llem_service.energy.uncertainty import Estimate, Source
from llem_service.energy.windows import (
    DEFAULT_COUNTER_PERIOD_S,
    FIELD_REFRESH_S,
    READINGS_TAIL_S,
    EnergyAccount,
    counter_window_std_j,
)

#: How far ahead a trend in idle power is extrapolated to bound what is still to come: the
#: thermal time constant of a GPU and its heatsink, tens of seconds (MEASUREMENT.md).
DRIFT_HORIZON_S = 60.0
#: The trailing time idle power's trend is fitted over, seconds.
TREND_WINDOW_S = 15.0
#: A baseline is contaminated when the GPU was busier than this during the idle window.
BASELINE_BUSY_PCT = 10
#: The idle window is read this many times per window length as it slides.
_STEPS_PER_WINDOW = 4
#: Power limits that differ by less than this are the same limit, watts.
_SAME_LIMIT_W = 1.0
#: Bound of how much idle power changes per degree C, relative to it. Leakage current grows
#: with temperature (roughly doubling every 20-30 C in CMOS) and is at most about half of a
#: data-centre GPU's idle power, so idle rises by up to about 1.5% per C; 2% is the bound
#: taken (assumed; hardware can measure it: idle power against temperature as a GPU cools).
IDLE_POWER_PER_C_REL = 0.02


@dataclass(frozen=True)
class BaselineSet:
    """The baselines an experiment uses, and which were reused."""

    baselines: tuple[Baseline, ...] = ()
    reused: frozenset[str] = frozenset()
    after: tuple[Baseline, ...] = ()

    def of(self, uuid: str) -> Baseline | None:
        return next((b for b in self.baselines if b.device_uuid == uuid), None)

    def after_of(self, uuid: str) -> Baseline | None:
        return next((b for b in self.after if b.device_uuid == uuid), None)

    def warnings(self) -> list[Warning]:
        return [w for b in (*self.baselines, *self.after) for w in b.warnings]


def refusal(
    kept: Baseline,
    plan: BaselineConfig,
    *,
    now: float,
    temperature_c: float | None,
    power_limit_w: float | None,
    driver_version: str | None,
) -> str | None:
    """Why a kept baseline may not stand in for a new measurement (None: it may)."""
    if kept.warnings:
        return "it was taken on a busy GPU"
    if not kept.settled:
        return "idle power had not settled when it was taken"
    age = now - kept.measured_at
    if not 0 <= age <= plan.max_age_s:
        return f"it is {age:.0f} s old (baseline.max_age_s is {plan.max_age_s:.0f})"
    if kept.duration_s < 0.9 * plan.duration_s:
        return f"its window ({kept.duration_s:.1f} s) is shorter than baseline.duration_s"
    if temperature_c is not None and kept.temperature_c is not None:
        diff = temperature_c - kept.temperature_c
        if abs(diff) > plan.max_temperature_diff_c:
            return (
                f"the GPU is {abs(diff):.0f} °C {'warmer' if diff > 0 else 'colder'} than then "
                f"(baseline.max_temperature_diff_c is {plan.max_temperature_diff_c:g})"
            )
    if (
        power_limit_w is not None
        and kept.power_limit_w is not None
        and abs(power_limit_w - kept.power_limit_w) >= _SAME_LIMIT_W
    ):
        return f"the power limit changed ({kept.power_limit_w:.0f} W to {power_limit_w:.0f} W)"
    if driver_version and kept.driver_version and driver_version != kept.driver_version:
        return f"the driver changed ({kept.driver_version} to {driver_version})"
    return None


def reuse_bound_w(kept: Baseline, temperature_c: float | None, plan: BaselineConfig) -> float:
    """How far idle power may have moved since ``kept`` was measured, from the GPU's
    temperature now against then (watts); the reuse rule's largest difference where either
    is unknown."""
    if temperature_c is None or kept.temperature_c is None:
        diff = plan.max_temperature_diff_c
    else:
        diff = abs(temperature_c - kept.temperature_c)
    return IDLE_POWER_PER_C_REL * diff * kept.power_w


def take_baselines(
    session: MeterSession,
    plan: BaselineConfig,
    kept: Sequence[Baseline],
    *,
    now: float,
) -> BaselineSet:
    """Each GPU's baseline: a kept one that the reuse rule accepts, else measured now (the
    caller keeps the GPUs idle)."""
    if not plan.enabled:
        return BaselineSet()
    state = session.device_state()
    chosen: dict[str, Baseline] = {}
    refused: dict[str, str] = {}
    latest = {b.device_uuid: b for b in sorted(kept, key=lambda b: b.measured_at)}
    for meta in session.metas:
        candidate = latest.get(meta.uuid)
        if candidate is None:
            continue
        device = state.get(meta.uuid)
        why = refusal(
            candidate,
            plan,
            now=now,
            temperature_c=device.temperature_c if device else None,
            power_limit_w=device.power_limit_w if device else None,
            driver_version=session.driver_version,
        )
        if why is None:
            chosen[meta.uuid] = replace(
                candidate,
                reuse_bound_w=reuse_bound_w(
                    candidate, device.temperature_c if device else None, plan
                ),
            )
        else:
            refused[meta.uuid] = why
    missing = [m for m in session.metas if m.uuid not in chosen]
    measured = measure(session, missing, plan, now=now, prefix="baseline") if missing else {}
    for uuid, why in refused.items():
        b = measured[uuid]
        measured[uuid] = replace(b, method=f"{b.method}; the kept baseline was not reused: {why}")
    return BaselineSet(
        baselines=tuple(chosen.get(m.uuid) or measured[m.uuid] for m in session.metas),
        reused=frozenset(chosen),
    )


def take_after(session: MeterSession, plan: BaselineConfig, *, now: float) -> tuple[Baseline, ...]:
    """Idle power again after the window (``baseline.when='before_and_after'``)."""
    taken = measure(session, list(session.metas), plan, now=now, prefix="baseline_after")
    return tuple(taken[m.uuid] for m in session.metas)


def measure(
    session: MeterSession,
    metas: Sequence[DeviceMeta],
    plan: BaselineConfig,
    *,
    now: float,
    prefix: str,
) -> dict[str, Baseline]:
    """Slide an idle window until every GPU's power has settled (or the cap); see the module
    docstring. Counter marks are labelled ``{prefix}_0``, ``{prefix}_1``..."""
    step = plan.duration_s / _STEPS_PER_WINDOW
    # Settling off (settle_max_s = 0): the trend is fitted over the window alone.
    trend_s = min(max(TREND_WINDOW_S, plan.duration_s), plan.duration_s + plan.settle_max_s)
    session.mark(f"{prefix}_0")
    first = session.snapshot().marks[-1].t_s
    k = 0
    while True:
        session.wait(step)
        k += 1
        session.mark(f"{prefix}_{k}")
        record = session.snapshot()
        clock_s = record.marks[-1].t_s
        if k < _STEPS_PER_WINDOW or clock_s - first < trend_s - 1e-9:
            continue
        trends = {m.uuid: _trend(record, m.uuid, clock_s - trend_s, clock_s) for m in metas}
        settled = all(t is None or abs(t[0]) <= plan.settle_trend_w_per_s for t in trends.values())
        waited = clock_s - first - trend_s
        if settled or waited + step > plan.settle_max_s:
            break
    # Readings run late: the power just before the last mark shows only after it, in a
    # reading stamped when the field refreshed.
    session.wait(READINGS_TAIL_S + FIELD_REFRESH_S)
    record = session.snapshot()
    start, end = record.mark(f"{prefix}_{k - _STEPS_PER_WINDOW}"), record.mark(f"{prefix}_{k}")
    return {
        m.uuid: _baseline(
            record, m, start.label, end.label, plan, now=now, waited_s=max(0.0, waited),
            settled=settled, trend=trends[m.uuid],
        )
        for m in metas
    }  # fmt: skip


def _trend(record: MeterRecord, uuid: str, t0: float, t1: float) -> tuple[float, float] | None:
    """Slope of the power readings over ``[t0, t1]`` and its standard error (W/s); None
    under three readings. The field refreshes every ~100 ms however often it is read, so the
    error counts one independent reading per refresh at most."""
    rows = record.timeline.device(uuid)
    pairs = [
        (t, p)
        for t, p in zip(rows.t_s, rows.power_w, strict=True)
        if p is not None and p > 0 and t0 <= t <= t1
    ]
    independent = min(len(pairs), int((t1 - t0) / FIELD_REFRESH_S))
    return _slope(pairs, independent)


def _slope(
    pairs: Sequence[tuple[float, float]], independent: int | None = None
) -> tuple[float, float] | None:
    """Least-squares slope and its standard error, the error counting ``independent``
    points at most."""
    n = independent if independent is not None else len(pairs)
    if len(pairs) < 3 or n < 3:
        return None
    xs = [t for t, _ in pairs]
    ys = [y for _, y in pairs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in pairs) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in pairs)
    se = math.sqrt(residual / (len(pairs) - 2) / sxx) * math.sqrt(len(pairs) / n)
    return slope, se


def _baseline(
    record: MeterRecord,
    meta: DeviceMeta,
    start_label: str,
    end_label: str,
    plan: BaselineConfig,
    *,
    now: float,
    waited_s: float,
    settled: bool,
    trend: tuple[float, float] | None,
) -> Baseline:
    start, end = record.mark(start_label), record.mark(end_label)
    window = end.t_s - start.t_s
    rows = record.timeline.device(meta.uuid)
    a, b = start.energy_mj.get(meta.uuid), end.energy_mj.get(meta.uuid)
    if a is not None and b is not None and b >= a and meta.has_energy_counter:
        power = (b - a) / 1e3 / window
        period = meta.counter_update_period_s or DEFAULT_COUNTER_PERIOD_S
        random_std = counter_window_std_j(power, period) / window
        method = "energy counter over an idle window"
    else:
        # Bounded as any window without a counter: by the idle window's own readings (the
        # load before it, or a failed read of 0 W, says nothing about idle power).
        account = EnergyAccount(record, [meta.uuid])
        curve = account.curves[meta.uuid]
        if not curve:
            raise ValueError(f"no power readings from {meta.uuid} to take a baseline")
        energy = curve.energy_j(start.t_s, end.t_s)
        power = energy / window
        integration_j = account.integration_bound_j(meta, start.t_s, end.t_s, energy)
        # A stretch without readings: the caller keeps the GPU idle (work would show in its
        # utilisation and process list), so it drew within the range of the window's readings.
        gaps = curve.uncovered(start.t_s, end.t_s, account.max_gap_s(meta))
        spread_w = (curve.peak_w(start.t_s, end.t_s) or power) - (
            curve.low_w(start.t_s, end.t_s) or power
        )
        gaps_j = sum(b - a for a, b in gaps) * spread_w
        random_std = math.hypot(integration_j, gaps_j) / math.sqrt(3) / window
        method = "integrated power samples over an idle window"
    drift = (abs(trend[0]) + 2 * trend[1]) * DRIFT_HORIZON_S if trend else 0.0
    temps = [
        (t, float(c))
        for t, c in zip(rows.t_s, rows.temperature_c, strict=True)
        if c is not None and start.t_s <= t <= end.t_s
    ]
    temp_trend = _slope(temps)
    warnings = _contamination(record, meta, start.t_s, end.t_s, start_label, end_label)
    if not settled:
        slope = f"{trend[0]:+.3f} W/s" if trend else "unknown"
        warnings.append(
            (
                "baseline_not_settled",
                f"Idle power of GPU {meta.uuid} was still moving ({slope}, threshold "
                f"{plan.settle_trend_w_per_s:g} W/s) after waiting {waited_s:.0f} s "
                "(baseline.settle_max_s): the GPU is still cooling from earlier work, so the "
                "baseline reads high and its drift term is wide. Let the GPU rest, or raise "
                "baseline.settle_max_s.",
            )
        )
    return Baseline(
        device_uuid=meta.uuid,
        power_w=power,
        random_std_w=random_std,
        duration_s=window,
        measured_at=now,
        method=f"{method} of {window:.1f} s, CUDA context up, no work queued"
        + (f", after {waited_s:.0f} s of settling" if waited_s >= 0.5 else ""),
        warnings=tuple(warnings),
        settle_s=waited_s,
        settled=settled,
        trend_w_per_s=trend[0] if trend else None,
        drift_bound_w=drift,
        temperature_c=statistics.fmean(c for _, c in temps) if temps else None,
        temperature_trend_c_per_s=temp_trend[0] if temp_trend else None,
        power_limit_w=meta.power_limit_w,
        driver_version=record.driver_version,
    )


def _contamination(
    record: MeterRecord,
    meta: DeviceMeta,
    t0: float,
    t1: float,
    start_label: str,
    end_label: str,
) -> list[Warning]:
    rows = record.timeline.device(meta.uuid)
    busy = [
        u
        for u, t in zip(rows.utilization_pct, rows.t_s, strict=True)
        if u is not None and t0 <= t <= t1
    ]
    pids = set(record.mark(start_label).foreign_pids.get(meta.uuid, ())) | set(
        record.mark(end_label).foreign_pids.get(meta.uuid, ())
    )
    if (busy and max(busy) > BASELINE_BUSY_PCT) or pids:
        who = f" (processes {sorted(pids)})" if pids else ""
        return [
            (
                "baseline_gpu_busy",
                f"GPU {meta.uuid} was not idle while its baseline was taken{who}: the "
                "baseline is too high and adjusted energy too low. Measure on a dedicated GPU.",
            )
        ]
    return []


def power_estimate(baseline: Baseline, after: Baseline | None, meta: DeviceMeta) -> Estimate:
    """Idle power of one GPU with its error sources. The sensor's gain and offset sources are
    the GPU's own, shared with its windows: offsets cancel in adjusted energy, gains scale."""
    sensor = meta.sensor
    uuid = baseline.device_uuid
    drift = baseline.drift_bound_w
    if after is not None:
        drift = max(drift, abs(after.power_w - baseline.power_w))
    return (
        Estimate(
            baseline.power_w,
            {
                Source("sensor_gain", "systematic", sensor.generation): sensor.gain_rel
                * baseline.power_w
                / math.sqrt(3.0),
                Source("sensor_offset", "systematic", sensor.generation): sensor.offset_w
                / math.sqrt(3.0),
            },
        )
        .with_std(Source("baseline_quantisation", "random", uuid), baseline.random_std_w)
        .with_bound(Source("baseline_drift", "systematic", uuid), drift)
        .with_bound(Source("baseline_reuse", "systematic", uuid), baseline.reuse_bound_w)
    )


def info(
    baseline: Baseline,
    power: WireEstimate | None,
    *,
    reused: bool,
    now: float,
    after: Baseline | None,
    after_power: WireEstimate | None,
) -> BaselineInfo:
    """The wire form of a baseline (``now``: when the experiment started); ``power`` and
    ``after_power`` as published (null when too uncertain, and the drift with them)."""
    return BaselineInfo(
        device_uuid=baseline.device_uuid,
        power_w=power,
        method=baseline.method,
        duration_s=baseline.duration_s,
        measured_at=datetime.fromtimestamp(baseline.measured_at, timezone.utc),
        age_s=max(0.0, now - baseline.measured_at),
        reused=reused,
        contaminated=bool(baseline.warnings),
        settle_s=baseline.settle_s,
        settled=baseline.settled,
        trend_w_per_s=baseline.trend_w_per_s,
        drift_bound_w=baseline.drift_bound_w,
        reuse_bound_w=baseline.reuse_bound_w,
        temperature_c=baseline.temperature_c,
        temperature_trend_c_per_s=baseline.temperature_trend_c_per_s,
        power_limit_w=baseline.power_limit_w,
        driver_version=baseline.driver_version,
        after_power_w=after_power,
        drift_w=(
            after.power_w - baseline.power_w
            if after is not None and power is not None and after_power is not None
            else None
        ),
    )


class BaselineCache:
    """The latest measured idle baseline of each GPU, kept by the service across experiments
    (a child process lives for one experiment only). Only clean, settled, measured baselines
    are kept; `refusal` decides per experiment whether one still holds."""

    def __init__(self) -> None:
        self._by_device: dict[str, Baseline] = {}

    def all(self) -> tuple[Baseline, ...]:
        return tuple(self._by_device.values())

    def update(self, infos: Sequence[BaselineInfo]) -> None:
        for item in infos:
            if item.reused or item.contaminated or not item.settled or item.power_w is None:
                continue
            self._by_device[item.device_uuid] = from_info(item, item.power_w)


def from_info(item: BaselineInfo, power: WireEstimate) -> Baseline:
    """A kept baseline from a result (``power``: its published idle power): what the reuse
    rule and the uncertainty need."""
    random = power.random / 2  # expanded (k = 2) back to standard
    return Baseline(
        device_uuid=item.device_uuid,
        power_w=power.value,
        random_std_w=random,
        duration_s=item.duration_s,
        measured_at=item.measured_at.timestamp(),
        method=item.method,
        settle_s=item.settle_s,
        settled=item.settled,
        trend_w_per_s=item.trend_w_per_s,
        drift_bound_w=item.drift_bound_w,
        temperature_c=item.temperature_c,
        temperature_trend_c_per_s=item.temperature_trend_c_per_s,
        power_limit_w=item.power_limit_w,
        driver_version=item.driver_version,
    )
