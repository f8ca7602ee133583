"""The NVML adapter: error codes become typed errors, values get their units, CUDA's view."""

from __future__ import annotations

import pynvml
import pytest
from llem_service.energy.meter import NvmlEnergyMeter, visible_devices
from llem_service.energy.nvml import (
    Nvml,
    NvmlError,
    NvmlGpuLost,
    NvmlNotSupported,
    NvmlUnavailable,
    throttle_names,
)

from tests.fake_nvml import FakeGpu, FakeNvml, ManualClock

GPU_A = FakeGpu(uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000", name="A")
GPU_B = FakeGpu(uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000", name="B")


def opened(*gpus: FakeGpu, clock: ManualClock | None = None) -> Nvml:
    return Nvml(FakeNvml(gpus=gpus or (GPU_A,), clock=clock or ManualClock())).open()


def test_values_come_back_in_the_units_their_names_say() -> None:
    nvml = opened()
    device = nvml.device(GPU_A.uuid)

    assert device.energy_mj() == GPU_A.counter_start_mj
    assert device.power_instant_mw() == 100_000
    assert device.power_limit_w() == 700.0
    assert device.persistence_mode() is True
    assert device.memory_total_bytes() == 80 * 2**30
    assert nvml.cuda_driver_version() == "12.4"
    assert nvml.driver_version() == "550.54.15"


@pytest.mark.parametrize(
    ("field", "read"),
    [
        ("energy", "energy_mj"),
        ("power_instant", "power_instant_mw"),
        ("temperature", "temperature_c"),
        ("clock_events", "clock_event_reasons"),
    ],
)
def test_not_supported_is_its_own_error(field: str, read: str) -> None:
    device = opened(FakeGpu(unsupported=frozenset({field}))).devices()[0]

    with pytest.raises(NvmlNotSupported, match="Not Supported"):
        getattr(device, read)()


def test_a_lost_gpu_says_what_to_check() -> None:
    clock = ManualClock()
    device = opened(FakeGpu(lost_at_s=1.0), clock=clock).devices()[0]
    device.energy_mj()
    clock.advance(2.0)

    with pytest.raises(NvmlGpuLost, match="nvidia-smi"):
        device.energy_mj()


def test_no_driver_is_unavailable_and_an_unknown_uuid_is_an_error() -> None:
    broken = Nvml(FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    with pytest.raises(NvmlUnavailable, match="Driver Not Loaded"):
        broken.open()

    with pytest.raises(NvmlError, match="find GPU GPU-nope"):
        opened().device("GPU-nope")


def test_throttle_reasons_exclude_idle_and_application_clocks() -> None:
    assert throttle_names(0x01 | 0x02 | 0x10) == []
    assert throttle_names(0x04 | 0x40) == ["software power cap", "hardware thermal slowdown"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (None, ["A", "B"]),
        ("1", ["B"]),
        ("1,0", ["B", "A"]),
        ("GPU-bbbb", ["B"]),
        ("0,7,1", ["A"]),  # CUDA stops at the first entry it cannot resolve
        ("", []),
        ("MIG-1234", []),
    ],
)
def test_cuda_visible_devices_picks_and_orders_gpus(env: str | None, expected: list[str]) -> None:
    devices = opened(GPU_A, GPU_B).devices()

    assert [d.name() for d in visible_devices(devices, env)] == expected


def test_probe_lists_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")

    probe = NvmlEnergyMeter(library=FakeNvml(gpus=(GPU_A, GPU_B))).probe()

    assert probe.available
    assert [(d.index, d.name, d.uuid) for d in probe.devices] == [(0, "B", GPU_B.uuid)]


def test_probe_says_why_it_cannot_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    no_driver = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    hidden = NvmlEnergyMeter(library=FakeNvml()).probe()
    missing = NvmlEnergyMeter(library=no_driver).probe()

    assert not hidden.available
    assert hidden.reason is not None
    assert "CUDA_VISIBLE_DEVICES" in hidden.reason
    assert not missing.available
    assert missing.reason is not None
    assert "NVML Shared Library Not Found" in missing.reason


def test_an_old_driver_reads_clock_events_by_their_older_name() -> None:
    device = opened(FakeGpu(old_driver=True, clock_event_reasons=0x04)).devices()[0]

    assert device.clock_event_reasons() == 0x04


def test_a_library_that_predates_a_query_counts_as_not_supported() -> None:
    device = opened(FakeGpu(errors=(("energy", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND),)))
    with pytest.raises(NvmlNotSupported):
        device.devices()[0].energy_mj()
