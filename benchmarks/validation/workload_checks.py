"""Checks 7 to 10: llem's own experiment path on a model workload, in real time: the sampler's
cost, the end-to-end energy against an independent meter, prefill energy, per-step times."""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llem_client import EnergyConfig, ExperimentConfig
from llem_service.backends.base import WorkloadReport
from llem_service.backends.pytorch import PytorchBackend, StepTimer
from llem_service.energy.base import MeterError, MeterProbe, MeterRecord
from llem_service.energy.meter import NvmlEnergyMeter
from llem_service.energy.phases import split
from llem_service.energy.windows import EnergyAccount
from llem_service.experiment.run import _work as work_of  # the experiment's own batches
from llem_service.experiment.run import run_experiment
from llem_service.experiment.summary import percentile

from benchmarks.validation.outcome import CheckResult
from benchmarks.validation.rigs import Rig, ScriptedRig

State = dict[str, Any]


def _config(rig: Rig, **overrides: Any) -> ExperimentConfig:
    """The model workload: GPT-2 small's shape on a GPU, a tiny GPT-2 on the CPU."""
    model = rig.model_dir()
    data: dict[str, Any] = {
        "model": model.name,
        "precision": "fp32" if rig.dry else "fp16",
        "prompts": {"source": "synthetic", "input_len": 16 if rig.dry else 128},
        "n_prompts": 8 if rig.dry else 64,
        "batch_size": 4 if rig.dry else 8,
        "max_output_tokens": 16 if rig.dry else 128,
        "fixed_output_length": True,
        "warmup": {"mode": "fixed", "batches": 2},
        "baseline": {"enabled": False},
        "pytorch": {"device": rig.workload_device()},
    }
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def check_sampler_overhead(rig: Rig, state: State) -> CheckResult:
    check = CheckResult(
        7,
        "the sampler's cost to tokens/s",
        "tokens/s with the sampler (own process, 10 ms) within 0.5% of it off",
    )
    if rig.dry:
        import torch

        torch.set_num_threads(1)  # a core left for the sampler, as on a server
    config = _config(rig)
    backend = PytorchBackend(model_roots=(str(rig.model_dir().parent),))
    backend.prepare(config)
    backend.load(config)
    backend.warmup(config)
    conditions: list[tuple[str, str | None]] = [("off", None), ("process", "process")]
    conditions.append(("thread", "thread"))
    speeds: dict[str, list[float]] = {name: [] for name, _ in conditions}
    rounds = 4 if not rig.dry else 2
    order = list(conditions)
    shuffle = random.Random(0)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name, mode in order:
            session = None
            if mode is not None:
                meter = rig.workload_meter(sampler=mode)
                session = meter.open([_uuid(rig)], EnergyConfig(sample_interval_ms=10))
                session.start()
            report = backend.run(config, lambda done, total: None)
            if session is not None:
                session.close()
            speeds[name].append(report.output_tokens / report.duration_s)
    backend.close()
    off = statistics.median(speeds["off"])
    slowdown = {n: (1 - statistics.median(v) / off) * 100 for n, v in speeds.items()}
    check.passed = slowdown["process"] < 0.5
    check.measured = {"tokens_per_s": speeds, "slowdown_pct": slowdown, "rounds": rounds}
    check.summary = (
        f"off {off:.0f} tokens/s; process sampler at 10 ms {slowdown['process']:+.2f}% "
        f"slower, thread {slowdown['thread']:+.2f}%"
    )
    return check


def _uuid(rig: Rig) -> str:
    if isinstance(rig, ScriptedRig):
        return rig.workload_library().gpus[0].uuid
    return rig.uuid


@dataclass
class CounterReference:
    """The dry run's stand-in for Zeus: what ZeusMonitor does (the energy counter read with
    pynvml's own calls at the window's edges, after a synchronise), done apart from llem's
    code; and the scripted GPU's true energy, for the record."""

    meter: NvmlEnergyMeter
    name: str = "an independent counter reader (Zeus's method)"
    truth_j: float | None = None
    _begun: tuple[float, int] | None = None

    def _read(self) -> tuple[float, int]:
        library: Any = self.meter.library
        handle = library.nvmlDeviceGetHandleByIndex(0)
        return float(library.now()), int(library.nvmlDeviceGetTotalEnergyConsumption(handle))

    def begin(self) -> None:
        self._begun = self._read()

    def end(self) -> float:
        assert self._begun is not None
        (t0, e0), (t1, e1) = self._begun, self._read()
        library: Any = self.meter.library
        self.truth_j = float(library.gpus[0].profile.energy_j(t0, t1))
        return (e1 - e0) / 1e3


