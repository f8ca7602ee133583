"""The one NVML adapter: every ``pynvml`` call of the service goes through here.

`Nvml` wraps a library object with pynvml's function surface (the real module, or a scripted
fake in the tests), turns NVML error codes into typed errors in one place, and hands out
`GpuDevice` objects whose methods return plain values with units in their names.

NVML numbers every GPU on the host and ignores ``CUDA_VISIBLE_DEVICES``; devices are therefore
always addressed by UUID (``GPU-...``), which both NVML and torch report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from llem_service.energy.base import MeterError

T = TypeVar("T")

# pynvml's constants, repeated so the adapter can be typed and tested without the package.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_SUCCESS = 0
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_DEVICE_MIG_ENABLE = 1
#: ``nvmlDeviceGetVirtualizationMode``: a vGPU inside a virtual machine.
NVML_GPU_VIRTUALIZATION_MODE_VGPU = 2
#: ``nvmlDeviceGetViolationStatus`` policies: cumulative time (ns) clocks were held down by...
NVML_PERF_POLICY_POWER = 0  # ...the power limit (the "SW power cap" clock event)
NVML_PERF_POLICY_THERMAL = 1  # ...temperature
NVML_PERF_POLICY_SYNC_BOOST = 2
NVML_PERF_POLICY_BOARD_LIMIT = 3
NVML_PERF_POLICY_LOW_UTILIZATION = 4
NVML_PERF_POLICY_RELIABILITY = 5
NVML_PERF_POLICY_TOTAL_APP_CLOCKS = 10  # ...anything, below the application clocks
NVML_PERF_POLICY_TOTAL_BASE_CLOCKS = 11  # ...anything, below the base clocks

#: Clock-event (throttle) reasons that mean the GPU is slowed by power or heat. Idle, an
#: application clock setting, sync boost and display clocks are not throttling.
THROTTLE_REASONS: dict[int, str] = {
    0x04: "software power cap",
    0x08: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}


class NvmlError(MeterError):
    """An NVML call failed. ``code`` is NVML's return code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NvmlNotSupported(NvmlError):
    """This device or driver does not support the query."""


class NvmlGpuLost(NvmlError):
    """The GPU fell off the bus or stopped answering: nothing it reports can be trusted."""


class NvmlUnavailable(NvmlError):
    """NVML itself cannot be used here: no library, no driver, no permission."""


class NvmlLibrary(Protocol):
    """The part of pynvml's function surface the adapter uses."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...
    def nvmlSystemGetNVMLVersion(self) -> str | bytes: ...
    def nvmlSystemGetCudaDriverVersion(self) -> int: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any: ...
    def nvmlDeviceGetIndex(self, handle: Any) -> int: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: list[int]) -> Sequence[Any]: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int: ...
    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int: ...
    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int: ...
    def nvmlDeviceGetPersistenceMode(self, handle: Any) -> int: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Sequence[Any]: ...
    def nvmlDeviceGetViolationStatus(self, handle: Any, policy: int) -> Any: ...
    def nvmlDeviceGetMigMode(self, handle: Any) -> Sequence[int]: ...
    def nvmlDeviceIsMigDeviceHandle(self, handle: Any) -> Any: ...
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any) -> Any: ...
    def nvmlDeviceGetVirtualizationMode(self, handle: Any) -> int: ...
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> Sequence[int]: ...
    def nvmlDeviceGetMaxClockInfo(self, handle: Any, clock: int) -> int: ...


def load_pynvml() -> NvmlLibrary:
    """The real library (package ``nvidia-ml-py``), or `NvmlUnavailable` saying how to get it."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(
            "the nvidia-ml-py package is not installed (install llem[nvml])"
        ) from exc
    return pynvml  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PowerReading:
    """One reading of a power field.

    Attributes:
        power_mw: The value, milliwatts.
        timestamp_us: When NVML took it (its own CPU timestamp, microseconds since 1970), or
            None where the query carries none (``nvmlDeviceGetPowerUsage``) or it is 0.
    """

    power_mw: int
    timestamp_us: int | None = None


