"""From a `MeterRecord` to the result's energy section: the arithmetic, in one place.

Windows are bounded by counter marks: ``load_start`` .. ``load_end`` .. ``warmup_end`` ..
``repeat_0_end`` .. ``repeat_{n-1}_end``. The measured window runs from ``warmup_end`` to the
last repeat's end. Consecutive phases share their edge mark, so load + warm-up + measured add
up to the session's counter energy exactly, and prefill + decode + between-batches add up to
the measured window's by construction.

Uncertainty (an error bound estimate, joules) of a counter window: each edge read may lag the
truth by one counter update period, so +/- peak power x update period; +/- 1 mJ per read; and
half the disagreement with the integrated power samples. Terms add in quadrature, as do the
independent GPUs. A window from integrated power alone: +/- (peak power + the sampled power's
total variation) x (sample interval + the power field's averaging lag).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from llem_client import (
    BaselineInfo,
    DeviceEnergy,
    EnergyResult,
    PhaseEnergy,
    SamplerReport,
)

from llem_service.energy.acquisition import build_acquisition, build_host
from llem_service.energy.base import Baseline, CounterMark, DeviceMeta, MeterRecord
from llem_service.energy.integrate import PowerCurve
from llem_service.energy.trust import (
    DEFAULT_COUNTER_PERIOD_S,
    Warning,
    device_warnings,
    window_warnings,
)
from llem_service.experiment.summary import percentile

#: Lag of NVML's averaged power reading (1-second average on Ampere and newer), seconds.
AVERAGE_POWER_LAG_S = 1.0


@dataclass(frozen=True)
class Span:
    """One batch on the session clock: start, first token, end (seconds)."""

    start: float
    first_token: float
    end: float


@dataclass(frozen=True)
class Work:
    """What the backend did in the measured window."""

    spans: tuple[Span, ...]
    output_tokens_per_request: tuple[int, ...]
    output_tokens_per_repeat: tuple[int, ...]


@dataclass(frozen=True)
class Window:
    """One GPU's energy over one window."""

    energy_j: float
    uncertainty_j: float
    source: Literal["nvml_energy_counter", "nvml_power_integral"]
    integrated_j: float | None
    peak_w: float | None
    counter_reset: bool

    @property
    def rel_diff(self) -> float | None:
        """(integrated - counter) / counter, when both exist."""
        if self.source != "nvml_energy_counter" or self.integrated_j is None or self.energy_j <= 0:
            return None
        return (self.integrated_j - self.energy_j) / self.energy_j


@dataclass(frozen=True)
class RepeatEnergy:
    energy_j: float
    adjusted_energy_j: float | None


def _quadrature(*terms: float) -> float:
    return math.sqrt(sum(t * t for t in terms))


class EnergyAccount:
    """Energy arithmetic over one record, restricted to the GPUs the model used."""

    def __init__(self, record: MeterRecord, used: Sequence[str]) -> None:
        self.record = record
        wanted = set(used)
        self.metas = [m for m in record.devices if m.uuid in wanted]
        if not self.metas:
            raise ValueError(f"none of {sorted(wanted)} was metered")
        # Each GPU's rows, split out of the timeline once for the curves and the warnings.
        self.rows = {m.uuid: record.timeline.device(m.uuid) for m in self.metas}
        # Each kept power reading sits where it was taken (NVML's timestamp where given).
        self.curves = {u: PowerCurve(*rows.power_points()) for u, rows in self.rows.items()}
        self.baselines = {b.device_uuid: b for b in record.baselines}

    def window(self, meta: DeviceMeta, a: CounterMark, b: CounterMark) -> Window:
        curve = self.curves[meta.uuid]
        integrated = curve.energy_j(a.t_s, b.t_s) if curve else None
        span = b.t_s - a.t_s
        peak = curve.peak_w(a.t_s, b.t_s) if curve else None
        start, end = a.energy_mj.get(meta.uuid), b.energy_mj.get(meta.uuid)
        reset = start is not None and end is not None and end < start
        period = meta.counter_update_period_s or DEFAULT_COUNTER_PERIOD_S
        near = self._edge_power(curve, (a.t_s, b.t_s), period)
        if start is not None and end is not None and not reset:
            energy = (end - start) / 1e3
            top = max([peak or 0.0, energy / span if span > 0 else 0.0, *near])
            disagreement = abs(integrated - energy) / 2 if integrated is not None else 0.0
            return Window(
                energy_j=energy,
                uncertainty_j=_quadrature(top * period, 0.002, disagreement),
                source="nvml_energy_counter",
                integrated_j=integrated,
                peak_w=peak,
                counter_reset=False,
            )
        if integrated is None:
            raise ValueError(f"GPU {meta.uuid} has neither an energy counter nor power samples")
        lag = AVERAGE_POWER_LAG_S if meta.power_field == "average" else 0.0
        top = max([peak or 0.0, integrated / span if span > 0 else 0.0, *near])
        interval = self.record.sample_interval_s
        # Each power step between samples is placed up to one interval off, so the steps'
        # sizes count too: the sampled total variation around the window bounds them.
        steps = curve.variation_w(a.t_s - interval, b.t_s + interval)
        return Window(
            energy_j=integrated,
            uncertainty_j=(top + steps) * (interval + lag),
            source="nvml_power_integral",
            integrated_j=integrated,
            peak_w=peak,
            counter_reset=reset,
        )

    def _edge_power(
        self, curve: PowerCurve, edges: tuple[float, float], period: float
    ) -> list[float]:
        """Highest power around each edge: a read lags by up to one counter period, so what
        it misses was drawn in the period before the edge (plus a sampling interval's margin,
        and the interpolated power, for edges no sample is near)."""
        if not curve:
            return []
        margin = self.record.sample_interval_s
        found = []
        for t in edges:
            found.append(curve.power_at(t))
            peak = curve.peak_w(t - period - margin, t + margin)
            if peak is not None:
                found.append(peak)
        return found

    def total(self, a: CounterMark, b: CounterMark) -> tuple[float, float]:
        """Energy and uncertainty over all used GPUs."""
        windows = [self.window(m, a, b) for m in self.metas]
        return sum(w.energy_j for w in windows), _quadrature(*(w.uncertainty_j for w in windows))

    def baseline_power(self) -> tuple[float, float] | None:
        """Summed idle power and its uncertainty; None unless every used GPU has one."""
        if not all(m.uuid in self.baselines for m in self.metas):
            return None
        chosen = [self.baselines[m.uuid] for m in self.metas]
        return (
            sum(b.power_w for b in chosen),
            _quadrature(*(b.power_uncertainty_w for b in chosen)),
        )

    def adjust(self, energy_j: float, duration_s: float) -> float | None:
        base = self.baseline_power()
        return None if base is None else max(0.0, energy_j - base[0] * duration_s)

    def summed_curve(self) -> PowerCurve:
        """Total power of the used GPUs at every reading of any of them: each GPU's curve
        interpolated there, so a GPU's missing or failed reading is a gap its neighbours
        bridge, never 0 W (a GPU without any reading is left out)."""
        curves = [self.curves[m.uuid] for m in self.metas if self.curves[m.uuid]]
        times = sorted({t for curve in curves for t in curve.t})
        return PowerCurve(times, [sum(c.power_at(t) for c in curves) for t in times])


