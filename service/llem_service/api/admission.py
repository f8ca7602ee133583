"""What a submit is checked against before it is queued: an executor that can run it now, and
enough GPUs on the host (or on a node of the Slurm partition) for what it asks.

A refused submit loses nothing and queues nothing: 503 (``executor-unavailable``, with the
executor's reason and a ``Retry-After``) or 422 naming the field (``gpus``, or
``exclusive_host``), in the same shape as any other invalid field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fastapi.exceptions import RequestValidationError
from llem_client import ExperimentConfig

from llem_service.errors import ExecutorUnavailable
from llem_service.jobs.gpus import GpuState

#: Seconds a client is told to wait before submitting again to an unavailable executor.
RETRY_AFTER_S = 30


def _no_gpu_states() -> list[GpuState]:
    return []


@dataclass(frozen=True)
class Admission:
    """The executor's state as the API needs it.

    Attributes:
        executor: Its name (``local``, ``slurm``).
        unavailable_reason: Why it cannot run experiments now, or None.
        max_gpus: The most GPUs one experiment can get, or None when unknown (no GPU seen, or
            a Slurm cluster whose partition says nothing about GPUs).
        where: What ``max_gpus`` counts, in words ("this host", "a node of partition gpu").
        gpu_states: The GPUs the scheduler grants, each with its job.
    """

    executor: str
    unavailable_reason: Callable[[], str | None]
    max_gpus: Callable[[], int | None]
    where: str = "this host"
    gpu_states: Callable[[], list[GpuState]] = field(default=_no_gpu_states)


def admit(config: ExperimentConfig, admission: Admission) -> None:
    """Raise unless ``config`` can be queued now (see the module docstring)."""
    admit_all({0: config}, admission, where=("body",))


def admit_all(
    configs: Mapping[int, ExperimentConfig],
    admission: Admission,
    where: tuple[str, ...] = ("body", "points"),
) -> None:
    """`admit` for many configs at once (a study's points, by index); an offending point is
    named in the error's ``loc`` (``body.points.<index>.gpus``)."""
    reason = admission.unavailable_reason()
    if reason is not None:
        raise ExecutorUnavailable(
            f"the {admission.executor} executor cannot run experiments now: {reason}. Nothing "
            "was queued; submit again once it is back (GET /v1/info says when)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    limit = admission.max_gpus()
    if limit is None:
        return
    errors = [
        {
            "loc": (*where, *(() if where == ("body",) else (index,)), "gpus"),
            "msg": f"asks for {config.gpus} GPUs, and {admission.where} has {limit}",
            "type": "value_error",
        }
        for index, config in configs.items()
        if config.gpus > limit
    ]
    if errors:
        raise RequestValidationError(errors)