@dataclass(frozen=True)
class GpuProcess:
    """A process holding a compute context on a GPU."""

    pid: int
    used_memory_bytes: int | None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Nvml:
    """An initialised NVML session. Use as a context manager, or `open` / `close`.

    Args:
        library: pynvml or a fake with the same surface.
    """

    def __init__(self, library: NvmlLibrary) -> None:
        self.lib = library
        self._open = False

    def call(self, fn: Callable[..., T], *args: Any, what: str, subject: str = "") -> T:
        """Call ``fn(*args)``, turning an NVML error into the matching typed error.

        The message is built only on failure (``what``, then `` of {subject}``): this sits on
        the sampler's hot path."""
        try:
            return fn(*args)
        except self.lib.NVMLError as exc:
            raise typed_error(exc, what, subject) from exc

    def open(self) -> Nvml:
        mismatch: Any = getattr(self.lib, "NVMLLibraryMismatchError", ())
        try:
            self.call(self.lib.nvmlInit, what="initialise (is the NVIDIA driver loaded?)")
        except mismatch as exc:  # not an NVMLError: nvidia-ml-py and the driver disagree
            raise NvmlUnavailable(f"NVML could not initialise: {exc}") from exc
        self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._open = False
            # Shutting down a broken session must not hide the error that broke it.
            with contextlib.suppress(NvmlError):
                self.call(self.lib.nvmlShutdown, what="shut down")

    def __enter__(self) -> Nvml:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def driver_version(self) -> str:
        return _text(self.call(self.lib.nvmlSystemGetDriverVersion, what="read the driver"))

    def nvml_version(self) -> str:
        return _text(self.call(self.lib.nvmlSystemGetNVMLVersion, what="read its version"))

    def cuda_driver_version(self) -> str:
        """The CUDA version the driver supports, as ``major.minor`` (12040 -> ``12.4``)."""
        raw = self.call(self.lib.nvmlSystemGetCudaDriverVersion, what="read the CUDA version")
        return f"{raw // 1000}.{raw % 1000 // 10}"

    def devices(self) -> list[GpuDevice]:
        """Every GPU on the host, in NVML's (PCI bus) order."""
        count = self.call(self.lib.nvmlDeviceGetCount, what="count GPUs")
        return [
            GpuDevice(self, self.call(self.lib.nvmlDeviceGetHandleByIndex, i, what="open a GPU"))
            for i in range(count)
        ]

    def device(self, uuid: str) -> GpuDevice:
        """The GPU with this UUID (``GPU-...``); `NvmlError` when there is none."""
        handle = self.call(self.lib.nvmlDeviceGetHandleByUUID, uuid, what=f"find GPU {uuid}")
        return GpuDevice(self, handle)


