"""From a `MeterRecord` to the result's energy section: which GPUs count, every figure with its
uncertainty, the uncertainty budget, and the warnings that go with them.

Windows are bounded by counter marks: ``load_start`` .. ``load_end`` .. ``warmup_end`` ..
``repeat_0_end`` .. ``repeat_{n-1}_end`` [.. ``prefill_start`` .. ``prefill_end``]. The
measured window runs from ``warmup_end`` to the last repeat's end; the prefill passes come
after it and are not part of it. The arithmetic of each part lives in its own module
(`windows`, `phases`, `requests`, `baseline`); this one assembles and publishes.

Publishing (`energy.publish`): a figure whose expanded uncertainty exceeds
``energy.max_relative_uncertainty`` of its scale (its own value; for adjusted figures the raw
one they come from) is null, and a warning says why and how to get it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from llem_client import (
    BaselineInfo,
    DeviceEnergy,
    EnergyConfig,
    EnergyResult,
    PercentileEstimates,
    PhaseEnergy,
    PrefillPasses,
    RequestEnergy,
    SamplerReport,
    SteadyStateRequests,
)
from llem_client import Estimate as WireEstimate

from llem_service.energy import baseline as baselines_
from llem_service.energy.acquisition import build_acquisition, build_host
from llem_service.energy.base import Baseline, DeviceMeta, MeterRecord
from llem_service.energy.baseline import BaselineSet
from llem_service.energy.figures import PrefillRun, Warning, Work
from llem_service.energy.phases import PhaseSplit, periodicity, split
from llem_service.energy.publish import Publisher, budget
from llem_service.energy.requests import (
    DESCRIPTION,
    Percentiles,
    attribute,
    per_token_percentiles,
    steady_state,
)
from llem_service.energy.trust import device_warnings, window_warnings
from llem_service.energy.uncertainty import Estimate
from llem_service.energy.windows import EnergyAccount, Periodicity
from llem_service.experiment.summary import percentile


@dataclass(frozen=True)
class RepeatEnergy:
    """One repeat's figures as published: each null without a baseline (adjusted ones), without
    output (per token), or when its uncertainty is too large to publish (a warning says so)."""

    energy_j: WireEstimate | None
    adjusted_energy_j: WireEstimate | None
    energy_per_output_token_j: WireEstimate | None
    adjusted_energy_per_output_token_j: WireEstimate | None


@dataclass
class EnergySection:
    """The energy section (None when there is nothing to report), per repeat, and warnings."""

    result: EnergyResult | None
    repeats: list[RepeatEnergy] = field(default_factory=list)
    warnings: list[Warning] = field(default_factory=list)


def counted_devices(
    devices: Sequence[DeviceMeta], loaded: Sequence[str], prepared: Sequence[str], *, explicit: bool
) -> tuple[list[str], list[Warning]]:
    """Which of the metered ``devices`` count, and a warning for any GPU the model occupies
    unmetered.

    Explicit ``energy.devices`` are metered as asked; otherwise the GPUs the model occupies
    (those it was prepared on, when it reports none)."""
    metered = {d.uuid for d in devices}
    used = [u for u in loaded if u in metered]
    chosen = list(prepared) if explicit or not used else used
    warnings: list[Warning] = []
    missing = sorted(set(loaded) - metered)
    if missing:
        warnings.append(
            (
                "device_not_metered",
                f"The model also occupies {', '.join(missing)}, which was not metered; set "
                "energy.devices to include it.",
            )
        )
    return chosen, warnings


def unavailable_warning(reason: str) -> Warning:
    return ("energy_unavailable", f"Energy not measured: {reason}. Energy fields are null.")


def build_energy(
    record: MeterRecord,
    used: Sequence[str],
    work: Work,
    *,
    baselines: BaselineSet,
    prefill: PrefillRun | None,
    plan: EnergyConfig,
    now: float,
) -> EnergySection:
    """The energy section of one experiment's measured window."""
    account = EnergyAccount(record, used)
    publish = Publisher(plan.max_relative_uncertainty)
    start = record.mark("warmup_end")
    ends = [record.mark(f"repeat_{i}_end") for i in range(work.repeats)]
    end = ends[-1]
    window_s = end.t_s - start.t_s
    warnings: list[Warning] = list(baselines.warnings())
    phases = split(account, work, start, end, prefill)
    pattern = periodicity(work)

    idle = _idle_power(account, baselines)
    tokens = sum(work.output_tokens_per_request)
    window = phases.window
    adjusted = window - idle * window_s if idle is not None else None

    devices = []
    # The integral of the readings is the counter's cross-check: published beside a published
    # counter figure only (without a counter it is the figure itself, gaps unbridged).
    integrals: list[float | None] = []
    for meta in account.metas:
        est, w = account.estimate(meta, start, end, pattern)
        base = baselines.of(meta.uuid)
        device_idle = (
            baselines_.power_estimate(base, baselines.after_of(meta.uuid), meta) if base else None
        )
        energy = publish(est, "A GPU's energy")
        checked = energy is not None and w.source == "nvml_energy_counter"
        integrals.append(w.integrated_j if checked else None)
        devices.append(
            DeviceEnergy(
                device_uuid=meta.uuid,
                name=meta.name,
                source=w.source,
                energy_j=energy,
                adjusted_energy_j=publish(
                    est - device_idle * window_s if device_idle is not None else None,
                    "A GPU's adjusted energy",
                    est.value,
                ),
                integrated_energy_j=w.integrated_j if checked else None,
                counter_vs_integral_rel_diff=w.rel_diff if checked else None,
                mean_power_w=_mean_power(energy, window_s),
                peak_power_w=w.peak_w,
                power_field=meta.power_field,
                counter_update_period_s=meta.counter_update_period_s,
                sensor=meta.sensor.wire(),
            )
        )
        warnings.extend(device_warnings(meta, w, account, start, end, plan.cross_check_threshold))
    warnings.extend(
        window_warnings(
            record, account, window_s, work, timeline_split=phases.method == "timeline_share"
        )
    )
    acquisition, acquisition_warnings = build_acquisition(
        record, account.metas, account.rows, start, end
    )
    warnings.extend(acquisition_warnings)

    per_token = window / tokens if tokens else None
    adjusted_per_token = adjusted / tokens if adjusted is not None and tokens else None
    headline = adjusted_per_token or per_token
    published_raw = publish(per_token, "J/token")
    published_adjusted = publish(
        adjusted_per_token, "Adjusted J/token", per_token.value if per_token else None
    )
    window_energy = publish(window, "The window's energy")
    integrated = (
        sum(i for i in integrals if i is not None)
        if window_energy is not None and None not in integrals
        else None
    )
    requests = _requests(work, phases, account, idle, publish, window.value)
    result = EnergyResult(
        source=(
            "nvml_energy_counter"
            if all(d.source == "nvml_energy_counter" for d in devices)
            else "nvml_power_integral"
        ),
        window_s=window_s,
        energy_j=window_energy,
        adjusted_energy_j=publish(adjusted, "Adjusted energy", window.value),
        baseline_power_w=publish(idle, "The baseline power"),
        energy_per_output_token_j=published_raw,
        adjusted_energy_per_output_token_j=published_adjusted,
        uncertainty=(
            budget(
                headline,
                published_adjusted if adjusted_per_token is not None else published_raw,
                adjusted=adjusted_per_token is not None,
            )
            if headline
            else None
        ),
        mean_power_w=_mean_power(window_energy, window_s),
        peak_power_w=account.summed.peak_w(start.t_s, end.t_s) if account.summed else None,
        integrated_energy_j=integrated,
        counter_vs_integral_rel_diff=(
            (integrated - window.value) / window.value
            if integrated is not None and window.value > 0
            else None
        ),
        cross_check_threshold=plan.cross_check_threshold,
        devices=devices,
        baselines=[
            _baseline_info(b, baselines, account, now, publish) for b in baselines.baselines
        ],
        phase_split=phases.method,
        phases=_phases(account, record, work, phases, publish),
        prefill_passes=_passes(phases, publish),
        requests=requests,
        sampler=_sampler_report(record),
        acquisition=acquisition,
        host=build_host(record, start, end, tokens, publish),
    )
    repeat_energy = []
    previous = start
    for i, mark in enumerate(ends):
        e = account.total(previous, mark, pattern)
        a = e - idle * (mark.t_s - previous.t_s) if idle is not None else None
        n = work.output_tokens_of_repeat(i)
        repeat_energy.append(
            RepeatEnergy(
                energy_j=publish(e, "A repeat's energy"),
                adjusted_energy_j=publish(a, "A repeat's adjusted energy", e.value),
                energy_per_output_token_j=publish(e / n if n else None, "A repeat's J/token"),
                adjusted_energy_per_output_token_j=publish(
                    a / n if a is not None and n else None,
                    "A repeat's adjusted J/token",
                    e.value / n if n else None,
                ),
            )
        )
        previous = mark
    warnings.extend(publish.warnings())
    return EnergySection(result, repeat_energy, warnings)


