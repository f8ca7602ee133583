"""Scenarios for the energy figures: LLM-like workloads on scripted GPUs with realistic
sensors, run through the real experiment path (`run_experiment`, the real NVML meter and the
real report) in simulated time, with the truth of every published figure.

A `SimulatedBackend` implements `InferenceBackend`: each batch writes what the GPUs draw into
their `LiveProfile` (prefill, each decoding step, the gaps between batches) and moves the
scripted session's clock on, sampling as the sampler would. The truth of a figure is the exact
integral of those profiles over what the figure claims to measure, attributed the way the
figure's method documents (`Truth`).

The library (`SCENARIOS`): steady decode, prefill-heavy, short windows, bursty work, a GPU
still warm at baseline, work periodic at the sensor's period (and near it), multi-GPU. Each
`Scenario.draw(seed)` varies sensor phases, lags and calibration and the workload's timing.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llem_client import ExperimentConfig, ExperimentResult
from llem_service.backends.base import (
    LoadReport,
    PrefillReport,
    ProgressFn,
    WarmupReport,
    WorkloadReport,
)
from llem_service.energy.sensors import SensorTable
from llem_service.experiment.run import run_experiment

from tests.fake_nvml import FakeGpu, LiveProfile, ScriptedSession, realistic_sensor

#: What the meter is told about the scripted sensors: NVIDIA's documented accuracy (5%, 5 W),
#: part-time sensing of 25% as on H100 (the scenarios' GPUs are called H100).
SCENARIO_GAIN_REL = 0.05
#: Host time between two batches of a prefill pass (two generate calls back to back).
PASS_GAP_S = 0.003


@dataclass(frozen=True)
class Workload:
    """An LLM-like workload, timed and powered as a GPU would run it.

    Attributes:
        n_prompts, batch_size: The workload's shape.
        input_tokens: Prompt tokens per request (cycled).
        output_tokens: Generated tokens per request (cycled); the batch decodes until its
            longest request is done.
        prefill_s_per_token: Prefill time per prompt token of a batch (plus ``prefill_base_s``).
        step_s: Time of one decoding step; ``step_jitter`` its relative spread.
        step_busy: Part of each step at ``decode_w``; the rest at ``step_idle_w``.
        gap_s: Host time between batches, at ``gap_w``; ``gap_jitter`` its relative spread.
        decode_w_spread: Relative spread of decode power from batch to batch.
    """

    n_prompts: int = 32
    batch_size: int = 8
    input_tokens: tuple[int, ...] = (256,)
    output_tokens: tuple[int, ...] = (64,)
    prefill_base_s: float = 0.01
    prefill_s_per_token: float = 2.5e-5
    prefill_w: float = 650.0
    step_s: float = 0.027
    step_jitter: float = 0.03
    decode_w: float = 430.0
    step_busy: float = 1.0
    step_idle_w: float = 250.0
    gap_s: float = 0.004
    gap_jitter: float = 0.3
    gap_w: float = 120.0
    decode_w_spread: float = 0.0
    load_s: float = 1.0
    load_w: float = 150.0
    warmup_batches: int = 1
    repeats: int = 1
    fixed_output_length: bool = True


@dataclass(frozen=True)
class Scenario:
    """A workload on a host of scripted GPUs, with what may be expected of the figures.

    Attributes:
        unbounded: Figures this scenario cannot support honestly: they must be null (with a
            warning) in every run.
    """

    name: str
    workload: Workload = field(default_factory=Workload)
    n_gpus: int = 1
    idle_w: float = 70.0
    warm_w: float = 0.0
    cool_tau_s: float = 20.0
    part_time: bool = True
    aligned_sensing: bool = False
    power_limit_w: float = 700.0
    baseline: dict[str, Any] = field(
        default_factory=lambda: {"enabled": True, "duration_s": 2.0, "settle_max_s": 60.0}
    )
    energy: dict[str, Any] = field(default_factory=lambda: {"sample_interval_ms": 50})
    unbounded: frozenset[str] = frozenset()

    def config(self) -> ExperimentConfig:
        w = self.workload
        return ExperimentConfig.model_validate(
            {
                "model": "simulated",
                "n_prompts": w.n_prompts,
                "batch_size": w.batch_size,
                "max_output_tokens": max(w.output_tokens),
                "fixed_output_length": w.fixed_output_length,
                "warmup": {"mode": "fixed", "batches": w.warmup_batches},
                "baseline": self.baseline,
                "energy": self.energy,
                "repeats": w.repeats,
            }
        )

    def draw(self, seed: int, *, calibrated: bool = True) -> Run:
        """One run: sensors with random phases and lags (and, ``calibrated``, a gain error
        within the stated accuracy, else a perfect one the meter is told about)."""
        rng = random.Random(f"{self.name}:{seed}")
        profiles = [
            LiveProfile(self.idle_w, warm_w=self.warm_w, cool_tau_s=self.cool_tau_s,
                        warm_at_start=self.warm_w > 0)
            for _ in range(self.n_gpus)
        ]  # fmt: skip
        gpus = []
        for i, profile in enumerate(profiles):
            gpu = FakeGpu(
                uuid=f"GPU-{i:08d}-sim0-0000-0000-000000000000",
                name="Simulated H100",
                profile=profile,
                power_limit_mw=int(self.power_limit_w * 1e3),
                sensor_gain=rng.uniform(1 - SCENARIO_GAIN_REL, 1 + SCENARIO_GAIN_REL)
                if calibrated
                else 1.0,
            )
            gpu = realistic_sensor(gpu, rng, part_time=self.part_time)
            if self.aligned_sensing:  # the workload's steps start in phase with the sensor
                gpu = dataclasses.replace(gpu, counter_phase_s=0.0, instant_phase_s=0.0)
            gpus.append(gpu)
        gain = SCENARIO_GAIN_REL if calibrated else 0.0
        sensors = SensorTable.with_overrides(
            {
                "Simulated H100": {
                    "gain_rel": gain,
                    "offset_w": 5.0 if calibrated else 0.0,
                    "sensed_fraction": 0.25 if self.part_time else 1.0,
                }
            }
        )
        return Run(self, gpus, profiles, sensors, random.Random(rng.random()))


class SimulatedBackend:
    """`InferenceBackend` that runs a `Workload` in simulated time on scripted GPUs."""

    name = "simulated"

    def __init__(
        self, scripted: ScriptedSession, profiles: Sequence[LiveProfile], workload: Workload,
        rng: random.Random,
    ) -> None:  # fmt: skip
        self.scripted = scripted
        self.profiles = profiles
        self.workload = workload
        self.rng = rng
        self.batches: list[SimBatch] = []  # every measured batch, in order
        self.pass_batches = 0

    # -- time ---------------------------------------------------------------------------------

    def _draw(self, seconds: float, watts: float, what: str) -> None:
        if seconds <= 0:
            return
        start = self.scripted.now()
        for profile in self.profiles:
            profile.occupy(start, seconds, watts, what)
        self.scripted.advance(seconds)

    def now_s(self) -> float:
        """The session clock (what the backend's stamps use)."""
        return self.scripted.clock()

    # -- the seam -----------------------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        return {"simulated": "1"}

    def prepare(self, config: ExperimentConfig) -> tuple[str, ...]:
        return tuple(g.uuid for g in self.scripted.gpus)

    def synchronize(self) -> None:
        pass

    def load(self, config: ExperimentConfig) -> LoadReport:
        self._draw(self.workload.load_s, self.workload.load_w, "load")
        return LoadReport(
            load_time_s=self.workload.load_s,
            device_uuids=tuple(g.uuid for g in self.scripted.gpus),
            n_parameters=1,
        )

    def _shapes(self) -> list[tuple[list[int], list[int]]]:
        w = self.workload
        inputs = [w.input_tokens[i % len(w.input_tokens)] for i in range(w.n_prompts)]
        outputs = [w.output_tokens[i % len(w.output_tokens)] for i in range(w.n_prompts)]
        return [
            (inputs[i : i + w.batch_size], outputs[i : i + w.batch_size])
            for i in range(0, w.n_prompts, w.batch_size)
        ]

    def _prefill_s(self, inputs: Sequence[int]) -> float:
        w = self.workload
        return w.prefill_base_s + w.prefill_s_per_token * sum(inputs)

    def _batch(self, inputs: list[int], outputs: list[int], repeat: int) -> SimBatch:
        w = self.workload
        gap = max(0.0, w.gap_s * (1 + w.gap_jitter * self.rng.uniform(-1, 1)))
        self._draw(gap, w.gap_w, "gap")
        start = self.now_s()
        self._draw(self._prefill_s(inputs), w.prefill_w, "prefill")
        first = self.now_s()
        decode_w = w.decode_w * (1 + w.decode_w_spread * self.rng.uniform(-1, 1))
        steps = []
        for _ in range(max(outputs) - 1):
            step = w.step_s * (1 + w.step_jitter * self.rng.gauss(0, 1))
            step = max(step, 0.2 * w.step_s)
            busy = step * w.step_busy
            self._draw(busy, decode_w, "decode")
            self._draw(step - busy, w.step_idle_w, "decode")
            steps.append(self.now_s())
        return SimBatch(start, first, self.now_s(), tuple(steps), tuple(inputs), tuple(outputs),
                        repeat, gap)  # fmt: skip

    def warmup(self, config: ExperimentConfig) -> WarmupReport:
        shapes = self._shapes()
        latencies = []
        for k in range(self.workload.warmup_batches):
            b = self._batch(*shapes[k % len(shapes)], repeat=-1)
            latencies.append(b.end - b.start)
        return WarmupReport(duration_s=sum(latencies), batch_latencies_s=tuple(latencies))

    def run(self, config: ExperimentConfig, progress: ProgressFn) -> WorkloadReport:
        repeat = len({b.repeat for b in self.batches})
        started = self.now_s()
        done = []
        for inputs, outputs in self._shapes():
            done.append(self._batch(inputs, outputs, repeat))
            progress(sum(len(b.inputs) for b in done), self.workload.n_prompts)
        self._draw(self.workload.gap_s, self.workload.gap_w, "gap")  # after the last batch
        self.batches.extend(done)
        duration = self.now_s() - started
        outputs = [n for b in done for n in b.outputs]
        return WorkloadReport(
            n_requests=len(outputs),
            input_tokens=sum(n for b in done for n in b.inputs),
            output_tokens_per_request=tuple(outputs),
            duration_s=duration,
            batch_latencies_s=tuple(b.end - b.start for b in done),
            prefill_time_s=sum(b.first - b.start for b in done),
            decode_time_s=sum(b.end - b.first for b in done),
            ttft_s=tuple(b.first - b.start for b in done for _ in b.inputs),
            itl_s=tuple(g for b in done for g in b.step_gaps),
            hook_overhead_s=0.0,
            prefill_flops=0,
            decode_flops=0,
            flops_method="simulated",
            batch_spans_s=tuple((b.start, b.first, b.end) for b in done),
            input_tokens_per_request=tuple(n for b in done for n in b.inputs),
            batch_sizes=tuple(len(b.inputs) for b in done),
            batch_step_times_s=tuple(b.steps for b in done),
        )

    def prefill(self, config: ExperimentConfig) -> PrefillReport:
        # The passes' batches are the workload's own, already tokenized: back to back, with
        # only the few milliseconds of host work between two generate calls.
        started = self.now_s()
        latencies = []
        for inputs, _ in self._shapes():
            gap = PASS_GAP_S * (1 + 0.3 * self.rng.uniform(-1, 1))
            self._draw(gap, self.workload.gap_w, "pass gap")
            begin = self.now_s()
            self._draw(self._prefill_s(inputs), self.workload.prefill_w, "prefill pass")
            latencies.append(self.now_s() - begin)
        return PrefillReport(duration_s=self.now_s() - started, batch_latencies_s=tuple(latencies))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class SimBatch:
    start: float
    first: float
    end: float
    steps: tuple[float, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    repeat: int
    gap_before_s: float

    @property
    def step_gaps(self) -> list[float]:
        times = [self.first, *self.steps]
        return [b - a for a, b in itertools.pairwise(times)]


@dataclass
class Run:
    """One drawn run of a scenario: its GPUs, their power, and the meter's sensor table."""

    scenario: Scenario
    gpus: list[FakeGpu]
    profiles: list[LiveProfile]
    sensors: SensorTable
    rng: random.Random

    def execute(self) -> tuple[ExperimentResult, Truth]:
        scripted = ScriptedSession(
            self.gpus,
            interval_ms=self.scenario.energy.get("sample_interval_ms", 50),
            sensors=self.sensors,  # the meter is told what its sensors are, as an operator would
        )
        backend = SimulatedBackend(scripted, self.profiles, self.scenario.workload, self.rng)
        output = run_experiment(
            "sim", self.scenario.config(), backend, scripted.meter(), lambda _: None
        )
        return output.result, Truth(self, scripted, backend, output.result)


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

    def values(self) -> dict[str, float | list[float]]:
        """figure name -> true value (lists for per-request figures)."""
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


def relative_total(estimate: Any) -> float:
    estimates = estimate if isinstance(estimate, list) else [estimate]
    return max(e.total / abs(e.value) if e.value else math.inf for e in estimates)


STEADY = Workload()
SCENARIOS: dict[str, Scenario] = {
    "steady_decode": Scenario("steady_decode"),
    "prefill_heavy": Scenario(
        "prefill_heavy",
        Workload(n_prompts=16, batch_size=4, input_tokens=(2048, 1536, 1792, 2048),
                 output_tokens=(8,), prefill_s_per_token=5e-5, step_s=0.022, repeats=2),
    ),
    "short_window": Scenario(
        "short_window", Workload(n_prompts=4, batch_size=4, input_tokens=(64,),
                                 output_tokens=(8,), step_s=0.02),
        unbounded=frozenset({"requests", "adjusted"}),
    ),
    "bursty": Scenario(
        "bursty",
        Workload(n_prompts=24, batch_size=6, output_tokens=(12, 64, 40, 8, 64, 25),
                 fixed_output_length=False, decode_w_spread=0.25, gap_s=0.15, gap_jitter=1.0,
                 step_busy=0.7, step_idle_w=200.0),
    ),
    "warm_baseline": Scenario("warm_baseline", warm_w=30.0, cool_tau_s=15.0),
    "periodic_at_sensor_period": Scenario(
        "periodic_at_sensor_period",
        Workload(step_s=0.05, step_jitter=0.0, step_busy=0.25, decode_w=650.0,
                 step_idle_w=150.0, output_tokens=(48,)),
        aligned_sensing=True,
        unbounded=frozenset({"all"}),
    ),
    "periodic_near_sensor_period": Scenario(
        "periodic_near_sensor_period",
        Workload(step_s=0.048, step_jitter=0.01, step_busy=0.25, decode_w=650.0,
                 step_idle_w=150.0, output_tokens=(48,)),
    ),
    "multi_gpu": Scenario("multi_gpu", n_gpus=2),
}  # fmt: skip
