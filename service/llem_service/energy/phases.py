"""The measured window split into prefill, decode and the gaps between batches, in total and
per batch.

**Prefill from the counter** (``phase_split='counter'``, as optimum-benchmark does): after the
window the workload's own batches run again with one output token, repeated until the counter
spans many update periods. Their counter energy, less the gaps between them, divided by the
passes, is one repeat's prefill energy; times the repeats, the window's. The passes' own time
is compared with the window's prefill time, and the difference (x the passes' power) is
counted as a systematic term, ``prefill_passes``.

**Gaps between batches** (host work: nothing queued on the GPU) get the sampled power over
them, bounded by the lowest and highest reading of the window.

**Decode** is the window's counter energy minus prefill and gaps: the three add up to the
window exactly, and their errors are anti-correlated as they should be.

**The fallback** (``timeline_share``), without passes: the window shared in proportion to the
integrated power readings of the prefill spans, with an uncertainty that counts the power
field's refresh and lag at every span edge (prefill spans of tens of milliseconds are mostly
invisible to a field refreshed every 100 ms, so the bound is wide and short prefills come out
null).

Each batch's decode energy is the decode total shared by its decode time weighted by the mean
reading over it (readings within the field's delay of an edge left out), with the readings'
standard error as ``batch_split``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llem_service.energy.base import CounterMark
from llem_service.energy.figures import PrefillRun, Work
from llem_service.energy.uncertainty import Estimate, Source
from llem_service.energy.windows import EnergyAccount, Periodicity


@dataclass(frozen=True)
class PassFigures:
    """The prefill-only passes: all of them, one of them, and the comparison of times."""

    passes: int
    duration_s: float
    energy_j: Estimate
    per_pass_j: Estimate
    prefill_time_per_pass_s: float
    window_prefill_time_per_repeat_s: float


@dataclass(frozen=True)
class PhaseSplit:
    """The window's phases in total and per batch (``work.batches`` order)."""

    method: Literal["prefill_passes", "timeline_share"]
    window: Estimate
    prefill: Estimate
    decode: Estimate
    between: Estimate
    prefill_batches: tuple[Estimate, ...]
    decode_batches: tuple[Estimate, ...]
    between_batches: tuple[Estimate, ...]
    gap_s: tuple[float, ...]
    prefill_time_s: float
    decode_time_s: float
    passes: PassFigures | None = None


def periodicity(work: Work) -> Periodicity:
    """The work's dominant repetition: its decoding steps, or its batches when requests
    generate a single token. Jitter is a robust spread (1.4826 x the median deviation)."""
    gaps = list(work.step_gaps_s) or [b.span.end - b.span.start for b in work.batches]
    return robust_period(gaps)


def robust_period(values: Sequence[float]) -> Periodicity:
    positive = [v for v in values if v > 0]
    if not positive:
        return Periodicity()
    median = statistics.median(positive)
    mad = statistics.median(abs(v - median) for v in positive)
    return Periodicity(median, 1.4826 * mad)


def pass_rhythm(latencies_s: Sequence[float], duration_s: float) -> Periodicity:
    """The rhythm of prefill passes: batch after batch, each its latency plus its share of
    the host time between them."""
    if not latencies_s:
        return Periodicity()
    gap = max(0.0, duration_s - sum(latencies_s)) / len(latencies_s)
    return robust_period([x + gap for x in latencies_s])


def gaps_s(work: Work, start: float, end: float) -> tuple[float, ...]:
    """Time before each batch since the previous one ended (the first: since ``start``); the
    time after the last batch until ``end`` is added to the last."""
    out, previous = [], start
    for batch in work.batches:
        out.append(max(0.0, batch.span.start - previous))
        previous = batch.span.end
    if out:
        out[-1] += max(0.0, end - previous)
    return tuple(out)


