"""llem client: the wire contract, an HTTP client (sync and async) and the ``llem-client`` CLI.

Names are imported lazily, so ``import llem_client.cli`` (and ``llem-client --help``) does not
pay for httpx or pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llem_client._version import SCHEMA_VERSION, __version__

if TYPE_CHECKING:
    from llem_client._async_client import AsyncClient
    from llem_client._client import Client
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
        ServerShutdownError,
        UnprocessableEntityError,
    )
    from llem_client._hashing import canonical_config_json, measurement_config_hash
    from llem_client._jobs import (
        BaselineList,
        CachedBaseline,
        FieldError,
        Job,
        JobList,
        JobMetrics,
        JobProgress,
        JobStatus,
        ModelInfo,
        ModelList,
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
    from llem_client._text import escape_controls

_LAZY: dict[str, str] = {
    "AsyncClient": "_async_client",
    "Client": "_client",
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
            "ServerShutdownError",
            "UnprocessableEntityError",
        ],
        "_exceptions",
    ),
    **dict.fromkeys(["canonical_config_json", "measurement_config_hash"], "_hashing"),
    "escape_controls": "_text",
    **dict.fromkeys(
        [
            "BaselineList",
            "CachedBaseline",
            "FieldError",
            "Job",
            "JobList",
            "JobMetrics",
            "JobProgress",
            "JobStatus",
            "ModelInfo",
            "ModelList",
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
    "HfPrompts",
    "InlinePrompts",
    "Interval",
    "Job",
    "JobList",
    "JobMetrics",
    "JobProgress",
    "JobStatus",
    "JsonlPrompts",
    "LatencyStats",
    "LlemError",
    "ModelInfo",
    "ModelList",
    "NotFoundError",
    "ParetoTargets",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PhaseEnergy",
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
    "ServerShutdownError",
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
    "escape_controls",
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
