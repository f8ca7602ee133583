"""Honest readings: which power field a GPU is read through, how often it refreshes and how old
its readings are, what a failed read means, and which readings are kept.

- **Probing** (`probe_counter`, `probe_sensors`, when a session opens): the energy counter and
  each power field are tried several times before they are judged (NVML answers NotSupported
  or Unknown transiently when polled fast); then the energy counter and the instant power
  field are polled for a moment, which gives the counter's update period, the instant field's
  refresh period and the age of its readings (NVML stamps each field value with its own
  time).
- **Counter reads at marks** (`RetryPolicy.mark_tries`): tried again a few milliseconds later
  on a transient error; a read that never answers leaves that GPU's counter out of the
  windows that meet there (they are integrated from the readings), and never fails the run.
- **Reading** (`PowerReader`, `OptionalReader`, each sampling round): a failed read is a gap
  (``None``), never a 0; a field is changed (instant to the 1-s average) or given up only after
  a run of failures (`RetryPolicy`), and every change is recorded with its reason. A power
  reading NVML has already given (the same timestamp, or the same value within the field's
  refresh period where there is no timestamp) is a repeat, and a reading of 0 W or less is no
  reading: both are counted and left out of the integral, as Zeus does.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llem_service.energy.nvml import (
    GpuDevice,
    NvmlError,
    NvmlGpuLost,
    NvmlNotSupported,
    PowerReading,
    optional,
)
from llem_service.energy.samples import FAILED, FRESH, NO_FIELD, NONPOSITIVE, REPEAT

Clock = Callable[[], float]
PowerField = Literal["instant", "average"]

#: A field value older than this when read is not trusted as a timestamp (clock mismatch).
MAX_READING_AGE_S = 5.0
#: Assumed refresh period of a power field that could not be probed (NVML's typical 100 ms).
DEFAULT_REFRESH_S = 0.1
#: The energy counter is watched at most this long for the changes its period is measured
#: from (a 100-ms counter needs 0.4 s; a slower one takes longer, never past this).
COUNTER_PROBE_MAX_S = 3.0
#: Changes of the counter wanted: three gaps to take the median of.
_COUNTER_CHANGES = 4


@dataclass(frozen=True)
class RetryPolicy:
    """How much failure a field gets before it is changed or given up.

    Attributes:
        failures: Consecutive failed reads...
        min_span_s: ...spanning at least this long (so a burst at 10 ms is not a verdict).
        probe_tries: Tries of each power field, and of the energy counter, when the session
            opens.
        probe_gap_s: Pause between those tries.
        mark_tries: Tries of a counter read at a mark (a phase edge)...
        mark_gap_s: ...this far apart: a few milliseconds in all, so the value read is still
            the mark's (the lateness is counted in its uncertainty).
    """

    failures: int = 10
    min_span_s: float = 0.5
    probe_tries: int = 5
    probe_gap_s: float = 0.01
    mark_tries: int = 5
    mark_gap_s: float = 0.002


#: A counter answering errors other than NotSupported is tried this many times longer.
_TRANSIENT_TRIES_FACTOR = 4


def probe_counter(
    device: GpuDevice, policy: RetryPolicy, sleep: Callable[[float], None]
) -> tuple[bool, str | None]:
    """Whether the GPU has an energy counter. NVML answers NotSupported or Unknown transiently
    when polled fast, so one failure is no verdict: the counter is absent after
    ``probe_tries`` NotSupported answers, or after four times as many tries of other errors
    (a counter that keeps failing cannot be read at the marks either). Without one, why, in
    words (None where NotSupported says it: the GPU's kind then tells why)."""
    last: NvmlError | None = None
    unsupported = 0
    tries = policy.probe_tries * _TRANSIENT_TRIES_FACTOR
    for attempt in range(tries):
        try:
            device.energy_mj()
        except NvmlGpuLost:
            raise
        except NvmlError as exc:
            last = exc
            unsupported += isinstance(exc, NvmlNotSupported)
            if unsupported >= policy.probe_tries:
                return False, None
            if attempt + 1 < tries:
                sleep(policy.probe_gap_s)
            continue
        return True, None
    return False, f"its energy counter failed {tries} reads in a row (last: {last})"


@dataclass(frozen=True)
class FieldChange:
    """A field changed or given up during a session, and why.

    Attributes:
        t_s: Session clock when it happened.
        field: ``power``, ``temperature_c``, ``sm_clock_mhz``...
        before: What was read before (``instant``, ``average``, ``on``).
        after: What is read now; None when the field was given up.
        reason: In words, with NVML's last answer.
    """

    t_s: float
    field: str
    before: str | None
    after: str | None
    reason: str


@dataclass(frozen=True)
class SensorProbe:
    """What probing one GPU's sensors found when the session opened.

    Attributes:
        counter_period_s: The energy counter's update period (None without a counter).
        power_field: The power field chosen, or None when neither answered.
        power_field_reason: Why that field, in words.
        instant_refresh_s: The instant field's refresh period; None where it is not read or
            did not change while probed.
        instant_lag_s: Median age of an instant reading when read (NVML's timestamp to our
            read); None where the field carries no timestamp. The sensor's own averaging
            window comes on top (measured on hardware by benchmarks/gpu_validation.py).
        probe_failures: Transient failures met while probing.
        counter_changes: How often the counter changed while probed (a counter that changed
            fewer than twice in ``COUNTER_PROBE_MAX_S`` has no measurable period:
            ``counter_period_s`` is None then).
    """

    counter_period_s: float | None
    power_field: PowerField | None
    power_field_reason: str
    instant_refresh_s: float | None = None
    instant_lag_s: float | None = None
    probe_failures: int = 0
    counter_changes: int = 0


def _choose_power_field(
    device: GpuDevice, policy: RetryPolicy, sleep: Callable[[float], None]
) -> tuple[PowerField | None, str, int]:
    """The first field that answers within its tries: (field, why, failures met)."""
    failures = 0
    reasons: list[str] = []
    for name, read in (("instant", device.power_instant), ("average", device.power_average)):
        last: NvmlError | None = None
        for attempt in range(policy.probe_tries):
            try:
                read()
            except NvmlGpuLost:
                raise
            except NvmlError as exc:  # not supported, no permission, unknown: try again
                failures += 1
                last = exc
                if attempt + 1 < policy.probe_tries:
                    sleep(policy.probe_gap_s)
                continue
            why = "it answered" if attempt == 0 else f"it answered on try {attempt + 1}"
            if name == "average":
                why = f"{'; '.join(reasons)}; the 1-s average answered"
            return name, why, failures  # type: ignore[return-value]
        reasons.append(f"the {name} power field failed {policy.probe_tries} tries ({last})")
    return None, "; ".join(reasons), failures


class _Watch:
    """One GPU's counter and instant field, polled while probing."""

    def __init__(self, device: GpuDevice, has_counter: bool, chosen: PowerField | None):
        self.device = device
        self.has_counter = has_counter
        self.instant = chosen == "instant"
        self.counter_changes: list[float] = []
        self.last_counter = optional(device.energy_mj) if has_counter else None
        self.instant_changes: list[float] = []
        self.stamps: list[int] = []
        self.ages: list[float] = []
        self.last: PowerReading | None = None
        self.failures = 0

    def enough(self, now: float, instant_until: float, counter_until: float) -> bool:
        counter = (
            not self.has_counter
            or len(self.counter_changes) >= _COUNTER_CHANGES
            or now >= counter_until
        )
        instant = not self.instant or len(self.instant_changes) >= 4 or now >= instant_until
        return counter and instant

    def poll(self, now: float, wall: Clock) -> None:
        if self.has_counter:
            value = optional(self.device.energy_mj)
            if value is None:
                self.failures += 1
            elif value != self.last_counter:
                self.counter_changes.append(now)
                self.last_counter = value
        if not self.instant:
            return
        reading = optional(self.device.power_instant)
        if reading is None:
            self.failures += 1
            return
        stamp = reading.timestamp_us
        if stamp is not None:
            self.ages.append(wall() - stamp / 1e6)
        previous, self.last = self.last, reading
        if previous is None:
            changed = False
        elif stamp is not None:
            changed = stamp != previous.timestamp_us
        else:
            changed = reading.power_mw != previous.power_mw
        if changed:
            self.instant_changes.append(now)
        if (previous is None or changed) and stamp is not None:
            self.stamps.append(stamp)

    def counter_period(self) -> float | None:
        """The median gap between the counter's changes; the one gap where it changed only
        twice; None where it changed less (no period can be told: not a lower bound such
        as the time watched over the changes, which would understate the period)."""
        if not self.has_counter:
            return None
        gaps = [b - a for a, b in itertools.pairwise(self.counter_changes)]
        return statistics.median(gaps) if gaps else None

    def refresh(self) -> float | None:
        if len(self.stamps) >= 3:  # NVML's own clock: better than when we happened to look
            return statistics.median((b - a) / 1e6 for a, b in itertools.pairwise(self.stamps))
        if len(self.instant_changes) >= 3:
            return statistics.median(b - a for a, b in itertools.pairwise(self.instant_changes))
        return None

    def lag(self) -> float | None:
        trusted = [a for a in self.ages if 0 <= a < MAX_READING_AGE_S]
        return statistics.median(trusted) if trusted else None


def probe_sensors(
    devices: Sequence[GpuDevice],
    has_counter: Sequence[bool],
    clock: Clock,
    wall: Clock,
    sleep: Callable[[float], None],
    policy: RetryPolicy | None = None,
    *,
    max_s: float = 0.6,
    counter_max_s: float = COUNTER_PROBE_MAX_S,
    poll_s: float = 0.002,
) -> list[SensorProbe]:
    """Choose each GPU's power field, then poll counters and instant fields together.

    The counter's period is the median gap between its changes, watched until it changed
    four times or ``counter_max_s`` passed (the single gap where it changed only twice; None
    where it changed less: a counter that slow, or stuck, cannot bound a window). The instant
    field is watched for ``max_s`` at most: its refresh period is the median gap between its
    distinct timestamps (between value changes where it carries none; None when the value did
    not change), and its lag the median of (our read's wall time - NVML's timestamp).
    """
    policy = policy or RetryPolicy()
    chosen = [_choose_power_field(d, policy, sleep) for d in devices]
    watches = [
        _Watch(d, c, field_name)
        for d, c, (field_name, _, _) in zip(devices, has_counter, chosen, strict=True)
    ]
    started = clock()
    instant_until, counter_until = started + max_s, started + counter_max_s
    now = started
    while not all(w.enough(now, instant_until, counter_until) for w in watches):
        sleep(poll_s)
        now = clock()
        for watch in watches:
            watch.poll(now, wall)
    return [
        SensorProbe(
            counter_period_s=watch.counter_period(),
            power_field=field_name,
            power_field_reason=why,
            instant_refresh_s=watch.refresh(),
            instant_lag_s=watch.lag(),
            probe_failures=failures + watch.failures,
            counter_changes=len(watch.counter_changes),
        )
        for watch, (field_name, why, failures) in zip(watches, chosen, strict=True)
    ]


@dataclass
class PowerStats:
    """What became of one GPU's power readings over a session."""

    field_at_start: PowerField | None
    field_at_end: PowerField | None = None
    readings: int = 0
    fresh: int = 0
    repeats: int = 0
    nonpositive: int = 0
    failed: int = 0
    untrusted_timestamps: int = 0


class _Streak:
    """Consecutive failures of one field, against the policy."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.count = 0
        self.since: float | None = None

    def fail(self, t: float) -> bool:
        """Count a failure at ``t``; True when the budget is spent."""
        self.count += 1
        if self.since is None:
            self.since = t
        return self.count >= self.policy.failures and t - self.since >= self.policy.min_span_s

    def reset(self) -> None:
        self.count = 0
        self.since = None


class PowerReader:
    """Reads one GPU's power each round: keeps fresh readings, flags the rest.

    Args:
        device: The GPU.
        field: The field chosen by `probe_sensors`.
        refresh_s: The field's refresh period (for telling a repeat without a timestamp).
        clock: The session's clock; ``wall``: wall-clock seconds since 1970 (to age NVML's
            timestamps).
    """

    def __init__(
        self,
        device: GpuDevice,
        field: PowerField | None,
        refresh_s: float | None,
        policy: RetryPolicy,
        clock: Clock,
        wall: Clock,
    ) -> None:
        self.device = device
        self.field = field
        self.refresh_s = refresh_s or DEFAULT_REFRESH_S
        self.clock = clock
        self.wall = wall
        self.stats = PowerStats(field_at_start=field, field_at_end=field)
        self.changes: list[FieldChange] = []
        self._streak = _Streak(policy)
        self._last_stamp: int | None = None
        self._last_mw: int | None = None
        self._last_t = -math.inf

    def _read(self) -> PowerReading:
        if self.field == "instant":
            return self.device.power_instant()
        return self.device.power_average()

    def read(self) -> tuple[float, float, int]:
        """(power W, when it was taken on the session clock, flag); NaN where none."""
        if self.field is None:
            return math.nan, math.nan, NO_FIELD
        stats = self.stats
        stats.readings += 1
        try:
            reading = self._read()
        except NvmlGpuLost:
            raise
        except NvmlError as exc:
            stats.failed += 1
            if self._streak.fail(self.clock()):
                self._change_field(exc)
            return math.nan, math.nan, FAILED
        t = self.clock()
        self._streak.reset()
        taken = t
        stamp = reading.timestamp_us
        if stamp is not None:
            age = self.wall() - stamp / 1e6
            if 0 <= age < MAX_READING_AGE_S:
                taken = t - age
            else:
                stats.untrusted_timestamps += 1
                stamp = None
        mw = reading.power_mw
        if stamp is not None:
            repeat = stamp == self._last_stamp
        else:
            repeat = mw == self._last_mw and t - self._last_t < self.refresh_s
        if repeat:
            stats.repeats += 1
            return mw / 1e3, taken, REPEAT
        if mw <= 0:
            stats.nonpositive += 1
            return mw / 1e3, taken, NONPOSITIVE
        self._last_stamp, self._last_mw, self._last_t = stamp, mw, t
        stats.fresh += 1
        return mw / 1e3, taken, FRESH

    def _change_field(self, error: NvmlError) -> None:
        before = self.field
        failed = self._streak.count
        self._streak.reset()
        after: PowerField | None = None
        if before == "instant":
            try:
                self.device.power_average()
                after = "average"
            except NvmlGpuLost:
                raise
            except NvmlError:
                after = None
        self.field = after
        self.stats.field_at_end = after
        self._last_stamp = self._last_mw = None
        then = (
            "switched to the 1-s average"
            if after
            else "no power field left: the timeline has no power from here"
        )
        self.changes.append(
            FieldChange(
                t_s=self.clock(),
                field="power",
                before=before,
                after=after,
                reason=f"the {before} power field failed {failed} reads in a row "
                f"(last: {error}); {then}",
            )
        )


@dataclass
class OptionalReader:
    """One descriptive field (temperature, clock...) with the same retry budget: a failure is
    ``None`` for that round, and only a run of them gives the field up."""

    name: str
    read_fn: Callable[[], int]
    policy: RetryPolicy
    clock: Clock
    failed: int = 0
    given_up: bool = False
    changes: list[FieldChange] = field(default_factory=list)
    _streak: _Streak | None = None

    def read(self) -> int | None:
        if self.given_up:
            return None
        streak = self._streak or _Streak(self.policy)
        self._streak = streak
        try:
            value = self.read_fn()
        except NvmlGpuLost:
            raise
        except NvmlError as exc:
            self.failed += 1
            if streak.fail(self.clock()):
                self.given_up = True
                self.changes.append(
                    FieldChange(
                        t_s=self.clock(),
                        field=self.name,
                        before="on",
                        after=None,
                        reason=f"{streak.count} reads in a row failed (last: {exc}); given up",
                    )
                )
            return None
        streak.reset()
        return value
