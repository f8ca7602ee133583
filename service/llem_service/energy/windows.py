"""Energy of counter windows, per GPU and summed, each an `Estimate` with its error sources.

A window runs between two counter marks. Its energy is the difference of the two reads of
each GPU's counter; its error sources:

- ``counter_quantisation`` (random): a read lags the truth by up to one update period, so it
  misses up to (peak power before the read) x period. One source per read, shared by the two
  windows that meet there, so it cancels in their sum.
- ``counter_resolution`` (random): 1 mJ per read.
- ``sensor_gain`` / ``sensor_offset`` (systematic): the sensor's accuracy from the table, one
  source per sensor generation, shared by every window of every GPU of that generation: a
  design's bias is assumed to be the same on each of its GPUs, so they add up rather than
  average out (offsets cancel in adjusted energy).
- ``part_time_sensing`` (systematic): on a GPU that integrates only part of each counter
  period, work periodic near the period aliases; see `part_time_bound`.

Without a counter (or after it reset) the window is integrated from power samples, with
``power_integration`` for the readings' refresh, lag and the steps between them, and
``power_gaps`` for stretches with no reading at all (failed reads, a power field given up):
there the GPU drew anything between its lowest reading and its power limit, so such a stretch
counts the middle of that range, +/- half of it. A field the sampler switched to the 1-s
average during the session lags as that field does, for the whole session.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llem_service.energy.base import CounterMark, DeviceMeta, MeterRecord
from llem_service.energy.field_readers import PowerField
from llem_service.energy.figures import Window
from llem_service.energy.integrate import PowerCurve, summed_curve, summed_readings
from llem_service.energy.sensors import SensorSpec
from llem_service.energy.uncertainty import Estimate, Source

#: Assumed when the counter's period could not be probed (NVML's typical 100 ms).
DEFAULT_COUNTER_PERIOD_S = 0.1
#: How late the averaged power field (``nvmlDeviceGetPowerUsage``, a 1 s mean) follows power.
AVERAGE_FIELD_DELAY_S = 1.0
#: How late the instant field follows power: a refresh every ~100 ms holding a ~25 ms mean
#: that itself lags (MEASUREMENT.md). Until the field's own refresh is probed, its bound.
INSTANT_FIELD_DELAY_S = 0.15
#: How long the sampler must keep reading after the last counter mark for the power before it
#: to show in the readings (the slowest field's delay is the averaged one; the instant field
#: is what a session samples when it can).
READINGS_TAIL_S = INSTANT_FIELD_DELAY_S + 0.05
#: How often NVML's power fields refresh (MEASUREMENT.md): readings closer than this are not
#: independent.
FIELD_REFRESH_S = 0.1
#: Sensed fraction assumed where the table does not know it (Yang et al.: 25% on A100/H100).
WORST_SENSED_FRACTION = 0.25
#: One counter read's resolution, joules.
READ_RESOLUTION_J = 0.001
#: Readings further apart than this many refresh periods (or sampling intervals, whichever is
#: longer), plus one interval, leave a gap: the power between them was not read.
GAP_PERIODS = 2.0
#: Bound of a GPU's power where NVML did not say its limit (no GPU it meters today is rated
#: above about 1.2 kW).
UNKNOWN_LIMIT_W = 1500.0


def field_delay_s(field: PowerField | None) -> float:
    """How far behind the truth samples of this power field run, at most."""
    return AVERAGE_FIELD_DELAY_S if field == "average" else INSTANT_FIELD_DELAY_S


def session_power_field(record: MeterRecord, meta: DeviceMeta) -> PowerField | None:
    """The slowest power field the GPU was read through in the session: the probed one, or
    the 1-s average where the sampler switched to it (its readings lag by a second from
    then on). Known once the session closed (the sampler reports its changes then)."""
    report = record.acquisition.sampler if record.acquisition else None
    for device in report.devices if report else ():
        if device.device_uuid == meta.uuid and (
            device.power.field_at_end == "average"
            or any(c.field == "power" and c.after == "average" for c in device.changes)
        ):
            return "average"
    return meta.power_field


def counter_read_bound_j(power_w: float, period_s: float) -> float:
    """What one counter read can miss: it lags the truth by up to one update period, at up to
    ``power_w`` (one-sided, so its full width is the rectangular bound)."""
    return power_w * period_s


def counter_window_std_j(power_w: float, period_s: float) -> float:
    """Standard uncertainty of a counter window from its two reads' quantisation alone (each
    rectangular, `counter_read_bound_j` wide), at a steady ``power_w``."""
    return math.sqrt(2.0) * counter_read_bound_j(power_w, period_s) / math.sqrt(3.0)


def part_time_bound(
    *,
    period_s: float | None,
    jitter_s: float,
    window_s: float,
    counter_period_s: float,
    swing_w: float,
    sensor: SensorSpec,
    visible_swing_w: float | None = None,
) -> float:
    """Bound of the aliasing error (J) of a counter window over work repeating every
    ``period_s`` (+/- ``jitter_s``) on a sensor that integrates a fraction f of each period.

    Work faster than the counter (decoding steps): each update credits its sensed part scaled
    to the period, off by at most (1 - f) x swing x period. While the work's phase relative to
    the counter stays put, those errors add up; once it has walked through a full cycle they
    average out. The phase walks by the beat between the two periods and diffuses with the
    work's jitter, so at most one coherence time (the shorter of the beat and the diffusion
    time, within the window) stays unaveraged: (1 - f) x swing x coherence. The swing within a
    step is invisible to the readings, which sense the same windows: ``swing_w`` bounds it.

    Work slower than the counter (whole batches): the readings see it, and only its changes
    fall partly outside a sensed window, each off by up to (1 - f) x ``visible_swing_w`` x
    period, independently: two changes per period, summed in quadrature. Returned as the
    half-width of the rectangle with that sum's standard deviation (the caller takes it as a
    rectangular bound, as every bound here), not as a two-sigma bound expanded again.
    """
    if not sensor.part_time or period_s is None or period_s <= 0 or window_s <= 0:
        return 0.0
    fraction = sensor.sensed_fraction or WORST_SENSED_FRACTION
    if period_s >= counter_period_s:
        changes = 2 * max(1.0, window_s / period_s)
        swing = swing_w if visible_swing_w is None else visible_swing_w
        # rectangular per change: a sum of n has std sqrt(n) x b / sqrt(3), which a rectangle
        # of half-width sqrt(n) x b has too
        return math.sqrt(changes) * (1.0 - fraction) * max(swing, 0.0) * counter_period_s
    coherent = min(coherence_s(period_s, jitter_s, counter_period_s), window_s)
    return (1.0 - fraction) * max(swing_w, 0.0) * coherent


def coherence_s(period_s: float, jitter_s: float, counter_period_s: float) -> float:
    """How long work repeating every ``period_s`` (+/- ``jitter_s``) keeps one phase relative
    to a counter updating every ``counter_period_s``: the beat of the two periods, or the time
    the jitter takes to diffuse the phase by a whole period, whichever is shorter."""
    ratio = counter_period_s / period_s
    off = abs(ratio - round(ratio))
    beat_s = counter_period_s / off if off > 1e-12 else math.inf
    diffusion_s = period_s * (period_s / jitter_s) ** 2 if jitter_s > 0 else math.inf
    return min(beat_s, diffusion_s)


#: Prefill passes on a part-time sensor run for at least this many coherence times, so the
#: aliasing left unaveraged is a small part of their energy (1 / 30 of it at most).
PASSES_PER_COHERENCE = 30


def passes_window_s(
    metas: Sequence[DeviceMeta], period: Periodicity, *, at_least_s: float, at_most_s: float
) -> float:
    """How long the prefill passes should run: ``at_least_s`` (many counter periods), longer
    on a part-time sensor while the passes' own period aliases with the counter's."""
    target = at_least_s
    for meta in metas:
        if meta.sensor.part_time and period.period_s:
            counter = meta.counter_update_period_s or DEFAULT_COUNTER_PERIOD_S
            coherent = coherence_s(period.period_s, period.jitter_s, counter)
            target = max(target, PASSES_PER_COHERENCE * coherent)
    return min(target, at_most_s)


@dataclass(frozen=True)
class Periodicity:
    """The work's dominant repetition inside a window: period and jitter (seconds)."""

    period_s: float | None = None
    jitter_s: float = 0.0


