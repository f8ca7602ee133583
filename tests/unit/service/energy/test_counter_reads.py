"""Reading the energy counter through NVML's transient errors: one failed read is no verdict
on the counter, at the session's start or at a phase edge, and a read that never answers
costs the windows it bounds their counter, never the run."""

from __future__ import annotations

import pynvml
import pytest
from llem_client import EnergyConfig
from llem_service.energy.baseline import BaselineSet
from llem_service.energy.figures import Batch, Span, Work
from llem_service.energy.report import build_energy
from llem_service.energy.sensors import SensorTable
from llem_service.energy.windows import EnergyAccount

from tests.fake_nvml import FakeGpu, PowerProfile, ScriptedSession

UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
STEADY = PowerProfile(((100.0, 300.0),))
EXACT = SensorTable.with_overrides(
    {"Fake H100": {"gain_rel": 0.0, "offset_w": 0.0, "sensed_fraction": 1.0}}
)


@pytest.mark.parametrize(("code", "failures"), [(NOT_SUPPORTED, 1), (UNKNOWN, 12)])
def test_a_counter_that_fails_its_first_reads_is_still_a_counter(code: int, failures: int) -> None:
    gpu = FakeGpu(profile=STEADY, fail_first=(("energy", failures, code),))

    scripted = ScriptedSession([gpu])

    (meta,) = scripted.session.metas
    assert meta.has_energy_counter
    assert meta.counter_absent_reason is None


def test_a_counter_that_never_answers_is_absent_and_says_why() -> None:
    unsupported = FakeGpu(profile=STEADY, unsupported=frozenset({"energy"}))
    failing = FakeGpu(profile=STEADY, errors=(("energy", UNKNOWN),))

    (no_counter,) = ScriptedSession([unsupported]).session.metas
    (broken,) = ScriptedSession([failing]).session.metas

    assert not no_counter.has_energy_counter
    assert not broken.has_energy_counter
    assert broken.counter_absent_reason is not None
    assert "failed 20 reads in a row" in broken.counter_absent_reason


def test_a_transient_error_at_a_mark_is_tried_again_and_its_lateness_counted() -> None:
    # The counter answers Unknown for 3 ms at the mark; power steps up there, so what the
    # late read holds beyond the mark must be inside the window's uncertainty.
    gpu = FakeGpu(
        profile=PowerProfile(((2.0, 100.0), (100.0, 700.0))),
        counter_period_s=0.001,
        failing=(("energy", 1.99, 2.003, UNKNOWN),),
    )
    scripted = ScriptedSession([gpu], sensors=EXACT)
    scripted.run_until(1.0)
    scripted.mark("a")
    scripted.run_until(2.0)
    scripted.mark("b")  # would have failed the run
    scripted.run_for(0.3)
    record = scripted.close()

    b = record.mark("b")
    assert b.energy_mj[gpu.uuid] is not None
    assert b.read_delay_s[gpu.uuid] >= 0.003
    account = EnergyAccount(record, [gpu.uuid])
    estimate, window = account.estimate(record.devices[0], record.mark("a"), b)
    assert window.source == "nvml_energy_counter"
    truth = gpu.profile.energy_j(1.0, 2.0)
    assert abs(estimate.value - truth) <= estimate.expanded()


def test_a_counter_that_fails_every_try_at_a_mark_leaves_that_window_to_the_readings() -> None:
    gpu = FakeGpu(profile=STEADY, failing=(("energy", 2.0, 2.5, UNKNOWN),))
    scripted = ScriptedSession([gpu], sensors=EXACT)
    for label, at in (("load_start", 0.5), ("load_end", 1.0), ("warmup_end", 1.5)):
        scripted.run_until(at)
        scripted.mark(label)
    start = scripted.clock()
    scripted.run_until(2.0)
    scripted.mark("repeat_0_end")
    scripted.run_for(0.3)
    span = Span(start, start + 0.1, scripted.clock() - 0.3)
    section = build_energy(
        scripted.close(), [gpu.uuid], Work((Batch(span, (8,), (16,)),)),
        baselines=BaselineSet(), prefill=None, plan=EnergyConfig(phase_split="none"), now=0.0,
    )  # fmt: skip

    assert section.result is not None
    (device,) = section.result.devices
    assert device.source == "nvml_power_integral"
    warnings = dict(section.warnings)
    assert "repeat_0_end" in warnings["energy_counter_read_failed"]
    assert device.energy_j is not None
    assert abs(device.energy_j.value - 0.5 * 300.0) <= device.energy_j.total
