"""`run_experiment` in-process: phase order, the energy window, the arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from llem_client import JobProgress
from llem_service.backends.base import BackendError
from llem_service.energy.base import EnergyReading
from llem_service.experiment import run_experiment

from tests.conftest import make_config
from tests.fakes import FakeEnergyMeter, FakeInferenceBackend


@dataclass
class RecordingMeter(FakeEnergyMeter):
    """A fake meter that also records when its window opened and closed."""

    calls: list[str] = field(default_factory=list)

    def begin(self, device_uuids: Sequence[str]) -> None:
        self.calls.append(f"begin {','.join(device_uuids)}")
        super().begin(device_uuids)

    def end(self) -> EnergyReading:
        self.calls.append("end")
        return super().end()


def test_progress_goes_through_every_phase_in_order() -> None:
    seen: list[JobProgress] = []

    run_experiment(
        "e1",
        make_config(n_prompts=4, batch_size=2),
        FakeInferenceBackend(),
        FakeEnergyMeter(),
        seen.append,
    )

    assert [p.phase for p in seen] == ["loading", "warmup", "measuring", "measuring", "measuring"]
    assert [(p.completed, p.total) for p in seen[2:]] == [(0, 4), (2, 4), (4, 4)]


def test_the_energy_window_spans_every_repeat_once() -> None:
    meter = RecordingMeter(energy_j=10.0)

    result = run_experiment(
        "e1", make_config(repeats=3), FakeInferenceBackend(), meter, lambda _: None
    )

    assert meter.calls == ["begin GPU-00000000-fake-0000-0000-000000000000", "end"]
    assert result.n_requests == 12
    assert result.total_energy_j == 10.0


def test_backend_is_closed_even_when_it_fails() -> None:
    backend = FakeInferenceBackend(fail_in="run")

    with pytest.raises(BackendError):
        run_experiment("e1", make_config(), backend, FakeEnergyMeter(), lambda _: None)

    assert backend._closed


def test_result_carries_the_hash_and_the_environment() -> None:
    config = make_config()

    result = run_experiment("e1", config, FakeInferenceBackend(), FakeEnergyMeter(), lambda _: None)

    assert result.experiment_id == "e1"
    assert result.config == config
    assert result.environment.energy_meter == "fake"
    assert result.environment.devices[0].name == "Fake GPU"
    assert result.started_at <= result.finished_at
    assert result.total_flops == (32 + 16) * 1000
