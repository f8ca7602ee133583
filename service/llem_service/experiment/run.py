"""One experiment, start to finish, inside the child process: baseline, load, warm up,
measure, then (for the energy figures) prefill passes and the idle baseline again.

The backend and the meter are injected; this module owns the order of the phases and where the
energy counters are read. The meter's session runs from before the model loads to after the
last pass; its marks cut that span into phases:

    [baseline_0 .. baseline_k]  load_start .. load_end .. warmup_end ..
    repeat_0_end .. repeat_{n-1}_end  [prefill_start .. prefill_end]  [baseline_after_*]

The device is synchronised before every mark, so a counter read never misses queued work.
What the energy section says (and which GPUs count) is the energy package's business
(`llem_service.energy.report`); this module hands it what happened.
"""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from llem_client import (
    Environment,
    ExperimentConfig,
    ExperimentResult,
    GpuEnvironment,
    GpuProcess,
    JobProgress,
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
    DeviceNotMetered,
    EnergyMeter,
    MeterError,
    MeterProbe,
    MeterRecord,
    MeterSession,
)
from llem_service.energy.baseline import BaselineSet, take_after, take_baselines
from llem_service.energy.figures import Batch, PrefillRun, Span, Warning, Work
from llem_service.energy.phases import pass_rhythm
from llem_service.energy.report import (
    EnergySection,
    build_energy,
    counted_devices,
    unavailable_warning,
)
from llem_service.energy.timeseries import Columns, timeline_table
from llem_service.energy.windows import (
    DEFAULT_COUNTER_PERIOD_S,
    READINGS_TAIL_S,
    passes_window_s,
)
from llem_service.experiment.repeats import (
    RepeatPolicy,
    RepeatStop,
    StopFigure,
    summarise,
)
from llem_service.experiment.summary import latency_stats

ProgressSink = Callable[[JobProgress], None]

#: Prefill passes stop here even if the counter window is not yet long enough (a backend
#: whose pass takes no time would otherwise spin until ``energy.prefill_max_s``).
MAX_PREFILL_PASSES = 10_000


@dataclass(frozen=True)
class ExperimentOutput:
    """The result, and the power timeline as columns when a meter recorded one."""

    result: ExperimentResult
    timeseries: Columns | None = None


@dataclass
class _Run:
    """What happened, for the result."""

    loaded: LoadReport | None = None
    warm: WarmupReport | None = None
    workloads: list[WorkloadReport] = field(default_factory=list)
    stop: RepeatStop | None = None
    baselines: BaselineSet = field(default_factory=BaselineSet)
    prefill: PrefillRun | None = None
    record: MeterRecord | None = None
    unmetered: str | None = None
    model_reused: bool = False
    warnings: list[Warning] = field(default_factory=list)


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
        baselines: Idle baselines the service kept from earlier experiments; one the reuse
            rule accepts (`llem_service.energy.baseline.refusal`) is reused instead of
            measured.
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
    run = _Run(model_reused=reused_from is not None)
    session: MeterSession | None = None
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
            except DeviceNotMetered as exc:
                run.unmetered = str(exc)
        if session is not None:
            session.start()
            run.baselines = take_baselines(session, config.baseline, baselines, now=time.time())
        mark("load_start")
        run.loaded = backend.reuse(config) if reused_from is not None else backend.load(config)
        mark("load_end")
        report(JobProgress(phase="warmup"))
        run.warm = backend.warmup(config)
        mark("warmup_end")
        _measure(config, backend, session, run, report, mark, uuids)
        if session is not None and config.energy.phase_split == "counter":
            report(JobProgress(phase="prefill"))
            run.prefill = _prefill_passes(config, backend, session, mark)
        if session is not None and config.baseline.enabled and config.baseline.when != "before":
            report(JobProgress(phase="baseline"))
            after = take_after(session, config.baseline, now=time.time())
            run.baselines = replace(run.baselines, after=after)
        if session is not None:
            # Power readings run late: sample past the last mark so what came before it shows.
            session.wait(READINGS_TAIL_S)
        completed = True
    finally:
        try:
            if session is not None:
                run.record = session.close()
        finally:
            if not (keep_loaded and completed):
                backend.close()

    output = _assemble(experiment_id, config, backend, probe, run, started_at, uuids)
    if reused_from is None:
        return output
    reused = output.result.model_copy(update={"model_reused_from": reused_from})
    return ExperimentOutput(result=reused, timeseries=output.timeseries)


def _measure(
    config: ExperimentConfig,
    backend: InferenceBackend,
    session: MeterSession | None,
    run: _Run,
    report: ProgressSink,
    mark: Callable[[str], None],
    prepared: Sequence[str],
) -> None:
    """The measured window: repeats until the policy says stop. ``prepared``: the GPUs the
    backend was prepared on."""
    policy = RepeatPolicy(config.repeats)
    total = config.n_prompts * policy.max
    report(JobProgress(phase="measuring", completed=0, total=total, unit="requests"))
    # Fixed before the first repeat: the statistic, and the GPUs that count (as the energy
    # section will count them).
    figure: StopFigure | None = None
    if policy.adaptive:
        metas = session.metas if session is not None else ()
        loaded = run.loaded.device_uuids if run.loaded is not None else ()
        used, _ = counted_devices(metas, loaded, prepared, explicit=bool(config.energy.devices))
        figure = StopFigure.choose(metas, used, run.baselines)
    values: list[float] = []
    floors: list[float] = [0.0]
    while True:
        repeat = len(run.workloads)
        progress = _MeasuringProgress(report, repeat * config.n_prompts, total)
        run.workloads.append(backend.run(config, progress))
        mark(f"repeat_{repeat}_end")
        if figure is not None:
            marks = session.counter_marks() if session is not None else ()
            measured = figure.value(marks, run.workloads[repeat], repeat)
            if measured is not None:
                values.append(measured[0])
                floors.append(measured[1])
        run.stop = policy.decide(
            figure.statistic if figure else None, values, max(floors), done=repeat + 1
        )
        if run.stop is not None:
            break
    warning = policy.warning(run.stop)
    if warning is not None:
        run.warnings.append(warning)


