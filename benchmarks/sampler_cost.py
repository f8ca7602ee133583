"""What the power sampler costs the workload, in the experiment's process (a thread) and out of
it (its own process), and how much memory it holds over a long run.

1. **Tokens/s of the workload** (the real PyTorch backend on the CPU: a tiny GPT-2 built here,
   whose decode loop is Python-heavy like transformers' on a GPU) with the sampler off, at
   100 ms and at 10 ms, as a thread and as a process, over a scripted GPU with a realistic
   sensor (tests/fake_nvml.py). Conditions are interleaved in a shuffled order each round and
   the median of the rounds is kept; the sampler off is run twice a round, which shows the
   noise floor. Goal (issue 11): under 0.5% slower. The scripted NVML is Python, so each
   round costs more CPU and holds the GIL longer than real NVML's C calls: in-process figures
   here overstate the cost on a GPU host, out-of-process ones show what is left once the GIL
   is not shared. torch runs on one thread so a core is free for the sampler, as on a server.
2. **The sampler's own timing**: cost per round and jitter of the achieved interval, from
   the rounds it recorded.
3. **Memory over an hour at 10 ms on 8 GPUs**, simulated on a manual clock (no sleeping):
   the sampler's resident memory while it writes 2.9 million rows, the bytes on disk, and the
   session's typed timeline once read back.

    .venv/bin/python benchmarks/sampler_cost.py [--rounds 7] [--hours 1.0] [--gpus 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_client import ExperimentConfig
from llem_service.backends.pytorch import PytorchBackend
from llem_service.energy.nvml import Nvml
from llem_service.energy.sampler import PowerSampler, SamplerEngine, SamplerSpec
from llem_service.energy.samples import SAMPLE_COLUMNS, ColumnReader, Timeline
from llem_service.experiment.summary import percentile

from tests.fake_nvml import FakeGpu, FakeNvml, ManualClock, PowerProfile, realistic_sensor
from tests.integration.conftest import build_gpt2

RESULTS = Path(__file__).parent / "results"
CONDITIONS = (
    ("off", None, None),
    ("off (again)", None, None),
    ("thread, 100 ms", "thread", 0.1),
    ("process, 100 ms", "process", 0.1),
    ("thread, 10 ms", "thread", 0.01),
    ("process, 10 ms", "process", 0.01),
)


def scripted_gpus(n: int) -> tuple[FakeGpu, ...]:
    rng = random.Random(0)
    return tuple(
        realistic_sensor(
            FakeGpu(uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000", profile=PowerProfile()),
            rng,
        )
        for i in range(n)
    )


def sampler(library: FakeNvml, mode: str, interval_s: float, directory: str) -> PowerSampler:
    spec = SamplerSpec(
        library=library,
        device_uuids=tuple(g.uuid for g in library.gpus),
        interval_s=interval_s,
        power_fields=("instant",) * len(library.gpus),
        refresh_s=(0.1,) * len(library.gpus),
        directory=directory,
        own_pid=os.getpid(),
    )
    return PowerSampler(spec, mode=mode)  # type: ignore[arg-type]


def workload_cost(rounds: int, gpus: int) -> dict[str, Any]:
    """Tokens/s of the CPU workload under each condition, interleaved over ``rounds``."""
    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="llem-bench-"))
    build_gpt2(root / "tiny", n_embd=64, n_layer=4, n_head=4)
    config = ExperimentConfig.model_validate(
        {
            "model": "tiny",
            "precision": "fp32",
            "prompts": {"source": "synthetic", "input_len": 16},
            "n_prompts": 16,
            "batch_size": 4,
            "max_output_tokens": 48,
            "fixed_output_length": True,
            "warmup": {"mode": "fixed", "batches": 2},
        }
    )
    backend = PytorchBackend(model_roots=(str(root),))
    backend.prepare(config)
    backend.load(config)
    backend.warmup(config)
    library = FakeNvml(gpus=scripted_gpus(gpus))
    speeds: dict[str, list[float]] = {name: [] for name, _, _ in CONDITIONS}
    timing: dict[str, list[tuple[float, float, float]]] = {}
    order = list(CONDITIONS)
    rng = random.Random(1)
    for _ in range(rounds):
        rng.shuffle(order)
        for name, mode, interval in order:
            running = None
            if mode is not None and interval is not None:
                running = sampler(library, mode, interval, tempfile.mkdtemp(prefix="llem-"))
                running.start()
            report = backend.run(config, lambda done, total: None)
            speeds[name].append(report.output_tokens / report.duration_s)
            if running is not None:
                running.stop()
                starts, costs = running.rounds()
                timing.setdefault(name, []).extend(
                    zip(starts, costs, running.round_cpu_s(), strict=True)
                )
                running.close()
    backend.close()
    shutil.rmtree(root, ignore_errors=True)
    rows = []
    for name, mode, interval in CONDITIONS:
        # Paired with the same round's "off": the machine's load drifts between rounds.
        paired = sorted(
            (1 - on / off) * 100 for on, off in zip(speeds[name], speeds["off"], strict=True)
        )
        row: dict[str, Any] = {
            "condition": name,
            "mode": mode,
            "interval_ms": interval * 1e3 if interval else None,
            "tokens_per_s": speeds[name],
            "median_tokens_per_s": statistics.median(speeds[name]),
            "slowdown_pct": statistics.median(paired),
            "slowdown_pct_p25": percentile(paired, 0.25),
            "slowdown_pct_p75": percentile(paired, 0.75),
        }
        if name in timing and interval:
            row.update(_round_timing(timing[name], interval))
        rows.append(row)
    return {"rounds": rounds, "gpus": gpus, "rows": rows}


def _round_timing(rounds: list[tuple[float, float, float]], interval_s: float) -> dict[str, Any]:
    """Cost per round and interval jitter, within each run (gaps across runs excluded)."""
    costs = sorted(c * 1e6 for _, c, _ in rounds)
    cpu = sorted(c * 1e6 for _, _, c in rounds)
    gaps = [
        (b[0] - a[0]) * 1e3
        for a, b in itertools.pairwise(rounds)
        if 0 < b[0] - a[0] < 10 * interval_s
    ]
    jitter = sorted(abs(g - interval_s * 1e3) for g in gaps)
    return {
        "round_wall_us_p50": percentile(costs, 0.5),
        "round_wall_us_p99": percentile(costs, 0.99),
        "round_cpu_us_p50": percentile(cpu, 0.5),
        "achieved_interval_ms_p50": percentile(sorted(gaps), 0.5),
        "jitter_ms_p99": percentile(jitter, 0.99),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_over(hours: float, gpus: int) -> dict[str, Any]:
    """The sampler's engine writing ``hours`` at 10 ms on ``gpus`` GPUs, on a manual clock."""
    clock = ManualClock()
    fakes = tuple(FakeGpu(uuid=f"GPU-{i}") for i in range(gpus))
    nvml = Nvml(FakeNvml(gpus=fakes, clock=clock, wall=clock.wall)).open()
    directory = tempfile.mkdtemp(prefix="llem-memory-")
    spec = SamplerSpec(
        library=FakeNvml,
        device_uuids=tuple(g.uuid for g in fakes),
        interval_s=0.01,
        power_fields=("instant",) * gpus,
        refresh_s=(None,) * gpus,
        directory=directory,
        own_pid=os.getpid(),
    )
    engine = SamplerEngine(nvml.devices(), spec, clock, clock.wall)
    rounds = round(hours * 3600 / 0.01)
    rss: list[tuple[int, int]] = []
    started = time.perf_counter()
    for k in range(rounds):
        engine.sample_once()
        engine.poll_slow()
        clock.advance(0.01)
        if k % 20_000 == 0:
            rss.append((k, _rss_bytes()))
    engine.flush()
    rss.append((rounds, _rss_bytes()))
    simulated_s = time.perf_counter() - started
    on_disk = sum(p.stat().st_size for p in Path(directory).iterdir())
    before_read = _rss_bytes()
    timeline = Timeline(spec.device_uuids)
    timeline.extend_raw(ColumnReader(Path(directory), SAMPLE_COLUMNS, prefix="sample_").read_new())
    after_read = _rss_bytes()
    shutil.rmtree(directory, ignore_errors=True)
    first_mb = rss[1][1] / 2**20 if len(rss) > 1 else rss[0][1] / 2**20
    return {
        "hours": hours,
        "gpus": gpus,
        "interval_ms": 10,
        "rows": rounds * gpus,
        "seconds_to_simulate": simulated_s,
        "sampler_rss_mb_after_first_20k_rounds": first_mb,
        "sampler_rss_mb_at_end": rss[-1][1] / 2**20,
        "sampler_rss_growth_mb": rss[-1][1] / 2**20 - first_mb,
        "on_disk_mb": on_disk / 2**20,
        "session_timeline_mb": timeline.nbytes / 2**20,
        "session_rss_growth_reading_mb": (after_read - before_read) / 2**20,
        "rows_in_timeline": len(timeline),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--gpus", type=int, default=1, help="scripted GPUs the sampler reads")
    parser.add_argument("--hours", type=float, default=1.0, help="for the memory simulation")
    parser.add_argument("--memory-gpus", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the markdown from the JSON"
    )
    args = parser.parse_args()
    if args.render_only:
        render(json.loads((args.out / "sampler_cost.json").read_text()), args.out)
        return
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU (scripted NVML)",
        "python": platform.python_version(),
        # Memory first: the workload's torch would sit in the same process's footprint.
        "memory": memory_over(args.hours, args.memory_gpus),
        "workload": workload_cost(args.rounds, args.gpus),
        "load_average_1min": os.getloadavg()[0],
        "goal": {"slowdown_pct_max": 0.5},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampler_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    render(report, args.out)


def render(report: dict[str, Any], out: Path) -> None:
    work, memory = report["workload"], report["memory"]
    rows = work["rows"]
    noise = max(abs(rows[1]["slowdown_pct_p25"]), abs(rows[1]["slowdown_pct_p75"]))
    lines = [
        "# Power sampler: what it costs the workload, in process and out of process",
        "",
        f"{report['date']}, {report['machine']}, Python {report['python']}. Made by "
        "`benchmarks/sampler_cost.py`.",
        "",
        "## Tokens/s of the workload",
        "",
        "The real PyTorch backend on the CPU (tiny GPT-2, 4 x 64, torch on one thread): 16 "
        f"prompts x 48 output tokens a pass, {work['rounds']} rounds, each condition once a "
        "round in a shuffled order; each condition's slowdown is taken against the same "
        "round's pass with the sampler off, and the median over rounds is kept. The sampler "
        f"reads {work['gpus']} scripted GPU(s) with a realistic sensor.",
        "",
        "| sampler | tokens/s (median) | slower than off (median of rounds, p25..p75) "
        "| round wall p50 us | round CPU p50 us | achieved p50 ms | jitter p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        timing = (
            f"{r['round_wall_us_p50']:.0f} | {r['round_cpu_us_p50']:.0f} "
            f"| {r['achieved_interval_ms_p50']:.2f} | {r['jitter_ms_p99']:.2f}"
            if "round_wall_us_p50" in r
            else "| | |"
        )
        spread = f"{r['slowdown_pct_p25']:+.1f}..{r['slowdown_pct_p75']:+.1f}"
        lines.append(
            f"| {r['condition']} | {r['median_tokens_per_s']:.1f} "
            f"| {r['slowdown_pct']:+.2f}% ({spread}) | {timing} |"
        )
    by = {r["condition"]: r for r in rows}
    gil_10 = by["thread, 10 ms"]["round_cpu_us_p50"] / 10_000
    gil_100 = by["thread, 100 ms"]["round_cpu_us_p50"] / 100_000
    lines += [
        "",
        "Noise floor: the sampler off, run twice a round, differs by up to "
        f"{noise:.2f}% between the quartiles of its rounds (1-minute load average at the end: "
        f"{report['load_average_1min']:.2f} on {os.cpu_count()} CPUs; this machine is shared). "
        f"Medians at 10 ms: thread {by['thread, 10 ms']['slowdown_pct']:+.2f}%, process "
        f"{by['process, 10 ms']['slowdown_pct']:+.2f}%; at 100 ms: thread "
        f"{by['thread, 100 ms']['slowdown_pct']:+.2f}%, process "
        f"{by['process, 100 ms']['slowdown_pct']:+.2f}%. Where the noise floor is wider than "
        "the 0.5% goal these medians cannot show whether it is met; "
        "`benchmarks/gpu_validation.py` (check 7) measures it on a GPU host.",
        "",
        "What the sampler's own records show regardless of the machine's load: a round of "
        "reads costs the CPU time above (the scripted NVML is Python; a real NVML's calls are "
        "C). In a thread, that time holds the workload's GIL: "
        f"{gil_10:.1%} of the wall time at 10 ms and {gil_100:.2%} at 100 ms, roughly what it "
        "takes from the decode loop (plus the GIL's hand-over costs). In its own process it "
        "holds none of the workload's GIL; it uses the same share of another core.",
        "",
        f"## Memory over {memory['hours']:g} h at 10 ms on {memory['gpus']} GPUs",
        "",
        f"Simulated on a manual clock ({memory['rows']:,} rows, "
        f"{memory['seconds_to_simulate']:.0f} s to run): the sampler's resident memory was "
        f"{memory['sampler_rss_mb_after_first_20k_rounds']:.1f} MB after the first 20,000 "
        f"rounds and {memory['sampler_rss_mb_at_end']:.1f} MB at the end "
        f"({memory['sampler_rss_growth_mb']:+.1f} MB): it streams its rows to disk "
        f"({memory['on_disk_mb']:.0f} MB of typed columns). Read back, the session's timeline "
        f"holds them in {memory['session_timeline_mb']:.0f} MB of typed arrays (process "
        f"memory {memory['session_rss_growth_reading_mb']:+.0f} MB while reading).",
        "",
    ]
    (out / "sampler_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
