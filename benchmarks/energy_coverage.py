"""Coverage of every energy figure, per scenario, for the new method and the old one.

Runs each scenario of the library (`tests/energy_scenarios.py`: realistic sensors on
scripted GPUs, the whole experiment path in simulated time) many times and records, for each
figure, how often its stated uncertainty contained the truth, how often it was published, and
the median stated uncertainty relative to its value. The same runs are then read the way the
old method (commit 95f3ef4, `energy/report.py`) read them, re-implemented below from that
commit's arithmetic: counter windows with (peak x period) + 1 mJ + half the disagreement with
the samples; a baseline taken at once, without settling; prefill/decode shared by the
integrated samples; per-request energy = decode J/token x output tokens; no uncertainty on
J/token, per-request or per-repeat figures.

    .venv/bin/python benchmarks/energy_coverage.py [--runs 100] [--mode calibrated|ideal]

Writes ``benchmarks/results/energy_coverage.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llem_service.energy.base import MeterRecord
from llem_service.energy.integrate import PowerCurve

from tests.energy_scenarios import SCENARIOS, Run
from tests.energy_truth import Tally, Truth, figure_group

RESULTS = Path(__file__).parent / "results"
#: Figures shown in the table, in order, with how they read.
FIGURES = {
    "energy_j": "window energy",
    "adjusted_energy_j": "adjusted energy",
    "energy_per_output_token_j": "J/token",
    "adjusted_energy_per_output_token_j": "adjusted J/token",
    "baseline_power_w": "baseline power",
    "phase.prefill": "prefill energy",
    "phase.decode": "decode energy",
    "phase.between_batches": "between batches",
    "requests.energy_j": "per-request energy",
    "requests.adjusted_energy_j": "per-request adjusted",
    "requests.adjusted_j_per_token": "per-request adj. J/token (mean, p50, p90, p99)",
    "repeat.energy_j": "per-repeat energy",
    "device.adjusted_energy_j": "per-device adjusted",
}


@dataclass
class Old:
    """A figure as the old method stated it: value and uncertainty (None: none stated)."""

    value: float
    total: float | None


def old_method(run: Run, truth: Truth) -> dict[str, Old | list[Old] | None]:
    """The old report's figures for this run (see the module docstring); none where a GPU
    has no counter or a counter read failed (the old report read counters only: it has no
    figures to compare there)."""
    record: MeterRecord = truth.scripted.session.close()
    metas = record.devices
    if any(v is None for mark in record.marks for v in mark.energy_mj.values()):
        return {}
    curves = {
        m.uuid: PowerCurve(
            record.timeline.device(m.uuid).t_s, record.timeline.device(m.uuid).power_w,
            dedupe=False,
        )
        for m in metas
    }  # fmt: skip

    def window(a: str, b: str) -> tuple[float, float]:
        first, second = record.mark(a), record.mark(b)
        span = second.t_s - first.t_s
        energy, variance = 0.0, 0.0
        for meta in metas:
            reads = (second.energy_mj[meta.uuid], first.energy_mj[meta.uuid])
            e = (reads[0] - reads[1]) / 1e3  # type: ignore[operator]
            curve = curves[meta.uuid]
            period = meta.counter_update_period_s or 0.1
            margin = record.sample_interval_s
            near = [curve.power_at(t) for t in (first.t_s, second.t_s)] + [
                p for t in (first.t_s, second.t_s)
                if (p := curve.peak_w(t - period - margin, t + margin)) is not None
            ]  # fmt: skip
            top = max([curve.peak_w(first.t_s, second.t_s) or 0.0, e / span, *near])
            disagreement = abs(curve.energy_j(first.t_s, second.t_s) - e) / 2
            energy += e
            variance += (top * period) ** 2 + 0.002**2 + disagreement**2
        return energy, math.sqrt(variance)

    last = f"repeat_{truth.result.repeats.per_repeat[-1].index}_end"
    raw, raw_u = window("warmup_end", last)
    window_s = record.mark(last).t_s - record.mark("warmup_end").t_s
    # The old baseline: the idle window right at the start, no settling.
    idle, idle_u = window("baseline_0", "baseline_4")
    base_s = record.mark("baseline_4").t_s - record.mark("baseline_0").t_s
    idle_w, idle_u_w = idle / base_s, idle_u / base_s
    adjusted = max(0.0, raw - idle_w * window_s)
    adjusted_u = math.hypot(raw_u, idle_u_w * window_s)
    tokens = truth.result.output_tokens
    batches = truth.backend.batches
    phases = _old_phases(record, list(curves.values()), truth, raw, raw_u, last)
    decode_s = sum(b.end - b.first for b in batches)
    decode_tokens = tokens - truth.result.n_requests
    decode_adj = phases["decode"].value - idle_w * decode_s
    per_token = decode_adj / decode_tokens if decode_tokens > 0 else 0.0
    outputs = [n for b in batches for n in b.outputs]
    per_request = [Old(per_token * n, None) for n in outputs]
    per_token_requests = sorted(r.value / n for r, n in zip(per_request, outputs, strict=True))
    repeats = _old_repeats_and_devices(record, truth, window, idle_w, window_s, last)
    return {
        **repeats,
        "energy_j": Old(raw, raw_u),
        "adjusted_energy_j": Old(adjusted, adjusted_u),
        "energy_per_output_token_j": Old(raw / tokens, None),
        "adjusted_energy_per_output_token_j": Old(adjusted / tokens, None),
        "baseline_power_w": Old(idle_w, idle_u_w),
        "phase.prefill": phases["prefill"],
        "phase.decode": phases["decode"],
        "phase.between_batches": phases["between_batches"],
        "requests.energy_j": None,  # the old method had no raw per-request figure
        "requests.adjusted_energy_j": per_request,
        "requests.adjusted_j_per_token.mean": Old(statistics.fmean(per_token_requests), None),
    }


def _old_phases(
    record: MeterRecord,
    curves: list[PowerCurve],
    truth: Truth,
    raw: float,
    raw_u: float,
    last: str,
) -> dict[str, Old]:
    """The old timeline share: the window's energy in proportion to the integrated samples of
    each phase's spans, uncertain by share x the window's + power range x min(time, reach)."""
    times = sorted({t for c in curves for t in c.t})
    summed = PowerCurve(times, [sum(c.power_at(t) for c in curves) for t in times], dedupe=False)
    batches = truth.backend.batches
    t0, t1 = record.mark("warmup_end").t_s, record.mark(last).t_s
    whole = summed.energy_j(t0, t1)
    prefill_s = sum(b.first - b.start for b in batches)
    decode_s = sum(b.end - b.first for b in batches)
    shares = {
        "prefill": (sum(summed.energy_j(b.start, b.first) for b in batches) / whole, prefill_s),
        "decode": (sum(summed.energy_j(b.first, b.end) for b in batches) / whole, decode_s),
    }
    between_s = max(0.0, t1 - t0 - prefill_s - decode_s)
    shares["between_batches"] = (max(0.0, 1 - sum(v[0] for v in shares.values())), between_s)
    low, high = summed.low_w(t0, t1) or 0.0, summed.peak_w(t0, t1) or 0.0
    reach = record.sample_interval_s * len(batches)
    limits = sum(m.power_limit_w or 0.0 for m in record.devices)
    out = {}
    for name, (share, duration) in shares.items():
        span_range = high - low
        if duration / len(batches) < record.sample_interval_s:
            span_range = max(span_range, limits - low)
        out[name] = Old(raw * share, share * raw_u + span_range * min(duration, reach))
    return out


def _old_repeats_and_devices(
    record: MeterRecord,
    truth: Truth,
    window: Callable[[str, str], tuple[float, float]],
    idle_w: float,
    window_s: float,
    last: str,
) -> dict[str, Old | list[Old] | None]:
    """Per-repeat energy and per-device adjusted energy as the old method gave them (no
    uncertainty)."""
    repeats: dict[str, Old | list[Old] | None] = {}
    previous = "warmup_end"
    for r in truth.result.repeats.per_repeat:
        label = f"repeat_{r.index}_end"
        repeats[f"repeat.{r.index}.energy_j"] = Old(window(previous, label)[0], None)
        previous = label
    end, start = record.mark(last).energy_mj, record.mark("warmup_end").energy_mj
    for i, meta in enumerate(record.devices):
        e = (end[meta.uuid] - start[meta.uuid]) / 1e3  # type: ignore[operator]
        share = idle_w / len(record.devices) * window_s
        repeats[f"device.{i}.adjusted_energy_j"] = Old(max(0.0, e - share), None)
    return repeats


@dataclass
class OldTally:
    covered: dict[str, int]
    counted: dict[str, int]
    relative: dict[str, list[float]]
    sums: list[float]  # per-request sum / window adjusted energy (truth)

    def add(
        self, figures: dict[str, Old | list[Old] | None], truth: dict[str, float | list[float]]
    ) -> None:
        for name, figure in figures.items():
            if figure is None:
                continue
            key = figure_group(name)
            true = truth[name]
            olds = figure if isinstance(figure, list) else [figure]
            trues = true if isinstance(true, list) else [true]
            for old, t in zip(olds, trues, strict=True):
                self.counted[key] = self.counted.get(key, 0) + 1
                error = abs(old.value - t)
                ok = old.total is not None and error <= old.total
                self.covered[key] = self.covered.get(key, 0) + int(ok)
                if old.total is not None and old.value:
                    self.relative.setdefault(key, []).append(old.total / abs(old.value))
        requests = figures.get("requests.adjusted_energy_j")
        if isinstance(requests, list):
            adjusted_truth = truth["adjusted_energy_j"]
            self.sums.append(sum(r.value for r in requests) / adjusted_truth)  # type: ignore[operator]


def measure(runs: int, calibrated: bool) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, scenario in SCENARIOS.items():
        started = time.perf_counter()
        new = Tally()
        old = OldTally({}, {}, {}, [])
        request_sums = []
        for seed in range(runs):
            run = scenario.draw(seed, calibrated=calibrated)
            result, truth = run.execute()
            new.add(result, truth)
            # The old method split off every phase, the gaps between batches included.
            truth_values = truth.values(as_published=False)
            old.add(old_method(run, truth), truth_values)
            if result.energy and result.energy.requests and result.energy.energy_j:
                total = sum(e.value for e in result.energy.requests.energy_j)
                request_sums.append(total / result.energy.energy_j.value)
        figures = {key: _figure(key, new, old) for key in FIGURES}
        out[name] = {
            "runs": runs,
            "seconds": round(time.perf_counter() - started, 1),
            "figures": figures,
            "new_requests_sum_over_window": _mean(request_sums),
            "old_requests_sum_over_adjusted_window": _mean(old.sums),
        }
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else None


def _figure(key: str, new: Tally, old: OldTally) -> dict[str, object]:
    counted = old.counted.get(key)
    return {
        "new_coverage": new.coverage(key),
        "new_published_runs": new.published_runs.get(key, 0),
        "new_median_relative_uncertainty": _median(new.relative.get(key, [])),
        "old_coverage": old.covered.get(key, 0) / counted if counted else None,
        "old_stated": key in old.relative,
        "old_median_relative_uncertainty": _median(old.relative.get(key, [])),
    }


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"


def markdown(data: dict[str, object], runs: int, mode: str) -> str:
    lines = [
        "# Energy figures: coverage and stated uncertainty, new method vs old",
        "",
        f"{runs} runs per scenario, sensors `{mode}`, "
        f"{data['machine']['date']} on {data['machine']['platform']}. "  # type: ignore[index]
        "Command: "
        f"`.venv/bin/python benchmarks/energy_coverage.py --runs {runs} --mode {mode}`.",
        "",
        "Coverage: share of published values whose stated uncertainty (k = 2) contains the "
        "truth; the claim is >= 95%. Median unc.: the median stated total uncertainty over "
        "|value|. Published: runs in which the figure was not null (a null comes with a "
        "warning). Old: the method before issue 10, re-implemented from commit 95f3ef4; `no "
        "unc.` where it stated none (coverage then counts nothing as covered).",
        "",
    ]
    for name, entry in data["scenarios"].items():  # type: ignore[attr-defined]
        lines += [
            f"## {name}",
            "",
            "| figure | new: coverage | new: median unc. | new: published "
            "| old: coverage | old: median unc. |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for key, label in FIGURES.items():
            f = entry["figures"][key]
            old_cov = _pct(f["old_coverage"]) if f["old_stated"] else "no unc."
            if f["old_coverage"] is None:
                old_cov = "—"
            lines.append(
                f"| {label} | {_pct(f['new_coverage'])} | "
                f"{_pct(f['new_median_relative_uncertainty'])} | "
                f"{f['new_published_runs']}/{entry['runs']} | {old_cov} | "
                f"{_pct(f['old_median_relative_uncertainty'])} |"
            )
        new_sum, old_sum = (
            entry["new_requests_sum_over_window"],
            entry["old_requests_sum_over_adjusted_window"],
        )
        lines += ["", f"Per-request energy summed over the window: new {_pct(new_sum)} of the "
                  f"window's raw energy; old {_pct(old_sum)} of the window's true adjusted energy.",
                  ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--mode", choices=["calibrated", "ideal"], default="calibrated")
    args = parser.parse_args()
    scenarios = measure(args.runs, args.mode == "calibrated")
    data = {
        "scenarios": scenarios,
        "mode": args.mode,
        "machine": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.mode == "calibrated" else "_ideal"
    (RESULTS / f"energy_coverage{suffix}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"energy_coverage{suffix}.md").write_text(markdown(data, args.runs, args.mode))
    print(markdown(data, args.runs, args.mode))


if __name__ == "__main__":
    main()
