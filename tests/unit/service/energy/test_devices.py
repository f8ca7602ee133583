"""Which GPUs in which order (CUDA_DEVICE_ORDER), and specific messages for MIG instances,
vGPUs and GPUs without a counter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from llem_client import ExperimentConfig
from llem_service.energy.devices import cuda_order
from llem_service.energy.meter import NvmlEnergyMeter
from llem_service.energy.nvml import Nvml
from llem_service.experiment.run import run_experiment

from tests.conftest import build_app, make_config
from tests.fake_nvml import FakeGpu, FakeNvml, ManualClock
from tests.fakes import FAKE_DEVICE, FakeInferenceBackend

A100 = FakeGpu(uuid="GPU-a100", name="A100", compute_capability=(8, 0), mig_mode=0)
H100 = FakeGpu(uuid="GPU-h100", name="H100", compute_capability=(9, 0), mig_mode=1)
OLD = FakeGpu(uuid="GPU-old", name="P100", compute_capability=(6, 0))


def names(order: str | None, *gpus: FakeGpu) -> tuple[list[str], bool]:
    devices = Nvml(FakeNvml(gpus=gpus, clock=ManualClock())).open().devices()
    ordered, exact = cuda_order(devices, order)
    return [d.name() for d in ordered], exact


def test_pci_order_is_nvmls_order() -> None:
    assert names("PCI_BUS_ID", A100, H100) == (["A100", "H100"], True)


def test_fastest_first_puts_the_newer_gpu_first_and_says_it_is_approximated() -> None:
    assert names("FASTEST_FIRST", OLD, A100, H100) == (["H100", "A100", "P100"], False)
    assert names(None, A100, H100) == (["H100", "A100"], False)  # CUDA's default


def test_fastest_first_over_identical_gpus_is_pci_order_exactly() -> None:
    twins = (FakeGpu(uuid="GPU-1", name="one"), FakeGpu(uuid="GPU-2", name="two"))

    assert names("FASTEST_FIRST", *twins) == (["one", "two"], True)


def test_info_follows_cuda_device_order_and_names_mig_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter = NvmlEnergyMeter(library=FakeNvml(gpus=(OLD, A100, H100)), powercap_root=None)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # CUDA's indices, in CUDA's order

    with TestClient(build_app(tmp_path / "data", meter=meter)) as http:
        info = http.get("/v1/info").json()

    assert [(d["index"], d["name"], d["mig_mode"]) for d in info["devices"]] == [
        (0, "H100", "enabled"),
        (1, "A100", "disabled"),
    ]
    assert info["cuda_device_order"] == "FASTEST_FIRST"
    assert "approximated" in info["device_order_note"]


@dataclass
class OnDevice(FakeInferenceBackend):
    """The fake backend, running on the CUDA device ``uuid``."""

    uuid: str = FAKE_DEVICE.uuid

    def prepare(self, config: ExperimentConfig) -> tuple[str, ...]:
        return (self.uuid,)


def energy_warning(gpu: FakeGpu, uuid: str) -> str:
    meter = NvmlEnergyMeter(library=FakeNvml(gpus=(gpu,)), powercap_root=None)
    output = run_experiment(
        "e1", make_config(n_prompts=2), OnDevice(uuid=uuid), meter, lambda _: None
    )
    assert output.result.energy is None
    (warning,) = [w for w in output.result.warnings if w.code == "energy_unavailable"]
    return warning.message


def test_a_mig_instance_is_not_metered_and_the_result_says_why() -> None:
    gpu = FakeGpu(uuid=FAKE_DEVICE.uuid, mig_mode=1, mig_instances=("MIG-0c5f-abcd",))

    said = energy_warning(gpu, "MIG-0c5f-abcd")

    assert f"MIG instance MIG-0c5f-abcd of GPU {FAKE_DEVICE.uuid}" in said
    assert "only for the whole GPU" in said
    assert "-mig 0" in said


def test_a_mig_instance_named_as_a_gpu_by_torch_is_recognised() -> None:
    gpu = FakeGpu(uuid=FAKE_DEVICE.uuid, mig_mode=1, mig_instances=("MIG-0c5f-abcd",))

    assert "MIG instance MIG-0c5f-abcd" in energy_warning(gpu, "GPU-0c5f-abcd")


def test_an_unknown_device_beside_a_mig_gpu_points_at_mig() -> None:
    gpu = FakeGpu(uuid=FAKE_DEVICE.uuid, mig_mode=1)

    said = energy_warning(gpu, "GPU-elsewhere")

    assert "does not know the device the model runs on (GPU-elsewhere)" in said
    assert "have MIG enabled" in said


def test_a_vgpu_with_neither_counter_nor_power_is_not_metered_and_says_why() -> None:
    gpu = FakeGpu(
        uuid=FAKE_DEVICE.uuid,
        virtualization_mode=2,
        unsupported=frozenset({"energy", "power_instant", "power_average"}),
    )

    said = energy_warning(gpu, FAKE_DEVICE.uuid)

    assert "is a vGPU whose hypervisor passes neither the energy counter nor any power" in said