class EnergyAccount:
    """Energy arithmetic over one record, restricted to the GPUs that count."""

    def __init__(self, record: MeterRecord, used: Sequence[str]) -> None:
        self.record = record
        wanted = set(used)
        self.metas = [m for m in record.devices if m.uuid in wanted]
        if not self.metas:
            raise ValueError(f"none of {sorted(wanted)} was metered")
        self.sensors = {m.uuid: m.sensor for m in self.metas}
        # Each GPU's rows, split out of the timeline once for the curves and the warnings.
        self.rows = {m.uuid: record.timeline.device(m.uuid) for m in self.metas}
        # Each kept power reading sits where it was taken (NVML's timestamp where given).
        self.curves = {u: PowerCurve(*rows.power_points()) for u, rows in self.rows.items()}
        self.summed = summed_curve(list(self.curves.values()))
        timeline = record.timeline
        self.readings = summed_readings(
            timeline.t_s,
            timeline.device_uuid,
            timeline.power_w,
            [m.uuid for m in self.metas],
            FIELD_REFRESH_S,
            hold_s=max(max(m.power_refresh_s or 0.0, FIELD_REFRESH_S) for m in self.metas)
            + record.sample_interval_s,
        )
        #: Each GPU's slowest power field over the session.
        self.fields = {m.uuid: session_power_field(record, m) for m in self.metas}
        #: How far behind the truth the readings run, at most (the slowest GPU's field).
        self.delay_s = max(field_delay_s(f) for f in self.fields.values())
        #: The lowest reading of the whole session (idle included): power never goes below.
        self.floor_w = self.summed.low_w(-math.inf, math.inf) if self.summed else None
        #: The same, each GPU's own.
        self.floors = {
            u: c.low_w(-math.inf, math.inf) if c else None for u, c in self.curves.items()
        }

    def period_s(self, meta: DeviceMeta) -> float:
        return meta.counter_update_period_s or DEFAULT_COUNTER_PERIOD_S

    def delay_of(self, meta: DeviceMeta) -> float:
        """How far behind the truth this GPU's readings ran, at most, over the session."""
        return field_delay_s(self.fields[meta.uuid])

    def max_gap_s(self, meta: DeviceMeta) -> float:
        """Longest stretch between two readings of this GPU that is not a gap."""
        # Never below NVML's usual refresh: the integration bound is made for readings that
        # far apart, whatever the probe saw.
        refresh = max(meta.power_refresh_s or 0.0, FIELD_REFRESH_S)
        interval = self.record.sample_interval_s
        return GAP_PERIODS * max(refresh, interval) + interval

    @staticmethod
    def top_w(meta: DeviceMeta) -> float:
        """The most this GPU can draw: its power limit."""
        return meta.power_limit_w or UNKNOWN_LIMIT_W

    # -- one GPU ------------------------------------------------------------------------------

    def window(self, meta: DeviceMeta, a: CounterMark, b: CounterMark) -> Window:
        """The raw figures of one GPU's window (no uncertainty)."""
        curve = self.curves[meta.uuid]
        integrated = curve.energy_j(a.t_s, b.t_s) if curve else None
        peak = curve.peak_w(a.t_s, b.t_s) if curve else None
        start, end = a.energy_mj.get(meta.uuid), b.energy_mj.get(meta.uuid)
        reset = start is not None and end is not None and end < start
        if start is not None and end is not None and not reset:
            return Window((end - start) / 1e3, "nvml_energy_counter", integrated, peak, False)
        if integrated is None:
            raise ValueError(f"GPU {meta.uuid} has neither an energy counter nor power samples")
        bridged, gap_bound = self._bridge_gaps(meta, a.t_s, b.t_s, integrated)
        return Window(bridged, "nvml_power_integral", integrated, peak, reset, gap_bound)

    def _bridge_gaps(
        self, meta: DeviceMeta, t0: float, t1: float, integrated: float
    ) -> tuple[float, float]:
        """The integral with each gap in the readings (`PowerCurve.uncovered`) counted at the
        middle of what the GPU can have drawn there, from its lowest reading of the session
        to its power limit; and how far that may be off (half the range x the gaps' length).
        """
        curve = self.curves[meta.uuid]
        gaps = curve.uncovered(t0, t1, self.max_gap_s(meta))
        if not gaps:
            return integrated, 0.0
        low = self.floors[meta.uuid] or 0.0
        top = max(self.top_w(meta), low)
        length = sum(b - a for a, b in gaps)
        drawn = integrated - sum(curve.energy_j(a, b) for a, b in gaps)
        return drawn + length * (low + top) / 2, length * (top - low) / 2

    def estimate(
        self,
        meta: DeviceMeta,
        a: CounterMark,
        b: CounterMark,
        periodicity: Periodicity | None = None,
    ) -> tuple[Estimate, Window]:
        """One GPU's window with its error sources."""
        w = self.window(meta, a, b)
        span = b.t_s - a.t_s
        sensor = self.sensors[meta.uuid]
        uuid = meta.uuid
        if w.source == "nvml_energy_counter":
            period = self.period_s(meta)
            mean = w.energy_j / span if span > 0 else 0.0
            est = Estimate(w.energy_j)
            for mark, sign in ((a, -1.0), (b, 1.0)):
                read = Source("counter_quantisation", "random", f"{uuid}@{mark.label}")
                top = max(self._edge_power(meta, mark.t_s, period), mean)
                # A read tried again after a transient error came that much after the mark:
                # it may hold energy from after it, as a lagging read misses some before.
                late = mark.read_delay_s.get(uuid, 0.0)
                bound = counter_read_bound_j(top, period + late)
                est = est + Estimate.bounded(0.0, read, bound) * sign
                resolution = Source("counter_resolution", "random", f"{uuid}@{mark.label}")
                est = est + Estimate.bounded(0.0, resolution, READ_RESOLUTION_J) * sign
        else:
            scope = f"{uuid}@{a.label}..{b.label}"
            est = (
                Estimate(w.energy_j)
                .with_bound(
                    Source("power_integration", "random", scope),
                    self.integration_bound_j(meta, a.t_s, b.t_s, w.energy_j),
                )
                .with_bound(Source("power_gaps", "systematic", scope), w.gap_bound_j)
            )
        est = self._with_sensor(est, meta, sensor, span, w.energy_j)
        if periodicity is not None:
            curve = self.curves[meta.uuid]
            visible = (
                (curve.peak_w(a.t_s, b.t_s) or 0.0) - (curve.low_w(a.t_s, b.t_s) or 0.0)
                if curve
                else None
            )
            bound = part_time_bound(
                period_s=periodicity.period_s,
                jitter_s=periodicity.jitter_s,
                window_s=span,
                counter_period_s=self.period_s(meta),
                swing_w=self.swing_w(meta, a.t_s, b.t_s),
                sensor=sensor,
                visible_swing_w=visible,
            )
            est = est.with_bound(
                Source("part_time_sensing", "systematic", f"{uuid}@{a.label}..{b.label}"), bound
            )
        return est, w

    @staticmethod
    def _with_sensor(
        est: Estimate, meta: DeviceMeta, sensor: SensorSpec, span_s: float, energy_j: float
    ) -> Estimate:
        gain = Source("sensor_gain", "systematic", meta.sensor.generation)
        offset = Source("sensor_offset", "systematic", meta.sensor.generation)
        # Signed contributions, one source per generation: its GPUs' windows err together.
        return est + Estimate(
            0.0,
            {
                gain: sensor.gain_rel * energy_j / math.sqrt(3.0),
                offset: sensor.offset_w * span_s / math.sqrt(3.0),
            },
        )

    def _edge_power(self, meta: DeviceMeta, t: float, period: float) -> float:
        """Highest power the period before a read can have held: the readings around it
        (they run late by up to the field's delay, so the search reaches that far after).
        Where the readings stop before that (the session closed), what came last is unseen:
        the GPU's power limit bounds it."""
        curve = self.curves[meta.uuid]
        if not curve:
            return self.top_w(meta)
        delay = self.delay_of(meta)
        margin = self.record.sample_interval_s
        if curve.t[-1] < t + delay:
            return self.top_w(meta)
        t0, t1 = t - period - margin, t + delay + margin
        if not curve.read_between(t0, t1):  # a gap around the read: nothing says what it was
            return self.top_w(meta)
        return max(curve.power_at(t), curve.peak_w(t0, t1) or 0.0)

    def integration_bound_j(self, meta: DeviceMeta, t0: float, t1: float, energy: float) -> float:
        """Integrated samples misplace each power step by up to the sampling interval plus the
        field's delay: (top power + the readings' total variation) x that time."""
        curve = self.curves[meta.uuid]
        delay = self.delay_of(meta) + self.record.sample_interval_s
        span = t1 - t0
        top = max(
            energy / span if span > 0 else 0.0,
            self._edge_power(meta, t0, delay),
            self._edge_power(meta, t1, delay),
        )
        steps = curve.variation_w(t0 - delay, t1 + delay) if curve else 0.0
        return (top + steps) * delay

    def swing_w(self, meta: DeviceMeta, t0: float, t1: float) -> float:
        """How far power may swing within the work's period: from the lowest reading to the
        power limit (the readings themselves cannot show a swing the sensor aliases away)."""
        curve = self.curves[meta.uuid]
        low = curve.low_w(t0, t1) if curve else None
        return max(0.0, self.top_w(meta) - (low or 0.0))

    # -- all GPUs -----------------------------------------------------------------------------

    def total(
        self, a: CounterMark, b: CounterMark, periodicity: Periodicity | None = None
    ) -> Estimate:
        """Energy of the window over every GPU that counts."""
        out = Estimate(0.0)
        for meta in self.metas:
            est, _ = self.estimate(meta, a, b, periodicity)
            out = out + est
        return out
