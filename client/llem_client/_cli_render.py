"""What the CLI prints: result summaries, jobs, job lists and service information.

Human-readable output goes to stdout; ``--json`` output bypasses this module. Tables use rich
with markup off, because model ids, names and server messages are data and may contain
brackets that rich would otherwise read as style tags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from llem_client._text import escape_controls

if TYPE_CHECKING:
    from rich.console import Console

    from llem_client._estimate import Estimate
    from llem_client._jobs import Job, JobProgress, ModelInfo, ProblemDetail, ServiceInfo
    from llem_client._results import ExperimentResult, LatencyStats

NO_METER = "n/a (no meter)"
#: A figure the run measured but could not bound (null, with a warning saying why).
NOT_BOUNDED = "n/a (see warnings)"
#: Columns of tables written to a pipe or file.
PIPE_WIDTH = 160


def stdout_console() -> Console:
    """A console on stdout that prints text as given (no markup, no number highlighting).

    The console finds ``sys.stdout`` when it prints, not when it is made, so output redirected
    after this call (pytest's capture) still lands where it should.
    """
    from rich.console import Console

    console = Console(markup=False, highlight=False, emoji=False)
    if not console.is_terminal:
        # Piped output has no window to fit; rich's 80-column default would fold job ids.
        console.width = max(console.width, PIPE_WIDTH)
    return console


def format_time(moment: datetime | None) -> str:
    """``moment`` in local time to the second, or ``-`` when absent."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_progress(progress: JobProgress) -> str:
    """E.g. ``measuring 8/32 requests``, or the bare phase when nothing is counted."""
    unit = f" {progress.unit}" if progress.unit else ""
    if progress.total is not None:
        return f"{progress.phase} {progress.completed}/{progress.total}{unit}"
    if progress.completed:
        return f"{progress.phase} {progress.completed}{unit}"
    return progress.phase


def format_problem(problem: ProblemDetail) -> str:
    """The problem's title and, when it has one, its detail (once: a detail that already
    starts with the title is not prefixed with it again). Control characters escaped."""
    title, detail = problem.title, problem.detail
    if not detail or detail.lower().startswith(title.lower()):
        return escape_controls(detail or title)
    return escape_controls(f"{title}: {detail}")


def job_reason(job: Job) -> str:
    """Why a job failed, in one line; whose doing it was when the server says so."""
    if job.error is None:
        return "the server gave no reason"
    return format_problem(job.error)


def format_age(moment: datetime, now: datetime | None = None) -> str:
    """How long ago, in the largest whole unit: ``45s``, ``12m``, ``5h``, ``3d``."""
    seconds = max(0.0, ((now or datetime.now(timezone.utc)) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def model_slug(model: str) -> str:
    """``model`` made safe as part of a file name.

    ``meta-llama/Llama-3-8B`` becomes ``meta-llama-Llama-3-8B``: path separators and any
    other character outside ``[A-Za-z0-9._-]`` become ``-``. Leading dots are dropped so the
    file is never hidden.
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.")
    return slug or "experiment"


def _plus_minus(value: float, error: float, unit: str, spec: str = ",.2f") -> str:
    return f"{value:{spec}} ± {error:{spec}} {unit}"


def _estimate(estimate: Estimate | None, unit: str, spec: str = ",.2f") -> str:
    """``value ± total unit``; ``n/a`` for a figure the run could not support (null)."""
    if estimate is None:
        return NOT_BOUNDED
    return _plus_minus(estimate.value, estimate.total, unit, spec)


def _stats(mean: float, low: float | None, high: float | None, unit: str, spec: str) -> str:
    if low is None or high is None:
        return f"{mean:{spec}} {unit}"
    return f"{mean:{spec}} {unit} (95% CI {low:{spec}}-{high:{spec}})"


def _energy_rows(result: ExperimentResult) -> list[tuple[str, str]]:
    energy = result.energy
    if energy is None:
        return [("energy", NO_METER), ("energy per token", NO_METER), ("mean power", NO_METER)]
    rows = [("energy (raw)", _estimate(energy.energy_j, "J"))]
    if energy.adjusted_energy_j is not None or energy.baseline_power_w is not None:
        rows.append(("energy (minus idle)", _estimate(energy.adjusted_energy_j, "J")))
    rows.append(("J/token (raw)", _estimate(energy.energy_per_output_token_j, "J/token", ".4g")))
    if energy.baseline_power_w is not None:
        rows.append(
            (
                "J/token (minus idle)",
                _estimate(energy.adjusted_energy_per_output_token_j, "J/token", ".4g"),
            )
        )
    budget = energy.uncertainty
    if budget is not None and budget.terms:
        top = budget.terms[0]
        rows.append(("largest uncertainty", f"{top.name} ({top.share:.0%} of the variance)"))
    phases = {p.phase: p for p in energy.phases}
    for name in ("prefill", "decode"):
        phase = phases.get(name)
        if phase is not None:
            rows.append((f"{name} energy", _estimate(phase.energy_j, "J")))
    if energy.requests is not None:
        pct = energy.requests.adjusted_energy_per_output_token_j
        label = "per-request J/token p50 (minus idle)"
        if pct is None:
            pct, label = energy.requests.energy_per_output_token_j, "per-request J/token p50"
        rows.append((label, _estimate(pct.p50, "J/token", ".4g")))
    jpt = result.repeats.energy_per_output_token_j
    if jpt is not None and jpt.n > 1:
        rows.append(
            (
                f"J/token over {jpt.n} repeats",
                _stats(jpt.mean, jpt.ci95_low, jpt.ci95_high, "J/token", ".4g"),
            )
        )
    power = energy.mean_power_w
    rows.append(("mean power", NOT_BOUNDED if power is None else f"{power:,.1f} W"))
    if energy.baseline_power_w is not None:
        rows.append(("idle power", _estimate(energy.baseline_power_w, "W", ",.1f")))
    if energy.counter_vs_integral_rel_diff is not None:
        rows.append(("counter vs samples", f"{energy.counter_vs_integral_rel_diff:+.1%}"))
    return rows


def result_rows(result: ExperimentResult) -> list[tuple[str, str]]:
    """The summary of a result as (label, value) rows, units in the values.

    Null energy means "not measured", and is printed so: a 0 would claim a measurement.
    Energy figures show their total uncertainty (k = 2, about 95%).
    """
    config = result.config
    model = config.model if config.name is None else f"{config.model} ({config.name})"
    rows = [
        ("experiment", result.experiment_id),
        ("model", escape_controls(model)),
        ("config hash", result.measurement_config_hash),
        ("requests", f"{result.n_requests:,}"),
        ("input tokens", f"{result.input_tokens:,}"),
        ("output tokens", f"{result.output_tokens:,}"),
        ("tokens/s (output)", f"{result.avg_tokens_per_second:,.1f}"),
    ]
    tps = result.repeats.tokens_per_second
    if tps.n > 1:
        rows.append(
            (
                f"tokens/s over {tps.n} repeats",
                _stats(tps.mean, tps.ci95_low, tps.ci95_high, "", ",.1f"),
            )
        )
    if result.repeats.stop_reason != "fixed":
        reason = result.repeats.stop_reason.replace("_", " ")
        rows.append(("repeats stopped", f"{reason} after {len(result.repeats.per_repeat)}"))
    rows += _energy_rows(result)
    rows.append(("measured duration", f"{result.total_inference_time_sec:,.3f} s"))
    rows += _latency_rows("TTFT", result.time_to_first_token_sec)
    if result.inter_token_latency_sec is not None:
        rows += _latency_rows("ITL", result.inter_token_latency_sec)
    rows += [
        ("prefill time", f"{result.prefill_time_sec:,.3f} s"),
        ("decode time", f"{result.decode_time_sec:,.3f} s"),
        ("model load time", f"{result.model_load_time_sec:,.3f} s"),
        ("FLOPs", f"{result.total_flops:.3e}"),
    ]
    return rows


def _latency_rows(label: str, stats: LatencyStats) -> list[tuple[str, str]]:
    return [(f"{label} p50 / p90", f"{stats.p50 * 1000:,.2f} / {stats.p90 * 1000:,.2f} ms")]


def print_result_summary(result: ExperimentResult, console: Console) -> None:
    """A two-column table of the headline figures, then the result's warnings, if any."""
    from rich import box
    from rich.table import Table

    table = Table(title="Experiment result", show_header=False, box=box.SIMPLE)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for label, value in result_rows(result):
        table.add_row(label, value)
    console.print(table)
    if result.warnings:
        console.print("warnings:")
        for warning in result.warnings:
            console.print(f"  - {warning.code}: {escape_controls(warning.message)}")


def _print_pairs(console: Console, pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        console.print(f"{label:<{width}}  {value}", soft_wrap=True)


def print_job(job: Job, console: Console) -> None:
    """A job as aligned ``label  value`` lines, why it failed last."""
    pairs = [
        ("job", job.id),
        ("status", job.status.value),
        ("name", escape_controls(job.name) if job.name is not None else "-"),
        ("model", escape_controls(job.model)),
    ]
    if job.tags:
        tags = ", ".join(f"{k}={v}" for k, v in sorted(job.tags.items()))
        pairs.append(("tags", escape_controls(tags)))
    if not job.status.terminal:
        pairs.append(("progress", format_progress(job.progress)))
    pairs += [
        ("created", format_time(job.created_at)),
        ("started", format_time(job.started_at)),
        ("finished", format_time(job.finished_at)),
        ("config hash", job.config_hash),
    ]
    if job.metrics is not None:
        pairs.append(("tokens/s (output)", f"{job.metrics.tokens_per_second:,.1f}"))
        jpt = job.metrics.energy_per_output_token_j
        pairs.append(("J/token (raw)", NO_METER if jpt is None else f"{jpt:.4g} J/token"))
    if job.status.value == "failed":
        pairs.append(("reason", job_reason(job)))
    _print_pairs(console, pairs)


def _status_cell(job: Job) -> str:
    """The status; for a running job its phase (``loading``, ``measuring``...), which says
    more and says running as well."""
    if job.status.value == "running":
        return job.progress.phase
    return job.status.value


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


#: (header, width, right-aligned) of the job list's fixed columns after name and model.
_FIXED = (("status", 10, False), ("age", 4, True), ("tok/s", 9, True), ("J/tok", 7, True))
_ID_WIDTH = 8
_GAP = "  "


def print_job_list(jobs: Sequence[Job], console: Console, now: datetime | None = None) -> None:
    """A table of jobs in the order given (the server's: newest first), fitting the console:
    ids are cut to the 8 characters every command accepts, names and models are shortened
    with an ellipsis, never wrapped. Failed jobs' reasons follow the table."""
    if not jobs:
        console.print("no jobs")
        return
    rows = []
    for job in jobs:
        metrics = job.metrics
        jpt = metrics.energy_per_output_token_j if metrics is not None else None
        rows.append(
            (
                job.id[:_ID_WIDTH],
                escape_controls(job.name) if job.name else "-",
                escape_controls(job.model),
                _status_cell(job),
                format_age(job.created_at, now),
                f"{metrics.tokens_per_second:,.1f}" if metrics is not None else "-",
                f"{jpt:.3g}" if jpt is not None else ("n/a" if metrics is not None else "-"),
            )
        )
    fixed = _ID_WIDTH + sum(width for _, width, _ in _FIXED) + len(_GAP) * 6
    flexible = max(console.width - fixed, 20)
    name_w = max(len("name"), *(len(r[1]) for r in rows))
    model_w = max(len("model"), *(len(r[2]) for r in rows))
    if name_w + model_w > flexible:  # share what is left, 2:3, neither below its fair part
        name_w = min(name_w, max(flexible * 2 // 5, flexible - model_w))
        model_w = flexible - name_w
    widths = [_ID_WIDTH, name_w, model_w, *(width for _, width, _ in _FIXED)]
    right = [False, False, False, *(r for _, _, r in _FIXED)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            _fit(cell, w).rjust(w) if r else _fit(cell, w).ljust(w)
            for cell, w, r in zip(cells, widths, right, strict=True)
        ]
        return _GAP.join(parts).rstrip()

    headers = ["id", "name", "model", *(h for h, _, _ in _FIXED)]
    console.print(line(headers), soft_wrap=True)
    console.print("-" * len(line(["-" * w for w in widths])), soft_wrap=True)
    for row in rows:
        console.print(line(row), soft_wrap=True)
    for job in jobs:
        if job.status.value == "failed":
            reason = f"{job.id[:_ID_WIDTH]} failed: {job_reason(job)}"
            console.print(_fit(reason, console.width), soft_wrap=True)


def print_models(models: Sequence[ModelInfo], console: Console) -> None:
    """The server's models: name, where it lives, context length."""
    from rich import box
    from rich.table import Table

    if not models:
        console.print("no models under LLEM_MODEL_ROOTS or in the hub cache")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("model", overflow="fold")
    table.add_column("source", no_wrap=True)
    table.add_column("context", justify="right", no_wrap=True)
    for model in models:
        context = f"{model.context_tokens:,}" if model.context_tokens else "?"
        table.add_row(escape_controls(model.name), model.source, context)
    console.print(table)


def print_info(info: ServiceInfo, server: str, client_schema: str, console: Console) -> None:
    """What the service is and has, as aligned lines."""
    schema = info.schema_version
    if schema != client_schema:
        schema += f" (this client speaks {client_schema}: results may not parse)"
    devices = [
        f"{device.index}: {device.name} ({device.memory_total_bytes / 2**30:.1f} GiB)"
        for device in info.devices
    ]
    meter = "available" if info.energy_meter_available else "not available"
    if not info.energy_meter_available and info.energy_meter_reason:
        meter = f"{meter}: {info.energy_meter_reason}"
    pairs = [
        ("server", server),
        ("service version", info.service_version),
        ("schema version", schema),
        ("backends", ", ".join(info.backends) or "none"),
        ("devices", "; ".join(devices) or "none"),
        ("energy meter", f"{info.energy_meter} ({meter})"),
        ("queue length", str(info.queue_length)),
        ("running job", info.running_job or "-"),
        ("executor", _executor(info)),
        ("GPUs in use", _gpus_in_use(info)),
    ]
    _print_pairs(console, [(label, escape_controls(value)) for label, value in pairs])


def _executor(info: ServiceInfo) -> str:
    if info.executor_available:
        return f"{info.executor} (available)"
    return f"{info.executor} (not available: {info.executor_reason or 'no reason given'})"


def _gpus_in_use(info: ServiceInfo) -> str:
    if not info.gpus:
        return "granted by Slurm" if info.executor == "slurm" else "- (one experiment at a time)"
    mine = sum(1 for g in info.gpus if g.job_id)
    others = sum(1 for g in info.gpus if g.held_by)
    text = f"{mine + others} of {len(info.gpus)}"
    return f"{text} ({others} by another service)" if others else text
