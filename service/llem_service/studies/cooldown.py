"""The pause between a study's points: a fixed time, then, optionally, until the GPUs are back
within some degrees of the temperature they had before the study's first point.

Temperatures are read through NVML in the server process (between runs no experiment process
holds the GPUs' attention), behind the `Thermometer` seam so tests script them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from llem_client import CooldownConfig, JobProgress, ResultWarning

from llem_service.energy.nvml import Nvml, NvmlError, NvmlLibrary, load_pynvml
from llem_service.jobs.base import ClaimedJob, JobStore

_log = logging.getLogger("llem.scheduler")


class ThermometerError(Exception):
    """Temperatures cannot be read (no driver, no GPU); the message says why."""


class Thermometer(Protocol):
    """Reads GPU temperatures."""

    def temperatures_c(self, device_uuids: Sequence[str]) -> dict[str, float]:
        """Each GPU's temperature, degrees Celsius; every GPU the host has when
        ``device_uuids`` is empty (a whole-host grant). Raises `ThermometerError`."""
        ...


@dataclass
class NvmlThermometer:
    """`Thermometer` over NVML (``library``: the pynvml module, or a scripted one)."""

    library: NvmlLibrary | None = None

    def temperatures_c(self, device_uuids: Sequence[str]) -> dict[str, float]:
        try:
            nvml = Nvml(self.library if self.library is not None else load_pynvml())
            with nvml.open():
                devices = (
                    [nvml.device(uuid) for uuid in device_uuids] if device_uuids else nvml.devices()
                )
                return {device.uuid: float(device.temperature_c()) for device in devices}
        except NvmlError as exc:
            raise ThermometerError(str(exc)) from exc


@dataclass(frozen=True)
class CooldownReport:
    """How a cooldown went: seconds waited, and a warning when it could not do what was asked."""

    waited_s: float
    warning: tuple[str, str] | None = None


def cool_down(
    plan: CooldownConfig,
    device_uuids: Sequence[str],
    baseline_c: Mapping[str, float] | None,
    thermometer: Thermometer,
    cancel: threading.Event,
    *,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> CooldownReport:
    """Wait ``plan.seconds``, then until every GPU is within ``plan.until_temperature_within_c``
    of ``baseline_c`` (at most ``plan.max_s``). Returns at once when ``cancel`` is set."""
    started = clock()
    if plan.seconds and cancel.wait(plan.seconds):
        return CooldownReport(clock() - started)
    margin = plan.until_temperature_within_c
    if margin is None:
        return CooldownReport(clock() - started)
    if not baseline_c:
        return CooldownReport(
            clock() - started,
            (
                "cooldown_not_applied",
                "The study's cooldown by temperature was not applied: the GPUs' temperature "
                "before its first point could not be read (no NVIDIA driver or GPU?).",
            ),
        )
    deadline = clock() + plan.max_s
    hot: dict[str, float] = {}
    while True:
        try:
            now_c = thermometer.temperatures_c(device_uuids)
        except ThermometerError as exc:
            return CooldownReport(
                clock() - started,
                (
                    "cooldown_not_applied",
                    f"The study's cooldown by temperature was not applied: {exc}.",
                ),
            )
        hot = {
            uuid: celsius - baseline_c[uuid]
            for uuid, celsius in now_c.items()
            if uuid in baseline_c and celsius - baseline_c[uuid] > margin
        }
        if not hot or clock() >= deadline:
            break
        if cancel.wait(poll_s):
            return CooldownReport(clock() - started)
    warning = None
    if hot:
        worst = max(hot.values())
        warning = (
            "cooldown_incomplete",
            f"After the cooldown's cap of {plan.max_s:g} s a GPU was still {worst:.0f} °C "
            f"above its temperature before the study (the target is {margin:g} °C): this "
            "point started warm; raise cooldown.max_s or order the study 'shuffled'.",
        )
    return CooldownReport(clock() - started, warning)


class _NoThermometer:
    def temperatures_c(self, device_uuids: Sequence[str]) -> dict[str, float]:
        raise ThermometerError("this server reads no GPU temperatures")


def before_study_run(
    job: ClaimedJob,
    store: JobStore,
    thermometer: Thermometer | None,
    cancel: threading.Event,
    on_progress: Callable[[JobProgress], None],
) -> CooldownReport:
    """The study's pause before this run of it (blocking: the scheduler calls it in the run's
    thread, inside the run's cancellable window). Before a study's first run nothing is
    waited: the GPUs' temperatures are kept as the target of the later runs' cooldowns."""
    study = job.study
    assert study is not None
    assert study.cooldown is not None
    plan = study.cooldown
    devices = job.grant.uuids
    if study.position == 0:
        if plan.until_temperature_within_c is not None and thermometer is not None:
            try:
                if store.study_temperatures(study.study_id) is None:
                    store.set_study_temperatures(
                        study.study_id, thermometer.temperatures_c(devices)
                    )
            except ThermometerError as exc:
                _log.warning("study %s: no temperature to cool down to: %s", study.study_id, exc)
        return CooldownReport(0.0)
    on_progress(JobProgress(phase="cooldown"))
    baseline = store.study_temperatures(study.study_id)
    return cool_down(plan, devices, baseline, thermometer or _NoThermometer(), cancel)


@dataclass
class StudyCooldown:
    """The scheduler's `llem_service.jobs.base.BeforeRun` hook for studies: the pause before
    each run of a study that asks for one (`before_study_run`); other jobs start at once.

    Args:
        store: Keeps each study's temperatures before its first run.
        thermometer: Reads GPU temperatures for cooldowns to a temperature; None: those are
            not applied (a warning on the result says so).
    """

    store: JobStore
    thermometer: Thermometer | None = None

    def __call__(
        self,
        job: ClaimedJob,
        cancel: threading.Event,
        on_progress: Callable[[JobProgress], None],
    ) -> ResultWarning | None:
        if job.study is None or job.study.cooldown is None:
            return None
        cooled = before_study_run(job, self.store, self.thermometer, cancel, on_progress)
        if cooled.warning is None:
            return None
        code, message = cooled.warning
        return ResultWarning(code=code, message=message)