@dataclass
class Alongside:
    """llem's meter, with an independent reference opened and closed on the same measured
    window (at the ``warmup_end`` and last ``repeat_*_end`` marks), and the record kept."""

    inner: NvmlEnergyMeter
    reference: Any
    repeats: int
    name: str = "nvml"
    reference_j: list[float] = field(default_factory=list)
    records: list[MeterRecord] = field(default_factory=list)

    def probe(self) -> MeterProbe:
        return self.inner.probe()

    def open(
        self,
        device_uuids: Sequence[str],
        plan: EnergyConfig,
        on_failure: Callable[[MeterError], None] | None = None,
    ) -> _AlongsideSession:
        return _AlongsideSession(self.inner.open(device_uuids, plan, on_failure), self)


@dataclass
class _AlongsideSession:
    """The real session (every method of it), with the reference at two of its marks."""

    inner: Any
    owner: Alongside

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def mark(self, label: str) -> None:
        self.inner.mark(label)
        if label == "warmup_end":
            self.owner.reference.begin()
        if label == f"repeat_{self.owner.repeats - 1}_end":
            self.owner.reference_j.append(self.owner.reference.end())

    def close(self) -> MeterRecord:
        record: MeterRecord = self.inner.close()
        self.owner.records.append(record)
        return record


@dataclass
class RecordingBackend:
    """The experiment's backend, keeping each measured pass's report (its batch spans)."""

    inner: Any
    reports: list[WorkloadReport] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, config: ExperimentConfig, progress: Any) -> WorkloadReport:
        report: WorkloadReport = self.inner.run(config, progress)
        self.reports.append(report)
        return report


def check_end_to_end(rig: Rig, state: State) -> CheckResult:
    repeats = 1 if rig.dry else 3
    inner = rig.workload_meter()
    reference = rig.reference_energy() or CounterReference(inner)
    check = CheckResult(
        8,
        "end to end, against Zeus",
        f"llem's experiment energy within 1% of {reference.name} over the same window",
    )
    meter = Alongside(inner, reference, repeats)
    backend = RecordingBackend(rig.experiment_backend())
    config = _config(
        rig,
        repeats=repeats,
        baseline={"enabled": True, "duration_s": 0.5 if rig.dry else 5.0},
    )
    started = time.perf_counter()
    output = run_experiment("validation", config, backend, meter, lambda _: None)
    result = output.result
    energy = result.energy
    if energy is None or not meter.reference_j:
        check.passed = False
        check.error = "no energy: " + "; ".join(w.message for w in result.warnings)
        return check
    if energy.energy_j is None:
        check.passed = False
        check.error = "llem published no window energy (its uncertainty was unbounded)"
        return check
    ours, theirs = energy.energy_j.value, meter.reference_j[0]
    difference = (ours - theirs) / theirs
    check.passed = abs(difference) <= 0.01
    state["experiment"] = (result, meter.records[-1], backend.reports)
    check.measured = {
        "llem_j": ours,
        "llem_uncertainty_j": energy.energy_j.total,
        "reference_j": theirs,
        "reference": reference.name,
        "rel_diff": difference,
        "window_s": energy.window_s,
        "seconds": time.perf_counter() - started,
        "warnings": [w.code for w in result.warnings],
        "host_energy_j": (
            energy.host.energy_j.value if energy.host and energy.host.energy_j else None
        ),
        "true_j": getattr(reference, "truth_j", None),
    }
    check.summary = (
        f"llem {ours:.1f} J +/- {energy.energy_j.total:.1f}, {reference.name} "
        f"{theirs:.1f} J ({difference:+.2%})"
    )
    return check