def _idle_power(account: EnergyAccount, baselines: BaselineSet) -> Estimate | None:
    """Summed idle power of the GPUs that count; None unless every one has a baseline."""
    total = Estimate(0.0)
    for meta in account.metas:
        base = baselines.of(meta.uuid)
        if base is None:
            return None
        total = total + baselines_.power_estimate(base, baselines.after_of(meta.uuid), meta)
    return total


def _mean_power(energy: WireEstimate | None, window_s: float) -> float | None:
    """Mean power over the window from published energy: null when the energy is (it would
    give the energy back)."""
    return energy.value / window_s if energy is not None and window_s > 0 else None


def _baseline_info(
    b: Baseline, baselines: BaselineSet, account: EnergyAccount, now: float, publish: Publisher
) -> BaselineInfo:
    meta = next(m for m in account.record.devices if m.uuid == b.device_uuid)
    after = baselines.after_of(b.device_uuid)
    return baselines_.info(
        b,
        publish(baselines_.power_estimate(b, after, meta), "A GPU's idle baseline"),
        reused=b.device_uuid in baselines.reused,
        now=now,
        after=after,
        after_power=publish(
            baselines_.power_estimate(after, None, meta) if after else None,
            "A GPU's idle power after the window",
        ),
    )


def _phases(
    account: EnergyAccount,
    record: MeterRecord,
    work: Work,
    phases: PhaseSplit,
    publish: Publisher,
) -> list[PhaseEnergy]:
    """Load (absent when the model was reused: nothing was loaded), warm-up, prefill, decode
    and the gaps between batches. Gaps too short for the readings to place (host work of
    milliseconds: a figure that would always be null) are no phase of their own: decode
    keeps them, as the window less prefill, and the phases still add up to the window."""
    out = []
    edges: list[tuple[str, str, str, Periodicity | None]] = [
        ("warmup", "load_end", "warmup_end", periodicity(work))
    ]
    if not work.model_reused:
        edges.insert(0, ("load", "load_start", "load_end", None))
    # Warm-up runs the workload's own batches: periodic as the window is.
    for name, a, b, pattern in edges:
        first, second = record.mark(a), record.mark(b)
        duration = second.t_s - first.t_s
        out.append(
            PhaseEnergy(
                phase=name,
                duration_s=duration,
                energy_j=publish(
                    account.total(first, second, pattern),
                    f"The {name} phase's energy",
                    advice=_edge_advice(account, name, duration),
                ),
                method="counter",
            )
        )
    timeline = phases.method == "timeline_share"
    durations = _phase_durations(phases)
    decode = phases.decode
    separate_gaps = publish.publishable(phases.between)
    if not separate_gaps:
        decode = decode + phases.between
        durations["decode"] += durations.pop("between_batches")
    batches = [
        ("prefill", phases.prefill, "timeline_share" if timeline else "prefill_passes"),
        ("decode", decode, "timeline_share" if timeline else "window_minus_prefill"),
    ]
    if separate_gaps:
        batches.append(("between_batches", phases.between, "gap_power"))
    for name, estimate, method in batches:
        out.append(
            PhaseEnergy(
                phase=name,
                duration_s=durations[name],
                energy_j=publish(estimate, f"The {name} phase's energy"),
                method=method,
            )
        )
    return out