def build_energy(
    record: MeterRecord,
    used: Sequence[str],
    work: Work,
    *,
    cross_check_threshold: float,
    now: float,
) -> tuple[EnergyResult, list[RepeatEnergy], list[Warning]]:
    """The result's energy section, each repeat's energy, and the warnings they raise."""
    account = EnergyAccount(record, used)
    repeats = len(work.output_tokens_per_repeat)
    start = record.mark("warmup_end")
    ends = [record.mark(f"repeat_{i}_end") for i in range(repeats)]
    end = ends[-1]
    window_s = end.t_s - start.t_s
    warnings: list[Warning] = []

    devices: list[DeviceEnergy] = []
    windows = []
    for meta in account.metas:
        w = account.window(meta, start, end)
        windows.append(w)
        idle = account.baselines.get(meta.uuid)
        devices.append(
            DeviceEnergy(
                device_uuid=meta.uuid,
                name=meta.name,
                source=w.source,
                energy_j=w.energy_j,
                energy_uncertainty_j=w.uncertainty_j,
                adjusted_energy_j=(
                    max(0.0, w.energy_j - idle.power_w * window_s) if idle else None
                ),
                integrated_energy_j=w.integrated_j,
                counter_vs_integral_rel_diff=w.rel_diff,
                mean_power_w=w.energy_j / window_s if window_s > 0 else 0.0,
                peak_power_w=w.peak_w,
                power_field=meta.power_field,
                counter_update_period_s=meta.counter_update_period_s,
            )
        )
        warnings.extend(device_warnings(meta, w, account, start, end, cross_check_threshold))

    energy = sum(w.energy_j for w in windows)
    uncertainty = _quadrature(*(w.uncertainty_j for w in windows))
    base = account.baseline_power()
    adjusted = account.adjust(energy, window_s)
    adjusted_u = _quadrature(uncertainty, base[1] * window_s) if base else None
    integrals = [w.integrated_j for w in windows]
    integrated = sum(i for i in integrals if i is not None) if None not in integrals else None
    tokens = sum(work.output_tokens_per_request)
    summed = account.summed_curve()

    phases = _phases(account, record, work, summed, energy, uncertainty, base)
    decode = next(p for p in phases if p.phase == "decode")
    decode_tokens = tokens - len(work.output_tokens_per_request)
    basis: Literal["raw", "adjusted"] = "adjusted" if base else "raw"
    if decode_tokens > 0:
        decode_j = decode.energy_j
        if base:
            decode_j = max(0.0, decode_j - base[0] * decode.duration_s)
        per_token = decode_j / decode_tokens
    else:  # single-token requests have no decode phase: the whole window per token
        per_token = ((adjusted if base else energy) or 0.0) / tokens if tokens else 0.0

    warnings.extend(window_warnings(record, account, window_s, work))
    acquisition, acquisition_warnings = build_acquisition(
        record, account.metas, account.rows, start, end
    )
    warnings.extend(acquisition_warnings)
    repeat_energy = []
    previous = start
    for mark in ends:
        e, _ = account.total(previous, mark)
        repeat_energy.append(RepeatEnergy(e, account.adjust(e, mark.t_s - previous.t_s)))
        previous = mark

    result = EnergyResult(
        source=(
            "nvml_energy_counter"
            if all(w.source == "nvml_energy_counter" for w in windows)
            else "nvml_power_integral"
        ),
        energy_j=energy,
        energy_uncertainty_j=uncertainty,
        baseline_power_w=base[0] if base else None,
        adjusted_energy_j=adjusted,
        adjusted_energy_uncertainty_j=adjusted_u,
        energy_per_output_token_j=energy / tokens if tokens else None,
        adjusted_energy_per_output_token_j=(
            adjusted / tokens if tokens and adjusted is not None else None
        ),
        mean_power_w=energy / window_s if window_s > 0 else 0.0,
        peak_power_w=summed.peak_w(start.t_s, end.t_s) if summed else None,
        integrated_energy_j=integrated,
        counter_vs_integral_rel_diff=(
            (integrated - energy) / energy if integrated is not None and energy > 0 else None
        ),
        cross_check_threshold=cross_check_threshold,
        window_s=window_s,
        devices=devices,
        baselines=[_baseline_info(b, record, now) for b in record.baselines],
        phases=phases,
        per_request_energy_j=[per_token * n for n in work.output_tokens_per_request],
        per_request_basis=basis,
        sampler=_sampler_report(record),
        acquisition=acquisition,
        host=build_host(record, start, end, tokens),
    )
    return result, repeat_energy, warnings


