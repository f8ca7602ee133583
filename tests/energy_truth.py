"""The truth of every published energy figure of a scenario run, and how runs are tallied
into coverage (`tests.energy_scenarios` runs them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llem_client import ExperimentResult

from tests.fake_nvml import ScriptedSession

if TYPE_CHECKING:
    from tests.energy_scenarios import Run, Scenario, SimulatedBackend


@dataclass
class Truth:
    """The true value of every published figure of one run."""

    run: Run
    scripted: ScriptedSession
    backend: SimulatedBackend
    result: ExperimentResult

    def _t(self, session_t: float) -> float:
        return session_t - self.scripted.t0

    def energy(self, t0: float, t1: float, gpus: Sequence[int] | None = None) -> float:
        """True energy between two session-clock times, over the given GPUs (all)."""
        chosen = range(len(self.run.profiles)) if gpus is None else gpus
        return sum(self.run.profiles[i].energy_j(self._t(t0), self._t(t1)) for i in chosen)

    @property
    def idle_w(self) -> float:
        """True idle power of the host's GPUs, settled (what a baseline should find)."""
        return self.run.scenario.idle_w * len(self.run.profiles)

    def values(self, *, as_published: bool = True) -> dict[str, float | list[float]]:
        """figure name -> true value (lists for per-request figures). ``as_published``: the
        phases the result lists, decode holding the gaps when it lists none for them; else
        every phase, each on its own."""
        record_marks = {m: t for m, t in self._marks().items()}
        start, end = record_marks["warmup_end"], record_marks[self._last_repeat()]
        window_s = end - start
        raw = self.energy(start, end)
        tokens = self.result.output_tokens
        out: dict[str, float | list[float]] = {
            "energy_j": raw,
            "adjusted_energy_j": raw - self.idle_w * window_s,
            "energy_per_output_token_j": raw / tokens,
            "adjusted_energy_per_output_token_j": (raw - self.idle_w * window_s) / tokens,
            "baseline_power_w": self.idle_w,
        }
        batches = self.backend.batches
        prefill = sum(self.energy(b.start, b.first) for b in batches)
        decode = sum(self.energy(b.first, b.end) for b in batches)
        out["phase.prefill"] = prefill
        out["phase.decode"] = decode
        out["phase.between_batches"] = raw - prefill - decode
        out["phase.load"] = self.energy(record_marks["load_start"], record_marks["load_end"])
        out["phase.warmup"] = self.energy(record_marks["load_end"], record_marks["warmup_end"])
        # A phase the result leaves out (a reused model's load; gaps too short to place,
        # which decode then keeps) has no truth of its own to cover.
        energy = self.result.energy
        shown = {p.phase for p in energy.phases} if energy is not None else set()
        if not as_published:
            shown |= {"load", "between_batches"}
        if "between_batches" not in shown:
            out["phase.decode"] = raw - prefill
        for phase in ("load", "between_batches"):
            if phase not in shown:
                del out[f"phase.{phase}"]
        per_request, times = self._requests(start, end)
        out["requests.energy_j"] = per_request
        out["requests.adjusted_energy_j"] = [
            e - self.idle_w * t for e, t in zip(per_request, times, strict=True)
        ]
        outputs = [n for b in batches for n in b.outputs]
        out.update(_percentiles("requests.j_per_token", per_request, outputs))
        out.update(
            _percentiles(
                "requests.adjusted_j_per_token",
                list(out["requests.adjusted_energy_j"]),  # type: ignore[arg-type]
                outputs,
            )
        )
        decode_tokens = sum(outputs) - len(outputs)
        if decode_tokens > 0:
            out["requests.steady_state_j_per_token"] = decode / decode_tokens
        previous = start
        for i in range(self.result.repeats.per_repeat[-1].index + 1):
            mark = record_marks[f"repeat_{i}_end"]
            out[f"repeat.{i}.energy_j"] = self.energy(previous, mark)
            previous = mark
        for i, _ in enumerate(self.run.profiles):
            e = self.energy(start, end, [i])
            out[f"device.{i}.energy_j"] = e
            out[f"device.{i}.adjusted_energy_j"] = e - self.run.scenario.idle_w * window_s
        return out

    def _marks(self) -> dict[str, float]:
        record = self.scripted.session.marks
        return {m.label: m.t_s for m in record}

    def _last_repeat(self) -> str:
        return f"repeat_{self.result.repeats.per_repeat[-1].index}_end"

    def _requests(self, start: float, end: float) -> tuple[list[float], list[float]]:
        """The documented per-step split applied to the true power."""
        energies: list[float] = []
        times: list[float] = []
        batches = self.backend.batches
        previous = start
        for i, b in enumerate(batches):
            gap_end = b.start
            gap_start = previous
            tail = (b.end, end) if i == len(batches) - 1 else None
            n = len(b.outputs)
            gap_e = self.energy(gap_start, gap_end) + (self.energy(*tail) if tail else 0.0)
            gap_t = (gap_end - gap_start) + ((tail[1] - tail[0]) if tail else 0.0)
            prefill_e = self.energy(b.start, b.first)
            total_in = sum(b.inputs)
            times_k = [b.first, *b.steps]
            for r in range(n):
                share = b.inputs[r] / total_in
                e = prefill_e * share + gap_e / n
                t = (b.first - b.start) * share + gap_t / n
                for k in range(1, len(times_k)):
                    active = sum(1 for out in b.outputs if out >= k + 1)
                    if b.outputs[r] >= k + 1:
                        e += self.energy(times_k[k - 1], times_k[k]) / active
                        t += (times_k[k] - times_k[k - 1]) / active
                energies.append(e)
                times.append(t)
            previous = b.end
        return energies, times


