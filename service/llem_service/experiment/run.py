"""One experiment, start to finish, inside the child process: baseline, load, warm up, measure.

The backend and the meter are injected; this module owns the order of the phases and where the
energy counters are read. The meter's session runs from before the model loads to after the
last repeat; its marks cut that span into phases:

    [baseline_start .. baseline_end]  load_start .. load_end .. warmup_end ..
    repeat_0_end .. repeat_{n-1}_end

The device is synchronised before every mark, so a counter read never misses queued work.
"""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from llem_client import (
    Environment,
    ExperimentConfig,
    ExperimentResult,
    GpuEnvironment,
    GpuProcess,
    JobProgress,
    RepeatResult,
    RepeatSummary,
    ResultWarning,
    __version__,
    measurement_config_hash,
)

from llem_service.backends.base import (
    InferenceBackend,
    LoadReport,
    WarmupReport,
    WorkloadReport,
)
from llem_service.container import image_identity
from llem_service.energy.base import (
    Baseline,
    EnergyMeter,
    MeterError,
    MeterProbe,
    MeterRecord,
    MeterSession,
)
from llem_service.energy.nvml import NVML_ERROR_NOT_FOUND, NvmlError
from llem_service.energy.report import RepeatEnergy, Span, Work, build_energy
from llem_service.energy.timeseries import Columns, timeline_table
from llem_service.experiment.summary import latency_stats, sample_stats

ProgressSink = Callable[[JobProgress], None]


@dataclass(frozen=True)
class ExperimentOutput:
    """The result, and the power timeline as columns when a meter recorded one."""

    result: ExperimentResult
    timeseries: Columns | None = None


def run_experiment(
    experiment_id: str,
    config: ExperimentConfig,
    backend: InferenceBackend,
    meter: EnergyMeter,
    report: ProgressSink,
    baselines: Sequence[Baseline] = (),
    on_meter_failure: Callable[[MeterError], None] | None = None,
    *,
    reused_from: str | None = None,
    keep_loaded: bool = False,
) -> ExperimentOutput:
    """Run ``config`` on ``backend``, metered by ``meter``; return the full result.

    Args:
        baselines: Idle baselines the service kept from earlier experiments; one of the same
            GPU younger than ``config.baseline.max_age_s`` is reused instead of measured.
        on_meter_failure: Told at once, from the meter's thread, when metering fails (a lost
            GPU) so the caller can stop a run that may be stuck on the dead device.
        reused_from: The experiment whose model the backend still holds (same
            `loading_key`): reuse it rather than load (the load phase is then empty).
        keep_loaded: Keep the model loaded after a successful run (the caller closes the
            backend); after a failure it is always closed.

    Without an available meter the result's ``energy`` is ``None`` and a warning says why.
    """
    started_at = datetime.now(timezone.utc)
    probe = meter.probe()
    unmetered: str | None = None
    session: MeterSession | None = None
    record: MeterRecord | None = None
    workloads: list[WorkloadReport] = []
    completed = False

    def mark(label: str) -> None:
        if session is not None:
            backend.synchronize()
            session.mark(label)

    try:
        report(JobProgress(phase="loading"))
        uuids = backend.prepare(config)
        if probe.available and uuids:
            try:
                session = meter.open(uuids, config.energy, on_meter_failure)
            except NvmlError as exc:
                if exc.code != NVML_ERROR_NOT_FOUND:
                    raise
                # e.g. a MIG instance: NVML meters only whole GPUs
                unmetered = f"NVML does not know the device the model runs on ({exc})"
        if session is not None:
            session.start()
            session.baselines(config.baseline, baselines, now=time.time())
        mark("load_start")
        loaded = backend.reuse(config) if reused_from is not None else backend.load(config)
        mark("load_end")
        report(JobProgress(phase="warmup"))
        warm = backend.warmup(config)
        mark("warmup_end")
        total = config.n_prompts * config.repeats
        report(JobProgress(phase="measuring", completed=0, total=total, unit="requests"))
        for repeat in range(config.repeats):
            progress = _MeasuringProgress(report, repeat * config.n_prompts, total)
            workloads.append(backend.run(config, progress))
            mark(f"repeat_{repeat}_end")
        completed = True
    finally:
        try:
            if session is not None:
                record = session.close()
        finally:
            if not (keep_loaded and completed):
                backend.close()

    output = _assemble(
        experiment_id, config, backend, probe, loaded, warm, workloads,
        record=record, started_at=started_at, uuids=uuids, unmetered=unmetered,
    )  # fmt: skip
    if reused_from is None:
        return output
    reused = output.result.model_copy(update={"model_reused_from": reused_from})
    return ExperimentOutput(result=reused, timeseries=output.timeseries)


@dataclass(frozen=True)
class _MeasuringProgress:
    """Turns one repeat's request count into the whole workload's progress."""

    report: ProgressSink
    done_before: int
    total: int

    def __call__(self, completed: int, total: int) -> None:
        self.report(
            JobProgress(
                phase="measuring",
                completed=self.done_before + completed,
                total=self.total,
                unit="requests",
            )
        )


