"""Inference backends: the `InferenceBackend` seam and its implementations."""

from llem_service.backends.base import (
    BackendError,
    InferenceBackend,
    LoadReport,
    PrefillReport,
    ProgressFn,
    WarmupReport,
    WorkloadReport,
)

__all__ = [
    "BackendError",
    "InferenceBackend",
    "LoadReport",
    "PrefillReport",
    "ProgressFn",
    "WarmupReport",
    "WorkloadReport",
]