def _edge_advice(account: EnergyAccount, name: str, duration_s: float) -> str | None:
    """Why a phase outside the window measured by the counter is null: not "measure longer"
    (the window's length does not change it)."""
    if not all(m.has_energy_counter for m in account.metas):
        return None
    counter_s = max(account.period_s(m) for m in account.metas)
    return (
        f"the {name} phase ({duration_s:.2f} s) spans too few updates of the energy counter "
        f"(every {counter_s:.2g} s) for the reads at its edges to bound it; it lies outside "
        "the measured window, whose figures it does not affect"
    )


def _phase_durations(phases: PhaseSplit) -> dict[str, float]:
    return {
        "prefill": phases.prefill_time_s,
        "decode": phases.decode_time_s,
        "between_batches": sum(phases.gap_s),
    }


def _passes(phases: PhaseSplit, publish: Publisher) -> PrefillPasses | None:
    p = phases.passes
    if p is None:
        return None
    energy = publish(p.energy_j, "The prefill passes' energy")
    per_pass = publish(p.per_pass_j, "Prefill energy per pass")
    if energy is None or per_pass is None:
        return None
    return PrefillPasses(
        passes=p.passes,
        duration_s=p.duration_s,
        energy_j=energy,
        energy_per_pass_j=per_pass,
        prefill_time_per_pass_s=p.prefill_time_per_pass_s,
        window_prefill_time_per_repeat_s=p.window_prefill_time_per_repeat_s,
    )