def _prefill_passes(
    config: ExperimentConfig,
    backend: InferenceBackend,
    session: MeterSession,
    mark: Callable[[str], None],
) -> PrefillRun | None:
    """The workload's batches with one output token, again and again, until the counter
    window spans ``energy.prefill_counter_periods`` updates, longer while the passes' rhythm
    aliases with a part-time sensor (`passes_window_s`), at most ``energy.prefill_max_s``."""
    periods = [m.counter_update_period_s for m in session.metas if m.has_energy_counter]
    if not periods:
        return None  # no counter: the passes could only be measured as the timeline is
    plan = config.energy
    target_s = plan.prefill_counter_periods * max(p or DEFAULT_COUNTER_PERIOD_S for p in periods)
    mark("prefill_start")
    latencies: list[tuple[float, ...]] = []
    elapsed = 0.0
    while elapsed < target_s and len(latencies) < MAX_PREFILL_PASSES:
        report = backend.prefill(config)
        latencies.append(report.batch_latencies_s)
        elapsed += report.duration_s
        if len(latencies) == 1:
            target_s = passes_window_s(
                session.metas,
                pass_rhythm(report.batch_latencies_s, report.duration_s),
                at_least_s=target_s,
                at_most_s=plan.prefill_max_s,
            )
    mark("prefill_end")
    count = len(latencies)
    mean = tuple(sum(col) / count for col in zip(*latencies, strict=True))
    return PrefillRun(passes=count, batch_latencies_s=mean)


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


def _work(workloads: Sequence[WorkloadReport], *, model_reused: bool) -> Work:
    """The measured window batch by batch, for the energy figures."""
    batches = []
    for repeat, w in enumerate(workloads):
        sizes = w.batch_sizes or _even_sizes(w.n_requests, len(w.batch_spans_s))
        inputs = w.input_tokens_per_request
        offset = 0
        for i, span in enumerate(w.batch_spans_s):
            size = sizes[i]
            batches.append(
                Batch(
                    span=Span(*span),
                    input_tokens=inputs[offset : offset + size] if inputs else (),
                    output_tokens=w.output_tokens_per_request[offset : offset + size],
                    step_times_s=w.batch_step_times_s[i] if w.batch_step_times_s else (),
                    repeat=repeat,
                )
            )
            offset += size
    return Work(batches=tuple(batches), repeats=len(workloads), model_reused=model_reused)


def _even_sizes(n_requests: int, n_batches: int) -> tuple[int, ...]:
    if n_batches == 0:
        return ()
    base, extra = divmod(n_requests, n_batches)
    return tuple(base + (1 if i < extra else 0) for i in range(n_batches))


def _assemble(
    experiment_id: str,
    config: ExperimentConfig,
    backend: InferenceBackend,
    probe: MeterProbe,
    run: _Run,
    started_at: datetime,
    uuids: tuple[str, ...],
) -> ExperimentOutput:
    workloads = run.workloads
    loaded, warm, record = run.loaded, run.warm, run.record
    assert loaded is not None
    assert warm is not None
    warnings: list[Warning] = [w for wl in workloads for w in wl.warnings]
    warnings.extend(run.warnings)
    if not probe.available:
        warnings.append(unavailable_warning(str(probe.reason)))
    elif record is None:
        warnings.append(
            unavailable_warning(
                run.unmetered or f"the experiment ran on no GPU (device {config.pytorch.device!r})"
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

    section = EnergySection(None)
    timeseries = None
    if record is not None:
        work = _work(workloads, model_reused=run.model_reused)
        used, device_warnings = counted_devices(
            record.devices, loaded.device_uuids, uuids, explicit=bool(config.energy.devices)
        )
        section = build_energy(
            record,
            used,
            work,
            baselines=run.baselines,
            prefill=run.prefill,
            plan=config.energy,
            now=started_at.timestamp(),
        )
        warnings.extend(section.warnings)
        warnings.extend(device_warnings)
        timeseries = timeline_table(record, work.spans)

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
        repeats=summarise(workloads, section.repeats, run.stop),
        energy_meter_available=section.result is not None,
        energy=section.result,
        total_flops=prefill_flops + decode_flops,
        prefill_flops=prefill_flops,
        decode_flops=decode_flops,
        flops_method=workloads[0].flops_method,
        environment=snapshot_environment(backend, probe, record),
        warnings=[ResultWarning(code=c, message=m) for c, m in warnings],
    )
    return ExperimentOutput(result=result, timeseries=timeseries)


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
