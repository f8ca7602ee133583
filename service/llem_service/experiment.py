"""One experiment, start to finish, inside the child process: load, warm up, measure, report.

The backend and the meter are injected; this module owns the order of the phases, where the
energy window opens and closes, and the arithmetic of the result.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable
from datetime import datetime, timezone

from llem_client import (
    DeviceEnergy,
    Environment,
    ExperimentConfig,
    ExperimentResult,
    JobProgress,
    ResultWarning,
    __version__,
    measurement_config_hash,
)

from llem_service.backends.base import InferenceBackend, WorkloadReport
from llem_service.energy.base import EnergyMeter, EnergyReading, MeterProbe

ProgressSink = Callable[[JobProgress], None]


def run_experiment(
    experiment_id: str,
    config: ExperimentConfig,
    backend: InferenceBackend,
    meter: EnergyMeter,
    report: ProgressSink,
) -> ExperimentResult:
    """Run ``config`` on ``backend``, metered by ``meter``; return the full result.

    The energy window covers exactly the measured workload (every repeat), not load or
    warm-up. Without an available meter the energy fields stay ``None`` and a warning says why.
    """
    started_at = datetime.now(timezone.utc)
    probe = meter.probe()
    warnings: list[ResultWarning] = []
    try:
        report(JobProgress(phase="loading"))
        loaded = backend.load(config)
        report(JobProgress(phase="warmup"))
        warm = backend.warmup(config)

        total = config.n_prompts * config.repeats

        def on_progress(completed: int, _total: int, *, done_before: int = 0) -> None:
            report(
                JobProgress(
                    phase="measuring",
                    completed=done_before + completed,
                    total=total,
                    unit="requests",
                )
            )

        report(JobProgress(phase="measuring", completed=0, total=total, unit="requests"))
        reading: EnergyReading | None = None
        if probe.available:
            meter.begin(loaded.device_uuids)
        workloads: list[WorkloadReport] = []
        for repeat in range(config.repeats):
            before = repeat * config.n_prompts
            workloads.append(
                backend.run(
                    config,
                    lambda done, n, before=before: on_progress(done, n, done_before=before),
                )
            )
        if probe.available:
            reading = meter.end()
    finally:
        backend.close()

    workload = _combine(workloads)
    if not probe.available:
        warnings.append(
            ResultWarning(
                code="energy_unavailable",
                message=f"Energy not measured: {probe.reason}. Energy fields are null.",
            )
        )
    for code, message in workload.extra_warnings:
        warnings.append(ResultWarning(code=code, message=message))
    if reading is not None:
        warnings.extend(ResultWarning(code=c, message=m) for c, m in reading.warnings)

    duration = workload.duration_s
    energy_j = reading.total_j if reading is not None else None
    return ExperimentResult(
        experiment_id=experiment_id,
        measurement_config_hash=measurement_config_hash(config),
        config=config,
        started_at=started_at,
        finished_at=datetime.now(timezone.utc),
        n_requests=workload.n_requests,
        input_tokens=workload.input_tokens,
        output_tokens=workload.output_tokens,
        total_tokens=workload.input_tokens + workload.output_tokens,
        model_load_time_sec=loaded.load_time_s,
        warmup_time_sec=warm.duration_s,
        warmup_batches=warm.batches,
        total_inference_time_sec=duration,
        avg_tokens_per_second=_ratio(workload.output_tokens, duration),
        requests_per_second=_ratio(workload.n_requests, duration),
        energy_meter_available=reading is not None,
        total_energy_j=energy_j,
        avg_energy_per_token_j=(
            _ratio(energy_j, workload.output_tokens) if energy_j is not None else None
        ),
        avg_power_w=_ratio(energy_j, duration) if energy_j is not None else None,
        energy_per_device=(
            [
                DeviceEnergy(device_uuid=uuid, energy_j=joules)
                for uuid, joules in sorted(reading.energy_j_by_device.items())
            ]
            if reading is not None
            else None
        ),
        total_flops=workload.total_flops,
        flops_method=workload.flops_method,
        environment=snapshot_environment(backend, probe),
        warnings=warnings,
    )


def _combine(workloads: list[WorkloadReport]) -> WorkloadReport:
    first = workloads[0]
    return WorkloadReport(
        n_requests=sum(w.n_requests for w in workloads),
        input_tokens=sum(w.input_tokens for w in workloads),
        output_tokens=sum(w.output_tokens for w in workloads),
        duration_s=sum(w.duration_s for w in workloads),
        total_flops=sum(w.total_flops for w in workloads),
        flops_method=first.flops_method,
        extra_warnings=tuple(dict.fromkeys(x for w in workloads for x in w.extra_warnings)),
    )


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0 for an empty window (a result with nothing measured)."""
    return numerator / denominator if denominator > 0 else 0.0


def snapshot_environment(backend: InferenceBackend, probe: MeterProbe) -> Environment:
    """Where this ran: versions, host, devices and, in a container, the image."""
    return Environment(
        llem_version=__version__,
        python_version=platform.python_version(),
        platform=f"{platform.system()}-{platform.release()}-{platform.machine()}",
        hostname=socket.gethostname(),
        backend=backend.name,
        backend_versions=backend.versions(),
        energy_meter=probe.name,
        devices=list(probe.devices),
        container_image=os.environ.get("LLEM_IMAGE") or None,
    )
