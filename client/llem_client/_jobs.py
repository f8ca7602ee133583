"""Jobs, problem details and service information: the rest of the wire contract."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llem_client._results import DeviceInfo


class JobStatus(str, Enum):
    """Life cycle: queued -> running -> succeeded | failed | cancelled (queued may be cancelled)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class ProblemDetail(BaseModel):
    """An RFC 9457 problem. Extension members are kept (``extra="allow"``), as the RFC permits."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int = Field(ge=100, le=599)
    detail: str = ""
    instance: str | None = None
    errors: list[FieldError] | None = Field(
        default=None, description="For validation problems: each offending field."
    )


class FieldError(BaseModel):
    """One offending field of a rejected request."""

    model_config = ConfigDict(extra="forbid")

    loc: list[str | int]
    msg: str
    type: str


class JobProgress(BaseModel):
    """Where a job is: its phase and, where counted, how far through it."""

    model_config = ConfigDict(extra="forbid")

    phase: str = Field(
        description="queued, starting, loading, warmup, measuring, prefill (counter-measured "
        "prefill passes), baseline (idle again after the window), saving, done"
    )
    completed: int = Field(default=0, ge=0)
    total: int | None = Field(default=None, ge=0)
    unit: str | None = Field(default=None, description="What completed and total count.")


class JobMetrics(BaseModel):
    """Headline figures of a succeeded job, for listings; the result has the rest."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_second: float = Field(ge=0, description="Output tokens per second.")
    energy_per_output_token_j: float | None = Field(
        default=None, ge=0, description="Raw J per output token; null without an energy meter."
    )


class Job(BaseModel):
    """An experiment submitted to the service."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: JobStatus
    model: str = Field(description="The config's model, for listings.")
    name: str | None = Field(default=None, description="The config's name, if any.")
    tags: dict[str, str] = Field(default_factory=dict, description="The config's tags.")
    config_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress
    error: ProblemDetail | None = None
    metrics: JobMetrics | None = Field(
        default=None, description="Headline figures, once the job has succeeded."
    )


class JobList(BaseModel):
    """A page of jobs, newest first. Pass ``next_cursor`` back as ``cursor`` for the next page."""

    model_config = ConfigDict(extra="forbid")

    items: list[Job]
    next_cursor: str | None = None


class ModelInfo(BaseModel):
    """A model the server can run without the network."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What a config's `model` says to run it.")
    source: Literal["local", "hub-cache"] = Field(
        description="local: a directory under LLEM_MODEL_ROOTS; hub-cache: in the hub cache."
    )
    context_tokens: int | None = Field(
        default=None, ge=1, description="The model's context length, from its config.json."
    )


class ModelList(BaseModel):
    """The models a server has."""

    model_config = ConfigDict(extra="forbid")

    items: list[ModelInfo]


class GpuSlot(BaseModel):
    """One GPU of the service's host, as the scheduler sees it."""

    model_config = ConfigDict(extra="forbid")

    uuid: str
    job_id: str | None = Field(default=None, description="The job of this service on it.")
    held_by: str | None = Field(
        default=None,
        description="Another llem service (``host:pid``) that holds its lock, if one does.",
    )


class ServiceInfo(BaseModel):
    """What a service is and has."""

    model_config = ConfigDict(extra="forbid")

    service_version: str
    schema_version: str
    backends: list[str]
    devices: list[DeviceInfo]
    energy_meter: str = Field(description="Name of the energy meter, or 'none'.")
    energy_meter_available: bool
    energy_meter_reason: str | None = Field(
        default=None, description="Why energy cannot be measured, when it cannot."
    )
    cuda_device_order: str | None = Field(
        default=None,
        description="CUDA_DEVICE_ORDER the device indices follow (PCI_BUS_ID unless the "
        "operator set FASTEST_FIRST).",
    )
    device_order_note: str | None = Field(
        default=None, description="Set when the indices' order is approximated."
    )
    queue_length: int = Field(ge=0, description="Jobs waiting, the running one excluded.")
    running_job: str | None = Field(default=None, description="The oldest running job.")
    running_jobs: list[str] = Field(
        default_factory=list, description="Every job running now, oldest first."
    )
    executor: str = Field(default="local", description="Where experiments run: local or slurm.")
    executor_available: bool = Field(
        default=True, description="False while submissions are refused (see executor_reason)."
    )
    executor_reason: str | None = Field(
        default=None,
        description="Why the executor cannot run experiments now (e.g. slurmctld unreachable).",
    )
    gpus: list[GpuSlot] = Field(
        default_factory=list,
        description="The GPUs the scheduler grants, each with its job; empty when it grants the "
        "whole host at once (no GPU seen) or when Slurm grants them.",
    )
    max_gpus_per_experiment: int | None = Field(
        default=None,
        description="The most GPUs one experiment may ask for here (the host's, or a node's of "
        "the Slurm partition); null when unknown.",
    )


class CachedBaseline(BaseModel):
    """An idle baseline the service keeps and reuses across experiments on the same GPU."""

    model_config = ConfigDict(extra="forbid")

    device_uuid: str
    power_w: float = Field(ge=0, description="Mean idle power, watts.")
    random_uncertainty_w: float = Field(
        ge=0,
        description="Expanded (k = 2) uncertainty of power_w from the idle window itself. Each "
        "experiment that reuses it adds the sensor's systematic part for its GPU (see the "
        "result's baselines).",
    )
    drift_bound_w: float = Field(ge=0, description="How far idle power may still move.")
    temperature_c: float | None = Field(default=None, description="GPU temperature, mean.")
    method: str = Field(description="How it was measured, in words.")
    duration_s: float = Field(gt=0, description="Length of the idle window.")
    measured_at: datetime
    age_s: float = Field(
        ge=0, description="Age now; an experiment reuses it while younger than its max_age_s."
    )


class BaselineList(BaseModel):
    """The idle baselines the service holds, one per GPU at most."""

    model_config = ConfigDict(extra="forbid")

    items: list[CachedBaseline]


ProblemDetail.model_rebuild()
