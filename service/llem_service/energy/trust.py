"""What weakens an energy figure: each condition becomes a ``(code, message)`` warning that
says how to fix it. Called by `llem_service.energy.report.build_energy`."""

from __future__ import annotations

from llem_service.energy.base import CounterMark, DeviceMeta, MeterRecord
from llem_service.energy.figures import Warning, Window, Work
from llem_service.energy.windows import DEFAULT_COUNTER_PERIOD_S, EnergyAccount
from llem_service.experiment.summary import percentile

#: A measured window shorter than this many counter updates is flagged.
MIN_COUNTER_UPDATES = 10
#: Temperature rise over the measured window that is flagged, degrees C.
TEMPERATURE_DRIFT_C = 10


def device_warnings(
    meta: DeviceMeta,
    w: Window,
    account: EnergyAccount,
    start: CounterMark,
    end: CounterMark,
    threshold: float,
) -> list[Warning]:
    out: list[Warning] = []
    gpu = f"GPU {meta.uuid} ({meta.name})"
    if w.counter_reset:
        out.append(
            (
                "energy_counter_reset",
                f"The energy counter of {gpu} went backwards during the measured window "
                "(driver reload or GPU reset); its energy comes from integrated power samples "
                "instead, with a wider uncertainty.",
            )
        )
    elif meta.has_energy_counter and w.source == "nvml_power_integral":
        failed = [m.label for m in (start, end) if m.energy_mj.get(meta.uuid) is None]
        out.append(
            (
                "energy_counter_read_failed",
                f"The energy counter of {gpu} did not answer at {' and '.join(failed)} (every "
                "try failed); the window's energy comes from integrated power samples instead, "
                "with a wider uncertainty. If it recurs, check the driver (`nvidia-smi -q`).",
            )
        )
    elif not meta.has_energy_counter:
        why = meta.counter_absent_reason or "pre-Volta, or a vGPU"
        out.append(
            (
                "no_energy_counter",
                f"{gpu} has no energy counter ({why}); its energy is integrated from power "
                "samples, with a wider uncertainty.",
            )
        )
    if meta.power_field == "average":
        out.append(
            (
                "power_average_only",
                f"{gpu} does not report instantaneous power; its samples are NVML's 1-second "
                "average, which lags, so the cross-check and the prefill/decode split are "
                "smoothed.",
            )
        )
    diff = w.rel_diff
    if diff is not None and abs(diff) > threshold:
        out.append(
            (
                "cross_check_disagreement",
                f"On {gpu} the energy counter and the integrated power samples differ by "
                f"{diff:+.1%} (threshold {threshold:.0%}). Short windows and averaged power "
                "cause this; a longer measured window (more prompts or repeats) narrows it.",
            )
        )
    if meta.persistence_mode is False:
        out.append(
            (
                "persistence_mode_off",
                f"Persistence mode is off on {gpu}: the driver may tear down and re-initialise "
                "the GPU between runs, which adds latency and energy. Enable it with "
                "`nvidia-smi -pm 1`.",
            )
        )
    rows = account.rows[meta.uuid]
    inside = [i for i, t in enumerate(rows.t_s) if t is not None and start.t_s <= t <= end.t_s]
    temps = [rows.temperature_c[i] for i in inside]
    temps_known = [t for t in temps if t is not None]
    if temps_known and temps_known[-1] - temps_known[0] > TEMPERATURE_DRIFT_C:
        out.append(
            (
                "temperature_drift",
                f"{gpu} warmed from {temps_known[0]} to {temps_known[-1]} °C during the "
                "measured window; power rises with temperature. Warm up longer "
                "(warmup.mode='cv') or measure longer so the GPU reaches a steady state.",
            )
        )
    return out


def window_warnings(
    record: MeterRecord,
    account: EnergyAccount,
    window_s: float,
    work: Work,
    *,
    timeline_split: bool,
) -> list[Warning]:
    out: list[Warning] = []
    periods = [m.counter_update_period_s or DEFAULT_COUNTER_PERIOD_S for m in account.metas]
    period = max(periods)
    if window_s < MIN_COUNTER_UPDATES * period:
        out.append(
            (
                "window_short",
                f"The measured window ({window_s:.2f} s) spans only {window_s / period:.0f} "
                f"energy-counter updates (every {period * 1e3:.0f} ms), so its energy is "
                "coarsely quantised (see the uncertainty). Raise n_prompts or repeats for a "
                f"window of at least {MIN_COUNTER_UPDATES * period:.2g} s; MLPerf Power asks "
                "for 60 s.",
            )
        )
    prefill = sorted(s.first_token - s.start for s in work.spans)
    median_prefill = percentile(prefill, 0.5) if prefill else None
    if timeline_split and median_prefill is not None and median_prefill < record.sample_interval_s:
        out.append(
            (
                "phase_split_coarse",
                f"Prefill spans (median {median_prefill * 1e3:.1f} ms) are shorter "
                f"than the sampling interval ({record.sample_interval_s * 1e3:.0f} ms), so the "
                "prefill/decode energy split is interpolated between samples; read it with "
                "its uncertainty.",
            )
        )
    return out
