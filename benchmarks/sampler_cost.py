"""Cost per sampling round and timing jitter of the power sampler, on the CPU with a scripted
NVML (tests/fake_nvml.py), at 10, 50 and 100 ms.

Goal (issue 4): under 50 us per round and p99 jitter under 2 ms at 10 ms. The cost counts our
code plus the fake library's Python (real NVML calls are C and are measured on a GPU by
benchmarks/gpu_energy.py). Jitter is |achieved interval - target| over consecutive rounds.
Run it on an otherwise idle machine: it measures the thread's scheduling too.

    .venv/bin/python benchmarks/sampler_cost.py [--seconds 10] [--gpus 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_service.energy.nvml import Nvml
from llem_service.energy.sampler import PowerSampler
from llem_service.experiment.summary import percentile

from tests.fake_nvml import FakeGpu, FakeNvml, PowerProfile

RESULTS = Path(__file__).parent / "results"


def measure(interval_ms: float, seconds: float, gpus: int) -> dict[str, float | int]:
    devices = tuple(
        FakeGpu(uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000", profile=PowerProfile())
        for i in range(gpus)
    )
    with Nvml(FakeNvml(gpus=devices)) as nvml:
        sampler = PowerSampler(nvml.devices(), interval_ms / 1e3)
        sampler.start()
        time.sleep(seconds)
        sampler.stop()
    costs = sorted(c * 1e6 for c in sampler.round_costs_s)
    cpu = sorted(c * 1e6 for c in sampler.round_cpu_s)
    warm_us, library_us = tight_loop(devices)
    gaps = [b - a for a, b in itertools.pairwise(sampler.round_starts_s)]
    jitter = sorted(abs(g * 1e3 - interval_ms) for g in gaps)
    return {
        "interval_ms": interval_ms,
        "rounds": len(costs),
        "cost_us_mean": sum(costs) / len(costs),
        "cost_us_p50": percentile(costs, 0.5),
        "cost_us_p99": percentile(costs, 0.99),
        "cost_us_per_gpu_mean": sum(costs) / len(costs) / gpus,
        "cpu_us_mean": sum(cpu) / len(cpu),
        "cpu_us_p99": percentile(cpu, 0.99),
        "cost_us_tight_loop": warm_us,
        "fake_library_us_tight_loop": library_us,
        "interval_ms_p50": percentile(sorted(g * 1e3 for g in gaps), 0.5),
        "jitter_ms_p50": percentile(jitter, 0.5),
        "jitter_ms_p99": percentile(jitter, 0.99),
        "jitter_ms_max": jitter[-1],
    }


def tight_loop(devices: tuple[FakeGpu, ...], rounds: int = 3000) -> tuple[float, float]:
    """Per-round cost with warm caches and no sleeping between rounds: the sampler's whole
    round, and the fake library's calls alone (the part a real GPU replaces with C)."""
    library = FakeNvml(gpus=devices)
    with Nvml(library) as nvml:
        sampler = PowerSampler(nvml.devices(), 0.01)
        started = time.perf_counter()
        for _ in range(rounds):
            sampler.sample_once()
        whole = (time.perf_counter() - started) / rounds * 1e6
        handles = [library.nvmlDeviceGetHandleByIndex(i) for i in range(len(devices))]
        started = time.perf_counter()
        for _ in range(rounds):
            for h in handles:
                library.nvmlDeviceGetFieldValues(h, [186])
                library.nvmlDeviceGetTemperature(h, 0)
                library.nvmlDeviceGetClockInfo(h, 1)
                library.nvmlDeviceGetMemoryInfo(h)
                library.nvmlDeviceGetUtilizationRates(h)
                library.nvmlDeviceGetCurrentClocksEventReasons(h)
        alone = (time.perf_counter() - started) / rounds * 1e6
    return whole, alone


