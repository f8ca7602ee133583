"""The `InferenceBackend` seam.

A backend object is built in the server process, pickled into the experiment's child process
(spawn) and used only there. So it must be picklable and cheap to construct: heavy imports
(torch) and all device work belong in its methods, never in ``__init__``.

Call order in the child: `load`, `warmup`, then `run` once per repeat, then `close` (always).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from llem_client import ExperimentConfig


class BackendError(Exception):
    """A failure the user can act on (bad model path, unsupported option); shown as-is."""


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
    """The measured workload.

    Attributes:
        n_requests: Prompts processed.
        input_tokens: Prompt tokens, padding excluded.
        output_tokens: Generated tokens, padding and tokens after EOS excluded.
        duration_s: Wall time of the measured window, device synchronised at both edges.
        total_flops: FLOPs of the workload, by ``flops_method``.
        flops_method: How ``total_flops`` was obtained.
    """

    n_requests: int
    input_tokens: int
    output_tokens: int
    duration_s: float
    total_flops: int
    flops_method: str
    extra_warnings: tuple[tuple[str, str], ...] = field(default=())


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

    def load(self, config: ExperimentConfig) -> LoadReport: ...

    def warmup(self, config: ExperimentConfig) -> WarmupReport: ...

    def run(self, config: ExperimentConfig, progress: ProgressFn) -> WorkloadReport: ...

    def close(self) -> None:
        """Release the model and the device's memory. Called even after a failure."""
        ...
