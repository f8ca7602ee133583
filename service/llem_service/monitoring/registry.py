"""The service's Prometheus metrics, in a registry of its own per app (tests build many apps).

| metric | type | labels |
| --- | --- | --- |
| ``llem_http_requests_total`` | counter | route (the path template), method, status |
| ``llem_http_request_duration_seconds`` | histogram | route, method |
| ``llem_jobs`` | gauge | status |
| ``llem_queue_length`` | gauge | |
| ``llem_running_job_phase`` | gauge (1 per running job) | job_id, model, phase |
| ``llem_running_job_progress_ratio`` | gauge | job_id |
| ``llem_experiments_finished_total`` | counter | outcome, failure (the failure kind's slug) |
| ``llem_measured_energy_joules_total`` | counter | model |
| ``llem_measured_output_tokens_total`` | counter | model |
| ``llem_gpu_*`` | see `llem_service.monitoring.gpus` | uuid, name |

Job counts are read from the store at each scrape; finished experiments and energy are counted
as the scheduler records outcomes (since this server started, as Prometheus counters are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llem_client import ExperimentResult, Job, JobStatus
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llem_service.errors import PROBLEM_URN
from llem_service.jobs.base import JobStore
from llem_service.monitoring.gpus import GpuTelemetry

#: Request latency buckets, seconds: the API answers in milliseconds, a result file in more.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _JobsCollector(Collector):
    """Job counts by status, the queue, and each running job's phase, read at scrape time."""

    def __init__(self, store: JobStore, running: Callable[[], tuple[str, ...]]) -> None:
        self.store = store
        self.running = running

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = self.store.status_counts()
        jobs = GaugeMetricFamily("llem_jobs", "Jobs in the store, by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status, 0))
        queue = GaugeMetricFamily(
            "llem_queue_length", "Jobs waiting to run (the running ones excluded)."
        )
        queue.add_metric([], counts.get(JobStatus.QUEUED, 0))
        phase = GaugeMetricFamily(
            "llem_running_job_phase",
            "1 for each running job, labelled with its current phase.",
            labels=["job_id", "model", "phase"],
        )
        progress = GaugeMetricFamily(
            "llem_running_job_progress_ratio",
            "Completed / total of the running job's current phase, where it counts.",
            labels=["job_id"],
        )
        for job_id in self.running():
            job = self.store.get(job_id)
            if job is None or job.status is not JobStatus.RUNNING:
                continue
            phase.add_metric([job.id, job.model, job.progress.phase], 1)
            if job.progress.total:
                progress.add_metric([job.id], job.progress.completed / job.progress.total)
        return [jobs, queue, phase, progress]


class ServiceMetrics:
    """Everything ``/metrics`` exports for one app. The job gauges join when the store opens
    (`watch_jobs`).

    Args:
        telemetry: The live GPU readings.
    """

    def __init__(self, telemetry: GpuTelemetry) -> None:
        self.registry = CollectorRegistry()
        self._jobs: _JobsCollector | None = None
        self.telemetry = telemetry
        self.http_requests = Counter(
            "llem_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "llem_http_request_duration_seconds",
            "Time from a request's arrival to its response's first byte (an event stream "
            "lasts as long as its job: only its start counts), seconds.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.finished = Counter(
            "llem_experiments_finished",
            "Experiments that ran and ended, by outcome (succeeded, failed, cancelled) and, "
            "for failures, the failure kind.",
            ["outcome", "failure"],
            registry=self.registry,
        )
        self.energy = Counter(
            "llem_measured_energy_joules",
            "Energy the meter measured in succeeded experiments' measured windows (raw, all "
            "metered GPUs), joules, by model.",
            ["model"],
            registry=self.registry,
        )
        self.output_tokens = Counter(
            "llem_measured_output_tokens",
            "Output tokens generated in succeeded experiments' measured windows, by model.",
            ["model"],
            registry=self.registry,
        )
        self.registry.register(telemetry)

    def watch_jobs(self, store: JobStore, running: Callable[[], tuple[str, ...]]) -> None:
        """Export the job gauges of ``store`` (read at each scrape); ``running`` gives the ids
        of the jobs running now."""
        self.unwatch_jobs()
        self._jobs = _JobsCollector(store, running)
        self.registry.register(self._jobs)

    def unwatch_jobs(self) -> None:
        if self._jobs is not None:
            self.registry.unregister(self._jobs)
            self._jobs = None

    def job_finished(self, job: Job, result: ExperimentResult | None) -> None:
        """Count a job the scheduler has recorded as ended (from the scheduler's thread)."""
        failure = ""
        if job.error is not None and job.error.type.startswith(PROBLEM_URN):
            failure = job.error.type.removeprefix(PROBLEM_URN)
        self.finished.labels(job.status.value, failure).inc()
        if result is not None and job.status is JobStatus.SUCCEEDED:
            self.output_tokens.labels(job.model).inc(result.output_tokens)
            if result.energy is not None and result.energy.energy_j is not None:
                self.energy.labels(job.model).inc(result.energy.energy_j.value)