def split(
    account: EnergyAccount,
    work: Work,
    start: CounterMark,
    end: CounterMark,
    prefill: PrefillRun | None,
) -> PhaseSplit:
    """The window's phases; by prefill passes when they ran, else by the timeline."""
    window = account.total(start, end, periodicity(work))
    gaps = gaps_s(work, start.t_s, end.t_s)
    between = _gap_energy(account, work, start.t_s, end.t_s, window.value)
    total_gap = sum(gaps)
    between_batches = tuple(
        between * (g / total_gap) if total_gap > 0 else Estimate(0.0) for g in gaps
    )
    passes: PassFigures | None = None
    if prefill is not None:
        passes = _passes(account, work, prefill)
        method: Literal["prefill_passes", "timeline_share"] = "prefill_passes"
        prefill_batches = _prefill_by_passes(account, work, prefill, passes)
    else:
        method = "timeline_share"
        prefill_batches = _prefill_by_timeline(account, work, window, start.t_s, end.t_s)
    prefill_total = Estimate(0.0)
    for e in prefill_batches:
        prefill_total = prefill_total + e
    decode = window - prefill_total - between
    return PhaseSplit(
        method=method,
        window=window,
        prefill=prefill_total,
        decode=decode,
        between=between,
        prefill_batches=prefill_batches,
        decode_batches=decode_by_batch(account, work, decode),
        between_batches=between_batches,
        gap_s=gaps,
        prefill_time_s=sum(b.prefill_s for b in work.batches),
        decode_time_s=sum(b.decode_s for b in work.batches),
        passes=passes,
    )


# -- gaps ---------------------------------------------------------------------------------------


def _gap_energy(
    account: EnergyAccount, work: Work, t0: float, t1: float, window_j: float
) -> Estimate:
    """Energy of the gaps between batches. A gap long enough to hold readings newer than the
    field's delay gets their mean; a shorter one (most: host work of milliseconds) can only
    be placed between the lowest reading of the session and the window's peak."""
    intervals = []
    previous = t0
    for batch in work.batches:
        intervals.append((previous, max(previous, batch.span.start)))
        previous = batch.span.end
    intervals.append((previous, max(previous, t1)))
    return gap_estimate(account, intervals, t0, t1, window_j, "window")


def gap_estimate(
    account: EnergyAccount,
    intervals: Sequence[tuple[float, float]],
    t0: float,
    t1: float,
    window_j: float,
    scope: str,
    *,
    placed: bool = True,
) -> Estimate:
    """Energy of host-side gaps ``intervals`` inside the window ``[t0, t1]`` (see
    `_gap_energy`); one systematic source for them all (they share the bounds). Unless
    ``placed``, only the intervals' lengths are known, not where they lie: all are bounded as
    short gaps."""
    duration = sum(b - a for a, b in intervals)
    if duration <= 0:
        return Estimate(0.0)
    curve = account.summed
    mean = window_j / (t1 - t0) if t1 > t0 else 0.0
    high = (curve.peak_w(t0, t1) if curve else None) or 2 * mean
    low = account.floor_w if account.floor_w is not None else 0.0
    low = min(low, high)
    value = 0.0
    bound = 0.0
    delay = account.delay_s
    for a, b in intervals:
        length = b - a
        stats = account.readings.stats(a + delay, b) if placed and length > delay else None
        if stats is None:
            value += length * (low + high) / 2
            bound += length * (high - low) / 2
        else:
            value += length * stats[0]
            # the first ``delay`` of the gap is not in the readings: bounded as a short gap
            bound += min(delay, length) * (high - low) / 2 + length * 2 * stats[1]
    return Estimate.bounded(value, Source("between_batches_power", "systematic", scope), bound)


# -- prefill from the passes --------------------------------------------------------------------


def _passes(account: EnergyAccount, work: Work, prefill: PrefillRun) -> PassFigures:
    record = account.record
    a, b = record.mark("prefill_start"), record.mark("prefill_end")
    duration = b.t_s - a.t_s
    batch_time = prefill.prefill_time_per_pass_s * prefill.passes
    pattern = pass_rhythm(prefill.batch_latencies_s, duration / prefill.passes)
    energy = account.total(a, b, pattern)
    # The gaps between the passes' batches (host work) are not prefill: take them out. Only
    # their total time is known, so they are bounded as short gaps.
    gap_time = max(0.0, duration - batch_time)
    gaps = gap_estimate(
        account, [(a.t_s, a.t_s + gap_time)] if gap_time > 0 else [], a.t_s, b.t_s,
        energy.value, "prefill_passes", placed=False,
    )  # fmt: skip
    batches = energy - gaps
    per_pass = batches / prefill.passes
    window_prefill = sum(b.prefill_s for b in work.batches) / max(work.repeats, 1)
    power = batches.value / batch_time if batch_time > 0 else 0.0
    mismatch = abs(prefill.prefill_time_per_pass_s - window_prefill) * power
    per_pass = per_pass.with_bound(Source("prefill_passes", "systematic", "time"), mismatch)
    return PassFigures(
        passes=prefill.passes,
        duration_s=duration,
        energy_j=energy,
        per_pass_j=per_pass,
        prefill_time_per_pass_s=prefill.prefill_time_per_pass_s,
        window_prefill_time_per_repeat_s=window_prefill,
    )


