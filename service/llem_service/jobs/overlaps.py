"""Which llem experiments ran beside which: the ``placement.overlapping_experiments`` of results.

The scheduler tells the tracker when each run begins and ends, and where it runs (this host,
or the Slurm node once the job starts there). When a run ends, every other run on the same
host whose span met its span is an overlap: the ones still running, and the ones that ended
after it began (kept until no running run began before they ended).

`with_placement` puts a run's `Placement` into its result, with a warning when it had
neighbours.

Other llem services of the same host are seen through the shared GPU locks
(`llem_service.jobs.gpu_locks`): the tracker samples who holds which lock at each run's start
and end and every second or so while runs are going. Such a neighbour's start is the time its
lock file gives; its end, the last time it was seen, so its overlap is a lower bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llem_client import ExperimentResult, OverlappingExperiment, Placement, ResultWarning

from llem_service.jobs.gpu_locks import LockHolder


@dataclass
class _Span:
    job_id: str
    host: str
    gpus: tuple[str, ...]
    start: float
    end: float | None = None
    service: str | None = None  # another service's run, seen through the locks: its
    # end is when it was last seen


class OverlapTracker:
    """Spans of runs, and the overlaps between them.

    Args:
        host: This host's name (where local runs run, and other services' runs are seen).
        neighbours: Returns the locks other services hold now (`PerGpuPool.neighbours`).
        clock: Wall clock, seconds since the epoch.
    """

    def __init__(
        self,
        host: str,
        neighbours: Callable[[], Iterable[LockHolder]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self._neighbours = neighbours
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[str, _Span] = {}
        self._others: dict[tuple[str, str], _Span] = {}  # (service, job id) -> span

    def begin(self, job_id: str, gpus: Iterable[str] = (), host: str | None = None) -> None:
        """A run of ``job_id`` starts now on ``gpus`` of ``host`` (this host by default)."""
        self.observe()
        with self._lock:
            self._runs[job_id] = _Span(job_id, host or self.host, tuple(gpus), self._clock())

    def place(self, job_id: str, host: str, gpus: Iterable[str], started_at: float) -> None:
        """Where a run really began (a Slurm job once its node starts it)."""
        with self._lock:
            span = self._runs.get(job_id)
            if span is not None:
                span.host, span.gpus, span.start = host, tuple(gpus), started_at

    def placement(self, job_id: str) -> tuple[str, tuple[str, ...]] | None:
        """The host and GPUs of a run that has begun."""
        with self._lock:
            span = self._runs.get(job_id)
            return (span.host, span.gpus) if span else None

    def end(self, job_id: str) -> list[OverlappingExperiment]:
        """The run of ``job_id`` ended now: the runs that overlapped it, longest overlap first."""
        self.observe()
        with self._lock:
            now = self._clock()
            mine = self._runs.get(job_id)
            if mine is None:
                return []
            mine.end = now
            out = []
            for other in [*self._runs.values(), *self._others.values()]:
                if other is mine or other.host != mine.host:
                    continue
                overlap = min(now, other.end or now) - max(mine.start, other.start)
                if overlap <= 0:
                    continue
                out.append(
                    OverlappingExperiment(
                        experiment_id=other.job_id,
                        host=other.host,
                        gpus=list(other.gpus),
                        service=other.service,
                        overlap_s=round(overlap, 3),
                    )
                )
            self._prune()
        return sorted(out, key=lambda o: (-o.overlap_s, o.experiment_id))

    def observe(self) -> None:
        """Sample the locks other services hold (no-op without a neighbour source)."""
        if self._neighbours is None:
            return
        holders = list(self._neighbours())
        now = self._clock()
        seen: dict[tuple[str, str], list[str]] = {}
        for holder in holders:
            if holder.job_id is None or holder.owner is None:
                continue
            seen.setdefault((holder.owner, holder.job_id), []).append(holder.uuid)
        with self._lock:
            for (owner, job_id), uuids in seen.items():
                span = self._others.get((owner, job_id))
                if span is None:
                    since = next((h.since for h in holders if h.job_id == job_id), None)
                    span = _Span(job_id, self.host, tuple(sorted(uuids)), since or now)
                    span.service = owner
                    self._others[(owner, job_id)] = span
                span.end = now  # the last time it was seen holding its GPUs

    def _prune(self) -> None:
        running = [s.start for s in self._runs.values() if s.end is None]
        horizon = min(running) if running else float("inf")
        for job_id in [j for j, s in self._runs.items() if s.end is not None and s.end < horizon]:
            del self._runs[job_id]
        for key in [k for k, s in self._others.items() if s.end is not None and s.end < horizon]:
            del self._others[key]


def with_placement(result: ExperimentResult, placement: Placement) -> ExperimentResult:
    """``result`` with where it ran, and a warning when other experiments overlapped it."""
    warnings = list(result.warnings)
    if placement.overlapping_experiments:
        warnings.append(
            ResultWarning(code="concurrent_experiments", message=_concurrent(placement))
        )
    return result.model_copy(update={"placement": placement, "warnings": warnings})


def _concurrent(placement: Placement) -> str:
    others: list[OverlappingExperiment] = placement.overlapping_experiments
    longest = max(o.overlap_s for o in others)
    return (
        f"{len(others)} other experiment(s) ran on {placement.host} during this one (up to "
        f"{longest:.1f} s; see placement.overlapping_experiments). They had GPUs of their own "
        "but shared the host's CPUs, PCIe links and memory bandwidth, which can slow this one "
        "and shift its power. Set exclusive_host: true to run it alone."
    )