def _percentiles(name: str, energy: Sequence[float], tokens: Sequence[int]) -> dict[str, float]:
    per_token = sorted(e / n for e, n in zip(energy, tokens, strict=True) if n > 0)
    out = {f"{name}.mean": sum(per_token) / len(per_token)}
    for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        position = (len(per_token) - 1) * q
        low = int(position)
        high = min(low + 1, len(per_token) - 1)
        out[f"{name}.{label}"] = per_token[low] + (per_token[high] - per_token[low]) * (
            position - low
        )
    return out


def published(result: ExperimentResult) -> dict[str, Any]:
    """figure name -> the published Estimate (or None), in the names `Truth.values` uses."""
    energy = result.energy
    assert energy is not None
    out: dict[str, Any] = {
        "energy_j": energy.energy_j,
        "adjusted_energy_j": energy.adjusted_energy_j,
        "energy_per_output_token_j": energy.energy_per_output_token_j,
        "adjusted_energy_per_output_token_j": energy.adjusted_energy_per_output_token_j,
        "baseline_power_w": energy.baseline_power_w,
    }
    for phase in energy.phases:
        out[f"phase.{phase.phase}"] = phase.energy_j
    requests = energy.requests
    out["requests.energy_j"] = requests.energy_j if requests else None
    out["requests.adjusted_energy_j"] = requests.adjusted_energy_j if requests else None
    for name, pct in (
        ("requests.j_per_token", requests.energy_per_output_token_j if requests else None),
        (
            "requests.adjusted_j_per_token",
            requests.adjusted_energy_per_output_token_j if requests else None,
        ),
    ):
        for q in ("mean", "p50", "p90", "p99"):
            out[f"{name}.{q}"] = getattr(pct, q) if pct else None
    steady = requests.steady_state if requests else None
    out["requests.steady_state_j_per_token"] = steady.energy_per_output_token_j if steady else None
    for r in result.repeats.per_repeat:
        out[f"repeat.{r.index}.energy_j"] = r.energy_j
    for i, d in enumerate(energy.devices):
        out[f"device.{i}.energy_j"] = d.energy_j
        out[f"device.{i}.adjusted_energy_j"] = d.adjusted_energy_j
    return out


def covered(estimate: Any, truth: float | list[float]) -> list[bool]:
    """For each value of a figure, whether its stated uncertainty contains the truth."""
    estimates = estimate if isinstance(estimate, list) else [estimate]
    truths = truth if isinstance(truth, list) else [truth]
    assert len(estimates) == len(truths)
    return [
        abs(e.value - t) <= e.total * (1 + 1e-9) + 1e-9
        for e, t in zip(estimates, truths, strict=True)
    ]


@dataclass
class Tally:
    """Coverage of each figure over runs: values that covered the truth, values published,
    runs where it was null, and the stated relative uncertainty of each published value."""

    covered: dict[str, int] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    relative: dict[str, list[float]] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    silent_nulls: int = 0  # runs with a null figure and no warning saying why
    published_runs: dict[str, int] = field(default_factory=dict)  # runs with it not null

    def add(self, result: ExperimentResult, truth: Truth) -> None:
        self.runs += 1
        codes = {w.code for w in result.warnings}
        for code in codes:
            self.warnings[code] = self.warnings.get(code, 0) + 1
        values = published(result)
        null_here = False
        seen: set[str] = set()
        for name, true in truth.values().items():
            key = figure_group(name)
            estimate = values.get(name)
            if estimate is None:
                self.nulls[key] = self.nulls.get(key, 0) + 1
                null_here = True
                continue
            seen.add(key)
            hits = covered(estimate, true)
            self.covered[key] = self.covered.get(key, 0) + sum(hits)
            self.published[key] = self.published.get(key, 0) + len(hits)
            estimates = estimate if isinstance(estimate, list) else [estimate]
            self.relative.setdefault(key, []).extend(
                e.total / abs(e.value) if e.value else math.inf for e in estimates
            )
        if null_here and "energy_figure_unbounded" not in codes:
            self.silent_nulls += 1
        for key in seen:
            self.published_runs[key] = self.published_runs.get(key, 0) + 1

    def coverage(self, key: str) -> float | None:
        n = self.published.get(key, 0)
        return self.covered.get(key, 0) / n if n else None

    def figures(self) -> list[str]:
        return sorted(set(self.published) | set(self.nulls))


def figure_group(name: str) -> str:
    """Figures reported together: every repeat, device or request percentile is one figure."""
    parts = name.split(".")
    if parts[0] in ("repeat", "device"):
        return f"{parts[0]}.{parts[-1]}"
    if parts[0] == "requests" and len(parts) == 3:
        return f"{parts[0]}.{parts[1]}"
    return name


def tally(scenario: Scenario, seeds: Sequence[int], *, calibrated: bool) -> Tally:
    out = Tally()
    for seed in seeds:
        result, truth = scenario.draw(seed, calibrated=calibrated).execute()
        out.add(result, truth)
    return out