class GpuDevice:
    """One GPU. Each method is one NVML query; units are in the names."""

    def __init__(self, nvml: Nvml, handle: Any) -> None:
        self._nvml = nvml
        self._lib = nvml.lib
        self.handle = handle
        self.uuid = _text(nvml.call(self._lib.nvmlDeviceGetUUID, handle, what="read a GPU's UUID"))

    def _call(self, fn: Callable[..., T], *args: Any, what: str) -> T:
        return self._nvml.call(fn, self.handle, *args, what=what, subject=self.uuid)

    def index(self) -> int:
        """NVML's index (PCI order over the whole host, not CUDA's)."""
        return self._call(self._lib.nvmlDeviceGetIndex, what="read the index")

    def name(self) -> str:
        return _text(self._call(self._lib.nvmlDeviceGetName, what="read the name"))

    def memory_total_bytes(self) -> int:
        return int(self._call(self._lib.nvmlDeviceGetMemoryInfo, what="read memory").total)

    def memory_used_bytes(self) -> int:
        return int(self._call(self._lib.nvmlDeviceGetMemoryInfo, what="read memory").used)

    def energy_mj(self) -> int:
        """Cumulative energy since the driver loaded, millijoules (Volta and newer)."""
        return int(
            self._call(self._lib.nvmlDeviceGetTotalEnergyConsumption, what="read the energy")
        )

    def power_average_mw(self) -> int:
        """``nvmlDeviceGetPowerUsage``: on Ampere and newer a 1-second average, milliwatts."""
        return int(self._call(self._lib.nvmlDeviceGetPowerUsage, what="read the power"))

    def power_average(self) -> PowerReading:
        """The averaged power; this query carries no timestamp."""
        return PowerReading(self.power_average_mw())

    def power_instant_mw(self) -> int:
        """Instantaneous power (``NVML_FI_DEV_POWER_INSTANT``), milliwatts."""
        return self.power_instant().power_mw

    def power_instant(self) -> PowerReading:
        """Instantaneous power with NVML's timestamp of the reading."""
        (value,) = self._call(
            self._lib.nvmlDeviceGetFieldValues,
            [NVML_FI_DEV_POWER_INSTANT],
            what="read the instant power",
        )
        if value.nvmlReturn != NVML_SUCCESS:
            # A field's own return code: the call succeeded but this field did not.
            error = self._lib.NVMLError(value.nvmlReturn)
            raise typed_error(error, "read the instant power", self.uuid) from error
        stamp = int(value.timestamp)
        return PowerReading(int(value.value.uiVal), stamp if stamp > 0 else None)

    def temperature_c(self) -> int:
        return self._call(
            self._lib.nvmlDeviceGetTemperature, NVML_TEMPERATURE_GPU, what="read the temperature"
        )

    def sm_clock_mhz(self) -> int:
        return self._call(self._lib.nvmlDeviceGetClockInfo, NVML_CLOCK_SM, what="read the clock")

    def utilization_pct(self) -> int:
        """Percent of the last sample period in which a kernel ran."""
        return int(self._call(self._lib.nvmlDeviceGetUtilizationRates, what="read use").gpu)

    def clock_event_reasons(self) -> int:
        """Bit mask of why clocks are held down (see `THROTTLE_REASONS`). Drivers before R535
        only have the query's older name."""
        try:
            return int(
                self._call(
                    self._lib.nvmlDeviceGetCurrentClocksEventReasons, what="read clock events"
                )
            )
        except NvmlNotSupported as exc:
            if exc.code != NVML_ERROR_FUNCTION_NOT_FOUND:
                raise
        return int(
            self._call(
                self._lib.nvmlDeviceGetCurrentClocksThrottleReasons, what="read clock events"
            )
        )

    def power_limit_w(self) -> float:
        return self._call(self._lib.nvmlDeviceGetEnforcedPowerLimit, what="read the limit") / 1e3

    def persistence_mode(self) -> bool:
        return bool(self._call(self._lib.nvmlDeviceGetPersistenceMode, what="read persistence"))

    def violation_ns(self, policy: int) -> int:
        """Cumulative time clocks were held down by ``policy`` (``NVML_PERF_POLICY_*``), ns."""
        status = self._call(
            self._lib.nvmlDeviceGetViolationStatus, policy, what="read violation time"
        )
        return int(status.violationTime)

    def mig_enabled(self) -> bool:
        """Whether MIG mode is on (current mode, not the pending one)."""
        current, _pending = self._call(self._lib.nvmlDeviceGetMigMode, what="read MIG mode")
        return int(current) == NVML_DEVICE_MIG_ENABLE

    def is_mig_instance(self) -> bool:
        flag = self._call(self._lib.nvmlDeviceIsMigDeviceHandle, what="ask whether MIG")
        return bool(int(getattr(flag, "value", flag)))  # pynvml returns a ctypes c_uint

    def parent(self) -> GpuDevice:
        """The physical GPU a MIG instance belongs to."""
        handle = self._call(
            self._lib.nvmlDeviceGetDeviceHandleFromMigDeviceHandle, what="find the parent GPU"
        )
        return GpuDevice(self._nvml, handle)

    def virtualization_mode(self) -> int:
        """``NVML_GPU_VIRTUALIZATION_MODE_*``: bare metal, passthrough, vGPU guest, host..."""
        return int(
            self._call(self._lib.nvmlDeviceGetVirtualizationMode, what="read virtualization")
        )

    def compute_capability(self) -> tuple[int, int]:
        major, minor = self._call(
            self._lib.nvmlDeviceGetCudaComputeCapability, what="read compute capability"
        )
        return int(major), int(minor)

    def max_sm_clock_mhz(self) -> int:
        return int(
            self._call(self._lib.nvmlDeviceGetMaxClockInfo, NVML_CLOCK_SM, what="read max clock")
        )

    def compute_processes(self) -> list[GpuProcess]:
        procs = self._call(self._lib.nvmlDeviceGetComputeRunningProcesses, what="list processes")
        return [
            GpuProcess(pid=int(p.pid), used_memory_bytes=getattr(p, "usedGpuMemory", None))
            for p in procs
        ]


def optional(read: Callable[[], T]) -> T | None:
    """A descriptive query that may fail (not supported, no permission) without harm: its value,
    or None. A lost GPU is never harmless and still raises."""
    try:
        return read()
    except NvmlGpuLost:
        raise
    except NvmlError:
        return None


def typed_error(exc: Exception, what: str, subject: str = "") -> NvmlError:
    """The typed error for an NVML failure (``exc.value`` is NVML's return code)."""
    code: int | None = getattr(exc, "value", None)
    target = f" of {subject}" if subject else ""
    message = f"NVML could not {what}{target}: {exc}"
    if code in {NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND}:
        # A function the driver predates is as unsupported as a field the GPU lacks.
        return NvmlNotSupported(message, code)
    if code == NVML_ERROR_GPU_IS_LOST:
        return NvmlGpuLost(
            f"{message} (the GPU fell off the bus or stopped answering; check `nvidia-smi` and "
            "the kernel log)",
            code,
        )
    if code in {
        NVML_ERROR_UNINITIALIZED,
        NVML_ERROR_DRIVER_NOT_LOADED,
        NVML_ERROR_LIBRARY_NOT_FOUND,
        NVML_ERROR_NO_PERMISSION,
    }:
        return NvmlUnavailable(message, code)
    return NvmlError(message, code)


def throttle_names(mask: int) -> list[str]:
    """The throttling reasons set in a clock-event mask, in words."""
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
