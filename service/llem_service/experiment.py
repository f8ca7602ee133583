"""One experiment, start to finish, inside the child process: load, warm up, measure, report.

The backend and the meter are injected; this module owns the order of the phases, where the
energy window opens and closes, and the arithmetic of the result.
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from llem_client import (
    DeviceEnergy,
    Environment,
    ExperimentConfig,
    ExperimentResult,
    JobProgress,
    LatencyStats,
    ResultWarning,
    __version__,
    measurement_config_hash,
)

from llem_service.backends.base import InferenceBackend, WorkloadReport
from llem_service.container import image_identity
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

    warnings.extend(ResultWarning(code=c, message=m) for w in workloads for c, m in w.warnings)
    if not probe.available:
        warnings.append(
            ResultWarning(
                code="energy_unavailable",
                message=f"Energy not measured: {probe.reason}. Energy fields are null.",
            )
        )
    if reading is not None:
        warnings.extend(ResultWarning(code=c, message=m) for c, m in reading.warnings)

    per_request = [n for w in workloads for n in w.output_tokens_per_request]
    input_tokens = sum(w.input_tokens for w in workloads)
    output_tokens = sum(per_request)
    n_requests = sum(w.n_requests for w in workloads)
    duration = sum(w.duration_s for w in workloads)
    itl = [gap for w in workloads for gap in w.itl_s]
    prefill_flops = sum(w.prefill_flops for w in workloads)
    decode_flops = sum(w.decode_flops for w in workloads)
    energy_j = reading.total_j if reading is not None else None
    return ExperimentResult(
        experiment_id=experiment_id,
        measurement_config_hash=measurement_config_hash(config),
        config=config,
        started_at=started_at,
        finished_at=datetime.now(timezone.utc),
        n_requests=n_requests,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        output_tokens_per_request=per_request,
        model_load_time_sec=loaded.load_time_s,
        warmup_time_sec=warm.duration_s,
        warmup_batches=warm.batches,
        warmup_batch_latency_sec=list(warm.batch_latencies_s),
        total_inference_time_sec=duration,
        avg_tokens_per_second=_ratio(output_tokens, duration),
        requests_per_second=_ratio(n_requests, duration),
        prefill_time_sec=sum(w.prefill_time_s for w in workloads),
        decode_time_sec=sum(w.decode_time_s for w in workloads),
        batch_latency_sec=latency_stats([x for w in workloads for x in w.batch_latencies_s]),
        time_to_first_token_sec=latency_stats([x for w in workloads for x in w.ttft_s]),
        inter_token_latency_sec=latency_stats(itl) if itl else None,
        timing_hook_overhead_sec=sum(w.hook_overhead_s for w in workloads),
        n_parameters=loaded.n_parameters,
        peak_memory_allocated_bytes=_max_or_none(
            [w.peak_memory_allocated_bytes for w in workloads]
        ),
        peak_memory_reserved_bytes=_max_or_none([w.peak_memory_reserved_bytes for w in workloads]),
        energy_meter_available=reading is not None,
        total_energy_j=energy_j,
        avg_energy_per_token_j=_ratio(energy_j, output_tokens) if energy_j is not None else None,
        avg_power_w=_ratio(energy_j, duration) if energy_j is not None else None,
        energy_per_device=(
            [
                DeviceEnergy(device_uuid=uuid, energy_j=joules)
                for uuid, joules in sorted(reading.energy_j_by_device.items())
            ]
            if reading is not None
            else None
        ),
        total_flops=prefill_flops + decode_flops,
        prefill_flops=prefill_flops,
        decode_flops=decode_flops,
        flops_method=workloads[0].flops_method,
        environment=snapshot_environment(backend, probe),
        warnings=warnings,
    )


def latency_stats(values_s: Sequence[float]) -> LatencyStats:
    """Mean, linearly interpolated p50/p90/p99 and max of a non-empty set, seconds."""
    ordered = sorted(values_s)
    if not ordered:
        raise ValueError("latency_stats of an empty set")

    def percentile(q: float) -> float:
        position = (len(ordered) - 1) * q
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return LatencyStats(
        n=len(ordered),
        mean=sum(ordered) / len(ordered),
        p50=percentile(0.50),
        p90=percentile(0.90),
        p99=percentile(0.99),
        max=ordered[-1],
    )


def _max_or_none(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


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
        container_image=image_identity(),
    )
