"""What the CLI prints: result summaries, jobs, job lists and service information.

Human-readable output goes to stdout; ``--json`` output bypasses this module. Tables use rich
with markup off, because model ids, names and server messages are data and may contain
brackets that rich would otherwise read as style tags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from llem_client._energy import Estimate
    from llem_client._jobs import Job, JobProgress, ProblemDetail, ServiceInfo
    from llem_client._results import ExperimentResult

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
    """The problem's title and, when it has one, its detail."""
    return f"{problem.title}: {problem.detail}" if problem.detail else problem.title


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
    rows.append(("mean power", f"{energy.mean_power_w:,.1f} W"))
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
        ("model", model),
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
    return rows


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
            console.print(f"  - {warning.code}: {warning.message}")


def _print_pairs(console: Console, pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        console.print(f"{label:<{width}}  {value}", soft_wrap=True)


def print_job(job: Job, console: Console) -> None:
    """A job as aligned ``label  value`` lines, its error last."""
    pairs = [
        ("job", job.id),
        ("status", job.status.value),
        ("model", job.model if job.name is None else f"{job.model} ({job.name})"),
        ("progress", format_progress(job.progress)),
        ("created", format_time(job.created_at)),
        ("started", format_time(job.started_at)),
        ("finished", format_time(job.finished_at)),
        ("config hash", job.config_hash),
    ]
    if job.error is not None:
        pairs.append(("error", format_problem(job.error)))
    _print_pairs(console, pairs)


def print_job_list(jobs: Sequence[Job], console: Console) -> None:
    """A table of jobs in the order given (the server's: newest first)."""
    from rich import box
    from rich.table import Table

    if not jobs:
        console.print("no jobs")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "status", "model", "created", "progress"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(
            job.id,
            job.status.value,
            job.model,
            format_time(job.created_at),
            format_progress(job.progress),
        )
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
    _print_pairs(console, pairs)


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
