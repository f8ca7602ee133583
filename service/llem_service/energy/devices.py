"""Which GPUs, in which order, and what kind: CUDA's numbering, MIG, vGPUs, missing counters.

NVML numbers GPUs in PCI bus order over the whole host. CUDA numbers the GPUs a process may
use in the order ``CUDA_DEVICE_ORDER`` says: ``PCI_BUS_ID`` (what the service sets unless the
operator set something else), or ``FASTEST_FIRST``, CUDA's default, a heuristic CUDA does not
document. ``CUDA_VISIBLE_DEVICES`` indices are in that order too. With ``FASTEST_FIRST`` the
order is approximated here (newest compute capability, then highest SM clock, ties in PCI
order): exact for GPUs that are all alike, which is the usual server.

A MIG instance, a vGPU or a GPU without an energy counter gets a specific message saying what
is measured and what is not, and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llem_service.energy.base import DeviceNotMetered
from llem_service.energy.nvml import (
    NVML_ERROR_NOT_FOUND,
    NVML_GPU_VIRTUALIZATION_MODE_VGPU,
    GpuDevice,
    Nvml,
    NvmlError,
    optional,
)

PCI_BUS_ID = "PCI_BUS_ID"
FASTEST_FIRST = "FASTEST_FIRST"


def cuda_order(devices: Sequence[GpuDevice], order: str | None) -> tuple[list[GpuDevice], bool]:
    """``devices`` (NVML's PCI order) in CUDA's order, and whether that order is exact."""
    if order == PCI_BUS_ID:
        return list(devices), True

    def speed(device: GpuDevice) -> tuple[int, int, int]:
        major, minor = optional(device.compute_capability) or (0, 0)
        return (-major, -minor, -(optional(device.max_sm_clock_mhz) or 0))

    keys = [speed(d) for d in devices]
    ordered = [d for _, _, d in sorted(zip(keys, range(len(keys)), devices, strict=True))]
    return ordered, len(set(keys)) <= 1


def visible_devices(devices: Sequence[GpuDevice], cuda_visible: str | None) -> list[GpuDevice]:
    """The GPUs a CUDA process here can use, in CUDA's order.

    ``devices`` are already in CUDA's order (`cuda_order`). ``CUDA_VISIBLE_DEVICES`` holds
    indices or UUID prefixes; CUDA stops at the first entry it cannot resolve. MIG instances
    (``MIG-...``) are not GPUs NVML meters and are skipped.
    """
    if cuda_visible is None:
        return list(devices)
    chosen: list[GpuDevice] = []
    for raw in cuda_visible.split(","):
        entry = raw.strip()
        if entry.isdigit():
            if int(entry) >= len(devices):
                break
            chosen.append(devices[int(entry)])
            continue
        matches = [d for d in devices if entry and d.uuid.startswith(entry)]
        if len(matches) != 1:
            break
        chosen.append(matches[0])
    return chosen


def mig_mode(device: GpuDevice) -> str:
    """``enabled``, ``disabled``, or ``unsupported`` (GPUs before Ampere, old drivers)."""
    enabled = optional(device.mig_enabled)
    if enabled is None:
        return "unsupported"
    return "enabled" if enabled else "disabled"


def resolve_metered(nvml: Nvml, uuid: str) -> GpuDevice:
    """The whole GPU behind a CUDA device UUID, or `DeviceNotMetered` saying why not."""
    device: GpuDevice | None = None
    try:
        device = nvml.device(uuid)
    except NvmlError as exc:
        if exc.code != NVML_ERROR_NOT_FOUND:
            raise
        if uuid.startswith("GPU-"):  # torch prints a MIG instance's UUID with GPU- too
            try:
                device = nvml.device("MIG-" + uuid.removeprefix("GPU-"))
            except NvmlError as again:
                if again.code != NVML_ERROR_NOT_FOUND:
                    raise
    if device is not None and optional(device.is_mig_instance):
        parent = device.parent()
        raise DeviceNotMetered(
            f"the model runs on MIG instance {device.uuid} of GPU {parent.uuid} "
            f"({parent.name()}). NVML reports energy and power only for the whole GPU, which "
            "its other instances share, so one instance's energy cannot be told apart and "
            "llem does not meter it; the run's speed is still measured. For energy, run on a "
            "GPU with MIG disabled (`nvidia-smi -i <gpu> -mig 0`)"
        )
    if device is None:
        with_mig = [d.uuid for d in nvml.devices() if optional(d.mig_enabled)]
        hint = (
            f"; GPU(s) {', '.join(with_mig)} have MIG enabled, and NVML meters only whole GPUs"
            if with_mig
            else ""
        )
        raise DeviceNotMetered(f"NVML does not know the device the model runs on ({uuid}){hint}")
    return device


@dataclass(frozen=True)
class DeviceKind:
    """What a metered GPU is, as far as it matters for metering it."""

    virtualization_mode: int | None
    compute_capability: tuple[int, int] | None
    mig_mode: str

    @property
    def vgpu(self) -> bool:
        return self.virtualization_mode == NVML_GPU_VIRTUALIZATION_MODE_VGPU


def describe(device: GpuDevice) -> DeviceKind:
    return DeviceKind(
        virtualization_mode=optional(device.virtualization_mode),
        compute_capability=optional(device.compute_capability),
        mig_mode=mig_mode(device),
    )


def counter_absent_reason(kind: DeviceKind) -> str:
    """Why a GPU has no energy counter, as specifically as NVML lets us say."""
    if kind.vgpu:
        return "it is a vGPU: the hypervisor does not pass the energy counter through to the guest"
    cc = kind.compute_capability
    if cc is not None and cc < (7, 0):
        return (
            f"it predates Volta (compute capability {cc[0]}.{cc[1]}); NVIDIA added the energy "
            "counter with Volta"
        )
    return (
        "its driver answers NotSupported for the counter (a driver older than the GPU's "
        "generation needs, or a board without one)"
    )


def unmeterable_reason(device: GpuDevice, kind: DeviceKind) -> str:
    """Why a GPU with neither an energy counter nor a power reading cannot be metered."""
    what = "a vGPU whose hypervisor passes" if kind.vgpu else "a GPU whose driver answers"
    return (
        f"GPU {device.uuid} ({device.name()}) is {what} neither the energy counter nor any "
        "power reading through NVML, so its energy cannot be measured here"
    )
