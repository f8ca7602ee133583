"""An executor wrapper that connects runs to live monitoring, whatever the executor.

Around each run it holds the idle poll off the run's GPUs (`IdlePoller.quiet`), from before the
experiment starts until it has ended, and it points the run's ``on_telemetry`` at the service's
`GpuTelemetry`. Everything else passes through unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from llem_client import ExperimentConfig

from llem_service.energy.readings import GpuReading
from llem_service.executors.base import (
    Executor,
    ExecutorSession,
    GpuGrant,
    RunContext,
    RunningJob,
    RunOutcome,
)
from llem_service.monitoring.gpus import GpuTelemetry, IdlePoller


class MonitoredExecutor:
    """``inner``, with its runs fed to ``telemetry`` and kept clear of ``poller``."""

    def __init__(self, inner: Executor, telemetry: GpuTelemetry, poller: IdlePoller | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.telemetry = telemetry
        self.poller = poller

    def unavailable_reason(self) -> str | None:
        return self.inner.unavailable_reason()

    def open(self, grant: GpuGrant) -> ExecutorSession:
        return MonitoredSession(self.inner.open(grant), grant, self)

    def reattach(self, job: RunningJob) -> ExecutorSession | None:
        session = self.inner.reattach(job)
        return None if session is None else MonitoredSession(session, job.grant, self)


class MonitoredSession:
    """A session whose runs report live readings and pause the idle poll on their GPUs."""

    def __init__(self, inner: ExecutorSession, grant: GpuGrant, owner: MonitoredExecutor):
        self.inner = inner
        self.grant = grant
        self.owner = owner

    def _forward(self, readings: Sequence[GpuReading]) -> None:
        self.owner.telemetry.update(readings, "experiment")

    def run(self, context: RunContext) -> RunOutcome:
        context = dataclasses.replace(context, on_telemetry=self._forward)
        if self.owner.poller is None:
            return self.inner.run(context)
        with self.owner.poller.quiet(self.grant.uuids):
            return self.inner.run(context)

    def reusable_for(self, config: ExperimentConfig) -> bool:
        return self.inner.reusable_for(config)

    def close(self) -> None:
        self.inner.close()
