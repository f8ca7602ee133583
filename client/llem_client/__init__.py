"""llem client: the wire contract, an HTTP client (sync and async) and the ``llem-client`` CLI.

Names are imported lazily, so ``import llem_client.cli`` (and ``llem-client --help``) does not
pay for httpx or pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llem_client._version import SCHEMA_VERSION, __version__

if TYPE_CHECKING:
    from llem_client._acquisition import (
        Acquisition,
        FieldChange,
        HostDomain,
        HostEnergy,
        PowerReadings,
        ProcessDetection,
        ProcessSeen,
        SamplerAcquisition,
        ThrottleCause,
        Throttling,
    )
    from llem_client._client import AsyncClient, Client
    from llem_client._config import (
        BaselineConfig,
        DecodingConfig,
        EnergyConfig,
        ExperimentConfig,
        InlinePrompts,
        JsonlPrompts,
        PytorchOptions,
        RepeatsConfig,
        SyntheticPrompts,
        WarmupConfig,
    )
    from llem_client._energy import (
        BaselineInfo,
        DeviceEnergy,
        EnergyResult,
        Estimate,
        PercentileEstimates,
        PhaseEnergy,
        PrefillPasses,
        RepeatResult,
        RepeatSummary,
        RequestEnergy,
        SamplerReport,
        SampleStats,
        SensorAccuracy,
        SteadyStateRequests,
        UncertaintyBudget,
        UncertaintyTerm,
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
        FieldError,
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
        ResultWarning,
    )

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        [
            "Acquisition",
            "FieldChange",
            "HostDomain",
            "HostEnergy",
            "PowerReadings",
            "ProcessDetection",
            "ProcessSeen",
            "SamplerAcquisition",
            "ThrottleCause",
            "Throttling",
        ],
        "_acquisition",
    ),
    **dict.fromkeys(["AsyncClient", "Client"], "_client"),
    **dict.fromkeys(
        [
            "BaselineConfig",
            "DecodingConfig",
            "EnergyConfig",
            "ExperimentConfig",
            "InlinePrompts",
            "JsonlPrompts",
            "PytorchOptions",
            "RepeatsConfig",
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
            "FieldError",
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
            "Estimate",
            "PercentileEstimates",
            "PhaseEnergy",
            "PrefillPasses",
            "RepeatResult",
            "RepeatSummary",
            "RequestEnergy",
            "SampleStats",
            "SamplerReport",
            "SensorAccuracy",
            "SteadyStateRequests",
            "UncertaintyBudget",
            "UncertaintyTerm",
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
}

__all__ = [
    "SCHEMA_VERSION",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Acquisition",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BaselineConfig",
    "BaselineInfo",
    "Client",
    "ClientRequestError",
    "ConflictError",
    "DecodingConfig",
    "DeviceEnergy",
    "DeviceInfo",
    "EnergyConfig",
    "EnergyResult",
    "Environment",
    "Estimate",
    "ExperimentConfig",
    "ExperimentResult",
    "FieldChange",
    "FieldError",
    "GpuEnvironment",
    "GpuProcess",
    "HostDomain",
    "HostEnergy",
    "InlinePrompts",
    "Job",
    "JobList",
    "JobProgress",
    "JobStatus",
    "JsonlPrompts",
    "LatencyStats",
    "LlemError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PercentileEstimates",
    "PermissionDeniedError",
    "PhaseEnergy",
    "PowerReadings",
    "PrefillPasses",
    "ProblemDetail",
    "ProcessDetection",
    "ProcessSeen",
    "PytorchOptions",
    "RateLimitError",
    "RepeatResult",
    "RepeatSummary",
    "RepeatsConfig",
    "RequestEnergy",
    "ResponseFormatError",
    "ResultWarning",
    "SampleStats",
    "SamplerAcquisition",
    "SamplerReport",
    "SensorAccuracy",
    "ServerError",
    "ServiceInfo",
    "SteadyStateRequests",
    "SyntheticPrompts",
    "ThrottleCause",
    "Throttling",
    "UncertaintyBudget",
    "UncertaintyTerm",
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
