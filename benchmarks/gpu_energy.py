"""Energy measurement on a real GPU: sampler overhead, counter vs integral, repeatability,
and Zeus's ZeusMonitor on the same window.

Goals (issue 4): tokens/s with the sampler on within 0.5% of it off; the coefficient of
variation of J/token over 5 repeats under 2%; counter and integrated power agreeing. On a GPU
host run ``benchmarks/gpu_validation.py`` first: it checks the sensors these figures rest on.
Model: GPT-2 small's shape with random weights, built locally (no hub).

    python benchmarks/gpu_energy.py [--rounds 6] [--repeats 5] [--n-prompts 64]

Needs CUDA, torch, transformers, nvidia-ml-py; Zeus (package ``zeus``) is optional.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_client import EnergyConfig, ExperimentConfig
from llem_service.backends.pytorch import PytorchBackend
from llem_service.energy.base import MeterError, MeterProbe, MeterRecord
from llem_service.energy.meter import NvmlEnergyMeter, NvmlSession
from llem_service.experiment.run import run_experiment

from tests.integration.conftest import build_gpt2

RESULTS = Path(__file__).parent / "results"
GPT2_SMALL = {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}


def config(args: argparse.Namespace, **overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "model": "gpt2-small-random",
        "precision": "fp16",
        "prompts": {"source": "synthetic", "input_len": 128},
        "n_prompts": args.n_prompts,
        "batch_size": 8,
        "max_output_tokens": 256,
        "warmup": {"mode": "fixed", "batches": 3},
        "baseline": {"enabled": True, "duration_s": 5.0},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def sampler_overhead(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate measured passes with llem's metering session (sampler in its own process, at
    10 ms) on and off, same loaded model."""
    cfg = config(args)
    backend = PytorchBackend(model_roots=(str(root),))
    (uuid,) = backend.prepare(cfg)
    backend.load(cfg)
    backend.warmup(cfg)
    on: list[float] = []
    off: list[float] = []
    meter = NvmlEnergyMeter()
    for _ in range(args.rounds):
        for with_sampler in (True, False):
            session = (
                meter.open([uuid], EnergyConfig(sample_interval_ms=10)) if with_sampler else None
            )
            if session:
                session.start()
            report = backend.run(cfg, lambda done, total: None)
            if session:
                session.close()
            (on if with_sampler else off).append(report.output_tokens / report.duration_s)
    backend.close()
    ratio = statistics.median(on) / statistics.median(off)
    return {
        "interval_ms": 10,
        "sampler": "its own process",
        "rounds": args.rounds,
        "tokens_per_s_sampler_on": on,
        "tokens_per_s_sampler_off": off,
        "median_on": statistics.median(on),
        "median_off": statistics.median(off),
        "slowdown_pct": (1 - ratio) * 100,
        "goal_met": (1 - ratio) * 100 < 0.5,
    }


