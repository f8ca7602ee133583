"""llem client: the wire contract, an HTTP client (sync and async) and the ``llem-client`` CLI.

Names are imported lazily, so ``import llem_client.cli`` (and ``llem-client --help``) does not
pay for httpx or pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llem_client._version import SCHEMA_VERSION, __version__

if TYPE_CHECKING:
    from llem_client._client import AsyncClient, Client
    from llem_client._config import (
        BaselineConfig,
        DecodingConfig,
        EnergyConfig,
        ExperimentConfig,
        HfPrompts,
        InlinePrompts,
        JsonlPrompts,
        PytorchOptions,
        SyntheticPrompts,
        WarmupConfig,
    )
    from llem_client._energy import (
        BaselineInfo,
        DeviceEnergy,
        EnergyResult,
        PhaseEnergy,
        RepeatResult,
        RepeatSummary,
        SamplerReport,
        SampleStats,
    )
    from llem_client._exceptions import (
        APIConnectionError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        ClientRequestError,
        ConflictError,
        LlemError,
        NotFoundError,
        PayloadTooLargeError,
        PermissionDeniedError,
        RateLimitError,
        ResponseFormatError,
        ServerError,
        UnprocessableEntityError,
    )
    from llem_client._hashing import canonical_config_json, measurement_config_hash
    from llem_client._jobs import (
        BaselineList,
        CachedBaseline,
        FieldError,
        GpuSlot,
        Job,
        JobList,
        JobProgress,
        JobStatus,
        ProblemDetail,
        ServiceInfo,
    )
    from llem_client._results import (
        DeviceInfo,
        Environment,
        ExperimentResult,
        GpuEnvironment,
        GpuProcess,
        LatencyStats,
        OverlappingExperiment,
        Placement,
        ResultWarning,
    )
    from llem_client._studies import (
        STUDY_METRICS,
        CooldownConfig,
        Interval,
        ParetoTargets,
        SkippedPoint,
        Study,
        StudyDocument,
        StudyEvent,
        StudyList,
        StudyPareto,
        StudyPoint,
        StudyResults,
        StudyRow,
        StudyRun,
        StudyStatus,
        StudySummary,
    )

_LAZY: dict[str, str] = {
    **dict.fromkeys(["AsyncClient", "Client"], "_client"),
    **dict.fromkeys(
        [
            "BaselineConfig",
            "DecodingConfig",
            "EnergyConfig",
            "ExperimentConfig",
            "HfPrompts",
            "InlinePrompts",
            "JsonlPrompts",
            "PytorchOptions",
            "SyntheticPrompts",
            "WarmupConfig",
        ],
        "_config",
    ),
    **dict.fromkeys(
        [
            "APIConnectionError",
            "APIStatusError",
            "APITimeoutError",
            "AuthenticationError",
            "BadRequestError",
            "ClientRequestError",
            "ConflictError",
            "LlemError",
            "NotFoundError",
            "PayloadTooLargeError",
            "PermissionDeniedError",
            "RateLimitError",
            "ResponseFormatError",
            "ServerError",
            "UnprocessableEntityError",
        ],
        "_exceptions",
    ),
    **dict.fromkeys(["canonical_config_json", "measurement_config_hash"], "_hashing"),
    **dict.fromkeys(
        [
            "BaselineList",
            "CachedBaseline",
            "FieldError",
            "GpuSlot",
            "Job",
            "JobList",
            "JobProgress",
            "JobStatus",
            "ProblemDetail",
            "ServiceInfo",
        ],
        "_jobs",
    ),
    **dict.fromkeys(
        [
            "BaselineInfo",
            "DeviceEnergy",
            "EnergyResult",
            "PhaseEnergy",
            "RepeatResult",
            "RepeatSummary",
            "SampleStats",
            "SamplerReport",
        ],
        "_energy",
    ),
    **dict.fromkeys(
        [
            "DeviceInfo",
            "Environment",
            "ExperimentResult",
            "GpuEnvironment",
            "GpuProcess",
            "LatencyStats",
            "OverlappingExperiment",
            "Placement",
            "ResultWarning",
        ],
        "_results",
    ),
    **dict.fromkeys(
        [
            "CooldownConfig",
            "Interval",
            "ParetoTargets",
            "STUDY_METRICS",
            "SkippedPoint",
            "Study",
            "StudyDocument",
            "StudyEvent",
            "StudyList",
            "StudyPareto",
            "StudyPoint",
            "StudyResults",
            "StudyRow",
            "StudyRun",
            "StudyStatus",
            "StudySummary",
        ],
        "_studies",
    ),
}

__all__ = [
    "SCHEMA_VERSION",
    "STUDY_METRICS",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BaselineConfig",
    "BaselineInfo",
    "BaselineList",
    "CachedBaseline",
    "Client",
    "ClientRequestError",
    "ConflictError",
    "CooldownConfig",
    "DecodingConfig",
    "DeviceEnergy",
    "DeviceInfo",
    "EnergyConfig",
    "EnergyResult",
    "Environment",
    "ExperimentConfig",
    "ExperimentResult",
    "FieldError",
    "GpuEnvironment",
    "GpuProcess",
    "GpuSlot",
    "HfPrompts",
    "InlinePrompts",
    "Interval",
    "Job",
    "JobList",
    "JobProgress",
    "JobStatus",
    "JsonlPrompts",
    "LatencyStats",
    "LlemError",
    "NotFoundError",
    "OverlappingExperiment",
    "ParetoTargets",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PhaseEnergy",
    "Placement",
    "ProblemDetail",
    "PytorchOptions",
    "RateLimitError",
    "RepeatResult",
    "RepeatSummary",
    "ResponseFormatError",
    "ResultWarning",
    "SampleStats",
    "SamplerReport",
    "ServerError",
    "ServiceInfo",
    "SkippedPoint",
    "Study",
    "StudyDocument",
    "StudyEvent",
    "StudyList",
    "StudyPareto",
    "StudyPoint",
    "StudyResults",
    "StudyRow",
    "StudyRun",
    "StudyStatus",
    "StudySummary",
    "SyntheticPrompts",
    "UnprocessableEntityError",
    "WarmupConfig",
    "__version__",
    "canonical_config_json",
    "measurement_config_hash",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llem_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"llem_client.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