def _assemble(
    experiment_id: str,
    config: ExperimentConfig,
    backend: InferenceBackend,
    probe: MeterProbe,
    loaded: LoadReport,
    warm: WarmupReport,
    workloads: list[WorkloadReport],
    *,
    record: MeterRecord | None,
    started_at: datetime,
    uuids: tuple[str, ...],
    unmetered: str | None,
) -> ExperimentOutput:
    warnings = [ResultWarning(code=c, message=m) for w in workloads for c, m in w.warnings]
    if not probe.available:
        warnings.append(
            ResultWarning(
                code="energy_unavailable",
                message=f"Energy not measured: {probe.reason}. Energy fields are null.",
            )
        )
    elif record is None:
        why = unmetered or (f"the experiment ran on no GPU (device {config.pytorch.device!r})")
        warnings.append(
            ResultWarning(
                code="energy_unavailable",
                message=f"Energy not measured: {why}. Energy fields are null.",
            )
        )

    per_request = [n for w in workloads for n in w.output_tokens_per_request]
    input_tokens = sum(w.input_tokens for w in workloads)
    output_tokens = sum(per_request)
    n_requests = sum(w.n_requests for w in workloads)
    duration = sum(w.duration_s for w in workloads)
    itl = [gap for w in workloads for gap in w.itl_s]
    prefill_flops = sum(w.prefill_flops for w in workloads)
    decode_flops = sum(w.decode_flops for w in workloads)

    energy = None
    repeat_energy: list[RepeatEnergy] = []
    timeseries = None
    if record is not None:
        spans = tuple(Span(*s) for w in workloads for s in w.batch_spans_s)
        work = Work(
            spans=spans,
            output_tokens_per_request=tuple(per_request),
            output_tokens_per_repeat=tuple(w.output_tokens for w in workloads),
        )
        # Explicit energy.devices are metered as asked; otherwise the GPUs the model occupies.
        metered = {d.uuid for d in record.devices}
        used = [u for u in loaded.device_uuids if u in metered]
        energy, repeat_energy, energy_warnings = build_energy(
            record,
            uuids if config.energy.devices or not used else used,
            work,
            cross_check_threshold=config.energy.cross_check_threshold,
            now=started_at.timestamp(),
        )
        for baseline in record.baselines:
            warnings.extend(ResultWarning(code=c, message=m) for c, m in baseline.warnings)
        warnings.extend(ResultWarning(code=c, message=m) for c, m in energy_warnings)
        missing = sorted(set(loaded.device_uuids) - {d.uuid for d in record.devices})
        if missing:
            warnings.append(
                ResultWarning(
                    code="device_not_metered",
                    message=f"The model also occupies {', '.join(missing)}, which was not "
                    "metered; set energy.devices to include it.",
                )
            )
        timeseries = timeline_table(record, spans)

    result = ExperimentResult(
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
        repeats=_repeat_summary(workloads, repeat_energy),
        energy_meter_available=energy is not None,
        energy=energy,
        total_flops=prefill_flops + decode_flops,
        prefill_flops=prefill_flops,
        decode_flops=decode_flops,
        flops_method=workloads[0].flops_method,
        environment=snapshot_environment(backend, probe, record),
        warnings=warnings,
    )
    return ExperimentOutput(result=result, timeseries=timeseries)


def _repeat_summary(
    workloads: Sequence[WorkloadReport], energies: Sequence[RepeatEnergy]
) -> RepeatSummary:
    rows = []
    for i, w in enumerate(workloads):
        e = energies[i] if i < len(energies) else None
        tokens = w.output_tokens
        rows.append(
            RepeatResult(
                index=i,
                duration_s=w.duration_s,
                output_tokens=tokens,
                tokens_per_second=_ratio(tokens, w.duration_s),
                energy_j=e.energy_j if e else None,
                adjusted_energy_j=e.adjusted_energy_j if e else None,
                energy_per_output_token_j=e.energy_j / tokens if e and tokens else None,
                adjusted_energy_per_output_token_j=(
                    e.adjusted_energy_j / tokens
                    if e and tokens and e.adjusted_energy_j is not None
                    else None
                ),
            )
        )
    raw = [r.energy_per_output_token_j for r in rows]
    adjusted = [r.adjusted_energy_per_output_token_j for r in rows]
    return RepeatSummary(
        per_repeat=rows,
        tokens_per_second=sample_stats([r.tokens_per_second for r in rows]),
        energy_per_output_token_j=(
            sample_stats([x for x in raw if x is not None]) if None not in raw else None
        ),
        adjusted_energy_per_output_token_j=(
            sample_stats([x for x in adjusted if x is not None]) if None not in adjusted else None
        ),
    )


def _max_or_none(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0 for an empty window (a result with nothing measured)."""
    return numerator / denominator if denominator > 0 else 0.0


def snapshot_environment(
    backend: InferenceBackend, probe: MeterProbe, record: MeterRecord | None = None
) -> Environment:
    """Where this ran: versions, host, devices, the metered GPUs and, in a container, the
    image."""
    gpus = [
        GpuEnvironment(
            uuid=m.uuid,
            name=m.name,
            nvml_index=m.nvml_index,
            memory_total_bytes=m.memory_total_bytes,
            power_limit_w=m.power_limit_w,
            persistence_mode=m.persistence_mode,
            compute_processes=[
                GpuProcess(pid=pid, used_memory_bytes=mem) for pid, mem in m.compute_processes
            ],
        )
        for m in (record.devices if record else ())
    ]
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
        driver_version=record.driver_version if record else None,
        nvml_version=record.nvml_version if record else None,
        cuda_driver_version=record.cuda_driver_version if record else None,
        gpus=gpus,
    )