@dataclass
class ZeusAlongside:
    """Our NVML meter, with Zeus's ZeusMonitor opened and closed on the same measured window
    (at the ``warmup_end`` and last ``repeat_*_end`` marks)."""

    inner: NvmlEnergyMeter
    repeats: int
    name: str = "nvml"
    zeus_j: list[float] = field(default_factory=list)
    zeus_s: list[float] = field(default_factory=list)

    def probe(self) -> MeterProbe:
        return self.inner.probe()

    def open(
        self,
        device_uuids: Sequence[str],
        plan: EnergyConfig,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> _Session:
        import torch
        from zeus.monitor import ZeusMonitor

        session = self.inner.open(device_uuids, plan, on_failure)
        monitor = ZeusMonitor(gpu_indices=[torch.cuda.current_device()])
        return _Session(session, monitor, self)


@dataclass
class _Session:
    """The real session, with Zeus's window opened and closed at our marks; everything else
    is the real session's own."""

    inner: NvmlSession
    monitor: Any
    owner: ZeusAlongside

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start(self) -> None:
        self.inner.start()

    def mark(self, label: str) -> None:
        self.inner.mark(label)
        if label == "warmup_end":
            self.monitor.begin_window("llem")
        if label == f"repeat_{self.owner.repeats - 1}_end":
            measured = self.monitor.end_window("llem")
            self.owner.zeus_j.append(float(measured.total_energy))
            self.owner.zeus_s.append(float(measured.time))

    def close(self) -> MeterRecord:
        return self.inner.close()


def repeatability(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    cfg = config(args, repeats=args.repeats)
    try:
        import zeus

        meter: Any = ZeusAlongside(NvmlEnergyMeter(), args.repeats)
    except ImportError:
        meter = NvmlEnergyMeter()
    output = run_experiment(
        "gpu-bench", cfg, PytorchBackend(model_roots=(str(root),)), meter, lambda _: None
    )
    result = output.result
    energy = result.energy
    assert energy is not None, result.warnings
    raw = result.repeats.energy_per_output_token_j
    adjusted = result.repeats.adjusted_energy_per_output_token_j
    assert raw is not None
    ours = energy.energy_j
    assert ours is not None, result.warnings
    zeus = None
    if isinstance(meter, ZeusAlongside) and meter.zeus_j:
        zeus = {
            "energy_j": meter.zeus_j[0],
            "window_s": meter.zeus_s[0],
            "ours_minus_zeus_rel": (ours.value - meter.zeus_j[0]) / meter.zeus_j[0],
        }
    env = result.environment
    return {
        "gpu": env.gpus[0].name if env.gpus else None,
        "driver": env.driver_version,
        "cuda": env.cuda_driver_version,
        "torch": env.backend_versions.get("torch"),
        "power_limit_w": env.gpus[0].power_limit_w if env.gpus else None,
        "repeats": args.repeats,
        "tokens_per_second_mean": result.repeats.tokens_per_second.mean,
        "energy_j": ours.value,
        "energy_uncertainty_j": ours.total,
        "window_s": energy.window_s,
        "counter_vs_integral_rel_diff": energy.counter_vs_integral_rel_diff,
        "baseline_power_w": energy.baseline_power_w.value if energy.baseline_power_w else None,
        "j_per_token_per_repeat": [
            r.energy_per_output_token_j.value if r.energy_per_output_token_j else None
            for r in result.repeats.per_repeat
        ],
        "j_per_token_mean": raw.mean,
        "j_per_token_cv_pct": (raw.std or 0.0) / raw.mean * 100,
        "adjusted_j_per_token_cv_pct": (
            (adjusted.std or 0.0) / adjusted.mean * 100 if adjusted and adjusted.mean else None
        ),
        "sampler_interval_s": energy.sampler.interval_s,
        "sampler_cost_per_round_us": (energy.sampler.cost_per_sample_s or 0) * 1e6,
        "phases": {
            p.phase: round(p.energy_j.value, 3) if p.energy_j else None for p in energy.phases
        },
        "warnings": [w.code for w in result.warnings],
        "zeus": zeus,
        "goal_met": (raw.std or 0.0) / raw.mean < 0.02,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    build_gpt2(root / "gpt2-small-random", **GPT2_SMALL)
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": "GPT-2 small shape (12 x 768, vocab 50257), random weights, fp16",
        "workload": f"{args.n_prompts} prompts x 128 tokens, batch 8, 256 output tokens",
        "repeatability": repeatability(root, args),
        "sampler_overhead": sampler_overhead(root, args),
    }
    rep: dict[str, Any] = report["repeatability"]
    over: dict[str, Any] = report["sampler_overhead"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_energy.json").write_text(json.dumps(report, indent=2) + "\n")
    zeus = rep["zeus"]
    lines = [
        "# Energy on a GPU: overhead, agreement, repeatability",
        "",
        f"{report['date']}, {rep['gpu']}, driver {rep['driver']}, CUDA {rep['cuda']}, "
        f"torch {rep['torch']}, power limit {rep['power_limit_w']} W. {report['model']}; "
        f"{report['workload']}. Made by `benchmarks/gpu_energy.py`.",
        "",
        "| figure | value | goal |",
        "|---|---:|---|",
        f"| tokens/s, sampler at 10 ms on vs off (median of {over['rounds']}) | "
        f"{over['median_on']:.1f} vs {over['median_off']:.1f} "
        f"({over['slowdown_pct']:+.2f}% slower) | < 0.5% |",
        f"| J/token CV over {rep['repeats']} repeats (raw) | {rep['j_per_token_cv_pct']:.2f}% "
        "| < 2% |",
        f"| counter vs integrated power | {rep['counter_vs_integral_rel_diff']:+.2%} | |",
        f"| measured energy | {rep['energy_j']:.1f} ± {rep['energy_uncertainty_j']:.1f} J over "
        f"{rep['window_s']:.1f} s | |",
        f"| idle baseline | {rep['baseline_power_w']:.1f} W | |",
        f"| sampler cost per round | {rep['sampler_cost_per_round_us']:.1f} us | |",
        (
            f"| Zeus ZeusMonitor, same window | {zeus['energy_j']:.1f} J "
            f"(ours {zeus['ours_minus_zeus_rel']:+.2%}) | |"
            if zeus
            else "| Zeus ZeusMonitor, same window | not run (zeus not installed) | |"
        ),
        "",
        f"Warnings: {', '.join(rep['warnings']) or 'none'}.",
        "",
    ]
    (args.out / "gpu_energy.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
