"""Write benchmarks/results/hardening.md from the figures the test tiers recorded.

scripts/test -m "load or chaos or stress or fuzz" --record-figures
.venv/bin/python benchmarks/hardening_report.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CHAOS = {
    "chaos_experiment_sigkill": "experiment process SIGKILLed mid-run",
    "chaos_experiment_hang": "experiment hung past LLEM_EXPERIMENT_TIMEOUT_S (1.5 s)",
    "chaos_experiment_oom": "experiment ran out of memory (real MemoryError under RLIMIT_AS)",
    "chaos_server_sigkill": "server SIGKILLed with jobs queued and one running, restarted",
    "chaos_disk_full": "results filesystem full (1 MiB tmpfs filled) while writing a result",
    "chaos_nvml_lost": "scripted GPU lost mid-run, on cue (job fails with the meter's error)",
    "chaos_nvml_power_not_supported": (
        "scripted GPU's power readings NotSupported mid-run, on cue (labelled degradation)"
    ),
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    lines = ["# Hardening figures", ""]
    recorded = [f for f in map(load, ["load", *CHAOS, "fuzz"]) if f]
    if recorded:
        m = recorded[0]["machine"]
        dates = sorted(f["machine"]["date"][:10] for f in recorded)
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        lines += [
            f"Recorded {when} on {m['platform']}, Python {m['python']}, {m['cpus']} CPUs, "
            "no GPU, by `scripts/test -m <tier> --record-figures` (the JSON files beside this "
            "one hold every figure and the 1-minute load average when each was taken; the "
            "machine was shared with other builds). Made by `benchmarks/hardening_report.py`.",
            "",
        ]
    figures = load("load")
    if figures:
        lines += [
            "## Load",
            "",
            f"{figures['clients']} concurrent clients ({figures['clients_connected']} connected), "
            f"{figures['duration_s']} s, each pausing ~{figures['interval_s']} s between "
            f"requests, against one server process on loopback while an experiment ran "
            f"(still running at the end: {figures['experiment_running_throughout']}), with "
            f"{figures.get('dashboards', 0)} open dashboards and /metrics scraped every "
            f"{figures.get('metrics_scrape_interval_s')} s. Recorded "
            f"{figures['machine']['date']}; load average at the end: "
            f"{figures['machine']['load_average_1m']}.",
            "",
            f"Requests: {figures['requests']}, throughput {figures['throughput_rps']} req/s, "
            f"errors {figures['errors']} (rate {figures['error_rate']:.4f}).",
            "",
            "| operation | requests | p50 ms | p90 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for op, f in figures["operations"].items():
            lines.append(
                f"| {op} | {f['requests']} | {f['p50_ms']} | {f['p90_ms']} | {f['p99_ms']} "
                f"| {f['max_ms']} |"
            )
        lines.append("")
    rows = [(CHAOS[name], load(name)) for name in CHAOS]
    if any(f for _, f in rows):
        lines += [
            "## Chaos",
            "",
            "| fault | trials | lost results | seconds |",
            "|---|---:|---:|---:|",
        ]
        for what, f in rows:
            if f:
                lines.append(f"| {what} | {f['trials']} | {f['lost_results']} | {f['seconds']} |")
        server = load("chaos_server_sigkill")
        if server:
            lines += [
                "",
                f"Server kills: {server['jobs_interrupted']} running jobs marked interrupted, "
                f"{server['jobs_succeeded']} jobs succeeded across restarts, "
                f"{server['orphaned_processes_ended']} orphaned child processes ended by "
                "themselves; a reader re-read the result files "
                f"{server['result_reads_during_trials']} times during the trials and saw "
                f"{server['half_written_seen']} half-written.",
            ]
        lines.append("")
    fuzz = load("fuzz")
    if fuzz:
        statuses = ", ".join(f"{k}: {v}" for k, v in fuzz["statuses"].items())
        phases = ", ".join(
            f"{name} {'/'.join(outcomes)}" for name, outcomes in fuzz.get("phases", {}).items()
        )
        lines += [
            "## Fuzz",
            "",
            f"schemathesis, every check, positive and negative data: {fuzz['requests']} "
            f"requests, {fuzz['server_errors']} server errors. Phases: {phases or 'n/a'}. "
            f"Statuses: {statuses}.",
            "",
        ]
    names = ["stress_queue", "stress_large_config", "stress_sse", "stress_dataset"]
    stress = {n: load(n) for n in names}
    if any(stress.values()):
        lines += ["## Stress", ""]
        q, c, e, d = stress.values()
        if q:
            lines.append(
                f"- {q['jobs_queued']} jobs queued behind a running one: submitted at "
                f"{q['submit_rate_per_s']}/s, all pages listed in {q['list_all_pages_s']} s, "
                f"990 cancelled at {q['cancel_rate_per_s']}/s, the last 10 ran in order in "
                f"{q['last_10_jobs_run_s']} s."
            )
        if c:
            lines.append(
                f"- A {c['body_bytes']:,}-byte config (just under the 4 MiB limit) accepted in "
                f"{c['submit_s']} s and run; its result is {c['result_bytes']:,} bytes."
            )
        if e:
            lines.append(
                f"- {e['progress_updates']} progress updates streamed to {e['subscribers']} SSE "
                f"subscribers: {e['events_per_subscriber_min']}-{e['events_per_subscriber_max']} "
                f"events each (coalesced, never backwards), {e['seconds']} s."
            )
        if d:
            lines.append(
                f"- A {d['bytes']:,}-byte JSONL file ({d['lines']:,} prompts) read in "
                f"{d['read_s']} s; one byte over its limit refused."
            )
        lines.append("")
    perf = load("perf_baseline")
    if perf:
        lines += [
            "## Perf baseline",
            "",
            f"`perf_baseline.json`, recorded {perf['machine']['date']} (load average "
            f"{perf['machine']['load_average_1m']}). A check fails when a median exceeds "
            f"{perf['tolerance']['ratio']} x baseline + slack.",
            "",
            "| metric | median ms | p90 ms | n |",
            "|---|---:|---:|---:|",
        ]
        for name, f in perf["metrics"].items():
            lines.append(
                f"| {name} | {f['median_s'] * 1000:.1f} | {f['p90_s'] * 1000:.1f} | {f['n']} |"
            )
        lines.append("")
    (RESULTS / "hardening.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