def check_prefill(rig: Rig, state: State) -> CheckResult:
    check = CheckResult(
        9,
        "counter-measured prefill vs timeline share",
        "the two agree within their stated uncertainties (k = 2)",
    )
    if "experiment" not in state:
        check.error = "needs check 8's experiment"
        return check
    result, record, reports = state["experiment"]
    energy = result.energy
    counted = [p for p in energy.phases if p.phase == "prefill" and p.method == "prefill_passes"]
    if not counted or counted[0].energy_j is None:
        check.passed = False
        check.error = "the experiment published no counter-measured prefill (see its warnings)"
        return check
    counter = counted[0].energy_j
    # The same window split by the timeline, as llem does when it runs no prefill passes.
    work = work_of(reports, model_reused=False)
    account = EnergyAccount(record, [d.device_uuid for d in energy.devices])
    shared = split(account, work, record.mark("warmup_end"), _last_repeat(record), None)
    share, share_u = shared.prefill.value, shared.prefill.expanded()
    gap = abs(counter.value - share)
    check.passed = gap <= counter.total + share_u
    check.measured = {
        "counter_j": counter.value,
        "counter_uncertainty_j": counter.total,
        "timeline_share_j": share,
        "timeline_share_uncertainty_j": share_u,
        "batches": len(work.batches),
        "passes": energy.prefill_passes.passes if energy.prefill_passes else None,
    }
    check.summary = (
        f"counter {counter.value:.2f} +/- {counter.total:.2f} J, timeline share {share:.2f} "
        f"+/- {share_u:.2f} J"
        + (f" ({(share - counter.value) / counter.value:+.0%})" if counter.value else "")
    )
    return check


def _last_repeat(record: MeterRecord) -> Any:
    ends = [m for m in record.marks if m.label.startswith("repeat_") and m.label.endswith("_end")]
    return ends[-1]


class _EventTimer(StepTimer):
    """The backend's step timer, with an independent stamp at each step: a CUDA event on the
    GPU (when the device reached the step), the logits' arrival on the CPU."""

    def __init__(self, torch: Any, cuda: bool) -> None:
        super().__init__()
        self.torch = torch
        self.cuda = cuda
        self.events: list[Any] = []
        self.logit_times: list[float] = []

    def put(self, value: Any) -> None:
        seen = self._seen_prompt
        super().put(value)
        if seen and self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            self.events.append(event)

    def __call__(self, input_ids: Any, scores: Any) -> Any:  # a LogitsProcessor
        self.logit_times.append(time.perf_counter())
        return scores


def check_step_timestamps(rig: Rig, state: State) -> CheckResult:
    cuda = not rig.dry
    check = CheckResult(
        10,
        "per-step timestamps vs " + ("CUDA events" if cuda else "an independent stamp"),
        "step gaps from llem's hook within 0.5 ms (median) and 2 ms (p99) of the "
        + ("CUDA events'" if cuda else "logits' arrival"),
    )
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessorList

    device = rig.workload_device()
    dtype = torch.float16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(rig.model_dir()), dtype=dtype).to(device)
    batch, steps = (8, 128) if cuda else (4, 32)
    ids = torch.randint(3, 60, (batch, 64 if cuda else 16), device=device)
    gaps: list[float] = []
    for _ in range(3):
        timer = _EventTimer(torch, cuda)
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                streamer=timer,
                logits_processor=LogitsProcessorList([timer]),
                pad_token_id=1,
            )
        if cuda:
            torch.cuda.synchronize()
            reference = [
                a.elapsed_time(b) / 1e3
                for a, b in zip(timer.events, timer.events[1:], strict=False)
            ]
        else:
            stamps = timer.logit_times[1:]
            reference = [b - a for a, b in itertools.pairwise(stamps)]
        hook = [b - a for a, b in itertools.pairwise(timer.step_times)]
        gaps.extend(abs(h - r) for h, r in zip(hook, reference, strict=False))
    del model
    ordered = sorted(gaps)
    median, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
    check.passed = median <= 0.0005 and p99 <= 0.002
    check.measured = {"steps": len(gaps), "median_abs_diff_s": median, "p99_abs_diff_s": p99}
    check.summary = f"{len(gaps)} steps: median {median * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms apart"
    return check