def _requests(
    work: Work,
    phases: PhaseSplit,
    account: EnergyAccount,
    idle: Estimate | None,
    publish: Publisher,
    window_j: float,
) -> RequestEnergy | None:
    if not work.batches or not any(work.output_tokens_per_request):
        return None
    figures = attribute(work, phases, account.summed)
    raw = [publish(e, "Per-request energy") for e in figures.energy]
    adjusted = (
        [
            publish(a, "Per-request adjusted energy", r.value)
            for a, r in zip(figures.adjusted(idle), figures.energy, strict=True)
        ]
        if idle is not None
        else None
    )
    if any(x is None for x in raw):
        return None
    raw_pct = _percentiles(per_token_percentiles(figures.energy, figures.output_tokens), publish)
    adjusted_pct = None
    if idle is not None and adjusted is not None and None not in adjusted:
        adjusted_pct = _percentiles(
            per_token_percentiles(figures.adjusted(idle), figures.output_tokens),
            publish,
            scale=per_token_percentiles(figures.energy, figures.output_tokens),
        )
    if raw_pct is None:
        return None
    steady = None
    if sum(figures.output_tokens) > len(figures.output_tokens):
        per_token, per_request = steady_state(phases, figures.output_tokens)
        published = [publish(e, "Steady-state per-request energy") for e in per_request]
        rate = publish(per_token, "Steady-state decode J/token")
        if rate is not None and None not in published:
            steady = SteadyStateRequests(
                energy_per_output_token_j=rate,
                energy_j=[e for e in published if e is not None],
            )
    return RequestEnergy(
        description=DESCRIPTION,
        energy_j=[e for e in raw if e is not None],
        adjusted_energy_j=(
            [e for e in adjusted if e is not None]
            if adjusted is not None and None not in adjusted
            else None
        ),
        energy_per_output_token_j=raw_pct,
        adjusted_energy_per_output_token_j=adjusted_pct,
        steady_state=steady,
    )


def _percentiles(
    p: Percentiles, publish: Publisher, scale: Percentiles | None = None
) -> PercentileEstimates | None:
    what = "Per-request adjusted J/token" if scale else "Per-request J/token"
    values = {
        name: publish(getattr(p, name), what, getattr(scale, name).value if scale else None)
        for name in ("mean", "p50", "p90", "p99")
    }
    if any(v is None for v in values.values()):
        return None
    return PercentileEstimates.model_validate({k: v for k, v in values.items()})


def _sampler_report(record: MeterRecord) -> SamplerReport:
    starts = record.round_starts_s
    gaps = sorted(b - a for a, b in itertools.pairwise(starts))
    costs = record.round_costs_s
    return SamplerReport(
        interval_s=record.sample_interval_s,
        n_samples=len(starts),
        achieved_interval_p50_s=percentile(gaps, 0.5) if gaps else None,
        achieved_interval_p99_s=percentile(gaps, 0.99) if gaps else None,
        cost_per_sample_s=sum(costs) / len(costs) if costs else None,
    )