def platform_control(rounds: int = 300) -> tuple[float, float]:
    """A fixed pure-Python workload timed back to back and after a 10 ms sleep (median us):
    how much slower any code runs when it wakes on this machine, independent of ours."""

    def work() -> int:
        total = 0
        for i in range(300):
            total += i * i
        return total

    hot, cold = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        hot.append(time.perf_counter() - started)
    for _ in range(rounds):
        time.sleep(0.01)
        started = time.perf_counter()
        work()
        cold.append(time.perf_counter() - started)
    return percentile(sorted(hot), 0.5) * 1e6, percentile(sorted(cold), 0.5) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for ms in (10.0, 50.0, 100.0):
        # The in-thread cost varies from run to run on a VM: keep the median run of several.
        runs = sorted(
            (measure(ms, args.seconds, args.gpus) for _ in range(args.runs)),
            key=lambda r: r["cost_us_mean"],
        )
        row = runs[len(runs) // 2]
        row["cost_us_mean_runs"] = [round(r["cost_us_mean"], 1) for r in runs]
        rows.append(row)
    at_10 = rows[0]
    control_hot, control_cold = platform_control()
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU (scripted NVML)",
        "python": platform.python_version(),
        "seconds_per_interval": args.seconds,
        "gpus": args.gpus,
        "rows": rows,
        "control_us": {"back_to_back": control_hot, "after_10ms_sleep": control_cold},
        "load_average_1min": os.getloadavg()[0],
        "goal": {"cost_us_mean_max": 50.0, "jitter_ms_p99_at_10ms_max": 2.0},
        "meets_goal": at_10["cost_us_mean"] < 50.0 and at_10["jitter_ms_p99"] < 2.0,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "sampler_cost" if args.gpus == 1 else f"sampler_cost_{args.gpus}gpus"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Power sampler: cost per round and timing jitter (scripted NVML, CPU)",
        "",
        f"{report['date']}, {report['machine']}, Python {report['python']}; "
        f"{args.seconds:g} s per run, median run of {args.runs} per interval (by mean cost), "
        f"{args.gpus} GPU(s) per round. "
        "Made by `benchmarks/sampler_cost.py`.",
        "",
        "| interval | rounds | wall mean us | wall p99 us | CPU mean us | CPU p99 us "
        "| achieved p50 ms | jitter p50 ms | jitter p99 ms | jitter max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['interval_ms']:g} ms | {r['rounds']} | {r['cost_us_mean']:.1f} "
            f"| {r['cost_us_p99']:.1f} | {r['cpu_us_mean']:.1f} | {r['cpu_us_p99']:.1f} "
            f"| {r['interval_ms_p50']:.3f} | {r['jitter_ms_p50']:.3f} "
            f"| {r['jitter_ms_p99']:.3f} | {r['jitter_ms_max']:.3f} |"
        )
    lines += [
        "",
        "Mean wall cost of each run, us: "
        + "; ".join(f"{r['interval_ms']:g} ms: {r['cost_us_mean_runs']}" for r in rows)
        + ".",
        "",
        f"In a tight loop (warm caches, no sleep between rounds) a round costs "
        f"{at_10['cost_us_tight_loop']:.1f} us, of which the fake library's own calls are "
        f"{at_10['fake_library_us_tight_loop']:.1f} us. The in-thread figures above are higher: "
        "after each sleep the round runs with cold caches, and on a shared machine the thread "
        "can be preempted mid-round. Control: a fixed pure-Python loop takes "
        f"{control_hot:.1f} us back to back and {control_cold:.1f} us right after a 10 ms "
        f"sleep on this machine ({control_cold / control_hot:.1f}x); the 1-minute load "
        f"average at the end was {report['load_average_1min']:.2f} on {os.cpu_count()} CPUs.",
        "",
        f"Goal: under 50 us per round and p99 jitter under 2 ms at 10 ms: "
        f"**{'met' if report['meets_goal'] else 'not met'}** "
        f"({at_10['cost_us_mean']:.1f} us, {at_10['jitter_ms_p99']:.3f} ms). A round reads "
        "power, temperature, SM clock, memory, utilisation and clock-event reasons of each GPU; "
        "the cost includes the fake library's own Python. At 50 and 100 ms a round costs "
        f"{rows[1]['cost_us_mean']:.0f} and {rows[2]['cost_us_mean']:.0f} us: the same work, "
        "woken on a core that has idled longer (see the control); the CPU it takes per second "
        "is still smaller than at 10 ms.",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
