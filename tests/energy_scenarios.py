"""Scenarios for the energy figures: LLM-like workloads on scripted GPUs with realistic
sensors, run through the real experiment path (`run_experiment`, the real NVML meter and the
real report) in simulated time, with the truth of every published figure.

A `SimulatedBackend` implements `InferenceBackend`: each batch writes what the GPUs draw into
their `LiveProfile` (prefill, each decoding step, the gaps between batches) and moves the
scripted session's clock on, sampling as the sampler would. The truth of a figure is the exact
integral of those profiles over what the figure claims to measure, attributed the way the
figure's method documents (`tests.energy_truth.Truth`, with the coverage tallies).

The library (`SCENARIOS`): steady decode, prefill-heavy, short windows, bursty work, a GPU
still warm at baseline, work periodic at the sensor's period (and near it), multi-GPU, a counter
that fails transiently, a GPU without an energy counter whose power reads fail. Each
`Scenario.draw(seed)` varies sensor phases, lags and calibration and the workload's timing.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml
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

from tests.energy_truth import Truth
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
    #: `FakeGpu` fields set on every GPU after its sensor is drawn (faults, no counter...).
    gpu_overrides: tuple[tuple[str, Any], ...] = ()

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
            gpu = dataclasses.replace(gpu, **dict(self.gpu_overrides))
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

    def reuse(self, config: ExperimentConfig) -> LoadReport:
        """The coverage scenarios load once per experiment: reuse is a load that takes no time."""
        return LoadReport(load_time_s=0.0, device_uuids=tuple(g.uuid for g in self.scripted.gpus))

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
    # The counter answers Unknown to a third of its reads (NVML polled hard by another
    # client): every mark reads it again a few milliseconds later.
    "flaky_counter": Scenario(
        "flaky_counter",
        gpu_overrides=(("flaky", (("energy", 0.3, pynvml.NVML_ERROR_UNKNOWN),)),),
    ),
    # No energy counter (a vGPU, pre-Volta): everything is integrated from power readings,
    # 5% of which fail, and for 0.4 s in the middle of the window none answers at all.
    "no_counter_failed_reads": Scenario(
        "no_counter_failed_reads",
        gpu_overrides=(
            ("unsupported", frozenset({"energy"})),
            ("flaky", (("power_instant", 0.05, pynvml.NVML_ERROR_UNKNOWN),)),
            ("failing", (("power_instant", 21.0, 21.4, pynvml.NVML_ERROR_UNKNOWN),)),
        ),
    ),
}  # fmt: skip