def _phases(
    account: EnergyAccount,
    record: MeterRecord,
    work: Work,
    summed: PowerCurve,
    measured_j: float,
    measured_u: float,
    base: tuple[float, float] | None,
) -> list[PhaseEnergy]:
    load_start, load_end = record.mark("load_start"), record.mark("load_end")
    warm_end = record.mark("warmup_end")
    last = record.marks[-1]
    phases = []
    for name, a, b in (("load", load_start, load_end), ("warmup", load_end, warm_end)):
        e, u = account.total(a, b)
        phases.append(
            PhaseEnergy(
                phase=name,
                duration_s=b.t_s - a.t_s,
                energy_j=e,
                energy_uncertainty_j=u,
                method="counter",
            )
        )
    window_s = last.t_s - warm_end.t_s
    prefill_s = sum(s.first_token - s.start for s in work.spans)
    decode_s = sum(s.end - s.first_token for s in work.spans)
    between_s = max(0.0, window_s - prefill_s - decode_s)
    if summed and summed.energy_j(warm_end.t_s, last.t_s) > 0:
        total_i = summed.energy_j(warm_end.t_s, last.t_s)
        prefill_i = sum(summed.energy_j(s.start, s.first_token) for s in work.spans)
        decode_i = sum(summed.energy_j(s.first_token, s.end) for s in work.spans)
        shares = (prefill_i / total_i, decode_i / total_i)
    else:  # no samples: share by time
        shares = (prefill_s / window_s, decode_s / window_s) if window_s > 0 else (0.0, 0.0)
    shares = (min(shares[0], 1.0), min(shares[1], max(0.0, 1.0 - shares[0])))
    between_share = max(0.0, 1.0 - shares[0] - shares[1])
    low = summed.low_w(warm_end.t_s, last.t_s) if summed else None
    high = summed.peak_w(warm_end.t_s, last.t_s) if summed else None
    power_range = (high - low) if high is not None and low is not None else 0.0
    reach = record.sample_interval_s * len(work.spans)
    limits = [m.power_limit_w for m in account.metas]
    for name, share, duration in (
        ("prefill", shares[0], prefill_s),
        ("decode", shares[1], decode_s),
        ("between_batches", between_share, between_s),
    ):
        spans = len(work.spans) or 1
        phase_range = power_range
        if low is not None and None not in limits and duration / spans < record.sample_interval_s:
            # Spans shorter than the sampling interval can hide a spike no sample saw: bound
            # the power by the GPUs' power limits instead of the sampled range.
            phase_range = max(power_range, sum(x or 0.0 for x in limits) - low)
        phases.append(
            PhaseEnergy(
                phase=name,
                duration_s=duration,
                energy_j=measured_j * share,
                energy_uncertainty_j=share * measured_u + phase_range * min(duration, reach),
                method="timeline_share",
            )
        )
    return phases


def _baseline_info(b: Baseline, record: MeterRecord, now: float) -> BaselineInfo:
    return BaselineInfo(
        device_uuid=b.device_uuid,
        power_w=b.power_w,
        power_uncertainty_w=b.power_uncertainty_w,
        method=b.method,
        duration_s=b.duration_s,
        measured_at=datetime.fromtimestamp(b.measured_at, timezone.utc),
        age_s=max(0.0, now - b.measured_at),
        reused=b.device_uuid in record.reused_baselines,
        contaminated=bool(b.warnings),
    )


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
