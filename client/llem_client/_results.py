"""The experiment result, as the service returns it and the CLI writes it.

Units are in the field names (``_sec``, ``_s``, ``_j``, ``_w``, ``_bytes``). ``energy`` is ``null``
when the service had no energy meter: never zero, never estimated. A warning then says why.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llem_client._config import ExperimentConfig
from llem_client._energy import EnergyResult, RepeatSummary
from llem_client._version import SCHEMA_VERSION


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceInfo(_Wire):
    """An accelerator the service can use."""

    index: int = Field(
        ge=0,
        description="CUDA device index inside the service's processes (under its "
        "CUDA_DEVICE_ORDER and CUDA_VISIBLE_DEVICES).",
    )
    name: str
    uuid: str
    memory_total_bytes: int = Field(ge=0)
    mig_mode: Literal["enabled", "disabled", "unsupported"] | None = Field(
        default=None,
        description="MIG mode of the GPU; unsupported before Ampere. With MIG enabled, energy "
        "is metered only for whole GPUs, not for one instance.",
    )


class ResultWarning(_Wire):
    """Something that weakens a figure, with a stable code and a message that says what to do."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    message: str


class GpuProcess(_Wire):
    """A process with a compute context on a GPU."""

    pid: int
    used_memory_bytes: int | None = Field(default=None, ge=0)


class GpuEnvironment(_Wire):
    """One metered GPU as NVML described it when the experiment started."""

    uuid: str
    name: str
    nvml_index: int = Field(ge=0, description="NVML's index (PCI order over the host).")
    memory_total_bytes: int = Field(ge=0)
    power_limit_w: float | None = Field(default=None, ge=0, description="Enforced limit.")
    persistence_mode: bool | None = None
    compute_processes: list[GpuProcess] = Field(
        default_factory=list, description="Processes on the GPU when the measurement began."
    )


class Environment(_Wire):
    """Where the result was measured."""

    llem_version: str
    python_version: str
    platform: str
    hostname: str
    backend: str = Field(description="Name of the inference backend that ran the workload.")
    backend_versions: dict[str, str] = Field(
        default_factory=dict, description="Versions of the backend's libraries (torch, ...)."
    )
    energy_meter: str = Field(description="Name of the energy meter, or 'none'.")
    devices: list[DeviceInfo] = Field(default_factory=list)
    container_image: str | None = Field(
        default=None, description="Image reference when the service runs in a container."
    )
    driver_version: str | None = Field(default=None, description="NVIDIA driver (NVML).")
    nvml_version: str | None = None
    cuda_driver_version: str | None = Field(
        default=None, description="CUDA version the driver supports."
    )
    gpus: list[GpuEnvironment] = Field(
        default_factory=list, description="The metered GPUs; empty without an energy meter."
    )


class OverlappingExperiment(_Wire):
    """Another llem experiment that ran on the same host (or cluster node) during this one.

    Neighbours share the host's CPUs, PCIe links and memory bandwidth, so their work can slow
    this one down and shift its power draw even on GPUs of its own.
    """

    experiment_id: str
    host: str = Field(description="Where both ran.")
    gpus: list[str] = Field(
        default_factory=list, description="The neighbour's GPUs (UUIDs); empty when unknown."
    )
    service: str | None = Field(
        default=None,
        description="Another llem service on the same host (``host:pid``), seen through the "
        "shared GPU locks; null when the neighbour ran under this service.",
    )
    overlap_s: float = Field(
        ge=0,
        description="Seconds both ran. For another service's experiment, its end is the last "
        "time it was seen holding its GPUs, so this is a lower bound.",
    )


class Placement(_Wire):
    """Where an experiment ran and what ran beside it."""

    executor: str = Field(description="'local' (a process on the service's host) or 'slurm'.")
    host: str = Field(description="The host, or the cluster node, that ran it.")
    gpus: list[str] = Field(
        default_factory=list,
        description="The GPUs it was granted, by UUID; empty when the host has no GPU the "
        "service can see, or when Slurm gave none.",
    )
    exclusive_host: bool = Field(description="It ran alone on the host.")
    executor_ref: str | None = Field(default=None, description="The Slurm job id, under Slurm.")
    overlapping_experiments: list[OverlappingExperiment] = Field(
        default_factory=list,
        description="Other llem experiments that ran on the same host during this one.",
    )


class LatencyStats(_Wire):
    """Summary of a set of latencies, seconds. Percentiles interpolate linearly."""

    n: int = Field(ge=1)
    mean: float = Field(ge=0)
    p50: float = Field(ge=0)
    p90: float = Field(ge=0)
    p99: float = Field(ge=0)
    max: float = Field(ge=0)


class ExperimentResult(_Wire):
    """What one experiment measured."""

    schema_version: Literal["1"] = SCHEMA_VERSION
    experiment_id: str
    measurement_config_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    config: ExperimentConfig = Field(description="The effective config, defaults filled in.")
    started_at: datetime
    finished_at: datetime

    n_requests: int = Field(ge=0, description="Requests in the measured workload.")
    input_tokens: int = Field(ge=0, description="Prompt tokens, padding excluded.")
    output_tokens: int = Field(ge=0, description="Generated tokens, padding and post-EOS excluded.")
    total_tokens: int = Field(ge=0)
    output_tokens_per_request: list[int] = Field(
        description="Generated tokens of each request, in workload order (every repeat)."
    )

    model_load_time_sec: float = Field(
        ge=0, description="Time this experiment spent loading its model; 0 when it reused one."
    )
    model_reused_from: str | None = Field(
        default=None,
        description="The experiment whose process loaded the model this one reused (consecutive "
        "study points with the same model and loading options); null: loaded for this one.",
    )
    warmup_time_sec: float = Field(ge=0)
    warmup_batches: int = Field(ge=0)
    total_inference_time_sec: float = Field(ge=0, description="Measured window.")
    avg_tokens_per_second: float = Field(
        ge=0, description="Output tokens per second of measured time."
    )
    requests_per_second: float = Field(ge=0)
    prefill_time_sec: float = Field(ge=0, description="Summed over batches: start to first token.")
    decode_time_sec: float = Field(ge=0, description="Summed over batches: first to last token.")
    warmup_batch_latency_sec: list[float] = Field(description="Each warm-up batch, in order.")
    batch_latency_sec: LatencyStats
    time_to_first_token_sec: LatencyStats = Field(description="Per request.")
    inter_token_latency_sec: LatencyStats | None = Field(
        description="Gaps between successive decoding steps; null when every request "
        "generated a single token."
    )
    timing_hook_overhead_sec: float = Field(
        ge=0, description="Time spent inside the per-step timing hook, included in the total."
    )
    n_parameters: int = Field(ge=0)
    peak_memory_allocated_bytes: int | None = Field(
        default=None, ge=0, description="torch's peak allocated memory on the device (CUDA)."
    )
    peak_memory_reserved_bytes: int | None = Field(default=None, ge=0)

    repeats: RepeatSummary
    energy_meter_available: bool
    energy: EnergyResult | None = Field(
        default=None, description="Null when the service had no energy meter (see warnings)."
    )

    total_flops: int = Field(ge=0)
    prefill_flops: int = Field(ge=0)
    decode_flops: int = Field(ge=0)
    flops_method: str

    environment: Environment
    warnings: list[ResultWarning] = Field(default_factory=list)
    timeseries: str | None = Field(
        default=None, description="URL of the power timeseries, when one was recorded."
    )
    placement: Placement | None = Field(
        default=None,
        description="Where it ran, on which GPUs, and which other experiments overlapped it; "
        "null in results of services before 0.2 (scale-out).",
    )