def _prefill_by_passes(
    account: EnergyAccount, work: Work, prefill: PrefillRun, passes: PassFigures
) -> tuple[Estimate, ...]:
    """Each window batch's prefill: one pass's energy shared by the passes' batch times (the
    same batch of every repeat gets the same share)."""
    latencies = prefill.batch_latencies_s
    total_latency = sum(latencies) or 1.0
    per_repeat = len(latencies)
    record = account.record
    a, b = record.mark("prefill_start"), record.mark("prefill_end")
    curve = account.summed
    swing = 0.0
    if curve:
        swing = (curve.peak_w(a.t_s, b.t_s) or 0.0) - (curve.low_w(a.t_s, b.t_s) or 0.0)
    out = []
    for i, _ in enumerate(work.batches):
        k = i % per_repeat if per_repeat else 0
        share = latencies[k] / total_latency if per_repeat else 1.0 / len(work.batches)
        estimate = passes.per_pass_j * share
        # Batches of one pass may draw different power; the readings bound how different: a
        # share by time is off by up to its time x (the power range), not half of it (one
        # low batch among high ones is a whole swing below their mean).
        estimate = estimate.with_bound(
            Source("batch_split", "systematic", f"prefill{k}"),
            latencies[k] * swing if per_repeat else 0.0,
        )
        out.append(estimate)
    return tuple(out)


# -- prefill from the timeline ------------------------------------------------------------------


def _prefill_by_timeline(
    account: EnergyAccount, work: Work, window: Estimate, t0: float, t1: float
) -> tuple[Estimate, ...]:
    curve = account.summed
    if not curve or curve.energy_j(t0, t1) <= 0:  # no readings: share by time
        integrals = [b.prefill_s for b in work.batches]
        whole = t1 - t0
    else:
        integrals = [curve.energy_j(b.span.start, b.span.first_token) for b in work.batches]
        whole = curve.energy_j(t0, t1)
    delay = account.delay_s + account.record.sample_interval_s
    low = (curve.low_w(t0, t1) if curve else None) or 0.0
    peak = (curve.peak_w(t0, t1) if curve else None) or 0.0
    top = sum(account.top_w(m) for m in account.metas)
    out = []
    for batch, integral in zip(work.batches, integrals, strict=True):
        share = integral / whole if whole > 0 else 0.0
        # A span shorter than the field's delay can hide a spike no reading saw: bound its
        # power by the GPUs' limits instead of the readings.
        high = top if batch.prefill_s < delay else peak
        bound = (high - low) * min(batch.prefill_s + delay, 2 * delay)
        out.append(
            (window * share).with_bound(Source("timeline_share", "systematic", "prefill"), bound)
        )
    return tuple(out)


# -- decode per batch ---------------------------------------------------------------------------


def decode_by_batch(account: EnergyAccount, work: Work, decode: Estimate) -> tuple[Estimate, ...]:
    """Each batch's decode energy: the total shared by decode time x the batch's mean reading
    (readings within the field's delay of its start left out: they still show prefill). A
    batch without enough readings shares by time alone, bounded by the window's power range."""
    delay = account.delay_s
    stats = [account.readings.stats(b.span.first_token + delay, b.span.end) for b in work.batches]
    durations = [b.decode_s for b in work.batches]
    if all(s is not None for s in stats):
        weights = [d * s[0] for d, s in zip(durations, stats, strict=True) if s is not None]
    else:
        weights = list(durations)
    whole = sum(weights)
    if whole <= 0:
        count = len(work.batches)
        return tuple(decode / count for _ in work.batches) if count else ()
    curve = account.summed
    first, last = work.batches[0].span.start, work.batches[-1].span.end
    swing = (
        ((curve.peak_w(first, last) or 0.0) - (curve.low_w(first, last) or 0.0)) if curve else 0.0
    )
    out = []
    for i, (weight, stat) in enumerate(zip(weights, stats, strict=True)):
        share = decode * (weight / whole)
        source = Source("batch_split", "random", f"decode{i}")
        if stat is not None and stat[0] > 0:
            share = share.with_std(source, abs(share.value) * stat[1] / stat[0])
        else:  # shared by time: off by up to its time x the power range (see above)
            share = share.with_bound(source, durations[i] * swing)
        out.append(share)
    return tuple(out)
