"""The `InferenceBackend` seam.

A backend object is built in the server process, pickled into the experiment's child process
(spawn) and used only there. So it must be picklable and cheap to construct: heavy imports
(torch) and all device work belong in its methods, never in ``__init__``.

Call order in the child: `prepare`, `load`, `warmup`, then `run` once per repeat, then (when
prefill is measured with the counter) `prefill` any number of times, then `close` (always).
`synchronize` may be called between any two of them: the meter reads the energy counters only
after the device has finished its queued work.

A process that serves several experiments with one model (consecutive study points whose
`loading_key` is equal) calls `reuse` instead of `load` for the second and later ones:
`prepare`, `reuse`, `warmup`, `run`..., and `close` only when it is done with the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from llem_client import ExperimentConfig


def loading_key(config: ExperimentConfig) -> str:
    """What two experiments must share to use one loaded model: the model and its revision,
    the backend, the precision and the options that shape loading (device, device_map,
    attention implementation, torch.compile and its mode, quantisation, remote code).
    Everything else (the workload, batch size, decoding, static KV cache, the measurement)
    may differ between them."""
    options = config.pytorch.model_dump(mode="json", exclude={"static_kv_cache"})
    key = {
        "model": config.model,
        "revision": config.revision,
        "backend": config.backend,
        "precision": config.precision,
        "pytorch": options,
    }
    return json.dumps(key, sort_keys=True)


class BackendError(Exception):
    """A failure the backend can explain (a missing library, no CUDA); shown as-is."""


class ConfigError(BackendError):
    """A failure the submitter caused and can fix in the config (a model that is not there, a
    prompt longer than the model's context, a prompt file that is not JSONL): the job fails as
    a config error, not as a failure of the service."""


@dataclass(frozen=True)
class LoadReport:
    """What `InferenceBackend.load` did.

    Attributes:
        load_time_s: Wall time to load the model onto its device(s), seconds.
        device_uuids: UUIDs of the accelerators the model occupies (empty on CPU); the meter
            measures exactly these.
        n_parameters: Parameters of the model.
    """

    load_time_s: float
    device_uuids: tuple[str, ...] = ()
    n_parameters: int = 0


@dataclass(frozen=True)
class WarmupReport:
    """Warm-up at the measurement shape: one latency per batch, seconds."""

    duration_s: float
    batch_latencies_s: tuple[float, ...] = ()

    @property
    def batches(self) -> int:
        return len(self.batch_latencies_s)


@dataclass(frozen=True)
class WorkloadReport:
    """One pass of the measured workload. Times in seconds, memory in bytes.

    Attributes:
        n_requests: Prompts processed.
        input_tokens: Prompt tokens, padding excluded.
        output_tokens_per_request: Generated tokens per request, padding and tokens after
            EOS excluded, in workload order.
        duration_s: Wall time of the pass, device synchronised at both edges.
        batch_latencies_s: Wall time of each batch.
        prefill_time_s: Summed over batches, batch start to its first generated token.
        decode_time_s: Summed over batches, first to last generated token.
        ttft_s: Time to first token of each request.
        itl_s: Every gap between successive decoding steps.
        hook_overhead_s: Time spent in the per-step timing hook (inside ``duration_s``).
        prefill_flops: FLOPs of the prefill passes.
        decode_flops: FLOPs of the decoding steps.
        flops_method: How the FLOPs were obtained.
        peak_memory_allocated_bytes: torch's peak allocated device memory (CUDA only).
        peak_memory_reserved_bytes: torch's peak reserved device memory (CUDA only).
        warnings: ``(code, message)`` pairs for the result.
        batch_spans_s: Each batch's start, first token and end on ``time.perf_counter``
            (the meter's clock), for the prefill / decode energy split.
        input_tokens_per_request: Prompt tokens of each request, padding excluded, in
            workload order (per-request energy splits prefill by them).
        batch_sizes: Requests in each batch, in order.
        batch_step_times_s: For each batch, when each decoding step after the first token
            delivered its tokens (same clock as the spans); empty where not streamed.
    """

    n_requests: int
    input_tokens: int
    output_tokens_per_request: tuple[int, ...]
    duration_s: float
    batch_latencies_s: tuple[float, ...]
    prefill_time_s: float
    decode_time_s: float
    ttft_s: tuple[float, ...]
    itl_s: tuple[float, ...]
    hook_overhead_s: float
    prefill_flops: int
    decode_flops: int
    flops_method: str
    peak_memory_allocated_bytes: int | None = None
    peak_memory_reserved_bytes: int | None = None
    warnings: tuple[tuple[str, str], ...] = field(default=())
    batch_spans_s: tuple[tuple[float, float, float], ...] = field(default=())
    input_tokens_per_request: tuple[int, ...] = field(default=())
    batch_sizes: tuple[int, ...] = field(default=())
    batch_step_times_s: tuple[tuple[float, ...], ...] = field(default=())

    @property
    def output_tokens(self) -> int:
        return sum(self.output_tokens_per_request)


@dataclass(frozen=True)
class PrefillReport:
    """One prefill-only pass: the workload's batches, in order, each generating one token
    (optimum-benchmark's prefill). Times in seconds, device synchronised at both edges.

    Attributes:
        duration_s: Wall time of the pass.
        batch_latencies_s: Wall time of each batch.
    """

    duration_s: float
    batch_latencies_s: tuple[float, ...]


class ProgressFn(Protocol):
    """Reports how many requests of the measured workload are done."""

    def __call__(self, completed: int, total: int) -> None: ...


@runtime_checkable
class InferenceBackend(Protocol):
    """Loads a model, warms it up and runs the measured workload."""

    name: str

    def versions(self) -> dict[str, str]:
        """Versions of the libraries that matter for the numbers (torch, transformers, ...)."""
        ...

    def prepare(self, config: ExperimentConfig) -> tuple[str, ...]:
        """Bring up the device context of every accelerator the experiment will use (so an
        idle baseline can be taken before the model loads); return their UUIDs (``GPU-...``),
        empty on CPU. ``config.energy.devices``, when set, names the CUDA indices to meter."""
        ...

    def synchronize(self) -> None:
        """Wait until the devices have finished all queued work."""
        ...

    def load(self, config: ExperimentConfig) -> LoadReport:
        """Load the model and prepare ``config``'s workload (tokenized prompts, batches)."""
        ...

    def reuse(self, config: ExperimentConfig) -> LoadReport:
        """Keep the loaded model for ``config`` (same `loading_key` as the last load): reset
        what the previous experiment could leak into this one (KV caches, peak-memory
        counters, compiled graphs) and prepare ``config``'s workload. ``load_time_s`` is 0."""
        ...

    def warmup(self, config: ExperimentConfig) -> WarmupReport: ...

    def run(self, config: ExperimentConfig, progress: ProgressFn) -> WorkloadReport: ...

    def prefill(self, config: ExperimentConfig) -> PrefillReport:
        """One pass over the workload's own batches with exactly one output token each (same
        prompts, shapes and decoding), for counter-measured prefill energy. Never part of the
        measured window."""
        ...

    def close(self) -> None:
        """Release the model and the device's memory. Called even after a failure."""
        ...
